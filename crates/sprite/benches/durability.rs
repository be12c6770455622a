//! Durability modes side by side in one run (as root, SpriteFS): a sprite in `local` mode
//! and one in `store` mode on the same daemon, first over a local-directory object store,
//! then over a real S3 server (s3s-fs); the same workloads on the host's own disk.
//! - fsync latency: 4 KiB appends, each followed by an fsync (p50, p99);
//! - untar of a FILES-file tree + sync, and SIZE_MB MiB written + fsync (seconds, and as
//!   a share of the host's disk: host time / sprite time);
//! - how far the store trails a `local` sprite under continuous writes: its
//!   `storage.lag_ms` sampled every 100 ms for 10 s (p50, max), the loss window a lost
//!   host would cost (the host-loss test, `tests/hostloss.rs`, checks it by killing).
//!
//! Run: `sudo ./bench/durability.sh` (FILES=50000 SIZE_MB=1024 APPENDS=300 by default).
//! Results go to stdout and to target/bench/durability.json.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use sprite_api::sprite::{Durability, SpriteConfig};
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    run_bench(bench());
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The workloads, one Python script for the sprite and the host alike. Prints one JSON
/// object: `fsync_ms` (every append's fsync), `untar_s`, `write_s`.
const WORKLOADS: &str = r#"
import io, json, os, random, subprocess, sys, tarfile, time
where, files, size_mb, appends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(where, exist_ok=True)
out = {}
# fsync latency of 4 KiB appends
fd = os.open(os.path.join(where, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
record = b"x" * 4095 + b"\n"
latencies = []
for _ in range(appends):
    os.write(fd, record)
    t = time.perf_counter()
    os.fsync(fd)
    latencies.append((time.perf_counter() - t) * 1000)
os.close(fd)
out["fsync_ms"] = latencies
# untar + sync
random.seed(7)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    for i in range(files):
        data = os.urandom(random.choice([200, 1000, 3000, 8000]))
        info = tarfile.TarInfo(f"pkg{i % 500}/lib/file{i}.js")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
tree = os.path.join(where, "tree.tar")
with open(tree, "wb") as f:
    f.write(buf.getvalue())
    os.fsync(f.fileno())
target = os.path.join(where, "untar")
os.makedirs(target, exist_ok=True)
t = time.perf_counter()
subprocess.run(["tar", "-xf", tree, "-C", target], check=True)
os.sync()
out["untar_s"] = time.perf_counter() - t
# SIZE_MB MiB + fsync: unique, incompressible blocks
chunk = bytearray(os.urandom(1 << 20))
t = time.perf_counter()
with open(os.path.join(where, "big"), "wb") as f:
    for i in range(size_mb):
        chunk[:8] = i.to_bytes(8, "little")
        f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
out["write_s"] = time.perf_counter() - t
print(json.dumps(out))
"#;

/// Appends 4 KiB with an fsync every 5 ms and writes 1 MiB every 50 ms, for `seconds`.
const STEADY_WRITER: &str = r#"
import os, sys, time
end = time.time() + float(sys.argv[1])
fd = os.open("/home/sprite/steady", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
big = os.open("/home/sprite/steady-big", os.O_WRONLY | os.O_CREAT, 0o644)
chunk = bytearray(os.urandom(1 << 20))
i = 0
while time.time() < end:
    os.write(fd, b"y" * 4096)
    os.fsync(fd)
    if i % 10 == 0:
        chunk[:8] = i.to_bytes(8, "little")
        os.pwrite(big, chunk, (i // 10 % 256) << 20)
    i += 1
    time.sleep(0.005)
print(i)
"#;

#[derive(serde::Serialize, Clone, Copy, Default)]
struct Figures {
    fsync_p50_ms: f64,
    fsync_p99_ms: f64,
    untar_s: f64,
    write_s: f64,
}

fn figures(json: &str) -> Figures {
    let value: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("workload output {json:?}: {e}"));
    let latencies: Vec<f64> = value["fsync_ms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    let (p50, p99) = summary(latencies, 0.99);
    Figures {
        fsync_p50_ms: p50,
        fsync_p99_ms: p99,
        untar_s: value["untar_s"].as_f64().unwrap(),
        write_s: value["write_s"].as_f64().unwrap(),
    }
}

fn workload_args() -> [String; 3] {
    [
        setting("FILES", 50_000).to_string(),
        setting("SIZE_MB", 1024).to_string(),
        setting("APPENDS", 300).to_string(),
    ]
}

/// The workloads on the host's own disk (under /var/tmp).
fn on_host() -> Figures {
    let dir = tempfile::Builder::new()
        .prefix("sprite-durability-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let [files, size, appends] = workload_args();
    let out = Command::new("python3")
        .args(["-c", WORKLOADS])
        .arg(dir.path())
        .args([&files, &size, &appends])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    figures(&String::from_utf8_lossy(&out.stdout))
}

async fn in_sprite(daemon: &Daemon, sprite: &str) -> Figures {
    let [files, size, appends] = workload_args();
    let out = run(
        &daemon.client,
        sprite,
        &[
            "python3",
            "-c",
            WORKLOADS,
            "/home/sprite/bench",
            &files,
            &size,
            &appends,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    figures(&out.stdout())
}

/// `storage.lag_ms` of a `local` sprite sampled every 100 ms while it writes steadily.
async fn steady_lag(daemon: &Daemon, sprite: &str) -> (f64, f64) {
    let writer = daemon
        .client
        .exec(sprite, &params(&["python3", "-c", STEADY_WRITER, "10"]))
        .await
        .unwrap();
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let info = daemon.client.get(sprite).await.unwrap();
        if let Some(ms) = info.storage.and_then(|s| s.lag_ms) {
            samples.push(ms as f64);
        }
    }
    let finished = collect(writer).await;
    assert_eq!(
        finished.code,
        0,
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let max = samples.iter().copied().fold(0.0, f64::max);
    let (p50, _) = summary(samples, 0.99);
    (p50, max)
}

async fn create_with(daemon: &Daemon, name: &str, durability: Durability) {
    let request = sprite_api::sprite::CreateSpriteRequest {
        config: Some(SpriteConfig {
            durability: Some(durability),
            ..Default::default()
        }),
        ..sprite_request(name)
    };
    daemon.client.create(&request).await.unwrap();
}

#[derive(serde::Serialize)]
struct StoreRun {
    store: &'static str,
    local: Figures,
    store_mode: Figures,
    local_lag_p50_ms: f64,
    local_lag_max_ms: f64,
}

async fn on_daemon(store: &'static str, extra: &str) -> StoreRun {
    let config = format!("storage = \"spritefs\"\nwarm_after = \"never\"\n{extra}");
    let daemon = Daemon::start_with("debian", &config).await;
    create_with(&daemon, "bench-local", Durability::Local).await;
    create_with(&daemon, "bench-store", Durability::Store).await;
    eprintln!("== {store} store: local mode");
    let local = in_sprite(&daemon, "bench-local").await;
    eprintln!("== {store} store: store mode");
    let store_mode = in_sprite(&daemon, "bench-store").await;
    eprintln!("== {store} store: lag of a local sprite under steady writes");
    let (lag_p50, lag_max) = steady_lag(&daemon, "bench-local").await;
    for name in ["bench-local", "bench-store"] {
        daemon.client.destroy(name).await.unwrap();
    }
    // The storage process's log (with SPRITE_LOG=info,sprite_fs::engine=debug, each
    // pass's timing), kept for a look.
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::copy(
        daemon.data_path().join("storage.log"),
        out.join(format!("durability-storage-{store}.log")),
    );
    StoreRun {
        store,
        local,
        store_mode,
        local_lag_p50_ms: lag_p50,
        local_lag_max_ms: lag_max,
    }
}

async fn bench() {
    eprintln!("== the host's disk");
    let host = on_host();
    // STORES=s3s-fs (or local-directory) runs one of the two.
    let stores = std::env::var("STORES").unwrap_or_else(|_| "local-directory,s3s-fs".into());
    let mut runs = Vec::new();
    for (name, config) in [("local-directory", ""), ("s3s-fs", S3_STORE)] {
        if stores.split(',').any(|wanted| wanted.trim() == name) {
            runs.push(on_daemon(name, config).await);
        }
    }
    println!(
        "\ndurability benchmark ({} files, {} MiB, {} appends; ratios: host time / sprite time)",
        setting("FILES", 50_000),
        setting("SIZE_MB", 1024),
        setting("APPENDS", 300)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8}",
        "", "fsync p50", "fsync p99", "untar s", "vs host", "write s", "vs host"
    );
    let row = |label: &str, f: &Figures| {
        println!(
            "{label:<34} {:>8.2}ms {:>8.2}ms {:>10.2} {:>7.0}% {:>10.2} {:>7.0}%",
            f.fsync_p50_ms,
            f.fsync_p99_ms,
            f.untar_s,
            host.untar_s / f.untar_s * 100.0,
            f.write_s,
            host.write_s / f.write_s * 100.0
        )
    };
    row("host disk", &host);
    for run in &runs {
        row(&format!("{} store, local mode", run.store), &run.local);
        row(&format!("{} store, store mode", run.store), &run.store_mode);
        println!(
            "{:<34} untar {:.0}% of local mode; local-mode lag under steady writes: p50 {:.0} ms, max {:.0} ms",
            format!("{} store", run.store),
            run.local.untar_s / run.store_mode.untar_s * 100.0,
            run.local_lag_p50_ms,
            run.local_lag_max_ms
        );
    }
    println!(
        "goals: local lag ≤ 1000 ms; store fsync p50 ≤ 5 ms on s3s-fs; store untar ≥ 50 % of local"
    );
    write_report(
        "durability",
        &serde_json::json!({ "host": host, "runs": runs }),
    );
}
