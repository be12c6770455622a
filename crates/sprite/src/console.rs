//! Interactive sessions (console, `exec --tty`, attach) and starting a local daemon.

use crate::settings;
use anyhow::{Context, Result};
use sprite_api::exec::ExecParams;
use sprite_api::sprite::{CreateSpriteRequest, SpriteInfo};
use sprite_client::{Client, ExecEvent, ExecStream};
use std::io::IsTerminal;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ctrl+\ detaches from a console, leaving the session running.
const DETACH_KEY: u8 = 0x1c;

struct RawMode(bool);

impl RawMode {
    fn enable() -> RawMode {
        let on = std::io::stdin().is_terminal() && crossterm::terminal::enable_raw_mode().is_ok();
        RawMode(on)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.0 {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

/// The terminal's size, or 80x24 when it has none (or reports 0x0, as a fresh
/// pseudo-terminal does).
pub fn terminal_size() -> (u16, u16) {
    match crossterm::terminal::size() {
        Ok((cols, rows)) if cols > 0 && rows > 0 => (cols, rows),
        _ => (80, 24),
    }
}

/// Opens a login shell in the sprite.
pub async fn console(client: &Client, name: &str) -> Result<u8> {
    let (cols, rows) = terminal_size();
    let mut params = ExecParams::from_query(&[], 0).map_err(anyhow::Error::msg)?;
    params.argv = vec!["bash".into(), "-l".into()];
    params.path = "bash".into();
    params.tty = true;
    params.stdin = true;
    params.cols = cols;
    params.rows = rows;
    let stream = client
        .exec(name, &params)
        .await
        .with_context(|| format!("open a console in {name}"))?;
    interactive(stream).await
}

/// Bridges the terminal to a TTY session until it exits or the user detaches.
pub async fn interactive(stream: ExecStream) -> Result<u8> {
    let raw = RawMode::enable();
    let (mut sender, mut receiver) = stream.split();
    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                read = stdin.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let data = &buffer[..n];
                        if let Some(at) = data.iter().position(|b| *b == DETACH_KEY) {
                            let _ = sender.send_stdin(&data[..at]).await;
                            let _ = detach_tx.send(());
                            return;
                        }
                        if sender.send_stdin(data).await.is_err() {
                            return;
                        }
                    }
                },
                Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    let (cols, rows) = terminal_size();
                    let _ = sender.resize(cols, rows).await;
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut session = String::new();
    let result = loop {
        tokio::select! {
            event = receiver.next() => match event {
                Ok(ExecEvent::Stdout(data)) | Ok(ExecEvent::Stderr(data)) => {
                    stdout.write_all(&data).await.context("write to the terminal")?;
                    stdout.flush().await.context("write to the terminal")?;
                }
                Ok(ExecEvent::SessionInfo { session_id, .. }) => session = session_id,
                Ok(ExecEvent::Exit(code)) => break Ok((code & 0xff) as u8),
                Ok(ExecEvent::Text(_)) => {}
                Err(error) => break Err(anyhow::Error::new(error)),
            },
            Ok(()) = &mut detach_rx => {
                drop(raw);
                eprintln!("\r\ndetached; the session keeps running. Re-attach with `sprite sessions attach {session}`");
                input.abort();
                return Ok(0);
            }
        }
    };
    input.abort();
    drop(raw);
    result
}

/// For the default local API URL, starts `sprite daemon` in the background when
/// nothing answers yet.
pub async fn ensure_local_daemon(cx: &crate::cli::Global) -> Result<()> {
    let url = settings::api_url(cx.api_url.as_deref());
    if url != settings::DEFAULT_API_URL {
        return Ok(());
    }
    let probe = Client::new(&url, "");
    if probe.health().await.is_ok() {
        return Ok(());
    }
    let data_dir = settings::data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create {} (run as root)", data_dir.display()))?;
    let log_path = data_dir.join("daemon.log");
    if let Err(error) = sprite_sys::tools::rotate_log(&log_path, sprite_sys::tools::MAX_LOG_BYTES) {
        eprintln!("warning: could not rotate {}: {error}", log_path.display());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let executable = std::env::current_exe().context("find the sprite binary")?;
    eprintln!("starting the sprite daemon (log: {})", log_path.display());
    use std::os::unix::process::CommandExt;
    std::process::Command::new(executable)
        .arg("daemon")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("log file")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start the sprite daemon")?;
    for _ in 0..100 {
        if probe.health().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the daemon did not answer within 10 s; see {}",
        log_path.display()
    )
}

/// Creates a sprite, showing the image build's progress while the first create waits.
pub async fn create_with_progress(
    client: &Client,
    request: &CreateSpriteRequest,
) -> Result<SpriteInfo> {
    let create = client.create(request);
    tokio::pin!(create);
    let show = std::io::stderr().is_terminal();
    let mut shown = String::new();
    loop {
        tokio::select! {
            result = &mut create => {
                if !shown.is_empty() && show {
                    eprintln!();
                }
                return result.with_context(|| format!("create sprite {}", request.name));
            }
            () = tokio::time::sleep(Duration::from_millis(700)) => {
                let Ok(images) = client.images().await else { continue };
                for image in &images.images {
                    if image.state == sprite_api::admin::ImageState::Building {
                        let line = format!("building image {}: {}", image.name, image.detail);
                        if line != shown {
                            if show {
                                let width = (terminal_size().0 as usize).saturating_sub(1);
                                eprint!("\r\x1b[2K{}", line.chars().take(width).collect::<String>());
                            } else {
                                eprintln!("{line}");
                            }
                            shown = line;
                        }
                    }
                }
            }
        }
    }
}
