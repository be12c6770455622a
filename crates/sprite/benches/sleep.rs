//! Sleep, wake and pool benchmark, side by side in one run (as root, SpriteFS):
//! - create until the first exec has run: from the pool, without a pool, and the floor
//!   (`unshare` of the same namespaces + `true`);
//! - wake from warm (the API call, and an exec on a warm sprite against one on a
//!   running sprite);
//! - wake from cold until the first exec has run, and until an HTTP server inside (a
//!   service the wake starts) answers;
//! - memory of 100 warm sprites (their cgroups), and what 100 cold sprites still hold
//!   (cgroups, mounts, loop devices, processes, and the daemon's RSS per sprite).
//!
//! Run: `sudo ./bench/sleep.sh` (or `cargo bench -p sprite --bench sleep`).
//! Results go to stdout and to target/bench/sleep.json.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use sprite_api::services::ServiceSpec;
use sprite_api::sprite::SpriteStatus;
use sprite_client::Client;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    run_bench(bench());
}

/// Create until the first exec has run.
async fn create_then_exec(client: &Client, name: &str) -> f64 {
    let start = Instant::now();
    create(client, name).await;
    assert_eq!(run(client, name, &["true"]).await.code, 0);
    ms(start.elapsed())
}

fn layout() -> sprite_sandbox::cgroup::Layout {
    sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap()
}

async fn bench() {
    let image = std::env::var("SPRITE_BENCH_IMAGE").unwrap_or_else(|_| "debian".into());
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let config = "storage = \"spritefs\"\nwarm_after = \"never\"\ncold_after = \"never\"\n";
    let mut report = serde_json::Map::new();
    report.insert("image".into(), image.clone().into());

    // Create with the pool (each create waits for the pool to be full again, as a
    // create would on a host that is not creating back to back).
    let pooled = Daemon::start_with(&image, &format!("pool = 2\n{config}")).await;
    let mut from_pool = Vec::new();
    for i in 0..runs {
        wait_pool(&pooled, 2).await;
        from_pool.push(create_then_exec(&pooled.client, &format!("pool-bench-{i}")).await);
    }
    assert!(
        pooled.log().contains("sprite created from the pool"),
        "creates did not come from the pool"
    );
    drop(pooled);

    let daemon = Daemon::start_with(&image, config).await;
    let client = &daemon.client;
    let mut no_pool = Vec::new();
    for i in 0..runs {
        no_pool.push(create_then_exec(client, &format!("bench-{i}")).await);
    }
    let floor: Vec<f64> = (0..50)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new("unshare")
                .args([
                    "--user",
                    "--map-root-user",
                    "--pid",
                    "--fork",
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--net",
                    "true",
                ])
                .status()
                .unwrap();
            assert!(status.success());
            ms(start.elapsed())
        })
        .collect();

    // Warm wake.
    let mut wake_api = Vec::new();
    let mut exec_warm = Vec::new();
    let mut exec_running = Vec::new();
    for _ in 0..runs {
        client.sleep("bench-0", false).await.unwrap();
        let start = Instant::now();
        assert_eq!(
            client.wake("bench-0").await.unwrap().status,
            SpriteStatus::Running
        );
        wake_api.push(ms(start.elapsed()));
        client.sleep("bench-0", false).await.unwrap();
        let start = Instant::now();
        assert_eq!(run(client, "bench-0", &["true"]).await.code, 0);
        exec_warm.push(ms(start.elapsed()));
        let start = Instant::now();
        assert_eq!(run(client, "bench-0", &["true"]).await.code, 0);
        exec_running.push(ms(start.elapsed()));
    }

    // Cold wake until the first exec has run.
    let mut cold_exec = Vec::new();
    for _ in 0..runs {
        client.sleep("bench-1", true).await.unwrap();
        let start = Instant::now();
        assert_eq!(run(client, "bench-1", &["true"]).await.code, 0);
        cold_exec.push(ms(start.elapsed()));
    }

    // Cold wake until an HTTP server inside (a service, started by the wake) answers:
    // the exec that probes it is what wakes the sprite.
    let web = ServiceSpec {
        cmd: "python3".into(),
        args: ["-m", "http.server", "8080", "--bind", "127.0.0.1"]
            .map(String::from)
            .to_vec(),
        http_port: Some(8080),
        ..Default::default()
    };
    client
        .put_service("bench-2", "web", &web, None, |_| {})
        .await
        .unwrap();
    let probe = "until exec 3<>/dev/tcp/127.0.0.1/8080; do sleep 0.005; done 2>/dev/null; \
                 printf 'GET / HTTP/1.0\r\n\r\n' >&3; head -c 12 <&3";
    let answer = run(client, "bench-2", &["bash", "-c", probe]).await;
    assert!(answer.stdout().starts_with("HTTP/1.0 200"), "{answer:?}");
    let mut cold_http = Vec::new();
    for _ in 0..runs {
        client.sleep("bench-2", true).await.unwrap();
        let start = Instant::now();
        let answer = run(client, "bench-2", &["bash", "-c", probe]).await;
        cold_http.push(ms(start.elapsed()));
        assert!(answer.stdout().starts_with("HTTP/1.0 200"), "{answer:?}");
    }
    client.delete_service("bench-2", "web").await.unwrap();

    // 100 warm sprites: the memory their cgroups hold.
    let rss_before = rss_kib(daemon.pid);
    for i in runs..100 {
        create(client, &format!("bench-{i}")).await;
    }
    let names: Vec<String> = (0..100).map(|i| format!("bench-{i}")).collect();
    for name in &names {
        client.sleep(name, false).await.unwrap();
    }
    let mut warm_bytes = 0u64;
    for name in &names {
        let id = client.get(name).await.unwrap().id;
        warm_bytes += sprite_sandbox::cgroup::SpriteCgroup::new(layout(), &id)
            .memory_current()
            .unwrap_or(0);
    }

    // The same 100 cold: what is left of them outside the daemon's bookkeeping.
    for name in &names {
        client.sleep(name, true).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: Vec<String> = daemon.sprite_ids();
    let cgroups_left = ids
        .iter()
        .filter(|id| sprite_sandbox::cgroup::SpriteCgroup::new(layout(), id).exists())
        .count();
    let data = daemon.data_path().to_string_lossy().to_string();
    let mounts_left = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("{data}/layers/")))
        .count();
    let loops = String::from_utf8_lossy(
        &Command::new("losetup")
            .args(["-n", "-O", "BACK-FILE"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    let loops_left = loops
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
        .count();
    let rss_cold = rss_kib(daemon.pid);
    let rss_per_cold = (rss_cold.saturating_sub(rss_before) as f64 * 1024.0) / 100.0;

    let rows = [
        (
            "create → first exec, from the pool (ms)",
            summary(from_pool, 0.9),
        ),
        ("create → first exec, no pool (ms)", summary(no_pool, 0.9)),
        ("floor: unshare + true (ms)", summary(floor, 0.9)),
        ("wake from warm, API call (ms)", summary(wake_api, 0.9)),
        ("exec `true` on a warm sprite (ms)", summary(exec_warm, 0.9)),
        (
            "exec `true` on a running sprite (ms)",
            summary(exec_running, 0.9),
        ),
        ("wake from cold → first exec (ms)", summary(cold_exec, 0.9)),
        (
            "wake from cold → HTTP service answers (ms)",
            summary(cold_http, 0.9),
        ),
    ];
    println!(
        "\nsprites sleep/wake/pool benchmark (image {image}, SpriteFS, {} CPUs)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("{:<42} {:>9} {:>9}", "measure", "p50", "p90");
    for (name, (p50, tail)) in rows {
        println!("{name:<42} {p50:>9.2} {tail:>9.2}");
        report.insert(name.into(), serde_json::json!({ "p50": p50, "p90": tail }));
    }
    let warm_mib = warm_bytes as f64 / 100.0 / 1048576.0;
    println!(
        "{:<42} {:>9.2}",
        "memory per warm sprite (MiB, cgroup)", warm_mib
    );
    println!(
        "{:<42} {:>9}",
        "cold sprites: cgroups / mounts / loops left",
        format!("{cgroups_left} / {mounts_left} / {loops_left}")
    );
    println!(
        "{:<42} {:>9.0}",
        "daemon RSS per cold sprite (bytes)", rss_per_cold
    );
    report.insert("warm_sprite_mib".into(), warm_mib.into());
    report.insert("cold_cgroups_left".into(), cgroups_left.into());
    report.insert("cold_mounts_left".into(), mounts_left.into());
    report.insert("cold_loops_left".into(), loops_left.into());
    report.insert(
        "daemon_rss_bytes_per_cold_sprite".into(),
        rss_per_cold.into(),
    );

    for name in &names {
        client.destroy(name).await.unwrap();
    }
    write_report("sleep", &report);
}
