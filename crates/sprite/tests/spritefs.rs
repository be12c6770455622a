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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_restore_and_fork() {
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = &daemon.client;
    create(client, "origin").await;
    let sh = |script: &str| vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let run_sh = |name: &'static str, script: &str| {
        let argv = sh(script);
        async move {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run(client, name, &argv).await
        }
    };
    assert_eq!(
        run_sh(
            "origin",
            "echo one > /home/sprite/f && mkdir /home/sprite/d"
        )
        .await
        .code,
        0
    );
    let events = client.checkpoint("origin", Some("first")).await.unwrap();
    assert_eq!(
        events.last().unwrap().data.as_deref(),
        Some("Checkpoint v0 created")
    );
    assert_eq!(
        run_sh(
            "origin",
            "echo two > /home/sprite/f && rm -r /home/sprite/d && touch /home/sprite/new"
        )
        .await
        .code,
        0
    );
    client.checkpoint("origin", None).await.unwrap();
    let list = client.checkpoints("origin", false).await.unwrap();
    assert_eq!(
        list.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["v1", "v0"],
        "newest first"
    );
    assert_eq!(list[1].comment.as_deref(), Some("first"));

    // A session running at restore time ends; the files are v0's.
    let mut p = params(&["sleep", "300"]);
    p.max_run_after_disconnect_secs = Some(0);
    let sleeper = client.exec("origin", &p).await.unwrap();
    client.restore("origin", "v0").await.unwrap();
    assert!(
        collect_or_closed(sleeper).await,
        "the session survived the restore"
    );
    let out = run_sh("origin", "cat /home/sprite/f; ls /home/sprite").await;
    assert_eq!(out.stdout(), "one\nd\nf\n", "{out:?}");

    // Fork from v1: a new sprite with v1's files that diverges from its parent.
    let request = sprite_api::sprite::CreateSpriteRequest {
        name: "forked".into(),
        url_settings: None,
        labels: None,
        config: None,
        environment: None,
        wait_for_capacity: None,
        from: Some(sprite_api::sprite::ForkSource {
            sprite: "origin".into(),
            checkpoint: Some("v1".into()),
        }),
    };
    client.create(&request).await.unwrap();
    assert_eq!(
        run_sh("forked", "cat /home/sprite/f").await.stdout(),
        "two\n"
    );
    assert_eq!(run_sh("forked", "echo fork > /home/sprite/f").await.code, 0);
    assert_eq!(
        run_sh("origin", "cat /home/sprite/f").await.stdout(),
        "one\n"
    );

    // Bad ids are 404s with a clear message.
    let error = client.restore("origin", "v9").await.unwrap_err();
    assert_eq!(error.status(), Some(404), "{error}");
    client.delete_checkpoint("origin", "v1").await.unwrap();
    assert_eq!(client.checkpoints("origin", false).await.unwrap().len(), 1);
    for name in ["origin", "forked"] {
        client.destroy(name).await.unwrap();
    }
}

/// Whether an exec stream ends (exit or close) within a few seconds.
async fn collect_or_closed(mut stream: sprite_client::ExecStream) -> bool {
    let deadline = std::time::Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            match stream.next().await {
                Ok(sprite_client::ExecEvent::Exit(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
