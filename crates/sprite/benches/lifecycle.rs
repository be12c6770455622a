//! Lifecycle benchmark, side by side in one run (as root):
//! - create: API call until the first exec in the new sprite has run, p50/p90;
//! - exec round trip of `true` through the API (WebSocket and plain HTTP), p50/p99;
//! - the floor: `unshare` of the same namespaces + `true`, and `nsenter` into a running
//!   sprite + `true`;
//! - daemon RSS with 50 idle sprites.
//!
//! Run: `sudo ./bench/lifecycle.sh` (or `cargo bench -p sprite --bench lifecycle`).
//! Results go to stdout and to target/bench/lifecycle.json.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn time_command(program: &str, args: &[&str], runs: usize) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new(program).args(args).status().unwrap();
            assert!(status.success(), "{program} {args:?} failed");
            ms(start.elapsed())
        })
        .collect()
}

fn main() {
    run_bench(bench());
}

async fn bench() {
    let image = std::env::var("SPRITE_BENCH_IMAGE").unwrap_or_else(|_| "debian".into());
    let daemon = Daemon::start(&image).await;
    let client = &daemon.client;
    let mut report = serde_json::Map::new();
    report.insert("image".into(), image.clone().into());

    // Create until the first exec can run.
    let mut create = Vec::new();
    let mut create_api = Vec::new();
    for i in 0..20 {
        let name = format!("bench-{i}");
        let start = Instant::now();
        common::create(client, &name).await;
        create_api.push(ms(start.elapsed()));
        let out = run(client, &name, &["true"]).await;
        assert_eq!(out.code, 0);
        create.push(ms(start.elapsed()));
    }

    // Exec round trips.
    let mut exec_ws = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        assert_eq!(run(client, "bench-0", &["true"]).await.code, 0);
        exec_ws.push(ms(start.elapsed()));
    }
    let http = reqwest::Client::new();
    let mut exec_http = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let body = http
            .post(format!("{}/v1/sprites/bench-0/exec?cmd=true", daemon.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.as_ref(), [3, 0]);
        exec_http.push(ms(start.elapsed()));
    }

    // The floor: raw namespaces.
    let unshare = time_command(
        "unshare",
        &[
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "true",
        ],
        50,
    );
    let init_pid = first_init_pid(&daemon);
    let pid = init_pid.to_string();
    let nsenter = time_command(
        "nsenter",
        &[
            "-t",
            &pid,
            "-U",
            "-p",
            "-m",
            "-u",
            "-i",
            "-n",
            "--preserve-credentials",
            "true",
        ],
        50,
    );

    // Daemon memory with 50 idle sprites.
    for i in 20..50 {
        common::create(client, &format!("bench-{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(daemon.pid);

    let rows = [
        ("create → first exec (ms)", summary(create, 0.9)),
        ("create API call only (ms)", summary(create_api, 0.9)),
        ("floor: unshare + true (ms)", summary(unshare, 0.9)),
        ("exec `true` over WebSocket (ms)", summary(exec_ws, 0.99)),
        ("exec `true` over HTTP POST (ms)", summary(exec_http, 0.99)),
        ("floor: nsenter + true (ms)", summary(nsenter, 0.99)),
    ];
    println!(
        "\nsprites lifecycle benchmark (image {image}, {} CPUs)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("{:<36} {:>9} {:>12}", "measure", "p50", "p90 / p99");
    for (name, (p50, tail)) in rows {
        println!("{name:<36} {p50:>9.2} {tail:>12.2}");
        report.insert(name.into(), serde_json::json!({ "p50": p50, "tail": tail }));
    }
    println!(
        "{:<36} {:>9.1}",
        "daemon RSS, 50 idle sprites (MiB)",
        rss as f64 / 1024.0
    );
    report.insert(
        "daemon_rss_mib_50_sprites".into(),
        (rss as f64 / 1024.0).into(),
    );

    for i in 0..50 {
        client.destroy(&format!("bench-{i}")).await.unwrap();
    }
    write_report("lifecycle", &report);
}

fn first_init_pid(daemon: &Daemon) -> u32 {
    let layout =
        sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap();
    for id in daemon.sprite_ids() {
        let cgroup = sprite_sandbox::cgroup::SpriteCgroup::new(layout.clone(), &id);
        if let Some(pid) = cgroup.pids().unwrap().into_iter().min() {
            return pid as u32;
        }
    }
    panic!("no running sprite found");
}
