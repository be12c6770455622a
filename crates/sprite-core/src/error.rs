//! Errors of the sprite lifecycle, with the API kind each maps to.

use sprite_api::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("sprite {0} not found")]
    SpriteNotFound(String),
    #[error("a sprite named {0} already exists")]
    SpriteExists(String),
    #[error("checkpoint {checkpoint} of sprite {sprite} not found")]
    CheckpointNotFound { sprite: String, checkpoint: String },
    #[error("session {0} not found")]
    SessionNotFound(String),
    #[error("session {0} already exited")]
    SessionGone(String),
    #[error("control-plane database")]
    Database(#[from] rusqlite::Error),
    #[error("sandbox of sprite {sprite}")]
    Sandbox {
        sprite: String,
        #[source]
        source: sprite_sandbox::SandboxError,
    },
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sprite {0} did not come up in time")]
    StartTimeout(String),
    #[error("{0}")]
    SpawnFailed(String),
    #[error("storage of sprite {sprite}: {message}")]
    Storage { sprite: String, message: String },
    #[error("background task {0}")]
    Task(&'static str, #[source] tokio::task::JoinError),
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("too many sprites: the limit is {0}")]
    TooManySprites(usize),
    #[error("organization {org} has {current} sprites, the most it may have (max_sprites = {limit}); destroy one, or create with wait_for_capacity")]
    ConcurrentLimit {
        org: String,
        limit: usize,
        current: usize,
    },
    #[error("organization {org} created {limit} sprites in the last {window_seconds} s, the most it may (creates_per_minute); retry in {retry_after} s, or create with wait_for_capacity")]
    CreationRateLimited {
        org: String,
        limit: u32,
        window_seconds: u32,
        retry_after: u64,
    },
    #[error("all {0} host id ranges for sprites are taken; destroy a sprite or raise max_sprites")]
    NoIdRange(u32),
    #[error("an image named {0} already exists")]
    ImageExists(String),
    #[error("sprite {sprite} is in use ({reasons}); end those first, then sleep it")]
    InUse { sprite: String, reasons: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Conflict(String),
    #[error("nothing in sprite {sprite} answered on port {port} within {seconds} s; start a server there (or a service with http_port)")]
    PortTimeout {
        sprite: String,
        port: u16,
        seconds: u64,
    },
    #[error(transparent)]
    Fs(#[from] crate::files::FsError),
}

impl CoreError {
    /// The API error kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoreError::InvalidRequest(_) | CoreError::SpawnFailed(_) => ErrorKind::InvalidRequest,
            CoreError::SpriteNotFound(_) => ErrorKind::SpriteNotFound,
            CoreError::SessionNotFound(_) | CoreError::CheckpointNotFound { .. } => {
                ErrorKind::NotFound
            }
            CoreError::SpriteExists(_)
            | CoreError::ImageExists(_)
            | CoreError::InUse { .. }
            | CoreError::Conflict(_) => ErrorKind::Conflict,
            CoreError::NotFound(_) => ErrorKind::NotFound,
            CoreError::Forbidden(_) => ErrorKind::Forbidden,
            CoreError::RateLimited(_) => ErrorKind::RateLimited,
            CoreError::Fs(error) => match error.code {
                sprite_api::fs::FsCode::NotFound => ErrorKind::NotFound,
                sprite_api::fs::FsCode::Exists | sprite_api::fs::FsCode::NotEmpty => {
                    ErrorKind::Conflict
                }
                sprite_api::fs::FsCode::Io => ErrorKind::Internal,
                _ => ErrorKind::InvalidRequest,
            },
            CoreError::SessionGone(_) => ErrorKind::Gone,
            CoreError::TooManySprites(_)
            | CoreError::NoIdRange(_)
            | CoreError::ConcurrentLimit { .. }
            | CoreError::CreationRateLimited { .. } => ErrorKind::RateLimited,
            CoreError::StartTimeout(_) | CoreError::PortTimeout { .. } => ErrorKind::Unavailable,
            CoreError::Database(_)
            | CoreError::Sandbox { .. }
            | CoreError::Image { .. }
            | CoreError::Storage { .. }
            | CoreError::Command { .. }
            | CoreError::Task(..)
            | CoreError::Io { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<std::path::PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> CoreError {
        let path = path.into();
        move |source| CoreError::Io { what, path, source }
    }
}

/// What a 429 tells the SDKs (their `APIError` fields and the `X-RateLimit-*` headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// `sprite_creation_rate_limited` or `concurrent_sprite_limit_exceeded`.
    pub code: &'static str,
    pub limit: u64,
    pub window_seconds: Option<u32>,
    pub retry_after_seconds: u64,
    pub current_count: Option<u64>,
}

impl CoreError {
    /// The limit behind a 429 about sprite creation, if this is one.
    pub fn rate_limit(&self) -> Option<RateLimitInfo> {
        match self {
            CoreError::CreationRateLimited {
                limit,
                window_seconds,
                retry_after,
                ..
            } => Some(RateLimitInfo {
                code: "sprite_creation_rate_limited",
                limit: u64::from(*limit),
                window_seconds: Some(*window_seconds),
                retry_after_seconds: *retry_after,
                current_count: None,
            }),
            CoreError::ConcurrentLimit { limit, current, .. } => Some(RateLimitInfo {
                code: "concurrent_sprite_limit_exceeded",
                limit: *limit as u64,
                window_seconds: None,
                retry_after_seconds: 5,
                current_count: Some(*current as u64),
            }),
            _ => None,
        }
    }
}
