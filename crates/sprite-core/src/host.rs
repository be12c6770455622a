//! Taking the daemon off a host (`sprite admin stop --all`): every sprite goes cold
//! (its processes stopped, its disk flushed to the object store and released), pooled
//! sprites go, and then everything the daemon installed is removed: the network table,
//! mounts under the data directory, loop devices, the storage process and the run
//! directory's tmpfs. What stays is the data directory itself (the database, the
//! chunk cache) so the next start finds every sprite, cold.

use crate::error::CoreError;
use crate::SpriteManager;
use sprite_api::sprite::SpriteStatus;
use std::sync::atomic::Ordering;

/// What a stop did, line by line (as the API streams it).
pub type StopProgress<'a> = &'a (dyn Fn(String) + Send + Sync);

impl SpriteManager {
    /// Whether the host is being taken down: no sprite wakes or starts any more.
    pub fn stopping(&self) -> bool {
        self.lifecycle.stopping.load(Ordering::SeqCst)
    }

    /// Puts every sprite cold and removes what the daemon installed on the host (see
    /// the module docs). Answers how many sprites went cold. The daemon should exit
    /// after it: nothing it serves works any more.
    pub async fn stop_host(&self, progress: StopProgress<'_>) -> Result<usize, CoreError> {
        self.lifecycle.stopping.store(true, Ordering::SeqCst);
        let records = self.db.all()?;
        let mut stopped = 0;
        for record in &records {
            if record.pooled {
                // Pool sprites are made again at the next start.
                self.lifecycle.teardown(record).await?;
                self.db.delete(&record.id)?;
                progress(format!("pooled sprite {} removed", record.id));
                continue;
            }
            let lock = self.lifecycle.start_lock(&record.id);
            let _one = lock.lock().await;
            let (status, _) = self.lifecycle.activity.status(&record.id);
            let cgroup = self.lifecycle.sandboxes.state(&record.id)?;
            if status == SpriteStatus::Cold && cgroup == crate::sandboxes::CgroupState::Absent {
                continue;
            }
            self.lifecycle.stop_for_cold(record).await?;
            self.lifecycle
                .activity
                .set_status(&record.id, SpriteStatus::Cold);
            self.lifecycle.save_life(&record.id);
            stopped += 1;
            progress(format!("sprite {} ({}) is cold", record.name, record.org));
        }
        if let Some(network) = &self.lifecycle.network {
            network.uninstall().await?;
            progress("network table and interfaces removed".into());
        }
        for line in self.lifecycle.roots.uninstall().await? {
            progress(format!("{line} removed"));
        }
        let run = self.config.data_dir.join("run");
        if crate::rootfs::is_mount_point(&run) {
            sprite_sys::mount::unmount(&run, true).map_err(CoreError::io("unmount", &run))?;
            progress(format!("mount {} removed", run.display()));
        }
        let env_layer = self.config.data_dir.join(crate::config::SPRITE_ENV_LAYER);
        if crate::rootfs::is_mount_point(&env_layer) {
            sprite_sys::mount::unmount(&env_layer, true)
                .map_err(CoreError::io("unmount", &env_layer))?;
            progress(format!("mount {} removed", env_layer.display()));
        }
        Ok(stopped)
    }
}
