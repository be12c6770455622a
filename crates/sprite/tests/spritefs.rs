//! Sprites whose files live on SpriteFS (as root): a 100 GiB root that costs only what
//! is written, data that survives a daemon crash, a new sprite that adds almost nothing
//! to the object store, and nothing left behind after destroy.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn store_bytes(daemon: &Daemon) -> u64 {
    fn walk(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| {
                        let meta = e.metadata().unwrap();
                        if meta.is_dir() {
                            walk(&e.path())
                        } else {
                            meta.len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&daemon.data_path().join("store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sprites_live_on_spritefs() {
    let mut daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    create(&daemon.client, "disk").await;

    let out = run(&daemon.client, "disk", &["sh", "-c", "df -k / | tail -1"]).await;
    let size_kib: u64 = out
        .stdout()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        size_kib > 90 * 1024 * 1024,
        "root is {size_kib} KiB: {}",
        out.stdout()
    );

    let write = "dd if=/dev/urandom of=/home/sprite/data bs=1M count=5 2>/dev/null && sync && md5sum /home/sprite/data";
    let before = run(&daemon.client, "disk", &["sh", "-c", write]).await;
    assert_eq!(before.code, 0, "{before:?}");

    // The daemon dies hard; the storage process and the sprite carry on.
    daemon.restart().await;
    let after = run(&daemon.client, "disk", &["md5sum", "/home/sprite/data"]).await;
    assert_eq!(after.stdout(), before.stdout());

    // A second sprite is a fork of the formatted template: metadata only.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let used = store_bytes(&daemon);
    create(&daemon.client, "disk-2").await;
    let added = store_bytes(&daemon) - used;
    assert!(
        added <= 64 * 1024,
        "a new sprite added {added} bytes to the object store"
    );

    for name in ["disk", "disk-2"] {
        daemon.client.destroy(name).await.unwrap();
    }
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let data = daemon.data_path().to_string_lossy().to_string();
    assert!(
        !String::from_utf8_lossy(&loops.stdout).contains(&data),
        "loop devices left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("{data}/layers")),
        "ext4 mounts left behind"
    );
}
