//! Commands that run things in a sprite: exec, console, sessions.

use super::{print_json, Global, SpriteArg};
use anyhow::{Context, Result};
use clap::Subcommand;
use sprite_api::exec::ExecParams;
use sprite_client::ExecEvent;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub sprite: SpriteArg,
}

impl ConsoleArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self { sprite } = self;
        let name = sprite.name()?;
        crate::console::console(&cx.client()?, &name).await
    }
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub sprite: SpriteArg,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Working directory inside the sprite.
    #[arg(long)]
    pub dir: Option<String>,
    /// Extra environment (repeatable), K=V.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    pub async fn run(&self, cx: &Global) -> Result<u8> {
        let Self {
            sprite,
            tty,
            dir,
            env,
            command,
        } = self;
        let name = sprite.name()?;
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
            let stream = cx.client()?.exec(&name, &params).await?;
            return crate::console::interactive(stream).await;
        }
        let stream = cx.client()?.exec(&name, &params).await?;
        exec_pipes(stream).await
    }
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Re-attach to a session (replays recent output).
    Attach {
        id: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Signal a session; if it has not exited after --timeout, send SIGKILL.
    ///
    /// Examples: `sprite sessions kill 12`, `sprite sessions kill 12 --signal INT
    /// --timeout 0s` (only signal).
    Kill {
        id: String,
        #[command(flatten)]
        sprite: SpriteArg,
        #[arg(long, default_value = "TERM")]
        signal: String,
        /// How long to wait for the exit before SIGKILL (`0s`: do not escalate).
        #[arg(long, default_value = "10s")]
        timeout: String,
    },
}

pub async fn sessions(cx: &Global, command: &SessionsCommand) -> Result<u8> {
    match command {
        SessionsCommand::List { sprite } => {
            let name = sprite.name()?;
            let sessions = cx.client()?.sessions(&name).await?;
            if cx.json {
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
            let name = sprite.name()?;
            let mut stream = cx.client()?.attach(&name, id).await?;
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
            let name = sprite.name()?;
            let json = cx.json;
            let events = cx
                .client()?
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
