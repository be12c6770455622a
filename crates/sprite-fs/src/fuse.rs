//! FUSE exposure: a flat directory with one file per attached volume. The daemon loops
//! each sprite's volume file and mounts it as ext4, so only block I/O crosses FUSE;
//! every POSIX corner case is the kernel's ext4.
//!
//! Files are opened with direct I/O (no FUSE page cache: the ext4 above the loop device
//! already caches). Requests are served by dedicated threads (`n_threads`), never by a
//! sprite's own processes, and block on the engine through a tokio runtime handle.

use crate::engine::Volume;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Table {
    by_name: BTreeMap<String, u64>,
    by_ino: BTreeMap<u64, Arc<Volume>>,
    next_ino: u64,
}

/// The volumes visible in the FUSE directory; shared with the daemon, which attaches
/// and detaches volumes while it is mounted.
#[derive(Debug, Clone, Default)]
pub struct VolumeTable {
    inner: Arc<RwLock<Table>>,
}

impl VolumeTable {
    pub fn attach(&self, volume: Arc<Volume>) {
        let mut table = self.inner.write();
        if table.next_ino < 2 {
            table.next_ino = 2;
        }
        // A volume keeps its inode across detach and attach, so the kernel's cached
        // entry for its name stays valid.
        let ino = match table.by_name.get(&volume.id) {
            Some(ino) => *ino,
            None => {
                let ino = table.next_ino;
                table.next_ino += 1;
                table.by_name.insert(volume.id.clone(), ino);
                ino
            }
        };
        table.by_ino.insert(ino, volume);
    }

    pub fn detach(&self, id: &str) -> Option<Arc<Volume>> {
        let mut table = self.inner.write();
        let ino = *table.by_name.get(id)?;
        table.by_ino.remove(&ino)
    }

    fn get(&self, ino: u64) -> Option<Arc<Volume>> {
        self.inner.read().by_ino.get(&ino).cloned()
    }

    fn lookup(&self, name: &str) -> Option<(u64, Arc<Volume>)> {
        // (A detached volume keeps its name's inode but has no entry.)
        let table = self.inner.read();
        let ino = *table.by_name.get(name)?;
        Some((ino, table.by_ino.get(&ino)?.clone()))
    }

    fn entries(&self) -> Vec<(u64, String)> {
        let table = self.inner.read();
        table
            .by_name
            .iter()
            .map(|(name, ino)| (*ino, name.clone()))
            .collect()
    }
}

/// The FUSE filesystem.
#[derive(Debug)]
pub struct VolumeFs {
    table: VolumeTable,
    runtime: tokio::runtime::Handle,
    started: SystemTime,
}

fn attr(ino: u64, kind: FileType, size: u64, perm: u16, time: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl VolumeFs {
    pub fn new(table: VolumeTable, runtime: tokio::runtime::Handle) -> Self {
        VolumeFs {
            table,
            runtime,
            started: SystemTime::now(),
        }
    }

    fn attr_of(&self, ino: u64) -> Option<FileAttr> {
        if ino == 1 {
            return Some(attr(1, FileType::Directory, 0, 0o700, self.started));
        }
        let volume = self.table.get(ino)?;
        Some(attr(
            ino,
            FileType::RegularFile,
            volume.size,
            0o600,
            self.started,
        ))
    }

    /// Mounts the filesystem at `mountpoint`, served by `threads` threads. Dropping the
    /// session unmounts it.
    pub fn mount(
        self,
        mountpoint: &Path,
        threads: usize,
    ) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("spritefs".into()),
            fuser::MountOption::Subtype("spritefs".into()),
            fuser::MountOption::NoExec,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoDev,
        ];
        config.n_threads = Some(threads.max(1));
        config.clone_fd = threads > 1;
        fuser::spawn_mount(self, mountpoint, &config)
    }
}

fn errno_of(error: &crate::FsError) -> Errno {
    match error {
        crate::FsError::OutOfRange { .. } => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

impl Filesystem for VolumeFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (u64::from(parent) == 1)
            .then(|| name.to_str().and_then(|n| self.table.lookup(n)))
            .flatten();
        match found {
            Some((ino, volume)) => {
                let attr = attr(ino, FileType::RegularFile, volume.size, 0o600, self.started);
                reply.entry(&TTL, &attr, fuser::Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.into()) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.attr_of(ino.into()) {
            // A volume's size is fixed; only a no-op truncate to it is accepted.
            Some(attr) if size.is_none_or(|s| s == attr.size) => reply.attr(&TTL, &attr),
            Some(_) => reply.error(Errno::EPERM),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.table.get(ino.into()).is_some() {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(volume) = self.table.get(ino.into()) else {
            return reply.error(Errno::ENOENT);
        };
        let len = (size as u64).min(volume.size.saturating_sub(offset)) as usize;
        match self.runtime.block_on(volume.read(offset, len)) {
            Ok(data) => reply.data(&data),
            Err(error) => {
                tracing::error!(volume = %volume.id, offset, "read failed: {error}");
                reply.error(errno_of(&error));
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(volume) = self.table.get(ino.into()) else {
            return reply.error(Errno::ENOENT);
        };
        match self.runtime.block_on(volume.write(offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(error) => {
                tracing::error!(volume = %volume.id, offset, "write failed: {error}");
                reply.error(errno_of(&error));
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(volume) = self.table.get(ino.into()) else {
            return reply.error(Errno::ENOENT);
        };
        match self.runtime.block_on(volume.fsync()) {
            Ok(()) => reply.ok(),
            Err(error) => {
                tracing::error!(volume = %volume.id, "fsync failed: {error}");
                reply.error(Errno::EIO);
            }
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(volume) = self.table.get(ino.into()) else {
            return reply.error(Errno::ENOENT);
        };
        const PUNCH_HOLE: i32 = 0x02;
        const ZERO_RANGE: i32 = 0x10;
        if mode & (PUNCH_HOLE | ZERO_RANGE) == 0 {
            // Plain allocation means nothing on a sparse volume.
            return reply.ok();
        }
        match self.runtime.block_on(volume.discard(offset, length)) {
            Ok(()) => reply.ok(),
            Err(error) => {
                tracing::error!(volume = %volume.id, offset, length, "discard failed: {error}");
                reply.error(errno_of(&error));
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if u64::from(ino) != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (1u64, FileType::Directory, ".".to_string()),
            (1, FileType::Directory, "..".to_string()),
        ];
        entries.extend(
            self.table
                .entries()
                .into_iter()
                .map(|(ino, name)| (ino, FileType::RegularFile, name)),
        );
        for (index, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (index + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}
