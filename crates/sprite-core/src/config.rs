//! Settings of the sprite lifecycle, resolved by the daemon from flags and its config file.

use crate::activity::SleepPolicy;
use crate::error::CoreError;
use sprite_api::sprite::{Durability, SpriteConfig};
use std::path::PathBuf;
use std::time::Duration;

/// Where sprites' writable layers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// Plain directories on the host's disk.
    Local,
    /// SpriteFS volumes in an object store (`None`: a directory in the data dir).
    SpriteFs {
        store_url: Option<String>,
        /// Environment of the storage process (S3 endpoint, region, credentials).
        store_env: Vec<(String, String)>,
        /// Fault injection for resilience tests: `PER_MILLE[,LATENCY_MS]`.
        store_faults: Option<String>,
    },
}

/// Directory of the data dir holding `.sprite/bin/sprite-env`, the lowest layer of
/// every sprite's root (the daemon installs its own binary there at start, owned by
/// the storage ids like any layer's files).
pub const SPRITE_ENV_LAYER: &str = "sprite-env-layer";

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub storage: StorageBackend,
    /// Block size of new SpriteFS volumes.
    pub block_bytes: u64,
    /// Root of all state: `control.db`, `images/`, `sprites/`.
    pub data_dir: PathBuf,
    /// The `sprite` binary, run as `sprite init` to launch sandboxes.
    pub executable: PathBuf,
    /// Image of new sprites.
    pub default_image: String,
    /// The region this daemon serves (`config.region` of a create must be it).
    pub region: String,
    /// Debian mirror for building the default image.
    pub debian_mirror: String,
    /// Registries pulled from over plain HTTP (`host` or `host:port`); loopback ones
    /// always are.
    pub insecure_registries: Vec<String>,
    /// First host uid/gid of the ids the files of images and sprite disks are stored
    /// with (uid 0 inside a sprite is stored as this id), and how many ids a sprite has.
    pub id_base: u32,
    pub id_count: u32,
    /// First host uid/gid of the sprites' own ranges: each sprite gets `id_count` ids
    /// of its own from here (its layers are idmapped from the storage ids onto them).
    pub sprite_ids_from: u32,
    /// `oom_score_adj` of every sprite process; none can lower its own below it.
    pub sprite_oom_score_adj: i32,
    /// Whether sprites may make namespaces of their own (rootless containers): off by
    /// default, as it opens the kernel surface behind user namespaces to sprite code.
    pub nested_containers: bool,
    /// Most checkpoints a sprite keeps; a create past it is refused until some go.
    pub max_checkpoints: usize,
    /// Below this much free space under the data directory, sprites that write get a
    /// full disk (see `space`); 0 turns the guard off.
    pub min_free_disk_mb: u64,
    /// Defaults of `config` when a create omits them.
    pub default_ram_mb: u64,
    pub default_cpus: u32,
    pub default_storage_gb: u64,
    /// When a sprite's fsyncs return, unless its `config.durability` says otherwise.
    pub default_durability: Durability,
    /// Processes per sprite.
    pub pids_limit: u64,
    /// Most sprites on this host.
    pub max_sprites: usize,
    /// Limits of an organization that has none of its own (`sprite orgs set`): sprites
    /// awake at once (0: the host's `max_sprites`) and in warm sleep (0: as many).
    pub org_running_limit: u64,
    pub org_warm_limit: u64,
    /// Sprites an organization may create per minute (a burst of as many, then one
    /// every 60/n s); a create past it is a 429 `sprite_creation_rate_limited`.
    pub creates_per_minute: u32,
    /// Base of sprite URLs: `http://<name>.<url_domain>`.
    pub url_domain: String,
    /// Idle times before warm and cold sleep (a sprite's `config` may override them).
    pub sleep: SleepPolicy,
    /// How long services get between SIGTERM and SIGKILL when a sprite goes cold.
    pub stop_grace: Duration,
    /// How often idle sprites are looked at.
    pub lifecycle_tick: Duration,
    /// How often each sprite's usage is sampled (history and `/metrics`).
    pub usage_interval: Duration,
    /// Below this much available host memory, warm sprites go cold (longest idle first).
    pub min_free_memory_mb: u64,
    /// Ready sprites kept frozen for instant creates (default image and size; default 2;
    /// 0: none).
    pub pool_size: usize,
    /// Sprite networking (veth + NAT + DNS + egress policy); `None`: loopback only.
    pub network: Option<crate::network::NetworkConfig>,
    /// `http` or `https` (TLS on the URL proxy): the scheme SpriteInfo.url shows.
    pub url_scheme: String,
    /// This host is one of a cluster: other hosts write the same object store, so a
    /// fresh host does not take every sprite of the store (sprites come to it one by
    /// one: placement, failover, moves) and nothing is garbage-collected.
    pub cluster: bool,
}

impl CoreConfig {
    /// Where sprites' own id ranges are cut from: as many as fit below 2^31 (ids above
    /// it confuse programs that read them as signed).
    pub fn id_ranges(&self) -> crate::db::IdRanges {
        let size = self.id_count.max(1);
        let room = (1u32 << 31).saturating_sub(self.sprite_ids_from) / size;
        crate::db::IdRanges {
            first: self.sprite_ids_from,
            size,
            count: room,
        }
    }

    pub fn new(data_dir: PathBuf, executable: PathBuf) -> Self {
        CoreConfig {
            storage: StorageBackend::Local,
            block_bytes: 1024 * 1024,
            data_dir,
            executable,
            default_image: "dev".into(),
            region: "local".into(),
            debian_mirror: "http://deb.debian.org/debian".into(),
            insecure_registries: Vec::new(),
            id_base: 100_000,
            id_count: 65_536,
            sprite_ids_from: 1 << 30,
            sprite_oom_score_adj: 500,
            nested_containers: false,
            max_checkpoints: 100,
            min_free_disk_mb: 2048,
            default_ram_mb: 1024,
            default_cpus: 1,
            default_storage_gb: 100,
            default_durability: Durability::Local,
            pids_limit: 2048,
            max_sprites: 1000,
            org_running_limit: 0,
            org_warm_limit: 0,
            creates_per_minute: 600,
            url_domain: "localhost:7080".into(),
            sleep: SleepPolicy::default(),
            stop_grace: Duration::from_secs(10),
            lifecycle_tick: Duration::from_secs(1),
            usage_interval: Duration::from_secs(30),
            min_free_memory_mb: 256,
            pool_size: 2,
            network: None,
            url_scheme: "http".into(),
            cluster: false,
        }
    }
}

impl CoreConfig {
    /// A sprite's config: what was asked for over this host's defaults, checked (a
    /// value out of range, an unparsable timer or another region is refused).
    pub(crate) fn sprite_config(
        &self,
        requested: Option<SpriteConfig>,
    ) -> Result<SpriteConfig, CoreError> {
        let requested = requested.unwrap_or_default();
        let cpus_available = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let config = SpriteConfig {
            ram_mb: Some(requested.ram_mb.unwrap_or(self.default_ram_mb)),
            cpus: Some(requested.cpus.unwrap_or(self.default_cpus)),
            storage_gb: Some(requested.storage_gb.unwrap_or(self.default_storage_gb)),
            region: Some(requested.region.unwrap_or_else(|| self.region.clone())),
            warm_after: requested.warm_after,
            cold_after: requested.cold_after,
            durability: Some(requested.durability.unwrap_or(self.default_durability)),
        };
        if config.region.as_deref() != Some(self.region.as_str()) {
            return Err(CoreError::RegionNotServed {
                requested: config.region.clone().unwrap_or_default(),
                served: self.region.clone(),
            });
        }
        for (field, value) in [
            ("config.warm_after", &config.warm_after),
            ("config.cold_after", &config.cold_after),
        ] {
            if let Some(text) = value {
                crate::activity::parse_duration(text).map_err(|e| CoreError::InvalidValue {
                    field,
                    reason: e.to_string(),
                })?;
            }
        }
        let ram = config.ram_mb.unwrap_or_default();
        if !(64..=1024 * 1024).contains(&ram) {
            return Err(CoreError::OutOfRange {
                field: "config.ram_mb",
                value: ram.to_string(),
                allowed: "64 to 1048576".into(),
            });
        }
        let cpus = config.cpus.unwrap_or_default();
        if cpus == 0 || cpus > cpus_available {
            return Err(CoreError::OutOfRange {
                field: "config.cpus",
                value: cpus.to_string(),
                allowed: format!("1 to {cpus_available} (the CPUs of this host)"),
            });
        }
        let storage = config.storage_gb.unwrap_or_default();
        if !(1..=16 * 1024).contains(&storage) {
            return Err(CoreError::OutOfRange {
                field: "config.storage_gb",
                value: storage.to_string(),
                allowed: "1 to 16384".into(),
            });
        }
        Ok(config)
    }
}
