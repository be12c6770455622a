//! Unit tests of the lifecycle's host sequences, without root: the manager runs over
//! [`RecordingSandboxes`] and [`RecordingRoots`], which note every operation in one
//! [`Journal`], and the tests read the order back (create and its rollback, the pool,
//! recovery after a restart, cold sleep and wake, destroy).
#![allow(clippy::unwrap_used)]

use crate::config::CoreConfig;
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::rootfs::RootStore;
use crate::sandboxes::{Journal, RecordingSandboxes, Sandboxes};
use crate::SpriteManager;
use async_trait::async_trait;
use sprite_api::sprite::{CreateSpriteRequest, SpriteStatus};
use sprite_sandbox::spec::RootLayers;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A fake root store: notes each operation; images are an empty directory.
/// `storage_lost` makes the storage under running sprites look gone until it is
/// recovered.
#[derive(Debug)]
pub(crate) struct RecordingRoots {
    journal: Journal,
    dir: PathBuf,
    storage_lost: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl RootStore for RecordingRoots {
    async fn create(&self, sprite_id: &str, _size: u64) -> Result<(), CoreError> {
        self.journal.note(format!("create {sprite_id}"));
        Ok(())
    }

    async fn prepare(
        &self,
        sprite_id: &str,
        image: &[PathBuf],
        _id_base: u32,
        _durability: sprite_api::sprite::Durability,
    ) -> Result<RootLayers, CoreError> {
        self.journal.note(format!("mount {sprite_id}"));
        Ok(RootLayers {
            lower: image.to_vec(),
            disk: self.dir.join("disks").join(sprite_id),
            views: None,
            home: false,
        })
    }

    async fn release(&self, sprite_id: &str) -> Result<(), CoreError> {
        self.journal.note(format!("unmount {sprite_id}"));
        Ok(())
    }

    async fn remove(&self, sprite_id: &str) -> Result<(), CoreError> {
        self.journal.note(format!("remove {sprite_id}"));
        Ok(())
    }

    async fn mount_image(&self, image: &str) -> Result<Option<PathBuf>, CoreError> {
        let root = self.dir.join("images").join(image);
        std::fs::create_dir_all(&root).map_err(CoreError::io("create", &root))?;
        Ok(Some(root))
    }

    async fn save_record(&self, key: &str, _value: &serde_json::Value) -> Result<(), CoreError> {
        self.journal.note(format!("publish {key}"));
        Ok(())
    }

    async fn storage_intact(&self) -> bool {
        !self.storage_lost.load(Ordering::Relaxed)
    }

    async fn recover_storage(&self) -> Result<(), CoreError> {
        self.journal.note("recover-storage -".into());
        self.storage_lost.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// A manager over fakes in a temporary directory.
struct Host {
    dir: tempfile::TempDir,
    journal: Journal,
    sandboxes: Arc<RecordingSandboxes>,
    roots: Arc<RecordingRoots>,
    manager: Arc<SpriteManager>,
}

const ORG: &str = "org";

impl Host {
    fn new(pool: usize) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::default();
        let sandboxes = Arc::new(RecordingSandboxes::new(journal.clone()));
        let roots = Arc::new(RecordingRoots {
            journal: journal.clone(),
            dir: dir.path().join("store"),
            storage_lost: Default::default(),
        });
        let manager = Self::manager(dir.path(), pool, &roots, &sandboxes);
        Host {
            dir,
            journal,
            sandboxes,
            roots,
            manager,
        }
    }

    fn manager(
        dir: &Path,
        pool: usize,
        roots: &Arc<RecordingRoots>,
        sandboxes: &Arc<RecordingSandboxes>,
    ) -> Arc<SpriteManager> {
        let mut config = CoreConfig::new(dir.join("data"), PathBuf::from("/bin/false"));
        config.pool_size = pool;
        SpriteManager::with_parts(config, roots.clone(), sandboxes.clone()).unwrap()
    }

    /// The next daemon on the same data directory and the same host.
    fn restart(&mut self) {
        self.manager = Self::manager(self.dir.path(), 0, &self.roots, &self.sandboxes);
    }

    async fn create(&self, name: &str) -> Result<String, CoreError> {
        let request: CreateSpriteRequest =
            serde_json::from_value(serde_json::json!({ "name": name })).unwrap();
        Ok(self.manager.create(ORG, request).await?.id)
    }

    /// The journal's lines about `id`, without the id.
    fn of(&self, id: &str) -> Vec<String> {
        self.journal
            .lines()
            .into_iter()
            .filter_map(|line| {
                let (what, rest) = line.split_once(' ')?;
                rest.starts_with(id).then(|| what.to_string())
            })
            .collect()
    }

    fn status(&self, name: &str) -> SpriteStatus {
        let record = self.manager.record(&SpriteKey::new(ORG, name)).unwrap();
        self.manager.lifecycle.activity.status(&record.id).0
    }
}

#[tokio::test]
async fn a_create_mounts_before_it_launches_and_publishes_the_record() {
    let host = Host::new(0);
    let id = host.create("dev").await.unwrap();
    assert_eq!(host.of(&id), ["create", "mount", "launch"]);
    let lines = host.journal.lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("publish sprites/org/dev.json"),
        "{lines:?}"
    );
    assert_eq!(host.status("dev"), SpriteStatus::Running);
    // Destroy: the processes go before the disk does, and the sprite's slot (its
    // start lock, URL port, connection places) goes with it.
    *host.manager.lifecycle.slots.get(&id).http_port.lock() =
        Some((8080, std::time::Instant::now()));
    host.journal.clear();
    host.manager
        .destroy(&SpriteKey::new(ORG, "dev"))
        .await
        .unwrap();
    assert_eq!(host.of(&id), ["kill", "remove"]);
    assert!(
        host.manager.lifecycle.slots.peek(&id).is_none(),
        "the slot outlived the sprite"
    );
    assert_eq!(host.manager.lifecycle.slots.len(), 0);
    assert!(matches!(
        host.manager.record(&SpriteKey::new(ORG, "dev")),
        Err(CoreError::SpriteNotFound(_))
    ));
}

#[tokio::test]
async fn a_create_that_cannot_start_is_rolled_back_and_its_name_is_free_again() {
    let host = Host::new(0);
    host.sandboxes.fail_launches.store(true, Ordering::Relaxed);
    let error = host.create("dev").await.unwrap_err();
    assert!(matches!(error, CoreError::StartTimeout(_)), "{error}");
    // The volume was made and mounted, the launch failed: the processes and the
    // volume are gone again, and so is the record.
    let lines = host.journal.lines();
    let id = lines[0].trim_start_matches("create ").to_string();
    assert_eq!(
        host.of(&id),
        ["create", "mount", "launch", "kill", "remove"]
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("publish")),
        "a failed sprite is not published: {lines:?}"
    );
    assert!(matches!(
        host.manager.record(&SpriteKey::new(ORG, "dev")),
        Err(CoreError::SpriteNotFound(_))
    ));
    host.sandboxes.fail_launches.store(false, Ordering::Relaxed);
    let id = host.create("dev").await.unwrap();
    assert_eq!(host.of(&id), ["create", "mount", "launch"]);
}

#[tokio::test]
async fn a_create_takes_a_pooled_sprite_renamed_before_it_is_thawed() {
    let host = Host::new(1);
    let filler = tokio::spawn(host.manager.clone().run_pool());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while host.manager.pool_ready() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never filled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    filler.abort();
    let pooled = host.journal.lines()[0]
        .trim_start_matches("create ")
        .to_string();
    assert_eq!(host.of(&pooled), ["create", "mount", "launch", "freeze"]);
    host.journal.clear();
    let id = host.create("dev").await.unwrap();
    assert_eq!(id, pooled, "the pooled sprite became dev");
    assert_eq!(host.of(&id), ["reshape", "thaw", "rename"]);
    assert_eq!(
        host.journal.only(&["reshape", "rename"]),
        [format!("reshape {id} dev"), format!("rename {id} dev")]
    );
    assert_eq!(host.manager.pool_ready(), 0);
    assert_eq!(host.status("dev"), SpriteStatus::Running);
    // The next create finds the pool empty and makes its sprite the normal way.
    host.journal.clear();
    let other = host.create("other").await.unwrap();
    assert_eq!(host.of(&other), ["create", "mount", "launch"]);
}

#[tokio::test]
async fn a_restarted_daemon_adopts_live_sprites_and_starts_the_others() {
    let mut host = Host::new(0);
    let up = host.create("up").await.unwrap();
    let down = host.create("down").await.unwrap();
    // The daemon goes; one sprite's processes go with the host's reboot.
    host.sandboxes.kill("down", &down).await.unwrap();
    host.restart();
    host.journal.clear();
    let adopted = host.manager.recover().await.unwrap();
    assert_eq!(adopted, 1);
    assert!(
        host.of(&up).is_empty(),
        "adopted as it was: {:?}",
        host.of(&up)
    );
    assert_eq!(host.of(&down), ["mount", "launch"]);
    assert_eq!(host.status("up"), SpriteStatus::Running);
    assert_eq!(host.status("down"), SpriteStatus::Running);
}

#[tokio::test]
async fn cold_sleep_unmounts_after_the_processes_and_a_wake_mounts_before_it_launches() {
    let host = Host::new(0);
    let id = host.create("dev").await.unwrap();
    host.journal.clear();
    host.manager
        .sleep(&SpriteKey::new(ORG, "dev"), true)
        .await
        .unwrap();
    assert_eq!(host.of(&id), ["stop", "unmount"]);
    assert_eq!(host.status("dev"), SpriteStatus::Cold);
    host.journal.clear();
    host.manager
        .wake(&SpriteKey::new(ORG, "dev"))
        .await
        .unwrap();
    assert_eq!(host.of(&id), ["mount", "launch"]);
    assert_eq!(host.status("dev"), SpriteStatus::Running);
    // Warm sleep freezes; a wake thaws and launches nothing.
    host.journal.clear();
    host.manager
        .sleep(&SpriteKey::new(ORG, "dev"), false)
        .await
        .unwrap();
    assert_eq!(host.status("dev"), SpriteStatus::Warm);
    host.manager
        .wake(&SpriteKey::new(ORG, "dev"))
        .await
        .unwrap();
    assert_eq!(host.of(&id), ["freeze", "thaw"]);
}

#[tokio::test]
async fn a_lost_storage_process_is_recovered_and_the_awake_sprites_restarted_on_it() {
    let host = Host::new(0);
    let awake = host.create("awake").await.unwrap();
    let cold = host.create("cold").await.unwrap();
    host.manager
        .sleep(&SpriteKey::new(ORG, "cold"), true)
        .await
        .unwrap();
    host.journal.clear();
    host.roots.storage_lost.store(true, Ordering::Relaxed);
    let supervisor = tokio::spawn(
        host.manager
            .clone()
            .supervise_storage(std::time::Duration::from_millis(5)),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !host.of(&awake).contains(&"launch".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            host.journal.lines()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    supervisor.abort();
    let lines = host.journal.lines();
    assert_eq!(lines[0], "recover-storage -", "{lines:?}");
    // The awake sprite's disk was cut: its processes go, then it starts again on the
    // new storage. The cold one had no disk up; it wakes on the new storage when asked.
    assert_eq!(host.of(&awake), ["kill", "mount", "launch"]);
    assert!(host.of(&cold).is_empty(), "{:?}", host.of(&cold));
    assert_eq!(host.status("awake"), SpriteStatus::Running);
    assert_eq!(host.status("cold"), SpriteStatus::Cold);
}

#[tokio::test]
async fn watchers_of_a_sprites_ports_share_one_poller_that_ends_with_the_last() {
    let host = Host::new(0);
    let id = host.create("web").await.unwrap();
    let key = SpriteKey::new(ORG, "web");
    let ports = host.manager.ports();
    let poller_now = || {
        host.manager
            .lifecycle
            .slots
            .get(&id)
            .port_watch
            .lock()
            .upgrade()
    };
    let first = ports.watch(&key).unwrap();
    let poller = poller_now();
    let second = ports.watch(&key).unwrap();
    let shared = poller_now();
    assert!(
        poller.is_some() && shared.is_some(),
        "a poller runs while watched"
    );
    assert!(
        std::sync::Arc::ptr_eq(poller.as_ref().unwrap(), shared.as_ref().unwrap()),
        "one poller for both watchers"
    );
    drop((poller, shared, first, second));
    assert!(
        host.manager
            .lifecycle
            .slots
            .get(&id)
            .port_watch
            .lock()
            .upgrade()
            .is_none(),
        "no watcher, no poller"
    );
    // Not on this host: no cgroup, so no ports (and no wake).
    assert!(ports.now(&key).await.unwrap().is_empty());
    assert!(matches!(
        ports.watch(&SpriteKey::new(ORG, "nope")),
        Err(CoreError::SpriteNotFound(_))
    ));
}
