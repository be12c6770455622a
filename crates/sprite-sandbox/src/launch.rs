//! Starting a sprite: the launcher process and the setup of its PID 1.
//!
//! The daemon is multi-threaded, and a multi-threaded process must not fork and then
//! do real work. So the daemon runs its own binary as `sprite init` (the launcher), a
//! fresh single-threaded process, and hands it a [`SandboxSpec`] on stdin. The launcher
//! creates the cgroup and joins it, binds `init.sock` (so the socket lives on the host
//! side and is never visible inside the sprite), and clones a child into new user, pid,
//! mount, uts, ipc, net and cgroup namespaces. It writes the child's uid/gid maps, lets
//! it go, waits for its verdict, prints `{"pid":N}` and exits. The child is PID 1 of the
//! sprite: it mounts the root overlay, /proc, /sys and /dev, pivots into the root,
//! locks itself down (seccomp, capabilities) and serves the init protocol.

use crate::cgroup::{Layout, SpriteCgroup};
use crate::error::{step, SandboxError};
use crate::spec::SandboxSpec;
use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{
    chdir, pipe, pivot_root, read, sethostname, setresgid, setresuid, write, Gid, Uid,
};
use std::fs;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Result line the launcher prints on stdout.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LaunchResult {
    pub pid: u32,
}

/// Entry of `sprite init`: reads the spec, starts the sprite, reports its pid.
/// Returns only in the launcher; the sprite's PID 1 never returns from here.
pub fn run_launcher(spec: &SandboxSpec) -> Result<LaunchResult, SandboxError> {
    let root = spec.root_path();
    for dir in [
        &spec.state_dir,
        &root,
        &spec.layers.upper,
        &spec.layers.work,
    ] {
        fs::create_dir_all(dir).map_err(|e| SandboxError::CreateDir(dir.clone(), e))?;
    }
    for dir in [&spec.layers.upper, &spec.layers.work] {
        nix::unistd::chown(
            dir.as_path(),
            Some(Uid::from_raw(spec.id_base)),
            Some(Gid::from_raw(spec.id_base)),
        )
        .map_err(step(format!("chown {}", dir.display())))?;
    }
    for layer in spec
        .layers
        .lower
        .iter()
        .chain([&spec.layers.upper, &spec.layers.work])
    {
        let text = layer.to_string_lossy();
        if text.contains([',', ':', '\n']) {
            return Err(SandboxError::BadLayerPath(layer.clone()));
        }
    }

    let cgroup = SpriteCgroup::new(
        Layout::detect(Path::new("/sys/fs/cgroup"))?,
        &spec.sprite_id,
    );
    cgroup.create(&spec.limits)?;
    cgroup.add_process(std::process::id())?;

    let socket = spec.socket_path();
    let _ = fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| SandboxError::BindSocket(socket.clone(), e))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
        .map_err(|e| SandboxError::BindSocket(socket.clone(), e))?;
    let log_path = spec.log_path();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| SandboxError::OpenLog(log_path.clone(), e))?;

    // A memory hog in the sprite must be the OOM killer's choice, never PID 1, which
    // inherits this setting; what PID 1 starts resets it to 0. Best effort: a host
    // without CAP_SYS_RESOURCE refuses, and the OOM killer still picks the largest
    // process, which PID 1 is not.
    let _ = fs::write("/proc/self/oom_score_adj", "-999");

    let (go_read, go_write) = pipe().map_err(SandboxError::Pipe)?;
    let (ready_read, ready_write) = pipe().map_err(SandboxError::Pipe)?;

    match sys::clone_into_namespaces().map_err(SandboxError::Clone)? {
        None => {
            // The child: PID 1 of the sprite.
            drop(go_write);
            drop(ready_read);
            let mut byte = [0u8; 1];
            let _ = read(&go_read, &mut byte);
            drop(go_read);
            let result = setup_sprite(spec).and_then(|()| crate::security::lock_down());
            let verdict = match &result {
                Ok(()) => "ok".to_string(),
                Err(error) => sprite_api::error_chain(error),
            };
            let _ = write(&ready_write, verdict.as_bytes());
            drop(ready_write);
            if result.is_err() {
                std::process::exit(1);
            }
            sys::redirect_stdio(log.as_raw_fd());
            drop(log);
            let code = crate::init::serve(listener);
            std::process::exit(code);
        }
        Some(child) => {
            drop(go_read);
            drop(ready_write);
            let outcome = write_id_maps(child, spec).and_then(|()| {
                write(&go_write, b"g").map_err(step("release the sprite's pid 1"))?;
                drop(go_write);
                read_verdict(ready_read)
            });
            if let Err(error) = outcome {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child as i32), None);
                return Err(error);
            }
            Ok(LaunchResult { pid: child })
        }
    }
}

fn read_verdict(ready: OwnedFd) -> Result<(), SandboxError> {
    let mut verdict = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match read(&ready, &mut buffer) {
            Ok(0) => break,
            Ok(n) => verdict.extend_from_slice(&buffer[..n]),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(step("read the sprite's setup verdict")(e)),
        }
    }
    let verdict = String::from_utf8_lossy(&verdict);
    if verdict == "ok" {
        Ok(())
    } else if verdict.is_empty() {
        Err(SandboxError::Setup("pid 1 exited during setup".into()))
    } else {
        Err(SandboxError::Setup(verdict.into_owned()))
    }
}

fn write_id_maps(child: u32, spec: &SandboxSpec) -> Result<(), SandboxError> {
    let line = format!("0 {} {}\n", spec.id_base, spec.id_count);
    for file in ["uid_map", "gid_map"] {
        let path = PathBuf::from(format!("/proc/{child}/{file}"));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| SandboxError::IdMap(path, e))?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<(), SandboxError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(step(format!(
        "bind {} on {}",
        source.display(),
        target.display()
    )))
}

/// Builds the sprite's root and pivots into it. Runs as PID 1, root of the new user
/// namespace, before anything of the user's runs.
fn setup_sprite(spec: &SandboxSpec) -> Result<(), SandboxError> {
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(step("become gid 0"))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(step("become uid 0"))?;
    sethostname(&spec.hostname).map_err(step("set hostname"))?;
    // Nothing mounted here shows on the host. With checkpoint views, mounts the host
    // makes under the views directory must still reach the sprite: slave, not private
    // (the host root is detached after pivot_root, so only the views bind receives).
    let propagation = if spec.layers.views.is_some() {
        MsFlags::MS_SLAVE
    } else {
        MsFlags::MS_PRIVATE
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )
    .map_err(step("make / private"))?;

    let root = spec.root_path();
    let lower: Vec<String> = spec
        .layers
        .lower
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lower.join(":"),
        spec.layers.upper.display(),
        spec.layers.work.display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(step(format!("mount overlay root at {}", root.display())))?;

    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let at = |p: &str| root.join(p);
    for dir in ["proc", "sys", "dev", "tmp", "home", ".sprite"] {
        ensure_dir(&at(dir))?;
    }
    mount(
        Some("proc"),
        &at("proc"),
        Some("proc"),
        nosuid_nodev_noexec,
        None::<&str>,
    )
    .map_err(step("mount /proc"))?;
    mount(
        Some("sysfs"),
        &at("sys"),
        Some("sysfs"),
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(step("mount /sys"))?;
    mount(
        Some("tmpfs"),
        &at("dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(step("mount /dev"))?;
    for device in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = at("dev").join(device);
        fs::File::create(&target).map_err(|e| SandboxError::CreateDir(target.clone(), e))?;
        bind(&Path::new("/dev").join(device), &target, MsFlags::empty())?;
    }
    for dir in ["pts", "shm"] {
        ensure_dir(&at("dev").join(dir))?;
    }
    mount(
        Some("devpts"),
        &at("dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(step("mount /dev/pts"))?;
    mount(
        Some("tmpfs"),
        &at("dev/shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(step("mount /dev/shm"))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, at("dev").join(link))
            .map_err(|e| SandboxError::CreateDir(at("dev").join(link), e))?;
    }

    if let Some(home) = &spec.layers.home {
        bind(home, &at("home"), MsFlags::empty())?;
    }
    if let Some(run) = &spec.run_dir {
        let target = at(".sprite/run");
        ensure_dir(&target)?;
        bind(run, &target, MsFlags::empty())?;
        // A link, not a bound socket: the daemon re-creates the socket when it restarts.
        let link = at(".sprite/api.sock");
        if fs::symlink_metadata(&link).is_err() {
            symlink("run/api.sock", &link).map_err(|e| SandboxError::CreateDir(link.clone(), e))?;
        }
    }
    if let Some(bin) = &spec.bin_dir {
        let target = at(".sprite/bin");
        ensure_dir(&target)?;
        bind(bin, &target, MsFlags::empty())?;
        bind(
            &target,
            &target,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }
    if let Some(views) = &spec.layers.views {
        // A bind of a slave mount is a slave of the same master: checkpoint views the
        // host mounts later appear here too. Read-only for the sprite.
        let target = at(".sprite/checkpoints");
        ensure_dir(&target)?;
        bind(views, &target, MsFlags::empty())?;
        bind(
            &target,
            &target,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }

    chdir(&root).map_err(step("enter the new root"))?;
    pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the host root"))?;
    chdir("/").map_err(step("chdir /"))?;
    sys::loopback_up().map_err(step("bring up lo"))?;
    name_in_hosts(&spec.hostname);
    Ok(())
}

/// Makes the sprite's own name resolve (sudo and many tools look it up), by adding it to
/// the sprite's /etc/hosts once. Best effort: an image without /etc is still usable.
pub(crate) fn name_in_hosts(hostname: &str) {
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    let known = hosts
        .lines()
        .any(|line| line.split_whitespace().skip(1).any(|name| name == hostname));
    if !known {
        let _ = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open("/etc/hosts")
            .and_then(|mut file| file.write_all(format!("127.0.1.1 {hostname}\n").as_bytes()));
    }
}

fn ensure_dir(path: &Path) -> Result<(), SandboxError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SandboxError::CreateDir(path.to_path_buf(), e)),
    }
}
