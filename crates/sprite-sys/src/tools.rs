//! Where the host programs the daemon runs are (`nft`, `conntrack`, `mkfs.ext4`,
//! `debootstrap`, `tar`...): the first in `PATH`, then in the system directories a
//! service manager or `sudo` may have left out of it (`/usr/sbin`, `/sbin`...), so a
//! daemon started with a short `PATH` still finds them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Looked in after `PATH`.
pub const SYSTEM_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The path of `program`: itself when it names a path, else the first executable
/// file of that name in `path` (a `PATH` value) or [`SYSTEM_DIRS`]; the bare name when
/// none is found (so running it fails with the usual "not found").
pub fn find_in(program: &str, path: Option<&OsStr>) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let from_path = path
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .iter()
        .map(PathBuf::as_path)
        .chain(SYSTEM_DIRS.iter().map(Path::new))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| PathBuf::from(program))
}

/// [`find_in`] with this process's `PATH`.
pub fn find(program: &str) -> PathBuf {
    find_in(program, std::env::var_os("PATH").as_deref())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_dirs_are_searched_after_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tool = dir.path().join("mytool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        assert_eq!(find_in("mytool", Some(dir.path().as_os_str())), tool);
        // `sh` lives in /bin or /usr/bin; a PATH without them still finds it.
        let sh = find_in("sh", Some(OsStr::new("/nonexistent")));
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(
            find_in("no-such-tool-here", None),
            PathBuf::from("no-such-tool-here")
        );
        assert_eq!(find_in("/x/y", None), PathBuf::from("/x/y"));
        // Not executable: skipped.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").expect("write");
        assert_eq!(
            find_in("plain", Some(dir.path().as_os_str())),
            PathBuf::from("plain")
        );
    }
}

/// Most bytes a log file the daemon appends to grows to before it is rotated.
pub const MAX_LOG_BYTES: u64 = 16 << 20;

/// Rotates the log at `path` if it holds `max` bytes or more: it becomes `<path>.1`
/// (replacing an older one), and the next open starts a new file. Called before each
/// open for appending (the daemon's log when the CLI starts it, the storage log).
pub fn rotate_log(path: &Path, max: u64) -> std::io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() >= max => {
            let mut old = path.as_os_str().to_owned();
            old.push(".1");
            std::fs::rename(path, old)?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod log_tests {
    #[test]
    fn a_full_log_moves_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("daemon.log");
        assert!(!super::rotate_log(&log, 10).expect("absent"));
        std::fs::write(&log, "0123456789").expect("write");
        assert!(!super::rotate_log(&log, 11).expect("small"));
        assert!(super::rotate_log(&log, 10).expect("full"));
        assert!(!log.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("daemon.log.1")).expect("old"),
            "0123456789"
        );
    }
}
