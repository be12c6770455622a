//! Templates: a named, frozen copy of a sprite's checkpoint that new sprites start from
//! (`sprite create --template NAME`), shared by the organization and kept after the
//! source sprite is destroyed. A template is a volume of its own (a metadata-only fork
//! of the checkpoint, sealed as version [`TEMPLATE_VERSION`]); a create from it is a
//! metadata-only fork of that version, as `--from` is.

use crate::error::CoreError;
use crate::manager::SpriteManager;
use sprite_api::sprite::{CreateTemplateRequest, TemplateInfo};

/// The version of a template's volume that sprites are made from.
pub const TEMPLATE_VERSION: &str = "template";

/// Where a template's record is mirrored in the object store.
fn record_key(org: &str, name: &str) -> String {
    format!("templates/{org}/{name}.json")
}

/// A template as the object store keeps it: every host of a cluster finds it there.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredTemplate {
    volume: String,
    info: TemplateInfo,
}

impl SpriteManager {
    /// Makes a template of a sprite's checkpoint (its newest when none is named).
    pub async fn create_template(
        &self,
        org: &str,
        request: CreateTemplateRequest,
    ) -> Result<TemplateInfo, CoreError> {
        sprite_api::validate_sprite_name(&request.name)?;
        if let Some(comment) = &request.comment {
            if comment.len() > 1024 {
                return Err(CoreError::Validation(format!(
                    "comment is {} bytes; at most 1024 are allowed",
                    comment.len()
                )));
            }
        }
        if self.find_template(org, &request.name).await.is_ok() {
            return Err(CoreError::TemplateExists(request.name));
        }
        let (parent, version) = self.fork_source(org, &request.from).await?;
        let volume = format!("template-{}", uuid::Uuid::new_v4().simple());
        let info = TemplateInfo {
            name: request.name.clone(),
            source_sprite: parent.name.clone(),
            source_checkpoint: version.clone(),
            image: crate::upgrades::image_at(&parent, &version),
            comment: request.comment.clone(),
            created_at: crate::time::now(),
        };
        let made = async {
            self.lifecycle
                .roots
                .create_from(&volume, &parent.id, &version)
                .await?;
            self.lifecycle
                .roots
                .checkpoint(&volume, TEMPLATE_VERSION, request.comment.as_deref())
                .await?;
            self.db.insert_template(org, &volume, &info)
        }
        .await;
        if let Err(error) = made {
            if let Err(cleanup) = self.lifecycle.roots.remove(&volume).await {
                tracing::warn!(template = %info.name, "could not remove a template volume left by a failed create: {}", sprite_api::error_chain(&cleanup));
            }
            return Err(error);
        }
        let record = serde_json::to_value(StoredTemplate {
            volume: volume.clone(),
            info: info.clone(),
        })
        .unwrap_or_default();
        if let Err(error) = self
            .lifecycle
            .roots
            .save_record(&record_key(org, &info.name), &record)
            .await
        {
            tracing::warn!(template = %info.name, "could not save the template record to the store: {}", sprite_api::error_chain(&error));
        }
        tracing::info!(template = %info.name, source = %info.source_sprite, checkpoint = %info.source_checkpoint, "template created");
        Ok(info)
    }

    /// A template of the organization, with its volume: from this host's database, or
    /// in a cluster from the object store every host shares.
    pub(crate) async fn find_template(
        &self,
        org: &str,
        name: &str,
    ) -> Result<(String, TemplateInfo), CoreError> {
        // On one host its own database says; in a cluster, the shared store does (a
        // template made or deleted through another host).
        if !self.config.cluster {
            return self.db.template(org, name);
        }
        let stored = self
            .lifecycle
            .roots
            .load_record(&record_key(org, name))
            .await?
            .and_then(|value| serde_json::from_value::<StoredTemplate>(value).ok());
        match stored {
            Some(stored) if stored.info.name == name => Ok((stored.volume, stored.info)),
            _ => Err(CoreError::TemplateNotFound(name.to_string())),
        }
    }

    /// The organization's templates, by name (in a cluster: every host's, from the
    /// object store).
    pub async fn templates(&self, org: &str) -> Result<Vec<TemplateInfo>, CoreError> {
        if !self.config.cluster {
            return self.db.templates(org);
        }
        let mut templates: Vec<TemplateInfo> = Vec::new();
        for value in self
            .lifecycle
            .roots
            .load_records(&format!("templates/{org}/"))
            .await?
        {
            if let Ok(stored) = serde_json::from_value::<StoredTemplate>(value) {
                if !templates.iter().any(|t| t.name == stored.info.name) {
                    templates.push(stored.info);
                }
            }
        }
        templates.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(templates)
    }

    pub async fn template(&self, org: &str, name: &str) -> Result<TemplateInfo, CoreError> {
        Ok(self.find_template(org, name).await?.1)
    }

    /// Deletes a template (sprites made from it keep their data: a fork shares blocks,
    /// it does not depend on the template's volume staying).
    pub async fn delete_template(&self, org: &str, name: &str) -> Result<(), CoreError> {
        let (volume, _) = self.find_template(org, name).await?;
        self.lifecycle.roots.remove(&volume).await?;
        self.db.delete_template(org, name)?;
        if let Err(error) = self
            .lifecycle
            .roots
            .delete_record(&record_key(org, name))
            .await
        {
            tracing::warn!(template = %name, "could not delete the template record from the store: {}", sprite_api::error_chain(&error));
        }
        tracing::info!(template = %name, "template deleted");
        Ok(())
    }
}
