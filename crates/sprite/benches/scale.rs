//! Create time against the number of sprites on the host, side by side in one run (as
//! root, SpriteFS, no pool): create → first exec on an empty host, then again with
//! `SPRITES` sprites on the host (`WARM` of them asleep warm, the rest running). Per-create
//! work that scans every loop device, nft rule or sprite shows here as growth.
//!
//! Run: `sudo ./bench/scale.sh` (`SPRITES=1000 WARM=800 RUNS=20 PAUSE_MS=0` by default).
//! Results go to stdout and to target/bench/scale.json.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use sprite_client::Client;
use std::time::Instant;

fn main() {
    run_bench(bench());
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `runs` creates until the first exec has run, each sprite destroyed again (and, with
/// `PAUSE_MS`, that long a pause after each destroy, so the kernel's deferred teardown
/// of the last sprite's namespaces is not measured as part of the next create).
async fn creates(client: &Client, tag: &str, runs: usize) -> Vec<f64> {
    let pause = std::time::Duration::from_millis(setting("PAUSE_MS", 0) as u64);
    let mut samples = Vec::new();
    for i in 0..runs {
        tokio::time::sleep(pause).await;
        let name = format!("probe-{tag}-{i}");
        let start = Instant::now();
        create(client, &name).await;
        assert_eq!(run(client, &name, &["true"]).await.code, 0);
        samples.push(ms(start.elapsed()));
        client.destroy(&name).await.unwrap();
    }
    samples
}

/// With `PERF=1`, a system-wide `perf record -g` of one phase's creates (and of the
/// idle window with the host full), written to `target/bench/scale-<phase>.perf` (compare the two with `perf report -i`); stopped
/// (SIGINT, so perf writes its file) when dropped.
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(phase: &str) -> Profile {
        if std::env::var("PERF").as_deref() != Ok("1") {
            return Profile(None);
        }
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../target/bench/scale-{phase}.perf"));
        let child = std::process::Command::new("perf")
            .args(["record", "-q", "-a", "-g", "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|error| eprintln!("PERF=1 but perf does not start: {error}"))
            .ok();
        // perf needs a moment before it records.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Profile(child)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// Total and idle jiffies of all CPUs, from /proc/stat.
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (fields.iter().sum(), idle)
}

/// CPU seconds (user + system) a process and its threads used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

/// The storage process of a daemon (its child running `sprite storage`).
fn storage_pid(daemon_pid: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{daemon_pid}/task/{daemon_pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("storage"))
                .unwrap_or(false)
        })
}

/// What the daemon and the storage process use of a CPU while nothing is asked of
/// them (percent of one CPU, over `window`): the per-sprite background work.
async fn idle_cpu_percent(daemon_pid: u32, window: std::time::Duration) -> (f64, f64) {
    let storage = storage_pid(daemon_pid);
    let before = (cpu_seconds(daemon_pid), storage.map_or(0.0, cpu_seconds));
    tokio::time::sleep(window).await;
    let after = (cpu_seconds(daemon_pid), storage.map_or(0.0, cpu_seconds));
    let seconds = window.as_secs_f64();
    (
        (after.0 - before.0) / seconds * 100.0,
        (after.1 - before.1) / seconds * 100.0,
    )
}

/// Waits until the storage process has uploaded nothing for `quiet` (the `put`s of
/// `/metrics` stand still), or `limit`. An empty upload queue is not enough: the
/// kernel writes a file's dirty pages back up to 30 s after they were written, so the
/// fill's data keeps arriving at the sprites' disks for a while after it ends.
async fn wait_for_uploads(daemon: &Daemon, quiet: std::time::Duration, limit: std::time::Duration) {
    let puts = || async {
        let response = reqwest::Client::new()
            .get(format!("{}/metrics", daemon.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?;
        let text = response.text().await.ok()?;
        text.lines()
            .find_map(|line| {
                line.strip_prefix("sprites_store_operations_total{operation=\"put\"} ")
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let start = Instant::now();
    let mut last = (puts().await, Instant::now());
    while start.elapsed() < limit {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = puts().await;
        if now != last.0 || now.is_none() {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= quiet {
            return;
        }
    }
    eprintln!("the storage process still uploads after {limit:?}; measuring anyway");
}

/// Waits for the host to be quiet before a phase: the storage process has uploaded
/// nothing for 10 s, then the CPUs are idle. The CPUs alone are a loose sign: the
/// storage process hashing and uploading the last of a fill left them 80-85 % idle.
async fn settle(daemon: &Daemon) {
    wait_for_uploads(
        daemon,
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(600),
    )
    .await;
    wait_for_idle_cpu(0.85, std::time::Duration::from_secs(300)).await;
}

/// Waits until the CPUs were at least `fraction` idle over two seconds (or `limit`).
async fn wait_for_idle_cpu(fraction: f64, limit: std::time::Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let (total, idle) = cpu_times();
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let (total_after, idle_after) = cpu_times();
        let busy = (total_after - total).max(1);
        if (idle_after - idle) as f64 / busy as f64 >= fraction {
            return;
        }
    }
    eprintln!("the CPUs did not settle within {limit:?}; measuring anyway");
}

async fn bench() {
    let image = std::env::var("SPRITE_BENCH_IMAGE").unwrap_or_else(|_| "debian".into());
    let sprites = setting("SPRITES", 1000);
    let warm = setting("WARM", 800).min(sprites);
    let runs = setting("RUNS", 20).max(1);
    let config = format!(
        "storage = \"spritefs\"\nwarm_after = \"never\"\ncold_after = \"never\"\n\
         max_sprites = {}\ncreates_per_minute = 100000\nnetwork = \"10.200.0.0/19\"\n",
        sprites + runs + 8
    );
    let daemon = Daemon::start_with(&image, &config).await;
    let client = &daemon.client;
    // The first create formats the volume template and mounts the image: not measured.
    creates(client, "warmup", 2).await;
    // Both phases start with the storage process quiet (see after the fill).
    settle(&daemon).await;
    let profile = Profile::start("empty");
    let empty = creates(client, "empty", runs).await;
    drop(profile);
    let idle_window = std::time::Duration::from_secs(10);
    let idle_empty = idle_cpu_percent(daemon.pid, idle_window).await;

    let filled = Instant::now();
    for i in 0..sprites {
        create(client, &format!("fill-{i}")).await;
        if (i + 1) % 100 == 0 {
            eprintln!("{} sprites on the host", i + 1);
        }
    }
    for i in 0..warm {
        client.sleep(&format!("fill-{i}"), false).await.unwrap();
    }
    let fill_seconds = filled.elapsed().as_secs_f64();
    // Filling wrote gigabytes the storage process still compresses and uploads; the
    // steady state with that many sprites is measured, not the tail of the fill.
    let settled = Instant::now();
    settle(&daemon).await;
    let settle_seconds = settled.elapsed().as_secs_f64();
    let profile = Profile::start("idle-full");
    let idle_full = idle_cpu_percent(daemon.pid, idle_window).await;
    drop(profile);
    eprintln!("{sprites} sprites on the host, {warm} warm: measuring");
    let profile = Profile::start("full");
    let full = creates(client, "full", runs).await;
    drop(profile);

    let (empty_p50, empty_p90) = summary(empty, 0.9);
    let (full_p50, full_p90) = summary(full, 0.9);
    let growth = (full_p50 / empty_p50 - 1.0) * 100.0;
    println!(
        "\nsprites scale benchmark (image {image}, {} CPUs, {runs} creates each, no pool, {} ms between creates)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        setting("PAUSE_MS", 0)
    );
    println!(
        "{:<52} {:>9} {:>9}",
        "create → first exec (ms)", "p50", "p90"
    );
    println!("{:<52} {empty_p50:>9.2} {empty_p90:>9.2}", "empty host");
    let label = format!("{sprites} sprites on the host ({warm} warm)");
    println!("{label:<52} {full_p50:>9.2} {full_p90:>9.2}");
    println!("growth of the p50: {growth:+.1} % (goal: within 20 %)");
    println!(
        "filling the host took {fill_seconds:.1} s, then {settle_seconds:.1} s until its uploads were done and the CPUs idle"
    );
    println!(
        "idle CPU (% of one CPU over {} s): daemon {:.1} empty, {:.1} full; storage {:.1} empty, {:.1} full",
        idle_window.as_secs(),
        idle_empty.0,
        idle_full.0,
        idle_empty.1,
        idle_full.1
    );
    // The daemon logs each create's phases (`sprite started ... mount_ms sandbox_ms
    // network_ms`); kept for a look at where time goes.
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("scale-daemon.log"), daemon.log());
    write_report(
        "scale",
        &serde_json::json!({
            "image": image,
            "sprites": sprites,
            "warm": warm,
            "empty_ms": { "p50": empty_p50, "p90": empty_p90 },
            "full_ms": { "p50": full_p50, "p90": full_p90 },
            "growth_percent": growth,
            "pause_ms": setting("PAUSE_MS", 0),
            "idle_cpu_percent": {
                "daemon": { "empty": idle_empty.0, "full": idle_full.0 },
                "storage": { "empty": idle_empty.1, "full": idle_full.1 },
            },
        }),
    );
}
