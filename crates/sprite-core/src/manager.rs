//! [`SpriteManager`]: every operation on sprites the API offers.

use crate::activity::{Activity, ActivityGuard, Reason, SystemClock};
use crate::config::CoreConfig;
use crate::config::StorageBackend;
use crate::db::{Database, SpriteRecord};
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::image::{ImageStatus, ImageStore};
use crate::lifecycle::{elapsed_ms, make_dir, Lifecycle, SpriteChanges, Volume};
use crate::pool::Pool;
use crate::rootfs::{LocalOverlayStore, RootStore, SpriteFsSettings, SpriteFsStore};
use crate::tasks::Tasks;
use crate::time::{ms_to_rfc3339, now};
use sprite_api::exec::{ExecParams, SessionInfo, DEFAULT_RUN_AFTER_DISCONNECT_SECS};
use sprite_api::sprite::{
    validate_labels, CheckpointInfo, CreateSpriteRequest, SpriteInfo, SpriteList, SpriteStatus,
    StorageUsage, UpdateSpriteRequest, UrlSettings, LIST_MAX_RESULTS,
};
use sprite_sandbox::client::{Attachment, InitClient};
use sprite_sandbox::protocol::{ErrorCode, SpawnRequest};
use sprite_sandbox::SandboxError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest checkpoint comment, in bytes.
pub const MAX_CHECKPOINT_COMMENT: usize = 4096;

/// Who asks: a holder of the organization's token, or the sprite itself through its
/// `/.sprite/api.sock` (which may act only on what it made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Api,
    Sprite,
}

/// Checkpoints a sprite may make of itself: 20 at once, then one every 3 seconds.
const INSIDE_CHECKPOINT_BURST: u32 = 20;
const INSIDE_CHECKPOINTS_PER_SECOND: f64 = 1.0 / 3.0;

/// Who runs a command: the sprite's user unless the caller asks for another account.
#[derive(Debug, Clone, Default)]
pub struct RunAs(pub Option<String>);

#[derive(Debug)]
pub struct SpriteManager {
    pub(crate) config: CoreConfig,
    pub(crate) db: Arc<Database>,
    /// Starting, stopping, sleeping and waking sprites (`lifecycle.rs`); it owns the
    /// storage, sandboxes, activity, slots and network the operations below go through.
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// Port watching (`ports.rs`), a component of its own.
    ports: Arc<crate::ports::Ports>,
    /// Ready sprites for fast creates (`pool.rs`).
    pub(crate) pool: Arc<Pool>,
    /// Checkpoints sprites make of themselves, per sprite.
    inside_checkpoints: crate::limits::Buckets,
    /// Creates per organization (`creates_per_minute`).
    creates: crate::limits::Buckets,
    /// The usage sampler's last readings (usage.rs).
    pub(crate) usage_state: crate::usage::UsageState,
    /// The cluster's names (None: a single host, every name is its own).
    directory: parking_lot::RwLock<Option<Arc<dyn crate::directory::Directory>>>,
}

/// The directories sprites' in-sprite API sockets live in (`run/<sprite id>`) are on
/// one tmpfs of the daemon's, so what a sprite sees of its `/.sprite/run` mount names
/// no host path. It stays mounted across daemon restarts (sprites keep using it).
fn mount_run_dir(dir: &Path) -> Result<(), CoreError> {
    if crate::rootfs::is_mount_point(dir) {
        return Ok(());
    }
    sprite_sandbox::mounts::mount_tmpfs(dir, "sprite-run", "mode=0700,size=1m,nr_inodes=65536")
        .map_err(|source| CoreError::Sandbox {
            sprite: String::new(),
            source,
        })
}

impl SpriteManager {
    /// Opens the state under `config.data_dir`, creating it on first use.
    pub fn open(config: CoreConfig) -> Result<Arc<SpriteManager>, CoreError> {
        // A sprite's PID 1 (its own host uid) looks up its state directory to mount
        // its root there: the way to it is searchable, not listable. Everything else is
        // root's alone: layers and images hold files with setuid bits and devices a
        // sprite made (mounted nosuid and nodev besides).
        for (dir, mode) in [
            (config.data_dir.clone(), 0o711),
            (config.data_dir.join("sprites"), 0o711),
            (config.data_dir.join("images"), 0o700),
            (config.data_dir.join("layers"), 0o700),
            (config.data_dir.join("run"), 0o700),
        ] {
            make_dir(&dir, mode)?;
        }
        mount_run_dir(&config.data_dir.join("run"))?;
        // The sprite-env layer is cloned into every sprite at its start: a mount of its
        // own, so that clone does not walk every sprite's disk mount on the host's root.
        let env_layer = config.data_dir.join(crate::config::SPRITE_ENV_LAYER);
        if env_layer.is_dir() {
            sprite_sys::mount::bind_to_itself(&env_layer)
                .map_err(CoreError::io("bind onto itself", &env_layer))?;
        }
        let roots: Arc<dyn RootStore> = match &config.storage {
            StorageBackend::Local => {
                Arc::new(LocalOverlayStore::new(config.data_dir.join("layers")))
            }
            StorageBackend::SpriteFs {
                store_url,
                store_env,
                store_faults,
            } => Arc::new(SpriteFsStore::new(SpriteFsSettings {
                data_dir: config.data_dir.clone(),
                executable: config.executable.clone(),
                store_url: store_url.clone(),
                store_env: store_env.clone(),
                store_faults: store_faults.clone(),
                volume_bytes: config.default_storage_gb * 1024 * 1024 * 1024,
                block_bytes: config.block_bytes,
                id_base: config.id_base,
                id_count: config.id_count,
                shared_store: config.cluster,
            })),
        };
        let mount_seed = if nix::unistd::geteuid().is_root() {
            sprite_sys::mount::seed_namespace(&config.data_dir, &sprite_sandbox::DEVICES)
                .inspect_err(|error| {
                    tracing::warn!(%error, "no seed mount namespace; sprites clone the daemon's")
                })
                .ok()
        } else {
            None
        };
        let sandboxes = Arc::new(crate::sandboxes::SystemSandboxes::new(
            config.data_dir.join("sprites"),
            config.executable.clone(),
            &config.data_dir.join("launcher.sock"),
        ));
        Self::assemble(config, roots, sandboxes, mount_seed)
    }

    /// A manager over the given storage and sandboxes, with nothing mounted (tests:
    /// fakes of both run the lifecycle without root).
    pub fn with_parts(
        config: CoreConfig,
        roots: Arc<dyn RootStore>,
        sandboxes: Arc<dyn crate::sandboxes::Sandboxes>,
    ) -> Result<Arc<SpriteManager>, CoreError> {
        make_dir(&config.data_dir, 0o711)?;
        for dir in ["sprites", "images", "layers", "run"] {
            make_dir(&config.data_dir.join(dir), 0o711)?;
        }
        Self::assemble(config, roots, sandboxes, None)
    }

    fn assemble(
        config: CoreConfig,
        roots: Arc<dyn RootStore>,
        sandboxes: Arc<dyn crate::sandboxes::Sandboxes>,
        mount_seed: Option<std::os::fd::OwnedFd>,
    ) -> Result<Arc<SpriteManager>, CoreError> {
        let creates = config.creates_per_minute;
        let db = Arc::new(Database::open(&config.data_dir.join("control.db"))?);
        let activity = Activity::new(Arc::new(SystemClock));
        let tasks = Arc::new(Tasks::new(activity.clone(), db.clone()));
        let slots = Arc::new(crate::slots::Slots::default());
        let ports = crate::ports::Ports::new(db.clone(), slots.clone());
        let images = Arc::new(ImageStore::new(
            config.data_dir.join("images"),
            config.id_base,
            config.debian_mirror.clone(),
        ));
        let network = config
            .network
            .as_ref()
            .map(|n| crate::network::Network::new(n, &config.data_dir))
            .transpose()?;
        let max = config.max_sprites as u64;
        let or_max = |limit: u64| if limit == 0 { max } else { limit };
        let access = Arc::new(crate::access::Access::open(
            db.clone(),
            or_max(config.org_running_limit),
            or_max(config.org_warm_limit),
        )?);
        let lifecycle = Arc::new(Lifecycle {
            config: config.clone(),
            db: db.clone(),
            access,
            metrics: crate::metrics::CoreMetrics::new(),
            stopping: Default::default(),
            images,
            roots,
            sandboxes,
            activity,
            slots,
            tasks,
            network,
            changes: SpriteChanges::new(),
            mount_seed,
            stacks: Default::default(),
        });
        Ok(Arc::new(SpriteManager {
            pool: Arc::new(Pool::new(lifecycle.clone())),
            lifecycle,
            config,
            db,
            ports,
            inside_checkpoints: crate::limits::Buckets::new(
                INSIDE_CHECKPOINT_BURST,
                INSIDE_CHECKPOINTS_PER_SECOND,
            ),
            creates: crate::limits::Buckets::new(creates, f64::from(creates) / 60.0),
            directory: parking_lot::RwLock::new(None),
            usage_state: Default::default(),
        }))
    }

    /// Create and wake latencies.
    pub fn metrics(&self) -> &crate::metrics::CoreMetrics {
        &self.lifecycle.metrics
    }

    /// The storage process's object store calls and upload queue (None without one).
    pub async fn storage_stats(
        &self,
    ) -> Result<Option<sprite_fs::service::StorageStats>, CoreError> {
        self.lifecycle.roots.storage_stats().await
    }

    /// Tokens and organizations' limits.
    pub fn access(&self) -> &crate::access::Access {
        &self.lifecycle.access
    }

    /// From now on, names are claimed in the cluster's directory before a sprite is
    /// made and released when it is destroyed.
    pub fn set_directory(&self, directory: Arc<dyn crate::directory::Directory>) {
        *self.directory.write() = Some(directory);
    }

    fn directory(&self) -> Option<Arc<dyn crate::directory::Directory>> {
        self.directory.read().clone()
    }

    /// Claims a new sprite's name in the cluster (nothing to do on a single host).
    async fn claim_name(&self, key: &SpriteKey) -> Result<(), CoreError> {
        let Some(directory) = self.directory() else {
            return Ok(());
        };
        match directory.claim(key).await {
            Ok(()) => Ok(()),
            Err(crate::directory::DirectoryError::Taken { owner }) => {
                if self.record(key).is_ok() {
                    Err(CoreError::SpriteExists(key.name.to_string()))
                } else {
                    Err(CoreError::SpriteExistsElsewhere {
                        name: key.name.to_string(),
                        owner,
                    })
                }
            }
            Err(crate::directory::DirectoryError::Unavailable(reason)) => {
                Err(CoreError::DirectoryUnavailable {
                    name: key.name.to_string(),
                    reason,
                })
            }
        }
    }

    /// Gives a name back to the cluster (logged, not fatal: the sprite is gone here).
    async fn release_name(&self, key: &SpriteKey) {
        if let Some(directory) = self.directory() {
            if let Err(error) = directory.release(key).await {
                tracing::warn!(sprite = %key.name, "could not release the name in the cluster directory: {error}");
            }
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// When a sprite last went to warm sleep (RFC 3339), if it did.
    pub fn last_warming_at(&self, sprite_id: &str) -> Option<String> {
        self.lifecycle.last_warming_at(sprite_id)
    }

    /// Runs the idle policy forever (warm and cold sleep, memory pressure), every
    /// `config.lifecycle_tick`.
    pub async fn run_lifecycle(self: Arc<Self>) {
        self.lifecycle.clone().run().await
    }

    /// Keeps the pool full, forever (returns at once when the pool is off).
    pub async fn run_pool(self: Arc<Self>) {
        self.pool.clone().run().await
    }

    /// Ready sprites in the pool now.
    pub fn pool_ready(&self) -> usize {
        self.pool.ready_count()
    }

    /// Which ports sprites listen on, and their changes (`ports/watch`, exec frames).
    pub fn ports(&self) -> &Arc<crate::ports::Ports> {
        &self.ports
    }

    /// The tasks of this host's sprites (the in-sprite API's `/v1/tasks`).
    pub fn tasks(&self) -> &Tasks {
        &self.lifecycle.tasks
    }

    pub(crate) fn info(&self, record: &SpriteRecord) -> SpriteInfo {
        let (status, _) = self.lifecycle.activity.status(&record.id);
        SpriteInfo {
            id: record.id.to_string(),
            name: record.name.clone(),
            organization: record.org.clone(),
            status,
            url: format!(
                "{}://{}.{}",
                self.config.url_scheme, record.name, self.config.url_domain
            ),
            url_settings: UrlSettings {
                auth: record.url_auth,
                private_access: record.attrs.private_access.clone(),
            },
            labels: record.labels.clone(),
            config: record.config.clone(),
            environment: record.environment.clone(),
            created_at: record.created_at.clone(),
            updated_at: record.updated_at.clone(),
            last_running_at: record.last_running_at.clone(),
            last_warming_at: self.lifecycle.last_warming_at(&record.id),
            primary_region: Some(self.config.region.clone()),
            runtime: record.attrs.runtime.clone(),
            storage: None,
            lifecycle: Some(self.lifecycle.lifecycle_info(record)),
            image: Some(record.image.clone()),
        }
    }

    /// [`Self::info`] with the sprite's object-store usage, when the storage answers
    /// (a listing never fails because the storage process is busy or down).
    async fn info_with_usage(&self, record: &SpriteRecord) -> SpriteInfo {
        let mut info = self.info(record);
        match self.lifecycle.roots.usage(&record.id).await {
            Ok(usage) => {
                info.storage = usage.map(|u| StorageUsage {
                    bytes_stored: u.bytes_stored,
                    chunks: u.chunks,
                    checkpoints: u.checkpoints.len() as u64,
                    durability: u.attached.map(|(durability, _, _)| durability),
                    lag_bytes: u.attached.map(|(_, bytes, _)| bytes),
                    lag_ms: u.attached.map(|(_, _, ms)| ms),
                })
            }
            Err(error) => {
                tracing::debug!(sprite = %record.name, "no usage: {}", sprite_api::error_chain(&error))
            }
        }
        info
    }

    pub(crate) fn record(&self, key: &SpriteKey) -> Result<SpriteRecord, CoreError> {
        self.db.record(key)
    }

    /// Creates and starts a sprite. A second create of a taken name fails with
    /// `SpriteExists`, never making a second sprite.
    pub async fn create(
        &self,
        org: &str,
        request: CreateSpriteRequest,
    ) -> Result<SpriteInfo, CoreError> {
        sprite_api::validate_sprite_name(&request.name)?;
        let labels = request.labels.unwrap_or_default();
        check_labels(&labels)?;
        let environment = request.environment.unwrap_or_default();
        if let Some(key) = environment
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(CoreError::InvalidName {
                what: "environment key",
                value: key.clone(),
                rule: "use a variable name without = or NUL",
            });
        }
        let config = self.config.sprite_config(request.config)?;
        // The volume (and version) a new sprite starts from: a checkpoint of another
        // sprite, or a template; and the image that data goes with.
        let fork: Option<(String, String, String)> = match (&request.from, &request.template) {
            (Some(_), Some(_)) => {
                return Err(CoreError::Validation(
                    "from and template both given: a sprite starts from a checkpoint (from) or from a template, not both".into(),
                ))
            }
            (Some(source), None) => {
                let (parent, version) = self.fork_source(org, source).await?;
                let image = crate::upgrades::image_at(&parent, &version);
                Some((parent.id.to_string(), version, image))
            }
            (None, Some(name)) => {
                let (volume, info) = self.find_template(org, name).await?;
                Some((volume, crate::templates::TEMPLATE_VERSION.to_string(), info.image))
            }
            (None, None) => None,
        };
        // A fork runs on its parent's image; others on the one asked for, or the default.
        let image = match (&fork, &request.image) {
            (Some((_, _, parent_image)), _) => parent_image.clone(),
            // A name starts the newest version of the image; NAME@N that version.
            (None, Some(image)) if image.contains('@') => {
                ImageStore::check_key(image)?;
                // Only a version that exists: naming one must not start a build.
                let images = &self.lifecycle.images;
                if !images.is_ready(image)
                    && self.lifecycle.oci_image(image).await?.is_none()
                    && self.lifecycle.roots.mount_image(image).await?.is_none()
                {
                    return Err(CoreError::UnknownImage {
                        name: image.clone(),
                        known: images
                            .versions(crate::image::base_name(image))
                            .into_iter()
                            .filter(|key| images.is_ready(key))
                            .collect(),
                    });
                }
                image.clone()
            }
            (None, Some(image)) => {
                ImageStore::check_name(image)?;
                self.lifecycle.images.current_key(image)
            }
            (None, None) => self
                .lifecycle
                .images
                .current_key(&self.config.default_image),
        };
        if self.stopping() {
            return Err(CoreError::Stopping);
        }
        self.admit_create(org, request.wait_for_capacity == Some(true))
            .await?;
        let url_settings = request.url_settings.clone().unwrap_or_default();
        if let Some(access) = &url_settings.private_access {
            sprite_api::sprite::validate_private_access(access).map_err(CoreError::Validation)?;
        }
        if let Some(runtime) = &request.runtime {
            sprite_api::sprite::validate_runtime(runtime).map_err(CoreError::Validation)?;
        }
        let timestamp = now();
        let record = SpriteRecord {
            id: crate::ids::SpriteId::generate(),
            org: org.to_string(),
            name: request.name.clone(),
            image,
            url_auth: url_settings.auth,
            labels,
            config,
            environment,
            created_at: timestamp.clone(),
            updated_at: timestamp,
            last_running_at: None,
            // Picked when the record is inserted (`Database::insert_with_id_range`).
            id_base: 0,
            attrs: crate::db::SpriteAttrs {
                runtime: request.runtime.clone(),
                private_access: url_settings.private_access.clone(),
                upgrades: Vec::new(),
            },
            pooled: false,
        };
        let run = match request.run_cmd {
            Some(true) => Some(self.image_command(&record.image).await?),
            _ => None,
        };
        let key = record.key();
        self.claim_name(&key).await?;
        let made = self.make(record, fork).await;
        match (&made, self.directory()) {
            (Err(_), _) => self.release_name(&key).await,
            (Ok(_), Some(directory)) => directory.made(&key),
            (Ok(_), None) => {}
        }
        if let (Ok(_), Some(spec)) = (&made, run) {
            let started = async { self.services(&key).await?.put("app", spec).await }.await;
            if let Err(error) = started {
                // Made whole or not at all: the sprite goes with its service.
                if let Err(undo) = self.destroy(&key).await {
                    tracing::warn!(sprite = %key.name, "undoing the create: {}", sprite_api::error_chain(&undo));
                }
                return Err(error);
            }
        }
        made
    }

    /// The service that runs a registry or archive image's `Entrypoint` + `Cmd`.
    async fn image_command(
        &self,
        image: &str,
    ) -> Result<sprite_api::services::ServiceSpec, CoreError> {
        let Some(oci) = self.lifecycle.oci_image(image).await? else {
            return Err(CoreError::Validation(format!(
                "run_cmd needs an image from a registry or an archive, with an Entrypoint or Cmd; {image} is not one"
            )));
        };
        let mut command = oci.config.run_command().into_iter();
        let Some(cmd) = command.next() else {
            return Err(CoreError::Validation(format!(
                "image {image} has no Entrypoint or Cmd to run; start a service yourself (sprite services create)"
            )));
        };
        Ok(sprite_api::services::ServiceSpec {
            cmd,
            args: command.collect(),
            // The image's environment (its PATH first of all) and user, as exec has them.
            env: oci.config.env_pairs().into_iter().collect(),
            dir: oci.config.working_dir.clone(),
            needs: Vec::new(),
            http_port: oci.config.exposed_tcp_ports.first().copied(),
            user: Some(oci.user.clone()).filter(|user| !user.is_empty()),
        })
    }

    /// The second half of [`Self::create`], once the name is this host's: from the
    /// pool, or provisioned.
    async fn make(
        &self,
        record: SpriteRecord,
        fork: Option<(String, String, String)>,
    ) -> Result<SpriteInfo, CoreError> {
        let begun = std::time::Instant::now();
        if fork.is_none() && self.pool.poolable(&record.image, record.config.storage_gb) {
            if let Some(taken) = self.pool.take(&record).await? {
                tracing::info!(sprite = %taken.name, id = %taken.id, "sprite created from the pool");
                self.publish_record(&taken).await;
                self.metrics()
                    .create_seconds
                    .with_label_values(&["pool"])
                    .observe(begun.elapsed().as_secs_f64());
                return Ok(self.info(&taken));
            }
        }
        let mut record = record;
        let source = if fork.is_some() { "fork" } else { "new" };
        let volume = match &fork {
            Some((parent, version, _)) => Volume::Fork { parent, version },
            None => Volume::Empty {
                bytes: record
                    .config
                    .storage_gb
                    .unwrap_or(self.config.default_storage_gb)
                    << 30,
            },
        };
        let volume_ms = self.lifecycle.provision(&mut record, volume, false).await?;
        self.metrics()
            .create_seconds
            .with_label_values(&[source])
            .observe(begun.elapsed().as_secs_f64());
        tracing::info!(
            sprite = %record.name,
            id = %record.id,
            ms = elapsed_ms(begun),
            volume_ms,
            "sprite created"
        );
        let record = self.record(&record.key())?;
        self.publish_record(&record).await;
        Ok(self.info(&record))
    }

    fn record_key(record: &SpriteRecord) -> String {
        Self::record_key_of(&record.key())
    }

    /// Where a sprite's record is kept in the object store.
    pub(crate) fn record_key_of(key: &SpriteKey) -> String {
        format!("sprites/{}/{}.json", key.org, key.name)
    }

    /// The sprite and checkpoint a fork or template copies: the one named, else the
    /// sprite's newest.
    pub(crate) async fn fork_source(
        &self,
        org: &str,
        source: &sprite_api::sprite::ForkSource,
    ) -> Result<(SpriteRecord, String), CoreError> {
        let source_key = SpriteKey::new(org, &source.sprite);
        let parent = self.record(&source_key)?;
        let version = match &source.checkpoint {
            Some(id) => {
                refuse_current(id)?;
                self.checkpoint_info(&source_key, id).await?;
                id.clone()
            }
            None => self
                .checkpoints(&source_key)
                .await?
                .pop()
                .map(|c| c.id)
                .ok_or_else(|| CoreError::NothingToFork(source.sprite.clone()))?,
        };
        Ok((parent, version))
    }

    /// Mirrors a sprite's record into the object store (SpriteFS), so a fresh host
    /// given only the store recovers the sprite. Failures are logged, not fatal: the
    /// local database stays the source of truth on this host.
    pub(crate) async fn publish_record(&self, record: &SpriteRecord) {
        if record.pooled {
            return;
        }
        let value = serde_json::to_value(record).unwrap_or_default();
        if let Err(error) = self
            .lifecycle
            .roots
            .save_record(&Self::record_key(record), &value)
            .await
        {
            tracing::warn!(sprite = %record.name, "could not save the sprite record to the store: {}", sprite_api::error_chain(&error));
        }
    }

    /// Brings every known sprite back after a daemon start: sprites whose PID 1 still
    /// answers are adopted as they are (sessions and all), the others are started.
    pub async fn recover(&self) -> Result<usize, CoreError> {
        // In a cluster the store holds every host's sprites: they come here one by one.
        if self.db.count()? == 0 && !self.config.cluster {
            // A fresh host: sprites recorded in the object store come back.
            for value in self.lifecycle.roots.load_records("sprites/").await? {
                match serde_json::from_value::<SpriteRecord>(value) {
                    Ok(record) => {
                        tracing::info!(sprite = %record.name, "recovered from the object store");
                        self.db.insert(&record)?;
                    }
                    Err(error) => tracing::warn!("unreadable sprite record in the store: {error}"),
                }
            }
        }
        self.lifecycle.tasks.recover()?;
        // Sprites keep their links even when the tables cannot be re-installed (the old
        // table stays as it was: installs are atomic).
        if let Err(error) = self.recover_network().await {
            tracing::error!("sprite network: {}", sprite_api::error_chain(&error));
        }
        let mut adopted = 0;
        for record in self.db.all()? {
            if record.pooled {
                if let Err(error) = self.pool.recover(&record).await {
                    tracing::warn!(sprite = %record.name, "pooled sprite: {}", sprite_api::error_chain(&error));
                }
                continue;
            }
            if self.lifecycle.adopt_sleeping(&record)? {
                adopted += 1;
                continue;
            }
            if self.lifecycle.sandboxes.ping(&record.id).await {
                self.lifecycle.became_running(&record);
                adopted += 1;
                continue;
            }
            if let Err(error) = self.lifecycle.start(&record).await {
                tracing::warn!(sprite = %record.name, "could not restart: {}", sprite_api::error_chain(&error));
            }
        }
        Ok(adopted)
    }

    /// `SpriteNotFound` unless the sprite exists.
    pub fn check_exists(&self, key: &SpriteKey) -> Result<(), CoreError> {
        self.record(key).map(|_| ())
    }

    pub async fn get(&self, key: &SpriteKey) -> Result<SpriteInfo, CoreError> {
        Ok(self.info_with_usage(&self.record(key)?).await)
    }

    pub async fn list(
        &self,
        org: &str,
        prefix: &str,
        max_results: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<SpriteList, CoreError> {
        let max = max_results.unwrap_or(LIST_MAX_RESULTS);
        if max == 0 || max > LIST_MAX_RESULTS {
            return Err(CoreError::OutOfRange {
                field: "max_results",
                value: max.to_string(),
                allowed: format!("1 to {LIST_MAX_RESULTS}"),
            });
        }
        let mut records = self.db.list(org, prefix, continuation, max as usize + 1)?;
        let has_more = records.len() > max as usize;
        records.truncate(max as usize);
        let mut sprites = Vec::with_capacity(records.len());
        for record in &records {
            sprites.push(self.info_with_usage(record).await);
        }
        let counts = self.org_counts(org)?;
        Ok(SpriteList {
            next_continuation_token: if has_more {
                records.last().map(|r| r.name.clone())
            } else {
                None
            },
            has_more,
            sprites,
            counts: Some(counts.clone()),
            org: Some(counts),
        })
    }

    /// Room for one more sprite: under `max_sprites` and within `creates_per_minute`.
    /// With `wait`, waits for room (up to [`CAPACITY_WAIT`]) instead of refusing.
    async fn admit_create(&self, org: &str, wait: bool) -> Result<(), CoreError> {
        let deadline = tokio::time::Instant::now() + CAPACITY_WAIT;
        loop {
            let refusal = match self.db.count()? {
                current if current >= self.config.max_sprites => CoreError::ConcurrentLimit {
                    org: org.to_string(),
                    limit: self.config.max_sprites,
                    current,
                },
                _ => match self.lifecycle.running_limit_reached(org) {
                    Err(refusal) => refusal,
                    Ok(()) => match self.creates.take(org) {
                        Ok(()) => return Ok(()),
                        Err(retry) => CoreError::CreationRateLimited {
                            org: org.to_string(),
                            limit: self.config.creates_per_minute,
                            window_seconds: 60,
                            retry_after: retry.as_secs().max(1),
                        },
                    },
                },
            };
            if !wait || tokio::time::Instant::now() >= deadline {
                return Err(refusal);
            }
            tokio::time::sleep(CAPACITY_POLL).await;
        }
    }

    /// An organization's sprites by status (`GET /v1/organization`, lists, watches).
    pub fn org_counts(&self, org: &str) -> Result<sprite_api::sprite::OrgCounts, CoreError> {
        let limits = self.access().limits(org);
        let [running, warm, cold] = self.lifecycle.org_statuses(org)?;
        Ok(sprite_api::sprite::OrgCounts {
            name: org.to_string(),
            running,
            warm,
            cold,
            running_limit: limits.running_limit,
            warm_limit: limits.warm_limit,
        })
    }

    /// Name and status of each of an organization's sprites whose name starts with
    /// `prefix` (the NDJSON watch of `GET /v1/sprites`).
    pub fn statuses(
        &self,
        org: &str,
        prefix: &str,
    ) -> Result<Vec<(SpriteRecord, SpriteStatus)>, CoreError> {
        let records = self
            .db
            .list(org, prefix, None, self.config.max_sprites + 1)?;
        Ok(records
            .into_iter()
            .map(|record| {
                let status = self.lifecycle.activity.status(&record.id).0;
                (record, status)
            })
            .collect())
    }

    pub async fn update(
        &self,
        key: &SpriteKey,
        request: UpdateSpriteRequest,
    ) -> Result<SpriteInfo, CoreError> {
        let mut record = self.record(key)?;
        if let Some(settings) = request.url_settings {
            if let Some(auth) = settings.auth {
                record.url_auth = auth;
            }
            if let Some(access) = settings.private_access {
                sprite_api::sprite::validate_private_access(&access)
                    .map_err(CoreError::Validation)?;
                record.attrs.private_access = Some(access);
            }
        }
        if request.clear_labels == Some(true) {
            record.labels.clear();
        }
        if let Some(labels) = request.labels {
            check_labels(&labels)?;
            record.labels = labels;
        }
        record.updated_at = now();
        self.db.update(&record)?;
        self.publish_record(&record).await;
        Ok(self.info(&record))
    }

    pub async fn destroy(&self, key: &SpriteKey) -> Result<(), CoreError> {
        let record = self.record(key)?;
        // A copy here of a sprite another host owns now is stale: it goes, and what
        // the store holds (the owner's) stays.
        if let Some(directory) = self.directory() {
            let elsewhere =
                directory
                    .owns(key)
                    .await
                    .map_err(|error| CoreError::DirectoryUnavailable {
                        name: key.name.to_string(),
                        reason: error.to_string(),
                    })?;
            if let Some(owner) = elsewhere {
                self.abandon(key).await?;
                return Err(CoreError::MovedElsewhere {
                    name: key.name.to_string(),
                    owner,
                });
            }
        }
        let start_lock = self.lifecycle.start_lock(&record.id);
        let _guard = start_lock.lock().await;
        self.lifecycle.teardown(&record).await?;
        self.db.delete(&record.id)?;
        self.forget_usage(&record.id);
        self.release_name(key).await;
        if let Err(error) = self
            .lifecycle
            .roots
            .delete_record(&Self::record_key(&record))
            .await
        {
            tracing::warn!(sprite = %record.name, "could not delete the sprite record from the store: {}", sprite_api::error_chain(&error));
        }
        tracing::info!(sprite = %record.name, id = %record.id, "sprite destroyed");
        self.lifecycle.changes.note(&record.id);
        // The last sprite of an old image version takes the version with it.
        if record.image.contains('@')
            || !record.attrs.upgrades.is_empty()
            || self.lifecycle.images.current_key(&record.image) != record.image
        {
            self.collect_image_versions(crate::image::base_name(&record.image))
                .await;
        }
        Ok(())
    }

    /// The sprite's init client, after waking the sprite if it sleeps. The guard keeps
    /// it awake until the caller is done.
    pub(crate) async fn running_client(
        &self,
        key: &SpriteKey,
    ) -> Result<(SpriteRecord, InitClient, ActivityGuard), CoreError> {
        let record = self.record(key)?;
        let guard = self.lifecycle.wake_record(&record, Reason::Api).await?;
        let client = self.lifecycle.client_for(&record.id);
        Ok((record, client, guard))
    }

    fn session_error(&self, sprite: &str, session: Option<&str>, error: SandboxError) -> CoreError {
        match (error, session) {
            (
                SandboxError::Init {
                    kind: ErrorCode::NotFound,
                    ..
                },
                Some(id),
            ) => CoreError::SessionNotFound(id.into()),
            (
                SandboxError::Init {
                    kind: ErrorCode::Gone,
                    ..
                },
                Some(id),
            ) => CoreError::SessionGone(id.into()),
            (
                SandboxError::Init {
                    kind: ErrorCode::SpawnFailed,
                    message,
                },
                _,
            ) => CoreError::SpawnFailed(message),
            (source, _) => CoreError::Sandbox {
                sprite: sprite.into(),
                source,
            },
        }
    }

    /// Starts a command in the sprite and attaches to it.
    pub async fn spawn(
        &self,
        key: &SpriteKey,
        params: &ExecParams,
        run_as: &RunAs,
    ) -> Result<Attachment, CoreError> {
        let name = key.name.as_str();
        let (record, client, _awake) = self.running_client(key).await?;
        if params.tty {
            // Counted before the spawn: a tick that looks meanwhile asks again next time.
            let slot = self.lifecycle.slots.get(&record.id);
            slot.tty_started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        // A registry image's config: its Env under the sprite's own, its WorkingDir
        // and User unless the request says otherwise.
        let image = self.lifecycle.images.oci_cached(&record.image);
        let mut extra_env = image
            .as_ref()
            .map(|image| image.config.env_pairs())
            .unwrap_or_default();
        extra_env.extend(record.environment.clone());
        let request = SpawnRequest {
            argv: params.argv.clone(),
            path: params.path.clone(),
            dir: params.dir.clone().or_else(|| {
                image
                    .as_ref()
                    .and_then(|image| image.config.working_dir.clone())
            }),
            env: params.env.clone(),
            extra_env: extra_env.into_iter().collect(),
            user: run_as.0.clone().unwrap_or_else(|| {
                image
                    .as_ref()
                    .map(|image| image.user.clone())
                    .filter(|user| !user.is_empty())
                    .unwrap_or_else(|| "sprite".into())
            }),
            tty: params.tty,
            stdin: params.stdin,
            cols: params.cols,
            rows: params.rows,
            max_run_after_disconnect_secs: params
                .max_run_after_disconnect_secs
                .unwrap_or(DEFAULT_RUN_AFTER_DISCONNECT_SECS),
        };
        match client.spawn(request.clone()).await {
            Ok(attachment) => Ok(attachment),
            Err(error @ SandboxError::Connect(..)) => {
                // PID 1 went away under us: restart the sprite once and retry.
                self.lifecycle
                    .activity
                    .set_status(&record.id, SpriteStatus::Cold);
                tracing::warn!(sprite = %name, "init unreachable, restarting: {}", sprite_api::error_chain(&error));
                let (_, client, _awake) = self.running_client(key).await?;
                client
                    .spawn(request)
                    .await
                    .map_err(|e| self.session_error(name, None, e))
            }
            Err(error) => Err(self.session_error(name, None, error)),
        }
    }

    pub async fn attach(&self, key: &SpriteKey, session_id: &str) -> Result<Attachment, CoreError> {
        self.attach_from(key, session_id, true).await
    }

    /// Attaches to a session; `replay` sends its recent output first.
    pub async fn attach_from(
        &self,
        key: &SpriteKey,
        session_id: &str,
        replay: bool,
    ) -> Result<Attachment, CoreError> {
        let name = key.name.as_str();
        let (_, client, _awake) = self.running_client(key).await?;
        client
            .attach_from(session_id, replay)
            .await
            .map_err(|e| self.session_error(name, Some(session_id), e))
    }

    pub async fn sessions(&self, key: &SpriteKey) -> Result<Vec<SessionInfo>, CoreError> {
        let name = key.name.as_str();
        let (_, client, _awake) = self.running_client(key).await?;
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let sessions = client
            .list()
            .await
            .map_err(|e| self.session_error(name, None, e))?;
        Ok(sessions
            .into_iter()
            .map(|s| {
                let seconds = (now_ms.saturating_sub(s.created_ms) as f64 / 1000.0).max(0.001);
                SessionInfo {
                    id: s.id,
                    command: s.command,
                    workdir: s.workdir,
                    created: ms_to_rfc3339(s.created_ms),
                    is_active: s.exit_code.is_none(),
                    last_activity: ms_to_rfc3339(s.last_activity_ms),
                    tty: s.tty,
                    bytes_per_second: s.bytes_out as f64 / seconds,
                    exit_code: s.exit_code,
                    cols: (s.cols > 0).then_some(s.cols),
                    rows: (s.rows > 0).then_some(s.rows),
                    is_owner: true,
                }
            })
            .collect())
    }

    pub async fn kill_session(
        &self,
        key: &SpriteKey,
        session_id: &str,
        signal: i32,
    ) -> Result<(), CoreError> {
        let name = key.name.as_str();
        let (_, client, _awake) = self.running_client(key).await?;
        client
            .kill(session_id, signal)
            .await
            .map_err(|e| self.session_error(name, Some(session_id), e))
    }

    /// Checkpoints a sprite's filesystem as the next `vN`.
    pub async fn checkpoint(
        &self,
        key: &SpriteKey,
        comment: Option<&str>,
        caller: Caller,
    ) -> Result<CheckpointInfo, CoreError> {
        let name = key.name.as_str();
        let record = self.record(key)?;
        // The freeze of a checkpoint needs the sprite's disk mounted: a cold sprite wakes.
        let _awake = self.lifecycle.wake_record(&record, Reason::Api).await?;
        let start_lock = self.lifecycle.start_lock(&record.id);
        let _guard = start_lock.lock().await;
        let versions = self.lifecycle.roots.versions(&record.id).await?;
        if versions.len() >= self.config.max_checkpoints {
            return Err(CoreError::TooManyCheckpoints {
                sprite: name.to_string(),
                count: versions.len(),
            });
        }
        let next = versions
            .iter()
            .filter_map(|v| v.name.strip_prefix('v').and_then(|n| n.parse::<u64>().ok()))
            .max()
            .map_or(0, |n| n + 1);
        let id = format!("v{next}");
        self.lifecycle
            .roots
            .checkpoint(&record.id, &id, comment)
            .await?;
        if caller == Caller::Sprite {
            self.db.set_made_inside(&record.id, &id, true)?;
        }
        tracing::info!(sprite = %name, checkpoint = %id, ?caller, "checkpoint created");
        self.lifecycle.refresh_views_later(&record.id);
        self.checkpoint_info(key, &id).await
    }

    /// What a checkpoint create is refused for, answered before it starts (the API
    /// streams its progress, so the status must be known first): a comment too long,
    /// a sprite checkpointing itself too fast. Takes one of the sprite's tokens.
    pub fn admit_checkpoint(
        &self,
        key: &SpriteKey,
        comment: Option<&str>,
        caller: Caller,
    ) -> Result<(), CoreError> {
        let name = key.name.as_str();
        let record = self.record(key)?;
        if let Some(comment) = comment {
            if comment.len() > MAX_CHECKPOINT_COMMENT {
                return Err(CoreError::OutOfRange {
                    field: "comment",
                    value: format!("{} bytes", comment.len()),
                    allowed: format!("at most {MAX_CHECKPOINT_COMMENT} bytes"),
                });
            }
        }
        if caller == Caller::Sprite {
            self.inside_checkpoints.take(&record.id).map_err(|wait| {
                CoreError::CheckpointsTooFast {
                    sprite: name.to_string(),
                    burst: INSIDE_CHECKPOINT_BURST,
                    retry_after: wait.as_secs().max(1),
                }
            })?;
        }
        Ok(())
    }

    /// Whether `caller` may restore or delete checkpoint `id` of the sprite.
    pub async fn admit_checkpoint_change(
        &self,
        key: &SpriteKey,
        id: &str,
        caller: Caller,
    ) -> Result<(), CoreError> {
        refuse_current(id)?;
        self.checkpoint_info(key, id).await?;
        let record = self.record(key)?;
        self.check_own_checkpoint(&record, id, caller)
    }

    /// Refuses a sprite acting from inside on a checkpoint it did not make itself.
    fn check_own_checkpoint(
        &self,
        record: &SpriteRecord,
        id: &str,
        caller: Caller,
    ) -> Result<(), CoreError> {
        if caller == Caller::Sprite && !self.db.made_inside(&record.id, id)? {
            return Err(CoreError::NotOwnCheckpoint {
                sprite: record.name.clone(),
                checkpoint: id.to_string(),
            });
        }
        Ok(())
    }

    /// Checkpoints of a sprite, oldest first.
    pub async fn checkpoints(&self, key: &SpriteKey) -> Result<Vec<CheckpointInfo>, CoreError> {
        Ok(self.checkpoint_lineage(key).await?.0)
    }

    /// The sprite's checkpoints, oldest first, each with its `source_id` and `history`,
    /// and the row for its current state (`Current`: what it was restored from or
    /// last checkpointed as, and before).
    pub async fn checkpoint_lineage(
        &self,
        key: &SpriteKey,
    ) -> Result<(Vec<CheckpointInfo>, CheckpointInfo), CoreError> {
        let record = self.record(key)?;
        let (versions, current) = self.lifecycle.roots.lineage(&record.id).await?;
        let rows = versions
            .into_iter()
            .map(|v| CheckpointInfo {
                is_auto: v.name.starts_with("auto-"),
                create_time: v
                    .created_at
                    .parse::<u64>()
                    .map(ms_to_rfc3339)
                    .unwrap_or(v.created_at),
                comment: v.comment,
                source_id: v.history.first().cloned(),
                history: Some(v.history),
                id: v.name,
            })
            .collect();
        let current = CheckpointInfo {
            id: sprite_api::sprite::CURRENT_CHECKPOINT.to_string(),
            create_time: now(),
            comment: Some("the sprite's current state".into()),
            is_auto: false,
            source_id: current.first().cloned(),
            history: Some(current),
        };
        Ok((rows, current))
    }

    pub async fn checkpoint_info(
        &self,
        key: &SpriteKey,
        id: &str,
    ) -> Result<CheckpointInfo, CoreError> {
        let name = key.name.as_str();
        let (rows, current) = self.checkpoint_lineage(key).await?;
        if id == sprite_api::sprite::CURRENT_CHECKPOINT {
            return Ok(current);
        }
        rows.into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| CoreError::CheckpointNotFound {
                sprite: name.into(),
                checkpoint: id.into(),
            })
    }

    /// Restores a checkpoint: the sprite's processes and sessions end, its filesystem
    /// becomes the checkpoint's, and it starts again.
    pub async fn restore(
        &self,
        key: &SpriteKey,
        id: &str,
        caller: Caller,
    ) -> Result<(), CoreError> {
        let name = key.name.as_str();
        self.admit_checkpoint_change(key, id, caller).await?;
        let record = self.record(key)?;
        let (_busy, _) = self.lifecycle.activity.hold(&record.id, Reason::Api);
        let start_lock = self.lifecycle.start_lock(&record.id);
        let _guard = start_lock.lock().await;
        self.lifecycle
            .activity
            .set_status(&record.id, SpriteStatus::Cold);
        self.lifecycle.kill_sandbox(&record).await?;
        self.lifecycle.roots.release(&record.id).await?;
        self.lifecycle.roots.restore(&record.id, id).await?;
        // A checkpoint from before an upgrade runs on the image it was taken on.
        let record = match crate::upgrades::restored_record(&record, id) {
            Some(restored) => {
                self.db
                    .set_image(&restored.id, &restored.image, &restored.attrs)?;
                tracing::info!(sprite = %name, image = %restored.image, "the restore undid an upgrade");
                restored
            }
            None => record,
        };
        self.lifecycle.start_locked(&record).await?;
        tracing::info!(sprite = %name, checkpoint = %id, "checkpoint restored");
        Ok(())
    }

    pub async fn delete_checkpoint(
        &self,
        key: &SpriteKey,
        id: &str,
        caller: Caller,
    ) -> Result<(), CoreError> {
        self.admit_checkpoint_change(key, id, caller).await?;
        let record = self.record(key)?;
        self.lifecycle.roots.delete_version(&record.id, id).await?;
        self.db.set_made_inside(&record.id, id, false)?;
        self.lifecycle.refresh_views_later(&record.id);
        Ok(())
    }

    /// Storage a sprite uses (ours: `GET /v1/sprites/{name}/usage`).
    pub async fn usage(
        &self,
        key: &SpriteKey,
    ) -> Result<sprite_api::admin::SpriteUsage, CoreError> {
        let name = key.name.as_str();
        use sprite_api::admin::{CheckpointUsage, SpriteUsage, StorageKind};
        let record = self.record(key)?;
        let usage = self.lifecycle.roots.usage(&record.id).await?;
        Ok(match usage {
            Some(usage) => SpriteUsage {
                sprite: name.to_string(),
                storage: StorageKind::Spritefs,
                bytes_stored: Some(usage.bytes_stored),
                chunks: Some(usage.chunks),
                bytes_cached_on_host: Some(usage.bytes_cached_on_host),
                checkpoints: Some(
                    usage
                        .checkpoints
                        .into_iter()
                        .map(|(id, bytes_added)| CheckpointUsage { id, bytes_added })
                        .collect(),
                ),
                history: None,
            },
            None => SpriteUsage {
                sprite: name.to_string(),
                storage: StorageKind::Local,
                bytes_stored: None,
                chunks: None,
                bytes_cached_on_host: None,
                checkpoints: None,
                history: None,
            },
        })
    }

    /// Garbage collection now (ours: `POST /v1/admin/gc`).
    pub async fn collect_garbage(&self) -> Result<sprite_api::admin::GcReport, CoreError> {
        if self.config.cluster {
            return Err(CoreError::NotInCluster(
                "garbage collection",
                "the hosts share one object store and none knows every reference",
            ));
        }
        Ok(match self.lifecycle.roots.collect_garbage().await? {
            Some((layers, chunks, bytes)) => sprite_api::admin::GcReport {
                layers: layers as u64,
                chunks: chunks as u64,
                bytes_freed: bytes,
                note: None,
            },
            None => sprite_api::admin::GcReport {
                note: Some("local storage has nothing to collect".into()),
                ..Default::default()
            },
        })
    }

    pub fn image_statuses(&self) -> Vec<ImageStatus> {
        self.lifecycle.images.statuses()
    }

    /// A fresh path for an upload in progress (inside the data directory).
    pub fn upload_path(&self) -> PathBuf {
        self.config
            .data_dir
            .join("images")
            .join(format!(".upload-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Imports a root filesystem tarball as image `name` (ours: `POST /v1/images`) and,
    /// on SpriteFS, stores it as a read-only volume.
    pub async fn import_image(&self, name: &str, tarball: &Path) -> Result<ImageStatus, CoreError> {
        if self.lifecycle.roots.mount_image(name).await?.is_some()
            || self.lifecycle.oci_image(name).await?.is_some()
        {
            return Err(CoreError::ImageExists(name.to_string()));
        }
        // A docker-archive or OCI-layout tarball keeps its layers; anything else is a
        // root filesystem.
        if !self.import_image_archive(name, tarball, &|_| {}).await? {
            let dir = self.lifecycle.images.import_tarball(name, tarball).await?;
            self.lifecycle.roots.import_image(name, &dir).await?;
        }
        Ok(self
            .lifecycle
            .images
            .statuses()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or(ImageStatus {
                name: name.to_string(),
                state: crate::image::ImageState::Ready,
                detail: String::new(),
            }))
    }

    /// Builds the default image now (the daemon calls this at start, in the background).
    pub async fn prepare_default_image(&self) -> Result<(), CoreError> {
        self.lifecycle
            .image_root(&self.config.default_image)
            .await
            .map(|_| ())
    }

    /// Watches the storage under the sprites: when the storage process dies or
    /// restarts, it is brought back and every running sprite is restarted on it (their
    /// disks were cut off). Data a sprite fsynced before is there again.
    pub async fn supervise_storage(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if self.stopping() {
                return;
            }
            if self.lifecycle.roots.storage_intact().await {
                continue;
            }
            tracing::warn!("the storage process died or restarted; restarting the sprites on it");
            if let Err(error) = self.lifecycle.roots.recover_storage().await {
                tracing::error!(
                    "cannot restart storage: {}",
                    sprite_api::error_chain(&error)
                );
                continue;
            }
            // Only sprites that were up had a disk on the lost process; cold ones wake
            // on the new one when asked.
            let awake: std::collections::HashSet<String> = self
                .lifecycle
                .activity
                .awake()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let records = match self.db.all() {
                Ok(records) => records
                    .into_iter()
                    .filter(|r| awake.contains(r.id.as_str()))
                    .collect::<Vec<_>>(),
                Err(error) => {
                    tracing::error!("cannot list sprites: {}", sprite_api::error_chain(&error));
                    continue;
                }
            };
            for record in records {
                let start_lock = self.lifecycle.start_lock(&record.id);
                let _guard = start_lock.lock().await;
                self.lifecycle
                    .activity
                    .set_status(&record.id, SpriteStatus::Cold);
                let restarted = async {
                    self.lifecycle.kill_sandbox(&record).await?;
                    self.lifecycle.start_locked(&record).await
                }
                .await;
                if let Err(error) = restarted {
                    tracing::error!(sprite = %record.name, "restart after storage loss failed: {}", sprite_api::error_chain(&error));
                }
            }
        }
    }

    /// The organization and name of a sprite, by id.
    pub fn sprite_by_id(&self, sprite_id: &str) -> Result<SpriteKey, CoreError> {
        self.db
            .get_by_id(sprite_id)?
            .map(|r| r.key())
            .ok_or_else(|| CoreError::SpriteNotFound(sprite_id.to_string()))
    }

    /// Ids of every sprite (pooled ones too) and the directory of each one's
    /// `/.sprite/run` (where its `api.sock` goes).
    pub fn sprite_run_dirs(&self) -> Result<Vec<(String, PathBuf)>, CoreError> {
        Ok(self
            .db
            .all()?
            .into_iter()
            .map(|r| {
                let dir = self.lifecycle.run_dir(&r.id);
                (r.id.to_string(), dir)
            })
            .collect())
    }

    /// The changes of sprites (ids of sprites created or destroyed since), for the one
    /// listener that serves in-sprite APIs; `None` once taken. [`Self::lost_changes`]
    /// tells it when changes did not fit in the queue: then it looks at every sprite.
    pub fn take_sprite_changes(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        self.lifecycle.changes.take_receiver()
    }

    /// Waits until sprite changes were dropped (the queue was full).
    pub async fn lost_changes(&self) {
        self.lifecycle.changes.lost().await;
    }

    /// The in-sprite API directory of sprite `id`, or `None` if there is no such sprite.
    pub fn sprite_run_dir(&self, id: &str) -> Result<Option<PathBuf>, CoreError> {
        Ok(self
            .db
            .get_by_id(id)?
            .map(|record| self.lifecycle.run_dir(&record.id)))
    }

    /// This host's sprites by status (the pool's ready sprites included: they hold
    /// memory like warm ones), for the capacity a cluster member publishes.
    pub fn host_counts(&self) -> Result<(u64, u64, u64), CoreError> {
        let (mut running, mut warm, mut cold) = (0, 0, 0);
        for record in self.db.all()? {
            match self.lifecycle.activity.status(&record.id).0 {
                SpriteStatus::Running => running += 1,
                SpriteStatus::Warm => warm += 1,
                SpriteStatus::Cold => cold += 1,
            }
        }
        Ok((running, warm, cold))
    }

    /// Number of sprites whose PID 1 this daemon knows to be up (running or warm).
    pub fn running_count(&self) -> usize {
        self.lifecycle.activity.awake().len()
    }
}

/// The longest a create with `wait_for_capacity` waits for room (the SDKs' own create
/// timeout is 120 s), and how often it looks.
const CAPACITY_WAIT: Duration = Duration::from_secs(60);
const CAPACITY_POLL: Duration = Duration::from_millis(250);

/// The `Current` row of a checkpoint list is the live state: nothing to restore, fork
/// or delete.
/// Labels within their bounds (count, length), or which one is not.
fn check_labels(labels: &[String]) -> Result<(), CoreError> {
    validate_labels(labels).map_err(|reason| CoreError::InvalidValue {
        field: "labels",
        reason,
    })
}

fn refuse_current(id: &str) -> Result<(), CoreError> {
    if id == sprite_api::sprite::CURRENT_CHECKPOINT {
        return Err(CoreError::NotACheckpoint(id.to_string()));
    }
    Ok(())
}
