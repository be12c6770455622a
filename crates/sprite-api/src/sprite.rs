//! Sprite resources: create, update and list bodies and `SpriteInfo`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who may open a sprite's URL.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UrlAuth {
    /// A bearer token of the sprite's organization is needed.
    #[default]
    Sprite,
    /// Anyone may open it.
    Public,
}

impl UrlAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            UrlAuth::Sprite => "sprite",
            UrlAuth::Public => "public",
        }
    }

    /// The value [`UrlAuth::as_str`] gives; `None` for anything else.
    pub fn parse(text: &str) -> Option<UrlAuth> {
        [UrlAuth::Sprite, UrlAuth::Public]
            .into_iter()
            .find(|auth| auth.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct UrlSettings {
    #[serde(default)]
    pub auth: UrlAuth,
    /// `admins` or `org_users`: kept and shown as the SDKs send it. Tokens here belong
    /// to one organization, so both mean "a token of the sprite's organization".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_access: Option<String>,
}

/// Checks `url_settings.private_access`.
pub fn validate_private_access(value: &str) -> Result<(), String> {
    if ["admins", "org_users"].contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "url_settings.private_access {value:?} is not admins or org_users"
        ))
    }
}

/// Checks `runtime` (the SDKs' runtime image variant).
pub fn validate_runtime(value: &str) -> Result<(), String> {
    if ["default", "dev"].contains(&value) {
        Ok(())
    } else {
        Err(format!("runtime {value:?} is not default or dev"))
    }
}

/// Resources of a sprite. Absent fields take the daemon's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct SpriteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_gb: Option<u64>,
    /// The region asked for at create; it must be the daemon's own (`region` in its
    /// config, default `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Ours: idle time before warm sleep (`30s`, `10m`, `never`); the daemon's default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_after: Option<String>,
    /// Ours: idle time before cold sleep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_after: Option<String>,
    /// Ours: when an fsync in the sprite returns (`local` or `store`); the daemon's
    /// default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
}

/// Ours: when an fsync (fdatasync, a flush, a FUA write) that reaches a sprite's disk
/// returns. docs/storage.md states the contract of each.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Durable on the host's disk; the object store trails by at most a second of
    /// writes (writes slow down rather than let it fall further behind).
    #[default]
    Local,
    /// In the object store, with a published version of the disk that names it: an
    /// acknowledged fsync survives the loss of the host.
    Store,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::Store => "store",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "local" => Ok(Durability::Local),
            "store" => Ok(Durability::Store),
            other => Err(format!(
                "durability {other:?} is not one of local (fsync durable on the host's disk) or store (fsync durable in the object store)"
            )),
        }
    }
}

/// Lifecycle state as reported to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpriteStatus {
    Cold,
    Warm,
    Running,
}

impl SpriteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SpriteStatus::Cold => "cold",
            SpriteStatus::Warm => "warm",
            SpriteStatus::Running => "running",
        }
    }

    /// The value [`SpriteStatus::as_str`] gives; `None` for anything else.
    pub fn parse(text: &str) -> Option<SpriteStatus> {
        [
            SpriteStatus::Cold,
            SpriteStatus::Warm,
            SpriteStatus::Running,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// `POST /v1/sprites` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreateSpriteRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_settings: Option<UrlSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<SpriteConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_capacity: Option<bool>,
    /// `default` or `dev` (kept and shown; every sprite here runs the image it was
    /// created with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Ours: create from another sprite's checkpoint (fork / template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ForkSource>,
    /// Ours: the image of the new sprite (`GET /v1/images`); the daemon's default when
    /// absent. A fork always runs on its parent's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Ours: the host of a cluster the sprite goes to (placement picks one when
    /// absent; a fork goes to its parent's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Ours: start from a template (`GET /v1/templates`) instead of an empty disk; the
    /// sprite runs on the template's image. Not with `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Ours: run the image's `Entrypoint` + `Cmd` as service `app` (registry and
    /// archive images), its URL going to the image's first exposed TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_cmd: Option<bool>,
}

/// A template: a named, frozen copy of a sprite's checkpoint that new sprites start from
/// (`POST /v1/templates`, ours). It belongs to the organization and outlives its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TemplateInfo {
    pub name: String,
    /// The sprite and checkpoint it was made from (the sprite may be gone since).
    pub source_sprite: String,
    pub source_checkpoint: String,
    /// The image its sprites run on (the source's).
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub created_at: String,
}

/// `POST /v1/templates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreateTemplateRequest {
    pub name: String,
    /// The sprite and checkpoint to copy (its newest checkpoint when none is named).
    pub from: ForkSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `GET /v1/templates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateInfo>,
}

/// Where a forked sprite comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ForkSource {
    pub sprite: String,
    /// Checkpoint id (`v3`); the newest one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// A checkpoint as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckpointInfo {
    pub id: String,
    pub create_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub is_auto: bool,
    /// The checkpoint this one descends from (the newest in its history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// The checkpoints it descends from, nearest first (with `?history=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<String>>,
}

/// The id of the row that stands for a sprite's current state in checkpoint lists.
pub const CURRENT_CHECKPOINT: &str = "Current";

/// What a line of a progress stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProgressKind {
    /// Work in progress (`data` says what).
    Info,
    /// Done (`data` says what was made).
    Complete,
    /// Failed (`error` says why).
    Error,
    /// A kind this version does not know (a newer server's).
    #[serde(other)]
    Other,
}

/// One line of an NDJSON progress stream (checkpoint, restore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProgressEvent {
    #[serde(rename = "type")]
    pub kind: ProgressKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// `url_settings` of an update: absent fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct UrlSettingsUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<UrlAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_access: Option<String>,
}

/// `PUT /v1/sprites/{name}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct UpdateSpriteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_settings: Option<UrlSettingsUpdate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_labels: Option<bool>,
}

/// A sprite as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpriteInfo {
    pub id: String,
    pub name: String,
    pub organization: String,
    pub status: SpriteStatus,
    pub url: String,
    pub url_settings: UrlSettings,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub config: SpriteConfig,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_running_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_warming_at: Option<String>,
    /// The daemon's region (what the SDKs show as the primary region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Ours: what the sprite keeps in the object store (SpriteFS only; absent on local
    /// storage or when the storage process cannot answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageUsage>,
    /// Ours: since when the sprite has its status, what keeps it awake, and when it
    /// sleeps if nothing does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleInfo>,
    /// Ours: the image the sprite runs on, with its version (`dev`, `dev@2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Why a sprite is awake and when it will sleep (ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct LifecycleInfo {
    /// When the sprite entered its current status (RFC 3339).
    pub since: String,
    /// What keeps it awake now; empty when it is idle.
    #[serde(default)]
    pub awake_because: Vec<AwakeReason>,
    /// When it was last active (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<String>,
    /// When it goes warm if it stays idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_at: Option<String>,
    /// When it goes cold if it stays idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_at: Option<String>,
}

/// One thing keeping a sprite awake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AwakeReason {
    /// `session`, `tty`, `api`, `proxy` or `task`.
    pub reason: String,
    pub count: usize,
    pub description: String,
}

/// Object-store usage of one sprite (ours; also `GET /v1/sprites/{name}/usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct StorageUsage {
    /// Stored (compressed) bytes of the unique chunks the sprite's current state uses.
    pub bytes_stored: u64,
    /// Unique chunks the current state uses.
    pub chunks: u64,
    /// Checkpoints the sprite has.
    pub checkpoints: u64,
    /// When its fsyncs return (while its disk is attached on a host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// Bytes written to its disk and not in the object store yet (whole blocks: an upper
    /// bound), while attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Milliseconds since the oldest write not in the object store yet (0: none), while
    /// attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
}

/// `GET /v1/sprites` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpriteList {
    pub sprites: Vec<SpriteInfo>,
    pub has_more: bool,
    #[serde(default)]
    pub next_continuation_token: Option<String>,
    /// The organization's name, counts and limits, at the top level as the JS SDK
    /// reads them and as `org` (both describe the whole organization, not the page).
    #[serde(flatten, default)]
    pub counts: Option<OrgCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgCounts>,
}

/// An organization's sprites by status, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct OrgCounts {
    pub name: String,
    pub running: u64,
    pub warm: u64,
    pub cold: u64,
    /// The most sprites that may run at once (creates and wakes past it are a 429),
    /// and the most in warm sleep (past it, sleeping sprites go cold): the
    /// organization's limits (`sprite orgs set`) or the daemon's defaults.
    pub running_limit: u64,
    pub warm_limit: u64,
}

impl OrgCounts {
    /// Adds another host's counts (a cluster's list); limits are per host and add up.
    pub fn add(&mut self, other: &OrgCounts) {
        self.running += other.running;
        self.warm += other.warm;
        self.cold += other.cold;
        self.running_limit += other.running_limit;
        self.warm_limit += other.warm_limit;
    }
}

/// Limits of the list route.
pub const LIST_MAX_RESULTS: u32 = 50;

/// Most labels one sprite may carry, and the longest label.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_LEN: usize = 128;

/// Checks labels against the limits above; the message says which one failed.
pub fn validate_labels(labels: &[String]) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels given; at most {MAX_LABELS} are allowed",
            labels.len()
        ));
    }
    if let Some(label) = labels
        .iter()
        .find(|l| l.is_empty() || l.len() > MAX_LABEL_LEN)
    {
        return Err(format!(
            "label {label:?} must be 1 to {MAX_LABEL_LEN} bytes long"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_accepts_sdk_shape() {
        let body = r#"{"name":"a","config":{"ram_mb":512,"region":"ord"},
            "url_settings":{"auth":"public","private_access":null},"labels":["x"]}"#;
        let request: CreateSpriteRequest = serde_json::from_str(body).expect("parse");
        assert_eq!(request.name, "a");
        assert_eq!(request.config.and_then(|c| c.ram_mb), Some(512));
        assert_eq!(request.url_settings.map(|u| u.auth), Some(UrlAuth::Public));
    }

    #[test]
    fn labels_are_bounded() {
        assert!(validate_labels(&["ok".into()]).is_ok());
        assert!(validate_labels(&[String::new()]).is_err());
        assert!(validate_labels(&vec!["x".into(); MAX_LABELS + 1]).is_err());
    }
}

/// `POST /v1/sprites/{name}/upgrade` (ours: the SDKs read only the status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UpgradeReport {
    /// The image (with its version) before and after.
    pub from: String,
    pub to: String,
    /// The checkpoint taken first: restoring it undoes the upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// False when the sprite already ran on the newest version.
    pub upgraded: bool,
}
