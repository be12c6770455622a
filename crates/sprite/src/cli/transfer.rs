//! Moving bytes between this machine and a sprite: `cp` and port forwarding.

use super::{Global, SpriteArg};
use anyhow::{bail, Context, Result};

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// PORT or LOCAL:REMOTE (repeatable).
    pub ports: Vec<String>,
    /// Connect stdin and stdout to HOST:PORT in the sprite (an ssh ProxyCommand).
    #[arg(short = 'W', value_name = "HOST:PORT")]
    pub stdio: Option<String>,
    #[command(flatten)]
    pub sprite: SpriteArg,
}

impl ProxyArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self {
            ports,
            stdio,
            sprite,
        } = self;
        let name = sprite.name()?;
        let client = cx.client()?;
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
}

#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// Sources, then the destination.
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    pub paths: Vec<String>,
    /// Copy directories and everything in them.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// No progress line.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Uploads: copy what symbolic links in a tree point at (without it, links are
    /// skipped: a link to ~/.ssh must not carry your keys into a sprite).
    #[arg(short = 'L', long = "dereference")]
    pub dereference: bool,
    #[command(flatten)]
    pub sprite: SpriteArg,
}

impl CpArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self {
            paths,
            recursive,
            quiet,
            dereference,
            sprite,
        } = self;
        let client = cx.client()?;
        let (dest, sources) = paths
            .split_last()
            .context("give at least one source and a destination")?;
        let started = std::time::Instant::now();
        let report = crate::copy::run(
            &client,
            || sprite.name(),
            sources,
            dest,
            crate::copy::Options {
                recursive: *recursive,
                quiet: *quiet || cx.json,
                follow: *dereference,
            },
        )
        .await?;
        if cx.json {
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
}
