//! Sprites that come to this host from another host of a cluster, and leave it: a
//! failover (the other host died) or a move. What travels is what the object store
//! holds: the sprite's record and its volume. Its processes do not: it arrives cold,
//! and the next request wakes it here.

use crate::db::SpriteRecord;
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::manager::SpriteManager;
use sprite_api::sprite::SpriteStatus;

impl SpriteManager {
    /// Takes a sprite another host owned: its record from the object store, its volume
    /// as the store has it now (every fsync its durability acknowledged) taken at
    /// ownership `epoch` (the old host's later publications are refused), a host id
    /// range of this host's. It is cold until a request wakes it. A copy this host kept
    /// from an earlier stay is dropped first (it is stale).
    pub async fn adopt(&self, key: &SpriteKey, epoch: u64) -> Result<(), CoreError> {
        let stored: Option<SpriteRecord> = self
            .lifecycle
            .roots
            .load_record(&Self::record_key_of(key))
            .await?
            .and_then(|value| serde_json::from_value::<SpriteRecord>(value).ok())
            .filter(|record| record.org == key.org && record.name == key.name);
        let Some(mut record) = stored else {
            return Err(CoreError::SpriteNotFound(key.name.to_string()));
        };
        if let Ok(old) = self.record(key) {
            self.forget_here(&old, false).await?;
        }
        if !self.lifecycle.roots.import(&record.id, epoch).await? {
            return Err(CoreError::Storage {
                sprite: key.name.to_string(),
                message: "its volume is not in the object store".into(),
            });
        }
        record.pooled = false;
        record.id_base = self
            .db
            .insert_with_id_range(&record, &self.config.id_ranges())?;
        self.lifecycle
            .activity
            .set_status(&record.id, SpriteStatus::Cold);
        self.lifecycle.save_life(&record.id);
        self.lifecycle.changes.note(&record.id);
        tracing::info!(sprite = %record.name, id = %record.id, "sprite taken over from the object store");
        Ok(())
    }

    /// Lets a sprite go to another host: its processes stop (as for cold sleep), its
    /// disk is flushed to the object store and released, and this host forgets it (its
    /// record and volume stay in the store for the next owner).
    pub async fn disown(&self, key: &SpriteKey) -> Result<(), CoreError> {
        let record = self.record(key)?;
        {
            let start_lock = self.lifecycle.start_lock(&record.id);
            let _one = start_lock.lock().await;
            self.lifecycle.stop_for_cold(&record).await?;
        }
        self.publish_record(&record).await;
        self.forget_here(&record, true).await?;
        tracing::info!(sprite = %record.name, id = %record.id, "sprite handed over");
        Ok(())
    }

    /// Stops a sprite this host holds but no longer owns (another host took it over
    /// while this one was cut off or paused): its processes are killed and what it
    /// wrote since is dropped, never stored over the new owner's state.
    pub async fn abandon(&self, key: &SpriteKey) -> Result<(), CoreError> {
        let record = self.record(key)?;
        let start_lock = self.lifecycle.start_lock(&record.id);
        let _one = start_lock.lock().await;
        self.forget_here(&record, false).await?;
        tracing::warn!(sprite = %record.name, id = %record.id, "sprite abandoned: another host owns it now");
        Ok(())
    }

    /// Forgets a sprite on this host; the store keeps what it holds of it (with what
    /// this host wrote if `keep_writes`).
    async fn forget_here(&self, record: &SpriteRecord, keep_writes: bool) -> Result<(), CoreError> {
        self.lifecycle.kill_sandbox(record).await?;
        self.lifecycle.roots.forget(&record.id, keep_writes).await?;
        self.lifecycle.forget_local(&record.id)?;
        self.db.delete(&record.id)?;
        self.lifecycle.changes.note(&record.id);
        Ok(())
    }

    /// The sprites this host holds (not the pool's).
    pub fn sprite_keys(&self) -> Result<Vec<SpriteKey>, CoreError> {
        Ok(self
            .db
            .all()?
            .into_iter()
            .filter(|record| !record.pooled)
            .map(|record| record.key())
            .collect())
    }
}
