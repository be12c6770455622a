//! Starting a sprite: the launcher process and the setup of its PID 1.
//!
//! The daemon is multi-threaded, and a multi-threaded process must not fork and then
//! do real work. So the daemon runs its own binary as `sprite init` (the launcher), a
//! fresh single-threaded process, and hands it a [`SandboxSpec`] on stdin. The launcher
//! creates the cgroup and joins it, binds `init.sock` (so the socket lives on the host
//! side and is never visible inside the sprite), and clones a child into new user, pid,
//! mount, uts, ipc, net and cgroup namespaces. It writes the child's uid/gid maps, lets
//! it go, waits for its verdict, prints `{"pid":N}` and exits. The child is PID 1 of the
//! sprite: it mounts the root overlay, /proc, /sys and /dev, moves into the root
//! (onto the seed namespace's stub, or by `pivot_root` without one), locks itself down
//! (seccomp, capabilities) and serves the init protocol.

use crate::cgroup::{Layout, SpriteCgroup};
use crate::error::{step, SandboxError};
use crate::rootplan::{Layer, Step};
use crate::spec::SandboxSpec;
use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{
    chdir, chroot, pipe, pivot_root, read, sethostname, setresgid, setresuid, write, Gid, Uid,
};
use std::fs;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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
    // The launcher runs as root with root's groups: none of them may follow the sprite.
    nix::unistd::setgroups(&[]).map_err(step("drop supplementary groups"))?;
    prepare_state_dir(spec)?;
    let mounts = LayerMounts::prepare(spec)?;

    let cgroup = SpriteCgroup::new(
        Layout::detect(Path::new("/sys/fs/cgroup"))?,
        spec.cgroup_name.as_deref().unwrap_or(&spec.sprite_id),
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

    // Every process of the sprite inherits this score and, because the launcher sets it
    // with CAP_SYS_RESOURCE, cannot go below it: no sprite process can make the host's
    // OOM killer take the daemon or the storage process instead of itself.
    fs::write("/proc/self/oom_score_adj", spec.oom_score_adj.to_string())
        .map_err(|e| SandboxError::OomScore(spec.oom_score_adj, e))?;

    // Everything the sprite takes from the host's mounts is held as detached mounts by
    // now (`mounts`): the rest of the host's mount table need not be copied into it.
    if let Some(namespace) = &spec.mount_namespace {
        sprite_sys::mount::enter_namespace(namespace)
            .map_err(|e| SandboxError::EnterNamespace(namespace.clone(), e))?;
        // PID 1 moves its root onto this namespace's root and leaves it beneath: it
        // must be the seed's stub (a read-only tmpfs), never a namespace holding the
        // host's mounts.
        if !sprite_sys::mount::is_read_only_tmpfs(Path::new("/")) {
            return Err(SandboxError::EnterNamespace(
                namespace.clone(),
                std::io::Error::other("its root is not a seed's read-only stub"),
            ));
        }
    }

    let (go_read, go_write) = pipe().map_err(SandboxError::Pipe)?;
    let (ready_read, ready_write) = pipe().map_err(SandboxError::Pipe)?;

    match sys::clone_into_namespaces_as(spec.id_base).map_err(SandboxError::Clone)? {
        None => {
            // The child: PID 1 of the sprite.
            drop(go_write);
            drop(ready_read);
            let mut byte = [0u8; 1];
            let _ = read(&go_read, &mut byte);
            drop(go_read);
            let result = setup_sprite(spec, mounts)
                .and_then(|()| crate::security::lock_down(spec.nested_containers));
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
            drop(mounts);
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

/// Most bytes of a spec the launch server reads.
const MAX_SPEC: u64 = 1 << 20;

/// The launch server (`sprite init --serve`): a single-threaded process the
/// daemon starts once, so that starting a sprite spawns no process. For each
/// connection on `socket` (mode 0600, root's) it forks a child that reads a
/// [`SandboxSpec`], runs [`run_launcher`] (which clones the sprite's PID 1) and answers
/// `{"pid":N}` or `{"error":"..."}` on the connection. It ends with the daemon that
/// started it (a parent-death signal, and a check of its parent every second).
pub fn serve_launches(socket: &Path) -> Result<(), SandboxError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let parent = nix::unistd::getppid();
    // Gone with the daemon at once (the parent check below covers a daemon that died
    // before this line).
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(step("ask to end with the daemon"))?;
    let _ = fs::remove_file(socket);
    let bind = |e| SandboxError::BindSocket(socket.to_path_buf(), e);
    let listener = UnixListener::bind(socket).map_err(bind)?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600)).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    loop {
        reap_children();
        if nix::unistd::getppid() != parent {
            let _ = fs::remove_file(socket);
            return Ok(());
        }
        let mut ready = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut ready, PollTimeout::from(1000u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(error) => return Err(step("wait for launch requests")(error)),
        }
        let connection = match listener.accept() {
            Ok((connection, _)) => connection,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(error) => return Err(bind(error)),
        };
        if connection.set_nonblocking(false).is_err() {
            continue;
        }
        match sys::fork_single_threaded() {
            Ok(None) => {
                drop(listener);
                std::process::exit(launch_for(connection));
            }
            Ok(Some(_)) => drop(connection),
            Err(error) => {
                let answer = serde_json::json!({ "error": format!("fork a launcher: {error}") });
                let _ = (&connection).write_all(format!("{answer}\n").as_bytes());
            }
        }
    }
}

/// Collects the launch server's exited children.
fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// One launch, in a child of the launch server: the spec from `connection`, the
/// answer back on it. The connection becomes this process's stdout, so the sprite's
/// PID 1 holds it only until it points its stdio at its log (as with a launcher run by
/// the daemon), and it is the only descriptor of the launch server's it gets.
fn launch_for(connection: std::os::unix::net::UnixStream) -> i32 {
    use std::io::Read;
    let mut input = Vec::new();
    if (&connection)
        .take(MAX_SPEC)
        .read_to_end(&mut input)
        .is_err()
    {
        return 2;
    }
    let refuse = |message: String| {
        let answer = serde_json::json!({ "error": message });
        let _ = (&connection).write_all(format!("{answer}\n").as_bytes());
    };
    let spec = match serde_json::from_slice::<SandboxSpec>(&input) {
        Ok(spec) => spec,
        Err(error) => {
            refuse(format!("the launch request is malformed: {error}"));
            return 1;
        }
    };
    if let Err(error) = nix::unistd::dup2_stdout(&connection) {
        refuse(format!("take the connection as stdout: {error}"));
        return 1;
    }
    drop(connection);
    let answer = match run_launcher(&spec) {
        Ok(result) => serde_json::json!({ "pid": result.pid }),
        Err(error) => serde_json::json!({ "error": sprite_api::error_chain(&error) }),
    };
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(format!("{answer}\n").as_bytes());
    let _ = stdout.flush();
    0
}

/// The sprite's state directory belongs to the host uid of its root, mode 0700: without
/// a seed namespace PID 1 builds its root there (see `rootplan`), as that uid, and no
/// other host user can look inside. The disk's `upper/` and `work/` are made with the
/// storage owner.
fn prepare_state_dir(spec: &SandboxSpec) -> Result<(), SandboxError> {
    let owner = (
        Some(Uid::from_raw(spec.id_base)),
        Some(Gid::from_raw(spec.id_base)),
    );
    fs::create_dir_all(&spec.state_dir)
        .map_err(|e| SandboxError::CreateDir(spec.state_dir.clone(), e))?;
    nix::unistd::chown(&spec.state_dir, owner.0, owner.1)
        .map_err(step(format!("chown {}", spec.state_dir.display())))?;
    fs::set_permissions(&spec.state_dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| SandboxError::CreateDir(spec.state_dir.clone(), e))?;
    for dir in [spec.layers.upper(), spec.layers.work()] {
        fs::create_dir_all(&dir).map_err(|e| SandboxError::CreateDir(dir.clone(), e))?;
        nix::unistd::chown(
            dir.as_path(),
            Some(Uid::from_raw(spec.storage_id_base)),
            Some(Gid::from_raw(spec.storage_id_base)),
        )
        .map_err(step(format!("chown {}", dir.display())))?;
    }
    Ok(())
}

/// The mounts PID 1 builds its root from, made by the launcher (as root, on the host)
/// as detached mounts and attached by PID 1 in its own mount namespace: the image and
/// the disk idmapped from the storage ids onto the sprite's own range, all of them
/// nosuid and nodev (a setuid file or device node the sprite makes is inert on the
/// host side), the lower layers read-only.
struct LayerMounts {
    lower: Vec<OwnedFd>,
    disk: OwnedFd,
    run: Option<OwnedFd>,
    views: Option<OwnedFd>,
}

impl LayerMounts {
    fn prepare(spec: &SandboxSpec) -> Result<LayerMounts, SandboxError> {
        use sys::mount_attr::{NO_DEV, NO_EXEC, NO_SUID, READ_ONLY};
        let idmap = (spec.storage_id_base != spec.id_base)
            .then(|| {
                let map = format!(
                    "{} {} {}\n",
                    spec.storage_id_base, spec.id_base, spec.id_count
                );
                sys::user_namespace(&map).map_err(SandboxError::IdmapNamespace)
            })
            .transpose()?;
        let idmap = idmap.as_ref().map(|fd| fd.as_fd());
        // The host mounts sprite disks and images noexec (the host never runs what is
        // on them); the sprite's own view of them runs its programs.
        let clone = |path: &Path, attributes: u64, idmap, recursive| {
            let fd = sys::clone_mount(None, path, recursive)
                .map_err(|e| SandboxError::CloneMount(path.to_path_buf(), e))?;
            sys::set_mount_attributes(
                fd.as_fd(),
                attributes,
                NO_EXEC & !attributes,
                idmap,
                recursive,
            )
            .map_err(|e| SandboxError::CloneMount(path.to_path_buf(), e))?;
            Ok::<_, SandboxError>(fd)
        };
        let mut lower = Vec::new();
        for layer in &spec.layers.lower {
            lower.push(clone(layer, READ_ONLY | NO_SUID | NO_DEV, idmap, false)?);
        }
        Ok(LayerMounts {
            lower,
            disk: clone(&spec.layers.disk, NO_SUID | NO_DEV, idmap, false)?,
            run: spec
                .run_dir
                .as_deref()
                .map(|run| clone(run, NO_SUID | NO_DEV | NO_EXEC, None, false))
                .transpose()?,
            views: spec
                .layers
                .views
                .as_deref()
                .map(|views| clone(views, READ_ONLY | NO_SUID | NO_DEV, None, true))
                .transpose()?,
        })
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
fn setup_sprite(spec: &SandboxSpec, mounts: LayerMounts) -> Result<(), SandboxError> {
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(step("become gid 0"))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(step("become uid 0"))?;
    sethostname(&spec.hostname).map_err(step("set hostname"))?;
    let plan = crate::rootplan::plan(
        spec,
        mounts.lower.len(),
        mounts.run.is_some(),
        mounts.views.is_some(),
    );
    for planned in plan {
        apply(planned, &mounts)?;
    }
    drop(mounts);
    sys::loopback_up().map_err(step("bring up lo"))?;
    name_in_hosts(&spec.hostname);
    Ok(())
}

/// Does one step of building the root (see `rootplan`).
fn apply(planned: Step, mounts: &LayerMounts) -> Result<(), SandboxError> {
    match planned {
        Step::Propagation { target, flags } => {
            let recursive = if target == Path::new("/") {
                MsFlags::MS_REC
            } else {
                MsFlags::empty()
            };
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                recursive | flags,
                None::<&str>,
            )
            .map_err(step(format!("set the propagation of {}", target.display())))
        }
        Step::Chdir(dir) => chdir(&dir).map_err(step(format!("enter {}", dir.display()))),
        Step::Attach { layer, target } => {
            let fd = match layer {
                Layer::Lower(index) => mounts.lower.get(index),
                Layer::Disk => Some(&mounts.disk),
                Layer::Run => mounts.run.as_ref(),
                Layer::Views => mounts.views.as_ref(),
            };
            match fd {
                Some(fd) => attach(fd, &target),
                None => Err(SandboxError::AttachMount(
                    target,
                    std::io::Error::other(format!("no {layer:?} mount was made")),
                )),
            }
        }
        Step::Mount {
            what,
            source,
            target,
            fstype,
            flags,
            data,
        } => mount(
            Some(source.as_str()),
            &target,
            Some(fstype.as_str()),
            flags,
            data.as_deref(),
        )
        .map_err(step(format!("mount {what}"))),
        Step::Bind { source, target } => bind(&source, &target, MsFlags::empty()),
        Step::Dir(dir) => ensure_dir(&dir),
        Step::File(file) => fs::File::create(&file)
            .map(|_| ())
            .map_err(|e| SandboxError::CreateDir(file, e)),
        Step::Symlink { target, link, keep } => {
            if keep && fs::symlink_metadata(&link).is_ok() {
                return Ok(());
            }
            symlink(&target, &link).map_err(|e| SandboxError::CreateDir(link, e))
        }
        Step::PivotRoot => {
            pivot_root(".", ".").map_err(step("pivot_root"))?;
            umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the host root"))?;
            chdir("/").map_err(step("chdir /"))
        }
        Step::Detach(target) => umount2(&target, MntFlags::MNT_DETACH)
            .map_err(step(format!("detach {}", target.display()))),
        Step::MoveRoot => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(step("move the root onto /"))?;
            chroot(".").map_err(step("chroot into the root"))?;
            chdir("/").map_err(step("chdir /"))
        }
    }
}

fn attach(mount: &OwnedFd, target: &Path) -> Result<(), SandboxError> {
    sys::attach_mount(mount.as_fd(), target)
        .map_err(|e| SandboxError::AttachMount(target.to_path_buf(), e))
}

/// Makes the sprite's own name resolve (sudo and many tools look it up), by adding it to
/// the sprite's /etc/hosts once. Best effort: an image without /etc is still usable.
pub(crate) fn name_in_hosts(hostname: &str) {
    let hosts = crate::init::files::read_text_or_empty(Path::new("/etc/hosts"), 1 << 20);
    let known = hosts
        .lines()
        .any(|line| line.split_whitespace().skip(1).any(|name| name == hostname));
    if !known {
        let _ = crate::init::files::open_append(Path::new("/etc/hosts"))
            .and_then(|mut file| file.write_all(format!("127.0.1.1 {hostname}\n").as_bytes()));
    }
}

/// Writes the sprite's name to its /etc/hostname (the image's names the host it was
/// built on) unless it is there already. Off the start's path: sprite-init does it once
/// it serves (a first write copies the file up, a few milliseconds), and on a rename.
pub(crate) fn name_in_hostname_file(hostname: &str) {
    let path = Path::new("/etc/hostname");
    let current = crate::init::files::read_text_or_empty(path, 4096);
    if current.trim() != hostname && Path::new("/etc").is_dir() {
        let _ = crate::init::files::overwrite(path, format!("{hostname}\n").as_bytes());
    }
}

fn ensure_dir(path: &Path) -> Result<(), SandboxError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SandboxError::CreateDir(path.to_path_buf(), e)),
    }
}
