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
            CoreError::TooManySprites(_) | CoreError::NoIdRange(_) => ErrorKind::RateLimited,
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
