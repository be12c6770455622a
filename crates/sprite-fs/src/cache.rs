//! The local chunk cache: chunks *decoded* (a block's plain bytes, one file each) in a
//! directory, bounded in bytes; which chunks stay is decided by `quick_cache` (S3-FIFO:
//! O(1) per access, a block read once does not push out blocks read often). A read takes just
//! the bytes it needs from the file (no decompression, no reading the rest of the
//! block), so a random 4 KiB read costs a 4 KiB `pread`. Everything in it is also in
//! the object store, so losing it (or a file of it) costs only a re-fetch.

use crate::chunk::ChunkId;
use crate::error::FsError;
use std::fs;
use std::path::{Path, PathBuf};

/// A chunk weighs its size in bytes.
#[derive(Debug, Clone, Copy)]
struct Bytes;

impl quick_cache::Weighter<ChunkId, u64> for Bytes {
    fn weight(&self, _id: &ChunkId, size: &u64) -> u64 {
        (*size).max(1)
    }
}

/// Collects what an insert evicted, so the files are deleted after the cache's lock is
/// released.
#[derive(Debug, Clone, Copy)]
struct Evicted;

impl quick_cache::Lifecycle<ChunkId, u64> for Evicted {
    type RequestState = Vec<ChunkId>;

    fn on_evict(&self, state: &mut Vec<ChunkId>, id: ChunkId, _size: u64) {
        state.push(id);
    }
}

type Index =
    quick_cache::sync::Cache<ChunkId, u64, Bytes, quick_cache::DefaultHashBuilder, Evicted>;

/// The expected size of a chunk, for sizing the index.
const TYPICAL_CHUNK: u64 = 64 << 10;

pub struct ChunkCache {
    dir: PathBuf,
    index: Index,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("dir", &self.dir)
            .field("bytes", &self.index.weight())
            .field("limit", &self.index.capacity())
            .finish()
    }
}

impl ChunkCache {
    /// Opens the cache directory, indexing what an earlier run left there (and deleting
    /// what no longer fits).
    pub fn open(dir: &Path, limit: u64) -> Result<ChunkCache, FsError> {
        fs::create_dir_all(dir).map_err(FsError::io("create", dir))?;
        let index = Index::with(
            usize::try_from(limit / TYPICAL_CHUNK)
                .unwrap_or(usize::MAX)
                .clamp(16, 1 << 20),
            limit.max(1),
            Bytes,
            quick_cache::DefaultHashBuilder::default(),
            Evicted,
        );
        let cache = ChunkCache {
            dir: dir.to_path_buf(),
            index,
        };
        let listing = fs::read_dir(dir).map_err(FsError::io("read", dir))?;
        for entry in listing.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(ChunkId::from_hex) else {
                // A temporary file of a put that never finished.
                if name
                    .to_str()
                    .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
                {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            cache.admit(id, size);
        }
        Ok(cache)
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// Indexes a chunk whose file is in place, then deletes the files of what it pushed
    /// out (with no lock held).
    fn admit(&self, id: ChunkId, size: u64) {
        let mut evicted = Vec::new();
        self.index.insert_with_lifecycle(id, size, &mut evicted);
        for id in evicted {
            let _ = fs::remove_file(self.path(&id));
        }
    }

    /// Forgets a chunk whose file could not be read.
    fn forget(&self, id: &ChunkId) {
        self.index.remove(id);
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.index.contains_key(id)
    }

    /// A cached block's bytes, whole.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        self.index.get(id)?;
        match fs::read(self.path(id)) {
            Ok(data) => Some(data),
            Err(_) => {
                self.forget(id);
                None
            }
        }
    }

    /// Fills `target` from a cached block's bytes at `offset`; false if not cached.
    pub fn read_at(&self, id: &ChunkId, offset: u64, target: &mut [u8]) -> bool {
        use std::os::unix::fs::FileExt;
        if self.index.get(id).is_none() {
            return false;
        }
        let read = fs::File::open(self.path(id)).and_then(|f| f.read_exact_at(target, offset));
        if read.is_err() {
            self.forget(id);
        }
        read.is_ok()
    }

    /// Adds a block's bytes just read (kept in the page cache too, as any file just
    /// written: it is likely read again soon). Failures only cost a later re-fetch.
    pub fn put(&self, id: &ChunkId, stored: &[u8]) {
        self.add(id, stored, false);
    }

    /// Adds a block's bytes just uploaded, written through to the disk and not kept in
    /// the page cache: the sprite's own file system caches what it uses, and a second
    /// copy here would only crowd the host's memory (with many sprites, a full page
    /// cache makes the kernel reclaim through every sprite's cgroup).
    pub fn put_uploaded(&self, id: &ChunkId, stored: &[u8]) {
        self.add(id, stored, true);
    }

    fn add(&self, id: &ChunkId, stored: &[u8], write_through: bool) {
        if self.index.contains_key(id) {
            return;
        }
        let temporary = self.dir.join(format!(".{}.tmp", id.to_hex()));
        let written = fs::File::create(&temporary).and_then(|mut file| {
            std::io::Write::write_all(&mut file, stored)?;
            if write_through {
                sprite_sys::syscall::drop_cached(&file, 0, 0).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
        if written
            .and_then(|()| fs::rename(&temporary, self.path(id)))
            .is_err()
        {
            let _ = fs::remove_file(&temporary);
            return;
        }
        self.admit(*id, stored.len() as u64);
    }

    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.index.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .expect("list")
            .flatten()
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Bytes of a file in the page cache.
    fn resident(path: &Path) -> u64 {
        let file = fs::File::open(path).expect("open");
        sprite_sys::syscall::cached_bytes(&file).expect("count")
    }

    #[test]
    fn uploaded_blocks_go_to_the_disk_not_the_page_cache() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = ChunkCache::open(dir.path(), 64 << 20).expect("open");
        let (read, uploaded) = (ChunkId([1; 32]), ChunkId([2; 32]));
        cache.put(&read, &[3; 1 << 20]);
        cache.put_uploaded(&uploaded, &[4; 1 << 20]);
        assert!(
            resident(&cache.path(&read)) > 0,
            "a block just read stays cached"
        );
        assert_eq!(
            resident(&cache.path(&uploaded)),
            0,
            "an uploaded one does not"
        );
        let mut back = vec![0; 1 << 20];
        assert!(cache.read_at(&uploaded, 0, &mut back));
        assert_eq!(back, vec![4; 1 << 20], "and reads back whole");
    }

    #[test]
    fn stays_within_its_bound_on_disk_and_keeps_blocks_read_often() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = ChunkCache::open(dir.path(), 100 * 1000).expect("open");
        let hot = ChunkId([255; 32]);
        cache.put(&hot, &[7; 1000]);
        for n in 0..400u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            cache.put(&ChunkId(id), &[1; 1000]);
            assert!(
                cache.read_at(&hot, 10, &mut [0u8; 4]),
                "the hot block stays ({n})"
            );
            assert!(cache.size() <= 100 * 1000);
        }
        // Evicted blocks' files are gone: the directory holds what the index counts.
        assert_eq!(files(dir.path()), cache.size());
        assert!(
            cache.size() > 50 * 1000,
            "the cache is used: {}",
            cache.size()
        );
        drop(cache);
        std::fs::write(dir.path().join(".abc.tmp"), b"half a put").expect("write");
        let reopened = ChunkCache::open(dir.path(), 20 * 1000).expect("reopen smaller");
        assert!(reopened.size() <= 20 * 1000);
        assert_eq!(
            files(dir.path()),
            reopened.size(),
            "the rest deleted on open"
        );
    }

    #[test]
    fn reads_part_of_a_block() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = ChunkCache::open(dir.path(), 1 << 20).expect("open");
        let id = ChunkId([9; 32]);
        let block: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let mut part = [0u8; 16];
        assert!(!cache.read_at(&id, 0, &mut part), "not cached yet");
        cache.put(&id, &block);
        assert!(cache.contains(&id));
        assert!(cache.read_at(&id, 4096, &mut part));
        assert_eq!(&part[..], &block[4096..4112]);
        std::fs::remove_file(dir.path().join(id.to_hex())).expect("rm");
        assert!(!cache.read_at(&id, 0, &mut part), "a lost file is a miss");
        assert!(!cache.contains(&id));
    }
}
