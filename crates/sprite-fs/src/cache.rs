//! The local chunk cache: compressed chunks in a directory, bounded in bytes, evicted
//! least-recently-used first. Everything in it is also in the object store, so losing
//! it (or a file of it) costs only a re-fetch.

use crate::chunk::ChunkId;
use crate::error::FsError;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// The stored (compressed) bytes of a chunk, if cached.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        {
            let mut state = self.lock();
            state.clock += 1;
            let clock = state.clock;
            state.entries.get_mut(id)?.last_use = clock;
        }
        match fs::read(self.path(id)) {
            Ok(data) => Some(data),
            Err(_) => {
                let mut state = self.lock();
                if let Some(entry) = state.entries.remove(id) {
                    state.total -= entry.size;
                }
                None
            }
        }
    }

    /// Adds a chunk's stored bytes. Failures only cost a later re-fetch.
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
}
