//! Errors of the sprite lifecycle, with the API kind each maps to.

use sprite_api::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    // What was wrong with a request (400): each kind names the field and the fix.
    #[error("{field} = {value} is out of range; use {allowed}")]
    OutOfRange {
        field: &'static str,
        value: String,
        allowed: String,
    },
    #[error(transparent)]
    InvalidSpriteName(#[from] sprite_api::NameError),
    #[error("{what} {value:?} is not valid; {rule}")]
    InvalidName {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("{field}: {reason}")]
    InvalidValue { field: &'static str, reason: String },
    /// A sprite-api validator's refusal (its message names the field).
    #[error("{0}")]
    Validation(String),
    #[error("config.region {requested:?} is not served here: this daemon serves region {served:?} (leave config.region out, or set region in the daemon's config)")]
    RegionNotServed { requested: String, served: String },
    #[error("{0} need SpriteFS storage; start the daemon with --storage spritefs (or storage = \"spritefs\" in its config)")]
    NeedsSpriteFs(&'static str),
    #[error("unknown image {name:?}; images: {} (import one with `sprite images import NAME ROOTFS.tar`)", known.join(", "))]
    UnknownImage { name: String, known: Vec<String> },
    #[error("{0} is a built-in image; import under another name")]
    BuiltInImage(String),
    #[error("image {image}: {reason}")]
    BadTarball { image: String, reason: String },
    #[error("{0}")]
    BadImage(String),
    #[error("pulling {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("sprite {0} has no checkpoint to fork from; create one first")]
    NothingToFork(String),
    #[error("{0} is the sprite's current state, not a checkpoint: name a checkpoint (v0, v1, ...), or make one first")]
    NotACheckpoint(String),
    #[error("memory.autoscale is not available here: a sprite's memory limit is fixed; raise memory.limit_mb instead")]
    NoMemoryAutoscale,
    #[error("disk.storage_gb: the disk of sprite {sprite} is {current} GB and its size is set at create (config.storage_gb); fork it into a new sprite with another size")]
    DiskSizeFixed { sprite: String, current: u64 },
    #[error("{address} is not an address of the sprite {sprite}: the proxy reaches the sprite's loopback and its own interface addresses (as port_opened reports them)")]
    NotSpriteAddress { sprite: String, address: String },
    #[error("the upload of the tarball broke off")]
    UploadBroken(#[source] std::io::Error),
    // Not found (404), in conflict (409), forbidden (403), too fast (429).
    #[error("task {0} not found")]
    TaskNotFound(String),
    #[error("task {0} exists; renew it with PUT or delete it first")]
    TaskExists(String),
    #[error("the sprite has {0} tasks, the most it may hold; delete one first")]
    TooManyTasks(usize),
    #[error("sprite {sprite} has {count} checkpoints, the most it may keep (max_checkpoints); delete old ones first (sprite checkpoint delete)")]
    TooManyCheckpoints { sprite: String, count: usize },
    #[error("sprite {sprite} could not take the new limits; it may use more memory than {ram_mb} MB now")]
    LimitsRefused {
        sprite: String,
        ram_mb: u64,
        #[source]
        source: sprite_sandbox::cgroup::CgroupError,
    },
    #[error("checkpoint {checkpoint} of sprite {sprite} was not made from inside it; a sprite may restore or delete only the checkpoints it made itself (its owner can, through the API)")]
    NotOwnCheckpoint { sprite: String, checkpoint: String },
    #[error("sprite {sprite} made {burst} checkpoints of itself in a short time; try again in {retry_after} s")]
    CheckpointsTooFast {
        sprite: String,
        burst: u32,
        retry_after: u64,
    },
    #[error("sprite {sprite} has {limit} open connections, the most one sprite may have; retry when some close")]
    TooManyConnections { sprite: String, limit: usize },
    /// A refusal of the sprite's own init (a service call), passed on with its kind.
    #[error("{message}")]
    InSprite { kind: ErrorKind, message: String },
    #[error("sprite {0} not found")]
    SpriteNotFound(String),
    #[error("a sprite named {0} already exists")]
    SpriteExists(String),
    #[error("template {0} not found (sprite templates list shows them)")]
    TemplateNotFound(String),
    #[error("a template named {0} already exists; delete it first or pick another name")]
    TemplateExists(String),
    #[error("{what} is unreadable: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("a sprite named {name} already exists on host {owner} of the cluster")]
    SpriteExistsElsewhere { name: String, owner: String },
    #[error(
        "sprite {name} is on host {owner} now (this host's copy was stale and is gone): retry"
    )]
    MovedElsewhere { name: String, owner: String },
    #[error("sprite {name}: the cluster directory did not answer ({reason}); retry when etcd is reachable")]
    DirectoryUnavailable { name: String, reason: String },
    #[error("{0} is not available in a cluster: {1}")]
    NotInCluster(&'static str, &'static str),
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
    #[error("organization {org} has {current} sprites awake, the most it may have at once (running_limit = {limit}); let one sleep (sprite sleep), or raise the limit (sprite orgs set)")]
    RunningLimit {
        org: String,
        limit: u64,
        current: u64,
    },
    #[error("the daemon is stopping (sprite admin stop --all): no sprite starts or wakes now; start the daemon again, then retry")]
    Stopping,
    #[error("token {0} not found (sprite tokens list shows them)")]
    TokenNotFound(String),
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
            CoreError::OutOfRange { .. }
            | CoreError::InvalidSpriteName(_)
            | CoreError::InvalidName { .. }
            | CoreError::InvalidValue { .. }
            | CoreError::Validation(_)
            | CoreError::RegionNotServed { .. }
            | CoreError::NeedsSpriteFs(_)
            | CoreError::UnknownImage { .. }
            | CoreError::BuiltInImage(_)
            | CoreError::BadTarball { .. }
            | CoreError::BadImage(_)
            | CoreError::Registry { .. }
            | CoreError::NothingToFork(_)
            | CoreError::NotACheckpoint(_)
            | CoreError::NoMemoryAutoscale
            | CoreError::DiskSizeFixed { .. }
            | CoreError::NotSpriteAddress { .. }
            | CoreError::UploadBroken(_)
            | CoreError::SpawnFailed(_) => ErrorKind::InvalidRequest,
            CoreError::SpriteNotFound(_) => ErrorKind::SpriteNotFound,
            CoreError::TemplateNotFound(_) | CoreError::TokenNotFound(_) => ErrorKind::NotFound,
            CoreError::SessionNotFound(_)
            | CoreError::CheckpointNotFound { .. }
            | CoreError::TaskNotFound(_) => ErrorKind::NotFound,
            CoreError::SpriteExists(_)
            | CoreError::TemplateExists(_)
            | CoreError::SpriteExistsElsewhere { .. }
            | CoreError::NotInCluster(..)
            | CoreError::ImageExists(_)
            | CoreError::InUse { .. }
            | CoreError::TaskExists(_)
            | CoreError::TooManyTasks(_)
            | CoreError::TooManyCheckpoints { .. }
            | CoreError::LimitsRefused { .. } => ErrorKind::Conflict,
            CoreError::NotOwnCheckpoint { .. } => ErrorKind::Forbidden,
            CoreError::CheckpointsTooFast { .. } | CoreError::TooManyConnections { .. } => {
                ErrorKind::RateLimited
            }
            CoreError::InSprite { kind, .. } => *kind,
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
            | CoreError::RunningLimit { .. }
            | CoreError::CreationRateLimited { .. } => ErrorKind::RateLimited,
            CoreError::StartTimeout(_)
            | CoreError::Stopping
            | CoreError::PortTimeout { .. }
            | CoreError::DirectoryUnavailable { .. }
            | CoreError::MovedElsewhere { .. } => ErrorKind::Unavailable,
            CoreError::Database(_)
            | CoreError::Corrupt { .. }
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
            CoreError::RunningLimit { limit, current, .. } => Some(RateLimitInfo {
                code: "concurrent_sprite_limit_exceeded",
                limit: *limit,
                window_seconds: None,
                retry_after_seconds: 5,
                current_count: Some(*current),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each refusal a request can meet, with the API kind it must answer.
    fn refusals() -> Vec<(CoreError, ErrorKind)> {
        vec![
            (
                CoreError::OutOfRange {
                    field: "config.ram_mb",
                    value: "8".into(),
                    allowed: "64 to 1048576".into(),
                },
                ErrorKind::InvalidRequest,
            ),
            (
                CoreError::InvalidSpriteName(sprite_api::NameError::Empty),
                ErrorKind::InvalidRequest,
            ),
            (
                CoreError::InvalidName {
                    what: "task name",
                    value: "a/b".into(),
                    rule: "use 1 to 128 printable characters without /",
                },
                ErrorKind::InvalidRequest,
            ),
            (
                CoreError::UnknownImage {
                    name: "x".into(),
                    known: vec!["debian".into(), "busybox".into()],
                },
                ErrorKind::InvalidRequest,
            ),
            (
                CoreError::NotACheckpoint("current".into()),
                ErrorKind::InvalidRequest,
            ),
            (CoreError::TaskNotFound("t".into()), ErrorKind::NotFound),
            (CoreError::TaskExists("t".into()), ErrorKind::Conflict),
            (CoreError::TooManyTasks(64), ErrorKind::Conflict),
            (
                CoreError::TooManyCheckpoints {
                    sprite: "dev".into(),
                    count: 100,
                },
                ErrorKind::Conflict,
            ),
            (
                CoreError::NotOwnCheckpoint {
                    sprite: "dev".into(),
                    checkpoint: "v1".into(),
                },
                ErrorKind::Forbidden,
            ),
            (
                CoreError::CheckpointsTooFast {
                    sprite: "dev".into(),
                    burst: 5,
                    retry_after: 3,
                },
                ErrorKind::RateLimited,
            ),
            (
                CoreError::TooManyConnections {
                    sprite: "dev".into(),
                    limit: 512,
                },
                ErrorKind::RateLimited,
            ),
            (
                CoreError::InSprite {
                    kind: ErrorKind::NotFound,
                    message: "service web not found".into(),
                },
                ErrorKind::NotFound,
            ),
        ]
    }

    #[test]
    fn each_refusal_answers_its_kind_with_a_message_in_house_style() {
        for (error, kind) in refusals() {
            let message = sprite_api::error_chain(&error);
            assert_eq!(error.kind(), kind, "{message}");
            let first = message.chars().next().unwrap_or('X');
            assert!(!first.is_uppercase(), "starts lowercase: {message}");
            assert!(!message.ends_with('.'), "no trailing period: {message}");
        }
    }

    #[test]
    fn messages_name_the_field_and_the_fix() {
        let error = CoreError::OutOfRange {
            field: "config.cpus",
            value: "9".into(),
            allowed: "1 to 2 (the CPUs of this host)".into(),
        };
        assert_eq!(
            error.to_string(),
            "config.cpus = 9 is out of range; use 1 to 2 (the CPUs of this host)"
        );
        let error = CoreError::UnknownImage {
            name: "nope".into(),
            known: vec!["debian".into(), "busybox".into()],
        };
        assert!(
            error.to_string().contains("images: debian, busybox"),
            "{error}"
        );
    }
}
