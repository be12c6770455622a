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
    /// Delete chunks and layers no sprite or checkpoint references; prints what it freed.
    Gc,
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
    }
}
