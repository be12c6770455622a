//! Registry and archive images end to end: pulling or importing their layers (each
//! stored once, by digest, shared by every image that has it), the image's own top
//! layer, and the read-only stack of layers sprites of the image run on.

use crate::error::CoreError;
use crate::image::oci::{self, ImageConfig, LayerRef, OciImage};
use crate::image::registry::{self, Credentials};
use crate::image::ImageStore;
use crate::lifecycle::Lifecycle;
use sprite_api::admin::PullEvent;
use std::fs;
use std::path::{Path, PathBuf};

/// Pulls and archive imports run one at a time (two would unpack a shared layer side
/// by side).
#[derive(Debug, Default)]
pub(crate) struct Stacks {
    pulls: tokio::sync::Mutex<()>,
}

/// Something that hears a pull's progress.
pub type Progress<'a> = &'a (dyn Fn(PullEvent) + Send + Sync);

/// The store record of an image from a registry or an archive (a fresh host of the
/// same store finds it there).
fn record_key(name: &str) -> String {
    format!("images/{name}.json")
}

impl Lifecycle {
    /// The record of a registry or archive image, from this host or the store.
    pub(crate) async fn oci_image(&self, name: &str) -> Result<Option<OciImage>, CoreError> {
        if let Some(image) = self.images.oci(name)? {
            return Ok(Some(image));
        }
        let Some(value) = self.roots.load_record(&record_key(name)).await? else {
            return Ok(None);
        };
        let image: OciImage = serde_json::from_value(value).map_err(|e| CoreError::Corrupt {
            what: "image record in the store",
            message: e.to_string(),
        })?;
        self.images.save_oci(&image)?;
        Ok(Some(image))
    }

    /// The root of one layer: its volume mounted (SpriteFS) or its directory.
    async fn layer_root(&self, key: &str) -> Result<Option<PathBuf>, CoreError> {
        if let Some(root) = self.roots.mount_image(key).await? {
            return Ok(Some(root));
        }
        let dir = self.images.layers_dir().join(key).join("rootfs");
        Ok(dir.is_dir().then_some(dir))
    }

    /// The roots of an image's layers, topmost (its own setup layer) first.
    pub(crate) async fn layer_roots(&self, image: &OciImage) -> Result<Vec<PathBuf>, CoreError> {
        let mut roots = Vec::new();
        let keys = image
            .layers
            .iter()
            .map(LayerRef::key)
            .chain(std::iter::once(Ok(image.setup_key())))
            .collect::<Result<Vec<_>, _>>()?;
        for key in keys {
            let root = self.layer_root(&key).await?.ok_or_else(|| {
                CoreError::BadImage(format!(
                    "layer {key} of image {} is missing; pull or import the image again",
                    image.name
                ))
            })?;
            roots.push(root);
        }
        roots.reverse();
        Ok(roots)
    }

    /// Makes layer `key` from a blob (a layer tar, compressed or not) unless it is
    /// here already; true when it was made.
    async fn add_layer(&self, key: &str, blob: &Path) -> Result<(), CoreError> {
        let layers = self.images.layers_dir();
        let scratch = layers.join(format!(".{key}.partial"));
        let _ = fs::remove_dir_all(&scratch);
        let rootfs = scratch.join("rootfs");
        let made = async {
            oci::unpack_layer(blob, &rootfs).await?;
            self.shift_layer(&rootfs).await
        }
        .await;
        if let Err(error) = made {
            let _ = fs::remove_dir_all(&scratch);
            return Err(error);
        }
        self.keep_layer(key, &scratch).await
    }

    async fn shift_layer(&self, rootfs: &Path) -> Result<(), CoreError> {
        let (root, base) = (rootfs.to_path_buf(), self.config.id_base);
        tokio::task::spawn_blocking(move || crate::image::shift_ids(&root, base))
            .await
            .map_err(|e| CoreError::Task("layer id shift", e))?
    }

    /// Moves an unpacked layer (`scratch/rootfs`) into place and, on SpriteFS, stores it
    /// as a read-only volume (the directory then goes: the volume is the layer).
    async fn keep_layer(&self, key: &str, scratch: &Path) -> Result<(), CoreError> {
        let dir = self.images.layers_dir().join(key);
        let _ = fs::remove_dir_all(&dir);
        fs::rename(scratch, &dir).map_err(CoreError::io("move the layer into", &dir))?;
        let rootfs = dir.join("rootfs");
        if self.roots.import_image(key, &rootfs).await?.is_some() {
            let _ = fs::remove_dir_all(&dir);
        }
        Ok(())
    }

    /// Writes the image's own top layer: the `sprite` user when the image has none,
    /// sudo rights where it has sudo, `/etc/hosts`; answers the default user.
    async fn add_setup_layer(&self, image: &OciImage) -> Result<String, CoreError> {
        let key = image.setup_key();
        let mut roots = Vec::new();
        for layer in image.layers.iter().rev() {
            let root = self.layer_root(&layer.key()?).await?.ok_or_else(|| {
                CoreError::BadImage(format!("layer {} went missing", layer.digest))
            })?;
            roots.push(root);
        }
        let read = |relative: &str| {
            oci::find_in_layers(&roots, relative)
                .and_then(|p| fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        let exists = |relative: &str| oci::find_in_layers(&roots, relative).is_some();
        let (files, user, home_uid) = oci::setup_files(
            &read("etc/passwd"),
            &read("etc/group"),
            exists("bin/bash") || exists("usr/bin/bash"),
            exists("etc/sudoers.d") && (exists("usr/bin/sudo") || exists("bin/sudo")),
            exists("etc/hosts"),
            image.config.user.as_deref(),
        );
        let scratch = self.images.layers_dir().join(format!(".{key}.partial"));
        let _ = fs::remove_dir_all(&scratch);
        let rootfs = scratch.join("rootfs");
        oci::write_setup_layer(&rootfs, &files, home_uid)?;
        self.shift_layer(&rootfs).await?;
        // Its name is the image's: a new pull of the image replaces it.
        self.roots.discard_image(&key).await?;
        self.keep_layer(&key, &scratch).await?;
        Ok(user)
    }
}

impl crate::manager::SpriteManager {
    /// Pulls `reference` from its registry as image `name` (default: from the
    /// reference). Layers already stored (from any image) are not fetched again.
    pub async fn pull_image(
        &self,
        request: &sprite_api::admin::PullRequest,
        progress: Progress<'_>,
    ) -> Result<String, CoreError> {
        let name = match &request.name {
            Some(name) => name.clone(),
            None => oci::name_for_reference(&request.reference),
        };
        // Pulling again over an image of this name makes a new version of it.
        if request.replace && self.lifecycle.oci_image(&name).await?.is_some() {
            return self.update_image(&name, request, progress).await;
        }
        self.check_new_image(&name, false).await?;
        let pulled = self.pull_into(request, &name, None, progress).await?;
        Ok(pulled.unwrap_or(name))
    }

    /// Pulls `request.reference` as image version `key`; None (and nothing made) when
    /// its manifest digest is `unchanged_from`.
    pub(crate) async fn pull_into(
        &self,
        request: &sprite_api::admin::PullRequest,
        key: &str,
        unchanged_from: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Option<String>, CoreError> {
        let name = key.to_string();
        let lifecycle = &self.lifecycle;
        // One pull or import at a time: two would unpack a shared layer side by side.
        let _one = lifecycle.stacks.pulls.lock().await;
        lifecycle
            .images
            .note_progress(&name, "resolving the reference");
        let result = async {
            let credentials = Credentials {
                username: request.username.clone(),
                password: request.password.clone(),
            };
            let remote = registry::resolve(
                &request.reference,
                &credentials,
                &self.config.insecure_registries,
            )
            .await?;
            if unchanged_from == Some(remote.digest.as_str()) {
                return Ok(None);
            }
            progress(PullEvent::Resolved {
                digest: remote.digest.clone(),
                layers: remote.layers.len(),
            });
            let downloads = lifecycle.images.layers_dir().join(".downloads");
            fs::create_dir_all(&downloads).map_err(CoreError::io("create", &downloads))?;
            for (index, layer) in remote.layers.iter().enumerate() {
                let key = layer.key()?;
                let event = |state: &str, bytes: u64| PullEvent::Layer {
                    index,
                    digest: layer.digest.clone(),
                    state: state.into(),
                    bytes,
                    total: layer.size,
                };
                if lifecycle.layer_root(&key).await?.is_some() {
                    progress(event("stored", layer.size));
                    continue;
                }
                let blob = downloads.join(format!("{key}.{}", uuid::Uuid::new_v4().simple()));
                let mut last = std::time::Instant::now();
                let fetched = remote
                    .fetch_layer(index, &blob, |bytes| {
                        if last.elapsed() >= std::time::Duration::from_millis(250) {
                            last = std::time::Instant::now();
                            progress(event("downloading", bytes));
                        }
                    })
                    .await;
                if let Err(error) = fetched {
                    let _ = fs::remove_file(&blob);
                    return Err(error);
                }
                progress(event("unpacking", layer.size));
                lifecycle.images.note_progress(
                    &name,
                    &format!("layer {}/{}", index + 1, remote.layers.len()),
                );
                let added = lifecycle.add_layer(&key, &blob).await;
                let _ = fs::remove_file(&blob);
                added?;
                progress(event("ready", layer.size));
            }
            let image = OciImage {
                name: name.clone(),
                source: request.reference.clone(),
                digest: remote.digest.clone(),
                layers: remote.layers.clone(),
                config: remote.config.clone(),
                user: String::new(),
                pulled_at: chrono::Utc::now().to_rfc3339(),
            };
            self.finish_oci_image(image, progress).await.map(Some)
        }
        .await;
        lifecycle
            .images
            .note_done(&name, &result.as_ref().map(|_| ()).map_err(clone_error));
        result
    }

    /// Imports a docker-archive or OCI-layout tarball as image `name`; false when the
    /// tarball is neither (a plain root filesystem).
    pub async fn import_image_archive(
        &self,
        name: &str,
        tarball: &Path,
        progress: Progress<'_>,
    ) -> Result<bool, CoreError> {
        let lifecycle = &self.lifecycle;
        let _one = lifecycle.stacks.pulls.lock().await;
        let unpacked = lifecycle
            .images
            .layers_dir()
            .join(format!(".archive-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&unpacked).map_err(CoreError::io("create", &unpacked))?;
        let result = async {
            // Only the index files first: a root filesystem tarball is not unpacked twice.
            let _ = tokio::process::Command::new(sprite_sys::tools::find("tar"))
                .arg("-xf")
                .arg(tarball)
                .arg("-C")
                .arg(&unpacked)
                .args([
                    "--no-same-owner",
                    "--wildcards",
                    "manifest.json",
                    "index.json",
                    "oci-layout",
                ])
                .output()
                .await;
            if !unpacked.join("manifest.json").is_file() && !unpacked.join("index.json").is_file() {
                return Ok(false);
            }
            ImageStore::check_name(name)?;
            self.check_new_image(name, false).await?;
            progress(PullEvent::Info {
                message: "unpacking the archive".into(),
            });
            let output = tokio::process::Command::new(sprite_sys::tools::find("tar"))
                .arg("-xf")
                .arg(tarball)
                .arg("-C")
                .arg(&unpacked)
                .arg("--no-same-owner")
                .output()
                .await
                .map_err(|e| CoreError::BadImage(format!("cannot run tar: {e}")))?;
            if !output.status.success() {
                return Err(CoreError::BadImage(format!(
                    "the archive is not a tar archive tar can read: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            let archive = oci::read_archive(&unpacked)?
                .ok_or_else(|| CoreError::BadImage("not an image archive".into()))?;
            if archive.layers.len() > oci::MAX_LAYERS {
                return Err(CoreError::BadImage(format!(
                    "the archive's image has {} layers; at most {} are supported",
                    archive.layers.len(),
                    oci::MAX_LAYERS
                )));
            }
            let config =
                ImageConfig::from_document(&archive.config).map_err(CoreError::BadImage)?;
            progress(PullEvent::Resolved {
                digest: archive.digest.clone(),
                layers: archive.layers.len(),
            });
            let mut layers = Vec::new();
            for (index, path) in archive.layers.iter().enumerate() {
                let digest = oci::file_digest(path)?;
                let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                let key = oci::layer_key(&digest)?;
                let event = |state: &str| PullEvent::Layer {
                    index,
                    digest: digest.clone(),
                    state: state.into(),
                    bytes: size,
                    total: size,
                };
                if lifecycle.layer_root(&key).await?.is_some() {
                    progress(event("stored"));
                } else {
                    progress(event("unpacking"));
                    lifecycle.add_layer(&key, path).await?;
                    progress(event("ready"));
                }
                layers.push(LayerRef { digest, size });
            }
            let file_name = tarball
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let image = OciImage {
                name: name.to_string(),
                source: format!("archive:{file_name}"),
                digest: archive.digest,
                layers,
                config,
                user: String::new(),
                pulled_at: chrono::Utc::now().to_rfc3339(),
            };
            self.finish_oci_image(image, progress).await.map(|_| true)
        }
        .await;
        let _ = fs::remove_dir_all(&unpacked);
        if let Ok(true) | Err(_) = &result {
            lifecycle
                .images
                .note_done(name, &result.as_ref().map(|_| ()).map_err(clone_error));
        }
        result
    }

    /// An error unless `name` may take a new image (`replace`: it may be an image from
    /// a registry or an archive already, which the new one replaces).
    async fn check_new_image(&self, name: &str, replace: bool) -> Result<(), CoreError> {
        ImageStore::check_name(name)?;
        if crate::image::KNOWN_IMAGES.contains(&name) {
            return Err(CoreError::BuiltInImage(name.to_string()));
        }
        let lifecycle = &self.lifecycle;
        let oci = lifecycle.oci_image(name).await?;
        if replace && oci.is_some() {
            return Ok(());
        }
        if oci.is_some()
            || lifecycle.images.is_ready(name)
            || lifecycle.roots.mount_image(name).await?.is_some()
        {
            return Err(CoreError::ImageExists(name.to_string()));
        }
        Ok(())
    }

    /// The setup layer, the records (here and in the store) and the stack of a pulled
    /// or imported image.
    async fn finish_oci_image(
        &self,
        mut image: OciImage,
        progress: Progress<'_>,
    ) -> Result<String, CoreError> {
        let lifecycle = &self.lifecycle;
        progress(PullEvent::Info {
            message: "adding the sprite user and settings".into(),
        });
        image.user = lifecycle.add_setup_layer(&image).await?;
        let value = serde_json::to_value(&image).unwrap_or_default();
        lifecycle
            .roots
            .save_record(&record_key(&image.name), &value)
            .await?;
        lifecycle.images.save_oci(&image)?;
        progress(PullEvent::Complete {
            name: image.name.clone(),
        });
        Ok(image.name)
    }
}

/// A copy of an error for the image status line (errors are not Clone).
fn clone_error(error: &CoreError) -> CoreError {
    CoreError::BadImage(sprite_api::error_chain(error))
}
