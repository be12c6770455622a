//! `sprite-env`: the command inside a sprite that talks to `/.sprite/api.sock` (the same
//! binary as `sprite`, run under that name from `/.sprite/bin`). It checkpoints the
//! sprite, lists its services, and holds Tasks that keep it awake.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "sprite-env",
    about = "Talk to this sprite's API from inside it (/.sprite/api.sock)",
    after_help = "Examples:
  sprite-env checkpoint \"before the migration\"
  sprite-env info                      this sprite's name and URL
  sprite-env task add build 30m
  sprite-env awake 10m -- make test     keep the sprite awake while make runs
  sprite-env services"
)]
struct EnvArgs {
    /// The API socket (default: $SPRITE_API_SOCK or /.sprite/api.sock).
    #[arg(long)]
    socket: Option<String>,
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// This sprite's name, URL and settings (JSON).
    Info,
    /// Checkpoint this sprite's filesystem now.
    Checkpoint { comment: Option<String> },
    /// List this sprite's checkpoints (JSON).
    Checkpoints,
    /// List this sprite's services (JSON).
    Services,
    /// List the tasks keeping this sprite awake (JSON).
    Tasks,
    /// Add, renew or end a task.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Run a command and keep the sprite awake while it runs.
    Awake {
        /// How long the task lasts if this process dies without ending it (renewed at
        /// half of it); at most 1h.
        duration: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Any request: METHOD PATH [JSON BODY].
    Api {
        method: String,
        path: String,
        body: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Keep the sprite awake for DURATION (like 10m; at most 1h) under NAME.
    Add { name: String, duration: String },
    /// Move NAME's end to DURATION from now.
    Renew { name: String, duration: String },
    /// End NAME.
    Done { name: String },
}

/// One HTTP/1.0 request over the unix socket; the status and the body.
fn request(socket: &str, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connect to {socket} (is this a sprite? the daemon serves it)"))?;
    let body = body.unwrap_or("");
    // One write of the whole request; a server that answers (a refusal) before reading
    // the body may close its end meanwhile: its answer is still there to read.
    let message = format!(
        "{method} {path} HTTP/1.0\r\nHost: sprite\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match stream.write_all(message.as_bytes()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(error) => return Err(error).context("send the request"),
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).context("read the answer")?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("the answer has no HTTP status")?;
    Ok((status, body.to_string()))
}

/// Prints a successful body; fails with the API's message otherwise.
fn show((status, body): (u16, String)) -> Result<()> {
    if (200..300).contains(&status) {
        if !body.is_empty() {
            print!("{body}");
            if !body.ends_with('\n') {
                println!();
            }
        }
        return Ok(());
    }
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or(body);
    bail!("{message} (HTTP {status})")
}

fn task_body(name: Option<&str>, duration: &str) -> String {
    match name {
        Some(name) => serde_json::json!({ "name": name, "expire": duration }).to_string(),
        None => serde_json::json!({ "expire": duration }).to_string(),
    }
}

/// Runs `sprite-env` with the process's arguments; the exit code.
pub fn main() -> u8 {
    let args = EnvArgs::parse();
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sprite-env: error: {error:#}");
            1
        }
    }
}

fn run(args: EnvArgs) -> Result<u8> {
    let socket = args
        .socket
        .or_else(|| std::env::var("SPRITE_API_SOCK").ok())
        .unwrap_or_else(|| "/.sprite/api.sock".into());
    let call = |method: &str, path: &str, body: Option<&str>| request(&socket, method, path, body);
    match args.command {
        EnvCommand::Checkpoint { comment } => {
            let body = serde_json::json!({ "comment": comment }).to_string();
            show(call("POST", "/v1/checkpoint", Some(&body))?)?;
        }
        EnvCommand::Info => show(call("GET", "/v1/sprite", None)?)?,
        EnvCommand::Checkpoints => show(call("GET", "/v1/checkpoints", None)?)?,
        EnvCommand::Services => show(call("GET", "/v1/services", None)?)?,
        EnvCommand::Tasks => show(call("GET", "/v1/tasks", None)?)?,
        EnvCommand::Task(TaskCommand::Add { name, duration }) => show(call(
            "POST",
            "/v1/tasks",
            Some(&task_body(Some(&name), &duration)),
        )?)?,
        EnvCommand::Task(TaskCommand::Renew { name, duration }) => show(call(
            "PUT",
            &format!("/v1/tasks/{name}"),
            Some(&task_body(None, &duration)),
        )?)?,
        EnvCommand::Task(TaskCommand::Done { name }) => {
            show(call("DELETE", &format!("/v1/tasks/{name}"), None)?)?
        }
        EnvCommand::Awake { duration, command } => {
            let lease = sprite_api::exec::parse_duration_secs(&duration)
                .filter(|s| (1..=3600).contains(s))
                .with_context(|| {
                    format!("{duration:?} is not a duration from 1s to 1h, like 10m")
                })?;
            let name = format!("awake-{}", std::process::id());
            // Quiet on success: stdout belongs to the command.
            let (status, body) = call(
                "POST",
                "/v1/tasks",
                Some(&task_body(Some(&name), &duration)),
            )?;
            if !(200..300).contains(&status) {
                show((status, body))?;
            }
            let mut child = std::process::Command::new(&command[0])
                .args(&command[1..])
                .spawn()
                .with_context(|| format!("start {}", command[0]))?;
            let renew_every = Duration::from_secs((lease / 2).max(1));
            let mut since_renewal = Duration::ZERO;
            let status = loop {
                if let Some(status) = child.try_wait().context("wait for the command")? {
                    break status;
                }
                std::thread::sleep(Duration::from_millis(200));
                since_renewal += Duration::from_millis(200);
                if since_renewal >= renew_every {
                    since_renewal = Duration::ZERO;
                    let body = task_body(None, &duration);
                    let _ = call("PUT", &format!("/v1/tasks/{name}"), Some(&body));
                }
            };
            let _ = call("DELETE", &format!("/v1/tasks/{name}"), None);
            return Ok(status.code().map_or(1, |c| c as u8));
        }
        EnvCommand::Api { method, path, body } => {
            show(call(&method.to_uppercase(), &path, body.as_deref())?)?
        }
    }
    Ok(0)
}
