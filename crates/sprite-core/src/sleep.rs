//! Sleep and wake: the idle loop that sends sprites to warm sleep (cgroup frozen, memory
//! kept) and cold sleep (processes stopped, disk flushed and released), the forced
//! `sleep`/`wake` operations, and waking on demand for any call that needs a sprite.

use crate::db::{LifeRecord, SpriteRecord};
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::lifecycle::{decide, parse_duration, ActivityGuard, Reason, SleepPolicy, Transition};
use crate::manager::{ms_to_rfc3339, SpriteManager};
use sprite_api::sprite::{AwakeReason, LifecycleInfo, SpriteInfo, SpriteStatus};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a forced sleep waits for the sprite's users to finish before a 409.
const IN_USE_PATIENCE: Duration = Duration::from_secs(2);
/// Longest wait for sprite-init to list its sessions in the idle check.
const LIST_TIMEOUT: Duration = Duration::from_secs(1);

impl SpriteManager {
    /// The sleep timers of one sprite: its own `config` over the daemon's. Parsed once
    /// per value and kept in the sprite's slot (the idle check asks every tick); a
    /// stored value that does not parse (validated at create, so only from an older
    /// version's grammar) is reported once and the daemon's timer used.
    pub(crate) fn policy_for(&self, record: &SpriteRecord) -> SleepPolicy {
        let key = (
            record.config.warm_after.clone(),
            record.config.cold_after.clone(),
        );
        let slot = self.slots.get(&record.id);
        let mut cached = slot.sleep_policy.lock();
        if let Some((cached_key, policy)) = cached.as_ref() {
            if *cached_key == key {
                return *policy;
            }
        }
        let own = |what: &str, value: &Option<String>, default: Option<Duration>| {
            match value {
            Some(text) => parse_duration(text).unwrap_or_else(|error| {
                tracing::warn!(sprite = %record.name, "config.{what}: {error}; the daemon's timer applies");
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
    fn save_life(&self, sprite_id: &str) {
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
    pub fn last_warming_at(&self, sprite_id: &str) -> Option<String> {
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

    /// Keeps the sprite awake for `reason` while the guard lives (an exec client, a
    /// proxied connection...). Does not wake it: the caller's operation does.
    pub fn keep_awake(&self, key: &SpriteKey, reason: Reason) -> Result<ActivityGuard, CoreError> {
        let record = self.record(key)?;
        Ok(self.activity.hold(&record.id, reason).0)
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
            self.start(record).await?;
        }
        Ok(guard)
    }

    /// `POST /v1/sprites/{name}/wake`.
    pub async fn wake(&self, key: &SpriteKey) -> Result<SpriteInfo, CoreError> {
        let name = key.name.as_str();
        let record = self.record(key)?;
        let started = std::time::Instant::now();
        let (before, _) = self.activity.status(&record.id);
        let _awake = self.wake_record(&record, Reason::Api).await?;
        if before != SpriteStatus::Running {
            tracing::info!(sprite = %name, from = before.as_str(), ms = started.elapsed().as_millis() as u64, "sprite woken");
        }
        Ok(self.info(&record))
    }

    /// `POST /v1/sprites/{name}/sleep`: warm or cold now, unless a client is using it.
    pub async fn sleep(&self, key: &SpriteKey, cold: bool) -> Result<SpriteInfo, CoreError> {
        let name = key.name.as_str();
        let record = self.record(key)?;
        let target = if cold {
            SpriteStatus::Cold
        } else {
            SpriteStatus::Warm
        };
        // A client that just got its command's exit may still be winding down its
        // connection: give such holders a moment before refusing.
        let deadline = tokio::time::Instant::now() + IN_USE_PATIENCE;
        loop {
            if self.put_to_sleep(&record, target).await? {
                break;
            }
            let (status, _) = self.activity.status(&record.id);
            let deeper_or_same = status == target || status == SpriteStatus::Cold;
            if deeper_or_same {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let reasons = self
                    .activity
                    .reasons(&record.id)
                    .into_iter()
                    .map(|(reason, count)| format!("{count} × {}", reason.describe()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(CoreError::InUse {
                    sprite: name.to_string(),
                    reasons,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.info(&record))
    }

    /// Sends a sprite to warm or cold sleep if nothing holds it awake. Answers whether
    /// it did.
    async fn put_to_sleep(
        &self,
        record: &SpriteRecord,
        target: SpriteStatus,
    ) -> Result<bool, CoreError> {
        let start_lock = self.start_lock(&record.id);
        let _one = start_lock.lock().await;
        let (before, _) = self.activity.status(&record.id);
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
    async fn stop_for_cold(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        self.sandboxes
            .stop(&record.name, &record.id, self.config.stop_grace)
            .await?;
        self.release_network(&record.id).await;
        self.roots.release(&record.id).await
    }

    /// Runs the idle policy forever, every `config.lifecycle_tick`.
    pub async fn run_lifecycle(self: Arc<Self>) {
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
        self.tasks().expire();
        let records = match self.db.all() {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(
                    "lifecycle: cannot list sprites: {}",
                    sprite_api::error_chain(&error)
                );
                return;
            }
        };
        let by_id: HashMap<&str, &SpriteRecord> =
            records.iter().map(|r| (r.id.as_str(), r)).collect();
        for (id, status) in self.activity.awake() {
            let Some(record) = by_id.get(id.as_str()).filter(|r| !r.pooled) else {
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
            let target = match decide(status, idle, busy, self.policy_for(record)) {
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
            if let Err(error) = self.put_to_sleep(record, target).await {
                tracing::warn!(sprite = %record.name, to = target.as_str(), "could not sleep: {}", sprite_api::error_chain(&error));
            }
        }
        self.relieve_memory_pressure(&by_id).await;
    }

    /// Sends the warm sprite idle longest to cold sleep when the host runs low on memory.
    async fn relieve_memory_pressure(&self, by_id: &HashMap<&str, &SpriteRecord>) {
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
            .filter(|(id, status)| {
                *status == SpriteStatus::Warm && by_id.get(id.as_str()).is_some_and(|r| !r.pooled)
            })
            .min_by_key(|(id, _)| self.activity.last_active_ms(id).unwrap_or(0));
        if let Some(record) = coldest.and_then(|(id, _)| by_id.get(id.as_str()).copied()) {
            tracing::info!(sprite = %record.name, available_mb = available >> 20, "memory pressure: cold sleep");
            if let Err(error) = self.put_to_sleep(record, SpriteStatus::Cold).await {
                tracing::warn!(sprite = %record.name, "could not sleep: {}", sprite_api::error_chain(&error));
            }
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
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What `GET /v1/sprites/{name}/check` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpriteCheck {
    pub sprite_name: String,
    pub sprite_id: String,
    /// `healthy`, `unhealthy`, or the sleep status (`warm`, `cold`): a check does not
    /// wake a sprite.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checked_at: String,
    /// Milliseconds the check took.
    pub elapsed: u64,
}

impl SpriteManager {
    /// `POST /v1/sprites/{name}/restart`: stops the sprite as a cold sleep does (SIGTERM,
    /// the grace period, SIGKILL; its disk flushed), then starts it again; its services
    /// come back with it. Sessions end.
    pub async fn restart(&self, key: &SpriteKey) -> Result<SpriteInfo, CoreError> {
        let name = key.name.as_str();
        let record = self.record(key)?;
        let started = std::time::Instant::now();
        let (_busy, _) = self.activity.hold(&record.id, Reason::Api);
        let start_lock = self.start_lock(&record.id);
        let _guard = start_lock.lock().await;
        let (before, _) = self.activity.status(&record.id);
        if before != SpriteStatus::Cold {
            self.activity.set_status(&record.id, SpriteStatus::Cold);
            let stopped = self.stop_for_cold(&record).await;
            self.save_life(&record.id);
            stopped?;
        }
        self.start_locked(&record).await?;
        self.save_life(&record.id);
        tracing::info!(sprite = %name, from = before.as_str(), ms = started.elapsed().as_millis() as u64, "sprite restarted");
        Ok(self.info(&record))
    }

    /// `GET /v1/sprites/{name}/check`: a running sprite's PID 1 answers, its root and
    /// disk are mounted, its network is attached; the first that fails is the reason.
    /// A sleeping sprite is reported as sleeping, not woken.
    pub async fn check(&self, key: &SpriteKey) -> Result<SpriteCheck, CoreError> {
        let record = self.record(key)?;
        let started = std::time::Instant::now();
        let (status, _) = self.activity.status(&record.id);
        let problem = match status {
            SpriteStatus::Cold | SpriteStatus::Warm => None,
            SpriteStatus::Running => self.find_problem(&record).await,
        };
        let status = match (status, &problem) {
            (SpriteStatus::Running, None) => "healthy".to_string(),
            (SpriteStatus::Running, Some(_)) => "unhealthy".to_string(),
            (other, _) => other.as_str().to_string(),
        };
        Ok(SpriteCheck {
            sprite_name: record.name.clone(),
            sprite_id: record.id.to_string(),
            status,
            reason: problem,
            checked_at: crate::manager::now(),
            elapsed: started.elapsed().as_millis() as u64,
        })
    }

    async fn find_problem(&self, record: &crate::db::SpriteRecord) -> Option<String> {
        if let Err(error) = self
            .client_for(&record.id)
            .ping(Duration::from_secs(2))
            .await
        {
            return Some(format!(
                "its init does not answer: {}",
                sprite_api::error_chain(&error)
            ));
        }
        let mounts = match self.pinned_init(record) {
            Ok(init) => init.read_entry("mountinfo").unwrap_or_default(),
            Err(error) => return Some(sprite_api::error_chain(&error)),
        };
        let points: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .collect();
        let on_disk = matches!(
            self.config.storage,
            crate::config::StorageBackend::SpriteFs { .. }
        );
        for (point, what) in [("/", "its root"), ("/home", "its disk (/home)")] {
            let needed = point == "/" || on_disk;
            if needed && !points.contains(&point) {
                return Some(format!("{what} is not mounted"));
            }
        }
        if let Some(network) = &self.network {
            if network.addresses(&record.id).is_none() {
                return Some("its network is not attached".into());
            }
        }
        None
    }
}
