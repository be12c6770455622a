//! The file-system API's operations on a sprite's files, done from the host (API.md,
//! "File system").
//!
//! Containment: every path is resolved by the kernel, never by string checks. A
//! descriptor of `/proc/<pid 1>/root` is the sprite's root as its own processes see it
//! (its mounts included), and `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from
//! it treats that directory as `/`: `..` stops there, absolute and relative symlinks
//! resolve inside it, a symlink swapped in during the call resolves inside it too, and
//! magic links (`/proc/N/root`) are refused. Operations on a name itself (delete,
//! rename, lstat) open its parent that way and use the `*at` call on the last
//! component, which has no slash. Walks of a tree open each child with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` from its parent's descriptor.
//!
//! Ownership is as seen inside the sprite: ids are translated through its user
//! namespace mapping. New files and directories take their parent directory's owner
//! (so files written into `/home/sprite` belong to `sprite`, files in `/etc` to root).
//!
//! Everything here blocks: callers run it on the blocking pool.

use crate::ids::SpriteKey;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat2, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use sprite_api::fs::{
    format_mode, glob_match, Affected, CopiedPair, EntryType, FsCode, FsCopied, FsEntry,
};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Most entries one list, delete, copy, chmod or chown touches.
pub const MAX_ENTRIES: usize = 200_000;
/// Deepest path (in components) a tree operation walks to.
pub const MAX_DEPTH: usize = 256;
/// The file the SDKs write to make a directory (`mkdir` is a write of `DIR/.keep`).
const MKDIR_MARKER: &str = ".keep";

/// A file-system error as the API reports it: errno code, the path inside the sprite,
/// and a message saying what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    pub code: FsCode,
    pub path: String,
    pub message: String,
}

impl FsError {
    pub fn new(code: FsCode, path: &str, message: impl Into<String>) -> Self {
        FsError {
            code,
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// An errno from an operation (`what`, e.g. "open") on `path`.
    pub fn errno(what: &str, path: &str, errno: Errno) -> Self {
        let (code, text) = match errno {
            Errno::ENOENT => (FsCode::NotFound, "no such file or directory"),
            Errno::EEXIST => (FsCode::Exists, "file exists"),
            Errno::ENOTDIR => (FsCode::NotADirectory, "not a directory"),
            Errno::EISDIR => (FsCode::IsADirectory, "is a directory"),
            Errno::ENOTEMPTY => (FsCode::NotEmpty, "directory not empty"),
            Errno::EACCES | Errno::EPERM => (FsCode::PermissionDenied, "permission denied"),
            Errno::EROFS => (
                FsCode::PermissionDenied,
                "permission denied (read-only file system)",
            ),
            Errno::EBUSY => (
                FsCode::PermissionDenied,
                "permission denied (in use as a mount point)",
            ),
            Errno::ETXTBSY => (
                FsCode::PermissionDenied,
                "permission denied (a running program)",
            ),
            Errno::ELOOP => (
                FsCode::Invalid,
                "too many levels of symbolic links, or a link that may not be followed",
            ),
            Errno::EXDEV => (FsCode::Invalid, "the path leaves the sprite's root"),
            Errno::ENAMETOOLONG => (FsCode::Invalid, "file name too long"),
            Errno::EINVAL => (FsCode::Invalid, "invalid argument"),
            Errno::ENOSPC => (FsCode::Io, "no space left on the sprite's disk"),
            Errno::EDQUOT => (FsCode::Io, "disk quota exceeded"),
            other => {
                return FsError::new(FsCode::Io, path, format!("{what} {path}: {}", other.desc()))
            }
        };
        FsError::new(code, path, format!("{what} {path}: {text}"))
    }

    fn io(what: &str, path: &str, error: std::io::Error) -> Self {
        match error.raw_os_error() {
            Some(code) => FsError::errno(what, path, Errno::from_raw(code)),
            None => FsError::new(FsCode::Io, path, format!("{what} {path}: {error}")),
        }
    }

    fn invalid(path: &str, message: impl Into<String>) -> Self {
        FsError::new(FsCode::Invalid, path, message)
    }
}

/// One line of a user namespace id map: `inside` maps to `outside`, `count` ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdRange {
    inside: u32,
    outside: u32,
    count: u32,
}

impl IdRange {
    fn parse(text: &str) -> Vec<IdRange> {
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace().map(|f| f.parse::<u32>());
                match (fields.next(), fields.next(), fields.next()) {
                    (Some(Ok(inside)), Some(Ok(outside)), Some(Ok(count))) => Some(IdRange {
                        inside,
                        outside,
                        count,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    fn to_host(ranges: &[IdRange], id: u32) -> Option<u32> {
        ranges
            .iter()
            .find(|r| id >= r.inside && id - r.inside < r.count)
            .map(|r| r.outside + (id - r.inside))
    }

    /// Whether the host id `id` is one of the sprite's.
    fn maps_host(ranges: &[IdRange], id: u32) -> bool {
        ranges
            .iter()
            .any(|r| id >= r.outside && id - r.outside < r.count)
    }

    /// An id of the host as the sprite sees it (`65534`, nobody, when unmapped).
    fn to_sprite(ranges: &[IdRange], id: u32) -> u32 {
        ranges
            .iter()
            .find(|r| id >= r.outside && id - r.outside < r.count)
            .map(|r| r.inside + (id - r.outside))
            .unwrap_or(65534)
    }
}

/// The kernel's overflow id (`nobody`), what an unmapped id shows as.
const OVERFLOW_ID: u32 = 65534;

/// A sprite's root, opened from the host, and its id maps.
#[derive(Debug)]
pub struct SpriteRoot {
    root: OwnedFd,
    uids: Vec<IdRange>,
    gids: Vec<IdRange>,
    init: sprite_sandbox::PinnedProcess,
    /// Mounts the API may change: the sprite's own file systems (its root, `/home`, its
    /// private tmpfs mounts), never bind mounts of host paths, kernel file systems or
    /// anything under `/.sprite` that the daemon mounts. Read on the first change.
    writable_mounts: std::sync::OnceLock<std::collections::HashSet<u64>>,
}

/// Kernel file systems the API neither reads nor changes: host state shows through
/// them (`/proc/kcore`, `/proc/sysrq-trigger`, `/sys`), whatever the sprite's view.
fn on_kernel_fs(fd: &OwnedFd) -> bool {
    use nix::sys::statfs::*;
    match fstatfs(fd) {
        Ok(stat) => [
            PROC_SUPER_MAGIC,
            SYSFS_MAGIC,
            DEVPTS_SUPER_MAGIC,
            CGROUP_SUPER_MAGIC,
            CGROUP2_SUPER_MAGIC,
            SECURITYFS_MAGIC,
            DEBUGFS_MAGIC,
            TRACEFS_MAGIC,
            BPF_FS_MAGIC,
            SELINUX_MAGIC,
            SMACK_MAGIC,
            NSFS_MAGIC,
            HUGETLBFS_MAGIC,
            RDTGROUP_SUPER_MAGIC,
        ]
        .contains(&stat.filesystem_type()),
        Err(_) => true,
    }
}

/// The id of the mount a descriptor is on (`mnt_id` of its fdinfo).
fn mount_id(fd: &OwnedFd) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
}

/// The sprite's own mounts, from its `mountinfo`: file systems of its own (root `/` of
/// the file system, a regular type), not under `/.sprite`.
fn own_mounts(init: &sprite_sandbox::PinnedProcess) -> std::collections::HashSet<u64> {
    // Empty (nothing writable) if PID 1 is gone: its pid may be another process's now.
    let text = init.read_entry("mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let (id, root, point) = (fields.first()?, fields.get(3)?, fields.get(4)?);
            let fstype = fields.get(dash + 1)?;
            let own = *root == "/"
                && ["overlay", "tmpfs", "ext4", "xfs", "btrfs"].contains(fstype)
                && !point.starts_with("/.sprite");
            own.then(|| id.parse().ok()).flatten()
        })
        .collect()
}

fn how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

/// `openat2`, retried while the kernel reports a rename race during `..` resolution.
fn open_at(dir: impl AsFd, path: &str, how: OpenHow) -> nix::Result<OwnedFd> {
    let mut attempts = 0;
    loop {
        match openat2(dir.as_fd(), path, how) {
            Err(Errno::EAGAIN | Errno::EINTR) if attempts < 16 => attempts += 1,
            other => return other,
        }
    }
}

fn kind_of(stat: &FileStat) -> EntryType {
    match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => EntryType::File,
        SFlag::S_IFDIR => EntryType::Directory,
        SFlag::S_IFLNK => EntryType::Symlink,
        _ => EntryType::Other,
    }
}

fn is_dir(stat: &FileStat) -> bool {
    kind_of(stat) == EntryType::Directory
}

fn rfc3339(seconds: i64, nanos: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, nanos.clamp(0, 999_999_999) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Splits a cleaned absolute path into its parent and last component.
fn split(path: &str) -> Option<(&str, &str)> {
    let (parent, name) = path.rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    Some((if parent.is_empty() { "/" } else { parent }, name))
}

fn proc_fd(fd: &impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

/// The names in a directory (not `.` or `..`), from a descriptor of it.
fn read_names(dir: &OwnedFd, path: &str) -> Result<Vec<String>, FsError> {
    let fd = open_at(
        dir,
        ".",
        how(OFlag::O_RDONLY | OFlag::O_DIRECTORY, ResolveFlag::empty()),
    )
    .map_err(|e| FsError::errno("open directory", path, e))?;
    let mut dir = Dir::from_fd(fd).map_err(|e| FsError::errno("read directory", path, e))?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| FsError::errno("read directory", path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The entries of a directory with their `lstat`, each counted against `budget` at
/// its path; entries removed meanwhile are left out.
fn children(
    dir: &OwnedFd,
    path: &str,
    what: &str,
    budget: &mut Budget,
) -> Result<Vec<(String, String, FileStat)>, FsError> {
    let mut found = Vec::new();
    for name in read_names(dir, path)? {
        let child = join(path, &name);
        budget.spend(&child)?;
        match fstatat(dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => found.push((name, child, stat)),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(FsError::errno(what, &child, e)),
        }
    }
    Ok(found)
}

/// Opens `name`, a child of `dir`, without following any symlink.
fn open_child(dir: &OwnedFd, name: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    open_at(
        dir,
        name,
        how(
            flags | OFlag::O_NOFOLLOW,
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
        ),
    )
}

/// A file being written (the file itself goes with it, from
/// [`SpriteRoot::start_write`]): a temporary file beside its target, renamed over it by
/// [`PendingWrite::finish`], removed if dropped unfinished. A target that is a symlink
/// is written through in place instead.
#[derive(Debug)]
pub struct PendingWrite {
    dir: OwnedFd,
    name: String,
    temp: Option<String>,
    path: String,
    mode: u32,
}

impl PendingWrite {
    /// Makes the written file durable and puts it in place (run it through
    /// [`SpriteRoot::run`]). Answers its size and mode.
    pub fn finish(self, file: File) -> Result<(String, u64, u32), FsError> {
        file.sync_all()
            .map_err(|e| FsError::io("write", &self.path, e))?;
        self.put_in_place(file)
    }

    fn put_in_place(mut self, file: File) -> Result<(String, u64, u32), FsError> {
        let size = file
            .metadata()
            .map_err(|e| FsError::io("write", &self.path, e))?
            .len();
        drop(file);
        if let Some(temp) = self.temp.take() {
            if let Err(error) = renameat(&self.dir, temp.as_str(), &self.dir, self.name.as_str()) {
                let _ = unlinkat(&self.dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
                return Err(FsError::errno("write", &self.path, error));
            }
        }
        Ok((self.path.clone(), size, self.mode))
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = unlinkat(&self.dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Tallies of a recursive operation, with the cap on its size.
struct Budget {
    left: usize,
    path: String,
}

impl Budget {
    fn new(path: &str) -> Self {
        Budget {
            left: MAX_ENTRIES,
            path: path.to_string(),
        }
    }

    /// Counts one more entry, at `path`: refuses trees too big or too deep (a deep
    /// enough tree would otherwise exhaust the walking thread's stack).
    fn spend(&mut self, path: &str) -> Result<(), FsError> {
        if path.matches('/').count() > MAX_DEPTH {
            return Err(FsError::invalid(
                path,
                format!(
                    "{path} is more than {MAX_DEPTH} directories deep: the API does not walk trees that deep"
                ),
            ));
        }
        if self.left == 0 {
            return Err(FsError::invalid(
                &self.path,
                format!(
                    "{} holds more than {MAX_ENTRIES} entries: work on a smaller part of the tree",
                    self.path
                ),
            ));
        }
        self.left -= 1;
        Ok(())
    }
}

impl SpriteRoot {
    /// Opens the root of the sprite whose PID 1 is `init` (pinned: a recycled pid is
    /// refused, never opened).
    pub fn open(init: sprite_sandbox::PinnedProcess) -> std::io::Result<SpriteRoot> {
        let root: OwnedFd = init.open("root")?.into();
        Ok(SpriteRoot {
            root,
            uids: IdRange::parse(&init.read_entry("uid_map")?),
            gids: IdRange::parse(&init.read_entry("gid_map")?),
            init,
            writable_mounts: std::sync::OnceLock::new(),
        })
    }

    fn writable_mounts(&self) -> &std::collections::HashSet<u64> {
        self.writable_mounts.get_or_init(|| {
            let mut mounts = own_mounts(&self.init);
            // The root and /home (the sprite's disk, bound in) are its own whatever
            // they are.
            mounts.extend(mount_id(&self.root));
            if let Ok(home) = open_at(
                &self.root,
                "home",
                how(
                    OFlag::O_PATH | OFlag::O_DIRECTORY,
                    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS,
                ),
            ) {
                mounts.extend(mount_id(&home));
            }
            mounts
        })
    }

    /// Whether `fd` is on one of the sprite's own file systems.
    fn is_writable(&self, fd: &OwnedFd) -> bool {
        mount_id(fd).is_some_and(|id| self.writable_mounts().contains(&id))
    }

    /// Runs `work` (on this thread) as the sprite's root is seen from the host, so that
    /// what it creates in the sprite's overlay root is accepted. Every operation that
    /// creates, renames or changes files runs through here.
    pub fn run<T>(&self, work: impl FnOnce(&SpriteRoot) -> T) -> T {
        // Never the host's root: a sprite without a mapped root (none is made so) gets
        // the overflow id, which can create nothing.
        let uid = IdRange::to_host(&self.uids, 0).unwrap_or(OVERFLOW_ID);
        let gid = IdRange::to_host(&self.gids, 0).unwrap_or(OVERFLOW_ID);
        sprite_sandbox::with_fs_ids(uid, gid, || work(self))
    }

    /// Opens a cleaned absolute path inside the root, following symlinks inside it.
    fn resolve(&self, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        let relative = path.trim_start_matches('/');
        let relative = if relative.is_empty() { "." } else { relative };
        open_at(
            &self.root,
            relative,
            how(
                flags,
                ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            ),
        )
    }

    /// Refuses to change what is not on one of the sprite's own file systems.
    fn check_writable(&self, fd: &OwnedFd, path: &str, what: &str) -> Result<(), FsError> {
        match self.is_writable(fd) {
            true => Ok(()),
            false => Err(FsError::new(
                FsCode::PermissionDenied,
                path,
                format!(
                    "{what} {path}: permission denied (it is on a mount the API does not change, like /proc, /dev or /.sprite/bin; only the sprite's own files)"
                ),
            )),
        }
    }

    /// Refuses to read from kernel file systems.
    fn check_readable(fd: &OwnedFd, path: &str, what: &str) -> Result<(), FsError> {
        if on_kernel_fs(fd) {
            return Err(FsError::new(
                FsCode::PermissionDenied,
                path,
                format!("{what} {path}: permission denied (/proc, /sys and other kernel file systems are not served by the API)"),
            ));
        }
        Ok(())
    }

    fn resolve_path(&self, path: &str, what: &str) -> Result<OwnedFd, FsError> {
        self.resolve(path, OFlag::O_PATH)
            .map_err(|e| FsError::errno(what, path, e))
    }

    /// The parent directory of `path` (opened) and its last component.
    fn parent<'a>(&self, path: &'a str, what: &str) -> Result<(OwnedFd, &'a str), FsError> {
        let (parent, name) = split(path).ok_or_else(|| {
            FsError::invalid(
                path,
                format!("{what} /: the sprite's root itself cannot be the target"),
            )
        })?;
        let dir = self
            .resolve(parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|e| FsError::errno(what, parent, e))?;
        Ok((dir, name))
    }

    fn lstat_in(dir: &OwnedFd, name: &str, path: &str, what: &str) -> Result<FileStat, FsError> {
        fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| FsError::errno(what, path, e))
    }

    fn entry(&self, path: &str, name: &str, stat: &FileStat, dir: &OwnedFd) -> FsEntry {
        let kind = kind_of(stat);
        let target = (kind == EntryType::Symlink)
            .then(|| nix::fcntl::readlinkat(dir, name).ok())
            .flatten()
            .map(|t| t.to_string_lossy().into_owned());
        FsEntry {
            name: name.to_string(),
            path: path.to_string(),
            kind,
            size: stat.st_size.max(0) as u64,
            mode: format_mode(stat.st_mode),
            mod_time: rfc3339(stat.st_mtime, stat.st_mtime_nsec),
            is_dir: kind == EntryType::Directory,
            target,
        }
    }

    /// The owner a new entry in `dir` gets: the directory's own.
    fn owner_of(dir: &OwnedFd, path: &str) -> Result<(u32, u32), FsError> {
        let stat = fstat(dir).map_err(|e| FsError::errno("stat", path, e))?;
        Ok((stat.st_uid, stat.st_gid))
    }

    fn give(fd: &impl AsFd, (uid, gid): (u32, u32), path: &str) -> Result<(), FsError> {
        fchownat(
            fd,
            "",
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| FsError::errno("set the owner of", path, e))
    }

    fn set_mode(fd: &impl AsFd, mode: u32, path: &str) -> Result<(), FsError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(proc_fd(fd), std::fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::io("change the mode of", path, e))
    }

    /// Opens a regular file for reading. Answers it and its size.
    pub fn open_read(&self, path: &str) -> Result<(File, u64), FsError> {
        let fd = self
            .resolve(path, OFlag::O_PATH)
            .map_err(|e| FsError::errno("open", path, e))?;
        let stat = fstat(&fd).map_err(|e| FsError::errno("stat", path, e))?;
        match kind_of(&stat) {
            EntryType::File => {}
            EntryType::Directory => {
                return Err(FsError::errno("read", path, Errno::EISDIR));
            }
            _ => {
                return Err(FsError::invalid(
                    path,
                    format!("read {path}: not a regular file (a device, socket or FIFO)"),
                ))
            }
        }
        Self::check_readable(&fd, path, "read")?;
        // Opened for reading only now that it is known to be a regular file.
        let file = File::open(proc_fd(&fd)).map_err(|e| FsError::io("open", path, e))?;
        Ok((file, stat.st_size.max(0) as u64))
    }

    /// Makes the directories of `path` that are missing, each owned like its parent.
    fn make_dirs(&self, path: &str) -> Result<(), FsError> {
        let mut done = String::from("/");
        for part in path.split('/').filter(|p| !p.is_empty()) {
            done = join(&done, part);
            self.make_dir(&done)?;
        }
        Ok(())
    }

    /// Makes `path` a directory, owned as its parent is, unless it is one; its parent
    /// must be (pathlib's `mkdir(parents=False, exist_ok=True)`).
    fn make_dir(&self, path: &str) -> Result<(), FsError> {
        match self.resolve(path, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(_) => return Ok(()),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(FsError::errno("make directory", path, e)),
        }
        // Only the root has no parent, and the root resolves.
        let (parent, part) =
            split(path).ok_or_else(|| FsError::errno("make directory", path, Errno::EEXIST))?;
        let dir = self.resolve_path(parent, "make directory")?;
        self.check_writable(&dir, path, "make directory")?;
        let owner = Self::owner_of(&dir, parent)?;
        match mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(FsError::errno("make directory", path, e)),
        }
        let made = open_child(&dir, part, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|e| FsError::errno("make directory", path, e))?;
        Self::give(&made, owner, path)
    }

    /// Starts writing `path`: makes its parents if asked, and opens a temporary file
    /// beside it with `mode` and the owner it will have. Answers the pending write and
    /// the file to write the body into.
    pub fn start_write(
        &self,
        path: &str,
        mode: Option<u32>,
        make_parents: bool,
    ) -> Result<(PendingWrite, File), FsError> {
        let (parent, name) =
            split(path).ok_or_else(|| FsError::errno("write", path, Errno::EISDIR))?;
        if make_parents {
            self.make_dirs(parent)?;
        } else if name == MKDIR_MARKER {
            // The SDKs' mkdir is a write of DIR/.keep: without parents, it makes DIR
            // when DIR's parent is there, as a mkdir does (docs/sdk-compat.md).
            self.make_dir(parent)?;
        }
        let (dir, name) = self.parent(path, "write")?;
        self.check_writable(&dir, path, "write")?;
        let existing = match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Some(stat),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(FsError::errno("write", path, e)),
        };
        let mut pending = PendingWrite {
            dir,
            name: name.to_string(),
            temp: None,
            path: path.to_string(),
            mode: 0,
        };
        match existing.as_ref().map(kind_of) {
            Some(EntryType::Directory) => return Err(FsError::errno("write", path, Errno::EISDIR)),
            Some(EntryType::Other) => {
                return Err(FsError::invalid(
                    path,
                    format!("write {path}: not a regular file (a device, socket or FIFO)"),
                ))
            }
            Some(EntryType::Symlink) => {
                let (file, mode) = self.open_through_link(path, mode)?;
                pending.mode = mode;
                return Ok((pending, file));
            }
            Some(EntryType::File) | None => {}
        }
        let owner = match &existing {
            Some(stat) => (stat.st_uid, stat.st_gid),
            None => Self::owner_of(&pending.dir, path)?,
        };
        pending.mode = mode
            .or(existing.as_ref().map(|s| s.st_mode & 0o7777))
            .unwrap_or(0o644);
        // Short whatever the target's name (names may be 255 bytes long).
        let temp = format!(".sprite-write-{}", uuid::Uuid::new_v4().simple());
        let file = File::from(
            open_child(
                &pending.dir,
                &temp,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            )
            .map_err(|e| FsError::errno("write", path, e))?,
        );
        // From here on, dropping `pending` removes the temporary file.
        pending.temp = Some(temp);
        Self::give(&file, owner, path)?;
        Self::set_mode(&file, pending.mode, path)?;
        Ok((pending, file))
    }

    /// Opens the file a symlink at `path` points to (inside the root), in place and
    /// truncated: only an existing regular file on the sprite's own disk. Answers it and
    /// the mode it now has.
    fn open_through_link(&self, path: &str, mode: Option<u32>) -> Result<(File, u32), FsError> {
        let target = self
            .resolve(path, OFlag::O_PATH)
            .map_err(|e| FsError::errno("write", path, e))?;
        let stat = fstat(&target).map_err(|e| FsError::errno("write", path, e))?;
        if kind_of(&stat) != EntryType::File {
            return Err(FsError::invalid(
                path,
                format!("write {path}: the link does not point to a regular file"),
            ));
        }
        self.check_writable(&target, path, "write")?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(proc_fd(&target))
            .map_err(|e| FsError::io("write", path, e))?;
        file.set_len(0).map_err(|e| FsError::io("write", path, e))?;
        let mode = mode.unwrap_or(stat.st_mode & 0o7777);
        Self::set_mode(&file, mode, path)?;
        Ok((file, mode))
    }

    /// Writes a small file the daemon keeps in the sprite (its resolver address, its
    /// policy): whole, atomically, not synced.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), FsError> {
        use std::io::Write;
        self.run(|root| {
            let (pending, mut file) = root.start_write(path, Some(mode), true)?;
            file.write_all(data)
                .map_err(|e| FsError::io("write", path, e))?;
            pending.put_in_place(file).map(|_| ())
        })
    }

    /// `GET fs/list`: a directory's entries (recursively, if asked; names matching
    /// `pattern` only, if given), or the one entry of a file. With `include_self`, a
    /// directory's own entry (no name, its path, what it resolves to) comes first, so a
    /// client that reads a stat from the first entry reads the directory's.
    pub fn list(
        &self,
        path: &str,
        recursive: bool,
        pattern: Option<&str>,
        include_self: bool,
    ) -> Result<Vec<FsEntry>, FsError> {
        let target = self.resolve_path(path, "list")?;
        let stat = fstat(&target).map_err(|e| FsError::errno("list", path, e))?;
        if !is_dir(&stat) {
            let (dir, name) = self.parent(path, "list")?;
            let stat = Self::lstat_in(&dir, name, path, "list")?;
            return Ok(vec![self.entry(path, name, &stat, &dir)]);
        }
        let mut entries = Vec::new();
        if include_self {
            entries.push(self.entry(path, "", &stat, &target));
        }
        let mut budget = Budget::new(path);
        self.list_dir(&target, path, recursive, pattern, &mut entries, &mut budget)?;
        Ok(entries)
    }

    fn list_dir(
        &self,
        dir: &OwnedFd,
        path: &str,
        recursive: bool,
        pattern: Option<&str>,
        entries: &mut Vec<FsEntry>,
        budget: &mut Budget,
    ) -> Result<(), FsError> {
        for (name, child, stat) in children(dir, path, "list", budget)? {
            if pattern.is_none_or(|p| glob_match(p, &name)) {
                entries.push(self.entry(&child, &name, &stat, dir));
            }
            if recursive && is_dir(&stat) {
                match open_child(dir, &name, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                    Ok(sub) => self.list_dir(&sub, &child, recursive, pattern, entries, budget)?,
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(FsError::errno("list", &child, e)),
                }
            }
        }
        Ok(())
    }

    /// `DELETE fs/delete`: removes a file, a symlink (not what it points to), an empty
    /// directory, or with `recursive` a whole tree. Answers the removed paths.
    pub fn delete(&self, path: &str, recursive: bool) -> Result<Vec<String>, FsError> {
        let (dir, name) = self.parent(path, "delete")?;
        self.check_writable(&dir, path, "delete")?;
        let stat = Self::lstat_in(&dir, name, path, "delete")?;
        let mut deleted = Vec::new();
        if is_dir(&stat) {
            if recursive {
                let sub = open_child(&dir, name, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|e| FsError::errno("delete", path, e))?;
                self.check_writable(&sub, path, "delete")?;
                let mut budget = Budget::new(path);
                self.empty_dir(&sub, path, &mut deleted, &mut budget)?;
            }
            unlinkat(&dir, name, UnlinkatFlags::RemoveDir)
                .map_err(|e| FsError::errno("delete", path, e))?;
        } else {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| FsError::errno("delete", path, e))?;
        }
        deleted.push(path.to_string());
        Ok(deleted)
    }

    fn empty_dir(
        &self,
        dir: &OwnedFd,
        path: &str,
        deleted: &mut Vec<String>,
        budget: &mut Budget,
    ) -> Result<(), FsError> {
        for (name, child, stat) in children(dir, path, "delete", budget)? {
            if is_dir(&stat) {
                let sub = open_child(dir, &name, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|e| FsError::errno("delete", &child, e))?;
                // Never into a mount (a bind of a host path, /proc...): refused whole.
                self.check_writable(&sub, &child, "delete")?;
                self.empty_dir(&sub, &child, deleted, budget)?;
                unlinkat(dir, name.as_str(), UnlinkatFlags::RemoveDir)
            } else {
                unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir)
            }
            .map_err(|e| FsError::errno("delete", &child, e))?;
            deleted.push(child);
        }
        Ok(())
    }

    /// `POST fs/rename`: moves `source` to `dest`, replacing a file there. Across
    /// mounts (e.g. into `/home`) it copies and then deletes.
    pub fn rename(&self, source: &str, dest: &str) -> Result<(), FsError> {
        if dest == source {
            return Ok(());
        }
        if dest.starts_with(&format!("{source}/")) {
            return Err(FsError::invalid(
                dest,
                format!("rename {source} to {dest}: a directory cannot move into itself"),
            ));
        }
        let (from_dir, from_name) = self.parent(source, "rename")?;
        let (to_dir, to_name) = self.parent(dest, "rename")?;
        self.check_writable(&from_dir, source, "rename")?;
        self.check_writable(&to_dir, dest, "rename")?;
        match renameat(&from_dir, from_name, &to_dir, to_name) {
            Ok(()) => Ok(()),
            Err(Errno::EXDEV) => {
                // Like rename(2): a directory does not merge into an existing one.
                let source_stat = Self::lstat_in(&from_dir, from_name, source, "rename")?;
                if let Ok(existing) = fstatat(&to_dir, to_name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    if is_dir(&existing) || is_dir(&source_stat) {
                        return Err(FsError::errno("rename", dest, Errno::EEXIST));
                    }
                }
                self.copy(source, dest, true, true)?;
                self.delete(source, true).map(|_| ())
            }
            Err(e) => Err(FsError::errno("rename", source, e)),
        }
    }

    /// `POST fs/copy`: copies a file, a symlink (as a link), or with `recursive` a
    /// directory tree, to `dest`. Modes are kept; with `preserve` owners and times too,
    /// else new entries take the owner of the directory they land in.
    pub fn copy(
        &self,
        source: &str,
        dest: &str,
        recursive: bool,
        preserve: bool,
    ) -> Result<FsCopied, FsError> {
        if dest == source || dest.starts_with(&format!("{source}/")) {
            return Err(FsError::invalid(
                dest,
                format!("copy {source} to {dest}: the destination is inside the source"),
            ));
        }
        let (from_dir, from_name) = self.parent(source, "copy")?;
        let stat = Self::lstat_in(&from_dir, from_name, source, "copy")?;
        if is_dir(&stat) && !recursive {
            return Err(FsError::errno("copy", source, Errno::EISDIR));
        }
        let (to_dir, to_name) = self.parent(dest, "copy")?;
        self.check_writable(&to_dir, dest, "copy")?;
        let mut report = FsCopied {
            copied: Vec::new(),
            count: 0,
            total_bytes: 0,
        };
        let mut budget = Budget::new(source);
        let mut copier = Copier {
            preserve,
            uids: &self.uids,
            gids: &self.gids,
            report: &mut report,
            budget: &mut budget,
            made: std::collections::HashSet::new(),
        };
        copier.copy_entry(&from_dir, from_name, source, &to_dir, to_name, dest)?;
        report.count = report.copied.len();
        Ok(report)
    }

    /// `POST fs/chmod`: sets permission bits on a path (following a symlink inside the
    /// root), and with `recursive` on everything beneath it (links are skipped).
    pub fn chmod(&self, path: &str, mode: u32, recursive: bool) -> Result<Vec<Affected>, FsError> {
        self.change_tree(path, "chmod", recursive, &mut |fd, p| {
            Self::set_mode(fd, mode, p)?;
            Ok(Affected {
                path: p.to_string(),
                mode: Some(format_mode(mode)),
                uid: None,
                gid: None,
            })
        })
    }

    /// `POST fs/chown`: sets owner and group as seen inside the sprite (absent ones are
    /// kept), and with `recursive` on everything beneath.
    pub fn chown(
        &self,
        path: &str,
        uid: Option<u32>,
        gid: Option<u32>,
        recursive: bool,
    ) -> Result<Vec<Affected>, FsError> {
        let host = |ranges: &[IdRange], id: Option<u32>, kind: &str| {
            id.map(|id| {
                IdRange::to_host(ranges, id).ok_or_else(|| {
                    FsError::invalid(
                        path,
                        format!("{kind} {id} does not exist in the sprite (its ids are 0-65535)"),
                    )
                })
            })
            .transpose()
        };
        let host_uid = host(&self.uids, uid, "uid")?.map(Uid::from_raw);
        let host_gid = host(&self.gids, gid, "gid")?.map(Gid::from_raw);
        self.change_tree(path, "chown", recursive, &mut |fd, p| {
            fchownat(fd, "", host_uid, host_gid, AtFlags::AT_EMPTY_PATH)
                .map_err(|e| FsError::errno("chown", p, e))?;
            let stat = fstat(fd).map_err(|e| FsError::errno("chown", p, e))?;
            Ok(Affected {
                path: p.to_string(),
                mode: None,
                uid: Some(IdRange::to_sprite(&self.uids, stat.st_uid)),
                gid: Some(IdRange::to_sprite(&self.gids, stat.st_gid)),
            })
        })
    }

    /// Runs `change` on `path` (see [`Self::change_target`]) and, with `recursive`, on
    /// what [`Self::apply`] walks to; answers what was changed.
    fn change_tree(
        &self,
        path: &str,
        what: &str,
        recursive: bool,
        change: &mut dyn FnMut(&OwnedFd, &str) -> Result<Affected, FsError>,
    ) -> Result<Vec<Affected>, FsError> {
        let (target, stat) = self.change_target(path, what)?;
        let mut affected = Vec::new();
        let mut budget = Budget::new(path);
        self.apply(
            &target,
            &stat,
            path,
            recursive,
            &mut budget,
            &mut |fd, p| {
                affected.push(change(fd, p)?);
                Ok(())
            },
        )?;
        Ok(affected)
    }

    /// What chmod or chown changes: `path` (following a symlink inside the root), which
    /// must be a file or directory on the sprite's own disk.
    fn change_target(&self, path: &str, what: &str) -> Result<(OwnedFd, FileStat), FsError> {
        let target = self.resolve_path(path, what)?;
        let stat = fstat(&target).map_err(|e| FsError::errno(what, path, e))?;
        if !matches!(kind_of(&stat), EntryType::File | EntryType::Directory) {
            return Err(FsError::invalid(
                path,
                format!("{what} {path}: only files and directories can be changed (not devices, sockets or FIFOs)"),
            ));
        }
        self.check_writable(&target, path, what)?;
        Ok((target, stat))
    }

    /// Runs `action` on `fd` (already checked), and with `recursive` on every file and
    /// directory beneath it; links, special files and other mounts are left alone.
    fn apply(
        &self,
        fd: &OwnedFd,
        stat: &FileStat,
        path: &str,
        recursive: bool,
        budget: &mut Budget,
        action: &mut dyn FnMut(&OwnedFd, &str) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        budget.spend(path)?;
        action(fd, path)?;
        if !recursive || !is_dir(stat) {
            return Ok(());
        }
        for name in read_names(fd, path)? {
            let child = join(path, &name);
            let sub = match open_child(fd, &name, OFlag::O_PATH) {
                Ok(sub) => sub,
                // a symlink (not followed, not changed) or removed meanwhile
                Err(Errno::ELOOP | Errno::ENOENT) => continue,
                Err(e) => return Err(FsError::errno("open", &child, e)),
            };
            let Ok(sub_stat) = fstat(&sub) else { continue };
            let changeable = matches!(kind_of(&sub_stat), EntryType::File | EntryType::Directory)
                && self.is_writable(&sub);
            if changeable {
                self.apply(&sub, &sub_stat, &child, recursive, budget, action)?;
            }
        }
        Ok(())
    }

    /// An `O_PATH` descriptor of `path` (following symlinks inside the root) and
    /// whether it is a directory: what `fs/watch` adds a watch on.
    pub fn open_watch(&self, path: &str) -> Result<(OwnedFd, bool), FsError> {
        let fd = self.resolve_path(path, "watch")?;
        Self::check_readable(&fd, path, "watch")?;
        let stat = fstat(&fd).map_err(|e| FsError::errno("watch", path, e))?;
        Ok((fd, is_dir(&stat)))
    }

    /// The subdirectories of a watched directory (descriptor), for recursive watches.
    pub fn subdirectories(
        &self,
        dir: &OwnedFd,
        path: &str,
    ) -> Result<Vec<(OwnedFd, String)>, FsError> {
        let mut found = Vec::new();
        for name in read_names(dir, path)? {
            if let Ok(sub) = open_child(dir, &name, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                found.push((sub, join(path, &name)));
            }
        }
        Ok(found)
    }

    /// The path of a descriptor, for `inotify_add_watch` (which follows it).
    pub fn fd_path(fd: &OwnedFd) -> String {
        proc_fd(fd)
    }
}

struct Copier<'a> {
    preserve: bool,
    /// The sprite's uid and gid maps: only owners inside them are preserved.
    uids: &'a [IdRange],
    gids: &'a [IdRange],
    report: &'a mut FsCopied,
    budget: &'a mut Budget,
    /// Directories this copy made (device, inode): never copied again, so a copy whose
    /// destination lies inside its source (through a symlink) does not feed on itself.
    made: std::collections::HashSet<(u64, u64)>,
}

impl Copier<'_> {
    #[allow(clippy::too_many_arguments)]
    fn copy_entry(
        &mut self,
        from_dir: &OwnedFd,
        from_name: &str,
        from_path: &str,
        to_dir: &OwnedFd,
        to_name: &str,
        to_path: &str,
    ) -> Result<(), FsError> {
        self.budget.spend(to_path)?;
        let stat = SpriteRoot::lstat_in(from_dir, from_name, from_path, "copy")?;
        if is_dir(&stat) && self.made.contains(&(stat.st_dev, stat.st_ino)) {
            return Ok(());
        }
        // A file the sprite does not own (an owner outside its id maps, such as the
        // host's root) never passes its owner on: the copy is the sprite's.
        let sprite_owned = IdRange::maps_host(self.uids, stat.st_uid)
            && IdRange::maps_host(self.gids, stat.st_gid);
        let owner = if self.preserve && sprite_owned {
            (stat.st_uid, stat.st_gid)
        } else {
            SpriteRoot::owner_of(to_dir, to_path)?
        };
        let mode = stat.st_mode & 0o7777;
        match kind_of(&stat) {
            EntryType::Directory => {
                match mkdirat(to_dir, to_name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        let existing = SpriteRoot::lstat_in(to_dir, to_name, to_path, "copy")?;
                        if !is_dir(&existing) {
                            return Err(FsError::errno("copy", to_path, Errno::ENOTDIR));
                        }
                    }
                    Err(e) => return Err(FsError::errno("copy", to_path, e)),
                }
                let from = open_child(from_dir, from_name, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|e| FsError::errno("copy", from_path, e))?;
                let to = open_child(to_dir, to_name, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|e| FsError::errno("copy", to_path, e))?;
                // Owned before its entries are copied: they take its owner.
                SpriteRoot::give(&to, owner, to_path)?;
                if let Ok(made) = fstat(&to) {
                    self.made.insert((made.st_dev, made.st_ino));
                }
                for name in read_names(&from, from_path)? {
                    self.copy_entry(
                        &from,
                        &name,
                        &join(from_path, &name),
                        &to,
                        &name,
                        &join(to_path, &name),
                    )?;
                }
                SpriteRoot::set_mode(&to, mode, to_path)?;
                if self.preserve {
                    copy_times(&to, &stat, to_path)?;
                }
            }
            EntryType::Symlink => {
                let target = nix::fcntl::readlinkat(from_dir, from_name)
                    .map_err(|e| FsError::errno("copy", from_path, e))?;
                match nix::unistd::symlinkat(target.as_os_str(), to_dir, to_name) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        unlinkat(to_dir, to_name, UnlinkatFlags::NoRemoveDir)
                            .map_err(|e| FsError::errno("copy", to_path, e))?;
                        nix::unistd::symlinkat(target.as_os_str(), to_dir, to_name)
                            .map_err(|e| FsError::errno("copy", to_path, e))?;
                    }
                    Err(e) => return Err(FsError::errno("copy", to_path, e)),
                }
                let link = open_child(to_dir, to_name, OFlag::O_PATH)
                    .or_else(|_| {
                        open_at(
                            to_dir,
                            to_name,
                            how(
                                OFlag::O_PATH | OFlag::O_NOFOLLOW,
                                ResolveFlag::RESOLVE_BENEATH,
                            ),
                        )
                    })
                    .map_err(|e| FsError::errno("copy", to_path, e))?;
                SpriteRoot::give(&link, owner, to_path)?;
                self.report.copied.push(CopiedPair {
                    source: from_path.to_string(),
                    dest: to_path.to_string(),
                });
            }
            EntryType::File => {
                let from = open_child(from_dir, from_name, OFlag::O_RDONLY | OFlag::O_NONBLOCK)
                    .map_err(|e| FsError::errno("copy", from_path, e))?;
                SpriteRoot::check_readable(&from, from_path, "copy")?;
                if let Ok(existing) = fstatat(to_dir, to_name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    if is_dir(&existing) {
                        return Err(FsError::errno("copy", to_path, Errno::EISDIR));
                    }
                    if kind_of(&existing) != EntryType::File {
                        return Err(FsError::invalid(
                            to_path,
                            format!(
                                "copy to {to_path}: something other than a regular file is there"
                            ),
                        ));
                    }
                }
                let to = open_child(
                    to_dir,
                    to_name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NONBLOCK,
                )
                .map_err(|e| FsError::errno("copy", to_path, e))?;
                let mut reader = File::from(from);
                let mut writer = File::from(to);
                let bytes = std::io::copy(&mut reader, &mut writer)
                    .map_err(|e| FsError::io("copy", to_path, e))?;
                let to: OwnedFd = writer.into();
                SpriteRoot::give(&to, owner, to_path)?;
                SpriteRoot::set_mode(&to, mode, to_path)?;
                if self.preserve {
                    copy_times(&to, &stat, to_path)?;
                }
                self.report.total_bytes += bytes;
                self.report.copied.push(CopiedPair {
                    source: from_path.to_string(),
                    dest: to_path.to_string(),
                });
            }
            EntryType::Other => {
                return Err(FsError::invalid(
                    from_path,
                    format!("copy {from_path}: only files, directories and symlinks can be copied"),
                ))
            }
        }
        Ok(())
    }
}

fn copy_times(fd: &OwnedFd, stat: &FileStat, path: &str) -> Result<(), FsError> {
    use nix::sys::time::TimeSpec;
    let atime = TimeSpec::new(stat.st_atime, stat.st_atime_nsec);
    let mtime = TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        proc_fd(fd).as_str(),
        &atime,
        &mtime,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .map_err(|e| FsError::errno("set the times of", path, e))
}

/// Most directories one `fs/watch` connection watches.
pub const MAX_WATCHES: usize = 8192;

struct InotifyFd(nix::sys::inotify::Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The inotify watches of one `fs/watch` connection, reporting paths as the sprite
/// sees them.
pub struct Watcher {
    root: std::sync::Arc<SpriteRoot>,
    inotify: tokio::io::unix::AsyncFd<InotifyFd>,
    /// What each watch is on: its path inside the sprite, whether it is a directory,
    /// and whether directories made in it get watches too.
    watched: std::collections::HashMap<nix::sys::inotify::WatchDescriptor, (String, bool, bool)>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("watches", &self.watched.len())
            .finish()
    }
}

fn watch_mask() -> nix::sys::inotify::AddWatchFlags {
    use nix::sys::inotify::AddWatchFlags as F;
    F::IN_CREATE
        | F::IN_MODIFY
        | F::IN_ATTRIB
        | F::IN_DELETE
        | F::IN_DELETE_SELF
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_MOVE_SELF
}

impl Watcher {
    pub fn new(root: std::sync::Arc<SpriteRoot>) -> Result<Watcher, FsError> {
        use nix::sys::inotify::{InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| FsError::errno("watch", "/", e))?;
        // `new` is deprecated for descriptors the AsyncFd does not own; this one owns
        // the inotify descriptor, which lives exactly as long as its registration (the
        // safe alternative, `register`, is `unsafe` and this crate forbids that).
        #[allow(deprecated)]
        let inotify = tokio::io::unix::AsyncFd::new(InotifyFd(inotify))
            .map_err(|e| FsError::io("watch", "/", e))?;
        Ok(Watcher {
            root,
            inotify,
            watched: std::collections::HashMap::new(),
        })
    }

    /// How many watches are set.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Whether no watch is set.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Watches `path` (a file, or a directory's entries; with `recursive` its whole
    /// tree, directories made later included).
    pub fn add(&mut self, path: &str, recursive: bool) -> Result<(), FsError> {
        let (fd, dir) = self.root.open_watch(path)?;
        self.add_fd(&fd, path, dir, recursive)
    }

    fn add_fd(
        &mut self,
        fd: &OwnedFd,
        path: &str,
        dir: bool,
        recursive: bool,
    ) -> Result<(), FsError> {
        if self.watched.len() >= MAX_WATCHES {
            return Err(FsError::invalid(
                path,
                format!("watch {path}: more than {MAX_WATCHES} directories; watch a smaller tree"),
            ));
        }
        let wd = self
            .inotify
            .get_ref()
            .0
            .add_watch(proc_fd(fd).as_str(), watch_mask())
            .map_err(|e| FsError::errno("watch", path, e))?;
        self.watched
            .insert(wd, (path.to_string(), dir, recursive && dir));
        if recursive && dir {
            for (sub, sub_path) in self.root.subdirectories(fd, path)? {
                self.add_fd(&sub, &sub_path, true, true)?;
            }
        }
        Ok(())
    }

    /// Waits for changes and answers them as API events.
    pub async fn next(&mut self) -> Result<Vec<sprite_api::fs::WatchEvent>, FsError> {
        use nix::sys::inotify::AddWatchFlags as F;
        loop {
            let mut ready = self
                .inotify
                .readable()
                .await
                .map_err(|e| FsError::io("watch", "/", e))?;
            let events = match ready.get_inner().0.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => {
                    ready.clear_ready();
                    continue;
                }
                Err(e) => return Err(FsError::errno("watch", "/", e)),
            };
            drop(ready);
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut out: Vec<sprite_api::fs::WatchEvent> = Vec::new();
            let mut moved_from: std::collections::HashMap<u32, (String, bool)> =
                std::collections::HashMap::new();
            use sprite_api::fs::WatchChange;
            let event = |change: WatchChange, path: String, is_dir: bool, old: Option<String>| {
                sprite_api::fs::WatchEvent {
                    kind: sprite_api::fs::WatchEventKind::Event,
                    event: change,
                    path,
                    is_dir,
                    timestamp: now.clone(),
                    old_path: old,
                }
            };
            for raw in events {
                let Some((base, base_is_dir, recursive)) = self.watched.get(&raw.wd).cloned()
                else {
                    continue;
                };
                if raw.mask.contains(F::IN_IGNORED) {
                    self.watched.remove(&raw.wd);
                    continue;
                }
                let is_dir = raw.mask.contains(F::IN_ISDIR);
                let path = match &raw.name {
                    Some(name) => join(&base, &name.to_string_lossy()),
                    None => base.clone(),
                };
                if raw.mask.contains(F::IN_CREATE) {
                    if is_dir && recursive {
                        // Watch the new directory (and what was made in it meanwhile).
                        if let Ok((fd, true)) = self.root.open_watch(&path) {
                            let _ = self.add_fd(&fd, &path, true, true);
                        }
                    }
                    out.push(event(WatchChange::Create, path, is_dir, None));
                } else if raw.mask.contains(F::IN_MODIFY) {
                    let repeat = out
                        .last()
                        .is_some_and(|last| last.event == WatchChange::Write && last.path == path);
                    if !repeat {
                        out.push(event(WatchChange::Write, path, is_dir, None));
                    }
                } else if raw.mask.contains(F::IN_ATTRIB) {
                    out.push(event(WatchChange::Chmod, path, is_dir, None));
                } else if raw.mask.contains(F::IN_DELETE) {
                    out.push(event(WatchChange::Remove, path, is_dir, None));
                } else if raw.mask.contains(F::IN_DELETE_SELF) && raw.name.is_none() {
                    // Reported by the parent's watch when the parent is watched too.
                    if !self
                        .watched
                        .values()
                        .any(|(p, _, _)| split(&base).is_some_and(|(parent, _)| parent == p))
                    {
                        out.push(event(WatchChange::Remove, path, base_is_dir, None));
                    }
                } else if raw.mask.contains(F::IN_MOVED_FROM) {
                    moved_from.insert(raw.cookie, (path, is_dir));
                } else if raw.mask.contains(F::IN_MOVED_TO) {
                    match moved_from.remove(&raw.cookie) {
                        Some((old, _)) => {
                            out.push(event(WatchChange::Rename, path, is_dir, Some(old)))
                        }
                        None => {
                            if is_dir && recursive {
                                if let Ok((fd, true)) = self.root.open_watch(&path) {
                                    let _ = self.add_fd(&fd, &path, true, true);
                                }
                            }
                            out.push(event(WatchChange::Create, path, is_dir, None))
                        }
                    }
                }
            }
            // Moved out of the watched paths: a rename whose new name is not seen.
            for (_, (old, is_dir)) in moved_from {
                out.push(event(WatchChange::Rename, old, is_dir, None));
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

impl crate::SpriteManager {
    /// The root of a sprite for the file-system API, waking the sprite first. The guard
    /// keeps it awake while the caller works (an open descriptor would also keep its
    /// disk from being released by a cold sleep).
    pub async fn fs_root(
        &self,
        key: &SpriteKey,
    ) -> Result<(SpriteRoot, crate::activity::ActivityGuard), crate::CoreError> {
        let name = key.name.as_str();
        let record = self.record(key)?;
        let guard = self
            .lifecycle
            .wake_record(&record, crate::activity::Reason::Api)
            .await?;
        let root = SpriteRoot::open(self.lifecycle.pinned_init(&record)?).map_err(|source| {
            crate::CoreError::Io {
                what: "open the root of",
                path: format!("sprite {name}").into(),
                source,
            }
        })?;
        Ok((root, guard))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_translate_both_ways() {
        let map = [IdRange {
            inside: 0,
            outside: 100_000,
            count: 65_536,
        }];
        assert_eq!(IdRange::to_host(&map, 1000), Some(101_000));
        assert_eq!(IdRange::to_host(&map, 70_000), None);
        assert_eq!(IdRange::to_sprite(&map, 101_000), 1000);
        assert_eq!(IdRange::to_sprite(&map, 0), 65534);
    }

    #[test]
    fn paths_split_into_parent_and_name() {
        assert_eq!(split("/a/b"), Some(("/a", "b")));
        assert_eq!(split("/a"), Some(("/", "a")));
        assert_eq!(split("/"), None);
    }

    #[test]
    fn errnos_become_api_codes() {
        let e = FsError::errno("open", "/x", Errno::ENOENT);
        assert_eq!(e.code, FsCode::NotFound);
        assert_eq!(e.message, "open /x: no such file or directory");
        assert_eq!(
            FsError::errno("rm", "/", Errno::EBUSY).code,
            FsCode::PermissionDenied
        );
        assert_eq!(FsError::errno("x", "/", Errno::ENOSPC).code, FsCode::Io);
    }
}
