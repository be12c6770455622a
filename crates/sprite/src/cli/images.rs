//! Images and daemon administration.

use super::{print_json, Global};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: Option<ImagesCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the images (the default).
    List,
    /// Import a tarball as an image: a docker-archive (`docker save`, `skopeo copy ...
    /// docker-archive:`) or OCI layout (`skopeo copy ... oci-archive:`) keeps its layers
    /// and config; anything else is a root filesystem (tar, .tar.gz, .tar.xz, .tar.zst;
    /// owners kept by number: uid 0 in the tarball is root in the sprite). `-` reads
    /// stdin. NAME defaults to the file's name without its extensions.
    #[command(after_help = "Examples:
  sprite images import app.tar                   # docker-archive or OCI layout: image app
  sprite images import alpine alpine-minirootfs.tar.gz
  docker export $(docker create ubuntu) | sprite images import ubuntu -")]
    Import {
        /// NAME FILE, or only FILE.
        #[arg(num_args = 1..=2, value_names = ["NAME", "FILE"], required = true)]
        args: Vec<String>,
    },
    /// Pull an image from an OCI / Docker registry (v2): its layers are stored once and
    /// shared with every image that has them; its Env, WorkingDir and User apply to
    /// sprites of it. Credentials: --username with --password-stdin, else
    /// ~/.docker/config.json (`docker login`), else anonymous.
    #[command(after_help = "Examples:
  sprite images pull docker.io/library/python:3.12-slim
  sprite images pull ghcr.io/acme/tools:1.4 --name tools
  echo \"$TOKEN\" | sprite images pull registry.example.com/team/app:v2 --username me --password-stdin
  sprite create --image python-3-12-slim")]
    /// Make a new version of an image: built again from the archive for dev and debian
    /// (every package at its current release), pulled again for a registry image. New
    /// sprites start on it; `sprite upgrade` moves a sprite onto it. Versions nothing
    /// uses any more are deleted.
    #[command(after_help = "Examples:
  sprite images update dev
  sprite images update python-3-12-slim
  sprite upgrade -s work")]
    Update {
        name: String,
        /// Registry user name (a private registry image).
        #[arg(long)]
        username: Option<String>,
        /// Read the registry password or token from stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
    Pull {
        /// `[REGISTRY/]REPOSITORY[:TAG|@DIGEST]` (Docker Hub when no registry is named).
        reference: String,
        /// The image's name here (default: from the reference: python:3.12-slim →
        /// python-3-12-slim).
        #[arg(long)]
        name: Option<String>,
        /// Registry user name.
        #[arg(long)]
        username: Option<String>,
        /// Read the registry password or token from stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Pull again over an image of the same name (a newer version of a tag).
        #[arg(long)]
        replace: bool,
    },
}

/// The registry a reference names (Docker Hub when its first part is not a host).
fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// Credentials for `registry` from a Docker config file (`auths.<registry>.auth`, the
/// base64 of `user:password`); Docker Hub is also found under its historic keys.
fn docker_credentials(config: &str, registry: &str) -> Option<(String, String)> {
    use base64::Engine;
    let config: serde_json::Value = serde_json::from_str(config).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" {
        keys.extend([
            "https://index.docker.io/v1/".to_string(),
            "index.docker.io".to_string(),
            "registry-1.docker.io".to_string(),
        ]);
    }
    let entry = keys.iter().find_map(|key| auths.get(key))?;
    let encoded = entry.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The image of `reference` here: the one of its name if there is one, else pulled.
pub(crate) async fn image_for_reference(cx: &Global, reference: &str) -> Result<String> {
    let name = sprite_core::image::oci::name_for_reference(reference);
    let images = cx.client()?.images().await?;
    if images
        .images
        .iter()
        .any(|i| i.name == name && i.state == sprite_api::admin::ImageState::Ready)
    {
        return Ok(name);
    }
    let request = sprite_api::admin::PullRequest {
        reference: reference.to_string(),
        name: Some(name),
        ..Default::default()
    };
    pull(cx, request).await
}

/// Pulls `reference` with progress on stderr; the image's name.
pub(crate) async fn pull(cx: &Global, request: sprite_api::admin::PullRequest) -> Result<String> {
    let mut request = request;
    if request.username.is_none() {
        let home = std::env::var("HOME").unwrap_or_default();
        let path = std::env::var("DOCKER_CONFIG")
            .map(|dir| PathBuf::from(dir).join("config.json"))
            .unwrap_or_else(|_| PathBuf::from(home).join(".docker/config.json"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some((user, password)) =
                docker_credentials(&text, &registry_of(&request.reference))
            {
                request.username = Some(user);
                request.password = Some(password);
            }
        }
    }
    let client = cx.client()?;
    let quiet = cx.json;
    let name = client
        .pull_image(&request, |event| {
            if !quiet {
                show_progress(event, &request.reference)
            }
        })
        .await
        .with_context(|| format!("pull {}", request.reference))?;
    Ok(name)
}

/// Reads a password or token from stdin when asked to.
fn read_password(from_stdin: bool) -> Result<Option<String>> {
    if !from_stdin {
        return Ok(None);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("read the password from stdin")?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
}

/// One line of a pull's or an update's progress, on stderr.
fn show_progress(event: &sprite_api::admin::PullEvent, what: &str) {
    use sprite_api::admin::PullEvent;
    {
        {
            match event {
                PullEvent::Resolved { digest, layers } => {
                    eprintln!("pulling {what} ({digest}, {layers} layers)")
                }
                PullEvent::Layer {
                    index,
                    state,
                    bytes,
                    total,
                    ..
                } => match state.as_str() {
                    "downloading" => eprint!(
                        "\r  layer {}: {:.1} / {:.1} MB   ",
                        index + 1,
                        *bytes as f64 / 1e6,
                        *total as f64 / 1e6
                    ),
                    "stored" => eprintln!("  layer {}: already stored", index + 1),
                    "unpacking" => eprintln!("\r  layer {}: unpacking {:>30}", index + 1, ""),
                    "ready" => eprintln!("  layer {}: ready", index + 1),
                    _ => {}
                },
                PullEvent::Info { message } => eprintln!("  {message}"),
                PullEvent::Complete { .. } | PullEvent::Error { .. } => {}
            }
        }
    }
}

impl ImagesArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        match &self.command {
            Some(ImagesCommand::Update {
                name,
                username,
                password_stdin,
            }) => {
                let credentials = sprite_api::admin::PullRequest {
                    username: username.clone(),
                    password: read_password(*password_stdin)?,
                    ..Default::default()
                };
                let quiet = cx.json;
                let key = cx
                    .client()?
                    .update_image(name, &credentials, |event| {
                        if !quiet {
                            show_progress(event, name)
                        }
                    })
                    .await
                    .with_context(|| format!("update image {name}"))?;
                if cx.json {
                    print_json(&serde_json::json!({ "image": name, "version": key }))?;
                } else {
                    eprintln!("{name}: newest version {key}; new sprites start on it (sprite upgrade moves one)");
                }
                Ok(0)
            }
            Some(ImagesCommand::Pull {
                reference,
                name,
                username,
                password_stdin,
                replace,
            }) => {
                let password = read_password(*password_stdin)?;
                let request = sprite_api::admin::PullRequest {
                    reference: reference.clone(),
                    name: name.clone(),
                    username: username.clone(),
                    password,
                    replace: *replace,
                };
                let name = pull(cx, request).await?;
                if cx.json {
                    print_json(&serde_json::json!({ "name": name }))?;
                } else {
                    eprintln!("image {name} is ready: sprite create --image {name}");
                }
                Ok(0)
            }
            Some(ImagesCommand::Import { args }) => {
                let (name, file) = match args.as_slice() {
                    [name, file] => (name.clone(), PathBuf::from(file)),
                    [file] => {
                        let base = std::path::Path::new(file)
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let stem = base.split('.').next().unwrap_or_default().to_string();
                        if stem.is_empty() || file == "-" {
                            anyhow::bail!("name the image: sprite images import NAME {file}");
                        }
                        (
                            stem.to_ascii_lowercase().replace('_', "-"),
                            PathBuf::from(file),
                        )
                    }
                    _ => anyhow::bail!("sprite images import [NAME] FILE"),
                };
                let (name, file) = (&name, &file);
                eprintln!("importing {} as image {name} ...", file.display());
                let client = cx.client()?;
                let status = if file.as_os_str() == "-" {
                    client.import_image(name, tokio::io::stdin()).await?
                } else {
                    let opened = tokio::fs::File::open(file)
                        .await
                        .with_context(|| format!("open {}", file.display()))?;
                    client.import_image(name, opened).await?
                };
                if cx.json {
                    print_json(&status)?;
                } else {
                    eprintln!("image {name} is ready: sprite create --image {name}");
                }
                Ok(0)
            }
            Some(ImagesCommand::List) | None => {
                let images = cx.client()?.images().await?;
                if cx.json {
                    print_json(&images)?;
                } else {
                    for image in &images.images {
                        println!(
                            "{:<20} {:<9} {}",
                            image.name,
                            image.state.as_str(),
                            image.detail
                        );
                    }
                }
                Ok(0)
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Delete chunks and layers no sprite or checkpoint references; prints what it freed
    /// (a single host only: the hosts of a cluster share one store).
    Gc,
    /// The live hosts of the cluster, with their load.
    ///
    /// Example: sprite admin hosts --json
    Hosts,
    /// Move every sprite off a host and stop it taking new ones (before stopping it
    /// for good, or for maintenance).
    ///
    /// Example: sprite admin drain host-b
    Drain {
        /// The host's id (`sprite admin hosts` lists them).
        host: String,
    },
    /// The daemon: version, uptime, storage, sprites by status.
    ///
    /// Example: sprite admin status --json
    Status,
    /// Stop the daemon. Sprites keep running (a new daemon adopts them) unless --all:
    /// then every sprite goes cold first (disk flushed to the object store) and
    /// everything the daemon installed on the host goes (storage process, mounts, loop
    /// devices, network table); the next start finds every sprite, cold.
    ///
    /// Examples:
    ///   sprite admin stop
    ///   sprite admin stop --all      # before uninstalling, or a kernel upgrade
    Stop {
        #[arg(long)]
        all: bool,
    },
}

pub async fn admin(cx: &Global, command: &AdminCommand) -> Result<u8> {
    match command {
        AdminCommand::Gc => {
            let freed = cx.client()?.collect_garbage().await?;
            if cx.json {
                print_json(&freed)?;
            } else {
                println!(
                    "freed {} bytes ({} chunks, {} layers)",
                    freed.bytes_freed, freed.chunks, freed.layers
                );
            }
            Ok(0)
        }
        AdminCommand::Hosts => {
            let list = cx.client()?.hosts().await?;
            if cx.json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<20} {:>8} {:>8} {:>6} {:>6} {:>10}  API",
                    "HOST", "SPRITES", "RUNNING", "WARM", "COLD", "FREE MB"
                );
                for host in &list.hosts {
                    let mut id = host.id.clone();
                    if host.this_host {
                        id.push_str(" *");
                    }
                    if host.draining {
                        id.push_str(" (draining)");
                    }
                    println!(
                        "{:<20} {:>8} {:>8} {:>6} {:>6} {:>10}  {}",
                        id,
                        host.sprites,
                        host.running,
                        host.warm,
                        host.cold,
                        host.free_memory_mb,
                        host.api
                    );
                }
            }
            Ok(0)
        }
        AdminCommand::Status => {
            let status = cx.client()?.daemon_status().await?;
            if cx.json {
                print_json(&status)?;
            } else {
                println!("sprite daemon {} (pid {})", status.version, status.pid);
                println!(
                    "up {} s, since {}",
                    status.uptime_seconds, status.started_at
                );
                println!("data:     {}", status.data_dir);
                let storage = match status.storage_up {
                    Some(true) => format!("{} (storage process up)", status.storage),
                    Some(false) => format!("{} (storage process DOWN)", status.storage),
                    None => status.storage.clone(),
                };
                println!("storage:  {storage}");
                println!(
                    "sprites:  {} running, {} warm, {} cold; {} ready in the pool",
                    status.running, status.warm, status.cold, status.pool_ready
                );
                if let Some(host) = &status.host_id {
                    println!("cluster:  host {host}");
                }
            }
            Ok(0)
        }
        AdminCommand::Stop { all } => {
            let client = cx.client()?;
            if *all && !cx.json {
                eprintln!("stopping every sprite (cold), then the daemon...");
            }
            let json = cx.json;
            let cold = client
                .stop_daemon(*all, |event| {
                    if let (false, sprite_api::admin::StopEvent::Info { message }) = (json, event) {
                        eprintln!("  {message}");
                    }
                })
                .await?;
            // Gone when it no longer answers (at most 30 s).
            let mut gone = false;
            for _ in 0..300 {
                if client.daemon_status().await.is_err() {
                    gone = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            if cx.json {
                print_json(&serde_json::json!({ "stopped": gone, "sprites_cold": cold }))?;
            } else if gone {
                eprintln!(
                    "daemon stopped{}",
                    if *all {
                        format!("; {cold} sprites put cold and the host cleaned")
                    } else {
                        "; sprites keep running".to_string()
                    }
                );
            } else {
                eprintln!("the daemon accepted the stop but still answers after 30 s");
            }
            Ok(u8::from(!gone))
        }
        AdminCommand::Drain { host } => {
            if !cx.json {
                eprintln!("draining {host}: moving its sprites to other hosts...");
            }
            let report = cx.client()?.drain(host).await?;
            if cx.json {
                print_json(&report)?;
            } else {
                for moved in &report.moved {
                    println!(
                        "{}: {} -> {} ({} ms)",
                        moved.sprite, moved.from, moved.to, moved.ms
                    );
                }
                for (sprite, why) in &report.failed {
                    eprintln!("{sprite}: not moved: {why}");
                }
                println!(
                    "{host} drained: {} moved, {} not moved; it takes no new sprites",
                    report.moved.len(),
                    report.failed.len()
                );
            }
            Ok(u8::from(!report.failed.is_empty()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn registries_of_references() {
        assert_eq!(registry_of("alpine:3"), "docker.io");
        assert_eq!(registry_of("library/alpine"), "docker.io");
        assert_eq!(registry_of("ghcr.io/acme/x:1"), "ghcr.io");
        assert_eq!(registry_of("localhost:5000/base"), "localhost:5000");
        assert_eq!(registry_of("localhost/base"), "localhost");
    }

    #[test]
    fn credentials_from_the_docker_config() {
        // base64("me:s3cret")
        let config = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"bWU6czNjcmV0"},"localhost:5000":{"auth":"dTpw"}}}"#;
        assert_eq!(
            docker_credentials(config, "docker.io"),
            Some(("me".into(), "s3cret".into()))
        );
        assert_eq!(
            docker_credentials(config, "localhost:5000"),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(docker_credentials(config, "ghcr.io"), None);
        assert_eq!(docker_credentials("not json", "docker.io"), None);
    }
}
