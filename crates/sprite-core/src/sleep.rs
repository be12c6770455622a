//! Sleep and wake: the idle loop that sends sprites to warm sleep (cgroup frozen, memory
//! kept) and cold sleep (processes stopped, disk flushed and released), the forced
//! `sleep`/`wake` operations, and waking on demand for any call that needs a sprite.

use crate::activity::{ActivityGuard, Reason};
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::manager::SpriteManager;
use sprite_api::sprite::{SpriteInfo, SpriteStatus};
use std::time::Duration;

/// How long a forced sleep waits for the sprite's users to finish before a 409.
const IN_USE_PATIENCE: Duration = Duration::from_secs(2);

impl SpriteManager {
    /// Keeps the sprite awake for `reason` while the guard lives (an exec client, a
    /// proxied connection...). Does not wake it: the caller's operation does.
    pub fn keep_awake(&self, key: &SpriteKey, reason: Reason) -> Result<ActivityGuard, CoreError> {
        let record = self.record(key)?;
        Ok(self.lifecycle.activity.hold(&record.id, reason).0)
    }

    /// `POST /v1/sprites/{name}/wake`.
    pub async fn wake(&self, key: &SpriteKey) -> Result<SpriteInfo, CoreError> {
        let name = key.name.as_str();
        let record = self.record(key)?;
        let started = std::time::Instant::now();
        let (before, _) = self.lifecycle.activity.status(&record.id);
        let _awake = self.lifecycle.wake_record(&record, Reason::Api).await?;
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
            if self.lifecycle.put_to_sleep(&record, target).await? {
                break;
            }
            let (status, _) = self.lifecycle.activity.status(&record.id);
            let deeper_or_same = status == target || status == SpriteStatus::Cold;
            if deeper_or_same {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let reasons = self
                    .lifecycle
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
        let (_busy, _) = self.lifecycle.activity.hold(&record.id, Reason::Api);
        let start_lock = self.lifecycle.start_lock(&record.id);
        let _guard = start_lock.lock().await;
        let (before, _) = self.lifecycle.activity.status(&record.id);
        if before != SpriteStatus::Cold {
            self.lifecycle
                .activity
                .set_status(&record.id, SpriteStatus::Cold);
            let stopped = self.lifecycle.stop_for_cold(&record).await;
            self.lifecycle.save_life(&record.id);
            stopped?;
        }
        self.lifecycle.start_locked(&record).await?;
        self.lifecycle.save_life(&record.id);
        tracing::info!(sprite = %name, from = before.as_str(), ms = started.elapsed().as_millis() as u64, "sprite restarted");
        Ok(self.info(&record))
    }

    /// `GET /v1/sprites/{name}/check`: a running sprite's PID 1 answers, its root and
    /// disk are mounted, its network is attached; the first that fails is the reason.
    /// A sleeping sprite is reported as sleeping, not woken.
    pub async fn check(&self, key: &SpriteKey) -> Result<SpriteCheck, CoreError> {
        let record = self.record(key)?;
        let started = std::time::Instant::now();
        let (status, _) = self.lifecycle.activity.status(&record.id);
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
            checked_at: crate::time::now(),
            elapsed: started.elapsed().as_millis() as u64,
        })
    }

    async fn find_problem(&self, record: &crate::db::SpriteRecord) -> Option<String> {
        if let Err(error) = self
            .lifecycle
            .client_for(&record.id)
            .ping(Duration::from_secs(2))
            .await
        {
            return Some(format!(
                "its init does not answer: {}",
                sprite_api::error_chain(&error)
            ));
        }
        let mounts = match self.lifecycle.pinned_init(record) {
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
        if let Some(network) = &self.lifecycle.network {
            if network.addresses(&record.id).is_none() {
                return Some("its network is not attached".into());
            }
        }
        None
    }
}
