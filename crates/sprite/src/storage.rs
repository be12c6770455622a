//! `sprite storage` (hidden): the per-host storage process. The daemon starts it when
//! SpriteFS is the storage backend and it outlives daemon restarts, so running sprites
//! never lose their disks. It owns the engine, the FUSE mount and the uploader.

use anyhow::{Context, Result};
use sprite_fs::cache::ChunkCache;
use sprite_fs::engine::Engine;
use sprite_fs::fuse::{VolumeFs, VolumeTable};
use sprite_fs::meta::Meta;
use sprite_fs::service::StorageService;
use sprite_fs::store::{parse_faults, BlobStore, FaultInjecting, ObjectBlobStore, Retrying};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    /// The daemon's data directory; SpriteFS keeps its local state in `<dir>/fs`.
    #[arg(long, env = "SPRITE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Object store: file:///path or s3://bucket/prefix (default: <data-dir>/store).
    #[arg(long)]
    pub store: Option<String>,
    /// Local chunk cache bound, in MiB.
    #[arg(long, default_value_t = 10 * 1024)]
    pub cache_mb: u64,
    /// How often attached volumes are checked for blocks to upload, in milliseconds (a
    /// pass takes blocks written 250 ms ago: the store trails a sprite by under a second).
    #[arg(long, default_value_t = 100)]
    pub upload_interval_ms: u64,
    /// Inject object-store faults (resilience tests): PER_MILLE[,LATENCY_MS].
    #[arg(long, hide = true)]
    pub faults: Option<String>,
    /// Other hosts of a cluster write the same store: no bulk recovery at start
    /// (volumes are imported one by one as they come to this host) and no garbage
    /// collection.
    #[arg(long)]
    pub shared_store: bool,
    /// How long to wait for another storage process of this data directory to exit
    /// before giving up, in milliseconds.
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub lock_wait_ms: u64,
}

/// Paths of the storage process under a data directory.
pub fn socket_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("fs").join("storage.sock")
}

/// Takes the data directory's lock (`flock`, released by the kernel when the process
/// ends, however it ends), waiting up to `wait` for a running storage process to go.
async fn lock_data_dir(
    path: &std::path::Path,
    wait: Duration,
) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // Who holds it, for the message of the next one.
                use std::io::{Seek, Write};
                lock.set_len(0)
                    .and_then(|()| lock.rewind())
                    .and_then(|()| write!(lock, "{}", std::process::id()))
                    .with_context(|| format!("write {}", path.display()))?;
                return Ok(lock);
            }
            Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                if tokio::time::Instant::now() >= deadline {
                    let holder = std::fs::read_to_string(path).unwrap_or_default();
                    anyhow::bail!(
                        "storage process {} still serves this data directory after {} ms \
                         (it holds {}): stop it first, or the daemon that runs it",
                        holder.trim(),
                        wait.as_millis(),
                        path.display()
                    );
                }
                file = back;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((_, errno)) => {
                return Err(std::io::Error::from(errno))
                    .with_context(|| format!("lock {}", path.display()))
            }
        }
    }
}

pub async fn run(args: StorageArgs) -> Result<u8> {
    crate::init_logging();
    // Every sprite's disk dies with this process: the host's OOM killer takes sprites
    // and even the daemon before it.
    crate::daemon::protect_from_oom("storage process", -950);
    let dir = args.data_dir.join("fs");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))?;
    // One storage process a data directory: a second one would take the FUSE mount and
    // the socket from under the first one's attached volumes, and both would upload
    // them. One that starts while another runs waits a while for it to go.
    let _lock = lock_data_dir(
        &dir.join("storage.lock"),
        Duration::from_millis(args.lock_wait_ms),
    )
    .await?;
    let url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("file://{}", args.data_dir.join("store").display()));
    let base =
        ObjectBlobStore::from_url(&url).with_context(|| format!("open object store {url}"))?;
    let store: Arc<dyn BlobStore> = match args.faults.as_deref() {
        None => Arc::new(Retrying::new(base)),
        Some(spec) => {
            let (per_mille, latency) = parse_faults(spec).map_err(anyhow::Error::msg)?;
            tracing::warn!(per_mille, ?latency, "injecting object-store faults");
            Arc::new(Retrying::new(FaultInjecting::new(base, per_mille, latency)))
        }
    };
    let meta = Arc::new(Meta::open(&dir.join("meta.db")).context("open SpriteFS metadata")?);
    // `cache` held compressed chunks in earlier versions; `blocks` holds them decoded.
    let _ = std::fs::remove_dir_all(dir.join("cache"));
    let cache = ChunkCache::open(&dir.join("blocks"), args.cache_mb * 1024 * 1024)
        .context("open chunk cache")?;
    let engine =
        Engine::new(meta, store, cache, dir.join("staging")).context("start the engine")?;
    engine.set_fenced(args.shared_store);
    if engine.meta().volumes()?.is_empty() && !args.shared_store {
        let found = engine
            .recover()
            .await
            .context("recover volumes from the object store")?;
        if !found.is_empty() {
            tracing::info!(
                volumes = found.len(),
                "recovered volumes from the object store"
            );
        }
    }

    let mount_dir = dir.join("mnt");
    // A storage process that died leaves its mount behind ("transport endpoint is not
    // connected"); detach it before mounting again.
    let _ = sprite_sys::mount::unmount(&mount_dir, true);
    std::fs::create_dir_all(&mount_dir)
        .with_context(|| format!("create {}", mount_dir.display()))?;
    let table = VolumeTable::default();
    let session = VolumeFs::new(table.clone(), tokio::runtime::Handle::current())
        .mount(&mount_dir, 4)
        .with_context(|| format!("mount SpriteFS at {}", mount_dir.display()))?;

    let socket = socket_path(&args.data_dir);
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("listen on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .context("chmod the storage socket")?;
    let service = StorageService::new(engine, table, mount_dir.clone(), args.shared_store);
    tokio::spawn(service.clone().serve(listener));
    tokio::spawn(
        service
            .clone()
            .upload_forever(Duration::from_millis(args.upload_interval_ms)),
    );
    tracing::info!(store = %url, mount = %mount_dir.display(), "storage service ready");

    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("watch SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("storage service stopping: flushing attached volumes");
    service.flush_attached().await;
    drop(session);
    Ok(0)
}
