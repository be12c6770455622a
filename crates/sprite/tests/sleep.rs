//! End to end, as root: sprites sleep warm (frozen) and cold (stopped, disk released)
//! when idle, stay awake while anything uses them, and wake on demand.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sprite_api::sprite::{SpriteInfo, SpriteStatus};
use sprite_client::{Client, ExecEvent};
use std::path::PathBuf;
use std::time::{Duration, Instant};

async fn info(client: &Client, name: &str) -> SpriteInfo {
    client.get(name).await.unwrap()
}

/// Asserts the sprite keeps `want` for all of `period`.
async fn stays(client: &Client, name: &str, want: SpriteStatus, period: Duration) {
    let start = Instant::now();
    while start.elapsed() < period {
        let now = info(client, name).await;
        assert_eq!(now.status, want, "{name}: {:?}", now.lifecycle);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a process in the sprite that writes an increasing count to /tmp/count every
/// 50 ms, detached from any session.
async fn start_counter(client: &Client, name: &str) {
    let script = "(i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done) </dev/null >/dev/null 2>&1 &";
    assert_eq!(run(client, name, &["sh", "-c", script]).await.code, 0);
}

/// The counter, read from the host side of the sprite's disk (no exec: that would wake it).
fn counter_on_host(daemon: &Daemon, name_id: &str) -> u64 {
    let candidates = [
        daemon
            .data_path()
            .join("layers")
            .join(name_id)
            .join("mnt/upper/tmp/count"),
        daemon
            .data_path()
            .join("layers")
            .join(name_id)
            .join("upper/tmp/count"),
    ];
    let path: PathBuf = candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| panic!("no counter file in {candidates:?}"));
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn counter_in_sprite(client: &Client, name: &str) -> u64 {
    run(client, name, &["cat", "/tmp/count"])
        .await
        .stdout()
        .trim()
        .parse()
        .unwrap()
}

fn is_mount_point(path: &std::path::Path) -> bool {
    let text = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(text.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sprites_go_warm_then_cold_and_wake_on_demand() {
    let daemon = Daemon::start_with(
        "busybox",
        "storage = \"spritefs\"\nwarm_after = \"2s\"\ncold_after = \"6s\"\nstop_grace = \"1s\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "nap").await;
    let id = info(client, "nap").await.id;
    start_counter(client, "nap").await;

    // Warm after 2 s idle (the idle loop looks every second).
    let took = wait_status(client, "nap", SpriteStatus::Warm, Duration::from_secs(6)).await;
    let warm = info(client, "nap").await;
    let life = warm.lifecycle.clone().unwrap();
    assert!(life.awake_because.is_empty(), "{life:?}");
    assert!(life.cold_at.is_some() && life.warm_at.is_none(), "{life:?}");
    assert!(warm.last_warming_at.is_some());
    assert!(took < Duration::from_secs(4), "went warm after {took:?}");
    // Frozen: the counter stands still.
    let frozen_at = counter_on_host(&daemon, &id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counter_on_host(&daemon, &id),
        frozen_at,
        "a warm sprite ran"
    );

    // An exec wakes it; the counter resumes where it was (memory kept).
    let woken_at = counter_in_sprite(client, "nap").await;
    assert!(
        woken_at >= frozen_at && woken_at < frozen_at + 20,
        "{frozen_at} → {woken_at}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        counter_in_sprite(client, "nap").await > woken_at,
        "the counter stopped"
    );

    // Cold after 6 s idle: stopped, disk flushed and released.
    wait_status(client, "nap", SpriteStatus::Cold, Duration::from_secs(12)).await;
    // (The status turns cold as the stop begins; SIGTERM's grace and the flush follow.)
    let disk = daemon.data_path().join("layers").join(&id).join("mnt");
    let start = Instant::now();
    while is_mount_point(&disk) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a cold sprite's disk is still mounted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let layout =
        sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap();
    assert!(
        !sprite_sandbox::cgroup::SpriteCgroup::new(layout, &id).exists(),
        "a cold sprite keeps its cgroup"
    );

    // Any call wakes it: the file is there, the process is gone.
    let start = Instant::now();
    let after = counter_in_sprite(client, "nap").await;
    let wake = start.elapsed();
    assert!(after >= woken_at, "lost the count: {after} < {woken_at}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counter_in_sprite(client, "nap").await,
        after,
        "stopped processes ran on"
    );
    assert_eq!(info(client, "nap").await.status, SpriteStatus::Running);
    eprintln!("cold wake + exec: {wake:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_keeps_sprites_awake() {
    let daemon =
        Daemon::start_with("busybox", "warm_after = \"1s\"\ncold_after = \"never\"\n").await;
    let client = &daemon.client;
    create(client, "busy").await;

    // A long command with no output, its client connected: awake throughout.
    let quiet = client.exec("busy", &params(&["sleep", "4"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let life = info(client, "busy").await.lifecycle.unwrap();
    assert_eq!(life.awake_because.len(), 1, "{life:?}");
    assert_eq!(life.awake_because[0].reason, "session");
    stays(
        client,
        "busy",
        SpriteStatus::Running,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(collect(quiet).await.code, 0);
    wait_status(client, "busy", SpriteStatus::Warm, Duration::from_secs(4)).await;

    // A TTY session left attached keeps it awake; detached with its process still
    // running too; once that process exits, the sprite sleeps.
    let mut p = params(&["sh"]);
    p.tty = true;
    p.stdin = true;
    let mut shell = client.exec("busy", &p).await.unwrap();
    let session = match shell.next().await.unwrap() {
        ExecEvent::SessionInfo { session_id, .. } => session_id,
        other => panic!("expected session info, got {other:?}"),
    };
    stays(
        client,
        "busy",
        SpriteStatus::Running,
        Duration::from_secs(2),
    )
    .await;
    drop(shell);
    stays(
        client,
        "busy",
        SpriteStatus::Running,
        Duration::from_secs(2),
    )
    .await;
    let life = info(client, "busy").await.lifecycle.unwrap();
    assert!(life.awake_because.is_empty(), "{life:?}");
    client
        .kill_session("busy", &session, "KILL", "0s", |_| {})
        .await
        .unwrap();
    wait_status(client, "busy", SpriteStatus::Warm, Duration::from_secs(5)).await;

    // A detached non-TTY command does not keep it awake.
    let mut p = params(&["sleep", "30"]);
    p.max_run_after_disconnect_secs = Some(0);
    let mut background = client.exec("busy", &p).await.unwrap();
    assert!(matches!(
        background.next().await.unwrap(),
        ExecEvent::SessionInfo { .. }
    ));
    drop(background);
    wait_status(client, "busy", SpriteStatus::Warm, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_sleep_wake_and_one_wake_for_many_callers() {
    let mut daemon = Daemon::start_with(
        "busybox",
        "warm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = daemon.client.clone();
    create(&client, "deep").await;
    create(&client, "light").await;
    create(&client, "awake").await;
    start_counter(&client, "light").await;

    // Refused while a client uses it, with the reason.
    let open = client
        .exec("deep", &params(&["sleep", "30"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let error = client.sleep("deep", false).await.unwrap_err().to_string();
    assert!(
        error.contains("in use") && error.contains("session"),
        "{error}"
    );
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(
        client.sleep("deep", true).await.unwrap().status,
        SpriteStatus::Cold
    );
    assert_eq!(
        client.sleep("light", false).await.unwrap().status,
        SpriteStatus::Warm
    );
    // Warm is lighter than cold: asking a cold sprite for warm leaves it cold.
    assert_eq!(
        client.sleep("deep", false).await.unwrap().status,
        SpriteStatus::Cold
    );

    // A daemon restart keeps each state (and the warm one's memory).
    let frozen_at = counter_on_host(&daemon, &info(&client, "light").await.id);
    daemon.restart().await;
    assert_eq!(info(&client, "deep").await.status, SpriteStatus::Cold);
    assert_eq!(info(&client, "light").await.status, SpriteStatus::Warm);
    assert_eq!(info(&client, "awake").await.status, SpriteStatus::Running);
    let woken = client.wake("light").await.unwrap();
    assert_eq!(woken.status, SpriteStatus::Running);
    let resumed = counter_in_sprite(&client, "light").await;
    assert!(
        resumed >= frozen_at && resumed < frozen_at + 20,
        "{frozen_at} → {resumed}"
    );

    // Twenty concurrent callers wake a cold sprite once (its create was the first
    // start, the wake the second).
    let calls = (0..20).map(|_| {
        let client = client.clone();
        async move { run(&client, "deep", &["true"]).await.code }
    });
    let codes = futures_util::future::join_all(calls).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
    let wakes = daemon
        .log()
        .lines()
        .filter(|l| l.contains("sprite started") && l.contains("deep"))
        .count();
    assert_eq!(wakes, 2, "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_come_from_the_pool_and_it_refills() {
    let mut daemon = Daemon::start_with(
        "busybox",
        "pool = 2\nstorage = \"spritefs\"\nwarm_after = \"never\"\n",
    )
    .await;
    let client = daemon.client.clone();
    wait_pool(&daemon, 2).await;

    let mut request = sprite_request("pooled");
    request.labels = Some(vec!["team-a".into()]);
    request.environment = Some([("GREETING".to_string(), "hi".to_string())].into());
    request.config = Some(sprite_api::sprite::SpriteConfig {
        ram_mb: Some(256),
        ..Default::default()
    });
    let created = client.create(&request).await.unwrap();
    assert_eq!(created.status, SpriteStatus::Running);
    assert_eq!(created.labels, ["team-a"]);
    assert!(
        daemon.log().contains("sprite created from the pool"),
        "{}",
        daemon.log()
    );
    // It is the new sprite in every way: name, environment, limits.
    let out = run(
        &client,
        "pooled",
        &[
            "sh",
            "-c",
            "hostname; echo $GREETING; grep -c ' pooled$' /etc/hosts",
        ],
    )
    .await;
    assert_eq!(out.stdout(), "pooled\nhi\n1\n", "{out:?}");
    let layout =
        sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap();
    let cgroup = sprite_sandbox::cgroup::SpriteCgroup::new(layout, &created.id);
    let limit = cgroup
        .dirs()
        .iter()
        .find_map(|dir| {
            ["memory.limit_in_bytes", "memory.max"]
                .iter()
                .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
        })
        .unwrap();
    assert_eq!(limit.trim(), (256u64 << 20).to_string());
    // Pooled sprites are nobody's: listing shows only the one taken.
    let names: Vec<String> = client
        .list(None, None)
        .await
        .unwrap()
        .sprites
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["pooled"]);

    // The pool refills; a taken name does not consume a pooled sprite.
    wait_pool(&daemon, 2).await;
    assert!(client.create(&sprite_request("pooled")).await.is_err());
    assert_eq!(pool_ready(&daemon).await, 2);

    // A daemon restart keeps the pooled sprites (still frozen, not made again).
    let before = daemon.sprite_ids().len();
    daemon.restart().await;
    wait_pool(&daemon, 2).await;
    assert_eq!(
        daemon.sprite_ids().len(),
        before,
        "pooled sprites were made again"
    );
    let out = run(&client, "pooled", &["hostname"]).await;
    assert_eq!(out.stdout(), "pooled\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_sends_warm_sprites_cold_longest_idle_first() {
    // More free memory asked for than any host has: the pressure never ends.
    let daemon = Daemon::start_with(
        "busybox",
        "warm_after = \"1s\"\ncold_after = \"never\"\nmin_free_memory_mb = 100000000\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "older").await;
    create(client, "newer").await;
    // Both go warm, then cold one per look (every second), the longest idle first.
    wait_status(client, "older", SpriteStatus::Cold, Duration::from_secs(10)).await;
    let older_cold_since = info(client, "older").await.lifecycle.unwrap().since;
    wait_status(client, "newer", SpriteStatus::Cold, Duration::from_secs(10)).await;
    let newer_cold_since = info(client, "newer").await.lifecycle.unwrap().since;
    assert!(
        older_cold_since <= newer_cold_since,
        "the newer sprite went cold first"
    );
    assert!(daemon.log().contains("memory pressure: cold sleep"));
}
