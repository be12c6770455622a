//! The storage service: one process per host that owns the engine, the FUSE mount and
//! the uploader, and answers the daemon over a unix socket (one JSON request and one
//! JSON answer per line). It is separate from the daemon so that a daemon restart never
//! interrupts a running sprite's disk I/O: the FUSE server lives on.

use crate::engine::{Engine, GcStats, Volume};
use crate::error::FsError;
use crate::fuse::VolumeTable;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A request to the storage service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StorageRequest {
    Ping,
    /// Object store calls and errors so far, and what waits to be uploaded.
    Stats,
    /// Creates a volume, empty or (metadata only) from a version of another.
    Create {
        volume: String,
        size: u64,
        block_size: u64,
        from: Option<(String, String)>,
    },
    /// Makes the volume's file appear in the FUSE directory; answers its path.
    Attach {
        volume: String,
        /// When its fsyncs return (an older daemon sends none: local).
        #[serde(default)]
        durability: crate::engine::Durability,
    },
    /// Uploads everything and removes the file from the FUSE directory.
    Detach {
        volume: String,
        /// Uploads nothing and forgets the volume on this host instead: another host
        /// of the cluster owns it now, and what this one still holds is stale.
        #[serde(default)]
        discard: bool,
    },
    /// Uploads everything: when answered, the volume is fully in the object store.
    Flush {
        volume: String,
    },
    Checkpoint {
        volume: String,
        name: String,
        comment: Option<String>,
    },
    Restore {
        volume: String,
        name: String,
    },
    Delete {
        volume: String,
    },
    Gc,
    Versions {
        volume: String,
        /// Also each version's history and the head's (costs a walk of the layers; an
        /// older storage process ignores it and answers without).
        #[serde(default)]
        history: bool,
    },
    /// Stored bytes of a volume and of each of its versions.
    Usage {
        volume: String,
    },
    DeleteVersion {
        volume: String,
        name: String,
    },
    /// Stores a small control-plane record (JSON) under `control/<key>` in the object
    /// store, so a fresh host recovers more than volumes.
    PutRecord {
        key: String,
        value: serde_json::Value,
    },
    DeleteRecord {
        key: String,
    },
    /// Records whose key starts with `prefix`.
    ListRecords {
        prefix: String,
    },
    /// One record (answers `Records` with it, or with none).
    GetRecord {
        key: String,
    },
    /// Whether a volume (and, if named, its version) exists.
    Exists {
        volume: String,
        version: Option<String>,
    },
    /// Reads a volume from the object store as it is there now, replacing what this
    /// host knew of it (a sprite that comes from another host of a cluster). Answers
    /// `Exists`; refused while the volume is attached.
    Import {
        volume: String,
        /// The ownership epoch this host now holds it at: the volume is taken (see
        /// `Engine::import_volume_at`). None: only read (an image another host made).
        #[serde(default)]
        epoch: Option<u64>,
    },
    /// Makes a version readable as the file `<volume>@<version>` in the FUSE directory;
    /// answers its path. The file is a metadata-only fork that is never published, for
    /// a read-only mount (checkpoint views inside sprites).
    AttachVersion {
        volume: String,
        version: String,
    },
    /// Removes what `AttachVersion` made.
    DetachVersion {
        volume: String,
        version: String,
    },
}

/// Name of the read-only view of a version (see `AttachVersion`).
pub fn view_name(volume: &str, version: &str) -> String {
    format!("{volume}@{version}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum StorageResponse {
    Pong {
        pid: u32,
        attached: usize,
    },
    Ok,
    Path {
        path: PathBuf,
    },
    Exists {
        exists: bool,
    },
    Collected {
        layers: usize,
        chunks: usize,
        bytes: u64,
    },
    Versions {
        versions: Vec<crate::meta::VersionRecord>,
        /// The history of the volume's head (its current state), nearest first.
        #[serde(default)]
        current: Vec<String>,
    },
    Records {
        values: Vec<serde_json::Value>,
    },
    Usage {
        usage: crate::engine::VolumeUsage,
        cached_bytes: u64,
        /// While the volume is attached: its durability and how far the store trails it.
        #[serde(default)]
        attached: Option<(crate::engine::Durability, crate::engine::Lag)>,
    },
    Stats {
        stats: StorageStats,
    },
    Error {
        message: String,
    },
}

/// What `Stats` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StorageStats {
    /// Per kind of object store call: (kind, calls, calls that failed after retries).
    pub operations: Vec<(String, u64, u64)>,
    pub retries: u64,
    /// Blocks written on this host and not yet in the object store, all volumes.
    pub pending_blocks: u64,
    pub attached_volumes: u64,
}

/// The state of the storage process.
#[derive(Debug)]
pub struct StorageService {
    engine: Arc<Engine>,
    table: VolumeTable,
    mount_dir: PathBuf,
    attached: Mutex<HashMap<String, Arc<Volume>>>,
    /// Other hosts (a cluster) write the same object store: volumes unknown here are
    /// looked for in the store, and nothing is collected.
    shared: bool,
    /// Usage answers, reused for [`USAGE_TTL`] (listing many large sprites would
    /// otherwise walk every block map each time); dropped when versions change.
    usage: Mutex<HashMap<String, (std::time::Instant, crate::engine::VolumeUsage)>>,
}

/// How long a usage answer may be reused.
const USAGE_TTL: Duration = Duration::from_secs(5);

impl StorageService {
    /// `shared`: other hosts of a cluster write the same object store.
    pub fn new(
        engine: Arc<Engine>,
        table: VolumeTable,
        mount_dir: PathBuf,
        shared: bool,
    ) -> Arc<Self> {
        Arc::new(StorageService {
            engine,
            table,
            mount_dir,
            shared,
            attached: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
        })
    }

    /// A volume's usage, computed at most once per [`USAGE_TTL`].
    fn cached_usage(&self, volume: &str) -> Result<crate::engine::VolumeUsage, FsError> {
        let mut cache = self.usage.lock();
        if let Some((at, usage)) = cache.get(volume) {
            if at.elapsed() < USAGE_TTL {
                return Ok(usage.clone());
            }
        }
        let usage = self.engine.usage(volume)?;
        cache.insert(
            volume.to_string(),
            (std::time::Instant::now(), usage.clone()),
        );
        Ok(usage)
    }

    /// Forgets a volume's usage answer (its versions changed).
    fn usage_changed(&self, volume: &str) {
        self.usage.lock().remove(volume);
    }

    fn attached(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Arc<Volume>>> {
        self.attached.lock()
    }

    /// Detaches and forgets a version view (local metadata only: views are never
    /// published). Nothing to do if there is none.
    fn drop_view(&self, view: &str) -> Result<(), FsError> {
        if self.attached().remove(view).is_some() {
            self.table.detach(view);
        }
        if self.engine.meta().volume(view).is_ok() {
            self.engine.meta().delete_volume(view)?;
            self.engine.forget_published(view);
            self.engine.discard_staging(view)?;
        }
        Ok(())
    }

    fn volume(&self, id: &str) -> Result<Arc<Volume>, FsError> {
        if let Some(volume) = self.attached().get(id) {
            return Ok(volume.clone());
        }
        self.engine.open_volume(id)
    }

    pub async fn handle(&self, request: StorageRequest) -> Result<StorageResponse, FsError> {
        match &request {
            StorageRequest::Checkpoint { volume, .. }
            | StorageRequest::Restore { volume, .. }
            | StorageRequest::DeleteVersion { volume, .. }
            | StorageRequest::Delete { volume }
            | StorageRequest::Create { volume, .. } => self.usage_changed(volume),
            _ => {}
        }
        Ok(match request {
            StorageRequest::Stats => {
                let (operations, retries) = crate::store::STORE_COUNTERS.snapshot();
                let volumes: Vec<Arc<Volume>> = self.attached().values().cloned().collect();
                StorageResponse::Stats {
                    stats: StorageStats {
                        operations,
                        retries,
                        pending_blocks: volumes.iter().map(|v| v.pending_blocks() as u64).sum(),
                        attached_volumes: volumes.len() as u64,
                    },
                }
            }
            StorageRequest::Ping => StorageResponse::Pong {
                pid: std::process::id(),
                attached: self.attached().len(),
            },
            StorageRequest::Create {
                volume,
                size,
                block_size,
                from,
            } => {
                match from {
                    Some((source, version)) => {
                        // Another host of the cluster may have made the source (a
                        // template): its volume comes from the store first.
                        let unknown = self.engine.meta().version(&source, &version).is_err();
                        if unknown && self.shared && !self.attached().contains_key(&source) {
                            self.engine.import_volume(&source).await?;
                        }
                        self.engine.fork(&source, &version, &volume).await?
                    }
                    None => {
                        self.engine
                            .meta()
                            .create_volume(&volume, size, block_size)?;
                        self.engine.publish(&volume).await?;
                    }
                }
                StorageResponse::Ok
            }
            StorageRequest::Attach { volume, durability } => {
                let handle = self.volume(&volume)?;
                handle.set_durability(durability);
                // Blocks staged before a crash go up before anything else happens.
                handle.upload().await?;
                self.table.attach(handle.clone());
                self.attached().insert(volume.clone(), handle);
                StorageResponse::Path {
                    path: self.mount_dir.join(&volume),
                }
            }
            StorageRequest::Detach { volume, discard } => {
                let handle = self.attached().remove(&volume);
                if let Some(handle) = &handle {
                    self.table.detach(&volume);
                    if !discard {
                        handle.flush_all().await?;
                    }
                }
                if discard {
                    drop(handle);
                    if self.engine.meta().volume(&volume).is_ok() {
                        self.engine.meta().delete_volume(&volume)?;
                    }
                    self.engine.forget_published(&volume);
                    self.engine.discard_staging(&volume)?;
                }
                StorageResponse::Ok
            }
            StorageRequest::Flush { volume } => {
                self.volume(&volume)?.flush_all().await?;
                StorageResponse::Ok
            }
            StorageRequest::Checkpoint {
                volume,
                name,
                comment,
            } => {
                let handle = self.volume(&volume)?;
                self.engine
                    .checkpoint(&handle, &name, comment.as_deref())
                    .await?;
                StorageResponse::Ok
            }
            StorageRequest::Restore { volume, name } => {
                let handle = self.volume(&volume)?;
                self.engine.restore(&handle, &name).await?;
                StorageResponse::Ok
            }
            StorageRequest::Delete { volume } => {
                let handle = self.attached().remove(&volume);
                if handle.is_some() {
                    self.table.detach(&volume);
                }
                // Views left by a crash go with their volume.
                let prefix = view_name(&volume, "");
                for view in self.engine.meta().volumes()? {
                    if view.starts_with(&prefix) {
                        self.drop_view(&view)?;
                    }
                }
                self.engine.delete_volume(&volume).await?;
                StorageResponse::Ok
            }
            StorageRequest::AttachVersion { volume, version } => {
                let view = view_name(&volume, &version);
                self.drop_view(&view)?;
                self.engine.meta().fork(&volume, &version, &view)?;
                let handle = self.engine.open_volume(&view)?;
                self.table.attach(handle.clone());
                self.attached().insert(view.clone(), handle);
                StorageResponse::Path {
                    path: self.mount_dir.join(&view),
                }
            }
            StorageRequest::DetachVersion { volume, version } => {
                self.drop_view(&view_name(&volume, &version))?;
                StorageResponse::Ok
            }
            StorageRequest::Gc => {
                if self.shared {
                    return Err(FsError::SharedStore);
                }
                let GcStats {
                    layers,
                    chunks,
                    bytes,
                } = self.engine.collect_garbage().await?;
                StorageResponse::Collected {
                    layers,
                    chunks,
                    bytes,
                }
            }
            StorageRequest::Versions { volume, history } => {
                let (versions, current) = if history {
                    self.engine.meta().lineage(&volume)?
                } else {
                    (
                        self.engine.meta().volume_manifest(&volume)?.versions,
                        Vec::new(),
                    )
                };
                StorageResponse::Versions { versions, current }
            }
            StorageRequest::Usage { volume } => StorageResponse::Usage {
                usage: self.cached_usage(&volume)?,
                cached_bytes: self.engine.cache().size(),
                attached: self
                    .attached()
                    .get(&volume)
                    .map(|handle| (handle.durability(), handle.lag())),
            },
            StorageRequest::DeleteVersion { volume, name } => {
                self.engine.meta().delete_version(&volume, &name)?;
                self.engine.publish(&volume).await?;
                StorageResponse::Ok
            }
            StorageRequest::PutRecord { key, value } => {
                let body = serde_json::to_vec(&value).map_err(|e| FsError::Manifest {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
                self.engine
                    .store()
                    .put(&record_key(&key)?, bytes::Bytes::from(body))
                    .await?;
                StorageResponse::Ok
            }
            StorageRequest::DeleteRecord { key } => {
                self.engine.store().delete(&record_key(&key)?).await?;
                StorageResponse::Ok
            }
            StorageRequest::GetRecord { key } => {
                let key = record_key(&key)?;
                let values = match self.engine.store().get(&key).await {
                    Ok(bytes) => {
                        vec![
                            serde_json::from_slice(&bytes).map_err(|e| FsError::Manifest {
                                key: key.clone(),
                                message: e.to_string(),
                            })?,
                        ]
                    }
                    Err(crate::error::StoreError::NotFound(_)) => Vec::new(),
                    Err(error) => return Err(error.into()),
                };
                StorageResponse::Records { values }
            }
            StorageRequest::ListRecords { prefix } => {
                let mut values = Vec::new();
                for key in self.engine.store().list(&record_key(&prefix)?).await? {
                    let bytes = self.engine.store().get(&key).await?;
                    let value = serde_json::from_slice(&bytes).map_err(|e| FsError::Manifest {
                        key: key.clone(),
                        message: e.to_string(),
                    })?;
                    values.push(value);
                }
                StorageResponse::Records { values }
            }
            StorageRequest::Exists { volume, version } => {
                let known = |engine: &Engine| {
                    let meta = engine.meta();
                    match &version {
                        Some(version) => meta.version(&volume, version).is_ok(),
                        None => meta.volume(&volume).is_ok(),
                    }
                };
                let mut exists = known(&self.engine);
                // Another host of the cluster may have made it (an image, a template).
                if !exists && self.shared && !self.attached().contains_key(&volume) {
                    exists = self.engine.import_volume(&volume).await? && known(&self.engine);
                }
                StorageResponse::Exists { exists }
            }
            StorageRequest::Import { volume, epoch } => {
                if self.attached().contains_key(&volume) {
                    return Err(FsError::Attached(volume));
                }
                let exists = self.engine.import_volume_at(&volume, epoch).await?;
                StorageResponse::Exists { exists }
            }
        })
    }

    /// Looks every `interval` for attached volumes with blocks written
    /// [`crate::engine::CUT_AFTER`] ago and runs a pass for each, concurrently (a slow
    /// store for one volume does not hold back the others; one background pass per
    /// volume at a time).
    pub async fn upload_forever(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let volumes: Vec<Arc<Volume>> = self.attached().values().cloned().collect();
            for volume in volumes {
                if !volume.pass_due() || !volume.claim_background() {
                    continue;
                }
                tokio::spawn(async move {
                    // No fsync first: a stored block is durable once committed, and a
                    // flush of the host's disk for every pass would slow every writer.
                    if let Err(error) = volume.upload().await {
                        tracing::warn!(volume = %volume.id, "background upload failed (will retry): {error}");
                    }
                    volume.background_done();
                });
            }
        }
    }

    /// Collects garbage now and then.
    pub async fn collect_forever(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            match self.engine.collect_garbage().await {
                Ok(stats) if stats.chunks > 0 || stats.layers > 0 => {
                    tracing::info!(
                        layers = stats.layers,
                        chunks = stats.chunks,
                        bytes = stats.bytes,
                        "garbage collected"
                    )
                }
                Ok(_) => {}
                Err(error) => tracing::warn!("garbage collection failed: {error}"),
            }
        }
    }

    /// Flushes every attached volume (on shutdown).
    pub async fn flush_attached(&self) {
        let volumes: Vec<Arc<Volume>> = self.attached().values().cloned().collect();
        for volume in volumes {
            if let Err(error) = volume.flush_all().await {
                tracing::error!(volume = %volume.id, "flush on shutdown failed: {error}");
            }
        }
    }

    /// Serves requests on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = self.clone();
            tokio::spawn(async move { service.connection(stream).await });
        }
    }

    async fn connection(&self, stream: UnixStream) {
        let (reader, mut writer) = stream.into_split();
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let response = match serde_json::from_str::<StorageRequest>(&line) {
                Ok(request) => {
                    self.handle(request)
                        .await
                        .unwrap_or_else(|error| StorageResponse::Error {
                            message: sprite_api::error_chain(&error),
                        })
                }
                Err(error) => StorageResponse::Error {
                    message: format!("malformed request: {error}"),
                },
            };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            if writer.write_all(text.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// Object key of a control-plane record; keys stay inside `control/`.
fn record_key(key: &str) -> Result<String, FsError> {
    if key.split('/').any(|part| part == ".." || part == ".") || key.starts_with('/') {
        return Err(FsError::Manifest {
            key: key.to_string(),
            message: "record keys are relative and stay inside control/".into(),
        });
    }
    Ok(format!("control/{key}"))
}

/// The daemon's side of the storage socket.
#[derive(Debug, Clone)]
pub struct StorageClient {
    socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageClientError {
    #[error("connect to the storage service at {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("talk to the storage service")]
    Io(#[from] std::io::Error),
    #[error("unreadable answer from the storage service")]
    Json(#[from] serde_json::Error),
    #[error("storage service: {0}")]
    Service(String),
}

impl StorageClient {
    pub fn new(socket: &Path) -> Self {
        StorageClient {
            socket: socket.to_path_buf(),
        }
    }

    pub async fn request(
        &self,
        request: &StorageRequest,
    ) -> Result<StorageResponse, StorageClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| StorageClientError::Connect(self.socket.clone(), e))?;
        let (reader, mut writer) = stream.into_split();
        let mut text = serde_json::to_string(request)?;
        text.push('\n');
        writer.write_all(text.as_bytes()).await?;
        let mut lines = BufReader::new(reader).lines();
        let line = lines
            .next_line()
            .await?
            .ok_or_else(|| StorageClientError::Service("closed without an answer".into()))?;
        match serde_json::from_str(&line)? {
            StorageResponse::Error { message } => Err(StorageClientError::Service(message)),
            other => Ok(other),
        }
    }
}
