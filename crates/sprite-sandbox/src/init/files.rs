//! How PID 1 touches files the sprite controls (`/etc/passwd`, `/etc/hosts`, service
//! definitions and logs): the sprite's root can put a FIFO, a device or a huge file at
//! any of those paths, and PID 1 must not hang on it nor read it all. So every such file
//! is opened non-blocking, used only if it is a regular file, and read up to a cap.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads a regular file of the sprite, at most `max` bytes; an error for anything else
/// (a FIFO, a device, a directory) or a larger file.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let file = regular(file, path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

/// [`read_capped`] as text; empty when the file is missing, unusable or not UTF-8.
pub fn read_text_or_empty(path: &Path, max: u64) -> String {
    read_capped(path, max)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

/// Opens a regular file of the sprite for appending, creating it if missing; refuses
/// anything that is not a regular file (writing to a FIFO or a terminal could block).
pub fn open_append(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(path)?;
    regular(file, path)
}

/// Replaces the contents of a regular file of the sprite (made if missing), never
/// through a link and never blocking on a FIFO.
pub fn overwrite(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(path)?;
    let mut file = regular(file, path)?;
    file.set_len(0)?;
    file.write_all(contents)
}

fn regular(file: File, path: &Path) -> std::io::Result<File> {
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    // Back to blocking I/O on a regular file (it never blocks for long).
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_big_files_are_refused_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644))
            .expect("mkfifo");
        // Would block forever with a plain open (no writer).
        assert!(read_capped(&fifo, 100).is_err());
        assert!(open_append(&fifo).is_err());
        assert!(read_capped(Path::new("/dev/zero"), 100).is_err());
        assert!(read_capped(dir.path(), 100).is_err());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 101]).expect("write");
        assert!(read_capped(&big, 100).is_err());
        assert_eq!(read_capped(&big, 101).expect("read").len(), 101);
        let log = dir.path().join("log");
        use std::io::Write;
        open_append(&log)
            .expect("create")
            .write_all(b"a")
            .expect("write");
        open_append(&log)
            .expect("append")
            .write_all(b"b")
            .expect("write");
        assert_eq!(read_text_or_empty(&log, 10), "ab");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&log, &link).expect("symlink");
        assert!(
            open_append(&link).is_err(),
            "logs are never written through a link"
        );
        assert!(overwrite(&link, b"x").is_err());
        assert!(overwrite(&fifo, b"x").is_err());
        overwrite(&log, b"new").expect("overwrite");
        assert_eq!(read_text_or_empty(&log, 10), "new");
    }
}
