//! Sessions: one process started on the daemon's request, its output pumps, its replay
//! buffer and the clients attached to it.

use super::users;
use crate::protocol::{Event, Message, ProtocolError, SessionSummary, SpawnRequest};
use crate::sys::{self, ChildSetup};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

/// Output kept per session for replay on attach.
const REPLAY_BYTES: usize = 256 * 1024;
/// Frames a slow client may fall behind before the process is held back.
const SUBSCRIBER_QUEUE: usize = 64;
/// How long output is still collected after the process exited, for descendants that
/// keep the pipes open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);
/// Exited sessions kept for listing and late attach.
const EXITED_KEPT: usize = 64;
const EXITED_TTL_MS: u64 = 10 * 60 * 1000;
use sprite_api::exec::DEFAULT_PATH;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a session sends to its clients.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

impl Output {
    /// The frame that carries this output to the daemon.
    pub fn into_message(self) -> Result<Message, ProtocolError> {
        Ok(match self {
            Output::Stdout(data) => Message::Stdout(data),
            Output::Stderr(data) => Message::Stderr(data),
            Output::Exit(code) => Message::control(&Event::Exit { code })?,
        })
    }
}

enum StdinWriter {
    Pipe(pipe::Sender),
    Pty(Arc<AsyncFd<OwnedFd>>),
}

struct Shared {
    replay: VecDeque<Output>,
    replay_bytes: usize,
    subscribers: Vec<(u64, mpsc::Sender<Output>)>,
    next_subscriber: u64,
    exit_code: Option<i32>,
    last_activity_ms: u64,
    bytes_out: u64,
    /// Terminal size (0, 0 without a TTY).
    size: (u16, u16),
}

pub struct Session {
    pub id: String,
    pub pid: u32,
    pub tty: bool,
    command: String,
    workdir: String,
    created_ms: u64,
    max_run_after_disconnect: Duration,
    shared: Mutex<Shared>,
    stdin: tokio::sync::Mutex<Option<StdinWriter>>,
    pty: Option<Arc<AsyncFd<OwnedFd>>>,
    exit_status: watch::Sender<Option<i32>>,
}

/// Every session of the sprite, and exit statuses reaped before their session was known.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Arc<Session>>>,
    by_pid: Mutex<HashMap<i32, Arc<Session>>>,
    next_id: Mutex<u64>,
    /// Sessions that are service runs: not listed as exec sessions.
    hidden: Mutex<std::collections::HashSet<String>>,
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.by_id.lock().get(id).cloned()
    }

    pub fn count(&self) -> usize {
        self.by_id.lock().len()
    }

    pub fn summaries(&self) -> Vec<SessionSummary> {
        self.forget_old();
        let hidden = self.hidden.lock().clone();
        let mut list: Vec<SessionSummary> = self
            .by_id
            .lock()
            .values()
            .filter(|s| !hidden.contains(&s.id))
            .map(|s| s.summary())
            .collect();
        list.sort_by_key(|s| s.created_ms);
        list
    }

    fn forget_old(&self) {
        let now = now_ms();
        let mut by_id = self.by_id.lock();
        let mut exited: Vec<(u64, String)> = by_id
            .values()
            .filter_map(|s| {
                let shared = s.shared.lock();
                shared
                    .exit_code
                    .map(|_| (shared.last_activity_ms, s.id.clone()))
            })
            .collect();
        exited.sort();
        let excess = exited.len().saturating_sub(EXITED_KEPT);
        for (index, (last, id)) in exited.iter().enumerate() {
            if index < excess || now.saturating_sub(*last) > EXITED_TTL_MS {
                by_id.remove(id);
                self.hidden.lock().remove(id);
            }
        }
    }

    /// Keeps a session out of listings (a service's run).
    pub fn hide(&self, id: &str) {
        self.hidden.lock().insert(id.to_string());
    }

    fn register(&self, session: Arc<Session>) {
        self.by_pid
            .lock()
            .insert(session.pid as i32, session.clone());
        self.by_id.lock().insert(session.id.clone(), session);
    }

    /// Session ids count up from PID 1's start time in milliseconds, so an id from
    /// before a sprite restart never names a new session.
    fn next_id(&self) -> String {
        let mut next = self.next_id.lock();
        if *next == 0 {
            *next = now_ms();
        }
        *next += 1;
        next.to_string()
    }

    fn exited(&self, pid: i32, code: i32) {
        if let Some(session) = self.by_pid.lock().remove(&pid) {
            session.exit_status.send_replace(Some(code));
        }
    }
}

/// Reaps every child of PID 1 (orphans included) for as long as the sprite lives.
pub async fn reap_forever(sessions: Arc<Sessions>) {
    let mut signals = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("sprite-init: cannot watch SIGCHLD: {error}");
            return;
        }
    };
    loop {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => sessions.exited(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    sessions.exited(pid.as_raw(), 128 + signal as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if signals.recv().await.is_none() {
            return;
        }
    }
}

fn resolve_program(path: &str, search: &str) -> Result<PathBuf, String> {
    let is_executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if path.contains('/') {
        return Ok(PathBuf::from(path));
    }
    search
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(path))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{path}: command not found"))
}

/// Makes a PTY master non-blocking and keeps it out of every later process (a leaked
/// master would let one session read another's terminal).
fn prepare_master(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

impl Session {
    /// Starts the process of a spawn request and its pumps.
    pub fn spawn(sessions: &Arc<Sessions>, request: SpawnRequest) -> Result<Arc<Session>, String> {
        let account = users::lookup(&request.user)
            .ok_or_else(|| format!("user {} does not exist in the sprite", request.user))?;
        let mut env: Vec<(String, String)> = match &request.env {
            Some(env) => env.clone(),
            None => {
                let mut env = vec![
                    ("PATH".to_string(), DEFAULT_PATH.to_string()),
                    ("HOME".to_string(), account.home.clone()),
                    ("USER".to_string(), account.name.clone()),
                    ("LOGNAME".to_string(), account.name.clone()),
                    ("SHELL".to_string(), account.shell.clone()),
                    ("LANG".to_string(), "C.UTF-8".to_string()),
                ];
                env.extend(
                    request
                        .extra_env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                env
            }
        };
        if request.tty && !env.iter().any(|(k, _)| k == "TERM") {
            env.push(("TERM".to_string(), "xterm-256color".to_string()));
        }
        let search = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH);
        let program = resolve_program(&request.path, search)?;
        let workdir = request.dir.clone().unwrap_or_else(|| account.home.clone());
        let workdir = if Path::new(&workdir).is_dir() {
            workdir
        } else if request.dir.is_some() {
            return Err(format!("working directory {workdir} does not exist"));
        } else {
            "/".to_string()
        };

        let mut command = Command::new(&program);
        command.arg0(
            request
                .argv
                .first()
                .cloned()
                .unwrap_or_else(|| request.path.clone()),
        );
        command.args(request.argv.iter().skip(1));
        command
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&workdir);
        sys::apply_child_setup(
            &mut command,
            ChildSetup {
                uid: account.uid,
                gid: account.gid,
                groups: account.groups.clone(),
                controlling_tty: request.tty,
            },
        );

        let spawn_error = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                format!("{}: permission denied", program.display())
            }
            std::io::ErrorKind::NotFound => {
                format!("{}: no such file or directory", program.display())
            }
            _ => format!("start {}: {e}", program.display()),
        };
        let (child, stdin, pty, stdout, stderr) = if request.tty {
            let size = nix::pty::Winsize {
                ws_row: request.rows,
                ws_col: request.cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty =
                nix::pty::openpty(Some(&size), None).map_err(|e| format!("open a pty: {e}"))?;
            let slave = |fd: &OwnedFd| {
                fd.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| format!("pty: {e}"))
            };
            command
                .stdin(slave(&pty.slave)?)
                .stdout(slave(&pty.slave)?)
                .stderr(slave(&pty.slave)?);
            let child = command.spawn().map_err(spawn_error)?;
            drop(pty.slave);
            prepare_master(&pty.master).map_err(|e| format!("pty: {e}"))?;
            let master = Arc::new(sys::async_fd(pty.master).map_err(|e| format!("pty: {e}"))?);
            (
                child,
                Some(StdinWriter::Pty(master.clone())),
                Some(master),
                None,
                None,
            )
        } else {
            command.stdin(if request.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = command.spawn().map_err(spawn_error)?;
            let to_fd = |fd: Option<OwnedFd>| fd.ok_or_else(|| "missing pipe".to_string());
            let stdin = match child.stdin.take() {
                Some(s) => Some(StdinWriter::Pipe(
                    pipe::Sender::from_owned_fd(OwnedFd::from(s))
                        .map_err(|e| format!("stdin pipe: {e}"))?,
                )),
                None => None,
            };
            let stdout = to_fd(child.stdout.take().map(OwnedFd::from))?;
            let stderr = to_fd(child.stderr.take().map(OwnedFd::from))?;
            let stdout =
                pipe::Receiver::from_owned_fd(stdout).map_err(|e| format!("stdout pipe: {e}"))?;
            let stderr =
                pipe::Receiver::from_owned_fd(stderr).map_err(|e| format!("stderr pipe: {e}"))?;
            (child, stdin, None, Some(stdout), Some(stderr))
        };
        // The reaper collects the exit status; dropping `Child` neither waits nor kills.
        let pid = child.id();
        drop(child);
        let now = now_ms();
        let (exit_status, exit_receiver) = watch::channel(None);
        let max_run = match request.max_run_after_disconnect_secs {
            0 => Duration::ZERO,
            secs => Duration::from_secs(secs),
        };
        let session = Arc::new(Session {
            id: sessions.next_id(),
            pid,
            tty: request.tty,
            command: request.argv.join(" "),
            workdir,
            created_ms: now,
            max_run_after_disconnect: max_run,
            shared: Mutex::new(Shared {
                replay: VecDeque::new(),
                replay_bytes: 0,
                subscribers: Vec::new(),
                next_subscriber: 0,
                exit_code: None,
                last_activity_ms: now,
                bytes_out: 0,
                size: if request.tty {
                    (request.cols, request.rows)
                } else {
                    (0, 0)
                },
            }),
            stdin: tokio::sync::Mutex::new(stdin),
            pty: pty.clone(),
            exit_status,
        });
        // Registered before any await, so the reaper (same thread) cannot miss the exit.
        sessions.register(session.clone());
        sessions.forget_old();
        tokio::spawn(session.clone().run(pty, stdout, stderr, exit_receiver));
        Ok(session)
    }

    async fn run(
        self: Arc<Self>,
        pty: Option<Arc<AsyncFd<OwnedFd>>>,
        stdout: Option<pipe::Receiver>,
        stderr: Option<pipe::Receiver>,
        mut exit: watch::Receiver<Option<i32>>,
    ) {
        let this = self.clone();
        let pumps = async move {
            match pty {
                Some(master) => this.pump_pty(master).await,
                None => {
                    let out = this.pump_pipe(stdout, true);
                    let err = this.pump_pipe(stderr, false);
                    tokio::join!(out, err);
                }
            }
        };
        tokio::pin!(pumps);
        tokio::select! {
            () = &mut pumps => {}
            _ = async { exit.wait_for(|code| code.is_some()).await.is_ok() } => {
                let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pumps).await;
            }
        }
        let code = exit
            .wait_for(|code| code.is_some())
            .await
            .map(|code| code.unwrap_or(-1))
            .unwrap_or(-1);
        *self.stdin.lock().await = None;
        let subscribers: Vec<mpsc::Sender<Output>> = {
            let mut shared = self.shared.lock();
            shared.exit_code = Some(code);
            shared.last_activity_ms = now_ms();
            shared.subscribers.iter().map(|(_, s)| s.clone()).collect()
        };
        for subscriber in subscribers {
            let _ = subscriber.send(Output::Exit(code)).await;
        }
    }

    async fn pump_pipe(&self, receiver: Option<pipe::Receiver>, stdout: bool) {
        use tokio::io::AsyncReadExt;
        let Some(mut receiver) = receiver else { return };
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match receiver.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = buffer[..n].to_vec();
                    self.publish(if stdout {
                        Output::Stdout(data)
                    } else {
                        Output::Stderr(data)
                    })
                    .await;
                }
            }
        }
    }

    async fn pump_pty(&self, master: Arc<AsyncFd<OwnedFd>>) {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            let Ok(mut guard) = master.readable().await else {
                return;
            };
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), &mut buffer).map_err(std::io::Error::from)
            }) {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => self.publish(Output::Stdout(buffer[..n].to_vec())).await,
                Err(_would_block) => continue,
            }
        }
    }

    async fn publish(&self, output: Output) {
        let subscribers: Vec<(u64, mpsc::Sender<Output>)> = {
            let mut shared = self.shared.lock();
            let size = match &output {
                Output::Stdout(d) | Output::Stderr(d) => d.len(),
                Output::Exit(_) => 0,
            };
            shared.bytes_out += size as u64;
            shared.last_activity_ms = now_ms();
            shared.replay_bytes += size;
            shared.replay.push_back(output.clone());
            while shared.replay_bytes > REPLAY_BYTES {
                match shared.replay.pop_front() {
                    Some(Output::Stdout(d)) | Some(Output::Stderr(d)) => {
                        shared.replay_bytes -= d.len()
                    }
                    Some(Output::Exit(_)) => {}
                    None => break,
                }
            }
            shared.subscribers.clone()
        };
        for (id, subscriber) in subscribers {
            if subscriber.send(output.clone()).await.is_err() {
                self.remove_subscriber(id);
            }
        }
    }

    /// Registers a client. Returns its id, the replay backlog (if asked for) and its
    /// queue; an exited session's queue already holds the exit.
    pub fn subscribe(&self, replay: bool) -> (u64, Vec<Output>, mpsc::Receiver<Output>) {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut shared = self.shared.lock();
        let id = shared.next_subscriber;
        shared.next_subscriber += 1;
        let backlog = if replay {
            shared.replay.iter().cloned().collect()
        } else {
            Vec::new()
        };
        if let Some(code) = shared.exit_code {
            let _ = sender.try_send(Output::Exit(code));
        } else {
            shared.subscribers.push((id, sender));
        }
        shared.last_activity_ms = now_ms();
        (id, backlog, receiver)
    }

    /// Removes a client; the last one leaving a non-TTY process starts its
    /// run-after-disconnect clock.
    pub fn unsubscribe(self: &Arc<Self>, id: u64) {
        let (now_empty, running) = self.remove_subscriber(id);
        if now_empty && running && !self.tty && !self.max_run_after_disconnect.is_zero() {
            let session = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(session.max_run_after_disconnect).await;
                let abandoned = {
                    let shared = session.shared.lock();
                    shared.subscribers.is_empty() && shared.exit_code.is_none()
                };
                if abandoned {
                    let _ = session.signal(Signal::SIGKILL as i32);
                }
            });
        }
    }

    /// Returns whether the last client just left, and whether the process still runs.
    fn remove_subscriber(&self, id: u64) -> (bool, bool) {
        let mut shared = self.shared.lock();
        let before = shared.subscribers.len();
        shared.subscribers.retain(|(other, _)| *other != id);
        (
            before > 0 && shared.subscribers.is_empty(),
            shared.exit_code.is_none(),
        )
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.shared.lock().exit_code
    }

    /// Signals the session's process group.
    pub fn signal(&self, signal: i32) -> nix::Result<()> {
        let signal = Signal::try_from(signal)?;
        killpg(Pid::from_raw(self.pid as i32), signal)
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        if let Some(master) = &self.pty {
            if sys::set_window_size(master.get_ref().as_raw_fd(), cols, rows).is_ok() {
                self.shared.lock().size = (cols, rows);
            }
        }
    }

    /// The command line, when it started (Unix ms), and its terminal size.
    pub fn details(&self) -> (String, u64, (u16, u16)) {
        (
            self.command.clone(),
            self.created_ms,
            self.shared.lock().size,
        )
    }

    pub async fn write_stdin(&self, data: &[u8]) {
        let mut stdin = self.stdin.lock().await;
        let failed = match stdin.as_mut() {
            Some(StdinWriter::Pipe(sender)) => sender.write_all(data).await.is_err(),
            Some(StdinWriter::Pty(master)) => write_pty(master, data).await.is_err(),
            None => false,
        };
        if failed {
            *stdin = None;
        }
        self.shared.lock().last_activity_ms = now_ms();
    }

    pub async fn close_stdin(&self) {
        let mut stdin = self.stdin.lock().await;
        if let Some(StdinWriter::Pipe(_)) = stdin.as_ref() {
            *stdin = None;
        }
    }

    fn summary(&self) -> SessionSummary {
        let shared = self.shared.lock();
        SessionSummary {
            id: self.id.clone(),
            command: self.command.clone(),
            workdir: self.workdir.clone(),
            tty: self.tty,
            pid: self.pid,
            created_ms: self.created_ms,
            last_activity_ms: shared.last_activity_ms,
            attached: shared.subscribers.len(),
            exit_code: shared.exit_code,
            bytes_out: shared.bytes_out,
            cols: shared.size.0,
            rows: shared.size.1,
        }
    }
}

async fn write_pty(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        match guard
            .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_on_path() {
        assert_eq!(
            resolve_program("/x/y", "").expect("abs"),
            PathBuf::from("/x/y")
        );
        let found = resolve_program("sh", "/nonexistent:/bin:/usr/bin").expect("sh");
        assert!(found.ends_with("sh"));
        assert!(resolve_program("no-such-program-xyz", "/bin").is_err());
    }
}
