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

/// The root filesystem: an overlay of read-only lower layers and the sprite's own disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootLayers {
    /// Uppermost first, as overlayfs wants them. Their files are stored with the
    /// storage ids ([`SandboxSpec::storage_id_base`]).
    pub lower: Vec<PathBuf>,
    /// The sprite's own disk: holds `upper/` and `work/`, the overlay's writable half,
    /// and `home/` when [`Self::home`] is set. Stored with the storage ids too.
    pub disk: PathBuf,
    /// Host directory (a shared mount) whose sub-mounts appear read-only inside the
    /// sprite at `/.sprite/checkpoints`, also those mounted after the sprite started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<PathBuf>,
    /// Whether the disk's `home/` is bound at `/home`: files there skip the overlay
    /// (whose creates and opens cost extra lookups; `bench/storage.sh` measures both
    /// paths).
    #[serde(default)]
    pub home: bool,
}

impl RootLayers {
    pub fn upper(&self) -> PathBuf {
        self.disk.join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.disk.join("work")
    }
}

/// Everything sprite-init's launcher needs; sent as JSON on its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Stable id, used for the cgroup name.
    pub sprite_id: String,
    /// The cgroup's name when it is not the id (the daemons of a cluster that share one
    /// machine, tests and benches, each keep their own cgroups of one sprite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_name: Option<String>,
    pub hostname: String,
    /// Host directory owned by this sprite: holds `root/` (mount point), `init.sock`
    /// and `init.log`.
    pub state_dir: PathBuf,
    pub layers: RootLayers,
    /// First host uid/gid that uid/gid 0 inside maps to: the sprite's own range on
    /// the host, and the owner of its user namespace (see [`crate::sys::clone_into_namespaces_as`]).
    pub id_base: u32,
    /// How many ids are mapped.
    pub id_count: u32,
    /// First host id the files of its layers are stored with (uid 0 inside is stored
    /// as this id on disk, in images and sprite disks alike). When it differs from
    /// `id_base`, the layers are mounted idmapped from one range onto the other, so no
    /// file is ever chowned when a sprite gets its range.
    pub storage_id_base: u32,
    pub limits: Limits,
    /// Host directory bound at `/.sprite/run`; the daemon serves the in-sprite API on
    /// `api.sock` there (`/.sprite/api.sock` links to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// `oom_score_adj` of every process of the sprite, PID 1 included: none can go
    /// below it (the kernel lets only CAP_SYS_RESOURCE on the host lower it).
    #[serde(default)]
    pub oom_score_adj: i32,
    /// Whether the sprite may make namespaces of its own (rootless containers); see
    /// [`crate::security::seccomp_programs`].
    #[serde(default)]
    pub nested_containers: bool,
    /// The mount namespace the sprite's is cloned from (a path to an `ns/mnt` file or a
    /// descriptor of one), instead of the daemon's: one made by
    /// `sprite_sys::mount::seed_namespace`, whose root is a stub with nothing of the
    /// host, so PID 1 builds its root in the stub's `/work` and moves it onto `/`
    /// instead of a `pivot_root` (which walks every thread of the host). Without one,
    /// PID 1 builds its root in the state directory and pivots into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_namespace: Option<PathBuf>,
}

impl SandboxSpec {
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("init.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("init.log")
    }
}
