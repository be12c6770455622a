//! `sprite services ...`: the services of a sprite (long-running processes that start
//! when it boots or wakes cold, restart when they exit, and log to
//! `/.sprite/logs/services/<name>.log`).

use crate::cli::{print_json, Global, SpriteArg};
use anyhow::{Context, Result};
use clap::Subcommand;
use sprite_api::services::{ServiceEvent, ServiceSpec};
use std::io::Write;

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// List the sprite's services and their state.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Create or replace a service and start it.
    #[command(
        after_help = "Examples:\n  sprite services create web --http-port 8080 -- python3 -m http.server 8080\n  sprite services create worker --needs db --env QUEUE=jobs -- ./worker.sh"
    )]
    Create {
        name: String,
        #[command(flatten)]
        sprite: SpriteArg,
        /// Environment of the service (repeatable), K=V.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory (default: the sprite user's home).
        #[arg(long)]
        dir: Option<String>,
        /// A service that must start first (repeatable).
        #[arg(long)]
        needs: Vec<String>,
        /// Port the sprite's URL is proxied to (one service per sprite).
        #[arg(long)]
        http_port: Option<u16>,
        /// Show the service's output for this long after starting it.
        #[arg(long, default_value = "2s")]
        duration: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Start a service (a stopped service stays stopped until started).
    Start {
        name: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Stop a service: SIGTERM, then SIGKILL after 10 s. It stays stopped.
    Stop {
        name: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Stop, then start a service.
    Restart {
        name: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Send a signal to a service's processes.
    Signal {
        name: String,
        /// HUP, INT, QUIT, KILL, USR1, USR2 or TERM.
        signal: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Stop and delete a service (its log stays).
    Delete {
        name: String,
        #[command(flatten)]
        sprite: SpriteArg,
    },
    /// Print the end of a service's log; -f shows the current run's recent output and
    /// keeps following it, run after run.
    Logs {
        name: String,
        #[command(flatten)]
        sprite: SpriteArg,
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep printing new output (Ctrl+C ends).
        #[arg(short, long)]
        follow: bool,
    },
}

fn print_event(event: &ServiceEvent) {
    use sprite_api::services::ServiceEventKind as Kind;
    match event.kind {
        Kind::Stdout => {
            let _ = std::io::stdout().write_all(event.data.as_deref().unwrap_or("").as_bytes());
        }
        Kind::Stderr => {
            let _ = std::io::stderr().write_all(event.data.as_deref().unwrap_or("").as_bytes());
        }
        Kind::Started | Kind::Stopping | Kind::Stopped => {
            eprintln!("{}", event.data.as_deref().unwrap_or(event.kind.as_str()))
        }
        Kind::Exit => eprintln!("exited with code {}", event.exit_code.unwrap_or(-1)),
        Kind::Error => eprintln!("error: {}", event.data.as_deref().unwrap_or("")),
        Kind::Complete | Kind::Other => {}
    }
}

fn parse_env(pairs: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env {pair:?} is not K=V"))
        })
        .collect()
}

pub async fn run(cx: &Global, command: &ServicesCommand) -> Result<u8> {
    let client = cx.client()?;
    // With --json, events are printed as JSON lines instead of as output.
    let json = cx.json;
    let show = |event: &ServiceEvent| {
        if json {
            if let Ok(line) = serde_json::to_string(event) {
                println!("{line}");
            }
        } else {
            print_event(event);
        }
    };
    match command {
        ServicesCommand::List { sprite } => {
            let name = sprite.name()?;
            let services = client.services(&name).await?;
            if json {
                print_json(&services)?;
                return Ok(0);
            }
            if services.is_empty() {
                eprintln!(
                    "{name} has no services; add one with `sprite services create NAME -- CMD`"
                );
                return Ok(0);
            }
            println!(
                "{:<20} {:<9} {:>8} {:>9} {:>6}  COMMAND",
                "NAME", "STATUS", "PID", "RESTARTS", "PORT"
            );
            for service in services {
                let mut command = vec![service.spec.cmd.clone()];
                command.extend(service.spec.args.iter().cloned());
                println!(
                    "{:<20} {:<9} {:>8} {:>9} {:>6}  {}",
                    service.name,
                    serde_json::to_value(service.state.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    service
                        .state
                        .pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    service.state.restart_count,
                    service
                        .spec
                        .http_port
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    command.join(" ")
                );
            }
            Ok(0)
        }
        ServicesCommand::Create {
            name: service,
            sprite,
            env,
            dir,
            needs,
            http_port,
            duration,
            command,
        } => {
            let name = sprite.name()?;
            let spec = ServiceSpec {
                cmd: command[0].clone(),
                args: command[1..].to_vec(),
                env: parse_env(env)?,
                dir: dir.clone(),
                needs: needs.clone(),
                http_port: *http_port,
                user: None,
            };
            client
                .put_service(&name, service, &spec, Some(duration), show)
                .await?;
            Ok(0)
        }
        ServicesCommand::Start {
            name: service,
            sprite,
        } => {
            let name = sprite.name()?;
            client
                .service_action(&name, service, "start", Some("1s"), show)
                .await?;
            Ok(0)
        }
        ServicesCommand::Stop {
            name: service,
            sprite,
        } => {
            let name = sprite.name()?;
            client
                .service_action(&name, service, "stop", None, show)
                .await?;
            Ok(0)
        }
        ServicesCommand::Restart {
            name: service,
            sprite,
        } => {
            let name = sprite.name()?;
            client
                .service_action(&name, service, "restart", Some("1s"), show)
                .await?;
            Ok(0)
        }
        ServicesCommand::Signal {
            name: service,
            signal,
            sprite,
        } => {
            let name = sprite.name()?;
            client.signal_service(&name, service, signal).await?;
            Ok(0)
        }
        ServicesCommand::Delete {
            name: service,
            sprite,
        } => {
            let name = sprite.name()?;
            client.delete_service(&name, service).await?;
            eprintln!("deleted service {service} of {name}");
            Ok(0)
        }
        ServicesCommand::Logs {
            name: service,
            sprite,
            lines,
            follow,
        } => {
            let name = sprite.name()?;
            if *follow {
                // Attaching replays the current run's recent output, then follows.
                follow_logs(&client, &name, service).await?;
            } else {
                print!("{}", client.service_logs(&name, service, *lines).await?);
            }
            Ok(0)
        }
    }
}

/// Prints a service's new output as it comes, run after run, until interrupted.
async fn follow_logs(client: &sprite_client::Client, name: &str, service: &str) -> Result<()> {
    let mut followed: Option<String> = None;
    loop {
        let info = client.service(name, service).await?;
        match info.state.session_id {
            Some(session) if followed.as_deref() != Some(session.as_str()) => {
                followed = Some(session.clone());
                let mut stream = client.attach(name, &session).await?;
                loop {
                    match stream.next().await {
                        Ok(sprite_client::ExecEvent::Stdout(data)) => {
                            let _ = std::io::stdout().write_all(&data);
                            let _ = std::io::stdout().flush();
                        }
                        Ok(sprite_client::ExecEvent::Stderr(data)) => {
                            let _ = std::io::stderr().write_all(&data);
                        }
                        Ok(sprite_client::ExecEvent::Exit(code)) => {
                            eprintln!("[{service} exited with code {code}]");
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}
