//! Where a sprite's writable layer lives. [`RootStore`] is the seam between the
//! lifecycle and storage: [`LocalOverlayStore`] keeps the layer in a local directory;
//! [`SpriteFsStore`] keeps it on a SpriteFS volume (ext4 on a loop device over the
//! storage process's FUSE file), so it lives in the object store.

use crate::error::CoreError;
use sprite_api::sprite::Durability;
use sprite_fs::meta::VersionRecord;
use sprite_fs::service::{StorageClient, StorageClientError, StorageRequest, StorageResponse};
use sprite_sandbox::spec::RootLayers;
use sprite_sys::loopdev;
use sprite_sys::mount::{self, MsFlags};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Storage of sprites' own (upper) layers.
#[async_trait::async_trait]
pub trait RootStore: Send + Sync + std::fmt::Debug {
    /// Makes an empty layer for a new sprite.
    /// Makes the sprite's empty layer; `size` is its volume size where volumes have one.
    async fn create(&self, sprite_id: &str, size: u64) -> Result<(), CoreError>;
    /// Makes the layer ready to mount (idempotent) and returns the overlay layers over
    /// the image's root. `id_base` is the sprite's own host id range (its checkpoint
    /// views are idmapped onto it); `durability` says when its disk's fsyncs return.
    async fn prepare(
        &self,
        sprite_id: &str,
        image: &[PathBuf],
        id_base: u32,
        durability: Durability,
    ) -> Result<RootLayers, CoreError>;
    /// Undoes `prepare` once the sprite's processes are gone; its data stays.
    async fn release(&self, sprite_id: &str) -> Result<(), CoreError>;
    /// Deletes a sprite's layer for good.
    async fn remove(&self, sprite_id: &str) -> Result<(), CoreError>;
    /// Whether the storage under running sprites is the one their layers were mounted
    /// on. `false` means it died or restarted: those sprites must be restarted.
    async fn storage_intact(&self) -> bool {
        true
    }
    /// Keeps a control-plane record where a fresh host finds it (no-op for local disks).
    async fn save_record(&self, _key: &str, _value: &serde_json::Value) -> Result<(), CoreError> {
        Ok(())
    }
    async fn delete_record(&self, _key: &str) -> Result<(), CoreError> {
        Ok(())
    }
    /// Records saved under `prefix` (empty for local disks).
    async fn load_records(&self, _prefix: &str) -> Result<Vec<serde_json::Value>, CoreError> {
        Ok(Vec::new())
    }
    /// The record saved as `key`, if there is one.
    async fn load_record(&self, _key: &str) -> Result<Option<serde_json::Value>, CoreError> {
        Ok(None)
    }
    /// Stored bytes of the layer (None: the backend does not count).
    async fn usage(&self, _sprite_id: &str) -> Result<Option<LayerUsage>, CoreError> {
        Ok(None)
    }
    /// Deletes chunks and layers nothing references (None: nothing to collect).
    async fn collect_garbage(&self) -> Result<Option<(usize, usize, u64)>, CoreError> {
        Ok(None)
    }
    /// The storage process's object store calls and upload queue (None: no store).
    async fn storage_stats(&self) -> Result<Option<sprite_fs::service::StorageStats>, CoreError> {
        Ok(None)
    }
    /// Removes everything the storage put on the host once no sprite runs: mounts
    /// under the data directory, loop devices, the storage process. Answers what it
    /// removed, for the report.
    async fn uninstall(&self) -> Result<Vec<String>, CoreError> {
        Ok(Vec::new())
    }
    /// Brings the storage back after it died (restarts the storage process).
    async fn recover_storage(&self) -> Result<(), CoreError> {
        Ok(())
    }
    /// Reads a sprite's layer from the object store as it is there now, replacing what
    /// this host knew of it, and takes it at ownership `epoch` (a sprite that comes
    /// from another host of a cluster: the host before can store nothing more of it).
    /// Answers false when the store has none (or the backend keeps nothing there).
    async fn import(&self, _sprite_id: &str, _epoch: u64) -> Result<bool, CoreError> {
        Ok(false)
    }
    /// Undoes `prepare` and forgets the layer on this host; the stored layer stays (the
    /// sprite went to another host). `keep_writes`: what this host wrote goes to the
    /// store first (a move); else it is dropped (another host took the sprite over,
    /// this host's copy is stale and must not overwrite the new owner's).
    async fn forget(&self, sprite_id: &str, keep_writes: bool) -> Result<(), CoreError> {
        let _ = keep_writes;
        self.release(sprite_id).await
    }
    /// Makes a new sprite's layer from a version of another's (metadata only).
    async fn create_from(
        &self,
        _sprite_id: &str,
        _source_id: &str,
        _version: &str,
    ) -> Result<(), CoreError> {
        Err(unsupported("forks"))
    }
    /// Records the layer as version `name`; the filesystem is frozen meanwhile if mounted.
    async fn checkpoint(
        &self,
        _sprite_id: &str,
        _name: &str,
        _comment: Option<&str>,
    ) -> Result<(), CoreError> {
        Err(unsupported("checkpoints"))
    }
    /// Versions of the layer, oldest first.
    async fn versions(&self, _sprite_id: &str) -> Result<Vec<VersionRecord>, CoreError> {
        Ok(Vec::new())
    }
    /// Versions with their history, and the history of the current state (nearest
    /// first).
    async fn lineage(
        &self,
        sprite_id: &str,
    ) -> Result<(Vec<VersionRecord>, Vec<String>), CoreError> {
        Ok((self.versions(sprite_id).await?, Vec::new()))
    }
    /// Points the layer at version `name` (the sprite must be stopped and released).
    async fn restore(&self, _sprite_id: &str, _name: &str) -> Result<(), CoreError> {
        Err(unsupported("restores"))
    }
    async fn delete_version(&self, _sprite_id: &str, _name: &str) -> Result<(), CoreError> {
        Err(unsupported("checkpoints"))
    }
    /// The root of `image` if the store already has it as a volume (mounted read-only
    /// once per host); None: build the image (then [`Self::import_image`]).
    async fn mount_image(&self, _image: &str) -> Result<Option<PathBuf>, CoreError> {
        Ok(None)
    }
    /// Unmounts and deletes image volume `image` if there is one (an image's own layer,
    /// replaced by a new pull).
    async fn discard_image(&self, _image: &str) -> Result<(), CoreError> {
        Ok(())
    }
    /// Stores a built image directory as a read-only volume and returns its mounted
    /// root; None: the directory itself is the root.
    async fn import_image(
        &self,
        _image: &str,
        _rootfs: &Path,
    ) -> Result<Option<PathBuf>, CoreError> {
        Ok(None)
    }
    /// Where the sprite's own disk is mounted on the host while it runs (None: its layer
    /// is no disk of its own; the space guard passes it by).
    fn disk_mount(&self, _sprite_id: &str) -> Option<PathBuf> {
        None
    }
    /// Brings the read-only checkpoint views of a running sprite up to date (the newest
    /// [`VIEWS_KEPT`] versions at `/.sprite/checkpoints/<id>/`); no-op if it is stopped.
    async fn refresh_views(&self, _sprite_id: &str) -> Result<(), CoreError> {
        Ok(())
    }
}

/// Checkpoints readable inside a sprite at `/.sprite/checkpoints/<id>/`.
pub const VIEWS_KEPT: usize = 5;

fn unsupported(what: &'static str) -> CoreError {
    CoreError::NeedsSpriteFs(what)
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
}

fn remove_tree(dir: &Path) -> Result<(), CoreError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io("remove", dir)(e)),
    }
}

#[async_trait::async_trait]
impl RootStore for LocalOverlayStore {
    async fn create(&self, sprite_id: &str, _size: u64) -> Result<(), CoreError> {
        for sub in ["upper", "work"] {
            let path = self.dir.join(sprite_id).join(sub);
            fs::create_dir_all(&path).map_err(CoreError::io("create", &path))?;
        }
        Ok(())
    }

    async fn prepare(
        &self,
        sprite_id: &str,
        image: &[PathBuf],
        _id_base: u32,
        _durability: Durability,
    ) -> Result<RootLayers, CoreError> {
        let dir = self.dir.join(sprite_id);
        Ok(RootLayers {
            lower: image.to_vec(),
            home: own_home(&dir, image).await?,
            disk: dir,
            views: None,
        })
    }

    async fn release(&self, _sprite_id: &str) -> Result<(), CoreError> {
        Ok(())
    }

    async fn remove(&self, sprite_id: &str) -> Result<(), CoreError> {
        remove_tree(&self.dir.join(sprite_id))
    }
}

/// The sprite's `/home`: a directory on its own disk beside the overlay's `upper`, bound
/// at `/home` so that work there skips the overlay. Made on first need as a copy of the
/// image's `/home` (of its topmost layer that has one). `false` keeps `/home` in the
/// overlay: for a disk whose `upper` already has a `home` (made before this layout) and
/// for an image without `/home`.
async fn own_home(disk: &Path, image: &[PathBuf]) -> Result<bool, CoreError> {
    let home = disk.join("home");
    if home.is_dir() {
        return Ok(true);
    }
    let image_home = image
        .iter()
        .map(|layer| layer.join("home"))
        .find(|home| fs::symlink_metadata(home).is_ok())
        .unwrap_or_else(|| PathBuf::from("/nonexistent/home"));
    let image_has_home = fs::symlink_metadata(&image_home).is_ok_and(|m| m.is_dir());
    if !image_has_home || fs::symlink_metadata(disk.join("upper/home")).is_ok() {
        return Ok(false);
    }
    // Copied aside, then renamed: a crash leaves either no home (copied again) or all of it.
    let partial = disk.join(".home.partial");
    remove_tree(&partial)?;
    let (from, to) = (image_home.clone(), partial.clone());
    host("copy the image's home into", &partial, move || {
        copy_tree(&from, &to)
    })
    .await?;
    fs::rename(&partial, &home).map_err(CoreError::io("rename", &partial))?;
    Ok(true)
}

/// Copies the tree at `from` to `to` as `cp -a` does (modes, owners, times, symlinks),
/// in process. For an image's home: a few files.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_tree_within(from, to, MAX_HOME_DEPTH)
}

/// How deep an image's home may nest: an imported image is the user's, and a copy that
/// recursed without end would take the daemon's stack with it.
const MAX_HOME_DEPTH: usize = 64;

fn copy_tree_within(from: &Path, to: &Path, depth: usize) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if depth == 0 {
        return Err(std::io::Error::other(format!(
            "{} nests more than {MAX_HOME_DEPTH} directories deep",
            from.display()
        )));
    }
    let meta = fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if kind.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree_within(&entry.path(), &to.join(entry.file_name()), depth - 1)?;
        }
    } else if kind.is_file() {
        fs::copy(from, to)?;
    } else {
        // Devices, fifos and sockets have no place in a home: left out.
        return Ok(());
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !kind.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        let times = fs::FileTimes::new()
            .set_accessed(meta.accessed()?)
            .set_modified(meta.modified()?);
        fs::File::open(to)?.set_times(times)?;
    }
    Ok(())
}

/// Storage a sprite's layer uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerUsage {
    pub bytes_stored: u64,
    pub chunks: u64,
    pub bytes_cached_on_host: u64,
    pub checkpoints: Vec<(String, u64)>,
    /// While its disk is attached: when its fsyncs return, and how far the store
    /// trails it (bytes, milliseconds).
    pub attached: Option<(Durability, u64, u64)>,
}

/// Name of the pre-formatted volume every sprite's volume is forked from.
const TEMPLATE: &str = "template-ext4";

/// The template of volumes of `size` bytes: `template-ext4` for the default size,
/// `template-ext4-<GiB>g` for others.
fn template_name(size: u64, default_size: u64) -> String {
    if size == default_size {
        TEMPLATE.to_string()
    } else {
        format!("{TEMPLATE}-{}g", size >> 30)
    }
}
const TEMPLATE_VERSION: &str = "formatted";
/// The sealed version of an image volume (`image-<name>`).
const IMAGE_VERSION: &str = "built";

/// The volume of image `image` (a version `dev@2` is `image-dev.2`: `@` in a volume
/// name marks a checkpoint view of the volume before it, and deleting `image-dev`
/// deletes those).
fn image_volume(image: &str) -> String {
    format!("image-{}", image.replace('@', "."))
}

/// Settings of [`SpriteFsStore`].
#[derive(Debug, Clone)]
pub struct SpriteFsSettings {
    pub data_dir: PathBuf,
    pub executable: PathBuf,
    /// Object store URL given to the storage process (None: `<data>/store`).
    pub store_url: Option<String>,
    /// Extra environment of the storage process (S3 settings).
    pub store_env: Vec<(String, String)>,
    /// `--faults` of the storage process (resilience tests), if any.
    pub store_faults: Option<String>,
    pub volume_bytes: u64,
    pub block_bytes: u64,
    /// Host uid/gid that root inside sprites is stored as (owns upper and work).
    pub id_base: u32,
    /// Ids per sprite.
    pub id_count: u32,
    /// Other hosts of a cluster write the same store (the storage process's
    /// `--shared-store`).
    pub shared_store: bool,
}

/// Sprite layers on SpriteFS volumes.
#[derive(Debug)]
pub struct SpriteFsStore {
    settings: SpriteFsSettings,
    client: StorageClient,
    setup: tokio::sync::Mutex<()>,
    /// Serialises mounting and unmounting of checkpoint views.
    views: tokio::sync::Mutex<()>,
    /// Serialises image imports and mounts.
    images: tokio::sync::Mutex<()>,
    /// Serialises starting the storage process: callers that find it down at once (a
    /// daemon's first requests after a restart) start one, not one each.
    starting: tokio::sync::Mutex<()>,
    /// The storage process every mounted layer was last found on (0: none yet). New
    /// mounts are made on the one that runs, so while it answers with this pid the
    /// layers need no new look (`storage_intact` runs every half second).
    intact_on: std::sync::atomic::AtomicU32,
    /// Layers mounted so far (a look at every layer that overlapped one proves nothing).
    mounts: std::sync::atomic::AtomicU64,
    /// Image root and host id range of each prepared sprite (its checkpoint views are
    /// overlays on that image, idmapped onto that range).
    prepared: parking_lot::Mutex<std::collections::HashMap<String, (Vec<PathBuf>, u32)>>,
    /// Set by `uninstall`: the storage process is not started again.
    retired: std::sync::atomic::AtomicBool,
}

fn storage_error(
    sprite: &str,
) -> impl FnOnce(sprite_fs::service::StorageClientError) -> CoreError + '_ {
    move |error| CoreError::Storage {
        sprite: sprite.to_string(),
        message: sprite_api::error_chain(&error),
    }
}

async fn run(program: &str, args: &[&str]) -> Result<String, CoreError> {
    run_in(None, program, args).await
}

/// [`run`] in the directory `dir`.
async fn run_in(dir: Option<&Path>, program: &str, args: &[&str]) -> Result<String, CoreError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = tokio::process::Command::new(sprite_sys::tools::find(program));
    child.args(args);
    if let Some(dir) = dir {
        child.current_dir(dir);
    }
    let output = child.output().await.map_err(|e| CoreError::Command {
        command: command.clone(),
        message: e.to_string(),
    })?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(CoreError::Command { command, message });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Runs a blocking host operation (a system call that may wait on a disk) off the
/// async threads; `what` and `path` name it in the error.
async fn host<T: Send + 'static>(
    what: &'static str,
    path: &Path,
    operation: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(operation)
        .await
        .map_err(|e| CoreError::Task(what, e))?
        .map_err(CoreError::io(what, path))
}

/// Mount flags of every sprite disk: no setuid binaries, device nodes or programs run
/// from it on the host side.
const DISK_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The ext4 options of sprite disks: no inode-table zeroing, and no block-bitmap
/// prefetch where the kernel has the option (5.9 and later).
fn disk_mount_options() -> &'static str {
    static OPTIONS: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if kernel_at_least(&release, 5, 9) {
            "noinit_itable,no_prefetch_block_bitmaps"
        } else {
            "noinit_itable"
        }
    })
}

/// Whether a kernel release string (`6.1.0-28-amd64`) is `major.minor` or later.
fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Loops `file` (direct I/O: no second page cache under ext4's) and mounts its ext4 at
/// `target` with `flags` and `data`. The loop device clears itself when the mount goes,
/// or at once if the mount fails.
async fn loop_mount(
    file: &Path,
    target: &Path,
    flags: MsFlags,
    data: &'static str,
) -> Result<(), CoreError> {
    fs::create_dir_all(target).map_err(CoreError::io("create", target))?;
    let (file, to) = (file.to_path_buf(), target.to_path_buf());
    let read_only = flags.contains(MsFlags::MS_RDONLY);
    host("mount", target, move || {
        let options = loopdev::LoopOptions {
            read_only,
            direct_io: true,
        };
        let device = loopdev::attach(&file, options)?;
        // The kernel shows a mount's source as it was given, to the sprite too (its /home
        // and checkpoint views are this mount, bound in): not the host's device name but
        // `spritefs`.
        mount::mount_device(device.path(), &to, "ext4", flags, data, Some(DEVICE_NAME))
    })
    .await
}

/// Unmounts `target` if it is mounted; `lazy` lets it go once no process uses it. A
/// loop device under it is remembered for the next disk's mount (see
/// `loopdev::released`).
async fn unmount(target: &Path, lazy: bool) -> Result<(), CoreError> {
    let to = target.to_path_buf();
    host("unmount", target, move || {
        if !mount::is_mount_point(&to) {
            return Ok(());
        }
        let looped = loopdev::index_of_mount(&to);
        mount::unmount(&to, lazy)?;
        if let Some(index) = looped {
            loopdev::released(index);
        }
        Ok(())
    })
    .await
}

/// What a sprite disk's mount names as its source.
const DEVICE_NAME: &str = "spritefs";

/// Detaches every loop device whose backing file `matches` (read from sysfs) and
/// answers which (device, backing file). Only for cleaning up after a storage process
/// died or a full stop: devices clear themselves otherwise.
async fn detach_loops(matches: impl Fn(&str) -> bool + Send + 'static) -> Vec<(PathBuf, String)> {
    tokio::task::spawn_blocking(move || {
        loopdev::list()
            .into_iter()
            .filter(|(device, back)| matches(back) && loopdev::detach(device).is_ok())
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// The storage process pid recorded in a `mounted-by` file.
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The error for an answer of the storage process that does not fit the request.
fn unexpected(sprite: &str, answer: StorageResponse) -> CoreError {
    CoreError::Storage {
        sprite: sprite.into(),
        message: format!("unexpected answer {answer:?}"),
    }
}

/// Whether `path` is a mount point (one statx, not a read of the mount table).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    mount::is_mount_point(path)
}

impl SpriteFsStore {
    /// The volume's versions; with `history`, each one's and the head's history too.
    async fn list_versions(
        &self,
        sprite_id: &str,
        history: bool,
    ) -> Result<(Vec<VersionRecord>, Vec<String>), CoreError> {
        let request = StorageRequest::Versions {
            volume: sprite_id.into(),
            history,
        };
        match self.request(sprite_id, request).await? {
            StorageResponse::Versions { versions, current } => Ok((versions, current)),
            other => Err(unexpected(sprite_id, other)),
        }
    }

    pub fn new(settings: SpriteFsSettings) -> Self {
        let socket = settings.data_dir.join("fs").join("storage.sock");
        SpriteFsStore {
            client: StorageClient::new(&socket),
            settings,
            setup: tokio::sync::Mutex::new(()),
            views: tokio::sync::Mutex::new(()),
            images: tokio::sync::Mutex::new(()),
            starting: tokio::sync::Mutex::new(()),
            intact_on: Default::default(),
            mounts: Default::default(),
            prepared: Default::default(),
            retired: Default::default(),
        }
    }

    /// Sends a request to the storage process, starting it first if it does not answer.
    async fn request(
        &self,
        sprite: &str,
        request: StorageRequest,
    ) -> Result<StorageResponse, CoreError> {
        match self.client.request(&request).await {
            Err(StorageClientError::Connect(..)) => {
                self.ensure_service().await?;
                self.client
                    .request(&request)
                    .await
                    .map_err(storage_error(sprite))
            }
            other => other.map_err(storage_error(sprite)),
        }
    }

    /// Starts the storage process unless it answers already. It is not a child that
    /// dies with the daemon: it keeps serving running sprites across daemon restarts.
    /// Returns the storage process's pid.
    pub async fn ensure_service(&self) -> Result<u32, CoreError> {
        if let Some(pid) = self.storage_pid().await {
            return Ok(pid);
        }
        let _one = self.starting.lock().await;
        // Started by the caller this one waited for: a second process would take the
        // FUSE mount from under the first one's volumes (a file attached a moment ago
        // gone, ENOENT).
        if let Some(pid) = self.storage_pid().await {
            return Ok(pid);
        }
        if self.retired.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CoreError::Stopping);
        }
        let log_path = self.settings.data_dir.join("storage.log");
        if let Err(error) =
            sprite_sys::tools::rotate_log(&log_path, sprite_sys::tools::MAX_LOG_BYTES)
        {
            tracing::warn!("could not rotate {}: {error}", log_path.display());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(CoreError::io("open", &log_path))?;
        let log_err = log.try_clone().map_err(CoreError::io("open", &log_path))?;
        let mut command = std::process::Command::new(&self.settings.executable);
        command
            .arg("storage")
            .arg("--data-dir")
            .arg(&self.settings.data_dir);
        if let Some(url) = &self.settings.store_url {
            command.arg("--store").arg(url);
        }
        if let Some(faults) = &self.settings.store_faults {
            command.arg("--faults").arg(faults);
        }
        if self.settings.shared_store {
            command.arg("--shared-store");
        }
        command.envs(self.settings.store_env.iter().map(|(k, v)| (k, v)));
        use std::os::unix::process::CommandExt;
        command
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .map_err(|e| CoreError::Storage {
                sprite: String::new(),
                message: format!("start the storage process: {e}"),
            })?;
        // Reap it if it dies while this daemon runs (it is not killed with the daemon).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        for _ in 0..200 {
            if let Some(pid) = self.storage_pid().await {
                tracing::info!(pid, "storage process started");
                return Ok(pid);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(CoreError::Storage {
            sprite: String::new(),
            message: format!(
                "the storage process did not start; see {}",
                log_path.display()
            ),
        })
    }

    /// Pid of the running storage process, if it answers.
    async fn storage_pid(&self) -> Option<u32> {
        match self.client.request(&StorageRequest::Ping).await {
            Ok(StorageResponse::Pong { pid, .. }) => Some(pid),
            _ => None,
        }
    }

    /// The storage process a sprite's layer was mounted on, if it is mounted.
    fn mounted_by(&self, sprite_id: &str) -> Option<u32> {
        read_pid(&self.mounted_by_path(sprite_id))
    }

    fn mounted_by_path(&self, sprite_id: &str) -> PathBuf {
        self.layer_dir(sprite_id).join("mounted-by")
    }

    /// Detaches whatever is left of a volume's mount after its storage process died:
    /// the ext4 mount (lazily) and the loop devices over the old FUSE file.
    async fn clear_stale(&self, volume: &str, target: &Path) {
        let _ = unmount(target, true).await;
        // Once its FUSE mount is gone, a loop device shows its backing file relative to
        // the lost mount (`/<volume>`); volume names are unique, so the name identifies it.
        let lost = format!("/{volume}");
        let live = self.settings.data_dir.join("fs").join("mnt").join(volume);
        let live = live.to_string_lossy().into_owned();
        detach_loops(move |back| back == lost || back == live).await;
    }

    fn mount_dir(&self, sprite_id: &str) -> PathBuf {
        self.layer_dir(sprite_id).join("mnt")
    }

    /// Makes a volume's file appear in the storage process's FUSE directory.
    async fn attach(&self, volume: &str, durability: Durability) -> Result<PathBuf, CoreError> {
        match self
            .request(
                volume,
                StorageRequest::Attach {
                    volume: volume.into(),
                    durability,
                },
            )
            .await?
        {
            StorageResponse::Path { path } => Ok(path),
            other => Err(unexpected(volume, other)),
        }
    }

    /// Attaches a volume, loops it and mounts its ext4 at `target`.
    async fn mount_volume(
        &self,
        volume: &str,
        target: &Path,
        durability: Durability,
    ) -> Result<(), CoreError> {
        let path = self.attach(volume, durability).await?;
        // Delayed allocation (ext4's default) is kept: blocks are allocated in whole
        // extents at writeback instead of page by page in every write()
        // (`./bench/proxy.sh` measures a 1 GiB upload into a sprite; docs/STATUS.md has
        // the runs before and after `nodelalloc` was dropped).
        // No work for ext4's lazy-init thread (inode table zeroing, block bitmap
        // prefetch): that one kernel thread serves every ext4 of the machine, and a
        // volume whose storage stalls would hold up every later mount behind it.
        loop_mount(&path, target, DISK_FLAGS, disk_mount_options()).await
    }

    /// Unmounts `target` (its loop device clears itself) and detaches the volume.
    async fn unmount_volume(&self, volume: &str, target: &Path) -> Result<(), CoreError> {
        let mut attempts = 0;
        while let Err(error) = unmount(target, false).await {
            attempts += 1;
            if attempts > 50 {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.request(
            volume,
            StorageRequest::Detach {
                volume: volume.into(),
                discard: false,
            },
        )
        .await?;
        Ok(())
    }

    fn layer_dir(&self, sprite_id: &str) -> PathBuf {
        self.settings.data_dir.join("layers").join(sprite_id)
    }

    /// The shared tmpfs under which checkpoint views are mounted (bound into the
    /// sprite); `disks` holds the ext4 mounts of the versions.
    fn views_dirs(&self, sprite_id: &str) -> (PathBuf, PathBuf) {
        let dir = self.layer_dir(sprite_id);
        (dir.join("views"), dir.join("view-disks"))
    }

    /// Mounts the views directory (an empty tmpfs, shared, so the sprite's slave bind
    /// of it receives every view mounted later).
    async fn ensure_views_dir(&self, sprite_id: &str) -> Result<PathBuf, CoreError> {
        let (views, _) = self.views_dirs(sprite_id);
        if !is_mount_point(&views) {
            fs::create_dir_all(&views).map_err(CoreError::io("create", &views))?;
            let target = views.clone();
            host("mount", &views, move || {
                mount::mount_tmpfs(&target, "sprite-views", DISK_FLAGS, "mode=755,size=1m")?;
                mount::make_shared(&target)
            })
            .await?;
        }
        Ok(views)
    }

    /// Mounts version `name` read-only at `views/<name>`: an overlay of the version's
    /// upper directory over the image, so it reads as the sprite's whole root did, with
    /// the ids of the sprite's own range (`id_base`).
    async fn mount_view(
        &self,
        sprite_id: &str,
        name: &str,
        image: &[PathBuf],
        id_base: u32,
    ) -> Result<(), CoreError> {
        let (views, disks) = self.views_dirs(sprite_id);
        let request = StorageRequest::AttachVersion {
            volume: sprite_id.into(),
            version: name.into(),
        };
        let file = match self.request(sprite_id, request).await? {
            StorageResponse::Path { path } => path,
            other => return Err(unexpected(sprite_id, other)),
        };
        let disk = disks.join(name);
        loop_mount(&file, &disk, DISK_FLAGS | MsFlags::MS_RDONLY, "noload").await?;
        let target = views.join(name);
        let (storage_ids, id_count) = (self.settings.id_base, self.settings.id_count);
        let image = image.to_vec();
        let sprite = sprite_id.to_string();
        tokio::task::spawn_blocking(move || {
            let idmap = sprite_sandbox::mounts::storage_idmap(storage_ids, id_base, id_count)?;
            sprite_sandbox::mounts::mount_view(
                &disk,
                &image,
                &target,
                idmap.as_ref().map(|fd| std::os::fd::AsFd::as_fd(fd)),
            )
        })
        .await
        .map_err(|e| CoreError::Task("checkpoint view mount", e))?
        .map_err(|source| CoreError::Sandbox { sprite, source })
    }

    /// Unmounts one view (lazily: a process inside may still be in it).
    async fn unmount_view(&self, sprite_id: &str, name: &str) {
        let (views, disks) = self.views_dirs(sprite_id);
        for dir in [views.join(name), disks.join(name)] {
            let _ = unmount(&dir, true).await;
            let _ = fs::remove_dir(&dir);
        }
        let request = StorageRequest::DetachVersion {
            volume: sprite_id.into(),
            version: name.into(),
        };
        // Not `self.request`: a release after the storage process died must not start one.
        if let Err(error) = self.client.request(&request).await {
            tracing::debug!(
                sprite = sprite_id,
                view = name,
                "detach view: {}",
                sprite_api::error_chain(&error)
            );
        }
    }

    /// Unmounts every view of a sprite and the views directory itself.
    async fn unmount_views(&self, sprite_id: &str) {
        let (views, disks) = self.views_dirs(sprite_id);
        let mut names: Vec<String> = Vec::new();
        for dir in [&views, &disks] {
            if let Ok(entries) = fs::read_dir(dir) {
                names.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        names.sort();
        names.dedup();
        for name in names {
            self.unmount_view(sprite_id, &name).await;
        }
        let _ = unmount(&views, true).await;
    }

    async fn exists(&self, volume: &str, version: Option<&str>) -> Result<bool, CoreError> {
        let request = StorageRequest::Exists {
            volume: volume.into(),
            version: version.map(str::to_string),
        };
        match self.request(volume, request).await? {
            StorageResponse::Exists { exists } => Ok(exists),
            other => Err(unexpected(volume, other)),
        }
    }

    /// Deletes what an interrupted setup (template format, image import) left of
    /// `volume`, unsealed, so it can start over.
    async fn start_over(&self, volume: &str) -> Result<(), CoreError> {
        if self.exists(volume, None).await? {
            let delete = StorageRequest::Delete {
                volume: volume.into(),
            };
            self.request(volume, delete).await?;
        }
        Ok(())
    }

    /// Where an image volume is mounted (read-only, once per host).
    fn image_mount(&self, image: &str) -> PathBuf {
        self.settings.data_dir.join("image-volumes").join(image)
    }

    /// Mounts an image volume read-only unless it is mounted on the storage process that
    /// runs now (after a storage crash the old mount is debris).
    /// The image's mount point if it is mounted on the storage process that runs now.
    async fn current_image_mount(&self, image: &str) -> Option<PathBuf> {
        let target = self.image_mount(image);
        let mounted_by = read_pid(&target.with_extension("mounted-by"))?;
        (is_mount_point(&target) && Some(mounted_by) == self.storage_pid().await).then_some(target)
    }

    async fn mount_image_volume(&self, image: &str) -> Result<PathBuf, CoreError> {
        if let Some(root) = self.current_image_mount(image).await {
            return Ok(root);
        }
        let volume = image_volume(image);
        let target = self.image_mount(image);
        let mounted_by = target.with_extension("mounted-by");
        let pid = self.ensure_service().await?;
        self.clear_stale(&volume, &target).await;
        let parent = self.settings.data_dir.join("image-volumes");
        fs::create_dir_all(&target).map_err(CoreError::io("create", &target))?;
        // Root's alone: sprites get their image as a detached mount from the launcher.
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o700))
            .map_err(CoreError::io("chmod", &parent))?;
        let file = self.attach(&volume, Durability::Local).await?;
        loop_mount(&file, &target, DISK_FLAGS | MsFlags::MS_RDONLY, "").await?;
        fs::write(&mounted_by, pid.to_string()).map_err(CoreError::io("write", &mounted_by))?;
        tracing::info!(image, root = %target.display(), "image volume mounted");
        Ok(target)
    }

    /// Makes the pre-formatted template of `size` bytes that sprite volumes of that
    /// size are forked from (one per size, formatted on first need); returns its name.
    async fn ensure_template(&self, size: u64) -> Result<String, CoreError> {
        let _one = self.setup.lock().await;
        let template = template_name(size, self.settings.volume_bytes);
        let template = template.as_str();
        if self.exists(template, Some(TEMPLATE_VERSION)).await? {
            return Ok(template.to_string());
        }
        self.start_over(template).await?;
        tracing::info!("formatting the sprite volume template");
        let create = StorageRequest::Create {
            volume: template.into(),
            size,
            block_size: self.settings.block_bytes,
            from: None,
        };
        self.request(template, create).await?;
        let path = self.attach(template, Durability::Local).await?;
        let file = path.clone();
        let device = host("loop", &path, move || {
            loopdev::attach(&file, loopdev::LoopOptions::default())
        })
        .await?;
        let formatted = run(
            "mkfs.ext4",
            &[
                "-q",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                &device.path().to_string_lossy(),
            ],
        )
        .await;
        // Closing the device clears it.
        drop(device);
        formatted?;
        let target = self
            .settings
            .data_dir
            .join("layers")
            .join(format!(".{template}"));
        self.mount_volume(template, &target, Durability::Local)
            .await?;
        let prepared = (|| {
            for sub in ["upper", "work"] {
                let dir = target.join(sub);
                fs::create_dir_all(&dir).map_err(CoreError::io("create", &dir))?;
                std::os::unix::fs::chown(
                    &dir,
                    Some(self.settings.id_base),
                    Some(self.settings.id_base),
                )
                .map_err(CoreError::io("chown", &dir))?;
            }
            Ok::<(), CoreError>(())
        })();
        self.unmount_volume(template, &target).await?;
        prepared?;
        let checkpoint = StorageRequest::Checkpoint {
            volume: template.into(),
            name: TEMPLATE_VERSION.into(),
            comment: None,
        };
        self.request(template, checkpoint).await?;
        Ok(template.to_string())
    }
}

#[async_trait::async_trait]
impl RootStore for SpriteFsStore {
    async fn create(&self, sprite_id: &str, size: u64) -> Result<(), CoreError> {
        let template = self.ensure_template(size).await?;
        let request = StorageRequest::Create {
            volume: sprite_id.into(),
            size,
            block_size: self.settings.block_bytes,
            from: Some((template, TEMPLATE_VERSION.into())),
        };
        self.request(sprite_id, request).await?;
        Ok(())
    }

    async fn prepare(
        &self,
        sprite_id: &str,
        image: &[PathBuf],
        id_base: u32,
        durability: Durability,
    ) -> Result<RootLayers, CoreError> {
        let target = self.mount_dir(sprite_id);
        let pid = self.ensure_service().await?;
        let healthy = is_mount_point(&target) && self.mounted_by(sprite_id) == Some(pid);
        if !healthy {
            // Debris only where a mount was recorded (released mounts remove their
            // record, and their loop devices clear themselves): a new or cleanly stopped
            // sprite costs no look at every loop device.
            if self.mounted_by(sprite_id).is_some() || is_mount_point(&target) {
                self.clear_stale(sprite_id, &target).await;
            }
            self.mount_volume(sprite_id, &target, durability).await?;
            // A reserve of the space guard does not outlive a mount (a crash, a restore
            // or a fork from a checkpoint taken while it was there).
            crate::space::release(&target)
                .map_err(CoreError::io("remove the reserve of", &target))?;
            let path = self.mounted_by_path(sprite_id);
            fs::write(&path, pid.to_string()).map_err(CoreError::io("write", &path))?;
            // If the storage process was replaced since `pid` answered, the
            // supervisor's next look must read every layer again and find this one.
            use std::sync::atomic::Ordering;
            self.mounts.fetch_add(1, Ordering::SeqCst);
            if self.intact_on.load(Ordering::SeqCst) != pid {
                self.intact_on.store(0, Ordering::SeqCst);
            }
        }
        let views = {
            let _views = self.views.lock().await;
            if !healthy {
                self.unmount_views(sprite_id).await;
            }
            self.ensure_views_dir(sprite_id).await?
        };
        self.prepared
            .lock()
            .insert(sprite_id.to_string(), (image.to_vec(), id_base));
        Ok(RootLayers {
            lower: image.to_vec(),
            home: own_home(&target, image).await?,
            disk: target,
            views: Some(views),
        })
    }

    async fn recover_storage(&self) -> Result<(), CoreError> {
        self.ensure_service().await.map(|_| ())
    }

    fn disk_mount(&self, sprite_id: &str) -> Option<PathBuf> {
        let target = self.mount_dir(sprite_id);
        is_mount_point(&target).then_some(target)
    }

    async fn save_record(&self, key: &str, value: &serde_json::Value) -> Result<(), CoreError> {
        self.request(
            key,
            StorageRequest::PutRecord {
                key: key.into(),
                value: value.clone(),
            },
        )
        .await
        .map(|_| ())
    }

    async fn delete_record(&self, key: &str) -> Result<(), CoreError> {
        self.request(key, StorageRequest::DeleteRecord { key: key.into() })
            .await
            .map(|_| ())
    }

    async fn load_records(&self, prefix: &str) -> Result<Vec<serde_json::Value>, CoreError> {
        match self
            .request(
                prefix,
                StorageRequest::ListRecords {
                    prefix: prefix.into(),
                },
            )
            .await?
        {
            StorageResponse::Records { values } => Ok(values),
            other => Err(unexpected("", other)),
        }
    }

    async fn load_record(&self, key: &str) -> Result<Option<serde_json::Value>, CoreError> {
        match self
            .request(key, StorageRequest::GetRecord { key: key.into() })
            .await?
        {
            StorageResponse::Records { values } => Ok(values.into_iter().next()),
            other => Err(unexpected("", other)),
        }
    }

    async fn usage(&self, sprite_id: &str) -> Result<Option<LayerUsage>, CoreError> {
        match self
            .request(
                sprite_id,
                StorageRequest::Usage {
                    volume: sprite_id.into(),
                },
            )
            .await?
        {
            StorageResponse::Usage {
                usage,
                cached_bytes,
                attached,
            } => Ok(Some(LayerUsage {
                attached: attached.map(|(durability, lag)| (durability, lag.bytes, lag.ms)),
                bytes_stored: usage.bytes_stored,
                chunks: usage.chunks,
                bytes_cached_on_host: cached_bytes,
                checkpoints: usage.versions,
            })),
            other => Err(unexpected(sprite_id, other)),
        }
    }

    async fn uninstall(&self) -> Result<Vec<String>, CoreError> {
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut removed = Vec::new();
        let data = self.settings.data_dir.clone();
        let fuse = data.join("fs").join("mnt");
        // Image volumes, views and anything else mounted under the data directory,
        // deepest first; the FUSE mount last, once its files are released.
        let mut points: Vec<PathBuf> = mount::mount_points()
            .unwrap_or_default()
            .into_iter()
            .filter(|point| point.starts_with(&data) && *point != fuse)
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in points {
            if unmount(&point, true).await.is_ok() {
                removed.push(format!("mount {}", point.display()));
            }
        }
        let under = fuse.to_string_lossy().into_owned();
        for (device, back) in detach_loops(move |back| back.starts_with(&under)).await {
            removed.push(format!("loop device {} ({back})", device.display()));
        }
        if let Some(pid) = self.storage_pid().await {
            let target = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..200 {
                if self.storage_pid().await.is_none()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
            }
            removed.push(format!("storage process {pid}"));
        }
        // A storage process that exited on a signal can leave its FUSE mount behind
        // (dead: a stat of it fails), so the mount table says, not a stat.
        if mount::mount_points().unwrap_or_default().contains(&fuse) {
            let target = fuse.clone();
            let detached = tokio::task::spawn_blocking(move || mount::unmount(&target, true))
                .await
                .is_ok_and(|r| r.is_ok());
            if detached {
                removed.push(format!("mount {}", fuse.display()));
            }
        }
        Ok(removed)
    }

    async fn storage_stats(&self) -> Result<Option<sprite_fs::service::StorageStats>, CoreError> {
        // Asked as is: a scrape or a status must report a storage process that is
        // down, not start one (the supervisor does that).
        let answer = self
            .client
            .request(&StorageRequest::Stats)
            .await
            .map_err(storage_error(""))?;
        match answer {
            StorageResponse::Stats { stats } => Ok(Some(stats)),
            other => Err(CoreError::Storage {
                sprite: String::new(),
                message: format!("unexpected answer to stats: {other:?}"),
            }),
        }
    }

    async fn collect_garbage(&self) -> Result<Option<(usize, usize, u64)>, CoreError> {
        match self.request("", StorageRequest::Gc).await? {
            StorageResponse::Collected {
                layers,
                chunks,
                bytes,
            } => Ok(Some((layers, chunks, bytes))),
            other => Err(unexpected("", other)),
        }
    }

    async fn storage_intact(&self) -> bool {
        use std::sync::atomic::Ordering;
        let Some(current) = self.storage_pid().await else {
            return false;
        };
        if self.intact_on.load(Ordering::SeqCst) == current {
            return true;
        }
        let mounts = self.mounts.load(Ordering::SeqCst);
        // A storage process not seen before: every mounted layer must be on it (one
        // read per sprite, once per storage process, not every half second).
        let layers = self.settings.data_dir.join("layers");
        let intact = match fs::read_dir(&layers) {
            Err(_) => true,
            Ok(entries) => entries.flatten().all(|entry| {
                let sprite = entry.file_name().to_string_lossy().into_owned();
                self.mounted_by(&sprite).is_none_or(|pid| pid == current)
            }),
        };
        if intact && self.mounts.load(Ordering::SeqCst) == mounts {
            self.intact_on.store(current, Ordering::SeqCst);
        }
        intact
    }

    async fn release(&self, sprite_id: &str) -> Result<(), CoreError> {
        {
            let _views = self.views.lock().await;
            self.unmount_views(sprite_id).await;
        }
        let target = self.mount_dir(sprite_id);
        let mounted_by = self.mounted_by(sprite_id);
        if mounted_by.is_some() && mounted_by != self.storage_pid().await {
            // Mounted on a storage process that is gone: nothing to flush, only debris.
            self.clear_stale(sprite_id, &target).await;
            let _ = fs::remove_file(self.mounted_by_path(sprite_id));
            return Ok(());
        }
        self.unmount_volume(sprite_id, &target).await?;
        let _ = fs::remove_file(self.mounted_by_path(sprite_id));
        Ok(())
    }

    async fn import(&self, sprite_id: &str, epoch: u64) -> Result<bool, CoreError> {
        match self
            .request(
                sprite_id,
                StorageRequest::Import {
                    volume: sprite_id.into(),
                    epoch: Some(epoch),
                },
            )
            .await?
        {
            StorageResponse::Exists { exists } => Ok(exists),
            other => Err(unexpected(sprite_id, other)),
        }
    }

    async fn forget(&self, sprite_id: &str, keep_writes: bool) -> Result<(), CoreError> {
        if keep_writes {
            self.release(sprite_id).await?;
        } else {
            {
                let _views = self.views.lock().await;
                self.unmount_views(sprite_id).await;
            }
            let target = self.mount_dir(sprite_id);
            if is_mount_point(&target) {
                unmount(&target, true).await?;
            }
            self.request(
                sprite_id,
                StorageRequest::Detach {
                    volume: sprite_id.into(),
                    discard: true,
                },
            )
            .await?;
            let _ = fs::remove_file(self.mounted_by_path(sprite_id));
        }
        remove_tree(&self.settings.data_dir.join("layers").join(sprite_id))
    }

    async fn remove(&self, sprite_id: &str) -> Result<(), CoreError> {
        self.release(sprite_id).await?;
        self.request(
            sprite_id,
            StorageRequest::Delete {
                volume: sprite_id.into(),
            },
        )
        .await?;
        remove_tree(&self.settings.data_dir.join("layers").join(sprite_id))
    }

    async fn create_from(
        &self,
        sprite_id: &str,
        source_id: &str,
        version: &str,
    ) -> Result<(), CoreError> {
        let request = StorageRequest::Create {
            volume: sprite_id.into(),
            size: self.settings.volume_bytes,
            block_size: self.settings.block_bytes,
            from: Some((source_id.into(), version.into())),
        };
        self.request(sprite_id, request).await?;
        Ok(())
    }

    async fn checkpoint(
        &self,
        sprite_id: &str,
        name: &str,
        comment: Option<&str>,
    ) -> Result<(), CoreError> {
        let target = self.mount_dir(sprite_id);
        let frozen = is_mount_point(&target);
        let started = std::time::Instant::now();
        if frozen {
            sprite_sandbox::sys::freeze_filesystem(&target)
                .map_err(CoreError::io("freeze", &target))?;
        }
        let freeze = started.elapsed();
        let request = StorageRequest::Checkpoint {
            volume: sprite_id.into(),
            name: name.into(),
            comment: comment.map(str::to_string),
        };
        let result = self.request(sprite_id, request).await;
        let record = started.elapsed().saturating_sub(freeze);
        if frozen {
            sprite_sandbox::sys::thaw_filesystem(&target)
                .map_err(CoreError::io("thaw", &target))?;
        }
        tracing::debug!(sprite = sprite_id, ?freeze, ?record, total = ?started.elapsed(), "checkpoint timing");
        result.map(|_| ())
    }

    async fn versions(&self, sprite_id: &str) -> Result<Vec<VersionRecord>, CoreError> {
        Ok(self.list_versions(sprite_id, false).await?.0)
    }

    async fn lineage(
        &self,
        sprite_id: &str,
    ) -> Result<(Vec<VersionRecord>, Vec<String>), CoreError> {
        self.list_versions(sprite_id, true).await
    }

    async fn restore(&self, sprite_id: &str, name: &str) -> Result<(), CoreError> {
        self.request(
            sprite_id,
            StorageRequest::Restore {
                volume: sprite_id.into(),
                name: name.into(),
            },
        )
        .await?;
        Ok(())
    }

    async fn delete_version(&self, sprite_id: &str, name: &str) -> Result<(), CoreError> {
        self.request(
            sprite_id,
            StorageRequest::DeleteVersion {
                volume: sprite_id.into(),
                name: name.into(),
            },
        )
        .await?;
        Ok(())
    }

    async fn mount_image(&self, image: &str) -> Result<Option<PathBuf>, CoreError> {
        let _one = self.images.lock().await;
        // Every sprite start comes here: an image already mounted on the storage process
        // that runs now needs no question about whether it exists.
        if let Some(root) = self.current_image_mount(image).await {
            return Ok(Some(root));
        }
        if !self
            .exists(&image_volume(image), Some(IMAGE_VERSION))
            .await?
        {
            return Ok(None);
        }
        self.mount_image_volume(image).await.map(Some)
    }

    async fn discard_image(&self, image: &str) -> Result<(), CoreError> {
        let _one = self.images.lock().await;
        let volume = image_volume(image);
        let target = self.image_mount(image);
        if is_mount_point(&target) {
            self.clear_stale(&volume, &target).await;
        }
        self.start_over(&volume).await
    }

    async fn import_image(&self, image: &str, rootfs: &Path) -> Result<Option<PathBuf>, CoreError> {
        let _one = self.images.lock().await;
        let volume = image_volume(image);
        if self.exists(&volume, Some(IMAGE_VERSION)).await? {
            return self.mount_image_volume(image).await.map(Some);
        }
        self.start_over(&volume).await?;
        tracing::info!(image, "storing the image as a volume");
        let used: u64 = run("du", &["-sb", &rootfs.to_string_lossy()])
            .await?
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // Room for ext4's own metadata; a read-only volume never grows.
        let block = self.settings.block_bytes.max(1);
        let size = (used * 2 + (512 << 20)).div_ceil(block) * block;
        let create = StorageRequest::Create {
            volume: volume.clone(),
            size,
            block_size: self.settings.block_bytes,
            from: None,
        };
        self.request(&volume, create).await?;
        // mkfs.ext4 -d writes file by file in small pieces, each of which would be a
        // FUSE round trip and a block read-modify-write: it goes to a sparse local file
        // first, which then enters the volume in whole blocks, holes skipped
        // (bench/storage.sh prints how long the import takes).
        let scratch = self
            .settings
            .data_dir
            .join("fs")
            .join(format!(".image-{image}.ext4"));
        let made = async {
            let file = fs::File::create(&scratch).map_err(CoreError::io("create", &scratch))?;
            file.set_len(size)
                .map_err(CoreError::io("size", &scratch))?;
            drop(file);
            run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-O",
                    "^has_journal",
                    "-E",
                    "nodiscard,lazy_itable_init=1",
                    "-d",
                    &rootfs.to_string_lossy(),
                    &scratch.to_string_lossy(),
                ],
            )
            .await?;
            let target = self.attach(&volume, Durability::Local).await?;
            run(
                "dd",
                &[
                    &format!("if={}", scratch.display()),
                    &format!("of={}", target.display()),
                    &format!("bs={block}"),
                    "conv=sparse,notrunc",
                    "status=none",
                ],
            )
            .await
        }
        .await;
        let _ = fs::remove_file(&scratch);
        made?;
        let detach = StorageRequest::Detach {
            volume: volume.clone(),
            discard: false,
        };
        self.request(&volume, detach).await?;
        let seal = StorageRequest::Checkpoint {
            volume: volume.clone(),
            name: IMAGE_VERSION.into(),
            comment: Some(format!("image {image}")),
        };
        self.request(&volume, seal).await?;
        tracing::info!(image, bytes = used, "image stored as a volume");
        self.mount_image_volume(image).await.map(Some)
    }

    async fn refresh_views(&self, sprite_id: &str) -> Result<(), CoreError> {
        let _views = self.views.lock().await;
        let (views, _) = self.views_dirs(sprite_id);
        let prepared = self.prepared.lock().get(sprite_id).cloned();
        let Some((image, id_base)) = prepared else {
            return Ok(());
        };
        if !is_mount_point(&self.mount_dir(sprite_id)) || !is_mount_point(&views) {
            return Ok(());
        }
        let versions = self.versions(sprite_id).await?;
        let wanted: Vec<&str> = versions
            .iter()
            .rev()
            .take(VIEWS_KEPT)
            .map(|v| v.name.as_str())
            .collect();
        let current: Vec<String> = fs::read_dir(&views)
            .map_err(CoreError::io("list", &views))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for name in &current {
            if !wanted.contains(&name.as_str()) || !is_mount_point(&views.join(name)) {
                self.unmount_view(sprite_id, name).await;
            }
        }
        for name in wanted {
            if !is_mount_point(&views.join(name)) {
                if let Err(error) = self.mount_view(sprite_id, name, &image, id_base).await {
                    self.unmount_view(sprite_id, name).await;
                    return Err(error);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_is_copied_as_cp_a_would() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("dir");
        let from = dir.path().join("home");
        fs::create_dir_all(from.join("sprite/.config")).expect("mkdir");
        fs::write(from.join("sprite/.bashrc"), "PS1=x\n").expect("write");
        fs::set_permissions(
            from.join("sprite/.bashrc"),
            fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        fs::set_permissions(from.join("sprite"), fs::Permissions::from_mode(0o750)).expect("chmod");
        std::os::unix::fs::symlink(".bashrc", from.join("sprite/.rc")).expect("link");
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        fs::File::open(from.join("sprite/.bashrc"))
            .and_then(|f| f.set_times(fs::FileTimes::new().set_modified(old)))
            .expect("times");
        let to = dir.path().join("copy");
        copy_tree(&from, &to).expect("copy");
        let copied = to.join("sprite/.bashrc");
        assert_eq!(fs::read_to_string(&copied).expect("read"), "PS1=x\n");
        let meta = fs::metadata(&copied).expect("meta");
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(meta.modified().expect("mtime"), old);
        assert_eq!(
            meta.uid(),
            fs::metadata(from.join("sprite/.bashrc")).expect("m").uid()
        );
        assert_eq!(
            fs::metadata(to.join("sprite")).expect("m").mode() & 0o7777,
            0o750
        );
        assert!(to.join("sprite/.config").is_dir());
        assert_eq!(
            fs::read_link(to.join("sprite/.rc")).expect("link"),
            Path::new(".bashrc")
        );
        // A home nested deeper than the limit is refused, not recursed into.
        let mut deep = dir.path().join("deep");
        for _ in 0..=MAX_HOME_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).expect("deep");
        let refused = copy_tree(&dir.path().join("deep"), &dir.path().join("deep-copy"));
        assert!(refused
            .expect_err("too deep")
            .to_string()
            .contains("directories deep"));
    }

    #[tokio::test]
    async fn local_layers_live_under_the_sprite_dir() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalOverlayStore::new(dir.path().to_path_buf());
        store.create("s1", 1 << 30).await.expect("create");
        let layers = store
            .prepare(
                "s1",
                &[PathBuf::from("/images/debian/rootfs")],
                1 << 30,
                Durability::Local,
            )
            .await
            .expect("prepare");
        assert!(layers.upper().is_dir() && layers.work().is_dir());
        assert_eq!(layers.lower, vec![PathBuf::from("/images/debian/rootfs")]);
        store.remove("s1").await.expect("remove");
        assert!(!dir.path().join("s1").exists());
        store.remove("s1").await.expect("remove twice");
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(kernel_at_least("6.1.0-28-amd64", 5, 9));
        assert!(kernel_at_least("5.9.0", 5, 9));
        assert!(!kernel_at_least("5.4.0-150-generic", 5, 9));
        assert!(!kernel_at_least("", 5, 9));
    }

    #[test]
    fn templates_are_per_size() {
        assert_eq!(template_name(100 << 30, 100 << 30), "template-ext4");
        assert_eq!(template_name(10 << 30, 100 << 30), "template-ext4-10g");
    }

    #[test]
    fn mount_points_are_recognised() {
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/definitely/not/mounted")));
    }
}
