//! Errors of SpriteFS. Store errors say whether a retry can help.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store call {operation} on {key} timed out")]
    Timeout {
        operation: &'static str,
        key: String,
    },
    #[error("object store call {operation} on {key} failed")]
    Transient {
        operation: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("object store call {operation} on {key} failed for good")]
    Permanent {
        operation: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("injected fault in {operation} on {key}")]
    Injected {
        operation: &'static str,
        key: String,
    },
    #[error("object store url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object {0} changed since it was read (another writer)")]
    Conflict(String),
    #[error("the object store cannot do a {operation} (on {key})")]
    Unsupported {
        operation: &'static str,
        key: String,
    },
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. } | StoreError::Transient { .. } | StoreError::Injected { .. }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("object store")]
    Store(#[from] StoreError),
    #[error("chunk compression")]
    Compress(#[source] std::io::Error),
    #[error("chunk {chunk} does not match its hash")]
    Corrupt { chunk: String },
    #[error("metadata database")]
    Database(#[from] rusqlite::Error),
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    #[error("version {version} of volume {volume} not found")]
    VersionNotFound { volume: String, version: String },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata object {key}: {message}")]
    Manifest { key: String, message: String },
    #[error("volume {0} is in use on this host: it cannot be imported over")]
    Attached(String),
    #[error("volume {0} belongs to another host now (its head in the object store is newer than this host's): this host's copy is stale and writes nothing more")]
    Fenced(String),
    #[error("garbage collection is off for an object store that other hosts of a cluster write (this host cannot know what their volumes reference)")]
    SharedStore,
    #[error("offset {offset} + {len} is past the end of volume {volume} ({size} bytes)")]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size: u64,
    },
}

impl FsError {
    /// `map_err` adapter for an I/O step on a path.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<std::path::PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> FsError {
        let path = path.into();
        move |source| FsError::Io { what, path, source }
    }
}
