//! Where a sprite's writable layer lives. [`RootStore`] is the seam the storage engine
//! (SpriteFS) plugs into; [`LocalOverlayStore`] keeps the layer in a local directory.

use crate::error::CoreError;
use sprite_sandbox::spec::RootLayers;
use std::fs;
use std::path::{Path, PathBuf};

/// Storage of sprites' own (upper) layers.
pub trait RootStore: Send + Sync + std::fmt::Debug {
    /// Makes an empty layer for a new sprite.
    fn create(&self, sprite_id: &str) -> Result<(), CoreError>;
    /// The overlay layers of a sprite over its image's root.
    fn layers(&self, sprite_id: &str, image_root: &Path) -> RootLayers;
    /// Deletes a sprite's layer for good.
    fn remove(&self, sprite_id: &str) -> Result<(), CoreError>;
}

/// Upper layers as plain directories under `<dir>/<sprite id>/`.
#[derive(Debug)]
pub struct LocalOverlayStore {
    dir: PathBuf,
}

impl LocalOverlayStore {
    pub fn new(dir: PathBuf) -> Self {
        LocalOverlayStore { dir }
    }

    fn layer_dir(&self, sprite_id: &str) -> PathBuf {
        self.dir.join(sprite_id)
    }
}

impl RootStore for LocalOverlayStore {
    fn create(&self, sprite_id: &str) -> Result<(), CoreError> {
        let dir = self.layer_dir(sprite_id);
        for sub in ["upper", "work"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(CoreError::io("create", &path))?;
        }
        Ok(())
    }

    fn layers(&self, sprite_id: &str, image_root: &Path) -> RootLayers {
        let dir = self.layer_dir(sprite_id);
        RootLayers {
            lower: vec![image_root.to_path_buf()],
            upper: dir.join("upper"),
            work: dir.join("work"),
        }
    }

    fn remove(&self, sprite_id: &str) -> Result<(), CoreError> {
        let dir = self.layer_dir(sprite_id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::io("remove", dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_live_under_the_sprite_dir() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalOverlayStore::new(dir.path().to_path_buf());
        store.create("s1").expect("create");
        let layers = store.layers("s1", Path::new("/images/debian/rootfs"));
        assert!(layers.upper.is_dir() && layers.work.is_dir());
        assert_eq!(layers.lower, vec![PathBuf::from("/images/debian/rootfs")]);
        store.remove("s1").expect("remove");
        assert!(!dir.path().join("s1").exists());
        store.remove("s1").expect("remove twice");
    }
}
