//! The block engine: a volume's bytes, served from local staging (newest writes), the
//! chunk cache or the object store, and uploaded in the background.
//!
//! Writes land in a sparse staging file per volume, at their own offsets. The first
//! write to a block since its last upload fills the block's old bytes into staging, so
//! staging always holds whole blocks ("present" blocks). `fsync` makes staging durable
//! and records which blocks it holds (`staged` in the metadata db) before it returns: a
//! daemon crash after that loses nothing, and recovery uploads the staged blocks.
//! `upload` turns present blocks into chunks, records them in the head layer and
//! forgets them from staging in one metadata transaction; a block written again during
//! its upload stays present (a generation counter tells).

use crate::cache::ChunkCache;
use crate::chunk::{self, ChunkId};
use crate::error::FsError;
use crate::log::{self, Segment};
use crate::meta::Meta;
use crate::store::BlobStore;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of decompressed blocks kept in memory, whatever the block size.
const DECODED_BYTES: usize = 32 << 20;
/// Bytes fetched ahead of a sequential reader (whole blocks, at least one).
const PREFETCH_BYTES: u64 = 4 << 20;

/// A small LRU of decompressed blocks, shared by all volumes (whose block sizes may
/// differ: the bound is in bytes).
#[derive(Debug)]
struct DecodedBlocks {
    capacity_bytes: usize,
    entries: Mutex<std::collections::VecDeque<(ChunkId, Arc<Vec<u8>>)>>,
}

impl DecodedBlocks {
    fn new(capacity_bytes: usize) -> Self {
        DecodedBlocks {
            capacity_bytes,
            entries: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let mut entries = self.entries.lock();
        let position = entries.iter().position(|(key, _)| key == id)?;
        let entry = entries.remove(position)?;
        let data = entry.1.clone();
        entries.push_front(entry);
        Some(data)
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.entries.lock().iter().any(|(key, _)| key == id)
    }

    fn put(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut entries = self.entries.lock();
        entries.retain(|(key, _)| *key != id);
        entries.push_front((id, data));
        let mut total = 0usize;
        let keep = entries
            .iter()
            .take_while(|(_, block)| {
                total += block.len();
                total <= self.capacity_bytes
            })
            .count()
            .max(1);
        entries.truncate(keep);
    }
}

/// Chunk uploads in flight per volume.
const UPLOAD_PARALLELISM: usize = 8;

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassKind {
    /// An upload (background, a flush, a checkpoint, an attach).
    Upload,
    /// A `store` fsync's, which arms the write log (see [`Volume::sync_to_store`]).
    Arming,
}

/// How long written blocks wait before a background pass takes them to the store (both
/// modes): short, so the store trails the sprite by well under a second.
pub const CUT_AFTER: Duration = Duration::from_millis(250);

/// Writes wait while blocks written this long ago are still waiting for a cut and a pass
/// is already storing the previous one: when the store cannot keep up, writes slow down
/// instead of the lag growing.
const BACKPRESSURE_AFTER: Duration = Duration::from_millis(500);

/// How long written blocks wait for a background pass while the write log is armed:
/// the log has them in the store already, so passes only fold it into blocks (and a
/// block rewritten many times in this while is stored once). Bounds how much of the
/// log a recovery replays.
const FOLD_AFTER: Duration = Duration::from_secs(2);

/// Bytes written since the last log cut beyond which a `store` fsync stores whole blocks
/// (a pass) instead of a log segment: past this, the blocks are about as cheap to send,
/// and a recovery replays less.
const LOG_LIMIT_BYTES: u64 = 4 << 20;

/// Segments above this many bytes are compressed on the blocking pool.
const LOG_INLINE_ENCODE_BYTES: usize = 256 << 10;

/// When an fsync of a volume returns (a flush or a FUA write too: the loop device sends
/// each as an fsync): `Local`, durable in staging on this host's disk, the store
/// following within a second; `Store`, in the object store with a published version
/// that names it (concurrent fsyncs share one pass).
pub use sprite_api::sprite::Durability;

/// How far a volume's published state trails what was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lag {
    /// Bytes of blocks whose newest contents are not in the store yet (whole blocks: an
    /// upper bound).
    pub bytes: u64,
    /// Age of the oldest write not in the store yet, in milliseconds (0 when none).
    pub ms: u64,
}

/// Shared by every volume of a host.
#[derive(Debug)]
pub struct Engine {
    meta: Arc<Meta>,
    store: Arc<dyn BlobStore>,
    cache: Arc<ChunkCache>,
    staging_dir: PathBuf,
    /// Recently used blocks, decompressed.
    decoded: DecodedBlocks,
    /// Blocks being fetched ahead of readers.
    prefetching: Mutex<std::collections::HashSet<ChunkId>>,
    /// Work started and not waited for: chunk-cache writes after an upload, prefetches.
    background: Arc<Background>,
    /// Uploads hold it shared from their first chunk put to their metadata commit; GC
    /// holds it exclusively, so it never deletes a chunk a commit in flight will use.
    commits: tokio::sync::RwLock<()>,
    /// The manifest last published for each volume: a publication whose manifest did
    /// not change (a pass adds blocks to the head, not versions) puts the head alone.
    published_manifests: Mutex<HashMap<String, Bytes>>,
    /// The `log_from` of the head last published for each volume (this process): write
    /// log segments below it are garbage.
    published_log_from: Mutex<HashMap<String, u64>>,
    /// Held by a publication of a volume.
    publishing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Other hosts write this store (a cluster): heads are published conditionally and
    /// carry the volume's ownership epoch (see [`Engine::put_head`]).
    fenced: std::sync::atomic::AtomicBool,
    /// Per volume, the version tag of the head this process last published (None
    /// until it published one), and whether another host's newer head refused it.
    fences: Mutex<HashMap<String, Fence>>,
}

/// Counts the work an engine runs in the background, so that whoever is about to take
/// the host's directories away (a shutdown, a test of a lost host) can wait for it.
#[derive(Debug, Default)]
struct Background {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One piece of background work; done when dropped.
struct BackgroundWork(Arc<Background>);

impl Background {
    fn start(self: &Arc<Self>) -> BackgroundWork {
        self.running.fetch_add(1, Ordering::SeqCst);
        BackgroundWork(self.clone())
    }
}

impl Drop for BackgroundWork {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What a process knows of its right to publish a volume's head.
#[derive(Debug, Clone, Default)]
struct Fence {
    tag: Option<String>,
    lost: bool,
}

/// Storage used by one volume.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeUsage {
    /// Stored (compressed) bytes of the unique chunks the volume's current state uses.
    pub bytes_stored: u64,
    pub chunks: u64,
    /// Bytes each version's own layer added, oldest first.
    pub versions: Vec<(String, u64)>,
}

/// What a garbage collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub layers: usize,
    pub chunks: usize,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Staging {
    /// Blocks whose newest bytes are in staging, with their write generation.
    present: HashMap<u64, u64>,
    /// Present blocks written since the last fsync.
    unsynced: BTreeSet<u64>,
    /// Blocks an fsync in progress is making durable (taken from `unsynced`): not
    /// settled by an upload until that fsync has recorded them.
    syncing: BTreeSet<u64>,
    /// Blocks recorded as staged in the metadata db (never one that is not): an fsync
    /// that adds none commits no transaction.
    recorded: HashSet<u64>,
    /// Present blocks of which staging holds only the sectors written since the block
    /// came back into staging; their other sectors are still only in their chunk (or
    /// zeros, for a block with none). Completed before an fsync records them, or
    /// before an unaligned write, so a block overwritten whole in pieces is never read
    /// or zeroed first.
    partial: HashMap<u64, Sectors>,
    generation: u64,
    /// The oldest write no pass has cut yet (None: every write is in a cut).
    pending_since: Option<Instant>,
    /// Uploaded blocks whose staging space is still allocated (released in bulk): their
    /// staging bytes are still their current bytes.
    idle: BTreeSet<u64>,
    /// Present blocks that are zeros (discarded; their staging space punched): a pass
    /// stores them as holes without reading them.
    zeroed: HashSet<u64>,
    /// Blocks of the cut a pass is storing whose bytes it has not read yet. Whatever
    /// changes one first copies its bytes as they were at the cut into `captured` (under
    /// the block's stripe, which the pass holds while it reads), so a pass stores the
    /// volume exactly as it was at one instant: a state a crash could have left, which
    /// ext4's journal repairs, never a mix of older and newer blocks.
    cut_unread: HashSet<u64>,
    captured: HashMap<u64, Vec<u8>>,
    /// The oldest write in the cut a pass is storing (None: no pass in flight).
    cut_oldest: Option<Instant>,
    /// The write log of a `store` volume.
    log: LogState,
}

/// What a volume tracks for its write log (see [`crate::log`]).
#[derive(Debug, Default)]
struct LogState {
    /// Writes are tracked for the log. Set at the cut of a pass that arms it (that pass
    /// publishes a head whose `log_from` is `next` before any segment is put); cleared
    /// when a segment fails, in `local` mode and by a restore, so that the next `store`
    /// fsync arms it again with a whole pass.
    armed: bool,
    /// Sectors written since the last log cut, by block (while armed).
    dirty: HashMap<u64, Sectors>,
    dirty_sectors: u64,
    /// The oldest write since the last log cut (while armed).
    oldest: Option<Instant>,
    /// The oldest write of the segment being put (None: none in flight).
    cut_oldest: Option<Instant>,
    /// The `seq` of the next log cut.
    next: u64,
}

impl LogState {
    fn disarm(&mut self) {
        self.armed = false;
        self.dirty.clear();
        self.dirty_sectors = 0;
        self.oldest = None;
    }
}

/// A block of a pass's cut: what the pass stores for it.
#[derive(Debug, Clone)]
struct CutBlock {
    block: u64,
    generation: u64,
    /// Zeros: nothing to read.
    zero: bool,
    /// For a partial block, the sectors staging held at the cut (the rest is `chunk`).
    partial: Option<Sectors>,
    /// The block's chunk at the cut.
    chunk: Option<ChunkId>,
}

/// What a pass stores: its blocks, and the write-log segment its head leads to.
#[derive(Debug)]
struct Cut {
    blocks: Vec<CutBlock>,
    log_from: u64,
    kind: PassKind,
}

/// Upload passes of one volume, numbered from 1 in the order they cut.
#[derive(Debug, Default)]
struct Passes {
    /// The number of the last pass that cut.
    cut: AtomicU64,
    /// The number of the last pass that published.
    published: AtomicU64,
    /// Told when a pass ends (published or failed).
    ended: tokio::sync::Notify,
    /// A background pass is scheduled or running.
    background: AtomicBool,
}

/// Uploaded blocks whose staging space is kept before it is given back (256 MiB at
/// 1 MiB blocks). Writing into a released (punched) block makes the next fsync commit
/// the host filesystem's journal too, so hot blocks (superblock, journal, bitmaps) keep
/// their space; bursts do not.
const STAGING_SLACK_BLOCKS: usize = 256;

/// Locks that serialize first writes into a block, by block number.
const FILL_STRIPES: u64 = 64;

/// The unit in which staging tracks which bytes of a partial block it holds (the loop
/// device's logical block size: every request it sends is aligned to it).
const SECTOR: usize = 512;

/// Which sectors of a block staging holds.
#[derive(Debug, Clone)]
struct Sectors(Vec<u64>);

impl Sectors {
    fn none(block_size: usize) -> Sectors {
        Sectors(vec![0; (block_size / SECTOR).div_ceil(64)])
    }

    fn has(&self, sector: usize) -> bool {
        self.0[sector / 64] & (1 << (sector % 64)) != 0
    }

    /// Marks the sectors of bytes `within..within + len` (sector-aligned).
    fn add(&mut self, within: usize, len: usize) {
        for sector in within / SECTOR..(within + len) / SECTOR {
            self.0[sector / 64] |= 1 << (sector % 64);
        }
    }

    /// Marks every sector that bytes `within..within + len` touch; answers how many
    /// were not marked yet.
    fn cover(&mut self, within: usize, len: usize) -> u64 {
        let mut added = 0;
        for sector in within / SECTOR..(within + len).div_ceil(SECTOR) {
            let bit = 1 << (sector % 64);
            if self.0[sector / 64] & bit == 0 {
                self.0[sector / 64] |= bit;
                added += 1;
            }
        }
        added
    }

    /// Byte ranges (within the block) of the runs of sectors in `within..within + len`
    /// that staging holds (`held`) or lacks.
    fn runs(&self, within: usize, len: usize, held: bool) -> Vec<std::ops::Range<usize>> {
        let first = within / SECTOR;
        let end = (within + len).div_ceil(SECTOR);
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for sector in first..end {
            if self.has(sector) != held {
                continue;
            }
            let start = (sector * SECTOR).max(within);
            let stop = ((sector + 1) * SECTOR).min(within + len);
            match runs.last_mut() {
                Some(run) if run.end == start => run.end = stop,
                _ => runs.push(start..stop),
            }
        }
        runs
    }

    fn all(&self, block_size: usize) -> bool {
        let held: u32 = self.0.iter().map(|word| word.count_ones()).sum();
        held as usize == block_size / SECTOR
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn sector_aligned(within: usize, len: usize) -> bool {
    within.is_multiple_of(SECTOR) && len.is_multiple_of(SECTOR)
}

/// An open volume.
#[derive(Debug)]
pub struct Volume {
    engine: Arc<Engine>,
    pub id: String,
    pub size: u64,
    pub block_size: u64,
    map: RwLock<BTreeMap<u64, ChunkId>>,
    staging_file: File,
    staging_path: PathBuf,
    staging: Mutex<Staging>,
    uploading: tokio::sync::Mutex<()>,
    /// Starts the staging file's writeback as writes go on.
    writeback: sprite_sys::syscall::WritebackPacer,
    /// A write into a block that is not present holds the block's stripe, so two
    /// first writes into one block never both fill it (the second fill would undo the
    /// first write).
    filling: Vec<tokio::sync::Mutex<()>>,
    /// Reads and writes of the staging file hold it shared; an upload holds it
    /// exclusively while it settles blocks and gives their staging space back, so no
    /// read or write lands in a block between its "present" check and its file I/O.
    io_gate: tokio::sync::RwLock<()>,
    /// When its fsyncs return.
    durability: Mutex<Durability>,
    passes: Passes,
    /// Held by a `store` fsync: log segments are cut and put one at a time.
    logging: tokio::sync::Mutex<()>,
    /// Segments this opening put, not yet known to be below a published head's
    /// `log_from`.
    segments: Mutex<BTreeSet<u64>>,
}

/// What one upload pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UploadStats {
    pub blocks: usize,
    pub zero_blocks: usize,
    pub bytes_stored: u64,
}

fn json<T: serde::Serialize>(value: &T) -> Result<Bytes, FsError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| FsError::Manifest {
            key: String::new(),
            message: e.to_string(),
        })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], key: &str) -> Result<T, FsError> {
    serde_json::from_slice(bytes).map_err(|e| FsError::Manifest {
        key: key.to_string(),
        message: e.to_string(),
    })
}

impl Engine {
    pub fn new(
        meta: Arc<Meta>,
        store: Arc<dyn BlobStore>,
        cache: ChunkCache,
        staging_dir: PathBuf,
    ) -> Result<Arc<Engine>, FsError> {
        std::fs::create_dir_all(&staging_dir).map_err(FsError::io("create", &staging_dir))?;
        Ok(Arc::new(Engine {
            meta,
            store,
            cache: Arc::new(cache),
            staging_dir,
            commits: tokio::sync::RwLock::new(()),
            published_manifests: Mutex::new(HashMap::new()),
            published_log_from: Mutex::new(HashMap::new()),
            publishing: Mutex::new(HashMap::new()),
            fenced: std::sync::atomic::AtomicBool::new(false),
            fences: Mutex::new(HashMap::new()),
            decoded: DecodedBlocks::new(DECODED_BYTES),
            prefetching: Mutex::new(std::collections::HashSet::new()),
            background: Arc::default(),
        }))
    }

    /// Other hosts of a cluster write this store: from now on every head is published
    /// only over the version this process last saw, and carries the volume's ownership
    /// epoch; a host whose copy is stale is refused ([`FsError::Fenced`]).
    pub fn set_fenced(&self, fenced: bool) {
        self.fenced
            .store(fenced, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether another host's newer head refused this host's publication of `volume`.
    pub fn is_fenced_out(&self, volume: &str) -> bool {
        self.fences.lock().get(volume).is_some_and(|f| f.lost)
    }

    fn fenced_out(&self, volume: &str) -> FsError {
        self.fences
            .lock()
            .entry(volume.to_string())
            .or_default()
            .lost = true;
        tracing::warn!(
            volume,
            "another host owns this volume now: this host publishes nothing more of it"
        );
        FsError::Fenced(volume.to_string())
    }

    /// Puts a volume's head. Fenced (a cluster): only over the head this process last
    /// published, or, the first time, over the head in the store if that one's epoch is
    /// not newer than ours (or where there is none yet), as one conditional write;
    /// anything else means another host owns the volume now, and this one stops.
    async fn put_head(&self, volume: &str, data: Bytes, epoch: u64) -> Result<(), FsError> {
        let key = format!("volumes/{volume}/head.json");
        if !self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(self.store.put(&key, data).await?);
        }
        let known = self.fences.lock().get(volume).cloned().unwrap_or_default();
        if known.lost {
            return Err(FsError::Fenced(volume.to_string()));
        }
        let expected = match known.tag {
            Some(tag) => Some(tag),
            None => match self.store.get_tagged(&key).await {
                Err(crate::error::StoreError::NotFound(_)) => None,
                Ok((bytes, tag)) => {
                    let stored: crate::meta::LayerRecord = parse(&bytes, &key)?;
                    if stored.epoch.unwrap_or(0) > epoch {
                        return Err(self.fenced_out(volume));
                    }
                    tag
                }
                Err(error) => return Err(error.into()),
            },
        };
        match self.store.put_if(&key, data, expected.as_deref()).await {
            Ok(tag) => {
                self.fences
                    .lock()
                    .insert(volume.to_string(), Fence { tag, lost: false });
                Ok(())
            }
            // (A retried write of ours that had landed is told apart by `Retrying`.)
            Err(crate::error::StoreError::Conflict(_)) => Err(self.fenced_out(volume)),
            Err(error) => Err(error.into()),
        }
    }

    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// Returns once the work this engine started in the background (chunk-cache writes
    /// after uploads, prefetches) is done: nothing it started writes the cache later.
    pub async fn settled(&self) {
        loop {
            let idle = self.background.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.background.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Opens a volume: loads its block map and takes back what staging held at a crash.
    pub fn open_volume(self: &Arc<Self>, id: &str) -> Result<Arc<Volume>, FsError> {
        let info = self.meta.volume(id)?;
        let map = self.meta.block_map(id)?;
        let path = self.staging_dir.join(format!("{id}.staging"));
        let staging_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(FsError::io("open staging", &path))?;
        staging_file
            .set_len(info.size)
            .map_err(FsError::io("size staging", &path))?;
        let mut staging = Staging::default();
        // A new epoch: no segment of an earlier opening continues this one's numbers.
        staging.log.next = log::first_of_epoch(self.meta.next_log_epoch(id, 0)?);
        for block in self.meta.staged_blocks(id)? {
            staging.generation += 1;
            staging.present.insert(block, staging.generation);
            staging.recorded.insert(block);
        }
        Ok(Arc::new(Volume {
            engine: self.clone(),
            id: id.to_string(),
            size: info.size,
            block_size: info.block_size,
            map: RwLock::new(map),
            staging_file,
            staging_path: path,
            staging: Mutex::new(staging),
            uploading: tokio::sync::Mutex::new(()),
            writeback: Default::default(),
            filling: (0..FILL_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            io_gate: tokio::sync::RwLock::new(()),
            durability: Mutex::new(Durability::default()),
            passes: Passes::default(),
            logging: tokio::sync::Mutex::new(()),
            segments: Mutex::new(BTreeSet::new()),
        }))
    }

    /// Removes a closed volume's staging file.
    pub fn discard_staging(&self, id: &str) -> Result<(), FsError> {
        let path = self.staging_dir.join(format!("{id}.staging"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FsError::io("remove", path)(source)),
        }
    }

    /// The bytes of a stored block: from the cache, else from the object store.
    pub async fn fetch_block(
        &self,
        id: &ChunkId,
        block_size: usize,
    ) -> Result<Arc<Vec<u8>>, FsError> {
        // The kernel reads a block in several requests (128 KiB each): decode it once.
        if let Some(data) = self.decoded.get(id) {
            return Ok(data);
        }
        let data = match self.cache.get(id).filter(|data| data.len() == block_size) {
            Some(data) => data,
            None => {
                let stored = self.store.get(&id.key()).await?;
                let data = chunk::decode(id, &stored, block_size)?;
                self.cache.put(id, &data);
                data
            }
        };
        let data = Arc::new(data);
        self.decoded.put(*id, data.clone());
        Ok(data)
    }

    /// Fills `target` with a stored block's bytes from `within` on: straight from the
    /// cache file when the block is cached, else by fetching the whole block.
    pub async fn read_block_range(
        &self,
        id: &ChunkId,
        block_size: usize,
        within: usize,
        target: &mut [u8],
    ) -> Result<(), FsError> {
        if let Some(data) = self.decoded.get(id) {
            target.copy_from_slice(&data[within..within + target.len()]);
            return Ok(());
        }
        // A read from the start of a block is likely sequential: the whole block in one
        // read (and kept decoded for the requests that follow) beats a pread per
        // request, each on a fresh file handle without readahead.
        if within != 0 && self.cache.read_at(id, within as u64, target) {
            return Ok(());
        }
        let data = self.fetch_block(id, block_size).await?;
        target.copy_from_slice(&data[within..within + target.len()]);
        Ok(())
    }

    /// Publishes a volume's metadata to the object store: its sealed layers not there
    /// yet (oldest first), its head layer, then its manifest when it changed. Each step
    /// needs only what the earlier ones put, so a host lost between two of them leaves
    /// an earlier consistent state: a head whose parents are all there, and a manifest
    /// whose head is (a manifest that names a head not published yet would leave the
    /// volume without one). After this, a fresh host with the same store recovers the
    /// volume as it is now.
    pub async fn publish(&self, volume: &str) -> Result<(), FsError> {
        // One publication of a volume at a time, each reading the newest state: an older
        // head put after a newer one would name write-log segments already deleted.
        let lock = self
            .publishing
            .lock()
            .entry(volume.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        for layer in self.meta.unpublished_layers(volume)?.into_iter().rev() {
            let record = self.meta.export_layer(layer)?;
            self.store
                .put(&format!("layers/{layer}.json"), json(&record)?)
                .await?;
            self.meta.mark_published(layer)?;
        }
        let manifest = self.meta.volume_manifest(volume)?;
        let mut head = self.meta.export_head(volume)?;
        let log_from = head.log_from.unwrap_or(0);
        let epoch = self.meta.owner_epoch(volume)?;
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            head.epoch = Some(epoch);
        }
        self.put_head(volume, json(&head)?, epoch).await?;
        self.published_log_from
            .lock()
            .insert(volume.to_string(), log_from);
        let manifest_json = json(&manifest)?;
        let unchanged = self.published_manifests.lock().get(volume) == Some(&manifest_json);
        if !unchanged {
            self.store
                .put(
                    &format!("volumes/{volume}/manifest.json"),
                    manifest_json.clone(),
                )
                .await?;
            self.published_manifests
                .lock()
                .insert(volume.to_string(), manifest_json);
        }
        Ok(())
    }

    /// Rebuilds the metadata of every volume from the object store (a fresh host with
    /// an empty data directory). Returns the volumes found.
    pub async fn recover(self: &Arc<Self>) -> Result<Vec<String>, FsError> {
        let mut found = Vec::new();
        let mut imported = std::collections::HashSet::new();
        let keys = self.store.list("volumes/").await?;
        let mut segments: HashMap<&str, Vec<u64>> = HashMap::new();
        for (volume, seq) in keys.iter().filter_map(|key| log::parse_key(key)) {
            segments.entry(volume).or_default().push(seq);
        }
        for key in &keys {
            if !key.ends_with("/manifest.json") {
                continue;
            }
            let manifest: crate::meta::VolumeManifest = parse(&self.store.get(key).await?, key)?;
            let present = segments.remove(manifest.id.as_str()).unwrap_or_default();
            if let Some(id) = self
                .recover_volume(manifest, present, &mut imported)
                .await?
            {
                found.push(id);
            }
        }
        Ok(found)
    }

    /// Reads one volume from the object store as it is there now, replacing whatever
    /// this host knew of it (a sprite that comes here from another host of a cluster:
    /// a failover or a move). Answers false when the store has no such volume. The
    /// volume must not be open.
    pub async fn import_volume(self: &Arc<Self>, id: &str) -> Result<bool, FsError> {
        self.import_volume_at(id, None).await
    }

    /// [`Engine::import_volume`], then, with `epoch` (the ownership epoch this host now
    /// holds the volume at, newer than any before), takes the volume: its head is
    /// published again over the one read, carrying the new epoch, so the host that had
    /// it before can publish nothing more (a publication of its in between is read and
    /// taken over again).
    pub async fn import_volume_at(
        self: &Arc<Self>,
        id: &str,
        epoch: Option<u64>,
    ) -> Result<bool, FsError> {
        for _ in 0..5 {
            if !self.import_once(id).await? {
                return Ok(false);
            }
            let Some(epoch) = epoch else {
                return Ok(true);
            };
            self.meta.set_owner_epoch(id, epoch)?;
            self.fences.lock().remove(id);
            match self.publish(id).await {
                Ok(()) => return Ok(true),
                Err(FsError::Fenced(_)) => {
                    // The old owner published after the read: read it again.
                    self.fences.lock().remove(id);
                }
                Err(error) => return Err(error),
            }
        }
        Err(FsError::Fenced(id.to_string()))
    }

    async fn import_once(self: &Arc<Self>, id: &str) -> Result<bool, FsError> {
        let key = format!("volumes/{id}/manifest.json");
        let manifest: crate::meta::VolumeManifest = match self.store.get(&key).await {
            Ok(bytes) => parse(&bytes, &key)?,
            Err(crate::error::StoreError::NotFound(_)) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        // What an earlier stay on this host left is stale.
        if self.meta.volume(id).is_ok() {
            self.meta.delete_volume(id)?;
        }
        self.discard_staging(id)?;
        self.published_manifests.lock().remove(id);
        self.published_log_from.lock().remove(id);
        let present: Vec<u64> = self
            .store
            .list(&log::prefix(id))
            .await?
            .iter()
            .filter_map(|key| log::parse_key(key).map(|(_, seq)| seq))
            .collect();
        let mut imported = std::collections::HashSet::new();
        Ok(self
            .recover_volume(manifest, present, &mut imported)
            .await?
            .is_some())
    }

    /// Imports one volume's head, layers and manifest, then replays the write-log
    /// segments (`present`) that follow its head. Layers in `imported` are not fetched
    /// again. Answers the volume's id, or None when it has no usable state.
    async fn recover_volume(
        self: &Arc<Self>,
        mut manifest: crate::meta::VolumeManifest,
        present: Vec<u64>,
        imported: &mut std::collections::HashSet<i64>,
    ) -> Result<Option<String>, FsError> {
        let head_key = format!("volumes/{}/head.json", manifest.id);
        let head: crate::meta::LayerRecord = match self.store.get(&head_key).await {
            Ok(bytes) => parse(&bytes, &head_key)?,
            // Only from a store written before heads were published first: the
            // volume never had a state a fresh host could use.
            Err(crate::error::StoreError::NotFound(_)) => {
                tracing::warn!(volume = %manifest.id, "a manifest without its head in the store: skipped");
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        if head.id != manifest.head {
            // Lost between a checkpoint's head and its manifest: the head is the
            // newer state (its parent is the layer the manifest names); the new
            // version's name was not published, its data is the head's parent.
            tracing::warn!(volume = %manifest.id, manifest_head = manifest.head, head = head.id, "the manifest trails the head: recovering the head");
            manifest.head = head.id;
        }
        self.meta.import_layer(&head)?;
        // The head's ancestors and every version's layer, each fetched once.
        let mut pending: Vec<i64> = head
            .parent
            .into_iter()
            .chain(manifest.versions.iter().map(|v| v.layer))
            .collect();
        while let Some(layer) = pending.pop() {
            if !imported.insert(layer) {
                continue;
            }
            let key = format!("layers/{layer}.json");
            let record: crate::meta::LayerRecord = parse(&self.store.get(&key).await?, &key)?;
            pending.extend(record.parent);
            self.meta.import_layer(&record)?;
        }
        self.meta.import_volume(&manifest)?;
        self.meta
            .set_owner_epoch(&manifest.id, head.epoch.unwrap_or(1))?;
        // The write log on top of the head: the segments that follow it without a
        // gap are written into staging as the volume's newest bytes.
        let log_from = head.log_from.unwrap_or(0);
        self.meta.set_log_from(&manifest.id, log_from)?;
        let last_epoch = present.iter().map(|seq| log::epoch_of(*seq)).max();
        self.meta
            .next_log_epoch(&manifest.id, last_epoch.unwrap_or(0))?;
        let apply = log::applicable(log_from, present);
        if !apply.is_empty() {
            self.replay_log(&manifest.id, &apply).await?;
        }
        Ok(Some(manifest.id))
    }

    /// Writes a volume's log segments (in order) into its staging, durably: they are the
    /// volume's newest bytes until a pass stores them as blocks.
    async fn replay_log(self: &Arc<Self>, id: &str, segments: &[u64]) -> Result<(), FsError> {
        let volume = self.open_volume(id)?;
        let mut bytes = 0;
        for seq in segments {
            let key = log::key(id, *seq);
            let segment = Segment::decode(&self.store.get(&key).await?, &key, volume.size)?;
            for (offset, data) in &segment.runs {
                volume.write(*offset, data).await?;
            }
            bytes += segment.data_bytes();
        }
        volume.fsync_local().await?;
        tracing::info!(volume = %id, segments = segments.len(), bytes, "write log replayed");
        Ok(())
    }

    /// Checkpoint: everything written so far goes to the store, the head is sealed as
    /// version `name`, and the new state is published.
    pub async fn checkpoint(
        &self,
        volume: &Volume,
        name: &str,
        comment: Option<&str>,
    ) -> Result<crate::meta::VersionInfo, FsError> {
        let started = std::time::Instant::now();
        let flushed = volume.flush_all().await?;
        let flush = started.elapsed();
        let version = self.meta.checkpoint(&volume.id, name, comment)?;
        let record = started.elapsed() - flush;
        self.publish(&volume.id).await?;
        tracing::debug!(volume = %volume.id, blocks = flushed.blocks, ?flush, ?record, total = ?started.elapsed(), "checkpoint timing");
        Ok(version)
    }

    /// Restore: unsaved writes are dropped and the volume reads as version `name`.
    /// No pass or log segment is in flight meanwhile: the restored head, published with
    /// a `log_from` past every segment of the abandoned state, is what the store holds
    /// next.
    pub async fn restore(&self, volume: &Volume, name: &str) -> Result<(), FsError> {
        let _log = volume.logging.lock().await;
        let _passes = volume.uploading.lock().await;
        self.meta.version(&volume.id, name)?;
        volume.discard_pending()?;
        self.meta.restore(&volume.id, name)?;
        self.meta.set_log_from(&volume.id, volume.log_next())?;
        volume.reload_map()?;
        self.publish(&volume.id).await
    }

    /// Fork: a new volume from a version of another; metadata only.
    pub async fn fork(&self, source: &str, version: &str, new_id: &str) -> Result<(), FsError> {
        self.meta.fork(source, version, new_id)?;
        self.publish(new_id).await
    }

    /// Deletes a volume (its chunks go at the next GC).
    /// Forgets what was last published for a volume whose metadata went away by another
    /// way than [`Self::delete_volume`] (a checkpoint view), so a volume made again under
    /// its name publishes its manifest.
    pub fn forget_published(&self, id: &str) {
        self.fences.lock().remove(id);
        self.published_manifests.lock().remove(id);
    }

    pub async fn delete_volume(&self, id: &str) -> Result<(), FsError> {
        self.meta.delete_volume(id)?;
        self.discard_staging(id)?;
        self.published_manifests.lock().remove(id);
        self.published_log_from.lock().remove(id);
        self.publishing.lock().remove(id);
        self.fences.lock().remove(id);
        // The manifest first: without it, nothing recovers the volume.
        for key in [
            format!("volumes/{id}/manifest.json"),
            format!("volumes/{id}/head.json"),
        ] {
            self.store.delete(&key).await?;
        }
        for key in self.store.list(&log::prefix(id)).await? {
            self.store.delete(&key).await?;
        }
        Ok(())
    }

    /// Deletes write-log segments below the `log_from` of a head this process
    /// published (a crash can leave some behind the deletions passes start).
    async fn collect_log_segments(&self) -> Result<usize, FsError> {
        let published = self.published_log_from.lock().clone();
        let mut deleted = 0;
        for key in self.store.list("volumes/").await? {
            let Some((volume, seq)) = log::parse_key(&key) else {
                continue;
            };
            if published.get(volume).is_some_and(|from| seq < *from) {
                self.store.delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes layers and chunks nothing references any more.
    pub async fn collect_garbage(&self) -> Result<GcStats, FsError> {
        let _exclusive = self.commits.write().await;
        let layers = self.meta.collect_layers()?;
        for layer in &layers {
            self.store.delete(&format!("layers/{layer}.json")).await?;
        }
        let live = self.meta.referenced_chunks()?;
        let mut stats = GcStats {
            layers: layers.len(),
            ..GcStats::default()
        };
        for key in self.store.list("chunks/").await? {
            let Some(id) = ChunkId::from_key(&key) else {
                continue;
            };
            if live.contains(&id) {
                continue;
            }
            let size = self
                .meta
                .stored_bytes(&std::collections::HashSet::from([id]))?;
            // Forgotten first: a crash in between leaves an unknown chunk in the store
            // (the next collection deletes it), never a known chunk that is gone.
            self.meta.forget_chunk(&id)?;
            self.store.delete(&key).await?;
            stats.chunks += 1;
            stats.bytes += size;
        }
        let segments = self.collect_log_segments().await?;
        if segments > 0 {
            tracing::debug!(segments, "stale write-log segments deleted");
        }
        Ok(stats)
    }

    /// Storage a volume uses: stored bytes of the unique chunks its head reaches, and
    /// what each version's own layer added.
    pub fn usage(&self, volume: &str) -> Result<VolumeUsage, FsError> {
        let head = self.meta.volume_chunks(volume)?;
        let versions = self
            .meta
            .versions(volume)?
            .into_iter()
            .map(|v| {
                Ok((
                    v.name,
                    self.meta.stored_bytes(&self.meta.layer_chunks(v.layer)?)?,
                ))
            })
            .collect::<Result<Vec<_>, FsError>>()?;
        Ok(VolumeUsage {
            bytes_stored: self.meta.stored_bytes(&head)?,
            chunks: head.len() as u64,
            versions,
        })
    }

    /// Stores a block as a chunk (idempotent: the name is the content); answers its id
    /// and the bytes this call added to the store (recorded by the caller's commit). A
    /// chunk the metadata already knows is in the store (GC forgets a chunk before
    /// deleting it, and cannot run during an upload), so it is not sent again. The
    /// cache keeps a copy, so reads after staging gives the block back stay local.
    /// Stores a block's chunk unless the store has it. Compression runs on the blocking
    /// pool (a pass's blocks compress on every core at once); the chunk cache's copy is
    /// written in the background (a cache, not part of what a pass waits for).
    async fn store_block(&self, data: Vec<u8>) -> Result<(ChunkId, u64), FsError> {
        let id = ChunkId::of(&data);
        if self.meta.has_chunk(&id)? {
            return Ok((id, 0));
        }
        let data = Arc::new(data);
        let encoding = tokio::task::spawn_blocking({
            let data = data.clone();
            move || chunk::encode(&data)
        });
        let stored = match encoding.await {
            Ok(stored) => stored?,
            // The blocking pool is shutting down: encode here.
            Err(_) => chunk::encode(&data)?,
        };
        let size = stored.len() as u64;
        self.store.put(&id.key(), Bytes::from(stored)).await?;
        let (cache, work) = (self.cache.clone(), self.background.start());
        tokio::task::spawn_blocking(move || {
            cache.put_uploaded(&id, &data);
            drop(work);
        });
        Ok((id, size))
    }
}

impl Volume {
    fn check_range(&self, offset: u64, len: u64) -> Result<(), FsError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(FsError::OutOfRange {
                volume: self.id.clone(),
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    /// An I/O error on the staging file (built only on failure: reads and writes are hot).
    fn staging_error(&self, what: &'static str, source: std::io::Error) -> FsError {
        FsError::io(what, self.staging_path.clone())(source)
    }

    /// The chunk a block is stored as (None: a hole).
    fn chunk_at(&self, block: u64) -> Option<ChunkId> {
        self.map.read().get(&block).copied()
    }

    /// Current bytes of a block that is not present in staging.
    async fn stored_block(&self, block: u64) -> Result<Option<Arc<Vec<u8>>>, FsError> {
        match self.chunk_at(block) {
            Some(id) => Ok(Some(
                self.engine
                    .fetch_block(&id, self.block_size as usize)
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// Starts background fetches of the stored blocks after `block`.
    fn prefetch_after(&self, block: u64) {
        let block_size = self.block_size as usize;
        let upcoming: Vec<ChunkId> = {
            let map = self.map.read();
            let ahead = (PREFETCH_BYTES / self.block_size).max(1);
            (block + 1..=block + ahead)
                .filter_map(|b| map.get(&b).copied())
                .collect()
        };
        for id in upcoming {
            if self.engine.decoded.contains(&id) || !self.engine.prefetching.lock().insert(id) {
                continue;
            }
            let (engine, work) = (self.engine.clone(), self.engine.background.start());
            tokio::spawn(async move {
                let _ = engine.fetch_block(&id, block_size).await;
                engine.prefetching.lock().remove(&id);
                drop(work);
            });
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
        self.check_range(offset, len as u64)?;
        let _gate = self.io_gate.read().await;
        self.read_gated(offset, len).await
    }

    /// Reads `len` bytes at `offset`; the caller holds the I/O gate (either way).
    async fn read_gated(&self, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let position = offset + done as u64;
            let block = position / self.block_size;
            let within = (position % self.block_size) as usize;
            let take = (self.block_size as usize - within).min(len - done);
            let (present, partial) = {
                let staging = self.staging.lock();
                (
                    staging.present.contains_key(&block),
                    staging.partial.get(&block).cloned(),
                )
            };
            let target = &mut out[done..done + take];
            if let Some(sectors) = partial {
                // The chunk's bytes, then the sectors written since, from staging.
                if let Some(id) = self.chunk_at(block) {
                    self.engine
                        .read_block_range(&id, self.block_size as usize, within, target)
                        .await?;
                }
                let start = block * self.block_size;
                for run in sectors.runs(within, take, true) {
                    self.staging_file
                        .read_exact_at(
                            &mut target[run.start - within..run.end - within],
                            start + run.start as u64,
                        )
                        .map_err(|e| self.staging_error("read staging", e))?;
                }
            } else if present {
                self.staging_file
                    .read_exact_at(target, position)
                    .map_err(|e| self.staging_error("read staging", e))?;
            } else {
                if within == 0 {
                    // A read from the start of a block is likely sequential: fetch and
                    // decode the next blocks in the background meanwhile.
                    self.prefetch_after(block);
                }
                if let Some(id) = self.chunk_at(block) {
                    self.engine
                        .read_block_range(&id, self.block_size as usize, within, target)
                        .await?;
                }
            }
            done += take;
        }
        Ok(out)
    }

    /// Writes `data` at `offset` into staging.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), FsError> {
        self.check_range(offset, data.len() as u64)?;
        self.backpressure().await;
        let _gate = self.io_gate.read().await;
        let mut done = 0usize;
        while done < data.len() {
            let position = offset + done as u64;
            let block = position / self.block_size;
            let within = (position % self.block_size) as usize;
            let take = (self.block_size as usize - within).min(data.len() - done);
            let (ready, in_cut) = {
                let staging = self.staging.lock();
                (
                    staging.present.contains_key(&block) && !staging.partial.contains_key(&block),
                    staging.cut_unread.contains(&block),
                )
            };
            // A block not wholly in staging: one write at a time prepares it. A block a
            // pass has yet to read: its cut bytes are kept for the pass first.
            let _stripe = match ready && !in_cut {
                true => None,
                false => Some(self.stripe(block).lock().await),
            };
            if in_cut {
                self.keep_cut_bytes(block)?;
            }
            let lazy = !ready && self.prepare(block, within, take).await?;
            self.staging_file
                .write_all_at(&data[done..done + take], position)
                .map_err(|e| self.staging_error("write staging", e))?;
            self.mark_written(block, within, take, lazy);
            done += take;
        }
        if let Err(error) = self.writeback.wrote(&self.staging_file, data.len() as u64) {
            tracing::debug!(volume = %self.id, "start staging writeback: {error}");
        }
        Ok(())
    }

    /// The lock a write into `block` holds while the block is not wholly in staging, or
    /// while a pass has yet to read it.
    fn stripe(&self, block: u64) -> &tokio::sync::Mutex<()> {
        &self.filling[(block % FILL_STRIPES) as usize]
    }

    /// Before the staging bytes of `block` change (the caller holds its stripe): if a
    /// pass has yet to read the block as it was at its cut, copies those bytes aside
    /// for it.
    fn keep_cut_bytes(&self, block: u64) -> Result<(), FsError> {
        if !self.staging.lock().cut_unread.contains(&block) {
            return Ok(());
        }
        let mut bytes = vec![0u8; self.block_size as usize];
        self.staging_file
            .read_exact_at(&mut bytes, block * self.block_size)
            .map_err(|e| self.staging_error("read staging", e))?;
        let mut staging = self.staging.lock();
        if staging.cut_unread.remove(&block) {
            staging.captured.insert(block, bytes);
        }
        Ok(())
    }

    /// Waits while blocks written [`BACKPRESSURE_AFTER`] ago still wait for a cut and a
    /// pass is storing the previous one (writes then go at the pace of the store).
    async fn backpressure(&self) {
        let behind = || {
            let staging = self.staging.lock();
            let after = match staging.log.armed {
                true => FOLD_AFTER + (BACKPRESSURE_AFTER - CUT_AFTER),
                false => BACKPRESSURE_AFTER,
            };
            staging.cut_oldest.is_some()
                && staging
                    .pending_since
                    .is_some_and(|at| at.elapsed() >= after)
        };
        while behind() {
            let ended = self.passes.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !behind() {
                return;
            }
            // Bounded: a pass that never ends (a store that never answers) slows
            // writes, it does not stop them.
            let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
        }
    }

    /// Records a write of `take` bytes at `within` in `block`: its newest bytes are in
    /// staging, not yet fsynced. `lazy`: the block came into staging with this write
    /// alone, its other sectors still in its chunk.
    fn mark_written(&self, block: u64, within: usize, take: usize, lazy: bool) {
        let mut staging = self.staging.lock();
        staging.generation += 1;
        let generation = staging.generation;
        let was_present = staging.present.insert(block, generation).is_some();
        if lazy && !was_present {
            staging
                .partial
                .insert(block, Sectors::none(self.block_size as usize));
        }
        if let Some(sectors) = staging.partial.get_mut(&block) {
            sectors.add(within, take);
            if sectors.all(self.block_size as usize) {
                staging.partial.remove(&block);
            }
        }
        staging.idle.remove(&block);
        staging.zeroed.remove(&block);
        staging.unsynced.insert(block);
        staging.pending_since.get_or_insert_with(Instant::now);
        let log = &mut staging.log;
        if log.armed {
            log.dirty_sectors += log
                .dirty
                .entry(block)
                .or_insert_with(|| Sectors::none(self.block_size as usize))
                .cover(within, take);
            log.oldest.get_or_insert_with(Instant::now);
        }
    }

    /// Before a write of `take` bytes at `within` into a block that is not wholly in
    /// staging (the caller holds the block's stripe of `filling`): makes staging ready
    /// for it. True when the write may go in alone, its block partial (a sector-aligned
    /// write: the block's other bytes, from its chunk or zeros when it has none, are
    /// written only if still missing at the next fsync, so a block overwritten whole in
    /// pieces is never read first, and a new one never zeroed).
    async fn prepare(&self, block: u64, within: usize, take: usize) -> Result<bool, FsError> {
        let (present, partial, idle) = {
            let staging = self.staging.lock();
            (
                staging.present.contains_key(&block),
                staging.partial.contains_key(&block),
                staging.idle.contains(&block),
            )
        };
        let whole = within == 0 && take == self.block_size as usize;
        if (present && !partial) || whole || (!present && idle) {
            // Made ready by a write this one waited for; or written whole; or uploaded
            // with its staging space kept, which still holds its bytes.
            return Ok(false);
        }
        if sector_aligned(within, take) {
            // Into a partial block, or making one (its entry comes with this write).
            return Ok(!partial);
        }
        // An unaligned write: the block's bytes (or zeros) come in first, whole.
        self.complete(block).await?;
        Ok(false)
    }

    /// Writes the sectors of `block` that staging lacks (all of them when the block is
    /// not present) from its chunk, so staging holds the whole block. The caller holds
    /// the block's stripe of `filling`.
    async fn complete(&self, block: u64) -> Result<(), FsError> {
        let block_size = self.block_size as usize;
        let missing = {
            let staging = self.staging.lock();
            match (
                staging.present.contains_key(&block),
                staging.partial.get(&block),
            ) {
                (true, None) => return Ok(()),
                (true, Some(sectors)) => sectors.runs(0, block_size, false),
                (false, _) => std::iter::once(0..block_size).collect(),
            }
        };
        // A block with no chunk (never written, zero, or discarded) is zeros.
        let old = self
            .stored_block(block)
            .await?
            .unwrap_or_else(|| Arc::new(vec![0u8; block_size]));
        self.keep_cut_bytes(block)?;
        let start = block * self.block_size;
        for run in missing {
            self.staging_file
                .write_all_at(&old[run.clone()], start + run.start as u64)
                .map_err(|e| self.staging_error("fill staging", e))?;
        }
        let mut staging = self.staging.lock();
        if staging.present.contains_key(&block) {
            staging.partial.remove(&block);
        }
        Ok(())
    }

    /// Gives a block's staging space back (it then reads as zeros).
    fn punch(&self, block: u64) -> nix::Result<()> {
        nix::fcntl::fallocate(
            &self.staging_file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            (block * self.block_size) as i64,
            self.block_size as i64,
        )
    }

    /// Zeroes a range (a discard from the loop device, or TRIM from inside the sprite).
    /// Whole blocks become holes without any data written; partial ones are zeroed.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), FsError> {
        let len = len.min(self.size.saturating_sub(offset));
        self.check_range(offset, len)?;
        let end = offset + len;
        let first_whole = offset.div_ceil(self.block_size);
        let end_whole = end / self.block_size;
        if first_whole >= end_whole {
            return self.write(offset, &vec![0u8; len as usize]).await;
        }
        if offset < first_whole * self.block_size {
            self.write(
                offset,
                &vec![0u8; (first_whole * self.block_size - offset) as usize],
            )
            .await?;
        }
        if end > end_whole * self.block_size {
            let start = end_whole * self.block_size;
            self.write(start, &vec![0u8; (end - start) as usize])
                .await?;
        }
        // Whole blocks: zeros in staging (their space punched, nothing written), kept
        // as present blocks like any write, so the store sees a discard in the same
        // order as the writes around it (a pass cut before it never publishes it).
        let _gate = self.io_gate.read().await;
        let holes: Vec<u64> = {
            let staging = self.staging.lock();
            let map = self.map.read();
            (first_whole..end_whole)
                .filter(|block| {
                    (map.contains_key(block) || staging.present.contains_key(block))
                        && !staging.zeroed.contains(block)
                })
                .collect()
        };
        for block in holes {
            let _stripe = self.stripe(block).lock().await;
            self.keep_cut_bytes(block)?;
            self.punch(block).map_err(|errno| {
                self.staging_error("punch staging", std::io::Error::from(errno))
            })?;
            self.mark_written(block, 0, self.block_size as usize, false);
            let mut staging = self.staging.lock();
            staging.partial.remove(&block);
            staging.zeroed.insert(block);
        }
        Ok(())
    }

    /// When this volume's fsyncs return.
    pub fn durability(&self) -> Durability {
        *self.durability.lock()
    }

    pub fn set_durability(&self, durability: Durability) {
        *self.durability.lock() = durability;
        if durability == Durability::Local {
            self.staging.lock().log.disarm();
        }
    }

    /// The `seq` the next log segment will have.
    fn log_next(&self) -> u64 {
        self.staging.lock().log.next
    }

    /// Makes every write so far durable as the volume's [`Durability`] says: on this
    /// host's disk (a crash of the daemon, the storage process or the host's kernel
    /// cannot lose it), or in the object store (nor can the loss of the host).
    pub async fn fsync(&self) -> Result<(), FsError> {
        match self.durability() {
            Durability::Local => self.fsync_local().await,
            Durability::Store => self.sync_to_store().await,
        }
    }

    /// Returns when a cut made after this call has published: every write before the
    /// call is in the object store, with a published head that leads to it. A cut is a
    /// write-log segment (the sectors written since the last one) when the log is armed
    /// and holds at most [`LOG_LIMIT_BYTES`], else a whole pass, which arms the log.
    /// Concurrent callers share cuts (group commit): whoever gets the log lock makes
    /// one, and the others find it done.
    pub async fn sync_to_store(&self) -> Result<(), FsError> {
        if self.engine.is_fenced_out(&self.id) {
            return Err(FsError::Fenced(self.id.clone()));
        }
        let wanted = self.passes.cut.load(Ordering::SeqCst) + 1;
        let _log = self.logging.lock().await;
        if self.passes.published.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        let (armed, dirty) = {
            let log = &self.staging.lock().log;
            (log.armed, log.dirty_sectors * SECTOR as u64)
        };
        if armed && dirty == 0 {
            // Every write since the log was armed is in a segment put before this call
            // (a failed one disarms it).
            return Ok(());
        }
        if armed && dirty <= LOG_LIMIT_BYTES && self.log_cut().await? {
            return Ok(());
        }
        // The first `store` fsync of this opening (or after a failed segment or a
        // restore), or much written since the last: a whole pass, which arms the log
        // and publishes its head before any segment of it goes out (this holds the
        // log lock throughout).
        let _one_at_a_time = self.uploading.lock().await;
        if self.passes.published.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        self.pass(PassKind::Arming).await.map(|_| ())
    }

    /// Cuts the write log (the caller holds `logging`): reads the sectors written since
    /// the last cut as they are now (no read or write in flight), puts them as the next
    /// segment and makes staging durable on local disk beside it (a restart of this
    /// host then finds them there). A failure disarms the log: the next `store` fsync
    /// stores whole blocks, and the failed segment's writes with them. False, with
    /// nothing done: more than twice [`LOG_LIMIT_BYTES`] was written meanwhile (writes
    /// that were in flight when the caller looked), for a whole pass to take.
    async fn log_cut(&self) -> Result<bool, FsError> {
        let cut = async {
            let _gate = self.io_gate.write().await;
            let (dirty, seq) = {
                let mut staging = self.staging.lock();
                let log = &mut staging.log;
                if log.dirty_sectors * SECTOR as u64 > 2 * LOG_LIMIT_BYTES {
                    return Ok(None);
                }
                let dirty = std::mem::take(&mut log.dirty);
                log.dirty_sectors = 0;
                log.cut_oldest = log.oldest.take();
                let seq = log.next;
                log.next += 1;
                (dirty, seq)
            };
            let number = self.passes.cut.fetch_add(1, Ordering::SeqCst) + 1;
            let mut blocks: Vec<(u64, Sectors)> = dirty.into_iter().collect();
            blocks.sort_unstable_by_key(|(block, _)| *block);
            let mut runs = Vec::new();
            for (block, sectors) in blocks {
                for run in sectors.runs(0, self.block_size as usize, true) {
                    let offset = block * self.block_size + run.start as u64;
                    runs.push((offset, self.read_gated(offset, run.len()).await?));
                }
            }
            Ok::<_, FsError>(Some((number, Segment { seq, runs })))
        }
        .await;
        let result = match cut {
            Ok(Some((number, segment))) => self.put_segment(segment).await.map(|_| number),
            Ok(None) => return Ok(false),
            Err(error) => Err(error),
        };
        {
            let mut staging = self.staging.lock();
            staging.log.cut_oldest = None;
            if result.is_err() {
                staging.log.disarm();
            }
        }
        let number = result?;
        self.passes.published.fetch_max(number, Ordering::SeqCst);
        self.passes.ended.notify_waiters();
        Ok(true)
    }

    /// Puts a segment and syncs staging locally, both at once.
    async fn put_segment(&self, segment: Segment) -> Result<(), FsError> {
        let started = Instant::now();
        let (seq, bytes) = (segment.seq, segment.data_bytes());
        let encoded = if bytes > LOG_INLINE_ENCODE_BYTES {
            tokio::task::spawn_blocking(move || segment.encode())
                .await
                .map_err(|e| FsError::Compress(std::io::Error::other(e)))??
        } else {
            segment.encode()?
        };
        let key = log::key(&self.id, seq);
        let encoded_ms = started.elapsed().as_secs_f64() * 1000.0;
        let since = |at: Instant| at.elapsed().as_secs_f64() * 1000.0;
        let ((put, put_ms), (local, local_ms)) = tokio::join!(
            async {
                let put = self.engine.store.put(&key, Bytes::from(encoded)).await;
                (put, since(started))
            },
            async { (self.fsync_local().await, since(started)) }
        );
        put?;
        local?;
        self.segments.lock().insert(seq);
        tracing::debug!(volume = %self.id, seq, bytes, encoded_ms, put_ms, local_ms, "log segment put");
        Ok(())
    }

    /// Makes every write so far durable on local disk. Returns when a daemon crash can
    /// no longer lose them.
    async fn fsync_local(&self) -> Result<(), FsError> {
        let (unsynced, partial, fresh) = {
            let mut staging = self.staging.lock();
            let unsynced: Vec<u64> = std::mem::take(&mut staging.unsynced).into_iter().collect();
            staging.syncing.extend(unsynced.iter().copied());
            let partial: Vec<u64> = unsynced
                .iter()
                .filter(|block| staging.partial.contains_key(block))
                .copied()
                .collect();
            let fresh: Vec<u64> = unsynced
                .iter()
                .filter(|block| !staging.recorded.contains(block))
                .copied()
                .collect();
            (unsynced, partial, fresh)
        };
        if unsynced.is_empty() {
            return Ok(());
        }
        let result = async {
            // Staging must hold every recorded block whole: a crash recovers it from there.
            for block in partial {
                let _gate = self.io_gate.read().await;
                let _stripe = self.stripe(block).lock().await;
                self.complete(block).await?;
            }
            self.staging_file
                .sync_data()
                .map_err(|e| self.staging_error("sync staging", e))?;
            // Blocks already recorded stay so until a pass settles them, which it does
            // not while they are `syncing`.
            if fresh.is_empty() {
                return Ok(());
            }
            self.engine.meta.stage_blocks(&self.id, &fresh)
        }
        .await;
        let mut staging = self.staging.lock();
        for block in &unsynced {
            staging.syncing.remove(block);
        }
        match result {
            Ok(()) => staging.recorded.extend(fresh),
            Err(_) => staging.unsynced.extend(unsynced),
        }
        result
    }

    /// Blocks whose newest bytes are only local.
    pub fn pending_blocks(&self) -> usize {
        self.staging.lock().present.len()
    }

    /// Whether a background pass is due: blocks were written [`CUT_AFTER`] ago and
    /// wait for a cut.
    pub fn pass_due(&self) -> bool {
        let staging = self.staging.lock();
        let after = match staging.log.armed {
            true => FOLD_AFTER,
            false => CUT_AFTER,
        };
        !staging.present.is_empty()
            && staging
                .pending_since
                .is_some_and(|at| at.elapsed() >= after)
    }

    /// Claims the volume's background pass (false: one is scheduled or running already);
    /// [`Self::background_done`] gives it back.
    pub fn claim_background(&self) -> bool {
        !self.passes.background.swap(true, Ordering::SeqCst)
    }

    pub fn background_done(&self) {
        self.passes.background.store(false, Ordering::SeqCst);
    }

    /// How far the store trails this volume now.
    ///
    /// A write is in the store once a published pass or (armed) log segment cut after
    /// it: the oldest write in neither is the later of the oldest each has not taken.
    pub fn lag(&self) -> Lag {
        let staging = self.staging.lock();
        let blocks = earliest(staging.cut_oldest, staging.pending_since);
        let block_bytes = staging.present.len() as u64 * self.block_size;
        let (oldest, bytes) = match &staging.log {
            log if log.armed => (
                blocks
                    .zip(earliest(log.cut_oldest, log.oldest))
                    .map(|(a, b)| a.max(b)),
                block_bytes.min(log.dirty_sectors * SECTOR as u64),
            ),
            _ => (blocks, block_bytes),
        };
        match oldest {
            Some(oldest) => Lag {
                bytes,
                ms: oldest.elapsed().as_millis() as u64,
            },
            None => Lag::default(),
        }
    }

    /// One upload pass (waiting for a pass in flight to end first).
    pub async fn upload(&self) -> Result<UploadStats, FsError> {
        let _one_at_a_time = self.uploading.lock().await;
        self.pass(PassKind::Upload).await
    }

    /// A pass (the caller holds `uploading`): cuts the volume at one instant (no read
    /// or write in flight), stores every block present in staging as it was at the cut
    /// (a write meanwhile first keeps the cut bytes of its block for the pass), records
    /// them in the block map and publishes the new state: the store holds the volume
    /// exactly as it was at the cut. Blocks not written since the cut then leave staging
    /// (once committed to the map, a block is durable in the store, fsynced or not);
    /// blocks a local fsync is recording stay (it would record them as staged after the
    /// pass gave their staging space back) and go with a later pass.
    ///
    /// The head it publishes names the next write-log segment as the first that applies
    /// on top of it. `arm`: the pass arms the write log at its cut (the caller holds
    /// `logging`, so no segment goes out before this head), and publishes its head even
    /// when nothing was written.
    async fn pass(&self, kind: PassKind) -> Result<UploadStats, FsError> {
        let arm = kind == PassKind::Arming;
        let _commit = self.engine.commits.read().await;
        let started = Instant::now();
        let (number, cut) = {
            let _gate = self.io_gate.write().await;
            let mut staging = self.staging.lock();
            let map = self.map.read();
            let cut: Vec<CutBlock> = staging
                .present
                .iter()
                .map(|(block, generation)| CutBlock {
                    block: *block,
                    generation: *generation,
                    zero: staging.zeroed.contains(block),
                    partial: staging.partial.get(block).cloned(),
                    chunk: map.get(block).copied(),
                })
                .collect();
            staging.cut_unread = cut.iter().filter(|c| !c.zero).map(|c| c.block).collect();
            staging.captured.clear();
            let since = staging.pending_since.take();
            staging.cut_oldest = since.or(Some(started));
            if arm {
                staging.log.disarm();
                staging.log.armed = true;
            }
            let log_from = staging.log.next;
            (
                self.passes.cut.fetch_add(1, Ordering::SeqCst) + 1,
                Cut {
                    blocks: cut,
                    log_from,
                    kind,
                },
            )
        };
        let result = self.store_cut(number, cut, started).await;
        {
            let mut staging = self.staging.lock();
            if result.is_err() {
                // Its writes wait for the next pass.
                staging.pending_since = earliest(staging.pending_since, staging.cut_oldest);
            }
            staging.cut_unread.clear();
            staging.captured.clear();
            staging.cut_oldest = None;
            if result.is_err() && arm {
                // Its head may not be out: no segment may follow it.
                staging.log.disarm();
            }
        }
        self.passes.ended.notify_waiters();
        result
    }

    /// The bytes of a cut block as they were at the cut (None: zeros).
    async fn cut_bytes(&self, cut: &CutBlock) -> Result<Option<Vec<u8>>, FsError> {
        if cut.zero {
            return Ok(None);
        }
        let raw = {
            let _stripe = self.stripe(cut.block).lock().await;
            let captured = {
                let mut staging = self.staging.lock();
                staging.cut_unread.remove(&cut.block);
                staging.captured.remove(&cut.block)
            };
            match captured {
                Some(bytes) => bytes,
                None => {
                    let mut bytes = vec![0u8; self.block_size as usize];
                    self.staging_file
                        .read_exact_at(&mut bytes, cut.block * self.block_size)
                        .map_err(|e| self.staging_error("read staging", e))?;
                    bytes
                }
            }
        };
        let Some(sectors) = &cut.partial else {
            return Ok(Some(raw));
        };
        // A partial block: its chunk (or zeros), with the sectors staging held.
        let block_size = self.block_size as usize;
        let mut whole = match &cut.chunk {
            Some(id) => self.engine.fetch_block(id, block_size).await?.to_vec(),
            None => vec![0u8; block_size],
        };
        for run in sectors.runs(0, block_size, true) {
            whole[run.clone()].copy_from_slice(&raw[run]);
        }
        Ok(Some(whole))
    }

    async fn store_cut(
        &self,
        number: u64,
        cut: Cut,
        started: Instant,
    ) -> Result<UploadStats, FsError> {
        let Cut {
            blocks: cut,
            log_from,
            kind,
        } = cut;
        if cut.is_empty() && kind != PassKind::Arming {
            self.passes.published.fetch_max(number, Ordering::SeqCst);
            return Ok(UploadStats::default());
        }
        let results: Vec<(CutBlock, Option<ChunkId>, u64)> = futures_util::stream::iter(cut)
            .map(|cut| async move {
                let Some(data) = self.cut_bytes(&cut).await? else {
                    return Ok::<_, FsError>((cut, None, 0));
                };
                if chunk::is_zero(&data) {
                    return Ok((cut, None, 0));
                }
                let (id, size) = self.engine.store_block(data).await?;
                Ok((cut, Some(id), size))
            })
            .buffer_unordered(UPLOAD_PARALLELISM)
            .try_collect()
            .await?;
        let stored_at = started.elapsed();
        // Every cut block goes into the map as it was at the cut; only blocks not
        // written since leave staging. The staging lock is held from the check to the
        // removal, so no fsync slips in between; the I/O gate keeps reads and writes
        // out, so none is between its check of a block and its file I/O when the
        // block leaves.
        let gate = self.io_gate.write().await;
        let settled: Vec<u64> = {
            let mut staging = self.staging.lock();
            let blocks: Vec<(u64, Option<ChunkId>)> = results
                .iter()
                .map(|(cut, chunk, _)| (cut.block, *chunk))
                .collect();
            let unstage: Vec<u64> = results
                .iter()
                .filter(|(cut, _, _)| {
                    staging.present.get(&cut.block) == Some(&cut.generation)
                        && !staging.syncing.contains(&cut.block)
                })
                .map(|(cut, _, _)| cut.block)
                .collect();
            // Every chunk this pass stored is recorded: it is in the store.
            let stored: Vec<(ChunkId, u64)> = results
                .iter()
                .filter_map(|(_, chunk, size)| chunk.filter(|_| *size > 0).map(|c| (c, *size)))
                .collect();
            self.engine
                .meta
                .commit_uploads(&self.id, &blocks, &unstage, &stored, log_from)?;
            let mut map = self.map.write();
            for (block, chunk) in &blocks {
                match chunk {
                    Some(id) => map.insert(*block, *id),
                    None => map.remove(block),
                };
            }
            for block in &unstage {
                staging.present.remove(block);
                staging.unsynced.remove(block);
                staging.recorded.remove(block);
                // Staging holds a partial block's written sectors only: not its bytes,
                // so not idle (a later write starts from the stored block).
                if staging.partial.remove(block).is_none() {
                    staging.idle.insert(*block);
                }
                staging.zeroed.remove(block);
            }
            unstage
        };
        // Uploaded blocks need no local copy (the chunk cache keeps recently used ones,
        // within its bound): past the slack, their staging space goes back. Once out of
        // `idle`, a write into one prepares it under its stripe (as any stored block),
        // so each is punched under its stripe too, and only while still not present;
        // reads and writes of other blocks go on meanwhile.
        let release: Vec<u64> = {
            let mut staging = self.staging.lock();
            if staging.idle.len() > STAGING_SLACK_BLOCKS {
                std::mem::take(&mut staging.idle).into_iter().collect()
            } else {
                Vec::new()
            }
        };
        let settled_at = started.elapsed();
        drop(gate);
        for block in release {
            let _stripe = self.stripe(block).lock().await;
            if self.staging.lock().present.contains_key(&block) {
                continue;
            }
            if let Err(error) = self.punch(block) {
                tracing::debug!(volume = %self.id, block, "release staging space: {error}");
            }
        }
        self.engine.publish(&self.id).await?;
        self.passes.published.fetch_max(number, Ordering::SeqCst);
        self.forget_segments_below(log_from);
        tracing::debug!(
            volume = %self.id,
            pass = number,
            blocks = results.len(),
            stored_ms = stored_at.as_secs_f64() * 1000.0,
            settled_ms = settled_at.as_secs_f64() * 1000.0,
            published_ms = started.elapsed().as_secs_f64() * 1000.0,
            "pass published"
        );
        // The settled blocks' staging pages are read no more (reads go to the chunk
        // cache; a write into one goes to the disk copy): written out and dropped from
        // the page cache, so a host of many sprites does not hold each written block
        // twice in memory. On the blocking pool, not waited for: the disk writes it
        // waits on are no part of this pass, nor of a checkpoint's flush.
        if let (false, Ok(file)) = (settled.is_empty(), self.staging_file.try_clone()) {
            let (volume, block_size) = (self.id.clone(), self.block_size);
            tokio::task::spawn_blocking(move || {
                for block in settled {
                    let offset = block * block_size;
                    if let Err(error) = sprite_sys::syscall::drop_cached(&file, offset, block_size)
                    {
                        tracing::debug!(%volume, block, "drop staging pages: {error}");
                    }
                }
            });
        }
        Ok(UploadStats {
            blocks: results.len(),
            zero_blocks: results.iter().filter(|(_, c, _)| c.is_none()).count(),
            bytes_stored: results.iter().map(|(_, _, size)| size).sum(),
        })
    }

    /// Deletes (in the background) the segments this opening put below `log_from`: a
    /// published head makes them garbage.
    fn forget_segments_below(&self, log_from: u64) {
        let stale: Vec<u64> = {
            let mut segments = self.segments.lock();
            let keep = segments.split_off(&log_from);
            std::mem::replace(&mut *segments, keep)
                .into_iter()
                .collect()
        };
        if stale.is_empty() {
            return;
        }
        let (store, volume) = (self.engine.store.clone(), self.id.clone());
        tokio::spawn(async move {
            for seq in stale {
                if let Err(error) = store.delete(&log::key(&volume, seq)).await {
                    // Garbage collection deletes it later.
                    tracing::debug!(%volume, seq, "delete a log segment: {error}");
                }
            }
        });
    }

    /// fsync, then upload everything: when this returns, the volume is fully in the
    /// object store.
    pub async fn flush_all(&self) -> Result<UploadStats, FsError> {
        self.fsync().await?;
        let mut total = UploadStats::default();
        loop {
            let stats = self.upload().await?;
            total.blocks += stats.blocks;
            total.zero_blocks += stats.zero_blocks;
            total.bytes_stored += stats.bytes_stored;
            if self.pending_blocks() == 0 {
                return Ok(total);
            }
            self.fsync().await?;
        }
    }

    /// Drops every write not uploaded yet (a restore abandons them).
    pub fn discard_pending(&self) -> Result<(), FsError> {
        let mut staging = self.staging.lock();
        staging.present.clear();
        staging.unsynced.clear();
        staging.partial.clear();
        // Their staging bytes belong to the abandoned state.
        staging.idle.clear();
        staging.zeroed.clear();
        staging.recorded.clear();
        staging.log.disarm();
        self.engine.meta.clear_staged(&self.id)
    }

    /// Re-reads the block map (after a restore switched the head).
    pub fn reload_map(&self) -> Result<(), FsError> {
        let map = self.engine.meta.block_map(&self.id)?;
        *self.map.write() = map;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultInjecting, ObjectBlobStore, RetryPolicy, Retrying};
    use std::time::Duration;

    const BLOCK: u64 = 64 * 1024;

    #[test]
    fn decoded_blocks_are_bounded_in_bytes() {
        let cache = DecodedBlocks::new(10);
        let block = |byte: u8, len: usize| {
            let data = vec![byte; len];
            (ChunkId::of(&data), Arc::new(data))
        };
        let (a, b, c) = (block(1, 4), block(2, 4), block(3, 4));
        for (id, data) in [&a, &b, &c] {
            cache.put(*id, data.clone());
        }
        assert!(!cache.contains(&a.0), "12 bytes kept under a 10-byte bound");
        assert!(cache.contains(&b.0) && cache.contains(&c.0));
        assert_eq!(cache.get(&b.0).as_deref(), Some(&vec![2u8; 4]));
        // A block larger than the bound is still kept (alone) until the next one.
        let big = block(4, 64);
        cache.put(big.0, big.1.clone());
        assert!(cache.contains(&big.0) && !cache.contains(&b.0));
    }

    struct Setup {
        dir: tempfile::TempDir,
        store: Arc<dyn BlobStore>,
    }

    impl Setup {
        fn new(store: Arc<dyn BlobStore>) -> Setup {
            Setup {
                dir: tempfile::tempdir().expect("dir"),
                store,
            }
        }

        /// An engine over this setup's store and local directories, as a fresh daemon
        /// would open them.
        fn engine(&self) -> Arc<Engine> {
            self.engine_with(self.store.clone())
        }

        /// The same over another store (a host that lost its store, say).
        fn engine_with(&self, store: Arc<dyn BlobStore>) -> Arc<Engine> {
            let meta = Arc::new(Meta::open(&self.dir.path().join("meta.db")).expect("meta"));
            let cache = ChunkCache::open(&self.dir.path().join("cache"), 64 << 20).expect("cache");
            Engine::new(meta, store, cache, self.dir.path().join("staging")).expect("engine")
        }
    }

    /// Creates a volume of `size` bytes in `BLOCK` blocks and opens it.
    fn new_volume(engine: &Arc<Engine>, id: &str, size: u64) -> Arc<Volume> {
        engine
            .meta()
            .create_volume(id, size, BLOCK)
            .expect("create");
        engine.open_volume(id).expect("open")
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    async fn chunk_count(store: &Arc<dyn BlobStore>) -> usize {
        store.list("chunks/").await.expect("list").len()
    }

    #[tokio::test]
    async fn unaligned_writes_and_holes_read_back() {
        let setup = Setup::new(Arc::new(ObjectBlobStore::memory()));
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 16 * BLOCK);
        let data = pattern(3 * BLOCK as usize, 1);
        volume.write(BLOCK / 2, &data).await.expect("write");
        assert_eq!(
            volume.read(BLOCK / 2, data.len()).await.expect("read"),
            data
        );
        assert_eq!(
            volume.read(10 * BLOCK, 100).await.expect("hole"),
            vec![0; 100]
        );
        volume.flush_all().await.expect("flush");
        assert_eq!(volume.pending_blocks(), 0);
        // After upload, reads come from chunks; a partial overwrite keeps the rest.
        volume.write(BLOCK, b"hello").await.expect("write");
        let mut expected = data.clone();
        expected[(BLOCK / 2) as usize..(BLOCK / 2) as usize + 5].copy_from_slice(b"hello");
        assert_eq!(
            volume.read(BLOCK / 2, data.len()).await.expect("read"),
            expected
        );
        assert!(
            volume.read(16 * BLOCK - 1, 2).await.is_err(),
            "reads past the end are refused"
        );
    }

    #[tokio::test]
    async fn a_pass_is_due_a_moment_after_a_write_and_the_lag_shows_it() {
        let setup = Setup::new(Arc::new(ObjectBlobStore::memory()));
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 16 * BLOCK);
        assert!(!volume.pass_due(), "nothing to upload");
        assert_eq!(volume.lag(), Lag::default());
        volume
            .write(0, &pattern(BLOCK as usize, 1))
            .await
            .expect("write");
        assert!(!volume.pass_due(), "written just now");
        assert_eq!(volume.lag().bytes, BLOCK);
        tokio::time::sleep(CUT_AFTER).await;
        assert!(volume.pass_due(), "written a moment ago");
        assert!(volume.lag().ms >= CUT_AFTER.as_millis() as u64);
        volume.upload().await.expect("upload");
        assert!(!volume.pass_due(), "all uploaded");
        assert_eq!(volume.lag(), Lag::default());
    }

    /// A setup over a memory store whose every call takes `ms` milliseconds, and the
    /// memory store itself (what a fresh host would find).
    fn slow_setup(ms: u64) -> (Arc<dyn BlobStore>, Setup) {
        let memory: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let slow: Arc<dyn BlobStore> = Arc::new(FaultInjecting::new(
            memory.clone(),
            0,
            Duration::from_millis(ms),
        ));
        (memory, Setup::new(slow))
    }

    /// The value a test block holds (`pattern(BLOCK, value)`), or None when it holds
    /// anything else (a torn block).
    fn value_of(block: &[u8]) -> Option<u8> {
        let value = *block.first()?;
        (block == pattern(block.len(), value).as_slice()).then_some(value)
    }

    /// What a fresh host given only `store` reads of blocks `0..count` of volume `v`.
    async fn values_in_store(store: &Arc<dyn BlobStore>, count: u64) -> Vec<Option<u8>> {
        let host = Setup::new(store.clone());
        let engine = host.engine();
        engine.recover().await.expect("recover");
        let volume = engine.open_volume("v").expect("open");
        let mut values = Vec::new();
        for block in 0..count {
            let bytes = volume
                .read(block * BLOCK, BLOCK as usize)
                .await
                .expect("read");
            values.push(value_of(&bytes));
        }
        values
    }

    #[tokio::test]
    async fn a_pass_stores_the_volume_as_it_was_at_its_cut() {
        // Puts take 100 ms: the pass reads its first blocks, then waits on the store
        // while the rest are rewritten.
        let (memory, setup) = slow_setup(100);
        let engine = setup.engine();
        let blocks = 4 * UPLOAD_PARALLELISM as u64;
        let volume = new_volume(&engine, "v", blocks * BLOCK);
        for block in 0..blocks {
            volume
                .write(block * BLOCK, &pattern(BLOCK as usize, 1))
                .await
                .expect("write");
        }
        let pass = tokio::spawn({
            let volume = volume.clone();
            async move { volume.upload().await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        for block in 0..blocks {
            // Half of each block, so a block read between two writes would be torn.
            volume
                .write(block * BLOCK, &pattern(BLOCK as usize / 2, 2))
                .await
                .expect("rewrite");
        }
        pass.await.expect("join").expect("pass");
        let stored = values_in_store(&memory, blocks).await;
        assert!(
            stored.iter().all(|v| *v == Some(1)),
            "the store holds the volume as it was at the cut: {stored:?}"
        );
        // The rewrites stay for the next pass, and reads see them.
        let local = volume.read(0, 4).await.expect("read");
        assert_eq!(local, pattern(4, 2));
        assert!(volume.pending_blocks() as u64 == blocks);
        volume.upload().await.expect("second pass");
        let stored = values_in_store(&memory, blocks).await;
        assert!(
            stored.iter().all(|v| v.is_none()),
            "rewritten halves: {stored:?}"
        );
    }

    /// A writer that orders its writes as a journal does (data blocks, then a commit
    /// record naming them) while passes run beside it: every state the store ever
    /// publishes is one the writer went through, so a commit record is never newer than
    /// the data it names and no block is torn.
    #[tokio::test]
    async fn every_published_state_is_one_the_volume_went_through() {
        let (memory, setup) = slow_setup(20);
        let engine = setup.engine();
        const DATA: u64 = 12;
        let volume = new_volume(&engine, "v", (DATA + 1) * BLOCK);
        // Published once before the writer starts: every check finds the volume.
        engine.publish("v").await.expect("publish");
        let stop = Arc::new(AtomicBool::new(false));
        let uploader = tokio::spawn({
            let (volume, stop) = (volume.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    volume.upload().await.expect("pass");
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..5))).await;
                }
            }
        });
        let mut checks = 0;
        for value in 1..=40u8 {
            for block in 0..DATA {
                volume
                    .write(block * BLOCK, &pattern(BLOCK as usize, value))
                    .await
                    .expect("data");
                tokio::task::yield_now().await;
            }
            volume.fsync().await.expect("fsync");
            volume
                .write(DATA * BLOCK, &pattern(BLOCK as usize, value))
                .await
                .expect("commit record");
            if value % 8 == 0 {
                let stored = values_in_store(&memory, DATA + 1).await;
                checks += 1;
                let commit = stored[DATA as usize];
                for (block, data) in stored[..DATA as usize].iter().enumerate() {
                    assert!(
                        data.is_some() || commit.is_none(),
                        "block {block} torn: {stored:?}"
                    );
                    assert!(
                        *data >= commit,
                        "commit record {commit:?} newer than block {block} ({data:?}): {stored:?}"
                    );
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        uploader.await.expect("uploader");
        assert_eq!(checks, 5);
    }

    #[tokio::test]
    async fn a_pass_stores_a_partial_block_whole() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        let mut expected = pattern(BLOCK as usize, 1);
        volume.write(0, &expected).await.expect("write");
        volume.upload().await.expect("pass");
        // Reopened (a restart: nothing of the block left in staging), then
        // sector-aligned writes into the stored block: it is partial in staging.
        drop(volume);
        engine.discard_staging("v").expect("no staging");
        let engine = setup.engine();
        let volume = engine.open_volume("v").expect("reopen");
        volume.write(1024, &[9u8; 512]).await.expect("write");
        volume.write(8192, &[7u8; 4096]).await.expect("write");
        expected[1024..1536].fill(9);
        expected[8192..12288].fill(7);
        assert_eq!(
            volume.read(0, BLOCK as usize).await.expect("read"),
            expected
        );
        volume.upload().await.expect("pass");
        assert_eq!(
            volume.read(0, BLOCK as usize).await.expect("read"),
            expected
        );
        // Staging never held the block whole: a later write into it starts from the
        // stored block, not from what staging has.
        volume.write(2048, &[5u8; 512]).await.expect("write");
        expected[2048..2560].fill(5);
        assert_eq!(
            volume.read(0, BLOCK as usize).await.expect("read"),
            expected
        );
        volume.upload().await.expect("pass");
        let host = Setup::new(store);
        let fresh = host.engine();
        fresh.recover().await.expect("recover");
        let copy = fresh.open_volume("v").expect("open");
        assert_eq!(copy.read(0, BLOCK as usize).await.expect("read"), expected);
    }

    #[tokio::test]
    async fn a_store_fsync_returns_with_the_writes_in_the_store_and_shares_passes() {
        let (memory, setup) = slow_setup(20);
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 16 * BLOCK);
        volume.set_durability(Durability::Store);
        volume
            .write(0, &pattern(BLOCK as usize, 7))
            .await
            .expect("write");
        volume.fsync().await.expect("fsync");
        assert_eq!(values_in_store(&memory, 1).await, vec![Some(7)]);
        // Eight writers fsync at once: they share passes (one running, one after it).
        let before = volume.passes.cut.load(Ordering::SeqCst);
        let writers: Vec<_> = (0..8u64)
            .map(|i| {
                let volume = volume.clone();
                tokio::spawn(async move {
                    volume
                        .write((i + 1) * BLOCK, &pattern(BLOCK as usize, 8))
                        .await
                        .expect("write");
                    volume.fsync().await.expect("fsync");
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("join");
        }
        let passes = volume.passes.cut.load(Ordering::SeqCst) - before;
        assert!((1..=3).contains(&passes), "{passes} passes for 8 fsyncs");
        assert!(values_in_store(&memory, 9).await[1..]
            .iter()
            .all(|v| *v == Some(8)));
    }

    /// A memory store that counts the calls it gets, as the store and the setup over it.
    fn counting_setup() -> (
        Arc<FaultInjecting<ObjectBlobStore>>,
        Arc<dyn BlobStore>,
        Setup,
    ) {
        let counting = Arc::new(FaultInjecting::new(
            ObjectBlobStore::memory(),
            0,
            Duration::ZERO,
        ));
        let store: Arc<dyn BlobStore> = counting.clone();
        let setup = Setup::new(store.clone());
        (counting, store, setup)
    }

    /// A store that refuses log segment puts while told to.
    #[derive(Debug)]
    struct RefusingSegments {
        inner: Arc<dyn BlobStore>,
        refuse: AtomicBool,
    }

    #[async_trait::async_trait]
    impl BlobStore for RefusingSegments {
        async fn put(&self, key: &str, data: Bytes) -> Result<(), crate::StoreError> {
            if self.refuse.load(Ordering::SeqCst) && log::parse_key(key).is_some() {
                return Err(crate::StoreError::Injected {
                    operation: "put",
                    key: key.to_string(),
                });
            }
            self.inner.put(key, data).await
        }
        async fn get(&self, key: &str) -> Result<Bytes, crate::StoreError> {
            self.inner.get(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), crate::StoreError> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, crate::StoreError> {
            self.inner.list(prefix).await
        }
        async fn exists(&self, key: &str) -> Result<bool, crate::StoreError> {
            self.inner.exists(key).await
        }
    }

    /// What a fresh host given only `store` reads of volume `v`'s first `len` bytes.
    async fn bytes_in_store(store: &Arc<dyn BlobStore>, len: usize) -> Vec<u8> {
        let host = Setup::new(store.clone());
        let engine = host.engine();
        engine.recover().await.expect("recover");
        let volume = engine.open_volume("v").expect("open");
        volume.read(0, len).await.expect("read")
    }

    async fn segments_in(store: &Arc<dyn BlobStore>) -> usize {
        store.list(&log::prefix("v")).await.expect("list").len()
    }

    #[tokio::test]
    async fn a_store_fsync_sends_the_written_sectors_not_the_blocks() {
        let (counting, store, setup) = counting_setup();
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume.set_durability(Durability::Store);
        let mut expected = [pattern(BLOCK as usize, 1), vec![0; BLOCK as usize]].concat();
        volume
            .write(0, &expected[..BLOCK as usize])
            .await
            .expect("write");
        // The first fsync of an opening stores whole blocks and arms the log.
        volume.fsync().await.expect("fsync");
        let chunks = chunk_count(&store).await;
        assert_eq!(chunks, 1);
        for (round, offset) in [4096u64, BLOCK + 512, 100].into_iter().enumerate() {
            let data = pattern(1000, round as u8 + 10);
            volume.write(offset, &data).await.expect("write");
            expected[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            let before = counting.calls();
            volume.fsync().await.expect("fsync");
            assert_eq!(
                counting.calls() - before,
                1,
                "one segment put, nothing else"
            );
            assert_eq!(bytes_in_store(&store, 2 * BLOCK as usize).await, expected);
        }
        assert_eq!(chunk_count(&store).await, chunks, "no block stored");
        assert_eq!(segments_in(&store).await, 3);
        assert_eq!(volume.lag(), Lag::default(), "all of it is in the store");
        // The log has it: folding it into blocks waits longer than a pass would.
        tokio::time::sleep(CUT_AFTER).await;
        assert!(
            !volume.pass_due(),
            "a fold is due {FOLD_AFTER:?} after the writes"
        );
        // A fsync with nothing written since puts nothing.
        let before = counting.calls();
        volume.fsync().await.expect("fsync");
        assert_eq!(counting.calls() - before, 0);
        // A pass folds the log into blocks; its head makes the segments garbage.
        volume.upload().await.expect("pass");
        for _ in 0..100 {
            if segments_in(&store).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            segments_in(&store).await,
            0,
            "segments deleted after the pass"
        );
        assert_eq!(bytes_in_store(&store, 2 * BLOCK as usize).await, expected);
    }

    #[tokio::test]
    async fn a_store_fsync_after_much_writing_stores_whole_blocks() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let blocks = LOG_LIMIT_BYTES / BLOCK + 8;
        let volume = new_volume(&engine, "v", blocks * BLOCK);
        volume.set_durability(Durability::Store);
        volume.write(0, &[1u8; 512]).await.expect("write");
        volume.fsync().await.expect("arming fsync");
        let data: Vec<u8> = (0..blocks * BLOCK).map(|i| (i / BLOCK) as u8 + 1).collect();
        volume.write(0, &data).await.expect("write");
        volume.fsync().await.expect("fsync");
        assert_eq!(segments_in(&store).await, 0, "no segment over the limit");
        // Every block, and the first pass's block 0.
        assert_eq!(chunk_count(&store).await as u64, blocks + 1);
        assert!(bytes_in_store(&store, data.len()).await == data);
        // The whole pass armed the log again.
        volume.write(0, &[9u8; 512]).await.expect("write");
        volume.fsync().await.expect("fsync");
        assert_eq!(segments_in(&store).await, 1);
    }

    /// Random writes (aligned, unaligned, discards) with a `store` fsync after each
    /// batch and passes running beside them: a fresh host always reads exactly what was
    /// written up to the last fsync.
    #[tokio::test]
    async fn store_fsyncs_lose_nothing_through_the_log_and_the_passes() {
        let (memory, setup) = slow_setup(2);
        let engine = setup.engine();
        let size = 6 * BLOCK as usize;
        let volume = new_volume(&engine, "v", size as u64);
        volume.set_durability(Durability::Store);
        let stop = Arc::new(AtomicBool::new(false));
        let uploader = tokio::spawn({
            let (volume, stop) = (volume.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    volume.upload().await.expect("pass");
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..15))).await;
                }
            }
        });
        let mut model = vec![0u8; size];
        let mut checks = 0;
        for round in 0..60u32 {
            for op in 0..rand::random_range(1..6u32) {
                let seed = (round * 7 + op) as u8;
                match rand::random_range(0..10) {
                    0 => {
                        let first = rand::random_range(0..5) as usize;
                        let (start, end) = (first * BLOCK as usize, (first + 2) * BLOCK as usize);
                        volume
                            .discard(start as u64, (end - start) as u64)
                            .await
                            .expect("discard");
                        model[start..end].fill(0);
                    }
                    1..=5 => {
                        let sectors = size / SECTOR;
                        let start = rand::random_range(0..sectors) * SECTOR;
                        let len = (rand::random_range(1..40) * SECTOR).min(size - start);
                        let data = pattern(len, seed);
                        volume.write(start as u64, &data).await.expect("write");
                        model[start..start + len].copy_from_slice(&data);
                    }
                    _ => {
                        let start = rand::random_range(0..size - 1);
                        let len = rand::random_range(1..5000).min(size - start);
                        let data = pattern(len, seed);
                        volume.write(start as u64, &data).await.expect("write");
                        model[start..start + len].copy_from_slice(&data);
                    }
                }
            }
            volume.fsync().await.expect("fsync");
            if round % 10 == 9 {
                checks += 1;
                assert!(
                    bytes_in_store(&memory, size).await == model,
                    "round {round}: the store lost an fsynced write"
                );
            }
        }
        stop.store(true, Ordering::SeqCst);
        uploader.await.expect("uploader");
        assert_eq!(checks, 6);
    }

    #[tokio::test]
    async fn a_failed_segment_makes_the_next_fsync_store_whole_blocks() {
        let refusing = Arc::new(RefusingSegments {
            inner: Arc::new(ObjectBlobStore::memory()),
            refuse: AtomicBool::new(false),
        });
        let store: Arc<dyn BlobStore> = refusing.clone();
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume.set_durability(Durability::Store);
        volume
            .write(0, &pattern(BLOCK as usize, 1))
            .await
            .expect("write");
        volume.fsync().await.expect("arming fsync");
        volume.write(0, &[2u8; 512]).await.expect("write");
        refusing.refuse.store(true, Ordering::SeqCst);
        assert!(volume.fsync().await.is_err(), "the segment put failed");
        // Still refused: the next fsync does not need a segment.
        volume.write(512, &[3u8; 512]).await.expect("write");
        volume.fsync().await.expect("a whole pass");
        let mut expected = pattern(BLOCK as usize, 1);
        expected[..512].fill(2);
        expected[512..1024].fill(3);
        assert_eq!(bytes_in_store(&store, BLOCK as usize).await, expected);
        // Armed again by that pass: segments from here on.
        refusing.refuse.store(false, Ordering::SeqCst);
        volume.write(1024, &[4u8; 512]).await.expect("write");
        volume.fsync().await.expect("fsync");
        expected[1024..1536].fill(4);
        assert_eq!(segments_in(&store).await, 1);
        assert_eq!(bytes_in_store(&store, BLOCK as usize).await, expected);
    }

    /// Segments of an earlier opening never apply on top of a head published by a later
    /// one (each opening numbers its segments in a new epoch).
    #[tokio::test]
    async fn segments_of_an_earlier_opening_never_apply_over_a_newer_head() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume.set_durability(Durability::Store);
        volume
            .write(0, &pattern(BLOCK as usize, 1))
            .await
            .expect("write");
        volume.fsync().await.expect("arming fsync");
        volume.write(0, &[2u8; 512]).await.expect("write");
        volume.fsync().await.expect("segment");
        assert_eq!(segments_in(&store).await, 1);
        // The storage process restarts (local state kept, the segment still stored),
        // the volume is opened again and the same sector written in `local` mode.
        drop(volume);
        let engine = setup.engine();
        let volume = engine.open_volume("v").expect("reopen");
        volume.write(0, &[3u8; 512]).await.expect("write");
        volume.upload().await.expect("pass");
        let mut expected = pattern(BLOCK as usize, 1);
        expected[..512].fill(3);
        assert_eq!(
            bytes_in_store(&store, BLOCK as usize).await,
            expected,
            "the old segment (2s) was applied over the newer head"
        );
    }

    #[tokio::test]
    async fn a_restore_leaves_no_segment_that_applies_over_the_restored_head() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume.set_durability(Durability::Store);
        volume
            .write(0, &pattern(BLOCK as usize, 1))
            .await
            .expect("write");
        engine
            .checkpoint(&volume, "v1", None)
            .await
            .expect("checkpoint");
        volume.write(0, &[2u8; 512]).await.expect("write");
        volume.fsync().await.expect("arming fsync");
        volume.write(512, &[3u8; 512]).await.expect("write");
        volume.fsync().await.expect("segment");
        engine.restore(&volume, "v1").await.expect("restore");
        assert_eq!(
            bytes_in_store(&store, BLOCK as usize).await,
            pattern(BLOCK as usize, 1)
        );
        volume.write(4096, &[4u8; 512]).await.expect("write");
        volume.fsync().await.expect("fsync after restore");
        let mut expected = pattern(BLOCK as usize, 1);
        expected[4096..4608].fill(4);
        assert_eq!(bytes_in_store(&store, BLOCK as usize).await, expected);
    }

    #[tokio::test]
    async fn a_pass_that_adds_no_version_puts_its_chunks_and_the_head_alone() {
        let (counting, store, setup) = counting_setup();
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume
            .write(0, &pattern(BLOCK as usize, 1))
            .await
            .expect("write");
        volume.upload().await.expect("pass");
        let before = counting.calls();
        volume
            .write(BLOCK, &pattern(BLOCK as usize, 2))
            .await
            .expect("write");
        volume.upload().await.expect("pass");
        assert_eq!(counting.calls() - before, 2, "one chunk and the head");
        assert_eq!(values_in_store(&store, 2).await, vec![Some(1), Some(2)]);
    }

    #[tokio::test]
    async fn a_host_lost_in_the_middle_of_a_publication_recovers_a_consistent_state() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume
            .write(0, &pattern(BLOCK as usize, 1))
            .await
            .expect("write");
        volume.upload().await.expect("pass");
        let before = store
            .get("volumes/v/manifest.json")
            .await
            .expect("manifest");
        engine
            .checkpoint(&volume, "v1", None)
            .await
            .expect("checkpoint");
        volume
            .write(BLOCK, &pattern(BLOCK as usize, 2))
            .await
            .expect("write");
        volume.upload().await.expect("pass");
        // Lost after the new head went up, before the manifest naming it did.
        store
            .put("volumes/v/manifest.json", before)
            .await
            .expect("put back");
        // And a volume whose first manifest went up without any head.
        let ghost = engine.meta().volume_manifest("v").expect("manifest");
        let ghost = crate::meta::VolumeManifest {
            id: "ghost".into(),
            ..ghost
        };
        store
            .put("volumes/ghost/manifest.json", json(&ghost).expect("json"))
            .await
            .expect("put");
        let host = Setup::new(store.clone());
        let fresh = host.engine();
        let found = fresh.recover().await.expect("recover");
        assert_eq!(found, ["v"], "the ghost is skipped, the rest recovers");
        let copy = fresh.open_volume("v").expect("open");
        assert_eq!(
            copy.read(0, 2 * BLOCK as usize).await.expect("read"),
            [pattern(BLOCK as usize, 1), pattern(BLOCK as usize, 2)].concat(),
            "the newest head, not the older one the manifest named"
        );
    }

    #[tokio::test]
    async fn a_discard_reaches_the_store_in_order_with_the_writes() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume
            .write(0, &pattern(2 * BLOCK as usize, 3))
            .await
            .expect("write");
        volume.upload().await.expect("pass");
        volume.discard(0, BLOCK).await.expect("discard");
        // Not in the store until a pass takes it; read as zeros at once.
        assert_eq!(volume.read(0, 8).await.expect("read"), vec![0u8; 8]);
        let host = Setup::new(store.clone());
        let fresh = host.engine();
        fresh.recover().await.expect("recover");
        let before = fresh.open_volume("v").expect("open");
        assert_eq!(before.read(0, 8).await.expect("read"), pattern(8, 3));
        volume.upload().await.expect("pass");
        assert_eq!(values_in_store(&store, 2).await, vec![None, Some(3)]);
        let host = Setup::new(store);
        let fresh = host.engine();
        fresh.recover().await.expect("recover");
        let after = fresh.open_volume("v").expect("open");
        assert_eq!(after.read(0, 8).await.expect("read"), vec![0u8; 8]);
    }

    #[tokio::test]
    async fn uploaded_blocks_are_durable_without_an_fsync() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let data = [pattern(BLOCK as usize, 3), pattern(BLOCK as usize, 5)].concat();
        {
            let engine = setup.engine();
            let volume = new_volume(&engine, "v", 16 * BLOCK);
            volume
                .write(0, &data[..BLOCK as usize])
                .await
                .expect("write");
            volume
                .write(BLOCK, &pattern(BLOCK as usize, 4))
                .await
                .expect("write");
            volume
                .write(BLOCK, &data[BLOCK as usize..])
                .await
                .expect("write");
            let stats = volume.upload().await.expect("upload");
            assert_eq!(stats.blocks, 2);
            assert_eq!(chunk_count(&store).await, 2);
            assert_eq!(volume.pending_blocks(), 0);
            // Nothing left for an fsync to record.
            volume.fsync().await.expect("fsync");
            assert!(engine.meta().staged_blocks("v").expect("staged").is_empty());
        }
        // A crash with no fsync ever: the blocks come from the store.
        std::fs::remove_dir_all(setup.dir.path().join("staging")).expect("rm staging");
        let engine = setup.engine();
        let volume = engine.open_volume("v").expect("reopen");
        assert_eq!(volume.read(0, data.len()).await.expect("read"), data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn first_writes_into_one_block_at_once_are_all_kept() {
        let setup = Setup::new(Arc::new(ObjectBlobStore::memory()));
        let engine = setup.engine();
        let blocks = 32u64;
        let volume = new_volume(&engine, "v", blocks * BLOCK);
        // Half the blocks have a stored chunk (filled from it), half are new (holes).
        let old = pattern((blocks * BLOCK) as usize, 9);
        for block in (0..blocks).step_by(2) {
            let at = (block * BLOCK) as usize;
            volume
                .write(block * BLOCK, &old[at..at + BLOCK as usize])
                .await
                .expect("write");
        }
        volume.flush_all().await.expect("flush");
        // Pieces not aligned to sectors: the first write into each block fills it
        // (aligned ones would leave it partial and fill nothing). Several rounds, as
        // the race needs two writers in one block's fill at once.
        let piece = 1000u64;
        for round in 0..8u8 {
            // Fill every uploaded block from its chunk, not from staging.
            volume.discard_pending().expect("forget staging");
            let new = pattern((blocks * BLOCK) as usize, 77 + round);
            let writes = (0..(blocks * BLOCK).div_ceil(piece)).map(|n| {
                let volume = volume.clone();
                let start = n * piece;
                let end = (start + piece).min(blocks * BLOCK);
                let bytes = new[start as usize..end as usize].to_vec();
                tokio::spawn(async move { volume.write(start, &bytes).await })
            });
            for write in futures_util::future::join_all(writes).await {
                write.expect("join").expect("write");
            }
            assert!(
                volume.read(0, new.len()).await.expect("read") == new,
                "a concurrent fill undid a write"
            );
        }
    }

    #[tokio::test]
    async fn partial_writes_after_discard_and_restore_see_the_right_rest() {
        let setup = Setup::new(Arc::new(ObjectBlobStore::memory()));
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 8 * BLOCK);
        let first = pattern(4 * BLOCK as usize, 1);
        volume.write(0, &first).await.expect("write");
        volume.flush_all().await.expect("flush");
        engine
            .checkpoint(&volume, "v1", None)
            .await
            .expect("checkpoint");
        // Block 0 uploaded (its staging kept), then discarded: the rest reads as zeros.
        volume.discard(0, BLOCK).await.expect("discard");
        volume.write(10, b"x").await.expect("write");
        let mut expected = vec![0u8; BLOCK as usize];
        expected[10] = b'x';
        assert_eq!(
            volume.read(0, BLOCK as usize).await.expect("read"),
            expected
        );
        // Block 1 present in staging, then discarded before any upload.
        volume
            .write(BLOCK, &pattern(BLOCK as usize, 2))
            .await
            .expect("write");
        volume.discard(BLOCK, BLOCK).await.expect("discard");
        volume.write(BLOCK + 5, b"y").await.expect("write");
        let mut expected = vec![0u8; BLOCK as usize];
        expected[5] = b'y';
        assert_eq!(
            volume.read(BLOCK, BLOCK as usize).await.expect("read"),
            expected
        );
        // Block 3 in staging, discarded, then one aligned sector: the rest reads as
        // zeros (not the stale staging bytes), before and after the fsync.
        volume
            .write(3 * BLOCK, &pattern(BLOCK as usize, 4))
            .await
            .expect("write");
        volume.discard(3 * BLOCK, BLOCK).await.expect("discard");
        volume
            .write(3 * BLOCK + 512, &[6u8; 512])
            .await
            .expect("write");
        let mut expected = vec![0u8; BLOCK as usize];
        expected[512..1024].fill(6);
        assert_eq!(
            volume.read(3 * BLOCK, BLOCK as usize).await.expect("read"),
            expected
        );
        volume.fsync().await.expect("fsync");
        assert_eq!(
            volume.read(3 * BLOCK, BLOCK as usize).await.expect("read"),
            expected
        );
        // Block 2 rewritten and uploaded, then the volume restored to v1: a partial
        // write keeps v1's bytes around it, not the abandoned ones in staging.
        volume
            .write(2 * BLOCK, &pattern(BLOCK as usize, 3))
            .await
            .expect("write");
        volume.flush_all().await.expect("flush");
        engine.restore(&volume, "v1").await.expect("restore");
        volume.write(2 * BLOCK, b"z").await.expect("write");
        let mut expected = first[2 * BLOCK as usize..3 * BLOCK as usize].to_vec();
        expected[0] = b'z';
        assert_eq!(
            volume.read(2 * BLOCK, BLOCK as usize).await.expect("read"),
            expected
        );
    }

    #[test]
    fn sectors_track_runs() {
        let block = 64 * SECTOR;
        let mut sectors = Sectors::none(block);
        assert_eq!(sectors.runs(0, block, false), vec![0..block]);
        sectors.add(2 * SECTOR, 3 * SECTOR);
        sectors.add(63 * SECTOR, SECTOR);
        assert_eq!(
            sectors.runs(0, block, true),
            vec![2 * SECTOR..5 * SECTOR, 63 * SECTOR..block]
        );
        assert_eq!(
            sectors.runs(0, block, false),
            vec![0..2 * SECTOR, 5 * SECTOR..63 * SECTOR]
        );
        // Unaligned ranges are clipped to themselves.
        assert_eq!(
            sectors.runs(2 * SECTOR + 7, 100, true),
            vec![2 * SECTOR + 7..2 * SECTOR + 107]
        );
        assert!(!sectors.all(block));
        sectors.add(0, block);
        assert!(sectors.all(block));
    }

    /// A setup on a `file://` store (and the store's directory) with a volume whose
    /// first `blocks` blocks are stored, not in staging.
    async fn stored_volume(
        blocks: u64,
        seed: u8,
    ) -> (Setup, tempfile::TempDir, Arc<Engine>, Arc<Volume>, Vec<u8>) {
        let store_dir = tempfile::tempdir().expect("dir");
        let url = format!("file://{}", store_dir.path().display());
        let setup = Setup::new(Arc::new(ObjectBlobStore::from_url(&url).expect("store")));
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 16 * BLOCK);
        let data = pattern((blocks * BLOCK) as usize, seed);
        volume.write(0, &data).await.expect("write");
        volume.flush_all().await.expect("flush");
        volume.discard_pending().expect("forget staging");
        // What staging still has of them must never be read: make it garbage.
        volume
            .staging_file
            .write_all_at(&vec![0xee; data.len()], 0)
            .expect("scribble");
        (setup, store_dir, engine, volume, data)
    }

    #[tokio::test]
    async fn a_stored_block_overwritten_in_aligned_pieces_is_never_read() {
        let (setup, store_dir, engine, volume, _) = stored_volume(2, 21).await;
        engine.settled().await;
        // Without its chunks (in the store and the cache), any read of the old bytes fails.
        std::fs::remove_dir_all(store_dir.path().join("chunks")).expect("rm chunks");
        std::fs::remove_dir_all(setup.dir.path().join("cache")).expect("rm cache");
        let new = pattern(BLOCK as usize, 99);
        let piece = BLOCK as usize / 8;
        for n in (0..8).rev() {
            volume
                .write((n * piece) as u64, &new[n * piece..(n + 1) * piece])
                .await
                .expect("an aligned piece needs nothing from the chunk");
        }
        volume.fsync().await.expect("block 0 is whole in staging");
        assert_eq!(volume.read(0, BLOCK as usize).await.expect("read"), new);
        // Block 1 only partly overwritten: the fsync needs its chunk, which is gone.
        volume.write(BLOCK, &new[..piece]).await.expect("write");
        assert!(volume.fsync().await.is_err(), "completed without its chunk");
    }

    #[tokio::test]
    async fn partial_blocks_read_right_and_are_whole_after_fsync_and_a_crash() {
        let (setup, _store_dir, engine, volume, old) = stored_volume(3, 31).await;
        let mut expected = old.clone();
        let at = |block: u64, byte: usize| (block * BLOCK) as usize + byte;
        // Block 0: aligned sectors (partial: reads mix staging and the chunk), then an
        // unaligned write (the rest comes in first).
        volume
            .write(2 * SECTOR as u64, &[7u8; 2 * SECTOR])
            .await
            .expect("write");
        expected[2 * SECTOR..4 * SECTOR].fill(7);
        assert_eq!(
            volume.read(0, expected.len()).await.expect("read"),
            expected
        );
        volume.write(5000, b"unaligned").await.expect("write");
        expected[5000..5009].copy_from_slice(b"unaligned");
        // Block 1: unaligned first (filled whole), then aligned.
        volume.write(BLOCK + 3, b"odd").await.expect("write");
        expected[at(1, 3)..at(1, 6)].copy_from_slice(b"odd");
        volume
            .write(BLOCK + 8 * SECTOR as u64, &[9u8; SECTOR])
            .await
            .expect("write");
        expected[at(1, 8 * SECTOR)..at(1, 9 * SECTOR)].fill(9);
        // Block 2: aligned only, still partial at the fsync.
        volume
            .write(2 * BLOCK, &[5u8; SECTOR])
            .await
            .expect("write");
        expected[at(2, 0)..at(2, SECTOR)].fill(5);
        assert_eq!(
            volume.read(0, expected.len()).await.expect("read"),
            expected
        );
        volume.fsync().await.expect("fsync");
        assert_eq!(
            volume.read(0, expected.len()).await.expect("read"),
            expected
        );
        // Crash: staging alone must give the recorded blocks back whole.
        drop(volume);
        drop(engine);
        let engine = setup.engine_with(Arc::new(ObjectBlobStore::memory()));
        let volume = engine.open_volume("v").expect("reopen");
        assert_eq!(volume.pending_blocks(), 3);
        assert_eq!(
            volume.read(0, expected.len()).await.expect("read"),
            expected
        );
    }

    #[tokio::test]
    async fn uploaded_blocks_give_their_staging_space_back() {
        use std::os::unix::fs::MetadataExt;
        let setup = Setup::new(Arc::new(ObjectBlobStore::memory()));
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 512 * BLOCK);
        let blocks = STAGING_SLACK_BLOCKS as u64 + 32;
        let data = pattern((blocks * BLOCK) as usize, 5);
        volume.write(0, &data).await.expect("write");
        volume.fsync().await.expect("fsync");
        let allocated = || {
            std::fs::metadata(&volume.staging_path)
                .expect("stat")
                .blocks()
                * 512
        };
        assert!(
            allocated() >= blocks * BLOCK,
            "staged: {} bytes",
            allocated()
        );
        volume.flush_all().await.expect("upload");
        assert!(
            allocated() < BLOCK,
            "still allocated after upload: {}",
            allocated()
        );
        // The bytes now come from the chunks, unchanged; new writes stage again.
        assert_eq!(volume.read(0, data.len()).await.expect("read"), data);
        volume.write(BLOCK + 7, b"again").await.expect("write");
        assert_eq!(volume.read(BLOCK + 7, 5).await.expect("read"), b"again");
    }

    #[tokio::test]
    async fn fsynced_writes_survive_a_crash_and_a_lost_host() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let data = pattern(5 * BLOCK as usize + 123, 7);
        {
            let engine = setup.engine();
            engine
                .meta()
                .create_volume("v", 64 * BLOCK, BLOCK)
                .expect("create");
            let volume = engine.open_volume("v").expect("open");
            volume.write(3, &data).await.expect("write");
            volume.fsync().await.expect("fsync");
            // Crash: the process dies before any upload.
        }
        {
            let engine = setup.engine();
            let volume = engine.open_volume("v").expect("reopen");
            assert_eq!(
                volume.pending_blocks(),
                6,
                "staged blocks come back after a crash"
            );
            assert_eq!(volume.read(3, data.len()).await.expect("read"), data);
            volume.flush_all().await.expect("upload");
            assert!(engine.meta().staged_blocks("v").expect("staged").is_empty());
            engine.settled().await;
        }
        // The host's staging and cache are gone; metadata and the store remain.
        std::fs::remove_dir_all(setup.dir.path().join("staging")).expect("rm staging");
        std::fs::remove_dir_all(setup.dir.path().join("cache")).expect("rm cache");
        let engine = setup.engine();
        let volume = engine.open_volume("v").expect("reopen");
        assert_eq!(
            volume.read(3, data.len()).await.expect("read from store"),
            data
        );
    }

    /// An fsync records a block in the metadata db once (later fsyncs of it commit no
    /// transaction) and again after a pass settled it.
    #[tokio::test]
    async fn a_block_is_recorded_once_per_stay_in_staging_and_survives_a_crash() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume
            .write(0, &pattern(BLOCK as usize, 1))
            .await
            .expect("write");
        volume.fsync().await.expect("fsync");
        volume.write(0, &[2u8; 512]).await.expect("write");
        volume.fsync().await.expect("fsync, nothing new to record");
        assert_eq!(engine.meta().staged_blocks("v").expect("staged"), [0]);
        // A pass settles it; written again, it must be recorded again.
        volume.upload().await.expect("pass");
        assert!(engine.meta().staged_blocks("v").expect("staged").is_empty());
        volume.write(0, &[3u8; 512]).await.expect("write");
        volume.fsync().await.expect("fsync");
        assert_eq!(engine.meta().staged_blocks("v").expect("staged"), [0]);
        // Crash: the process dies before any upload.
        drop(volume);
        let engine = setup.engine();
        let volume = engine.open_volume("v").expect("reopen");
        let mut expected = pattern(BLOCK as usize, 1);
        expected[..512].fill(3);
        assert_eq!(
            volume.read(0, BLOCK as usize).await.expect("read"),
            expected
        );
    }

    #[tokio::test]
    async fn zero_blocks_are_holes_and_equal_blocks_are_stored_once() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        for id in ["a", "b"] {
            engine
                .meta()
                .create_volume(id, 8 * BLOCK, BLOCK)
                .expect("create");
        }
        let (a, b) = (
            engine.open_volume("a").expect("a"),
            engine.open_volume("b").expect("b"),
        );
        a.write(0, &vec![0u8; 2 * BLOCK as usize])
            .await
            .expect("zeros");
        let stats = a.flush_all().await.expect("flush");
        assert_eq!(stats.zero_blocks, 2);
        assert_eq!(chunk_count(&store).await, 0, "zero blocks are never stored");
        let block = pattern(BLOCK as usize, 3);
        a.write(0, &block).await.expect("write");
        b.write(4 * BLOCK, &block).await.expect("write");
        assert!(a.flush_all().await.expect("flush").bytes_stored > 0);
        assert_eq!(
            b.flush_all().await.expect("flush").bytes_stored,
            0,
            "a known chunk is not stored again"
        );
        assert_eq!(
            chunk_count(&store).await,
            1,
            "identical blocks share one chunk"
        );
    }

    #[tokio::test]
    async fn checkpoint_restore_and_fork_through_the_engine() {
        let setup = Setup::new(Arc::new(ObjectBlobStore::memory()));
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 8 * BLOCK);
        volume.write(0, b"first").await.expect("write");
        volume.flush_all().await.expect("flush");
        engine
            .meta()
            .checkpoint("v", "v0", None)
            .expect("checkpoint");
        volume.write(0, b"second").await.expect("write");
        volume.flush_all().await.expect("flush");
        engine.meta().fork("v", "v0", "child").expect("fork");
        engine.meta().restore("v", "v0").expect("restore");
        volume.reload_map().expect("reload");
        assert_eq!(volume.read(0, 5).await.expect("read"), b"first");
        let child = engine.open_volume("child").expect("child");
        assert_eq!(child.read(0, 5).await.expect("read"), b"first");
        child.write(0, b"CHILD").await.expect("write");
        child.flush_all().await.expect("flush");
        assert_eq!(
            volume.read(0, 5).await.expect("read"),
            b"first",
            "fork diverges"
        );
    }

    #[tokio::test]
    async fn a_host_whose_volume_was_taken_over_publishes_nothing_more() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let (old_host, new_host) = (Setup::new(store.clone()), Setup::new(store.clone()));
        let old = old_host.engine();
        let new = new_host.engine();
        old.set_fenced(true);
        new.set_fenced(true);
        let stale = new_volume(&old, "v", 16 * BLOCK);
        old.publish("v").await.expect("the first head");
        stale.write(0, b"before the take").await.expect("write");
        stale.flush_all().await.expect("flush");
        // The new owner takes it at epoch 2 and writes.
        assert!(new.import_volume_at("v", Some(2)).await.expect("take"));
        let owned = new.open_volume("v").expect("open");
        assert_eq!(owned.read(0, 15).await.expect("read"), b"before the take");
        owned.write(0, b"the new owner's").await.expect("write");
        owned.flush_all().await.expect("flush");
        // The old host wakes up and writes: its publications and store fsyncs are
        // refused, and the store keeps the new owner's state.
        stale
            .write(0, b"a stale write!!")
            .await
            .expect("local write");
        assert!(matches!(stale.flush_all().await, Err(FsError::Fenced(_))));
        stale.set_durability(Durability::Store);
        assert!(matches!(
            stale.sync_to_store().await,
            Err(FsError::Fenced(_))
        ));
        let head: crate::meta::LayerRecord = parse(
            &store.get("volumes/v/head.json").await.expect("head"),
            "head",
        )
        .expect("parse");
        assert_eq!(head.epoch, Some(2));
        // A third host reads the new owner's bytes; a fresh old-host process (no tag in
        // memory, epoch 1 in its metadata) is refused by the epoch in the store.
        let third_host = Setup::new(store.clone());
        let third = third_host.engine();
        assert!(third.import_volume("v").await.expect("read"));
        let seen = third.open_volume("v").expect("open");
        assert_eq!(seen.read(0, 15).await.expect("read"), b"the new owner's");
        let restarted = old_host.engine();
        restarted.set_fenced(true);
        assert!(matches!(
            restarted.publish("v").await,
            Err(FsError::Fenced(_))
        ));
        // The new owner goes on publishing.
        owned.write(BLOCK, b"more").await.expect("write");
        owned.flush_all().await.expect("the owner publishes");
    }

    #[tokio::test]
    async fn a_fresh_host_recovers_volumes_and_versions_from_the_store() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let first = Setup::new(store.clone());
        {
            let engine = first.engine();
            engine
                .meta()
                .create_volume("v", 16 * BLOCK, BLOCK)
                .expect("create");
            let volume = engine.open_volume("v").expect("open");
            volume.write(0, b"version zero").await.expect("write");
            engine
                .checkpoint(&volume, "v0", Some("first"))
                .await
                .expect("checkpoint");
            volume.write(0, b"version one!").await.expect("write");
            volume
                .write(5 * BLOCK, &pattern(BLOCK as usize, 9))
                .await
                .expect("write");
            engine
                .checkpoint(&volume, "v1", None)
                .await
                .expect("checkpoint");
            volume.write(0, b"live head...").await.expect("write");
            volume.flush_all().await.expect("flush");
            engine.fork("v", "v0", "child").await.expect("fork");
        }
        // A second host: empty data directory, same store.
        let second = Setup::new(store.clone());
        let engine = second.engine();
        let mut found = engine.recover().await.expect("recover");
        found.sort();
        assert_eq!(found, ["child", "v"]);
        let volume = engine.open_volume("v").expect("open");
        assert_eq!(volume.read(0, 12).await.expect("read"), b"live head...");
        assert_eq!(
            volume.read(5 * BLOCK, BLOCK as usize).await.expect("read"),
            pattern(BLOCK as usize, 9)
        );
        let versions: Vec<String> = engine
            .meta()
            .versions("v")
            .expect("versions")
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(versions, ["v0", "v1"]);
        engine.restore(&volume, "v0").await.expect("restore");
        assert_eq!(volume.read(0, 12).await.expect("read"), b"version zero");
        let child = engine.open_volume("child").expect("child");
        assert_eq!(child.read(0, 12).await.expect("read"), b"version zero");
    }

    #[tokio::test]
    async fn gc_frees_exactly_what_is_unreferenced() {
        let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::memory());
        let setup = Setup::new(store.clone());
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 16 * BLOCK);
        let (kept, dropped, shared) = (
            pattern(BLOCK as usize, 1),
            pattern(BLOCK as usize, 2),
            pattern(BLOCK as usize, 3),
        );
        volume.write(0, &kept).await.expect("write");
        volume.write(BLOCK, &shared).await.expect("write");
        engine
            .checkpoint(&volume, "v0", None)
            .await
            .expect("checkpoint");
        volume.write(0, &dropped).await.expect("write");
        volume.flush_all().await.expect("flush");
        assert_eq!(chunk_count(&store).await, 3);
        assert_eq!(
            engine.collect_garbage().await.expect("gc").chunks,
            0,
            "everything is referenced"
        );
        // Restoring v0 abandons the head that alone referenced `dropped`.
        engine.restore(&volume, "v0").await.expect("restore");
        let stats = engine.collect_garbage().await.expect("gc");
        assert_eq!((stats.layers, stats.chunks), (1, 1));
        assert!(!store
            .exists(&ChunkId::of(&dropped).key())
            .await
            .expect("exists"));
        assert!(store
            .exists(&ChunkId::of(&kept).key())
            .await
            .expect("exists"));
        assert_eq!(volume.read(0, BLOCK as usize).await.expect("read"), kept);
        engine.delete_volume("v").await.expect("delete");
        let stats = engine.collect_garbage().await.expect("gc");
        assert_eq!(stats.chunks, 2);
        assert_eq!(chunk_count(&store).await, 0);
        assert!(store.list("volumes/").await.expect("list").is_empty());
        assert!(store.list("layers/").await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn restore_drops_unsaved_writes() {
        let setup = Setup::new(Arc::new(ObjectBlobStore::memory()));
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 4 * BLOCK);
        volume.write(0, b"saved").await.expect("write");
        engine
            .checkpoint(&volume, "v0", None)
            .await
            .expect("checkpoint");
        volume.write(0, b"draft").await.expect("write");
        volume.fsync().await.expect("fsync");
        engine.restore(&volume, "v0").await.expect("restore");
        assert_eq!(volume.pending_blocks(), 0);
        assert_eq!(volume.read(0, 5).await.expect("read"), b"saved");
        drop(volume);
        let volume = setup.engine().open_volume("v").expect("reopen");
        assert_eq!(
            volume.read(0, 5).await.expect("read"),
            b"saved",
            "a crash after restore does not bring the draft back"
        );
    }

    #[tokio::test]
    async fn discard_turns_whole_blocks_into_holes() {
        let setup = Setup::new(Arc::new(ObjectBlobStore::memory()));
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 8 * BLOCK);
        let data = pattern(4 * BLOCK as usize, 5);
        volume.write(0, &data).await.expect("write");
        volume.flush_all().await.expect("flush");
        volume.write(2 * BLOCK, b"staged").await.expect("write");
        // From the middle of block 0 to the middle of block 3.
        volume.discard(BLOCK / 2, 3 * BLOCK).await.expect("discard");
        let mut expected = data.clone();
        expected[(BLOCK / 2) as usize..(BLOCK / 2 + 3 * BLOCK) as usize].fill(0);
        assert!(volume.read(0, data.len()).await.expect("read") == expected);
        volume.flush_all().await.expect("flush");
        assert!(
            !engine.meta().block_map("v").expect("map").contains_key(&1),
            "block 1 is a hole once a pass took the discard"
        );
        drop(volume);
        let volume = setup.engine().open_volume("v").expect("reopen");
        assert!(volume.read(0, data.len()).await.expect("read") == expected);
        // Discarding the whole (mostly empty) volume is cheap and harmless.
        volume.discard(0, 8 * BLOCK).await.expect("discard all");
        assert_eq!(volume.read(0, 16).await.expect("read"), vec![0; 16]);
    }

    #[tokio::test]
    async fn store_faults_lose_nothing() {
        let faulty = FaultInjecting::new(ObjectBlobStore::memory(), 100, Duration::from_millis(1));
        let store: Arc<dyn BlobStore> = Arc::new(Retrying::with_policy(
            faulty,
            RetryPolicy {
                attempts: 30,
                min_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(20),
                attempt_timeout: Duration::from_secs(5),
                deadline: Duration::from_secs(120),
            },
        ));
        let setup = Setup::new(store);
        let engine = setup.engine();
        let volume = new_volume(&engine, "v", 64 * BLOCK);
        let mut expected = vec![0u8; 64 * BLOCK as usize];
        for round in 0..20u64 {
            let offset = (round * 7919 * 97) % (60 * BLOCK);
            let data = pattern((BLOCK + round * 1000) as usize, round as u8);
            volume.write(offset, &data).await.expect("write");
            expected[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            if round % 3 == 0 {
                volume.flush_all().await.expect("flush despite faults");
            }
        }
        volume.flush_all().await.expect("flush");
        engine.settled().await;
        std::fs::remove_dir_all(setup.dir.path().join("cache")).expect("rm cache");
        let engine = setup.engine();
        let volume = engine.open_volume("v").expect("reopen");
        assert!(volume.read(0, expected.len()).await.expect("read") == expected);
    }
}
