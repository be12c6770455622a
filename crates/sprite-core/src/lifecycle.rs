//! [`Lifecycle`]: the one component that changes whether a sprite runs on this host.
//! It provisions new sprites (record, image, volume, start, and the undo of each when a
//! later step fails), starts and wakes them, sends them to warm and cold sleep (forced,
//! or by the idle loop), and tears them down. Its dependencies are named in its fields;
//! the manager, the pool and the API operations on sprites call it, never the other
//! way round.

use crate::activity::{
    decide, parse_duration, Activity, ActivityGuard, Reason, SleepPolicy, Transition,
};
use crate::config::CoreConfig;
use crate::config::SPRITE_ENV_LAYER;
use crate::db::{Database, LifeRecord, SleepFacts, SpriteRecord};
use crate::error::CoreError;
use crate::image::ImageStore;
use crate::network::POLICY_FILE;
use crate::rootfs::RootStore;
use crate::sandboxes::{CgroupState, Sandboxes};
use crate::slots::{SleepKey, Slots};
use crate::tasks::Tasks;
use crate::time::{ms_to_rfc3339, now};
use parking_lot::Mutex;
use sprite_api::policy::NetworkPolicy;
use sprite_api::sprite::{AwakeReason, LifecycleInfo, SpriteStatus};
use sprite_sandbox::cgroup::SpriteCgroup;
use sprite_sandbox::client::InitClient;
use sprite_sandbox::spec::{Limits, SandboxSpec};
use sprite_sandbox::SandboxError;
use std::collections::HashMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for sprite-init to list its sessions in the idle check.
const LIST_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a new sprite's volume comes from.
pub(crate) enum Volume<'a> {
    /// An empty (pre-formatted) volume of this many bytes.
    Empty { bytes: u64 },
    /// A copy (metadata only) of another sprite's checkpoint.
    Fork { parent: &'a str, version: &'a str },
}

/// Changes of sprites, queued for the in-sprite API (bounded: what does not fit is
/// reported as an overflow, and the listener looks at every sprite once instead).
#[derive(Debug)]
pub(crate) struct SpriteChanges {
    sender: tokio::sync::mpsc::Sender<String>,
    receiver: Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
    overflow: tokio::sync::Notify,
}

impl SpriteChanges {
    pub(crate) fn new() -> SpriteChanges {
        let (sender, receiver) = tokio::sync::mpsc::channel(4096);
        SpriteChanges {
            sender,
            receiver: Mutex::new(Some(receiver)),
            overflow: tokio::sync::Notify::new(),
        }
    }

    /// The receiving end, for the one listener (the in-sprite API); `None` once taken.
    pub(crate) fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        self.receiver.lock().take()
    }

    /// Waits until changes were dropped (the queue was full).
    pub(crate) async fn lost(&self) {
        self.overflow.notified().await;
    }

    /// Queues a change of sprite `id` (made or destroyed); when the queue is full, the
    /// listener is told to look at every sprite instead.
    pub(crate) fn note(&self, id: &str) {
        if self.sender.try_send(id.to_string()).is_err() {
            self.overflow.notify_one();
        }
    }
}

/// Starts, stops, sleeps and wakes the sprites of this host.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    pub(crate) config: CoreConfig,
    pub(crate) db: Arc<Database>,
    /// Tokens and organizations' limits (awake and warm sprites are counted here).
    pub(crate) access: Arc<crate::access::Access>,
    /// Create and wake latencies (`/metrics`).
    pub(crate) metrics: crate::metrics::CoreMetrics,
    /// The host is being taken down (`stop_host`): nothing wakes or starts.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// Images sprites' roots are made from (built or fetched on first use).
    pub(crate) images: Arc<ImageStore>,
    /// Sprites' disks and root layers.
    pub(crate) roots: Arc<dyn RootStore>,
    /// The host side of sprites' processes (cgroups, namespaces, sprite-init).
    pub(crate) sandboxes: Arc<dyn Sandboxes>,
    /// Status of each sprite and what keeps it awake.
    pub(crate) activity: Arc<Activity>,
    /// What is live about each sprite (start lock, URL port, parsed sleep timers...).
    pub(crate) slots: Arc<Slots>,
    /// Leases that keep sprites awake (expired by the idle loop, forgotten at teardown).
    pub(crate) tasks: Arc<Tasks>,
    /// Sprite networking (veth, NAT, DNS, egress policy); `None` when turned off.
    pub(crate) network: Option<crate::network::Network>,
    /// Ids of sprites just made or destroyed, for the in-sprite API.
    pub(crate) changes: SpriteChanges,
    /// The mount namespace sprites' namespaces are cloned from: only the mounts that hold
    /// the data directory, `/dev`, `/proc` and `/sys` (`None` where it cannot be made: not root).
    pub(crate) mount_seed: Option<std::os::fd::OwnedFd>,
    /// Mounted stacks of registry and archive images.
    pub(crate) stacks: crate::oci_images::Stacks,
}

/// Milliseconds since `since`, to a tenth, for logs.
pub(crate) fn elapsed_ms(since: std::time::Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
}

pub(crate) fn make_dir(path: &Path, mode: u32) -> Result<(), CoreError> {
    fs::create_dir_all(path).map_err(CoreError::io("create", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(CoreError::io("chmod", path))
}

impl Lifecycle {
    pub(crate) fn state_dir(&self, sprite_id: &str) -> PathBuf {
        self.config.data_dir.join("sprites").join(sprite_id)
    }

    /// The host directory of a sprite's `/.sprite/run` (its `api.sock`).
    pub(crate) fn run_dir(&self, sprite_id: &str) -> PathBuf {
        self.config.data_dir.join("run").join(sprite_id)
    }

    pub(crate) fn client_for(&self, sprite_id: &str) -> InitClient {
        InitClient::new(self.state_dir(sprite_id).join("init.sock"))
    }

    pub(crate) fn cgroup(&self, sprite_id: &str) -> Result<SpriteCgroup, CoreError> {
        crate::sandboxes::sprite_cgroup(sprite_id)
    }

    /// The host pid of a running sprite's PID 1.
    pub(crate) fn init_pid(&self, record: &SpriteRecord) -> Result<u32, CoreError> {
        self.cgroup(&record.id)?
            .init_pid()
            .map_err(|e| CoreError::Sandbox {
                sprite: record.name.clone(),
                source: SandboxError::Cgroup(e),
            })?
            .ok_or_else(|| CoreError::StartTimeout(record.name.clone()))
    }

    /// The sprite's PID 1, pinned (see [`sprite_sandbox::PinnedProcess`]) for opening
    /// its `/proc` entries: its root, namespaces and maps.
    pub(crate) fn pinned_init(
        &self,
        record: &SpriteRecord,
    ) -> Result<sprite_sandbox::PinnedProcess, CoreError> {
        let pid = self.init_pid(record)?;
        sprite_sandbox::PinnedProcess::pin(pid, &crate::sandboxes::cgroup_name(&record.id)).map_err(
            |source| CoreError::Io {
                what: "pin the pid 1 of",
                path: format!("sprite {}", record.name).into(),
                source,
            },
        )
    }

    /// The one way a new sprite comes up (a create, a fork, a pool fill): its record
    /// with an id range of its own, its image, its volume, its start and, for the
    /// pool, its freeze. A step that fails undoes every one before it (processes,
    /// volume, record) and the error is returned. Returns the milliseconds the volume
    /// took.
    pub(crate) async fn provision(
        &self,
        record: &mut SpriteRecord,
        volume: Volume<'_>,
        freeze: bool,
    ) -> Result<f64, CoreError> {
        record.id_base = self
            .db
            .insert_with_id_range(record, &self.config.id_ranges())?;
        let record = &*record;
        let mut volume_ms = 0.0;
        let made = async {
            self.image_root(&record.image).await?;
            let begun = std::time::Instant::now();
            match volume {
                Volume::Fork { parent, version } => {
                    self.roots.create_from(&record.id, parent, version).await?
                }
                Volume::Empty { bytes } => self.roots.create(&record.id, bytes).await?,
            }
            volume_ms = elapsed_ms(begun);
            self.start(record).await?;
            if freeze {
                self.freeze(record).await?;
                self.activity.set_status(&record.id, SpriteStatus::Warm);
            }
            Ok::<(), CoreError>(())
        }
        .await;
        if let Err(error) = made {
            tracing::warn!(sprite = %record.name, "create failed: {}", sprite_api::error_chain(&error));
            if let Err(undo) = self.teardown(record).await {
                tracing::warn!(sprite = %record.name, "undoing the failed create: {}", sprite_api::error_chain(&undo));
            }
            self.db.delete(&record.id)?;
            return Err(error);
        }
        self.changes.note(&record.id);
        Ok(volume_ms)
    }

    pub(crate) fn limits(&self, record: &SpriteRecord) -> Limits {
        Limits {
            memory_bytes: record.config.ram_mb.unwrap_or(self.config.default_ram_mb) * 1024 * 1024,
            pids: self.config.pids_limit,
            cpu_millis: u64::from(record.config.cpus.unwrap_or(self.config.default_cpus)) * 1000,
        }
    }

    pub(crate) fn start_lock(&self, sprite_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.slots.get(sprite_id).start.clone()
    }

    /// Starts the sprite's sandbox unless it already runs. Concurrent callers share
    /// one start.
    pub(crate) async fn start(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        let start_lock = self.start_lock(&record.id);
        let _guard = start_lock.lock().await;
        self.start_locked(record).await
    }

    /// [`Self::start`] for a caller that holds the sprite's start lock.
    pub(crate) async fn start_locked(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        let sandboxes = &self.sandboxes;
        let cgroup = sandboxes.state(&record.id)?;
        // Wake from warm sleep: the processes are all there, frozen.
        if cgroup == CgroupState::Frozen {
            sandboxes.thaw(&record.name, &record.id)?;
        }
        if cgroup != CgroupState::Absent && sandboxes.ping(&record.id).await {
            self.became_running(record);
            return Ok(());
        }
        self.activity.set_status(&record.id, SpriteStatus::Cold);
        // A dead sprite may have left processes or its cgroup behind.
        if cgroup != CgroupState::Absent {
            self.kill_sandbox(record).await?;
        }
        let image = self.image_root(&record.image).await?;
        // A sprite made before sprites had ranges of their own gets one now.
        let id_base = self
            .db
            .assign_id_range(&record.id, &self.config.id_ranges())?;
        let state_dir = self.state_dir(&record.id);
        make_dir(&state_dir, 0o700)?;
        let run_dir = self.run_dir(&record.id);
        make_dir(&run_dir, 0o755)?;
        let begun = std::time::Instant::now();
        let durability = record
            .config
            .durability
            .unwrap_or(self.config.default_durability);
        let mut layers = self
            .roots
            .prepare(&record.id, &image, id_base, durability)
            .await?;
        let mount_ms = elapsed_ms(begun);
        let env_layer = self.config.data_dir.join(SPRITE_ENV_LAYER);
        if env_layer.is_dir() {
            layers.lower.push(env_layer);
        }
        let spec = SandboxSpec {
            sprite_id: record.id.to_string(),
            cgroup_name: Some(crate::sandboxes::cgroup_name(&record.id)),
            hostname: record.name.clone(),
            state_dir,
            layers,
            id_base,
            id_count: self.config.id_count,
            storage_id_base: self.config.id_base,
            mount_namespace: self.mount_seed.as_ref().map(|fd| {
                PathBuf::from(format!(
                    "/proc/{}/fd/{}",
                    std::process::id(),
                    std::os::fd::AsRawFd::as_raw_fd(fd)
                ))
            }),
            limits: self.limits(record),
            run_dir: Some(run_dir),
            oom_score_adj: self.config.sprite_oom_score_adj,
            nested_containers: self.config.nested_containers,
        };
        let sandbox = std::time::Instant::now();
        sandboxes.launch(&record.name, &spec).await?;
        if !sandboxes.ping(&record.id).await {
            return Err(CoreError::StartTimeout(record.name.clone()));
        }
        let sandbox_ms = elapsed_ms(sandbox);
        let network = std::time::Instant::now();
        self.attach_network(record).await;
        tracing::info!(
            sprite = %record.name,
            ms = elapsed_ms(begun),
            mount_ms,
            sandbox_ms,
            network_ms = elapsed_ms(network),
            "sprite started"
        );
        self.became_running(record);
        let mut updated = record.clone();
        updated.last_running_at = Some(now());
        self.db.update(&updated)?;
        self.refresh_views_later(&record.id);
        Ok(())
    }

    /// Updates the sprite's `/.sprite/checkpoints` in the background: mounting views
    /// takes a few loop devices and mounts, which no start or checkpoint waits for.
    pub(crate) fn refresh_views_later(&self, sprite_id: &str) {
        let roots = self.roots.clone();
        let sprite_id = sprite_id.to_string();
        tokio::spawn(async move {
            if let Err(error) = roots.refresh_views(&sprite_id).await {
                tracing::warn!(sprite = %sprite_id, "checkpoint views: {}", sprite_api::error_chain(&error));
            }
        });
    }

    /// Kills every process of the sprite and removes its cgroup; its network slot is
    /// given back.
    pub(crate) async fn kill_sandbox(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        self.sandboxes.kill(&record.name, &record.id).await?;
        self.release_network(&record.id).await;
        Ok(())
    }

    /// Gives the sprite's network slot back (its namespace went with its processes).
    pub(crate) async fn release_network(&self, sprite_id: &str) {
        if let Some(network) = &self.network {
            network.release(sprite_id, &self.state_dir(sprite_id)).await;
        }
    }

    /// Stops the sprite's processes and removes its state and layer.
    pub(crate) async fn teardown(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        self.activity.set_status(&record.id, SpriteStatus::Cold);
        self.kill_sandbox(record).await?;
        self.roots.remove(&record.id).await?;
        self.forget_local(&record.id)
    }

    /// Removes what this host keeps of a sprite beside its layer: its state and run
    /// directories, its slot, tasks and activity.
    pub(crate) fn forget_local(&self, sprite_id: &str) -> Result<(), CoreError> {
        for dir in [self.state_dir(sprite_id), self.run_dir(sprite_id)] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CoreError::io("remove", dir)(e)),
            }
        }
        self.slots.remove(sprite_id);
        self.tasks.forget(sprite_id);
        self.activity.forget(sprite_id);
        Ok(())
    }

    /// The lower layers of sprites of `image`, topmost first: a registry or archive
    /// image's layers; else one, on SpriteFS the image's read-only volume (from the
    /// object store if it is there: a fresh host builds nothing), else the image
    /// directory, built on first need.
    pub(crate) async fn image_root(&self, image: &str) -> Result<Vec<PathBuf>, CoreError> {
        ImageStore::check_key(image)?;
        if !crate::image::KNOWN_IMAGES.contains(&crate::image::base_name(image)) {
            if let Some(oci) = self.oci_image(image).await? {
                return self.layer_roots(&oci).await;
            }
        }
        if let Some(root) = self.roots.mount_image(image).await? {
            self.images.note_stored(image);
            return Ok(vec![root]);
        }
        let dir = self.images.ensure(image).await?;
        Ok(vec![self
            .roots
            .import_image(image, &dir)
            .await?
            .unwrap_or(dir)])
    }

    /// The sleep timers of one sprite: its own `config` over the daemon's. Parsed once
    /// per value and kept in the sprite's slot (the idle check asks every tick); a
    /// stored value that does not parse (validated at create, so only from an older
    /// version's grammar) is reported once and the daemon's timer used.
    pub(crate) fn policy_for(&self, record: &SpriteRecord) -> SleepPolicy {
        self.policy_of(
            &record.id,
            &record.name,
            &record.config.warm_after,
            &record.config.cold_after,
        )
    }

    /// The sleep policy of a sprite from its own timers (`config.warm_after`,
    /// `config.cold_after`) and the daemon's, parsed once and kept in its slot until
    /// the timers change.
    fn policy_of(
        &self,
        id: &str,
        name: &str,
        warm_after: &Option<String>,
        cold_after: &Option<String>,
    ) -> SleepPolicy {
        let slot = self.slots.get(id);
        let mut cached = slot.sleep_policy.lock();
        if let Some(((warm, cold), policy)) = cached.as_ref() {
            if warm == warm_after && cold == cold_after {
                return *policy;
            }
        }
        let key: SleepKey = (warm_after.clone(), cold_after.clone());
        let own = |what: &str, value: &Option<String>, default: Option<Duration>| {
            match value {
            Some(text) => parse_duration(text).unwrap_or_else(|error| {
                tracing::warn!(sprite = %name, "config.{what}: {error}; the daemon's timer applies");
                default
            }),
            None => default,
        }
        };
        let policy = SleepPolicy {
            warm_after: own("warm_after", &key.0, self.config.sleep.warm_after),
            cold_after: own("cold_after", &key.1, self.config.sleep.cold_after),
        };
        *cached = Some((key, policy));
        policy
    }

    /// Records that the sprite runs (just started, woken, or adopted awake).
    pub(crate) fn became_running(&self, record: &SpriteRecord) {
        self.activity.set_status(&record.id, SpriteStatus::Running);
        self.activity.touch(&record.id);
        self.save_life(&record.id);
    }

    /// Saves the sprite's sleep state, so a daemon restart keeps it and its timers.
    pub(crate) fn save_life(&self, sprite_id: &str) {
        let (status, since_ms) = self.activity.status(sprite_id);
        let previous = self.db.life(sprite_id).ok().flatten();
        let last_warming_ms = if status == SpriteStatus::Warm {
            Some(since_ms)
        } else {
            previous.and_then(|p| p.last_warming_ms)
        };
        let life = LifeRecord {
            status,
            since_ms,
            last_active_ms: self.activity.last_active_ms(sprite_id).unwrap_or(since_ms),
            last_warming_ms,
        };
        if let Err(error) = self.db.save_life(sprite_id, &life) {
            tracing::warn!(
                sprite = sprite_id,
                "could not save the sleep state: {}",
                sprite_api::error_chain(&error)
            );
        }
    }

    /// After a daemon restart: takes back a sprite that sleeps (frozen cgroup: warm;
    /// saved as cold: cold), with its timers. False when it is not asleep.
    pub(crate) fn adopt_sleeping(&self, record: &SpriteRecord) -> Result<bool, CoreError> {
        let life = self.db.life(&record.id)?;
        if let Some(life) = &life {
            self.activity.touch_at(&record.id, life.last_active_ms);
        }
        let since = |status: SpriteStatus| {
            life.as_ref()
                .filter(|l| l.status == status)
                .map_or_else(|| self.activity.now_ms(), |l| l.since_ms)
        };
        if self.sandboxes.state(&record.id)? == crate::sandboxes::CgroupState::Frozen {
            self.activity.set_status_since(
                &record.id,
                SpriteStatus::Warm,
                since(SpriteStatus::Warm),
            );
            return Ok(true);
        }
        if life
            .as_ref()
            .is_some_and(|l| l.status == SpriteStatus::Cold)
        {
            self.activity.set_status_since(
                &record.id,
                SpriteStatus::Cold,
                since(SpriteStatus::Cold),
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// When a sprite last went to warm sleep (RFC 3339), if it did.
    pub(crate) fn last_warming_at(&self, sprite_id: &str) -> Option<String> {
        match self.activity.status(sprite_id) {
            (SpriteStatus::Warm, since) => Some(ms_to_rfc3339(since)),
            _ => self
                .db
                .life(sprite_id)
                .ok()
                .flatten()
                .and_then(|l| l.last_warming_ms)
                .map(ms_to_rfc3339),
        }
    }

    /// Since when, why awake, and when the sprite sleeps if nothing happens.
    pub(crate) fn lifecycle_info(&self, record: &SpriteRecord) -> LifecycleInfo {
        let (status, since) = self.activity.status(&record.id);
        let reasons = self.activity.reasons(&record.id);
        let last_active = self.activity.last_active_ms(&record.id);
        let policy = self.policy_for(record);
        let idle = reasons.is_empty() && status != SpriteStatus::Cold;
        let at = |after: Option<Duration>| {
            after
                .zip(last_active)
                .filter(|_| idle)
                .map(|(after, last)| ms_to_rfc3339(last + after.as_millis() as u64))
        };
        LifecycleInfo {
            since: ms_to_rfc3339(since),
            awake_because: reasons
                .into_iter()
                .map(|(reason, count)| AwakeReason {
                    reason: serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    count,
                    description: reason.describe().to_string(),
                })
                .collect(),
            last_active_at: last_active.filter(|ms| *ms > 0).map(ms_to_rfc3339),
            warm_at: if status == SpriteStatus::Running {
                at(policy.warm_after)
            } else {
                None
            },
            cold_at: at(policy.cold_after),
        }
    }

    /// Holds the sprite awake for `reason` and wakes it if it sleeps. Concurrent
    /// callers share one wake (the start lock).
    pub(crate) async fn wake_record(
        &self,
        record: &SpriteRecord,
        reason: Reason,
    ) -> Result<ActivityGuard, CoreError> {
        let (guard, status) = self.activity.hold(&record.id, reason);
        if status != SpriteStatus::Running {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(CoreError::Stopping);
            }
            if !record.pooled {
                self.running_limit_reached(&record.org)?;
            }
            let started = std::time::Instant::now();
            self.start(record).await?;
            self.metrics
                .wake_seconds
                .with_label_values(&[status.as_str()])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(guard)
    }

    /// How many of an organization's sprites are running, warm and cold.
    pub(crate) fn org_statuses(&self, org: &str) -> Result<[u64; 3], CoreError> {
        let mut counts = [0; 3];
        for id in self.db.ids(org)? {
            counts[crate::usage::status_index(self.activity.status(&id).0)] += 1;
        }
        Ok(counts)
    }

    /// A refusal when the organization has as many sprites awake as it may.
    /// Runs on every create and every wake: the organization's sprites are looked at one
    /// by one only when it has at least as many as the limit (fewer cannot all be awake).
    pub(crate) fn running_limit_reached(&self, org: &str) -> Result<(), CoreError> {
        let limit = self.access.limits(org).running_limit;
        if self.db.count_in(org)? < limit {
            return Ok(());
        }
        let [current, _, _] = self.org_statuses(org)?;
        if current >= limit {
            return Err(CoreError::RunningLimit {
                org: org.to_string(),
                limit,
                current,
            });
        }
        Ok(())
    }

    /// Sends a sprite to warm or cold sleep if nothing holds it awake. Answers whether
    /// it did.
    pub(crate) async fn put_to_sleep(
        &self,
        record: &SpriteRecord,
        target: SpriteStatus,
    ) -> Result<bool, CoreError> {
        let start_lock = self.start_lock(&record.id);
        let _one = start_lock.lock().await;
        let (before, _) = self.activity.status(&record.id);
        // Past the organization's warm limit, a sprite sleeps cold.
        let target = if target == SpriteStatus::Warm
            && !record.pooled
            && self
                .org_statuses(&record.org)
                .is_ok_and(|[_, warm, _]| warm >= self.access.limits(&record.org).warm_limit)
        {
            SpriteStatus::Cold
        } else {
            target
        };
        if !self.activity.begin_sleep(&record.id, target) {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let result = match target {
            SpriteStatus::Warm => self.freeze(record).await,
            _ => self.stop_for_cold(record).await,
        };
        match result {
            Ok(()) => {
                tracing::info!(sprite = %record.name, from = before.as_str(), to = target.as_str(), ms = started.elapsed().as_millis() as u64, "sprite asleep");
                self.save_life(&record.id);
                Ok(true)
            }
            Err(error) => {
                // A failed freeze leaves it running; a failed stop leaves it for a
                // restart on the next call.
                let status = match target {
                    SpriteStatus::Warm => SpriteStatus::Running,
                    _ => SpriteStatus::Cold,
                };
                self.activity.set_status(&record.id, status);
                self.save_life(&record.id);
                Err(error)
            }
        }
    }

    /// Freezes every process of the sprite (its cgroup), waiting until all are frozen.
    pub(crate) async fn freeze(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        self.sandboxes.freeze(&record.name, &record.id).await
    }

    /// Cold sleep: SIGTERM to every process, SIGKILL after the grace period, then the
    /// disk is flushed to the object store and released.
    pub(crate) async fn stop_for_cold(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        self.sandboxes
            .stop(&record.name, &record.id, self.config.stop_grace)
            .await?;
        self.release_network(&record.id).await;
        self.roots.release(&record.id).await
    }

    /// Runs the idle policy forever, every `config.lifecycle_tick`.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.lifecycle_tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut saved: HashMap<String, u64> = HashMap::new();
        loop {
            ticker.tick().await;
            self.lifecycle_tick(&mut saved).await;
        }
    }

    /// One look at every awake sprite: idle ones go to sleep when their time is up; under
    /// memory pressure the longest-idle warm sprite goes cold. `saved` holds the last
    /// activity time written to the database per sprite.
    async fn lifecycle_tick(&self, saved: &mut HashMap<String, u64>) {
        self.tasks.expire();
        // Only what the policy needs, not every whole record: this runs every second
        // with the database held, and creates wait for it.
        let facts = match self.db.sleep_facts() {
            Ok(facts) => facts,
            Err(error) => {
                tracing::warn!(
                    "lifecycle: cannot list sprites: {}",
                    sprite_api::error_chain(&error)
                );
                return;
            }
        };
        let by_id: HashMap<&str, &SleepFacts> = facts.iter().map(|f| (f.id.as_str(), f)).collect();
        for (id, status) in self.activity.awake() {
            let Some(facts) = by_id.get(id.as_str()) else {
                continue;
            };
            let mut busy = !self.activity.reasons(&id).is_empty();
            if !busy && status == SpriteStatus::Running && self.tty_running(&id).await {
                self.activity.touch(&id);
                busy = true;
            }
            let now = self.activity.now_ms();
            let (_, since) = self.activity.status(&id);
            let last = self
                .activity
                .last_active_ms(&id)
                .unwrap_or(since)
                .max(since);
            let idle = Duration::from_millis(now.saturating_sub(last));
            let policy = self.policy_of(&id, &facts.name, &facts.warm_after, &facts.cold_after);
            let target = match decide(status, idle, busy, policy) {
                Some(Transition::Warm) => SpriteStatus::Warm,
                Some(Transition::Cold) => SpriteStatus::Cold,
                None => {
                    if saved.get(&id) != Some(&last) {
                        self.save_life(&id);
                        saved.insert(id.clone(), last);
                    }
                    continue;
                }
            };
            self.sleep_by_id(&id, &facts.name, target).await;
        }
        self.relieve_memory_pressure(&by_id).await;
    }

    /// Puts a sprite the idle policy chose to sleep, its whole record read now.
    async fn sleep_by_id(&self, id: &str, name: &str, target: SpriteStatus) {
        let record = match self.db.get_by_id(id) {
            Ok(Some(record)) => record,
            // Destroyed since the tick's look.
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(sprite = %name, "could not sleep: {}", sprite_api::error_chain(&error));
                return;
            }
        };
        if let Err(error) = self.put_to_sleep(&record, target).await {
            tracing::warn!(sprite = %name, to = target.as_str(), "could not sleep: {}", sprite_api::error_chain(&error));
        }
    }

    /// Sends the warm sprite idle longest to cold sleep when the host runs low on memory.
    async fn relieve_memory_pressure(&self, by_id: &HashMap<&str, &SleepFacts>) {
        let Some(available) = available_memory_bytes() else {
            return;
        };
        if available >= self.config.min_free_memory_mb << 20 {
            return;
        }
        let coldest = self
            .activity
            .awake()
            .into_iter()
            .filter(|(id, status)| *status == SpriteStatus::Warm && by_id.contains_key(id.as_str()))
            .min_by_key(|(id, _)| self.activity.last_active_ms(id).unwrap_or(0));
        if let Some(facts) = coldest.and_then(|(id, _)| by_id.get(id.as_str()).copied()) {
            tracing::info!(sprite = %facts.name, available_mb = available >> 20, "memory pressure: cold sleep");
            self.sleep_by_id(&facts.id, &facts.name, SpriteStatus::Cold)
                .await;
        }
    }

    /// Whether a TTY session of the sprite still has its process running (such a
    /// session keeps the sprite awake, attached or not).
    async fn tty_running(&self, sprite_id: &str) -> bool {
        use std::sync::atomic::Ordering;
        let slot = self.slots.get(sprite_id);
        let started = slot.tty_started.load(Ordering::SeqCst);
        if slot.tty_none_at.load(Ordering::SeqCst) == started {
            // No TTY session was started since one look found none running.
            return false;
        }
        let client = self.client_for(sprite_id);
        match tokio::time::timeout(LIST_TIMEOUT, client.list()).await {
            Ok(Ok(sessions)) => {
                let running = sessions.iter().any(|s| s.tty && s.exit_code.is_none());
                if !running {
                    slot.tty_none_at.store(started, Ordering::SeqCst);
                }
                running
            }
            // Unreachable init: nothing to keep awake; a later call restarts it.
            _ => false,
        }
    }

    /// Gives a just-started sprite its network. A failure leaves it with loopback only
    /// (safe: nothing to reach) and is logged.
    pub(crate) async fn attach_network(&self, record: &crate::db::SpriteRecord) {
        let Some(network) = &self.network else {
            return;
        };
        let policy = crate::network::stored_policy(&self.db, &record.id);
        let attached = async {
            let pid = self.init_pid(record)?;
            network
                .attach(
                    &record.name,
                    &record.id,
                    pid,
                    &self.state_dir(&record.id),
                    policy.clone(),
                )
                .await
        }
        .await;
        match attached {
            Ok(addrs) => {
                tracing::debug!(sprite = %record.name, address = %addrs.sprite, "network attached");
                // A policy set while the sprite was starting found no slot to apply to.
                let current = crate::network::stored_policy(&self.db, &record.id);
                if current != policy {
                    if let Err(error) = network
                        .set_policy(&record.name, &record.id, current.clone())
                        .await
                    {
                        tracing::warn!(sprite = %record.name, "network policy: {}", sprite_api::error_chain(&error));
                    }
                }
                self.write_network_files(record, Some(addrs.gateway), &current);
            }
            Err(error) => {
                tracing::warn!(sprite = %record.name, "no network for this sprite: {}", sprite_api::error_chain(&error))
            }
        }
    }

    /// Writes the daemon's files into a running sprite: its resolver and its policy.
    pub(crate) fn write_network_files(
        &self,
        record: &crate::db::SpriteRecord,
        gateway: Option<Ipv4Addr>,
        policy: &NetworkPolicy,
    ) {
        let files = || -> Result<(), CoreError> {
            let root =
                crate::files::SpriteRoot::open(self.pinned_init(record)?).map_err(|source| {
                    CoreError::Io {
                        what: "open the root of",
                        path: format!("sprite {}", record.name).into(),
                        source,
                    }
                })?;
            if let Some(gateway) = gateway {
                root.write_file(
                    "/etc/resolv.conf",
                    format!("# written by the sprite daemon: its resolver for this sprite\nnameserver {gateway}\n").as_bytes(),
                    0o644,
                )?;
            }
            let json = serde_json::to_vec_pretty(policy).unwrap_or_default();
            root.write_file(POLICY_FILE, &json, 0o644)?;
            Ok(())
        };
        if let Err(error) = files() {
            tracing::warn!(sprite = %record.name, "could not write the network files: {}", sprite_api::error_chain(&error));
        }
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
