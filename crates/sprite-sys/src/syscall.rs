//! The few system calls no safe wrapper covers, each `unsafe` block with the reason it is
//! sound.

use std::os::fd::RawFd;

/// Namespaces every sprite gets.
const NAMESPACE_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP;

/// Forks into new namespaces. `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
///
/// Only call from a single-threaded process (the launcher): like `fork`, the child gets
/// a copy of the calling thread alone.
pub fn clone_into_namespaces() -> nix::Result<Option<u32>> {
    // SAFETY: a clone without CLONE_VM and with a null stack has fork semantics: the
    // child runs on a copy-on-write copy of the parent's stack and memory. The launcher
    // is single-threaded, so no lock can be held by a thread that does not exist in
    // the child. The extra arguments (parent tid, child tid, tls) are unused.
    let result = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (NAMESPACE_FLAGS | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match result {
        -1 => Err(nix::Error::last()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Forks. `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
///
/// Only call from a single-threaded process (the launch server): the child gets a copy
/// of the calling thread alone.
pub fn fork_single_threaded() -> nix::Result<Option<u32>> {
    // SAFETY: the launch server that calls this is single-threaded (it runs before any
    // thread or runtime exists and never starts one), so no lock in the child can be
    // held by a thread that is not there, and the child may allocate and do real work.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(None),
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child.as_raw() as u32)),
    }
}

/// Forks into new namespaces (as [`clone_into_namespaces`]) with the calling process's
/// effective ids switched to `owner` for the clone alone, so the new user namespace is
/// owned by that host uid and gid: the kernel charges every per-user budget of the
/// sprite (inotify instances, epoll watches, pending signals, message queues, locked
/// memory) to `owner` in the host's namespace, not to root. The caller's ids are back
/// to what they were when this returns, in the parent.
pub fn clone_into_namespaces_as(owner: u32) -> nix::Result<Option<u32>> {
    use nix::unistd::{getegid, geteuid, setegid, seteuid, Gid, Uid};
    let (uid, gid) = (geteuid(), getegid());
    setegid(Gid::from_raw(owner))?;
    if let Err(error) = seteuid(Uid::from_raw(owner)) {
        let _ = setegid(gid);
        return Err(error);
    }
    let result = clone_into_namespaces();
    if let Ok(Some(_)) | Err(_) = result {
        // Back to root (the saved uid): the effective capabilities come back with it.
        seteuid(uid)?;
        setegid(gid)?;
    }
    result
}

/// A user namespace whose id maps are `map` (`inside outside count` lines, for both
/// uids and gids), held by the returned descriptor alone. Used to give idmapped mounts
/// their mapping. Safe to call from a multi-threaded process: the helper child that
/// creates the namespace only reads a pipe and exits.
pub fn user_namespace(map: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let (wait_read, wait_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (read_fd, write_fd) = (wait_read.as_raw_fd(), wait_write.as_raw_fd());
    // SAFETY: a clone without CLONE_VM and with a null stack has fork semantics. The
    // child calls only close(2), read(2) and _exit(2), which are async-signal-safe, so
    // it is sound even though the caller may have other threads (whose locks the child
    // never touches) and it never returns into Rust code that could run destructors.
    let pid = unsafe {
        let pid = libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        );
        if pid == 0 {
            libc::close(write_fd);
            let mut byte = 0u8;
            libc::read(read_fd, (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        }
        pid
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(wait_read);
    let made = (|| {
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{file}"), map)?;
        }
        std::fs::File::open(format!("/proc/{pid}/ns/user")).map(std::os::fd::OwnedFd::from)
    })();
    // The child reads end of file and exits; reap it.
    drop(wait_write);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    made
}

/// A detached copy of the mount at `path` (`open_tree(OPEN_TREE_CLONE)`): a bind mount
/// attached nowhere yet, to change with [`set_mount_attributes`] and attach with
/// [`attach_mount`], also from inside another mount namespace. `at` is a directory
/// descriptor `path` is relative to (a detached mount, say), or None for the cwd.
pub fn clone_mount(
    at: Option<std::os::fd::BorrowedFd<'_>>,
    path: &std::path::Path,
    recursive: bool,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let path = c_path(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let at = at.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: `path` is a NUL-terminated string alive for the call; the kernel returns
    // a new descriptor we take ownership of, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, at, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just opened for us and nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Mount attributes for [`set_mount_attributes`].
pub mod mount_attr {
    pub const READ_ONLY: u64 = libc::MOUNT_ATTR_RDONLY;
    pub const NO_SUID: u64 = libc::MOUNT_ATTR_NOSUID;
    pub const NO_DEV: u64 = libc::MOUNT_ATTR_NODEV;
    pub const NO_EXEC: u64 = libc::MOUNT_ATTR_NOEXEC;
}

/// Sets and clears attributes (`mount_attr::*`) of a mount (a detached one from
/// [`clone_mount`] or any other), and with `idmap` makes it an idmapped mount: files are seen with
/// their owners translated through that user namespace's maps.
pub fn set_mount_attributes(
    mount: std::os::fd::BorrowedFd<'_>,
    set: u64,
    clear: u64,
    idmap: Option<std::os::fd::BorrowedFd<'_>>,
    recursive: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut attributes = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    if let Some(namespace) = idmap {
        attributes.attr_set |= libc::MOUNT_ATTR_IDMAP;
        attributes.userns_fd = namespace.as_raw_fd() as u64;
    }
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: the empty path is a static NUL-terminated string; `attributes` is a
    // fully initialised `mount_attr` that outlives the call, and its size is passed.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            &attributes as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches a detached mount (from [`clone_mount`]) at `target`, in the caller's
/// mount namespace.
pub fn attach_mount(
    mount: std::os::fd::BorrowedFd<'_>,
    target: &std::path::Path,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let target = c_path(target)?;
    // SAFETY: both strings are NUL-terminated and alive for the call; the descriptor
    // is borrowed from a live owner.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new overlay mount, detached, read-only, nosuid, nodev and noexec, of `layers`
/// (uppermost first) given as descriptors (detached mounts too, say idmapped ones):
/// its options then name no host path (the kernel shows each layer as `/`).
pub fn overlay_from(
    layers: &[std::os::fd::BorrowedFd<'_>],
    source: &str,
    flags: &[&str],
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let context = {
        // SAFETY: a static NUL-terminated name; the kernel returns a new descriptor.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_fsopen,
                c"overlay".as_ptr(),
                FSOPEN_CLOEXEC as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just opened for us and nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
    };
    let configure = |command: libc::c_uint,
                     key: Option<&std::ffi::CStr>,
                     value: Option<&std::ffi::CStr>,
                     aux: libc::c_int| {
        // SAFETY: key and value are NUL-terminated strings (or null where the command
        // takes none) alive for the call; `context` is an open fs context.
        let result = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                command,
                key.map_or(std::ptr::null(), |k| k.as_ptr()),
                value.map_or(std::ptr::null(), |v| v.as_ptr()),
                aux,
            )
        };
        if result < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    for layer in layers {
        configure(FSCONFIG_SET_FD, Some(c"lowerdir+"), None, layer.as_raw_fd())?;
    }
    let source = std::ffi::CString::new(source)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    configure(FSCONFIG_SET_STRING, Some(c"source"), Some(&source), 0)?;
    for flag in flags {
        let flag = std::ffi::CString::new(*flag)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        configure(FSCONFIG_SET_FLAG, Some(&flag), None, 0)?;
    }
    configure(FSCONFIG_CMD_CREATE, None, None, 0)?;
    let attributes = libc::MOUNT_ATTR_RDONLY
        | libc::MOUNT_ATTR_NOSUID
        | libc::MOUNT_ATTR_NODEV
        | libc::MOUNT_ATTR_NOEXEC;
    // SAFETY: integer arguments only; the kernel returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            FSMOUNT_CLOEXEC as libc::c_uint,
            attributes as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just opened for us and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

// From <linux/mount.h>.
const FSOPEN_CLOEXEC: u32 = 1;
const FSMOUNT_CLOEXEC: u32 = 1;
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_SET_FD: u32 = 5;
const FSCONFIG_CMD_CREATE: u32 = 6;

fn c_path(path: &std::path::Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// A descriptor for process `pid` (`pidfd_open`): it names that process, never another
/// one that gets the same pid number after it exits.
pub fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer arguments only; the kernel returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just opened for us and nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Points stdout and stderr at `fd` and stdin at /dev/null.
pub fn redirect_stdio(fd: RawFd) {
    // SAFETY: dup2 on descriptors we own; failures leave the old descriptors in place,
    // which only affects where diagnostics go.
    unsafe {
        libc::dup2(fd, 1);
        libc::dup2(fd, 2);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
    }
}

/// Brings up the loopback interface of the current network namespace.
pub fn loopback_up() -> nix::Result<()> {
    // SAFETY: a plain datagram socket used only for the two ioctls below, closed at
    // the end; `ifreq` is fully initialised (zeroed, then the name and flags set).
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return Err(nix::Error::last());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        let mut result = libc::ioctl(socket, libc::SIOCGIFFLAGS as _, &mut request);
        if result == 0 {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            result = libc::ioctl(socket, libc::SIOCSIFFLAGS as _, &request);
        }
        let error = nix::Error::last();
        libc::close(socket);
        if result < 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// Installs a classic BPF seccomp filter without setting NO_NEW_PRIVS, so that setuid
/// programs (sudo) keep working. Needs CAP_SYS_ADMIN in the current user namespace.
pub fn install_seccomp(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies
    // the filter before returning.
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Marks the process non-dumpable, so code inside the sprite cannot ptrace PID 1 or read
/// its memory and descriptors through /proc.
pub fn set_non_dumpable() -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let result = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if result != 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Sets the window size of a terminal.
pub fn set_window_size(fd: RawFd, cols: u16, rows: u16) -> nix::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, which is valid for the call.
    let result = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) };
    if result != 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Credentials and terminal a spawned process takes on between fork and exec.
#[derive(Debug, Clone)]
pub struct ChildSetup {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Make stdin (a PTY slave) the controlling terminal.
    pub controlling_tty: bool,
}

/// Registers `setup` to run in the child between fork and exec.
pub fn apply_child_setup(command: &mut std::process::Command, setup: ChildSetup) {
    use std::os::unix::process::CommandExt;
    let groups: Vec<libc::gid_t> = setup.groups.clone();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, ioctl, setgroups, setresgid, setresuid,
    // sigaction, signal mask reset); it allocates nothing (`groups` was built before
    // the fork, the `sigaction` value lives on the stack).
    unsafe {
        command.pre_exec(move || {
            // Every signal at its default: an ignored one (a daemon started from a
            // script with `&` ignores SIGINT and SIGQUIT) would stay ignored through
            // exec, and Ctrl+C or a signal frame would not stop the command.
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            for signal in 1..=64 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::sigaction(signal, &default, std::ptr::null_mut());
                }
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if setup.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setresgid(setup.gid, setup.gid, setup.gid) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setresuid(setup.uid, setup.uid, setup.uid) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Registers an owned descriptor (a PTY master) with the tokio reactor.
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an `OwnedFd` is open, owned by the `AsyncFd` for its whole life and always
    // returns the same descriptor from `as_raw_fd`.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// Freezes a mounted filesystem (FIFREEZE): writes block until [`thaw_filesystem`], and
/// everything written so far is on the device.
pub fn freeze_filesystem(mount_point: &std::path::Path) -> std::io::Result<()> {
    filesystem_ioctl(mount_point, 0xC004_5877)
}

/// Thaws a filesystem frozen by [`freeze_filesystem`] (FITHAW).
pub fn thaw_filesystem(mount_point: &std::path::Path) -> std::io::Result<()> {
    filesystem_ioctl(mount_point, 0xC004_5878)
}

fn filesystem_ioctl(mount_point: &std::path::Path, request: libc::c_ulong) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let directory = std::fs::File::open(mount_point)?;
    // SAFETY: FIFREEZE and FITHAW take an int argument that the kernel ignores; the
    // descriptor is open for the duration of the call.
    let result = unsafe { libc::ioctl(directory.as_raw_fd(), request as _, 0) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes written to a file between two starts of its writeback by [`WritebackPacer`].
pub const WRITEBACK_EVERY: u64 = 32 << 20;

/// Starts a file's writeback every [`WRITEBACK_EVERY`] bytes written to it, so a long
/// write streams to the disk while it goes on instead of all at its final fsync (the
/// kernel's own background writeback waits for far more dirty pages than one write
/// makes). Counts through `&self`, so writers on several threads can share one.
#[derive(Debug, Default)]
pub struct WritebackPacer {
    since: std::sync::atomic::AtomicU64,
}

impl WritebackPacer {
    /// Counts `bytes` just written to `file`, starting its writeback when due.
    pub fn wrote(&self, file: &impl std::os::fd::AsFd, bytes: u64) -> nix::Result<()> {
        use std::sync::atomic::Ordering;
        let total = self.since.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total >= WRITEBACK_EVERY && self.since.swap(0, Ordering::Relaxed) >= WRITEBACK_EVERY {
            return start_writeback(file);
        }
        Ok(())
    }
}

/// Starts writeback of a file's dirty pages (all of them) without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so a long write streams to the disk
/// while it goes on instead of all at its final fsync. Not a durability guarantee.
pub fn start_writeback(file: &impl std::os::fd::AsFd) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes a descriptor and plain integers; the descriptor is
    // borrowed from a live owner for the duration of the call, and offset 0 with
    // length 0 means "to the end of the file". No memory is passed to the kernel.
    let result = unsafe {
        libc::sync_file_range(file.as_fd().as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
    };
    nix::errno::Errno::result(result).map(drop)
}

/// Writes a range of a file to the disk and drops it from the page cache (
/// `sync_file_range` with wait before and after, then `POSIX_FADV_DONTNEED`): for data
/// the process wrote and will not read soon, so it does not crowd out pages that are
/// (each copy in the page cache is memory the host's sprites do not have, and a full
/// page cache makes the kernel reclaim through every sprite's cgroup). Length 0 means
/// to the end of the file. Pages written again meanwhile may stay; nothing is lost.
pub fn drop_cached(file: &impl std::os::fd::AsFd, offset: u64, len: u64) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (start, length) = (
        i64::try_from(offset).map_err(|_| nix::errno::Errno::EINVAL)?,
        i64::try_from(len).map_err(|_| nix::errno::Errno::EINVAL)?,
    );
    // SAFETY: sync_file_range takes a descriptor and plain integers; the descriptor is
    // borrowed from a live owner for the duration of the call. No memory is passed.
    let result = unsafe { libc::sync_file_range(file.as_fd().as_raw_fd(), start, length, flags) };
    nix::errno::Errno::result(result)?;
    nix::fcntl::posix_fadvise(
        file.as_fd(),
        start,
        length,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
}

/// Bytes of a file now in the page cache (`mmap` and `mincore`, counted in whole pages
/// up to the file's end): what [`drop_cached`] gives back, for tests and diagnostics.
pub fn cached_bytes(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: sysconf has no memory arguments.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096);
    // SAFETY: a fresh shared read-only mapping of `len` bytes of an open file, at an
    // address the kernel picks; nothing reads through it, and it is unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let mut residency = vec![0u8; len.div_ceil(page)];
    // SAFETY: `addr` is the start of the `len`-byte mapping made above, page aligned;
    // `residency` has one byte per page of it, as mincore writes.
    let result = unsafe { libc::mincore(addr, len, residency.as_mut_ptr()) };
    let error = std::io::Error::last_os_error();
    // SAFETY: unmaps exactly the mapping made above, which nothing else refers to.
    unsafe { libc::munmap(addr, len) };
    if result != 0 {
        return Err(error);
    }
    let pages = residency.iter().filter(|b| *b & 1 == 1).count() as u64;
    Ok((pages * page as u64).min(len as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_pages_leave_the_page_cache_and_keep_their_data() {
        use std::io::{Read, Seek, Write};
        let dir = std::env::temp_dir().join(format!("sprite-sys-drop-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&dir)
            .expect("create");
        let data = vec![7u8; 1 << 20];
        file.write_all(&data).expect("write");
        assert!(
            cached_bytes(&file).expect("count") > 0,
            "just written: in the page cache"
        );
        drop_cached(&file, 0, 0).expect("drop");
        let after = cached_bytes(&file).expect("count");
        let mut back = Vec::new();
        file.rewind().expect("rewind");
        file.read_to_end(&mut back).expect("read");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(after, 0, "dropped from the page cache");
        assert_eq!(back, data, "and still on disk");
    }

    #[test]
    fn writeback_starts_once_per_period() {
        // A socket has no writeback: a start shows up as the kernel's ESPIPE.
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().expect("pair");
        let pacer = WritebackPacer::default();
        assert!(
            pacer.wrote(&socket, WRITEBACK_EVERY - 1).is_ok(),
            "not due yet"
        );
        assert_eq!(pacer.wrote(&socket, 1), Err(nix::errno::Errno::ESPIPE));
        assert!(
            pacer.wrote(&socket, WRITEBACK_EVERY - 1).is_ok(),
            "count restarted"
        );
    }
}
