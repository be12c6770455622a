//! The pool of ready sprites: made ahead (volume cloned and mounted, namespaces and
//! sprite-init up) and frozen, so a create only renames one and thaws it.
//!
//! A pooled sprite is an ordinary sprite record flagged `pooled` (in no
//! organization), so it survives daemon restarts like any other; taking it gives the
//! record the caller's organization and name in one database update.

use crate::db::SpriteRecord;
use crate::error::CoreError;
use crate::lifecycle::{Lifecycle, Volume};
use parking_lot::Mutex;
use sprite_api::sprite::SpriteStatus;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// The pool: a component over the lifecycle (which makes, starts and tears down its
/// sprites); it owns only the queue of ready ones.
#[derive(Debug)]
pub(crate) struct Pool {
    lifecycle: Arc<Lifecycle>,
    /// Ids of frozen, ready sprites, oldest first.
    ready: Mutex<VecDeque<crate::ids::SpriteId>>,
    /// Wakes the filler (a sprite was taken).
    taken: tokio::sync::Notify,
}

impl Pool {
    pub(crate) fn new(lifecycle: Arc<Lifecycle>) -> Pool {
        Pool {
            lifecycle,
            ready: Mutex::default(),
            taken: tokio::sync::Notify::new(),
        }
    }

    /// Ready sprites in the pool now.
    pub(crate) fn ready_count(&self) -> usize {
        self.ready.lock().len()
    }

    /// Whether a create with this image and size may come from the pool.
    pub(crate) fn poolable(&self, image: &str, storage_gb: Option<u64>) -> bool {
        self.lifecycle.config.pool_size > 0
            && image
                == self
                    .lifecycle
                    .images
                    .current_key(&self.lifecycle.config.default_image)
            && storage_gb.unwrap_or(self.lifecycle.config.default_storage_gb)
                == self.lifecycle.config.default_storage_gb
    }

    /// Keeps the pool full, forever: fills it, then again after each take. A failed
    /// fill is retried after a pause.
    pub(crate) async fn run(self: Arc<Self>) {
        if self.lifecycle.config.pool_size == 0 {
            return;
        }
        loop {
            while self.ready_count() < self.lifecycle.config.pool_size {
                if let Err(error) = self.fill_one().await {
                    tracing::warn!(
                        "could not fill the sprite pool: {}",
                        sprite_api::error_chain(&error)
                    );
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
            self.taken.notified().await;
        }
    }

    async fn fill_one(&self) -> Result<(), CoreError> {
        let id = crate::ids::SpriteId::generate();
        let timestamp = crate::time::now();
        let record = SpriteRecord {
            name: format!("pool-{}", &id[7..19]),
            id,
            org: String::new(),
            image: self
                .lifecycle
                .images
                .current_key(&self.lifecycle.config.default_image),
            url_auth: sprite_api::sprite::UrlAuth::Sprite,
            labels: Vec::new(),
            config: self.lifecycle.config.sprite_config(None)?,
            environment: Default::default(),
            created_at: timestamp.clone(),
            updated_at: timestamp,
            last_running_at: None,
            id_base: 0,
            attrs: Default::default(),
            pooled: true,
        };
        let mut record = record;
        let volume = Volume::Empty {
            bytes: self.lifecycle.config.default_storage_gb << 30,
        };
        self.lifecycle.provision(&mut record, volume, true).await?;
        self.ready.lock().push_back(record.id.clone());
        tracing::debug!(id = %record.id, "pooled sprite ready");
        Ok(())
    }

    /// After a daemon restart: frozen pooled sprites go back in the pool; the others
    /// (a fill cut short) are removed.
    pub(crate) async fn recover(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        if self.lifecycle.sandboxes.state(&record.id)? == crate::sandboxes::CgroupState::Frozen {
            self.lifecycle
                .activity
                .set_status(&record.id, SpriteStatus::Warm);
            self.ready.lock().push_back(record.id.clone());
            return Ok(());
        }
        self.lifecycle.teardown(record).await?;
        self.lifecycle.db.delete(&record.id)
    }

    /// Gives `wanted` (a new sprite's record) a pooled sprite: its id, volume and
    /// running sandbox. `Ok(None)` when the pool is empty or the pooled sprite could not
    /// be used (the caller then makes one the normal way).
    pub(crate) async fn take(
        &self,
        wanted: &SpriteRecord,
    ) -> Result<Option<SpriteRecord>, CoreError> {
        let Some(id) = self.ready.lock().pop_front() else {
            return Ok(None);
        };
        self.taken.notify_one();
        // A sprite pooled before its image's update runs the old version: it goes, and
        // the create makes one of the new.
        let pooled_image = self.lifecycle.db.get_by_id(&id)?.map(|r| r.image);
        if pooled_image.as_deref() != Some(wanted.image.as_str()) {
            if let Some(stale) = self.lifecycle.db.get_by_id(&id)? {
                tracing::info!(image = %stale.image, "pooled sprite of an older image version dropped");
                let _ = self.lifecycle.teardown(&stale).await;
                self.lifecycle.db.delete(&stale.id)?;
            }
            return Ok(None);
        }
        let record = SpriteRecord {
            id: id.clone(),
            ..wanted.clone()
        };
        if let Err(error) = self.lifecycle.db.adopt(&record) {
            // The name is taken (a racing create): the pooled sprite stays pooled.
            self.ready.lock().push_front(id);
            return Err(error);
        }
        match self.ready_pooled(&record).await {
            Ok(()) => Ok(Some(record)),
            Err(error) => {
                tracing::warn!(sprite = %record.name, "pooled sprite unusable, making one: {}", sprite_api::error_chain(&error));
                let _ = self.lifecycle.teardown(&record).await;
                self.lifecycle.db.delete(&record.id)?;
                Ok(None)
            }
        }
    }

    /// Renames a taken pooled sprite, applies its limits and thaws it.
    async fn ready_pooled(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        self.lifecycle.sandboxes.reshape(
            &record.name,
            &record.id,
            &self.lifecycle.limits(record),
        )?;
        let start_lock = self.lifecycle.start_lock(&record.id);
        let _one = start_lock.lock().await;
        self.lifecycle.start_locked(record).await?;
        self.lifecycle
            .sandboxes
            .rename(&record.name, &record.id)
            .await
    }
}
