//! Checkpoints of a sprite's filesystem: create, list, info, delete, restore.

use super::{print_json, Global, SpriteArg};
use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    pub id: String,
    #[command(flatten)]
    pub sprite: SpriteArg,
}

impl RestoreArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { id, sprite } = self;
        let name = sprite.name()?;
        eprintln!("restoring {name} to {id}; its sessions end");
        cx.client()?.restore(&name, id).await?;
        if cx.json {
            print_json(&serde_json::json!({ "restored": id, "sprite": name }))?;
        } else {
            eprintln!("restored {name} to {id}");
        }
        Ok(0)
    }
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub sprite: SpriteArg,
}

impl UpgradeArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let name = self.sprite.name()?;
        let report = cx.client()?.upgrade(&name).await?;
        if cx.json {
            print_json(&report)?;
        } else if !report.upgraded {
            eprintln!(
                "{name} already runs on the newest version of its image ({})",
                report.to
            );
        } else {
            eprintln!(
                "upgraded {name} from {} to {}; undo with: sprite restore {} -s {name}",
                report.from,
                report.to,
                report.checkpoint.as_deref().unwrap_or("?")
            );
        }
        Ok(0)
    }
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Checkpoint the filesystem now.
    Create {
        #[command(flatten)]
        sprite: SpriteArg,
        #[arg(long)]
        comment: Option<String>,
    },
    /// List checkpoints, newest first.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        sprite: SpriteArg,
        #[arg(long)]
        include_auto: bool,
    },
    /// Show one checkpoint.
    Info {
        id: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Delete a checkpoint.
    Delete {
        id: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
}

pub async fn run(cx: &Global, command: &CheckpointCommand) -> Result<u8> {
    match command {
        CheckpointCommand::Create { sprite, comment } => {
            let name = sprite.name()?;
            let events = cx.client()?.checkpoint(&name, comment.as_deref()).await?;
            let done = events
                .iter()
                .rev()
                .find_map(|e| e.data.clone())
                .unwrap_or_default();
            if cx.json {
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
            let name = sprite.name()?;
            let list = cx.client()?.checkpoints(&name, *include_auto).await?;
            if cx.json {
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
            let name = sprite.name()?;
            let info = cx.client()?.checkpoint_info(&name, id).await?;
            if cx.json {
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
            let name = sprite.name()?;
            cx.client()?.delete_checkpoint(&name, id).await?;
            eprintln!("deleted checkpoint {id} of {name}");
            Ok(0)
        }
    }
}
