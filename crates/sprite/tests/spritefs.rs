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

/// The store's size once the uploads of earlier writes are done: unchanged over two
/// uploader rounds (a busy machine may take several seconds to upload 5 MiB).
async fn settled_store_bytes(daemon: &Daemon) -> u64 {
    let mut last = store_bytes(daemon);
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let now = store_bytes(daemon);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the object store kept growing for 75 s after the writes stopped");
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

    // The chunks are where the configured store keeps them (the S3 server's bucket
    // directory when SPRITE_TEST_STORE=s3).
    let chunks = if std::env::var("SPRITE_TEST_STORE").as_deref() == Ok("s3") {
        daemon.data_path().join("store/sprites/test/chunks")
    } else {
        daemon.data_path().join("store/chunks")
    };
    assert!(chunks.is_dir(), "no chunks at {}", chunks.display());

    let write = "dd if=/dev/urandom of=/home/sprite/data bs=1M count=5 2>/dev/null && sync && md5sum /home/sprite/data";
    let before = run(&daemon.client, "disk", &["sh", "-c", write]).await;
    assert_eq!(before.code, 0, "{before:?}");

    // The CLI shows the sprite's durability mode and how far the store trails it.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sprite"))
            .args(args)
            .env("SPRITES_API_URL", &daemon.url)
            .env("SPRITE_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let info = cli(&["info", "-s", "disk"]);
    assert!(
        info.lines()
            .any(|line| line.starts_with("durable:  local (the store")),
        "{info}"
    );
    let listed: serde_json::Value = serde_json::from_str(&cli(&["list", "--json"])).unwrap();
    let storage = &listed[0]["storage"];
    assert_eq!(storage["durability"], "local", "{listed}");
    assert!(
        storage["lag_ms"].is_u64() && storage["lag_bytes"].is_u64(),
        "{listed}"
    );

    // The daemon dies hard; the storage process and the sprite carry on.
    daemon.restart().await;
    let after = run(&daemon.client, "disk", &["md5sum", "/home/sprite/data"]).await;
    assert_eq!(after.stdout(), before.stdout());

    // A second sprite is a fork of the formatted template: metadata only.
    let used = settled_store_bytes(&daemon).await;
    create(&daemon.client, "disk-2").await;
    let added = store_bytes(&daemon) - used;
    assert!(
        added <= 64 * 1024,
        "a new sprite added {added} bytes to the object store"
    );

    // Another size is another template; the sprite sees its own size.
    let mut request = sprite_request("small");
    request.config = Some(sprite_api::sprite::SpriteConfig {
        storage_gb: Some(10),
        ..Default::default()
    });
    daemon.client.create(&request).await.unwrap();
    let out = run(&daemon.client, "small", &["sh", "-c", "df -k / | tail -1"]).await;
    let size_kib: u64 = out
        .stdout()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (9 * 1024 * 1024..=10 * 1024 * 1024).contains(&size_kib),
        "a 10 GiB sprite's root is {size_kib} KiB"
    );

    for name in ["disk", "disk-2", "small"] {
        daemon.client.destroy(name).await.unwrap();
    }
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let data = daemon.data_path().to_string_lossy().to_string();
    // Only the image volume stays: mounted once per host, for every sprite.
    let loops = String::from_utf8_lossy(&loops.stdout).to_string();
    assert!(
        !loops
            .lines()
            .any(|l| l.contains(&data) && !l.contains("/image-busybox")),
        "loop devices left behind: {loops}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(&format!("{data}/image-volumes/busybox ")),
        "the image is not a mounted volume"
    );
    assert!(
        !mounts.contains(&format!("{data}/layers")),
        "ext4 mounts left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_restore_and_fork() {
    let mut daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = &daemon.client.clone();
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
            "echo one > /home/sprite/f && mkdir /home/sprite/d && echo outside > /tmp/o"
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
            "echo two > /home/sprite/f && rm -r /home/sprite/d && touch /home/sprite/new \
             && echo changed > /tmp/o"
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

    // Both checkpoints are readable (only) inside the sprite.
    wait_for_views(client, "origin", "v0\nv1\n").await;
    let out = run_sh(
        "origin",
        "cat /.sprite/checkpoints/v0/home/sprite/f; ls /.sprite/checkpoints/v0/home/sprite; \
         cat /.sprite/checkpoints/v1/home/sprite/f; ls /.sprite/checkpoints/v1/home/sprite; \
         test -x /.sprite/checkpoints/v1/bin/sh && echo image; cat /.sprite/checkpoints/v0/tmp/o",
    )
    .await;
    assert_eq!(
        out.stdout(),
        "one\nd\nf\ntwo\nf\nnew\nimage\noutside\n",
        "{out:?}"
    );
    // /home is on the sprite's disk itself, beside the overlay root: its own mount.
    let out = run_sh(
        "origin",
        "awk '$5 == \"/home\"' /proc/self/mountinfo | wc -l",
    )
    .await;
    assert_eq!(out.stdout(), "1\n", "{out:?}");
    let out = run_sh(
        "origin",
        "touch /.sprite/checkpoints/v0/home/sprite/f || touch /.sprite/checkpoints/x || echo refused",
    )
    .await;
    assert_eq!(out.stdout().lines().last(), Some("refused"), "{out:?}");

    // A session running at restore time ends; the files are v0's.
    let mut p = params(&["sleep", "300"]);
    p.max_run_after_disconnect_secs = Some(0);
    let sleeper = client.exec("origin", &p).await.unwrap();
    client.restore("origin", "v0").await.unwrap();
    assert!(
        collect_or_closed(sleeper).await,
        "the session survived the restore"
    );
    let out = run_sh("origin", "cat /home/sprite/f; ls /home/sprite; cat /tmp/o").await;
    assert_eq!(out.stdout(), "one\nd\nf\noutside\n", "{out:?}");

    // Fork from v1: a new sprite with v1's files that diverges from its parent.
    client
        .create(&fork_request("forked", "origin", "v1"))
        .await
        .unwrap();
    assert_eq!(
        run_sh("forked", "cat /home/sprite/f").await.stdout(),
        "two\n"
    );
    assert_eq!(
        run_sh("forked", "echo fork > /home/sprite/f && sync")
            .await
            .code,
        0
    );
    assert_eq!(
        run_sh("origin", "cat /home/sprite/f").await.stdout(),
        "one\n"
    );

    // Bad ids are 404s with a clear message.
    let error = client.restore("origin", "v9").await.unwrap_err();
    assert_eq!(error.status(), Some(404), "{error}");
    wait_for_views(client, "origin", "v0\nv1\n").await;
    client.delete_checkpoint("origin", "v1").await.unwrap();
    assert_eq!(client.checkpoints("origin", false).await.unwrap().len(), 1);
    wait_for_views(client, "origin", "v0\n").await;
    let usage = client.usage("origin", None).await.unwrap();
    assert!(usage.bytes_stored.unwrap() > 0, "{usage:?}");
    assert_eq!(usage.checkpoints.as_ref().unwrap()[0].id, "v0");
    // The same figures come with the sprite itself and with each sprite of a listing.
    let info = client.get("origin").await.unwrap();
    let storage = info.storage.expect("SpriteInfo carries storage usage");
    assert_eq!(storage.bytes_stored, usage.bytes_stored.unwrap());
    assert_eq!(storage.checkpoints, 1);
    let listed = client.list(None, None).await.unwrap();
    assert!(
        listed.sprites.iter().all(|s| s.storage.is_some()),
        "{listed:?}"
    );
    // Destroying the parent (and collecting) leaves the fork whole: it still reaches
    // the parent's checkpoint layers. Checked on a fresh host, which has nothing but
    // what the collection left in the store (no cached block can hide a lost chunk).
    client.destroy("origin").await.unwrap();
    client.collect_garbage().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    daemon.lose_host().await;
    let out = run_sh("forked", "cat /home/sprite/f; ls /home/sprite").await;
    assert_eq!(out.stdout(), "fork\nf\nnew\n", "{out:?}");
    client.destroy("forked").await.unwrap();
    // What only the destroyed sprites referenced goes at the next collection.
    let freed = client.collect_garbage().await.unwrap();
    assert!(freed.chunks > 0, "{freed:?}");
    assert_eq!(
        client.collect_garbage().await.unwrap().chunks,
        0,
        "a second collection finds nothing"
    );
}

/// Waits until `ls /.sprite/checkpoints` in the sprite prints `expected` (views are
/// mounted in the background after a start or a checkpoint).
async fn wait_for_views(client: &sprite_client::Client, sprite: &str, expected: &str) {
    let mut last = String::new();
    for _ in 0..100 {
        last = run(client, sprite, &["ls", "/.sprite/checkpoints"])
            .await
            .stdout();
        if last == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("checkpoint views of {sprite}: {last:?}, expected {expected:?}");
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

fn storage_pid(daemon: &Daemon) -> Option<u32> {
    storage_pids(daemon).first().copied()
}

fn storage_pids(daemon: &Daemon) -> Vec<u32> {
    let pattern = format!("storage --data-dir {}", daemon.data_path().display());
    let out = std::process::Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// One storage process a data directory: a second one started by hand gives up with a
/// message naming the first (which keeps serving), and after a crash the daemon's
/// requests that find storage down at once start one process, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_storage_process_a_data_directory() {
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = &daemon.client;
    create(client, "one").await;
    let first = storage_pid(&daemon).unwrap();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_sprite"))
        .args(["storage", "--data-dir"])
        .arg(daemon.data_path())
        .args(["--lock-wait-ms", "300"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "storage process {first} still serves this data directory"
        )),
        "{stderr}"
    );
    assert_eq!(storage_pids(&daemon), vec![first]);
    let out = run(
        client,
        "one",
        &["sh", "-c", "echo ok > /home/sprite/f && cat /home/sprite/f"],
    )
    .await;
    assert_eq!(out.stdout(), "ok\n", "{out:?}");

    // A crash, then requests that all need the storage process at once.
    let started = || daemon.log().matches("storage process started").count();
    let before = started();
    std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    // Until its socket refuses connections: a dying process's threads hold its
    // listening socket open for a while after pgrep stops seeing it (and after its
    // first thread is a zombie), and a request connected then is reset.
    let socket = daemon.data_path().join("fs/storage.sock");
    for _ in 0..250 {
        if std::os::unix::net::UnixStream::connect(&socket).is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let listed =
        futures_util::future::join_all((0..6).map(|_| client.checkpoints("one", false))).await;
    for list in listed {
        if let Err(error) = list {
            panic!(
                "{error}\n{}\nstorage log:\n{}",
                daemon.log(),
                std::fs::read_to_string(daemon.data_path().join("storage.log")).unwrap_or_default()
            );
        }
    }
    assert_eq!(storage_pids(&daemon).len(), 1, "{}", daemon.log());
    assert_eq!(started(), before + 1, "{}", daemon.log());
}

/// Kills the storage process (the FUSE server under every sprite disk) at random points,
/// over and over; after each crash every fsynced file is intact, and at the end e2fsck
/// finds the filesystem clean. Rounds: SPRITE_CRASH_ROUNDS (default 20; the soak script
/// runs 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsynced_data_survives_storage_crashes() {
    let rounds: usize = std::env::var("SPRITE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = &daemon.client;
    create(client, "crashy").await;
    let id = daemon.sprite_ids().pop().unwrap();
    // A checkpoint, so there is a checkpoint view to lose and bring back each time.
    let out = run(
        client,
        "crashy",
        &["sh", "-c", "echo kept > /home/sprite/kept"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    client.checkpoint("crashy", None).await.unwrap();
    let mounted_by = daemon
        .data_path()
        .join("layers")
        .join(&id)
        .join("mounted-by");
    let mut files: Vec<(String, String)> = Vec::new();
    for round in 0..rounds {
        let file = format!("/home/sprite/f{round}");
        let script = format!(
            "dd if=/dev/urandom of={file} bs=4k count={} 2>/dev/null && sync && md5sum {file} && \
             (dd if=/dev/urandom of=/home/sprite/inflight bs=64k count=400 2>/dev/null &)",
            1 + round * 7 % 64
        );
        let out = run(client, "crashy", &["sh", "-c", &script]).await;
        assert_eq!(out.code, 0, "round {round}: {out:?}");
        files.push((file, out.stdout()));

        let before = storage_pid(&daemon).unwrap();
        std::process::Command::new("kill")
            .args(["-9", &before.to_string()])
            .status()
            .unwrap();
        // Wait until the daemon has a new storage process and the sprite runs on it.
        let mut recovered = false;
        for _ in 0..300 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = storage_pid(&daemon);
            let on = std::fs::read_to_string(&mounted_by)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            if now.is_some() && now != Some(before) && on == now {
                recovered = true;
                break;
            }
        }
        assert!(
            recovered,
            "round {round}: no recovery after the storage crash\n{}",
            daemon.log()
        );
        let check: String = files.iter().map(|(f, _)| format!("md5sum {f}; ")).collect();
        let out = run(client, "crashy", &["sh", "-c", &check]).await;
        let expected: String = files.iter().map(|(_, sum)| sum.clone()).collect();
        assert_eq!(out.stdout(), expected, "round {round}: fsynced data lost");
    }
    wait_for_views(client, "crashy", "v0\n").await;
    // Nothing of the dead storage processes is left: a loop device over a lost FUSE
    // file shows it as `/<volume>`.
    let listing = std::process::Command::new("losetup")
        .args(["-n", "-O", "BACK-FILE"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    let stale: Vec<&str> = listing
        .lines()
        .filter(|l| {
            let l = l.trim();
            l == format!("/{id}") || l == format!("/{id}@v0") || l == "/image-busybox"
        })
        .collect();
    assert!(stale.is_empty(), "stale loop devices: {listing}");
    let out = run(
        client,
        "crashy",
        &["cat", "/.sprite/checkpoints/v0/home/sprite/kept"],
    )
    .await;
    assert_eq!(out.stdout(), "kept\n", "{out:?}");

    // Stop the sprite, then check the filesystem offline.
    let layout =
        sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap();
    sprite_sandbox::cgroup::SpriteCgroup::new(layout, &id)
        .kill_all(std::time::Duration::from_secs(10))
        .unwrap();
    let mount = daemon.data_path().join("layers").join(&id).join("mnt");
    assert!(std::process::Command::new("umount")
        .arg(&mount)
        .status()
        .unwrap()
        .success());
    // The loop device cleared itself with the unmount; the volume's file is checked
    // as it is.
    let device = daemon
        .data_path()
        .join("fs/mnt")
        .join(&id)
        .to_string_lossy()
        .into_owned();
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn", &device])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck:\n{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// A fresh host with an empty data directory and the same object store comes up with
/// every sprite, its files and its checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_host_recovers_sprites_from_the_store() {
    let mut daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    create(&daemon.client, "phoenix").await;
    let first = run(
        &daemon.client,
        "phoenix",
        &[
            "sh",
            "-c",
            "echo ash > /home/sprite/a && sync && md5sum /home/sprite/a",
        ],
    )
    .await;
    daemon
        .client
        .checkpoint("phoenix", Some("before"))
        .await
        .unwrap();
    let script = "dd if=/dev/urandom of=/home/sprite/b bs=64k count=40 2>/dev/null && sync && md5sum /home/sprite/b";
    let second = run(&daemon.client, "phoenix", &["sh", "-c", script]).await;
    // The uploader keeps the store at most a second behind.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    daemon.lose_host().await;
    let names: Vec<String> = daemon
        .client
        .list_all(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["phoenix"], "{}", daemon.log());
    // The image came back from the store too: stored once, by the lost host.
    let log = daemon.log();
    assert_eq!(
        log.matches("storing the image as a volume").count(),
        1,
        "{log}"
    );
    assert!(log.matches("image volume mounted").count() >= 2, "{log}");
    let out = run(
        &daemon.client,
        "phoenix",
        &["md5sum", "/home/sprite/a", "/home/sprite/b"],
    )
    .await;
    assert_eq!(
        out.stdout(),
        format!("{}{}", first.stdout(), second.stdout()),
        "{out:?}"
    );
    let checkpoints = daemon.client.checkpoints("phoenix", false).await.unwrap();
    assert_eq!(
        checkpoints
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["v0"]
    );
    wait_for_views(&daemon.client, "phoenix", "v0\n").await;
    let out = run(
        &daemon.client,
        "phoenix",
        &["cat", "/.sprite/checkpoints/v0/home/sprite/a"],
    )
    .await;
    assert_eq!(out.stdout(), "ash\n", "{out:?}");
    daemon.client.restore("phoenix", "v0").await.unwrap();
    let out = run(&daemon.client, "phoenix", &["ls", "/home/sprite"]).await;
    assert_eq!(
        out.stdout(),
        "a\n",
        "restored to the checkpoint taken on the lost host"
    );
    daemon.client.destroy("phoenix").await.unwrap();
}

/// A tenth of the object-store calls fail (half of them after the call landed) and
/// every call is slow: sprites still start, write, checkpoint, restore and fork, and a
/// fresh host recovers every byte from what the faulty store kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_faults_lose_nothing() {
    let mut daemon = Daemon::start_with(
        "busybox",
        "storage = \"spritefs\"\nstore_faults = \"100,5\"\n",
    )
    .await;
    let client = daemon.client.clone();
    create(&client, "flaky").await;
    let write = "dd if=/dev/urandom of=/home/sprite/a bs=64k count=48 2>/dev/null && sync && md5sum /home/sprite/a";
    let first = run(&client, "flaky", &["sh", "-c", write]).await;
    assert_eq!(first.code, 0, "{first:?}");
    client.checkpoint("flaky", None).await.unwrap();
    let change = "echo changed > /home/sprite/a && sync && dd if=/dev/urandom of=/home/sprite/b bs=64k count=32 2>/dev/null && sync && md5sum /home/sprite/b";
    let second = run(&client, "flaky", &["sh", "-c", change]).await;
    assert_eq!(second.code, 0, "{second:?}");

    // Fork v0 while the parent moves on; restore the parent to v0.
    client
        .create(&fork_request("flaky-fork", "flaky", "v0"))
        .await
        .unwrap();
    let forked = run(&client, "flaky-fork", &["md5sum", "/home/sprite/a"]).await;
    assert_eq!(forked.stdout(), first.stdout());
    let faults = std::fs::read_to_string(daemon.data_path().join("storage.log"))
        .unwrap_or_default()
        .matches("injected object-store fault")
        .count();
    assert!(faults > 0, "no fault was injected");

    // Everything the sprites wrote reaches the store despite the faults.
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    daemon.lose_host().await;
    let client = daemon.client.clone();
    let out = run(&client, "flaky", &["md5sum", "/home/sprite/b"]).await;
    assert_eq!(out.stdout(), second.stdout(), "{}", daemon.log());
    assert_eq!(
        run(&client, "flaky", &["cat", "/home/sprite/a"])
            .await
            .stdout(),
        "changed\n"
    );
    client.restore("flaky", "v0").await.unwrap();
    let restored = run(&client, "flaky", &["md5sum", "/home/sprite/a"]).await;
    assert_eq!(restored.stdout(), first.stdout());
    let forked = run(&client, "flaky-fork", &["md5sum", "/home/sprite/a"]).await;
    assert_eq!(forked.stdout(), first.stdout());
    for name in ["flaky", "flaky-fork"] {
        client.destroy(name).await.unwrap();
    }
}

/// A root filesystem tarball becomes an image (a read-only volume on SpriteFS) that
/// sprites can start from; bad imports are refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_tarballs_become_images() {
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = &daemon.client;
    // The shared busybox root (owners shifted on disk) packed as uid 0, plus a marker.
    let extra = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(extra.path().join("etc")).unwrap();
    std::fs::write(extra.path().join("etc/marker"), "from a tarball\n").unwrap();
    let tarball = extra.path().join("rootfs.tar.gz");
    let shared = std::path::Path::new("/var/tmp/sprites-test-images/busybox/rootfs");
    let status = std::process::Command::new("tar")
        .args(["-czf"])
        .arg(&tarball)
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(shared)
        .arg(".")
        .arg("-C")
        .arg(extra.path())
        .arg("etc/marker")
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&tarball).unwrap();

    let imported = client
        .import_image("tiny", std::io::Cursor::new(bytes.clone()))
        .await
        .unwrap();
    assert_eq!(
        imported.state,
        sprite_api::admin::ImageState::Ready,
        "{imported:?}"
    );
    let images = client.images().await.unwrap();
    assert!(images.images.iter().any(|i| i.name == "tiny"), "{images:?}");
    let mut request = sprite_request("from-tarball");
    request.image = Some("tiny".into());
    client.create(&request).await.unwrap();
    let out = run(client, "from-tarball", &["cat", "/etc/marker"]).await;
    assert_eq!(out.stdout(), "from a tarball\n", "{out:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(&format!(
            "{}/image-volumes/tiny ",
            daemon.data_path().display()
        )),
        "the imported image is not a mounted volume"
    );

    // Refusals: the same name again, a built-in name, not a tarball, no root inside,
    // and a sprite on an image there is not.
    let again = client
        .import_image("tiny", std::io::Cursor::new(bytes))
        .await
        .unwrap_err();
    assert_eq!(again.status(), Some(409), "{again}");
    let builtin = client
        .import_image("debian", std::io::Cursor::new(b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(builtin.status(), Some(400), "{builtin}");
    let garbage = client
        .import_image("junk", std::io::Cursor::new(b"not a tarball".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(garbage.status(), Some(400), "{garbage}");
    assert!(garbage.to_string().contains("not a tarball"), "{garbage}");
    let mut request = sprite_request("nowhere");
    request.image = Some("no-such-image".into());
    let missing = client.create(&request).await.unwrap_err();
    assert_eq!(missing.status(), Some(400), "{missing}");
    assert!(missing.to_string().contains("unknown image"), "{missing}");
    client.destroy("from-tarball").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprite_from_before_id_ranges_gets_its_own_at_its_next_start() {
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = daemon.client.clone();
    create(&client, "old").await;
    let made = run(
        &client,
        "old",
        &[
            "sh",
            "-c",
            "echo kept > /home/sprite/file && chown 1000:1000 /home/sprite/file && id -u",
        ],
    )
    .await;
    assert_eq!(made.code, 0, "{}", String::from_utf8_lossy(&made.stderr));
    client.sleep("old", true).await.unwrap();
    // As a daemon before ranges recorded it: every sprite on the shared 100000.
    let id = client.get("old").await.unwrap().id;
    let db = daemon.data_path().join("control.db");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('UPDATE sprites SET id_base = 100000 WHERE id = ?', (sys.argv[2],)); c.commit()",
        ])
        .arg(&db)
        .arg(&id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its next start gives it a range of its own; its files keep their owners inside.
    let seen = run(
        &client,
        "old",
        &[
            "sh",
            "-c",
            "cat /home/sprite/file; stat -c %u /home/sprite/file",
        ],
    )
    .await;
    assert_eq!(
        seen.stdout(),
        "kept\n1000\n",
        "{}",
        String::from_utf8_lossy(&seen.stderr)
    );
    let pid = init_pid_of(&id);
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let outside: u32 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(outside >= 1 << 30, "still on the shared range: {map}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_outlive_their_source_and_start_sprites() {
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = &daemon.client;
    create(client, "source").await;
    let write = "echo from the template > /home/sprite/kept && echo later-state > /tmp/x";
    assert_eq!(run(client, "source", &["sh", "-c", write]).await.code, 0);
    client.checkpoint("source", Some("ready")).await.unwrap();
    // Written after the checkpoint: not in the template.
    let after = "echo after > /home/sprite/after";
    assert_eq!(run(client, "source", &["sh", "-c", after]).await.code, 0);
    let request = |name: &str, from: &str| sprite_api::sprite::CreateTemplateRequest {
        name: name.into(),
        from: sprite_api::sprite::ForkSource {
            sprite: from.into(),
            checkpoint: None,
        },
        comment: Some("a base".into()),
    };
    let made = client
        .create_template(&request("base", "source"))
        .await
        .unwrap();
    assert_eq!(
        (made.source_sprite.as_str(), made.source_checkpoint.as_str()),
        ("source", "v0")
    );
    assert_eq!(made.image, "busybox");
    // Refused: a taken name, a bad name, a sprite without checkpoints, from and
    // template together, an unknown template.
    fn status<T>(result: Result<T, sprite_client::ClientError>) -> Option<u16> {
        result.err().and_then(|e| e.status())
    }
    assert_eq!(
        status(client.create_template(&request("base", "source")).await),
        Some(409)
    );
    assert_eq!(
        status(client.create_template(&request("Bad Name", "source")).await),
        Some(400)
    );
    create(client, "empty").await;
    assert_eq!(
        status(client.create_template(&request("none", "empty")).await),
        Some(400)
    );
    let both = sprite_api::sprite::CreateSpriteRequest {
        template: Some("base".into()),
        ..fork_request("both", "source", "v0")
    };
    assert_eq!(status(client.create(&both).await), Some(400));
    let unknown = sprite_api::sprite::CreateSpriteRequest {
        template: Some("nope".into()),
        ..sprite_request("ghost")
    };
    assert_eq!(status(client.create(&unknown).await), Some(404));

    // The source goes; the template stays and starts sprites with its files.
    client.destroy("source").await.unwrap();
    let names: Vec<String> = client
        .templates()
        .await
        .unwrap()
        .templates
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["base"]);
    for name in ["child-1", "child-2"] {
        let from_template = sprite_api::sprite::CreateSpriteRequest {
            template: Some("base".into()),
            ..sprite_request(name)
        };
        client.create(&from_template).await.unwrap();
        let out = run(client, name, &["cat", "/home/sprite/kept"]).await;
        assert_eq!(out.stdout(), "from the template\n");
        let out = run(
            client,
            name,
            &["sh", "-c", "test -e /home/sprite/after || echo absent"],
        )
        .await;
        assert_eq!(out.stdout(), "absent\n");
    }
    // Children are independent of each other and of the template.
    assert_eq!(
        run(
            client,
            "child-1",
            &["sh", "-c", "echo mine > /home/sprite/kept"]
        )
        .await
        .code,
        0
    );
    let out = run(client, "child-2", &["cat", "/home/sprite/kept"]).await;
    assert_eq!(out.stdout(), "from the template\n");
    client.delete_template("base").await.unwrap();
    assert!(client.templates().await.unwrap().templates.is_empty());
    let out = run(client, "child-2", &["cat", "/home/sprite/kept"]).await;
    assert_eq!(
        out.stdout(),
        "from the template\n",
        "a child outlives its template"
    );
    assert_eq!(status(client.delete_template("base").await), Some(404));
    for name in ["child-1", "child-2", "empty"] {
        client.destroy(name).await.unwrap();
    }
}
