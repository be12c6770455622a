//! Command-line parsing and the commands that talk to the daemon.

use crate::settings;
use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use sprite_api::exec::ExecParams;
use sprite_api::sprite::{CreateSpriteRequest, SpriteConfig, SpriteInfo};
use sprite_client::{Client, ExecEvent};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "sprite", version, about = "Disposable Linux computers that sleep when idle", after_help = EXAMPLES)]
pub struct Args {
    /// API base URL (default: $SPRITES_API_URL or http://127.0.0.1:7070).
    #[arg(long, global = true)]
    pub api_url: Option<String>,
    /// API token (default: $SPRITE_TOKEN or the local daemon's admin token); for
    /// `sprite daemon`, the admin token it accepts.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  sprite create dev             create a sprite named dev and open its console
  sprite exec -s dev -- uname -a
  tar c src | sprite exec -s dev -- tar x -C /tmp
  sprite list --json
  sprite destroy dev --force";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sprite daemon (the API server).
    Daemon(crate::daemon::DaemonArgs),
    /// The per-host storage process (started by the daemon).
    #[command(hide = true)]
    Storage(crate::storage::StorageArgs),
    /// Create a sprite and open its console.
    #[command(
        after_help = "Examples:\n  sprite create\n  sprite create dev --skip-console --label team=web"
    )]
    Create {
        /// Name (a-z, 0-9, -); generated when absent.
        name: Option<String>,
        /// Do not open a console after creating.
        #[arg(long)]
        skip_console: bool,
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        ram_mb: Option<u64>,
        #[arg(long)]
        cpus: Option<u32>,
        /// Size of the sprite's root filesystem in GiB (default 100).
        #[arg(long)]
        storage_gb: Option<u64>,
        /// Image to start from (`sprite images`); the daemon's default when absent.
        #[arg(long)]
        image: Option<String>,
        /// Fork from another sprite's checkpoint: SPRITE or SPRITE:CHECKPOINT (newest
        /// checkpoint when absent).
        #[arg(long, value_name = "SPRITE[:CHECKPOINT]")]
        from: Option<String>,
        /// Idle time before warm sleep (like 30s, 5m, or never); the daemon's default
        /// when absent.
        #[arg(long, value_name = "DURATION")]
        warm_after: Option<String>,
        /// Idle time before cold sleep (like 10m, 1h, or never).
        #[arg(long, value_name = "DURATION")]
        cold_after: Option<String>,
    },
    /// List sprites.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Show one sprite.
    Info {
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Make NAME the sprite of this directory (writes ./.sprite).
    Use { name: String },
    /// Open an interactive shell (detach with Ctrl+\).
    #[command(alias = "c")]
    Console {
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Run a command in a sprite.
    #[command(
        alias = "x",
        after_help = "Examples:\n  sprite exec -s dev -- ls -la /\n  sprite x --tty -- top\n  echo hi | sprite exec -- cat"
    )]
    Exec {
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
        /// Allocate a terminal.
        #[arg(short = 't', long)]
        tty: bool,
        /// Working directory inside the sprite.
        #[arg(long)]
        dir: Option<String>,
        /// Extra environment (repeatable), K=V.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// List, attach to, or kill exec sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Destroy a sprite and everything in it.
    Destroy {
        name: Option<String>,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Create, list, show or delete checkpoints of a sprite's filesystem.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Restore a checkpoint (the sprite's sessions end; it restarts on the checkpoint).
    Restore {
        id: String,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Long-running processes of a sprite: started at boot and cold wake in `needs`
    /// order, restarted when they exit, logged to /.sprite/logs/services.
    #[command(subcommand)]
    Services(crate::services::ServicesCommand),
    /// Forward local ports to ports in a sprite, or stdin/stdout to one with -W.
    #[command(
        after_help = "Examples:\n  sprite proxy 5432 -s db            127.0.0.1:5432 → port 5432 in db\n  sprite proxy 8000:3000 9229 -s dev\n  ssh -o ProxyCommand='sprite proxy -W localhost:22 -s dev' sprite@dev"
    )]
    Proxy {
        /// PORT or LOCAL:REMOTE (repeatable).
        ports: Vec<String>,
        /// Connect stdin and stdout to HOST:PORT in the sprite (an ssh ProxyCommand).
        #[arg(short = 'W', value_name = "HOST:PORT")]
        stdio: Option<String>,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Copy files and directories between this machine and a sprite.
    #[command(
        after_help = "Paths in a sprite are SPRITE:PATH, or :PATH for the current sprite (relative ones start in /home/sprite).\n\nExamples:\n  sprite cp notes.txt dev:/home/sprite/\n  sprite cp -r ./src dev:project/src\n  sprite cp -rL ./project dev:project   # copy what symlinks point at\n  sprite cp -r dev:/var/log/app ./logs\n  sprite cp :/etc/hosts . -s dev"
    )]
    Cp {
        /// Sources, then the destination.
        #[arg(required = true, num_args = 2.., value_name = "PATH")]
        paths: Vec<String>,
        /// Copy directories and everything in them.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// No progress line.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Uploads: copy what symbolic links in a tree point at (without it, links are
        /// skipped: a link to ~/.ssh must not carry your keys into a sprite).
        #[arg(short = 'L', long = "dereference")]
        dereference: bool,
        /// The sprite that `:PATH` means (default: `sprite use`).
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Show a sprite's URL (and who may open it), or change that with `update`.
    #[command(
        after_help = "Examples:\n  sprite url -s dev\n  sprite url update --auth public -s dev"
    )]
    Url {
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
        #[command(subcommand)]
        command: Option<UrlCommand>,
    },
    /// Put a sprite to sleep now: warm (frozen, memory kept, wakes in milliseconds) or,
    /// with --cold, cold (stopped, disk in the object store, no memory used).
    #[command(after_help = "Examples:\n  sprite sleep dev\n  sprite sleep dev --cold")]
    Sleep {
        name: Option<String>,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
        /// Stop the sprite instead of freezing it.
        #[arg(long)]
        cold: bool,
    },
    /// Wake a sleeping sprite (any command that needs it also wakes it).
    Wake {
        name: Option<String>,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Storage a sprite uses: bytes stored in the object store, per checkpoint too.
    Usage {
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Administration of the daemon.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Show the images and their build state, or import one.
    #[command(
        after_help = "Examples:\n  sprite images\n  sprite images import alpine alpine-minirootfs.tar.gz\n  docker export $(docker create ubuntu) | sprite images import ubuntu -\n  sprite create --image alpine"
    )]
    Images {
        #[command(subcommand)]
        command: Option<ImagesCommand>,
    },
    /// Print version information.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the images (the default).
    List,
    /// Import a root filesystem tarball (tar, .tar.gz, .tar.xz, .tar.zst; `-` reads
    /// stdin) as image NAME. Owners are kept by number: uid 0 in the tarball is root in
    /// the sprite.
    Import { name: String, file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Delete chunks and layers no sprite or checkpoint references; prints what it freed.
    Gc,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Checkpoint the filesystem now.
    Create {
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// List checkpoints, newest first.
    #[command(alias = "ls")]
    List {
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
        #[arg(long)]
        include_auto: bool,
    },
    /// Show one checkpoint.
    Info {
        id: String,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Delete a checkpoint.
    Delete {
        id: String,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UrlCommand {
    /// Change who may open the URL: `sprite` (a token of the organization) or `public`.
    Update {
        #[arg(long, value_parser = ["sprite", "public"])]
        auth: String,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions.
    #[command(alias = "ls")]
    List {
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Re-attach to a session (replays recent output).
    Attach {
        id: String,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
    },
    /// Signal a session; if it has not exited after --timeout, send SIGKILL.
    ///
    /// Examples: `sprite sessions kill 12`, `sprite sessions kill 12 --signal INT
    /// --timeout 0s` (only signal).
    Kill {
        id: String,
        #[arg(short = 's', long = "sprite")]
        sprite: Option<String>,
        #[arg(long, default_value = "TERM")]
        signal: String,
        /// How long to wait for the exit before SIGKILL (`0s`: do not escalate).
        #[arg(long, default_value = "10s")]
        timeout: String,
    },
}

/// Prints an error with its cause chain and a hint.
pub fn print_error(error: &anyhow::Error) {
    let mut text = format!("error: {error}");
    for cause in error.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    eprintln!("{text}");
    if let Some(hint) = hint_for(error) {
        eprintln!("hint: {hint}");
    }
}

fn hint_for(error: &anyhow::Error) -> Option<&'static str> {
    for cause in error.chain() {
        if let Some(client) = cause.downcast_ref::<sprite_client::ClientError>() {
            return Some(match client {
                sprite_client::ClientError::Unreachable { .. } => {
                    "start the daemon with `sprite daemon` (as root), or set SPRITES_API_URL"
                }
                sprite_client::ClientError::Api { status: 401, .. } => {
                    "check --token / SPRITE_TOKEN"
                }
                sprite_client::ClientError::Api { status: 404, .. } => {
                    "`sprite list` shows the sprites that exist"
                }
                sprite_client::ClientError::Api { status: 409, .. } => {
                    "pick another name, or `sprite destroy` the existing sprite"
                }
                _ => return None,
            });
        }
    }
    None
}

pub(crate) fn client(args: &Args) -> Result<Client> {
    Ok(Client::new(
        &settings::api_url(args.api_url.as_deref()),
        &settings::token(args.token.as_deref())?,
    ))
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encode JSON")?
    );
    Ok(())
}

fn generated_name() -> String {
    const ADJECTIVES: [&str; 8] = [
        "brisk", "calm", "eager", "fuzzy", "jolly", "lucky", "quiet", "sunny",
    ];
    const NOUNS: [&str; 8] = [
        "otter", "comet", "maple", "pixel", "river", "falcon", "ember", "tulip",
    ];
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    format!(
        "{}-{}-{}",
        ADJECTIVES[bytes[0] as usize % 8],
        NOUNS[bytes[1] as usize % 8],
        u16::from_le_bytes([bytes[2], bytes[3]]) % 10000
    )
}

pub async fn run(args: Args) -> Result<u8> {
    match &args.command {
        Command::Daemon(_) => {
            let token = args.token.clone();
            let Command::Daemon(daemon) = args.command else {
                return Ok(1);
            };
            crate::daemon::run(daemon, token).await
        }
        Command::Storage(_) => {
            let Command::Storage(storage) = args.command else {
                return Ok(1);
            };
            crate::storage::run(storage).await
        }
        Command::Version => {
            if args.json {
                print_json(
                    &serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "api": sprite_api::SERVER_VERSION }),
                )?;
            } else {
                println!("sprite {}", env!("CARGO_PKG_VERSION"));
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Args::command(),
                "sprite",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Use { name } => {
            sprite_api::validate_sprite_name(name)?;
            let path = settings::write_sprite_file(&std::env::current_dir()?, name)?;
            eprintln!("using sprite {name} in this directory ({})", path.display());
            Ok(0)
        }
        Command::Create {
            name,
            skip_console,
            labels,
            ram_mb,
            cpus,
            storage_gb,
            image,
            from,
            warm_after,
            cold_after,
        } => {
            crate::console::ensure_local_daemon(&args).await?;
            let client = client(&args)?;
            let name = name.clone().unwrap_or_else(generated_name);
            let request = CreateSpriteRequest {
                name: name.clone(),
                url_settings: None,
                labels: Some(labels.clone()).filter(|l| !l.is_empty()),
                config: Some(SpriteConfig {
                    ram_mb: *ram_mb,
                    cpus: *cpus,
                    storage_gb: *storage_gb,
                    warm_after: warm_after.clone(),
                    cold_after: cold_after.clone(),
                    region: None,
                }),
                environment: None,
                wait_for_capacity: None,
                runtime: None,
                image: image.clone(),
                from: from.as_deref().map(|text| {
                    let (sprite, checkpoint) = match text.split_once(':') {
                        Some((sprite, checkpoint)) => (sprite, Some(checkpoint.to_string())),
                        None => (text, None),
                    };
                    sprite_api::sprite::ForkSource {
                        sprite: sprite.to_string(),
                        checkpoint,
                    }
                }),
            };
            let info = crate::console::create_with_progress(&client, &request).await?;
            if args.json {
                print_json(&info)?;
            } else {
                eprintln!("created sprite {} ({})", info.name, info.url);
            }
            if *skip_console || args.json {
                return Ok(0);
            }
            crate::console::console(&client, &name).await
        }
        Command::List { prefix } => {
            let sprites = client(&args)?.list_all(prefix.as_deref()).await?;
            if args.json {
                return print_json(&sprites).map(|()| 0);
            }
            print_table(&sprites);
            Ok(0)
        }
        Command::Info { sprite } => {
            let info = client(&args)?
                .get(&settings::sprite_name(sprite.as_deref())?)
                .await?;
            if args.json {
                print_json(&info)?;
            } else {
                print_info(&info);
            }
            Ok(0)
        }
        Command::Cp {
            paths,
            recursive,
            quiet,
            dereference,
            sprite,
        } => {
            let client = client(&args)?;
            let (dest, sources) = paths
                .split_last()
                .context("give at least one source and a destination")?;
            let started = std::time::Instant::now();
            let report = crate::copy::run(
                &client,
                || settings::sprite_name(sprite.as_deref()),
                sources,
                dest,
                crate::copy::Options {
                    recursive: *recursive,
                    quiet: *quiet || args.json,
                    follow: *dereference,
                },
            )
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if !quiet {
                eprintln!(
                    "copied {} file(s), {} director(ies), {:.1} MiB in {:.1} s",
                    report.files,
                    report.directories,
                    report.bytes as f64 / (1 << 20) as f64,
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(0)
        }
        Command::Proxy {
            ports,
            stdio,
            sprite,
        } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let client = client(&args)?;
            match stdio {
                Some(target) => crate::tcp_proxy::stdio(&client, &name, target).await,
                None if ports.is_empty() => {
                    bail!("give a PORT or LOCAL:REMOTE to forward, or -W HOST:PORT")
                }
                None => {
                    let forwards = ports
                        .iter()
                        .map(|p| crate::tcp_proxy::parse_forward(p))
                        .collect::<Result<Vec<_>>>()?;
                    crate::tcp_proxy::forward(&client, &name, &forwards).await
                }
            }
        }
        Command::Url { sprite, command } => {
            let client = client(&args)?;
            let info = match command {
                None => {
                    client
                        .get(&settings::sprite_name(sprite.as_deref())?)
                        .await?
                }
                Some(UrlCommand::Update {
                    auth,
                    sprite: inner,
                }) => {
                    let name = settings::sprite_name(inner.as_deref().or(sprite.as_deref()))?;
                    let auth = if auth == "public" {
                        sprite_api::sprite::UrlAuth::Public
                    } else {
                        sprite_api::sprite::UrlAuth::Sprite
                    };
                    let request = sprite_api::sprite::UpdateSpriteRequest {
                        url_settings: Some(sprite_api::sprite::UrlSettingsUpdate {
                            auth: Some(auth),
                            private_access: None,
                        }),
                        ..Default::default()
                    };
                    client.update(&name, &request).await?
                }
            };
            if args.json {
                print_json(
                    &serde_json::json!({ "url": info.url, "auth": info.url_settings.auth }),
                )?;
            } else {
                println!("{}", info.url);
                match info.url_settings.auth {
                    sprite_api::sprite::UrlAuth::Public => eprintln!("auth: public (anyone who can reach it)"),
                    sprite_api::sprite::UrlAuth::Sprite => eprintln!(
                        "auth: sprite (a token: Authorization: Bearer, or open {}/?token=TOKEN once)",
                        info.url
                    ),
                }
            }
            Ok(0)
        }
        Command::Sleep { name, sprite, cold } => {
            let name = settings::sprite_name(name.as_deref().or(sprite.as_deref()))?;
            let info = client(&args)?.sleep(&name, *cold).await?;
            if args.json {
                print_json(&info)?;
            } else {
                println!("sprite {name} is {}", info.status.as_str());
            }
            Ok(0)
        }
        Command::Wake { name, sprite } => {
            let name = settings::sprite_name(name.as_deref().or(sprite.as_deref()))?;
            let info = client(&args)?.wake(&name).await?;
            if args.json {
                print_json(&info)?;
            } else {
                println!("sprite {name} is {}", info.status.as_str());
            }
            Ok(0)
        }
        Command::Console { sprite } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            crate::console::console(&client(&args)?, &name).await
        }
        Command::Exec {
            sprite,
            tty,
            dir,
            env,
            command,
        } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let mut params = ExecParams::from_query(&[], 0).map_err(anyhow::Error::msg)?;
            params.argv = command.clone();
            params.path = command[0].clone();
            params.dir = dir.clone();
            params.tty = *tty;
            params.stdin = true;
            if !env.is_empty() {
                let mut pairs = Vec::new();
                for entry in env {
                    let (k, v) = entry
                        .split_once('=')
                        .with_context(|| format!("--env {entry:?} is not K=V"))?;
                    pairs.push((k.to_string(), v.to_string()));
                }
                // Keep the default PATH when the caller adds variables.
                if !pairs.iter().any(|(k, _)| k == "PATH") {
                    pairs.insert(
                        0,
                        (
                            "PATH".into(),
                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                        ),
                    );
                    pairs.insert(1, ("HOME".into(), "/home/sprite".into()));
                }
                params.env = Some(pairs);
            }
            if *tty {
                let (cols, rows) = crate::console::terminal_size();
                params.cols = cols;
                params.rows = rows;
                let stream = client(&args)?.exec(&name, &params).await?;
                return crate::console::interactive(stream).await;
            }
            let stream = client(&args)?.exec(&name, &params).await?;
            exec_pipes(stream).await
        }
        Command::Sessions(sessions) => sessions_command(&args, sessions).await,
        Command::Destroy {
            name,
            sprite,
            force,
        } => {
            let name = match name.as_deref().or(sprite.as_deref()) {
                Some(name) => name.to_string(),
                None => settings::sprite_name(None)?,
            };
            if !force
                && !confirm(&format!(
                    "destroy sprite {name} and everything in it? [y/N] "
                ))?
            {
                bail!("not confirmed; pass --force to skip the question");
            }
            client(&args)?.destroy(&name).await?;
            if args.json {
                print_json(&serde_json::json!({ "destroyed": name }))?;
            } else {
                eprintln!("destroyed sprite {name}");
            }
            Ok(0)
        }
        Command::Checkpoint(command) => checkpoint_command(&args, command).await,
        Command::Services(command) => crate::services::run(&args, command).await,
        Command::Restore { id, sprite } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            eprintln!("restoring {name} to {id}; its sessions end");
            client(&args)?.restore(&name, id).await?;
            if args.json {
                print_json(&serde_json::json!({ "restored": id, "sprite": name }))?;
            } else {
                eprintln!("restored {name} to {id}");
            }
            Ok(0)
        }
        Command::Usage { sprite } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let usage = client(&args)?.usage(&name).await?;
            if args.json {
                print_json(&usage)?;
            } else if usage["storage"] == "spritefs" {
                println!(
                    "stored:  {} bytes in {} chunks",
                    usage["bytes_stored"], usage["chunks"]
                );
                for checkpoint in usage["checkpoints"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<10} +{} bytes",
                        checkpoint["id"].as_str().unwrap_or(""),
                        checkpoint["bytes_added"]
                    );
                }
            } else {
                println!("{name} uses local storage; usage is not counted");
            }
            Ok(0)
        }
        Command::Admin(AdminCommand::Gc) => {
            let freed = client(&args)?.collect_garbage().await?;
            if args.json {
                print_json(&freed)?;
            } else {
                println!(
                    "freed {} bytes ({} chunks, {} layers)",
                    freed["bytes_freed"], freed["chunks"], freed["layers"]
                );
            }
            Ok(0)
        }
        Command::Images {
            command: Some(ImagesCommand::Import { name, file }),
        } => {
            eprintln!("importing {} as image {name} ...", file.display());
            let client = client(&args)?;
            let status = if file.as_os_str() == "-" {
                client.import_image(name, tokio::io::stdin()).await?
            } else {
                let opened = tokio::fs::File::open(file)
                    .await
                    .with_context(|| format!("open {}", file.display()))?;
                client.import_image(name, opened).await?
            };
            if args.json {
                print_json(&status)?;
            } else {
                eprintln!("image {name} is ready: sprite create --image {name}");
            }
            Ok(0)
        }
        Command::Images { .. } => {
            let images = client(&args)?.images().await?;
            if args.json {
                print_json(&images)?;
            } else {
                for image in images["images"].as_array().into_iter().flatten() {
                    println!(
                        "{:<10} {:<9} {}",
                        image["name"].as_str().unwrap_or(""),
                        image["state"].as_str().unwrap_or(""),
                        image["detail"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(0)
        }
    }
}

fn confirm(question: &str) -> Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("refusing to destroy without a terminal to confirm; pass --force");
    }
    eprint!("{question}");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn print_table(sprites: &[SpriteInfo]) {
    println!(
        "{:<30} {:<8} {:<25} {:>9} URL",
        "NAME", "STATUS", "CREATED", "STORED"
    );
    for sprite in sprites {
        let stored = sprite
            .storage
            .as_ref()
            .map_or_else(|| "-".to_string(), |s| human_bytes(s.bytes_stored));
        println!(
            "{:<30} {:<8} {:<25} {:>9} {}",
            sprite.name,
            sprite.status.as_str(),
            sprite.created_at,
            stored,
            sprite.url
        );
    }
}

/// `1536` → `1.5 KiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Non-TTY exec: stdin streamed in, stdout/stderr passed through byte for byte, the
/// command's exit code returned.
async fn exec_pipes(stream: sprite_client::ExecStream) -> Result<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sender, mut receiver) = stream.split();
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sender.send_stdin(&buffer[..n]).await.is_err() {
                        return sender;
                    }
                }
            }
        }
        let _ = sender.send_eof().await;
        sender
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let code = loop {
        match receiver.next().await? {
            ExecEvent::Stdout(data) => stdout.write_all(&data).await.context("write stdout")?,
            ExecEvent::Stderr(data) => stderr.write_all(&data).await.context("write stderr")?,
            ExecEvent::Exit(code) => break code,
            _ => {}
        }
    };
    stdout.flush().await.context("flush stdout")?;
    input.abort();
    let _ = std::io::stdout().flush();
    Ok((code & 0xff) as u8)
}

async fn checkpoint_command(args: &Args, command: &CheckpointCommand) -> Result<u8> {
    match command {
        CheckpointCommand::Create { sprite, comment } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let events = client(args)?.checkpoint(&name, comment.as_deref()).await?;
            let done = events
                .iter()
                .rev()
                .find_map(|e| e.data.clone())
                .unwrap_or_default();
            if args.json {
                print_json(&events)?;
            } else {
                eprintln!("{done}");
            }
            Ok(0)
        }
        CheckpointCommand::List {
            sprite,
            include_auto,
        } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let list = client(args)?.checkpoints(&name, *include_auto).await?;
            if args.json {
                return print_json(&list).map(|()| 0);
            }
            println!("{:<16} {:<26} COMMENT", "ID", "CREATED");
            for checkpoint in list {
                println!(
                    "{:<16} {:<26} {}",
                    checkpoint.id,
                    checkpoint.create_time,
                    checkpoint.comment.unwrap_or_default()
                );
            }
            Ok(0)
        }
        CheckpointCommand::Info { id, sprite } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let info = client(args)?.checkpoint_info(&name, id).await?;
            if args.json {
                print_json(&info)?;
            } else {
                println!(
                    "id:       {}\ncreated:  {}\ncomment:  {}",
                    info.id,
                    info.create_time,
                    info.comment.unwrap_or_default()
                );
            }
            Ok(0)
        }
        CheckpointCommand::Delete { id, sprite } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            client(args)?.delete_checkpoint(&name, id).await?;
            eprintln!("deleted checkpoint {id} of {name}");
            Ok(0)
        }
    }
}

async fn sessions_command(args: &Args, command: &SessionsCommand) -> Result<u8> {
    match command {
        SessionsCommand::List { sprite } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let sessions = client(args)?.sessions(&name).await?;
            if args.json {
                return print_json(&sessions).map(|()| 0);
            }
            println!(
                "{:<6} {:<7} {:<5} {:<25} COMMAND",
                "ID", "ACTIVE", "TTY", "CREATED"
            );
            for s in sessions {
                println!(
                    "{:<6} {:<7} {:<5} {:<25} {}",
                    s.id, s.is_active, s.tty, s.created, s.command
                );
            }
            Ok(0)
        }
        SessionsCommand::Attach { id, sprite } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let mut stream = client(args)?.attach(&name, id).await?;
            // session_info says whether this is a terminal session.
            let first = stream.next().await?;
            let tty = matches!(first, ExecEvent::SessionInfo { tty: true, .. });
            if tty {
                crate::console::interactive(stream).await
            } else {
                exec_pipes(stream).await
            }
        }
        SessionsCommand::Kill {
            id,
            sprite,
            signal,
            timeout,
        } => {
            let name = settings::sprite_name(sprite.as_deref())?;
            let json = args.json;
            let events = client(args)?
                .kill_session(&name, id, signal, timeout, |event| {
                    if json {
                        println!("{event}");
                    } else if let Some(message) = event["message"].as_str() {
                        if event["type"] != "complete" {
                            eprintln!("{message}");
                        }
                    }
                })
                .await?;
            let failed = events.iter().any(|e| e["type"] == "error");
            Ok(u8::from(failed))
        }
    }
}

/// `sprite info` for people: identity, then the sleep state and why.
fn print_info(info: &SpriteInfo) {
    println!(
        "name:     {}\nid:       {}\nstatus:   {}\nurl:      {}\ncreated:  {}",
        info.name,
        info.id,
        info.status.as_str(),
        info.url,
        info.created_at
    );
    let Some(life) = &info.lifecycle else {
        return;
    };
    println!("since:    {}", life.since);
    if life.awake_because.is_empty() {
        if let Some(at) = &life.last_active_at {
            println!("idle:     since {at}");
        }
    } else {
        let reasons: Vec<String> = life
            .awake_because
            .iter()
            .map(|r| format!("{} × {}", r.count, r.description))
            .collect();
        println!("awake:    {}", reasons.join(", "));
    }
    if let Some(at) = &life.warm_at {
        println!("warm at:  {at} (if still idle)");
    }
    if let Some(at) = &life.cold_at {
        println!("cold at:  {at} (if still idle)");
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn byte_counts_read_like_df() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(23_158), "22.6 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
