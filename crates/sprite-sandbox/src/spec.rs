//! What the daemon asks for when it starts a sprite's sandbox.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Resource limits of one sprite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// CPU quota in thousandths of a CPU (2000 = two CPUs).
    pub cpu_millis: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 1024 * 1024 * 1024,
            pids: 1024,
            cpu_millis: 1000,
        }
    }
}

/// The root filesystem: an overlay of read-only lower layers and one writable upper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootLayers {
    /// Uppermost first, as overlayfs wants them.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Host directory (a shared mount) whose sub-mounts appear read-only inside the
    /// sprite at `/.sprite/checkpoints`, also those mounted after the sprite started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<PathBuf>,
    /// Host directory on the sprite's own disk bound at `/home`: files there skip the
    /// overlay (whose creates and opens cost extra lookups; `bench/storage.sh` measures
    /// both paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
}

/// Everything sprite-init's launcher needs; sent as JSON on its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Stable id, used for the cgroup name.
    pub sprite_id: String,
    pub hostname: String,
    /// Host directory owned by this sprite: holds `root/` (mount point), `init.sock`
    /// and `init.log`.
    pub state_dir: PathBuf,
    pub layers: RootLayers,
    /// First host uid/gid that uid/gid 0 inside maps to.
    pub id_base: u32,
    /// How many ids are mapped.
    pub id_count: u32,
    pub limits: Limits,
    /// Host directory bound at `/.sprite/run`; the daemon serves the in-sprite API on
    /// `api.sock` there (`/.sprite/api.sock` links to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// Host directory bound read-only at `/.sprite/bin` (holds `sprite-env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
}

impl SandboxSpec {
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("init.sock")
    }

    pub fn root_path(&self) -> PathBuf {
        self.state_dir.join("root")
    }

    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("init.log")
    }
}
