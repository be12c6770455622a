//! A sprite's resource limits as a policy (`/policy/resources`): memory and CPU change
//! live, in its cgroup, and are kept in its config for its next start.

use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::manager::SpriteManager;
use sprite_api::policy::{CpuPolicy, DiskPolicy, MemoryPolicy, ResourcesPolicy};
use sprite_api::sprite::SpriteConfig;
use sprite_sandbox::SandboxError;

impl SpriteManager {
    fn resources_of(&self, config: &SpriteConfig) -> ResourcesPolicy {
        ResourcesPolicy {
            memory: Some(MemoryPolicy {
                limit_mb: config.ram_mb.unwrap_or(self.config.default_ram_mb),
                autoscale: Some(false),
            }),
            cpu: Some(CpuPolicy {
                cpus: config.cpus.unwrap_or(self.config.default_cpus),
            }),
            disk: Some(DiskPolicy {
                storage_gb: config.storage_gb.unwrap_or(self.config.default_storage_gb),
            }),
        }
    }

    pub fn resources_policy(&self, key: &SpriteKey) -> Result<ResourcesPolicy, CoreError> {
        Ok(self.resources_of(&self.record(key)?.config))
    }

    /// Changes the limits `request` names (absent fields stay); `None` puts memory and
    /// CPU back to the daemon's defaults. Applied at once to a running or sleeping
    /// sprite's cgroup; lowering memory below what it uses is refused (409).
    pub async fn set_resources_policy(
        &self,
        key: &SpriteKey,
        request: Option<ResourcesPolicy>,
    ) -> Result<ResourcesPolicy, CoreError> {
        let name = key.name.as_str();
        let mut record = self.record(key)?;
        let mut config = record.config.clone();
        match &request {
            None => {
                config.ram_mb = Some(self.config.default_ram_mb);
                config.cpus = Some(self.config.default_cpus);
            }
            Some(request) => {
                if let Some(memory) = &request.memory {
                    if memory.autoscale == Some(true) {
                        return Err(CoreError::NoMemoryAutoscale);
                    }
                    config.ram_mb = Some(memory.limit_mb);
                }
                if let Some(cpu) = &request.cpu {
                    config.cpus = Some(cpu.cpus);
                }
                if let Some(disk) = &request.disk {
                    let current = config.storage_gb.unwrap_or(self.config.default_storage_gb);
                    if disk.storage_gb != current {
                        return Err(CoreError::DiskSizeFixed {
                            sprite: name.to_string(),
                            current,
                        });
                    }
                }
            }
        }
        // The same ranges as at create.
        let config = self.config.sprite_config(Some(config))?;
        record.config = config;
        let cgroup = self.lifecycle.cgroup(&record.id)?;
        if cgroup.exists() {
            cgroup
                .set_limits(&self.lifecycle.limits(&record))
                .map_err(|error| match error {
                    error @ sprite_sandbox::cgroup::CgroupError::Write { .. } => {
                        CoreError::LimitsRefused {
                            sprite: name.to_string(),
                            ram_mb: record.config.ram_mb.unwrap_or_default(),
                            source: error,
                        }
                    }
                    other => CoreError::Sandbox {
                        sprite: name.to_string(),
                        source: SandboxError::Cgroup(other),
                    },
                })?;
        }
        record.updated_at = crate::time::now();
        self.db.update(&record)?;
        self.publish_record(&record).await;
        tracing::info!(sprite = %name, ram_mb = ?record.config.ram_mb, cpus = ?record.config.cpus, "resources changed");
        Ok(self.resources_of(&record.config))
    }
}
