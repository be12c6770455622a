//! As root: a volume served over FUSE, attached to a loop device with direct I/O,
//! formatted and mounted as ext4. Files written through ext4 and fsynced survive the
//! loss of local staging and cache (read back from the object store), and e2fsck finds
//! the filesystem clean. Cleans up its mounts and loop device even on failure.
#![allow(clippy::unwrap_used)]

use sprite_fs::cache::ChunkCache;
use sprite_fs::engine::Engine;
use sprite_fs::fuse::{VolumeFs, VolumeTable};
use sprite_fs::meta::Meta;
use sprite_fs::store::{BlobStore, ObjectBlobStore};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A FUSE mount, a loop device and an ext4 mount, undone in reverse on drop.
struct Stack {
    session: Option<fuser::BackgroundSession>,
    loop_device: Option<String>,
    ext4: Option<PathBuf>,
}

impl Stack {
    fn up(
        table: &VolumeTable,
        runtime: &tokio::runtime::Runtime,
        fuse_dir: &Path,
        ext4_dir: &Path,
        volume: &str,
        format: bool,
    ) -> Stack {
        let fs = VolumeFs::new(table.clone(), runtime.handle().clone());
        let mut stack = Stack {
            session: Some(fs.mount(fuse_dir, 2).unwrap()),
            loop_device: None,
            ext4: None,
        };
        let file = fuse_dir.join(volume);
        let device = run(
            "losetup",
            &["--direct-io=on", "--find", "--show", file.to_str().unwrap()],
        );
        stack.loop_device = Some(device.clone());
        if format {
            run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                    &device,
                ],
            );
        } else {
            let check = Command::new("e2fsck")
                .args(["-fn", &device])
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "e2fsck found problems:\n{}",
                String::from_utf8_lossy(&check.stdout)
            );
        }
        run(
            "mount",
            &["-t", "ext4", &device, ext4_dir.to_str().unwrap()],
        );
        stack.ext4 = Some(ext4_dir.to_path_buf());
        stack
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(dir) = self.ext4.take() {
            let _ = Command::new("umount").arg(&dir).status();
        }
        if let Some(device) = self.loop_device.take() {
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

fn engine(dir: &Path, store: Arc<dyn BlobStore>) -> Arc<Engine> {
    let meta = Arc::new(Meta::open(&dir.join("meta.db")).unwrap());
    let cache = ChunkCache::open(&dir.join("cache"), 256 << 20).unwrap();
    Engine::new(meta, store, cache, dir.join("staging")).unwrap()
}

#[test]
fn ext4_on_a_volume_survives_losing_local_state() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (fuse_dir, ext4_dir) = (dir.path().join("fuse"), dir.path().join("ext4"));
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&ext4_dir).unwrap();
    let store_url = format!("file://{}", dir.path().join("store").display());
    let store: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::from_url(&store_url).unwrap());

    let engine_one = engine(dir.path(), store.clone());
    engine_one
        .meta()
        .create_volume("vol", 512 << 20, 1 << 20)
        .unwrap();
    let volume = engine_one.open_volume("vol").unwrap();
    let table = VolumeTable::default();
    table.attach(volume.clone());
    let blob: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    {
        let _stack = Stack::up(&table, &runtime, &fuse_dir, &ext4_dir, "vol", true);
        std::fs::create_dir_all(ext4_dir.join("a/b")).unwrap();
        std::fs::write(ext4_dir.join("a/b/blob.bin"), &blob).unwrap();
        for i in 0..200 {
            std::fs::write(ext4_dir.join(format!("a/small-{i}")), format!("file {i}\n")).unwrap();
        }
        std::os::unix::fs::symlink("b/blob.bin", ext4_dir.join("a/link")).unwrap();
        run(
            "sync",
            &["-f", ext4_dir.join("a/b/blob.bin").to_str().unwrap()],
        );
    }
    // Unmounted: everything ext4 wrote is in staging and fsynced. Push it to the store.
    let stats = runtime.block_on(volume.flush_all()).unwrap();
    assert!(stats.blocks > 0);
    table.detach("vol");
    drop(volume);
    runtime.block_on(engine_one.settled());
    drop(engine_one);

    // Lose the host's staging and cache; keep metadata and the store.
    std::fs::remove_dir_all(dir.path().join("staging")).unwrap();
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let engine_two = engine(dir.path(), store.clone());
    let volume = engine_two.open_volume("vol").unwrap();
    table.attach(volume);
    let _stack = Stack::up(&table, &runtime, &fuse_dir, &ext4_dir, "vol", false);
    assert!(std::fs::read(ext4_dir.join("a/b/blob.bin")).unwrap() == blob);
    assert_eq!(
        std::fs::read_to_string(ext4_dir.join("a/small-199")).unwrap(),
        "file 199\n"
    );
    assert_eq!(
        std::fs::read_link(ext4_dir.join("a/link")).unwrap(),
        PathBuf::from("b/blob.bin")
    );
    // A 512 MiB volume with a few MiB of files stores a few MiB, not 512.
    let stored: usize = runtime.block_on(store.list("chunks/")).unwrap().len();
    assert!(
        stored < 100,
        "{stored} chunks stored for a mostly empty volume"
    );
}
