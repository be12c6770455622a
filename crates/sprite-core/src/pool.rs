//! The pool of ready sprites: made ahead (volume cloned and mounted, namespaces and
//! sprite-init up) and frozen, so a create only renames one and thaws it.
//!
//! A pooled sprite is an ordinary sprite record flagged `pooled` (in no
//! organization), so it survives daemon restarts like any other; taking it gives the
//! record the caller's organization and name in one database update.

use crate::db::SpriteRecord;
use crate::error::CoreError;
use crate::manager::SpriteManager;
use parking_lot::Mutex;
use sprite_api::sprite::SpriteStatus;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Ids of frozen, ready sprites, oldest first.
    ready: Mutex<VecDeque<crate::ids::SpriteId>>,
    /// Wakes the filler (a sprite was taken).
    taken: tokio::sync::Notify,
}

impl SpriteManager {
    /// Ready sprites in the pool now.
    pub fn pool_ready(&self) -> usize {
        self.pool.ready.lock().len()
    }

    /// Whether a create with this image and size may come from the pool.
    pub(crate) fn poolable(&self, image: &str, storage_gb: Option<u64>) -> bool {
        self.config.pool_size > 0
            && image == self.config.default_image
            && storage_gb.unwrap_or(self.config.default_storage_gb)
                == self.config.default_storage_gb
    }

    /// Keeps the pool full, forever: fills it, then again after each take. A failed
    /// fill is retried after a pause.
    pub async fn run_pool(self: Arc<Self>) {
        if self.config.pool_size == 0 {
            return;
        }
        loop {
            while self.pool_ready() < self.config.pool_size {
                if let Err(error) = self.make_pooled().await {
                    tracing::warn!(
                        "could not fill the sprite pool: {}",
                        sprite_api::error_chain(&error)
                    );
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
            self.pool.taken.notified().await;
        }
    }

    async fn make_pooled(&self) -> Result<(), CoreError> {
        let id = crate::ids::SpriteId::generate();
        let timestamp = crate::manager::now();
        let record = SpriteRecord {
            name: format!("pool-{}", &id[7..19]),
            id,
            org: String::new(),
            image: self.config.default_image.clone(),
            url_auth: sprite_api::sprite::UrlAuth::Sprite,
            labels: Vec::new(),
            config: self.resolve_config(None)?,
            environment: Default::default(),
            created_at: timestamp.clone(),
            updated_at: timestamp,
            last_running_at: None,
            id_base: 0,
            attrs: Default::default(),
            pooled: true,
        };
        let mut record = record;
        let volume = crate::manager::Volume::Empty {
            bytes: self.config.default_storage_gb << 30,
        };
        self.provision(&mut record, volume, true).await?;
        self.pool.ready.lock().push_back(record.id.clone());
        self.note_sprites_changed(&record.id);
        tracing::debug!(id = %record.id, "pooled sprite ready");
        Ok(())
    }

    /// After a daemon restart: frozen pooled sprites go back in the pool; the others
    /// (a fill cut short) are removed.
    pub(crate) async fn recover_pooled(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        if self.sandboxes.state(&record.id)? == crate::sandboxes::CgroupState::Frozen {
            self.activity.set_status(&record.id, SpriteStatus::Warm);
            self.pool.ready.lock().push_back(record.id.clone());
            return Ok(());
        }
        self.teardown(record).await?;
        self.db.delete(&record.id)
    }

    /// Gives `wanted` (a new sprite's record) a pooled sprite: its id, volume and
    /// running sandbox. `Ok(None)` when the pool is empty or the pooled sprite could not
    /// be used (the caller then makes one the normal way).
    pub(crate) async fn take_pooled(
        &self,
        wanted: &SpriteRecord,
    ) -> Result<Option<SpriteRecord>, CoreError> {
        let Some(id) = self.pool.ready.lock().pop_front() else {
            return Ok(None);
        };
        self.pool.taken.notify_one();
        let record = SpriteRecord {
            id: id.clone(),
            ..wanted.clone()
        };
        if let Err(error) = self.db.adopt(&record) {
            // The name is taken (a racing create): the pooled sprite stays pooled.
            self.pool.ready.lock().push_front(id);
            return Err(error);
        }
        match self.ready_pooled(&record).await {
            Ok(()) => Ok(Some(record)),
            Err(error) => {
                tracing::warn!(sprite = %record.name, "pooled sprite unusable, making one: {}", sprite_api::error_chain(&error));
                let _ = self.teardown(&record).await;
                self.db.delete(&record.id)?;
                Ok(None)
            }
        }
    }

    /// Renames a taken pooled sprite, applies its limits and thaws it.
    async fn ready_pooled(&self, record: &SpriteRecord) -> Result<(), CoreError> {
        self.sandboxes
            .reshape(&record.name, &record.id, &self.limits(record))?;
        let start_lock = self.start_lock(&record.id);
        let _one = start_lock.lock().await;
        self.start_locked(record).await?;
        self.sandboxes.rename(&record.name, &record.id).await
    }
}
