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
    /// Import a root filesystem tarball (tar, .tar.gz, .tar.xz, .tar.zst; `-` reads
    /// stdin) as image NAME. Owners are kept by number: uid 0 in the tarball is root in
    /// the sprite.
    Import { name: String, file: PathBuf },
}

impl ImagesArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        match &self.command {
            Some(ImagesCommand::Import { name, file }) => {
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
                            "{:<10} {:<9} {}",
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
