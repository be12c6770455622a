//! The sandbox backend of sprites: Linux namespaces, cgroups, mounts, seccomp and PTYs,
//! and sprite-init, PID 1 of every sprite.
//!
//! It talks to the kernel through `sprite-sys` (re-exported as [`sys`]). It must not
//! depend on the storage engine (`sprite-fs`) or on the server: the daemon hands it a
//! [`spec::SandboxSpec`] whose root layers come from whatever storage made them.

#![forbid(unsafe_code)]

pub mod cgroup;
pub mod client;
mod error;
pub mod init;
pub mod launch;
pub mod mounts;
pub mod net;
pub mod protocol;
mod rootplan;
pub mod security;
pub mod spec;
pub use sprite_sys::syscall as sys;

pub use error::SandboxError;
pub use rootplan::DEVICES;

/// A sprite's process pinned by a pidfd, for reading its `/proc/<pid>` entries from the
/// host: the pid is checked to be in the sprite's cgroup once pinned, and every open
/// through `/proc/<pid>` is checked to have happened while that same process lived. A
/// pid recycled by a host process (the sprite's PID 1 died in between) is refused,
/// never opened: the daemon must not act on a host process's root or namespaces.
#[derive(Debug)]
pub struct PinnedProcess {
    pid: u32,
    pidfd: std::os::fd::OwnedFd,
}

impl PinnedProcess {
    /// Pins `pid`, which must be in the cgroup named `sprite_id` (the sprite's cgroup
    /// name).
    pub fn pin(pid: u32, sprite_id: &str) -> std::io::Result<PinnedProcess> {
        let pidfd = sys::pidfd_open(pid)?;
        let pinned = PinnedProcess { pid, pidfd };
        let cgroups = pinned.read(&format!("/proc/{pid}/cgroup"))?;
        let marker = format!("/sprites/{sprite_id}");
        if !cgroups
            .lines()
            .any(|line| line.ends_with(&marker) || line.contains(&format!("{marker}/")))
        {
            return Err(std::io::Error::other(format!(
                "process {pid} is not in the cgroup of sprite {sprite_id}"
            )));
        }
        Ok(pinned)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the pinned process has exited (its pid may belong to another by now).
    pub fn check_alive(&self) -> std::io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::ZERO).map_err(std::io::Error::from)?;
        if ready > 0 {
            return Err(std::io::Error::other(format!(
                "process {} exited",
                self.pid
            )));
        }
        Ok(())
    }

    /// Opens `/proc/<pid>/<entry>` of the pinned process.
    pub fn open(&self, entry: &str) -> std::io::Result<std::fs::File> {
        let file = std::fs::File::open(format!("/proc/{}/{entry}", self.pid))?;
        self.check_alive()?;
        Ok(file)
    }

    fn read(&self, path: &str) -> std::io::Result<String> {
        let text = std::fs::read_to_string(path)?;
        self.check_alive()?;
        Ok(text)
    }

    /// Reads `/proc/<pid>/<entry>` of the pinned process.
    pub fn read_entry(&self, entry: &str) -> std::io::Result<String> {
        self.read(&format!("/proc/{}/{entry}", self.pid))
    }
}

use std::path::Path;

/// Starts a sprite's sandbox by running `executable init` (the launcher) with `spec` on
/// its stdin. Returns the host pid of the sprite's PID 1.
pub async fn start(executable: &Path, spec: &spec::SandboxSpec) -> Result<u32, SandboxError> {
    use tokio::io::AsyncWriteExt;
    let launch_error = |e| SandboxError::Launch(executable.to_path_buf(), e);
    let mut child = tokio::process::Command::new(executable)
        .arg("init")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(launch_error)?;
    let input =
        serde_json::to_vec(spec).map_err(|e| SandboxError::LauncherFailed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&input).await.map_err(launch_error)?;
    }
    let output = child.wait_with_output().await.map_err(launch_error)?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(SandboxError::LauncherFailed(if message.is_empty() {
            format!("launcher exited with {}", output.status)
        } else {
            message
        }));
    }
    let result: launch::LaunchResult = serde_json::from_slice(&output.stdout)
        .map_err(|e| SandboxError::LauncherFailed(format!("unreadable launcher answer: {e}")))?;
    Ok(result.pid)
}

/// The launch server of a daemon (`launch::serve_launches`): started once, so that a
/// sprite's start spawns no process (the server forks the launcher). If it cannot be
/// reached, a start spawns `executable init` as before and the server is started again.
#[derive(Debug)]
pub struct LaunchServer {
    executable: std::path::PathBuf,
    socket: std::path::PathBuf,
    process: parking_lot::Mutex<Option<std::process::Child>>,
}

/// The environment variable that tells the launch server its socket.
pub const LAUNCH_SOCKET_VARIABLE: &str = "SPRITE_LAUNCH_SOCKET";

/// Longest wait for the launch server's answer.
const LAUNCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Most bytes of an answer read from the launch server.
const MAX_ANSWER: u64 = 64 << 10;

impl LaunchServer {
    /// Starts `executable init --serve` on `socket` (it runs until this daemon is gone).
    pub fn start(executable: &Path, socket: &Path) -> LaunchServer {
        let server = LaunchServer {
            executable: executable.to_path_buf(),
            socket: socket.to_path_buf(),
            process: parking_lot::Mutex::new(None),
        };
        server.respawn();
        server
    }

    /// Starts the server process unless one still runs.
    fn respawn(&self) {
        let mut process = self.process.lock();
        if let Some(child) = process.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return;
            }
        }
        let spawned = std::process::Command::new(&self.executable)
            .arg("init")
            .arg("--serve")
            // Not an argument: sprites' PID 1s are forked from the server and keep its
            // command line, which sprite code can read; no host path goes in it.
            .env(LAUNCH_SOCKET_VARIABLE, &self.socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => *process = Some(child),
            Err(error) => {
                tracing::warn!("cannot start the launch server: {error}; sprites start through a launcher process each")
            }
        }
    }

    /// Starts a sprite (as [`start`]) through the server; returns its PID 1's host pid.
    pub async fn launch(&self, spec: &spec::SandboxSpec) -> Result<u32, SandboxError> {
        match launch_via(&self.socket, spec).await {
            Err(SandboxError::LaunchServerUnreachable(_, error)) => {
                tracing::warn!(
                    "the launch server is not there ({error}); starting it again, and this sprite through a launcher process"
                );
                self.respawn();
                start(&self.executable, spec).await
            }
            other => other,
        }
    }
}

/// One launch through the server listening on `socket`.
async fn launch_via(socket: &Path, spec: &spec::SandboxSpec) -> Result<u32, SandboxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let unreachable = |e| SandboxError::LaunchServerUnreachable(socket.to_path_buf(), e);
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(unreachable)?;
    let input =
        serde_json::to_vec(spec).map_err(|e| SandboxError::LauncherFailed(e.to_string()))?;
    let failed = |e: std::io::Error| SandboxError::LauncherFailed(format!("launch server: {e}"));
    stream.write_all(&input).await.map_err(failed)?;
    stream.shutdown().await.map_err(failed)?;
    let mut output = Vec::new();
    tokio::time::timeout(
        LAUNCH_TIMEOUT,
        (&mut stream).take(MAX_ANSWER).read_to_end(&mut output),
    )
    .await
    .map_err(|_| SandboxError::LauncherFailed(format!("no answer within {LAUNCH_TIMEOUT:?}")))?
    .map_err(failed)?;
    #[derive(serde::Deserialize)]
    struct Answer {
        pid: Option<u32>,
        error: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(&output).map_err(|e| {
        SandboxError::LauncherFailed(format!(
            "unreadable answer of the launch server ({e}): {}",
            String::from_utf8_lossy(&output).trim()
        ))
    })?;
    match (answer.pid, answer.error) {
        (Some(pid), _) => Ok(pid),
        (None, error) => Err(SandboxError::LauncherFailed(
            error.unwrap_or_else(|| "the launch server gave no pid".into()),
        )),
    }
}

/// Sets the hostname inside a running sprite (its UTS namespace), from the host: the
/// sprite's own root lacks CAP_SYS_ADMIN. Used when a pooled sprite gets its name.
pub fn set_hostname(init_pid: u32, hostname: &str) -> Result<(), SandboxError> {
    let path = format!("/proc/{init_pid}/ns/uts");
    let namespace = std::fs::File::open(&path)
        .map_err(|e| SandboxError::OpenNamespace(std::path::PathBuf::from(&path), e))?;
    // A thread of its own enters the namespace and ends; the daemon's threads stay put.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(hostname)
            })
            .join()
            .unwrap_or(Err(nix::Error::EIO))
    })
    .map_err(|source| SandboxError::Syscall {
        step: format!("set hostname {hostname} in the sprite of pid {init_pid}"),
        source,
    })
}

/// Opens a TCP connection to `127.0.0.1:port` inside a sprite's network namespace (so
/// servers bound to the sprite's loopback are reachable), from a thread of its own that
/// enters the namespace and ends. The socket keeps its namespace wherever it is used.
pub fn connect_in_sprite(
    init: &PinnedProcess,
    port: u16,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    connect_in_sprite_at(init, loopback, port, timeout)
}

/// [`connect_in_sprite`] to `ip`, which must be an address of the sprite itself (its
/// loopback or an address of one of its interfaces): anything else fails with
/// `AddrNotAvailable` before a packet is sent (a socket of the sprite's namespace can
/// only be bound to its own addresses).
pub fn connect_in_sprite_at(
    init: &PinnedProcess,
    ip: std::net::IpAddr,
    port: u16,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    let namespace = init.open("ns/net")?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                if !ip.is_loopback() {
                    std::net::UdpSocket::bind((ip, 0)).map_err(|error| {
                        if error.kind() == std::io::ErrorKind::AddrNotAvailable {
                            std::io::Error::new(
                                std::io::ErrorKind::AddrNotAvailable,
                                format!("{ip} is not an address of the sprite"),
                            )
                        } else {
                            error
                        }
                    })?;
                }
                let address = std::net::SocketAddr::from((ip, port));
                let stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
                stream.set_nodelay(true)?;
                Ok(stream)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("connect thread panicked")))
    })
}

/// Runs `work` on the calling thread with its file-system ids set to `uid` and `gid`
/// (the sprite's root as the host sees it) and its file capabilities kept, so that file
/// systems mounted inside the sprite's user namespace (its overlay root) accept files
/// the host makes: the kernel refuses to create an inode whose owner that namespace
/// cannot map (EOVERFLOW). File-system ids and capabilities are per thread; both are
/// restored before returning.
pub fn with_fs_ids<T>(uid: u32, gid: u32, work: impl FnOnce() -> T) -> T {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            // Back to 0: the kernel re-raises the file capabilities from the permitted set.
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
            if let Ok(permitted) = caps::read(None, caps::CapSet::Permitted) {
                let _ = caps::set(None, caps::CapSet::Effective, &permitted);
            }
        }
    }
    let _restore = Restore;
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    // Leaving fsuid 0 dropped the file capabilities from the effective set: raise them.
    if let Ok(permitted) = caps::read(None, caps::CapSet::Permitted) {
        let _ = caps::set(None, caps::CapSet::Effective, &permitted);
    }
    work()
}

/// Raises this process's soft limit of open files to its hard limit (the daemon holds
/// a socket per connection, per sprite resolver and per watched file). Answers the
/// new limit.
pub fn raise_open_files_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}
