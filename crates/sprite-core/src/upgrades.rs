//! Image versions, updates and upgrades.
//!
//! An image has versions: `dev` is the first, `dev@2`, `dev@3`... the later ones. New
//! sprites start on the newest; a sprite stays on the version it was made on until it
//! is upgraded. `update_image` makes a new version (a fresh build of a built-in image,
//! which brings every package's current release; a fresh pull of a registry image);
//! `upgrade` moves a sprite onto the newest version, keeping its own layer and /home,
//! after a checkpoint that undoes it when restored. A version nothing references any
//! more (no sprite, no template, no checkpoint an upgrade could be undone to) is
//! collected.

use crate::db::{SpriteRecord, UpgradeMark};
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::image::{base_name, version_of, ImageStore, KNOWN_IMAGES};
use crate::manager::SpriteManager;
use crate::oci_images::Progress;
use sprite_api::admin::PullEvent;
use sprite_api::sprite::{SpriteStatus, UpgradeReport};
use std::collections::HashSet;

/// The number of a checkpoint id (`v12` → 12).
fn checkpoint_number(id: &str) -> Option<u64> {
    id.strip_prefix('v')?.parse().ok()
}

/// The image a sprite's checkpoint `id` was taken on: the image before the first
/// upgrade made after it (its own checkpoint is that moment), else the current one.
pub(crate) fn image_at(record: &SpriteRecord, id: &str) -> String {
    let Some(number) = checkpoint_number(id) else {
        return record.image.clone();
    };
    record
        .attrs
        .upgrades
        .iter()
        .find(|mark| checkpoint_number(&mark.checkpoint).is_some_and(|n| n >= number))
        .map_or_else(|| record.image.clone(), |mark| mark.image.clone())
}

/// What a restore of checkpoint `id` makes of a sprite's record: the image it ran on
/// then, and only the upgrades made before it. None: nothing changes.
pub(crate) fn restored_record(record: &SpriteRecord, id: &str) -> Option<SpriteRecord> {
    let number = checkpoint_number(id)?;
    let position = record
        .attrs
        .upgrades
        .iter()
        .position(|mark| checkpoint_number(&mark.checkpoint).is_some_and(|n| n >= number))?;
    let mut restored = record.clone();
    restored.image = record.attrs.upgrades[position].image.clone();
    restored.attrs.upgrades.truncate(position);
    Some(restored)
}

impl SpriteManager {
    /// Makes a new version of image `name` and makes it the newest: built again for a
    /// built-in image, pulled again for a registry image (with `credentials` for a
    /// private one). Answers the newest version's key (the current one when the
    /// registry has nothing newer).
    pub async fn update_image(
        &self,
        name: &str,
        credentials: &sprite_api::admin::PullRequest,
        progress: Progress<'_>,
    ) -> Result<String, CoreError> {
        ImageStore::check_name(name)?;
        let images = &self.lifecycle.images;
        let current = images.current_key(name);
        let next = images.next_key(name);
        if KNOWN_IMAGES.contains(&name) {
            progress(PullEvent::Info {
                message: format!(
                    "building {next} (a fresh build: every package at its current release)"
                ),
            });
            let build = images.ensure(&next);
            tokio::pin!(build);
            let mut ticker = tokio::time::interval(std::time::Duration::from_millis(500));
            let mut said = String::new();
            let dir = loop {
                tokio::select! {
                    built = &mut build => break built?,
                    _ = ticker.tick() => {
                        if let Some(status) = images.status_of(&next) {
                            if status.detail != said && !status.detail.is_empty() {
                                said = status.detail.clone();
                                progress(PullEvent::Info { message: said.clone() });
                            }
                        }
                    }
                }
            };
            progress(PullEvent::Info {
                message: "storing the new version".into(),
            });
            self.lifecycle.roots.import_image(&next, &dir).await?;
        } else if let Some(oci) = self.lifecycle.oci_image(&current).await? {
            if oci.source.starts_with("archive:") {
                return Err(CoreError::Validation(format!(
                    "image {name} was imported from a file ({}); import the new file under a new name",
                    oci.source.trim_start_matches("archive:")
                )));
            }
            let request = sprite_api::admin::PullRequest {
                reference: oci.source.clone(),
                name: Some(next.clone()),
                username: credentials.username.clone(),
                password: credentials.password.clone(),
                replace: false,
            };
            if self
                .pull_into(&request, &next, Some(&oci.digest), progress)
                .await?
                .is_none()
            {
                progress(PullEvent::Info {
                    message: format!("{} has not changed: {current} stays the newest", oci.source),
                });
                return Ok(current);
            }
        } else if images.is_ready(name) {
            return Err(CoreError::Validation(format!(
                "image {name} was imported from a root filesystem tarball; import the new one under a new name"
            )));
        } else {
            return Err(CoreError::UnknownImage {
                name: name.to_string(),
                known: images.statuses().into_iter().map(|s| s.name).collect(),
            });
        }
        images.set_current(&next)?;
        let value = serde_json::json!({ "current": next });
        self.lifecycle
            .roots
            .save_record(&format!("images/{name}.current.json"), &value)
            .await?;
        tracing::info!(image = name, version = %next, "new image version");
        self.collect_image_versions(name).await;
        Ok(next)
    }

    /// Moves a sprite onto the newest version of its image: a checkpoint first (its
    /// restore undoes the upgrade), then the sprite starts again on the new layers;
    /// its own changes and /home stay.
    pub async fn upgrade(&self, key: &SpriteKey) -> Result<UpgradeReport, CoreError> {
        let record = self.record(key)?;
        let from = record.image.clone();
        let to = self.lifecycle.images.current_key(base_name(&from));
        if version_of(&to) <= version_of(&from) {
            return Ok(UpgradeReport {
                from: from.clone(),
                to: from,
                checkpoint: None,
                upgraded: false,
            });
        }
        // The new version is ready before anything of the sprite changes.
        self.lifecycle.image_root(&to).await?;
        let checkpoint = self
            .checkpoint(
                key,
                Some(&format!("before the upgrade from {from} to {to}")),
                crate::manager::Caller::Api,
            )
            .await?;
        let record = self.record(key)?;
        let (_busy, _) = self
            .lifecycle
            .activity
            .hold(&record.id, crate::activity::Reason::Api);
        let start_lock = self.lifecycle.start_lock(&record.id);
        let _guard = start_lock.lock().await;
        let mut attrs = record.attrs.clone();
        attrs.upgrades.push(UpgradeMark {
            checkpoint: checkpoint.id.clone(),
            image: from.clone(),
        });
        self.lifecycle
            .activity
            .set_status(&record.id, SpriteStatus::Cold);
        self.lifecycle.kill_sandbox(&record).await?;
        self.lifecycle.roots.release(&record.id).await?;
        self.db.set_image(&record.id, &to, &attrs)?;
        let upgraded = self.record(key)?;
        self.lifecycle.start_locked(&upgraded).await?;
        self.publish_record(&upgraded).await;
        tracing::info!(sprite = %key.name, %from, %to, checkpoint = %checkpoint.id, "sprite upgraded");
        Ok(UpgradeReport {
            from,
            to,
            checkpoint: Some(checkpoint.id),
            upgraded: true,
        })
    }

    /// Deletes the versions of image `name` that nothing references: not the newest,
    /// not one a sprite or a template runs on, not one an upgrade may be undone to. The
    /// first version keeps its directory (the image's name stays listed); its volume goes.
    pub async fn collect_image_versions(&self, name: &str) {
        if let Err(error) = self.collect_versions(name).await {
            tracing::warn!(
                image = name,
                "collecting old image versions: {}",
                sprite_api::error_chain(&error)
            );
        }
    }

    async fn collect_versions(&self, name: &str) -> Result<(), CoreError> {
        let images = &self.lifecycle.images;
        let mut referenced: HashSet<String> = HashSet::new();
        for record in self.db.all()? {
            referenced.insert(record.image.clone());
            referenced.extend(record.attrs.upgrades.iter().map(|m| m.image.clone()));
        }
        referenced.extend(self.db.template_images()?);
        referenced.insert(images.current_key(name));
        for key in images.versions(name) {
            if referenced.contains(&key) {
                continue;
            }
            let oci = self.lifecycle.oci_image(&key).await?;
            tracing::info!(image = %key, "collecting an image version nothing uses");
            self.lifecycle.roots.discard_image(&key).await?;
            if let Some(oci) = &oci {
                self.lifecycle.roots.discard_image(&oci.setup_key()).await?;
                self.lifecycle
                    .roots
                    .delete_record(&format!("images/{key}.json"))
                    .await?;
            }
            // The first version's directory stays: it holds the image's record (and,
            // for a built image, the files it was built into, which may be shared).
            if key.contains('@') {
                images.forget_version(&key)?;
            }
            if let Some(oci) = oci {
                self.collect_layers(&oci).await?;
            }
        }
        Ok(())
    }

    /// Discards the layers of a collected registry image version that no image kept
    /// on this host has.
    async fn collect_layers(&self, gone: &crate::image::oci::OciImage) -> Result<(), CoreError> {
        let images = &self.lifecycle.images;
        let mut kept: HashSet<String> = HashSet::new();
        for status in images.statuses() {
            for key in images.versions(&status.name) {
                if let Some(oci) = images.oci(&key)? {
                    if oci.name == gone.name && oci.digest == gone.digest && key.contains('@') {
                        continue;
                    }
                    for layer in &oci.layers {
                        kept.insert(layer.key()?);
                    }
                }
            }
        }
        for layer in &gone.layers {
            let key = layer.key()?;
            if !kept.contains(&key) {
                self.lifecycle.roots.discard_image(&key).await?;
                let _ = std::fs::remove_dir_all(images.layers_dir().join(&key));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(image: &str, upgrades: &[(&str, &str)]) -> SpriteRecord {
        let mut record = crate::db::tests_support::record("s");
        record.image = image.into();
        record.attrs.upgrades = upgrades
            .iter()
            .map(|(checkpoint, image)| UpgradeMark {
                checkpoint: checkpoint.to_string(),
                image: image.to_string(),
            })
            .collect();
        record
    }

    #[test]
    fn checkpoints_remember_the_image_they_were_taken_on() {
        // Upgraded dev → dev@2 after v3, then dev@2 → dev@3 after v5.
        let r = record("dev@3", &[("v3", "dev"), ("v5", "dev@2")]);
        assert_eq!(image_at(&r, "v1"), "dev");
        assert_eq!(image_at(&r, "v3"), "dev");
        assert_eq!(image_at(&r, "v4"), "dev@2");
        assert_eq!(image_at(&r, "v5"), "dev@2");
        assert_eq!(image_at(&r, "v6"), "dev@3");
        // Restoring v3 goes back to dev and forgets both upgrades.
        let back = restored_record(&r, "v3").unwrap();
        assert_eq!(back.image, "dev");
        assert!(back.attrs.upgrades.is_empty());
        // Restoring v4 keeps the first upgrade only.
        let back = restored_record(&r, "v4").unwrap();
        assert_eq!(back.image, "dev@2");
        assert_eq!(back.attrs.upgrades.len(), 1);
        // A checkpoint after the last upgrade changes nothing.
        assert!(restored_record(&r, "v6").is_none());
    }
}
