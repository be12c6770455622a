//! The local chunk cache: chunks *decoded* (a block's plain bytes, one file each) in a
//! directory, bounded in bytes, evicted least-recently-used first. A read takes just
//! the bytes it needs from the file (no decompression, no reading the rest of the
//! block), so a random 4 KiB read costs a 4 KiB `pread`. Everything in it is also in
//! the object store, so losing it (or a file of it) costs only a re-fetch.

use crate::chunk::ChunkId;
use crate::error::FsError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug)]
struct Entry {
    size: u64,
    last_use: u64,
}

#[derive(Debug)]
struct State {
    entries: HashMap<ChunkId, Entry>,
    total: u64,
    clock: u64,
}

#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

impl ChunkCache {
    /// Opens the cache directory, indexing what an earlier run left there.
    pub fn open(dir: &Path, limit: u64) -> Result<ChunkCache, FsError> {
        fs::create_dir_all(dir).map_err(FsError::io("create", dir))?;
        let mut entries = HashMap::new();
        let mut total = 0;
        let listing = fs::read_dir(dir).map_err(FsError::io("read", dir))?;
        for entry in listing.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(ChunkId::from_hex) else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            total += size;
            entries.insert(id, Entry { size, last_use: 0 });
        }
        let cache = ChunkCache {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(State {
                entries,
                total,
                clock: 1,
            }),
        };
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// Marks a chunk used; false if it is not cached.
    fn touch(&self, id: &ChunkId) -> bool {
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        match state.entries.get_mut(id) {
            Some(entry) => {
                entry.last_use = clock;
                true
            }
            None => false,
        }
    }

    /// Forgets a chunk whose file could not be read.
    fn forget(&self, id: &ChunkId) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.remove(id) {
            state.total -= entry.size;
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock().entries.contains_key(id)
    }

    /// A cached block's bytes, whole.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        if !self.touch(id) {
            return None;
        }
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
        if !self.touch(id) {
            return false;
        }
        let read = fs::File::open(self.path(id)).and_then(|f| f.read_exact_at(target, offset));
        if read.is_err() {
            self.forget(id);
        }
        read.is_ok()
    }

    /// Adds a block's bytes. Failures only cost a later re-fetch.
    pub fn put(&self, id: &ChunkId, stored: &[u8]) {
        if self.lock().entries.contains_key(id) {
            return;
        }
        let temporary = self.dir.join(format!(".{}.tmp", id.to_hex()));
        if fs::write(&temporary, stored)
            .and_then(|()| fs::rename(&temporary, self.path(id)))
            .is_err()
        {
            let _ = fs::remove_file(&temporary);
            return;
        }
        {
            let mut state = self.lock();
            state.clock += 1;
            let clock = state.clock;
            state.total += stored.len() as u64;
            state.entries.insert(
                *id,
                Entry {
                    size: stored.len() as u64,
                    last_use: clock,
                },
            );
        }
        self.evict();
    }

    fn evict(&self) {
        let mut state = self.lock();
        while state.total > self.limit {
            let Some((&oldest, _)) = state.entries.iter().min_by_key(|(_, e)| e.last_use) else {
                break;
            };
            if let Some(entry) = state.entries.remove(&oldest) {
                state.total -= entry.size;
                let _ = fs::remove_file(self.path(&oldest));
            }
        }
    }

    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_the_bound() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = ChunkCache::open(dir.path(), 250).expect("open");
        let ids: Vec<ChunkId> = (0..3u8).map(|n| ChunkId([n; 32])).collect();
        cache.put(&ids[0], &[0; 100]);
        cache.put(&ids[1], &[1; 100]);
        assert!(cache.get(&ids[0]).is_some(), "touch 0 so 1 is the oldest");
        cache.put(&ids[2], &[2; 100]);
        assert!(cache.size() <= 250);
        assert!(cache.get(&ids[1]).is_none(), "least recently used evicted");
        assert_eq!(cache.get(&ids[0]).expect("kept"), vec![0; 100]);
        drop(cache);
        let reopened = ChunkCache::open(dir.path(), 250).expect("reopen");
        assert_eq!(reopened.size(), 200);
        assert_eq!(reopened.get(&ids[2]).expect("kept"), vec![2; 100]);
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
