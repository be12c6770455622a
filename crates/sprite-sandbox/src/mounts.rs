//! Mounts the daemon makes on the host for a sprite: its checkpoint views and the
//! shared directory its in-sprite API socket lives in.

use crate::error::SandboxError;
use crate::sys;
use std::os::fd::AsFd;
use std::path::Path;

/// The user namespace that maps the storage ids onto a sprite's own range
/// (`inside outside count`), for idmapped mounts of its layers; None when the two are
/// the same range.
pub fn storage_idmap(
    storage_id_base: u32,
    id_base: u32,
    id_count: u32,
) -> Result<Option<std::os::fd::OwnedFd>, SandboxError> {
    if storage_id_base == id_base {
        return Ok(None);
    }
    sys::user_namespace(&format!("{storage_id_base} {id_base} {id_count}\n"))
        .map(Some)
        .map_err(SandboxError::IdmapNamespace)
}

/// Mounts a checkpoint view at `target`: a read-only overlay of the version's disk
/// (`disk`, its ext4 mounted read-only: `upper/` over the image at `image`), seen with
/// the sprite's ids through `idmap`, and the version's `home/` bound at `target/home`
/// when it has one. Built from detached mounts, so what the sprite reads of it in its
/// mountinfo names no host path. Everything is read-only, nosuid, nodev and noexec.
pub fn mount_view(
    disk: &Path,
    image: &[std::path::PathBuf],
    target: &Path,
    idmap: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), SandboxError> {
    use sys::mount_attr::{NO_DEV, NO_EXEC, NO_SUID, READ_ONLY};
    let attributes = READ_ONLY | NO_SUID | NO_DEV | NO_EXEC;
    let clone = |at: Option<std::os::fd::BorrowedFd<'_>>,
                 path: &Path,
                 idmap: Option<std::os::fd::BorrowedFd<'_>>| {
        let fd = sys::clone_mount(at, path, false)
            .map_err(|e| SandboxError::CloneMount(path.to_path_buf(), e))?;
        sys::set_mount_attributes(fd.as_fd(), attributes, 0, idmap, false)
            .map_err(|e| SandboxError::CloneMount(path.to_path_buf(), e))?;
        Ok::<_, SandboxError>(fd)
    };
    let disk_mount = clone(None, disk, idmap)?;
    let upper = clone(Some(disk_mount.as_fd()), Path::new("upper"), None)?;
    let image_mounts = image
        .iter()
        .map(|layer| clone(None, layer, idmap))
        .collect::<Result<Vec<_>, _>>()?;
    let mut lowers = vec![upper.as_fd()];
    lowers.extend(image_mounts.iter().map(|m| m.as_fd()));
    let overlay = sys::overlay_from(&lowers, "sprite-checkpoint", &["ro", "userxattr"])
        .map_err(|e| SandboxError::CloneMount(target.to_path_buf(), e))?;
    let home = disk
        .join("home")
        .is_dir()
        .then(|| clone(Some(disk_mount.as_fd()), Path::new("home"), None))
        .transpose()?;
    // Everything is ready before the view's name appears: a sprite listing its views
    // never sees one without its files (only the three calls below lie between).
    std::fs::create_dir(target).map_err(|e| SandboxError::CreateDir(target.to_path_buf(), e))?;
    sys::attach_mount(overlay.as_fd(), target)
        .map_err(|e| SandboxError::AttachMount(target.to_path_buf(), e))?;
    if let Some(home) = home {
        let home_target = target.join("home");
        sys::attach_mount(home.as_fd(), &home_target)
            .map_err(|e| SandboxError::AttachMount(home_target, e))?;
    }
    Ok(())
}

/// Mounts a tmpfs named `source` at `target` with `options` (size, mode), nosuid,
/// nodev and noexec.
pub fn mount_tmpfs(target: &Path, source: &str, options: &str) -> Result<(), SandboxError> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some(source),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
    .map_err(|source| SandboxError::Syscall {
        step: format!("mount a tmpfs at {}", target.display()),
        source,
    })
}
