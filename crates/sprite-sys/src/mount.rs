//! Mounting by system call instead of running `mount` and `umount`.

use std::io;
use std::path::Path;

pub use nix::mount::MsFlags;

fn io_error(error: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(error as i32)
}

/// Mounts the filesystem on block device `device` (of type `fstype`) at `target`.
///
/// The kernel shows a mount's source as it was given, to everyone who can see the mount.
/// With `shown_as`, the source is given as that bare name, a link to the device in a
/// directory of its own (`<target>.device`, removed again) resolved from a thread whose
/// working directory is private, so the device's host name never shows.
pub fn mount_device(
    device: &Path,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
    shown_as: Option<&str>,
) -> io::Result<()> {
    let Some(name) = shown_as else {
        return nix::mount::mount(Some(device), target, Some(fstype), flags, Some(data))
            .map_err(io_error);
    };
    bare_name(name)?;
    let links = target.with_extension("device");
    let _ = std::fs::remove_dir_all(&links);
    std::fs::create_dir_all(&links)?;
    let result = std::os::unix::fs::symlink(device, links.join(name)).and_then(|()| {
        let (name, links, target) = (name.to_string(), links.clone(), target.to_path_buf());
        let (fstype, data) = (fstype.to_string(), data.to_string());
        // A thread of its own: its working directory changes, and after unsharing the
        // filesystem context that change is the thread's alone.
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(io_error)?;
            std::env::set_current_dir(&links)?;
            nix::mount::mount(
                Some(Path::new(&name)),
                &target,
                Some(fstype.as_str()),
                flags,
                Some(data.as_str()),
            )
            .map_err(io_error)
        })
        .join()
        .map_err(|_| io::Error::other("the mount thread panicked"))?
    });
    let _ = std::fs::remove_dir_all(&links);
    result
}

/// `name` if it names a file in a directory (no `/`, not `.` or `..`, not empty).
fn bare_name(name: &str) -> io::Result<&str> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a bare file name"),
        ));
    }
    Ok(name)
}

/// Mounts a tmpfs named `name` at `target`.
pub fn mount_tmpfs(target: &Path, name: &str, flags: MsFlags, data: &str) -> io::Result<()> {
    nix::mount::mount(Some(name), target, Some("tmpfs"), flags, Some(data)).map_err(io_error)
}

/// Makes the mount at `target` shared: mounts made under it later propagate to its
/// peers and slaves (a sprite's bind of it).
pub fn make_shared(target: &Path) -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(io_error)
}

/// Makes the directory `path` a mount of its own (a bind onto itself), unless it is
/// one already. A detached copy of a directory (`open_tree`) costs a step per mount
/// on the mount it lies on (the kernel checks each for being locked under it); of a
/// mount's root with nothing mounted below, one step.
pub fn bind_to_itself(path: &Path) -> io::Result<()> {
    if is_mount_point(path) {
        return Ok(());
    }
    nix::mount::mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io_error)
}

/// Unmounts `target`; `lazy` detaches it now and lets it go once no process uses it.
pub fn unmount(target: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    nix::mount::umount2(target, flags).map_err(io_error)
}

/// Whether `path` is the root of a mount (statx's `STATX_ATTR_MOUNT_ROOT`: one system
/// call, not a read of the whole mount table). A missing path is not.
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is a writable
    // `struct statx` the kernel fills (it was zeroed, so every byte is initialised).
    let result = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            0,
            stat.as_mut_ptr(),
        )
    };
    if result != 0 {
        return false;
    }
    // SAFETY: zeroed and then filled by a successful statx.
    let stat = unsafe { stat.assume_init() };
    let flag = libc::STATX_ATTR_MOUNT_ROOT as u64;
    stat.stx_attributes_mask & flag != 0 && stat.stx_attributes & flag != 0
}

/// Makes a mount namespace to clone sprites' namespaces from, whose root is a small
/// read-only tmpfs (the stub) holding only what a sprite's PID 1 needs before it moves
/// into its own root: an empty `/work` (where it builds that root), the `devices` of
/// the host's `/dev` it binds (`/dev/null`...), and a `/proc` and a `/sys` because the
/// kernel lets a user namespace mount its own only where one is fully visible. Neither
/// shows anything of the host: the `/proc` lists no process but those the viewer could
/// trace anyway (`hidepid=invisible,subset=pid`), and the `/sys` is of a network
/// namespace of its own (no host interface). The host's root and every other mount are
/// detached from it (a `pivot_root` into the stub, here, once), so it keeps no host
/// disk busy. Held by the returned descriptor alone.
///
/// A sprite's PID 1 then needs no `pivot_root` of its own, which walks every thread of
/// the host (`chroot_fs_refs`: about 1.6 ms a start with 1,000 sprites on the host): it
/// moves its root onto `/` and chroots into it. Whatever is under that root is this
/// stub, which holds nothing of the host; and a sprite cannot reach it anyway (`..`
/// from its root leads back to its root, unmounting it takes CAP_SYS_ADMIN over the
/// sprite's own namespaces, which no sprite holds, and in a namespace a sprite makes
/// itself every mount it copied is locked). The stub is mounted on `data_dir` (which
/// must exist) in the new namespace only; the host sees nothing of it.
pub fn seed_namespace(data_dir: &Path, devices: &[&str]) -> io::Result<std::os::fd::OwnedFd> {
    let data_dir = data_dir.to_path_buf();
    let devices = devices
        .iter()
        .map(|d| bare_name(d).map(String::from))
        .collect::<io::Result<Vec<String>>>()?;
    // A thread of its own: unsharing the mount and network namespaces (and with them the
    // filesystem context) changes that thread alone, and the mount namespace outlives
    // it through the descriptor (the network namespace through the stub's sysfs).
    std::thread::spawn(move || {
        use nix::sched::CloneFlags;
        nix::sched::unshare(
            CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET,
        )
        .map_err(io_error)?;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(io_error)?;
        let namespace = std::fs::File::open("/proc/thread-self/ns/mnt")?;
        let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount_tmpfs(
            &data_dir,
            "sprite-seed",
            hidden,
            "mode=755,size=64k,nr_inodes=64",
        )?;
        std::env::set_current_dir(&data_dir)?;
        for dir in ["proc", "sys", "dev", "work"] {
            std::fs::create_dir(dir)?;
        }
        nix::mount::mount(
            Some("proc"),
            "proc",
            Some("proc"),
            hidden,
            Some("hidepid=invisible,subset=pid"),
        )
        .map_err(io_error)?;
        nix::mount::mount(
            Some("sysfs"),
            "sys",
            Some("sysfs"),
            hidden | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(io_error)?;
        for device in &devices {
            let at = Path::new("dev").join(device);
            std::fs::File::create(&at)?;
            nix::mount::mount(
                Some(&Path::new("/dev").join(device)),
                &at,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io_error)?;
        }
        nix::mount::mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hidden,
            None::<&str>,
        )
        .map_err(io_error)?;
        nix::unistd::pivot_root(".", ".").map_err(io_error)?;
        nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).map_err(io_error)?;
        nix::unistd::chdir("/").map_err(io_error)?;
        Ok(std::os::fd::OwnedFd::from(namespace))
    })
    .join()
    .map_err(|_| io::Error::other("the seed namespace thread panicked"))?
}

/// Whether the filesystem at `path` is a tmpfs mounted read-only (a seed's stub).
pub fn is_read_only_tmpfs(path: &Path) -> bool {
    let tmpfs = nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    let read_only = nix::sys::statvfs::statvfs(path)
        .is_ok_and(|fs| fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    tmpfs && read_only
}

/// Moves the calling process into the mount namespace at `path` (an `ns/mnt` file or a
/// descriptor of one under `/proc`). The process must be single-threaded.
pub fn enter_namespace(path: &Path) -> io::Result<()> {
    let namespace = std::fs::File::open(path)?;
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNS).map_err(io_error)
}

/// Every mount point of this process's mount namespace, as `/proc/self/mountinfo`
/// lists them (escapes undone), in its order (parents before children).
pub fn mount_points() -> io::Result<Vec<std::path::PathBuf>> {
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .collect())
}

/// A mount point as mountinfo prints it (space, tab, newline and backslash as `\ooo`).
fn unescape_mount_path(field: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    std::path::PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/tmp/a\\040b\\011c\\134d"),
            Path::new("/tmp/a b\tc\\d")
        );
        assert_eq!(unescape_mount_path("/plain"), Path::new("/plain"));
        assert_eq!(unescape_mount_path("/odd\\04"), Path::new("/odd\\04"));
    }

    #[test]
    fn a_seed_namespace_holds_the_stub_alone() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = dir.path().join("elsewhere");
        let data = dir.path().join("data");
        for path in [&elsewhere, &data] {
            std::fs::create_dir_all(path).expect("mkdir");
        }
        assert_eq!(
            seed_namespace(&data, &["null", "../x"])
                .expect_err("a path is no device name")
                .kind(),
            io::ErrorKind::InvalidInput
        );
        mount_tmpfs(&elsewhere, "sprite-test-seed", MsFlags::empty(), "size=1m").expect("mount");
        let result = std::panic::catch_unwind(|| {
            let seed = seed_namespace(&data, &["null", "zero"]).expect("seed");
            let (mounts, root, net, null) = std::thread::spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).expect("unshare fs");
                nix::sched::setns(&seed, nix::sched::CloneFlags::CLONE_NEWNS).expect("setns");
                let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("read");
                let mut root: Vec<String> = std::fs::read_dir("/")
                    .expect("list /")
                    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .collect();
                root.sort();
                let net: Vec<String> = std::fs::read_dir("/sys/class/net")
                    .map(|d| {
                        d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let null =
                    std::fs::write("/dev/null", b"x").is_ok() && is_read_only_tmpfs(Path::new("/"));
                (mounts, root, net, null)
            })
            .join()
            .expect("thread");
            // The stub and what is on it, nothing of the host.
            assert_eq!(root, ["dev", "proc", "sys", "work"], "{mounts}");
            assert!(!mounts.contains("sprite-test-seed"), "{mounts}");
            assert!(mounts.lines().count() <= 6, "{mounts}");
            let root_line = mounts
                .lines()
                .find(|l| l.split(' ').nth(4) == Some("/"))
                .expect("a root");
            assert!(root_line.contains(" tmpfs sprite-seed "), "{root_line}");
            assert!(root_line
                .split(' ')
                .nth(5)
                .is_some_and(|o| o.starts_with("ro")));
            assert!(mounts.contains("hidepid=invisible,subset=pid"), "{mounts}");
            assert!(null, "/dev/null is the host's device, / a read-only tmpfs");
            assert!(
                !is_read_only_tmpfs(Path::new("/")),
                "the host's root is no stub"
            );
            assert!(
                !net.iter().any(|n| n != "lo"),
                "host interfaces in the stub's /sys: {net:?}"
            );
            // The host's data directory has no stub on it, and unmounting a host mount is
            // not refused as busy.
            assert!(!is_mount_point(&data));
            assert!(is_mount_point(&elsewhere));
        });
        unmount(&elsewhere, false).expect("unmount");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn a_source_name_must_be_bare() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", "a/b", "..", "."] {
            let error = mount_device(
                Path::new("/dev/null"),
                dir.path(),
                "ext4",
                MsFlags::empty(),
                "",
                Some(bad),
            )
            .expect_err("refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn a_tmpfs_mounts_shared_and_unmounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t");
        std::fs::create_dir(&target).expect("mkdir");
        mount_tmpfs(&target, "sprite-test", MsFlags::MS_NOSUID, "size=1m").expect("mount");
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .expect("mountinfo")
                .lines()
                .find(|line| line.split(' ').nth(4) == Some(&*target.to_string_lossy()))
                .map(str::to_string)
        };
        let result = std::panic::catch_unwind(|| {
            assert!(is_mount_point(&target));
            assert!(!is_mount_point(dir.path()));
            make_shared(&target).expect("shared");
            let line = mounted().expect("mounted");
            assert!(line.contains(" shared:"), "{line}");
            assert!(line.contains(" - tmpfs sprite-test "), "{line}");
        });
        unmount(&target, false).expect("unmount");
        assert!(mounted().is_none());
        assert!(!is_mount_point(&target));
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
