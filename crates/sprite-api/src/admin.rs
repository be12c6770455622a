//! Our own endpoints beside the Sprites API: a sprite's storage usage, garbage
//! collection and images. Typed here so that the server, the client and the CLI read
//! one definition (the JSON is what these endpoints always answered).

use serde::{Deserialize, Serialize};

/// Where a sprite's files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Volumes in an object store (usage is counted).
    Spritefs,
    /// Plain host directories (usage is not counted).
    Local,
}

/// `GET /v1/sprites/{name}/usage`: what a sprite stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpriteUsage {
    pub sprite: String,
    pub storage: StorageKind,
    /// Compressed bytes of the unique chunks the sprite's current state uses
    /// (SpriteFS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_stored: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// Bytes of its chunks in this host's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_cached_on_host: Option<u64>,
    /// What each checkpoint adds, oldest first (SpriteFS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<Vec<CheckpointUsage>>,
    /// What it used hour by hour since `?since=` (default: the last 24 hours), oldest
    /// first; hours it did not exist in are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<UsageHour>>,
}

/// One hour of a sprite's usage (`history` of [`SpriteUsage`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct UsageHour {
    /// Start of the hour (RFC 3339, UTC).
    pub hour: String,
    pub cpu_seconds: f64,
    /// Memory in use, averaged over the samples taken while it was awake.
    pub memory_avg_bytes: u64,
    pub memory_peak_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// Bytes stored in the object store when first sampled that hour (SpriteFS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// Seconds spent running, in warm sleep and in cold sleep.
    pub running_seconds: f64,
    pub warm_seconds: f64,
    pub cold_seconds: f64,
}

/// Bytes a checkpoint adds over the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckpointUsage {
    pub id: String,
    pub bytes_added: u64,
}

/// `POST /v1/admin/gc`: what a garbage collection freed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct GcReport {
    pub layers: u64,
    pub chunks: u64,
    pub bytes_freed: u64,
    /// Why nothing could be collected, when that is the case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where an image stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    Absent,
    Building,
    Ready,
    Failed,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Absent => "absent",
            ImageState::Building => "building",
            ImageState::Ready => "ready",
            ImageState::Failed => "failed",
        }
    }
}

/// One image and where its build stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImageStatus {
    pub name: String,
    pub state: ImageState,
    /// The last progress line of a build, or why it failed.
    #[serde(default)]
    pub detail: String,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct ImageList {
    pub images: Vec<ImageStatus>,
}

/// `POST /v1/images` with a JSON body: pull an image from a registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct PullRequest {
    /// `[REGISTRY/]REPOSITORY[:TAG|@DIGEST]`.
    #[serde(rename = "ref", alias = "reference")]
    pub reference: String,
    /// The image's name here (default: from the reference, `alpine:3.19` → `alpine-3-19`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Pull again over an image of the same name (an update).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

impl std::fmt::Debug for PullRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullRequest")
            .field("reference", &self.reference)
            .field("name", &self.name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("replace", &self.replace)
            .finish()
    }
}

/// One line of the NDJSON progress of a pull or an archive import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest was read: the image's digest and layer count.
    Resolved {
        digest: String,
        layers: usize,
    },
    /// A layer's progress: `state` is `stored` (already here: shared), `downloading`
    /// (`bytes` of `total` so far), `unpacking`, `storing` or `ready`.
    Layer {
        index: usize,
        digest: String,
        state: String,
        #[serde(default)]
        bytes: u64,
        #[serde(default)]
        total: u64,
    },
    /// Any other step.
    Info {
        message: String,
    },
    /// The image is ready under `name`.
    Complete {
        name: String,
    },
    Error {
        error: String,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_json_is_what_these_endpoints_always_answered() {
        let local = SpriteUsage {
            sprite: "dev".into(),
            storage: StorageKind::Local,
            bytes_stored: None,
            chunks: None,
            bytes_cached_on_host: None,
            checkpoints: None,
            history: None,
        };
        assert_eq!(
            serde_json::to_value(&local).unwrap(),
            serde_json::json!({ "sprite": "dev", "storage": "local" })
        );
        let stored: SpriteUsage = serde_json::from_value(serde_json::json!({
            "sprite": "dev", "storage": "spritefs", "bytes_stored": 10, "chunks": 2,
            "bytes_cached_on_host": 5, "checkpoints": [{ "id": "v1", "bytes_added": 3 }]
        }))
        .unwrap();
        assert_eq!(stored.checkpoints.unwrap()[0].bytes_added, 3);
        let gc = GcReport {
            note: Some("local storage has nothing to collect".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&gc).unwrap(),
            serde_json::json!({ "layers": 0, "chunks": 0, "bytes_freed": 0, "note": "local storage has nothing to collect" })
        );
        let list: ImageList = serde_json::from_value(serde_json::json!({
            "images": [{ "name": "debian", "state": "building", "detail": "I: Retrieving" }]
        }))
        .unwrap();
        assert_eq!(list.images[0].state, ImageState::Building);
        assert!(serde_json::from_value::<ImageState>(serde_json::json!("melting")).is_err());
    }
}

/// A live host of a cluster (`GET /v1/admin/hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostStatus {
    pub id: String,
    /// Its API, as peers reach it.
    pub api: String,
    /// Its URL proxy.
    pub proxy: String,
    pub free_memory_mb: u64,
    pub running: u64,
    pub warm: u64,
    pub cold: u64,
    /// Sprites it owns in the directory.
    pub sprites: u64,
    /// Takes no new sprites.
    pub draining: bool,
    /// The host that answered.
    #[serde(default)]
    pub this_host: bool,
}

/// `GET /v1/admin/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostList {
    pub hosts: Vec<HostStatus>,
}

/// `POST /v1/sprites/{name}/move` (ours).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MoveRequest {
    /// The host to move to; placement picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Where a sprite went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MoveReport {
    pub sprite: String,
    pub from: String,
    pub to: String,
    /// Milliseconds from the request to the sprite being the target's.
    pub ms: u64,
}

/// `POST /v1/admin/hosts/{id}/drain`: what a drain moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DrainReport {
    pub host: String,
    pub moved: Vec<MoveReport>,
    /// Sprites that could not be moved, with why.
    #[serde(default)]
    pub failed: Vec<(String, String)>,
}

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Everything, in every organization: images, hosts, garbage collection, tokens and
    /// limits besides its own organization's sprites.
    Admin,
    /// Its organization's sprites, checkpoints, templates and files; nothing of the host.
    #[default]
    Organization,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Admin => "admin",
            TokenScope::Organization => "organization",
        }
    }

    pub fn parse(text: &str) -> Option<TokenScope> {
        match text {
            "admin" => Some(TokenScope::Admin),
            "organization" | "org" => Some(TokenScope::Organization),
            _ => None,
        }
    }
}

/// Whom a token acts for and what it may do (kept by hosts, published to a cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenGrant {
    pub org: String,
    pub scope: TokenScope,
}

/// `POST /v1/organizations/{org}/tokens` (the SDKs' `create_token`; they send only
/// `description` and perhaps `invite_code`, which is ignored here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct CreateTokenRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Default: `organization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_code: Option<String>,
}

/// A token as lists show it: never the token itself, which only its creation answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenInfo {
    /// What `revoke` takes (the first 16 hex digits of the token's hash).
    pub id: String,
    pub org: String,
    pub scope: TokenScope,
    #[serde(default)]
    pub description: String,
    pub created_at: String,
}

impl TokenInfo {
    /// What the token grants.
    pub fn grant(&self) -> TokenGrant {
        TokenGrant {
            org: self.org.clone(),
            scope: self.scope,
        }
    }
}

/// The answer to a token's creation: the token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `GET /v1/organizations/{org}/tokens` and `GET /v1/admin/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// An organization's limits (`GET|PUT /v1/admin/organizations/{org}`): sprites awake
/// at once (`running_limit`: creates and wakes past it get a 429
/// `concurrent_sprite_limit_exceeded`) and sprites in warm sleep (past
/// `warm_limit`, a sprite going to sleep goes cold instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrgLimits {
    pub name: String,
    pub running_limit: u64,
    pub warm_limit: u64,
    /// Whether these are the host's defaults (no limits of its own were set).
    #[serde(default)]
    pub default: bool,
}

/// `PUT /v1/admin/organizations/{org}`: new limits (absent: unchanged; null in both
/// fields resets to the defaults with `reset`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct SetOrgLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_limit: Option<u64>,
    /// Back to the host's defaults.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

/// `GET /v1/admin/organizations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct OrgList {
    pub organizations: Vec<OrgLimits>,
}

/// Checks an organization name: the rules of sprite names (`[a-z0-9-]{1,63}`).
pub fn validate_org_name(name: &str) -> Result<(), String> {
    crate::names::validate_sprite_name(name).map_err(|error| {
        error
            .to_string()
            .replacen("sprite name", "organization name", 1)
    })
}

/// `POST /v1/admin/stop`: stop the daemon; with `all`, put every sprite cold and
/// remove what the daemon installed on the host first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct StopRequest {
    #[serde(default)]
    pub all: bool,
}

/// One line of `POST /v1/admin/stop`'s NDJSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StopEvent {
    Info {
        message: String,
    },
    /// The daemon exits now; `sprites_cold`: sprites put cold by this stop.
    Complete {
        sprites_cold: usize,
    },
    Error {
        error: String,
    },
}

/// `GET /v1/admin/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub data_dir: String,
    pub storage: String,
    /// Whether the storage process answers (SpriteFS only; null with local storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_up: Option<bool>,
    pub running: u64,
    pub warm: u64,
    pub cold: u64,
    pub pool_ready: u64,
    /// The host id in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
}
