//! Commands on sprites themselves: create, list, info, use, destroy, sleep, wake, URL
//! and usage.

use super::{print_json, Global, SpriteArg};
use crate::settings;
use anyhow::{bail, Result};
use clap::Subcommand;
use sprite_api::sprite::{CreateSpriteRequest, SpriteConfig, SpriteInfo};

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Name (a-z, 0-9, -); generated when absent.
    pub name: Option<String>,
    /// Do not open a console after creating.
    #[arg(long)]
    pub skip_console: bool,
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub ram_mb: Option<u64>,
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Size of the sprite's root filesystem in GiB (default 100).
    #[arg(long)]
    pub storage_gb: Option<u64>,
    /// Image to start from: a name (`sprite images`), or a registry reference
    /// (docker.io/library/alpine:3.20), pulled first unless it is here; the daemon's
    /// default when absent.
    #[arg(long)]
    pub image: Option<String>,
    /// Fork from another sprite's checkpoint: SPRITE or SPRITE:CHECKPOINT (newest
    /// checkpoint when absent).
    #[arg(long, value_name = "SPRITE[:CHECKPOINT]", conflicts_with = "template")]
    pub from: Option<String>,
    /// Start from a template (`sprite templates list`); the sprite runs on its image.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// Idle time before warm sleep (like 30s, 5m, or never); the daemon's default
    /// when absent.
    #[arg(long, value_name = "DURATION")]
    pub warm_after: Option<String>,
    /// Idle time before cold sleep (like 10m, 1h, or never).
    #[arg(long, value_name = "DURATION")]
    pub cold_after: Option<String>,
    /// When an fsync in the sprite returns: `local` (durable on the host's disk; the
    /// object store trails by at most a second) or `store` (durable in the object
    /// store: survives losing the host). The daemon's default when absent.
    #[arg(long, value_name = "MODE")]
    pub durability: Option<sprite_api::sprite::Durability>,
    /// Run the image's Entrypoint + Cmd as service `app` (registry and archive
    /// images), the sprite's URL going to its first exposed TCP port.
    #[arg(long)]
    pub run_cmd: bool,
    /// In a cluster: the host the sprite goes to (`sprite admin hosts` lists them;
    /// placement picks one when absent).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

impl CreateArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self {
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
            durability,
            host,
            template,
            run_cmd,
        } = self;
        crate::console::ensure_local_daemon(cx).await?;
        let client = cx.client()?;
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
                durability: *durability,
            }),
            environment: None,
            wait_for_capacity: None,
            runtime: None,
            image: match image {
                Some(image) if sprite_core::image::oci::is_reference(image) => {
                    Some(super::images::image_for_reference(cx, image).await?)
                }
                other => other.clone(),
            },
            host: host.clone(),
            from: from.as_deref().map(fork_source),
            template: template.clone(),
            run_cmd: run_cmd.then_some(true),
        };
        let info = crate::console::create_with_progress(&client, &request).await?;
        if cx.json {
            print_json(&info)?;
        } else {
            eprintln!("created sprite {} ({})", info.name, info.url);
        }
        if *skip_console || cx.json {
            return Ok(0);
        }
        crate::console::console(&client, &name).await
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    pub prefix: Option<String>,
}

impl ListArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { prefix } = self;
        let sprites = cx.client()?.list_all(prefix.as_deref()).await?;
        if cx.json {
            return print_json(&sprites).map(|()| 0);
        }
        print_table(&sprites);
        Ok(0)
    }
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub sprite: SpriteArg,
}

impl InfoArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { sprite } = self;
        let info = cx.client()?.get(&sprite.name()?).await?;
        if cx.json {
            print_json(&info)?;
        } else {
            print_info(&info);
        }
        Ok(0)
    }
}

#[derive(Debug, clap::Args)]
pub struct UseArgs {
    pub name: String,
}

impl UseArgs {
    /// Needs no daemon: it writes ./.sprite.
    pub async fn run(&self, _cx: &Global) -> Result<u8> {
        let Self { name } = self;
        sprite_api::validate_sprite_name(name)?;
        let path = settings::write_sprite_file(&std::env::current_dir()?, name)?;
        eprintln!("using sprite {name} in this directory ({})", path.display());
        Ok(0)
    }
}

#[derive(Debug, clap::Args)]
pub struct DestroyArgs {
    pub name: Option<String>,
    #[command(flatten)]
    pub sprite: SpriteArg,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

impl DestroyArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self {
            name,
            sprite,
            force,
        } = self;
        let name = sprite.or(name.as_deref())?;
        if !force
            && !confirm(&format!(
                "destroy sprite {name} and everything in it? [y/N] "
            ))?
        {
            bail!("not confirmed; pass --force to skip the question");
        }
        cx.client()?.destroy(&name).await?;
        if cx.json {
            print_json(&serde_json::json!({ "destroyed": name }))?;
        } else {
            eprintln!("destroyed sprite {name}");
        }
        Ok(0)
    }
}

#[derive(Debug, clap::Args)]
pub struct UrlArgs {
    #[command(flatten)]
    pub sprite: SpriteArg,
    #[command(subcommand)]
    pub command: Option<UrlCommand>,
}

impl UrlArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { sprite, command } = self;
        let client = cx.client()?;
        let info = match command {
            None => client.get(&sprite.name()?).await?,
            Some(UrlCommand::Update {
                auth,
                sprite: inner,
            }) => {
                let name =
                    settings::sprite_name(inner.sprite.as_deref().or(sprite.sprite.as_deref()))?;
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
        if cx.json {
            print_json(&serde_json::json!({ "url": info.url, "auth": info.url_settings.auth }))?;
        } else {
            println!("{}", info.url);
            match info.url_settings.auth {
                sprite_api::sprite::UrlAuth::Public => {
                    eprintln!("auth: public (anyone who can reach it)")
                }
                sprite_api::sprite::UrlAuth::Sprite => eprintln!(
                    "auth: sprite (a token: Authorization: Bearer, or open {}/?token=TOKEN once)",
                    info.url
                ),
            }
        }
        Ok(0)
    }
}

#[derive(Debug, clap::Args)]
pub struct SleepArgs {
    pub name: Option<String>,
    #[command(flatten)]
    pub sprite: SpriteArg,
    /// Stop the sprite instead of freezing it.
    #[arg(long)]
    pub cold: bool,
}

impl SleepArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { name, sprite, cold } = self;
        let name = sprite.or(name.as_deref())?;
        let info = cx.client()?.sleep(&name, *cold).await?;
        print_status(cx, &name, &info)
    }
}

/// What `sleep` and `wake` print: the sprite's status now.
fn print_status(cx: &Global, name: &str, info: &SpriteInfo) -> Result<u8> {
    if cx.json {
        print_json(info)?;
    } else {
        println!("sprite {name} is {}", info.status.as_str());
    }
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct WakeArgs {
    pub name: Option<String>,
    #[command(flatten)]
    pub sprite: SpriteArg,
}

impl WakeArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { name, sprite } = self;
        let name = sprite.or(name.as_deref())?;
        let info = cx.client()?.wake(&name).await?;
        print_status(cx, &name, &info)
    }
}

#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    pub name: Option<String>,
    #[command(flatten)]
    pub sprite: SpriteArg,
    /// The host to move to (`sprite admin hosts` lists them); placement picks one
    /// when absent.
    #[arg(long, value_name = "HOST")]
    pub to: Option<String>,
}

impl MoveArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { name, sprite, to } = self;
        let name = sprite.or(name.as_deref())?;
        let report = cx.client()?.move_sprite(&name, to.as_deref()).await?;
        if cx.json {
            print_json(&report)?;
        } else {
            println!(
                "{}: moved from {} to {} ({} ms); it wakes there on the next request",
                report.sprite, report.from, report.to, report.ms
            );
        }
        Ok(0)
    }
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub sprite: SpriteArg,
    /// History since a time (2026-12-01T00:00:00Z) or for a duration back (90m, 24h,
    /// 7d); default 24h.
    #[arg(long)]
    pub since: Option<String>,
}

impl UsageArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { sprite, since } = self;
        let name = sprite.name()?;
        let usage = cx.client()?.usage(&name, since.as_deref()).await?;
        if cx.json {
            print_json(&usage)?;
            return Ok(0);
        }
        if usage.storage == sprite_api::admin::StorageKind::Spritefs {
            println!(
                "stored:  {} in {} chunks",
                human_bytes(usage.bytes_stored.unwrap_or_default()),
                usage.chunks.unwrap_or_default()
            );
            for checkpoint in usage.checkpoints.iter().flatten() {
                println!(
                    "  {:<10} +{}",
                    checkpoint.id,
                    human_bytes(checkpoint.bytes_added)
                );
            }
        } else {
            println!("{name} uses local storage; bytes stored are not counted");
        }
        let hours = usage.history.unwrap_or_default();
        if hours.is_empty() {
            println!("no usage recorded in that time (samples are taken every usage_interval)");
            return Ok(0);
        }
        print!("{}", usage_chart(&hours));
        Ok(0)
    }
}

/// One line per hour: CPU as a bar, then memory, network and time awake.
fn usage_chart(hours: &[sprite_api::admin::UsageHour]) -> String {
    const WIDTH: f64 = 20.0;
    let top = hours
        .iter()
        .map(|h| h.cpu_seconds)
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let mut text = format!(
        "{:<17} {:<20} {:>8} {:>10} {:>10} {:>10} {:>7}\n",
        "HOUR (UTC)", "CPU", "CPU s", "MEM AVG", "NET IN", "NET OUT", "AWAKE"
    );
    for hour in hours {
        let filled = ((hour.cpu_seconds / top) * WIDTH).round() as usize;
        let bar: String = "#".repeat(filled.min(WIDTH as usize));
        let awake = hour.running_seconds + hour.warm_seconds;
        let total = awake + hour.cold_seconds;
        let awake_share = if total > 0.0 {
            format!("{:.0}%", hour.running_seconds / total * 100.0)
        } else {
            "-".to_string()
        };
        text.push_str(&format!(
            "{:<17} {:<20} {:>8.1} {:>10} {:>10} {:>10} {:>7}\n",
            hour.hour.get(..16).unwrap_or(&hour.hour).replace('T', " "),
            bar,
            hour.cpu_seconds,
            human_bytes(hour.memory_avg_bytes),
            human_bytes(hour.net_rx_bytes),
            human_bytes(hour.net_tx_bytes),
            awake_share
        ));
    }
    text
}

#[derive(Debug, Subcommand)]
pub enum UrlCommand {
    /// Change who may open the URL: `sprite` (a token of the organization) or `public`.
    Update {
        #[arg(long, value_parser = ["sprite", "public"])]
        auth: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
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
    let durability = info
        .storage
        .as_ref()
        .and_then(|s| s.durability)
        .or(info.config.durability);
    if let Some(durability) = durability {
        let lag = info
            .storage
            .as_ref()
            .and_then(|s| s.lag_bytes.zip(s.lag_ms));
        match lag {
            Some((0, _)) => println!(
                "durable:  {} (the store is up to date)",
                durability.as_str()
            ),
            Some((bytes, ms)) => println!(
                "durable:  {} (the store trails by {} written {} ms ago)",
                durability.as_str(),
                human_bytes(bytes),
                ms
            ),
            None => println!("durable:  {}", durability.as_str()),
        }
    }
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

/// `SPRITE` or `SPRITE:CHECKPOINT`.
pub fn fork_source(text: &str) -> sprite_api::sprite::ForkSource {
    let (sprite, checkpoint) = match text.split_once(':') {
        Some((sprite, checkpoint)) => (sprite, Some(checkpoint.to_string())),
        None => (text, None),
    };
    sprite_api::sprite::ForkSource {
        sprite: sprite.to_string(),
        checkpoint,
    }
}

/// `sprite templates ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TemplatesCommand {
    /// Make a template of a sprite's checkpoint (its newest when none is named); it
    /// stays when the sprite is destroyed.
    ///
    /// Example: sprite templates create node-app --from dev:v3
    Create {
        name: String,
        /// SPRITE or SPRITE:CHECKPOINT.
        #[arg(long, value_name = "SPRITE[:CHECKPOINT]")]
        from: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// The organization's templates.
    #[command(alias = "ls")]
    List,
    /// Delete a template (sprites made from it keep their files).
    Delete { name: String },
}

impl TemplatesCommand {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let client = cx.client()?;
        match self {
            TemplatesCommand::Create {
                name,
                from,
                comment,
            } => {
                let request = sprite_api::sprite::CreateTemplateRequest {
                    name: name.clone(),
                    from: fork_source(from),
                    comment: comment.clone(),
                };
                let info = client.create_template(&request).await?;
                if cx.json {
                    print_json(&info)?;
                } else {
                    println!(
                        "template {} made from {}:{}; use it with: sprite create --template {}",
                        info.name, info.source_sprite, info.source_checkpoint, info.name
                    );
                }
            }
            TemplatesCommand::List => {
                let list = client.templates().await?;
                if cx.json {
                    print_json(&list)?;
                } else {
                    println!("{:<24} {:<28} {:<10} CREATED", "NAME", "FROM", "IMAGE");
                    for t in &list.templates {
                        let from = format!("{}:{}", t.source_sprite, t.source_checkpoint);
                        println!(
                            "{:<24} {:<28} {:<10} {}",
                            t.name, from, t.image, t.created_at
                        );
                    }
                }
            }
            TemplatesCommand::Delete { name } => {
                client.delete_template(name).await?;
                if !cx.json {
                    println!("template {name} deleted");
                }
            }
        }
        Ok(0)
    }
}
