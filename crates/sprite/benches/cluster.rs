//! A cluster of three daemons on this machine (a real etcd, a real S3 server), measured
//! side by side in one run:
//! - exec `true` round trip on a sprite of host-a, asked of host-a (local) and of
//!   host-b (forwarded), interleaved (p50, p90; goal: forwarding adds ≤ 1 ms p50);
//! - failover: `kill -9` of the host of a sprite (daemon, storage, sprites) to the first
//!   exec that succeeds through another host, KILLS times (p50, max; goal ≤ 10 s); the
//!   killed host is started again (it drops its stale copies) before the next kill;
//! - creates per second, CREATES sprites made by 6 clients at once through host-a, all
//!   pinned to host-a, then spread by placement over the three hosts.
//!
//! Run: `sudo ./bench/cluster.sh` (EXECS=300 KILLS=5 CREATES=24 by default). Results go to
//! stdout and target/bench/cluster.json. Every sprite, host, etcd and S3 server it
//! starts is removed at the end, failed or not.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::cluster::*;
use common::*;
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

#[derive(serde::Serialize)]
struct Report {
    exec_local_p50_ms: f64,
    exec_local_p90_ms: f64,
    exec_forwarded_p50_ms: f64,
    exec_forwarded_p90_ms: f64,
    forwarding_adds_p50_ms: f64,
    failover_s: Vec<f64>,
    failover_p50_s: f64,
    failover_max_s: f64,
    creates_per_s_one_host: f64,
    creates_per_s_three_hosts: f64,
}

async fn exec_ms(daemon: &Daemon, name: &str) -> f64 {
    let begun = Instant::now();
    let out = run(&daemon.client, name, &["true"]).await;
    assert_eq!(out.code, 0);
    ms(begun.elapsed())
}

/// Creates `count` sprites through `via`, six at a time; answers creates per second.
async fn creates_per_second(via: &Daemon, prefix: &str, count: usize, host: Option<&str>) -> f64 {
    let begun = Instant::now();
    let names: Vec<String> = (0..count).map(|n| format!("{prefix}-{n}")).collect();
    for batch in names.chunks(6) {
        let made = futures_util::future::join_all(batch.iter().map(|name| {
            let request = match host {
                Some(host) => create_on(name, host),
                None => sprite_request(name),
            };
            async move { via.client.create(&request).await }
        }))
        .await;
        for result in made {
            result.unwrap();
        }
    }
    let rate = count as f64 / begun.elapsed().as_secs_f64();
    for name in &names {
        via.client.destroy(name).await.unwrap();
    }
    rate
}

async fn bench() {
    let (execs, kills, creates) = (
        setting("EXECS", 300),
        setting("KILLS", 5),
        setting("CREATES", 24),
    );
    let etcd = sprite_cluster::testing::start_etcd().unwrap();
    let cluster = etcd.endpoint.replace("http://", "etcd://");
    let store = SharedStore::start();
    let mut hosts = start_three(&cluster, &store).await;

    // Forwarding: the same sprite asked of its host and of another, interleaved.
    hosts[0]
        .client
        .create(&create_on("near", "host-a"))
        .await
        .unwrap();
    for _ in 0..20 {
        exec_ms(&hosts[0], "near").await;
        exec_ms(&hosts[1], "near").await;
    }
    let (mut local, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..execs {
        local.push(exec_ms(&hosts[0], "near").await);
        forwarded.push(exec_ms(&hosts[1], "near").await);
    }
    let (local_p50, local_p90) = summary(local, 0.9);
    let (forwarded_p50, forwarded_p90) = summary(forwarded, 0.9);
    hosts[0].client.destroy("near").await.unwrap();

    // Creates: one host, then three. Each host made one sprite first (its image and
    // volume template come from the store on its first create).
    for host in ["host-b", "host-c"] {
        let name = format!("warm-{host}");
        hosts[0]
            .client
            .create(&create_on(&name, host))
            .await
            .unwrap();
        hosts[0].client.destroy(&name).await.unwrap();
    }
    let one = creates_per_second(&hosts[0], "one", creates, Some("host-a")).await;
    let three = creates_per_second(&hosts[0], "three", creates, None).await;

    // Failover: kill the host of a sprite, exec through another until it answers.
    let mut failovers = Vec::new();
    for round in 0..kills {
        let victim = round % 3;
        let via = (victim + 1) % 3;
        let name = format!("victim-{round}");
        let host_id = ["host-a", "host-b", "host-c"][victim];
        hosts[via]
            .client
            .create(&create_on(&name, host_id))
            .await
            .unwrap();
        let write = "echo kept > /home/sprite/kept && sync";
        assert_eq!(
            run(&hosts[via].client, &name, &["sh", "-c", write])
                .await
                .code,
            0
        );
        hosts[victim].kill_host();
        let killed = Instant::now();
        loop {
            let asked = tokio::time::timeout(
                Duration::from_secs(5),
                hosts[via]
                    .client
                    .exec(&name, &params(&["cat", "/home/sprite/kept"])),
            )
            .await;
            if let Ok(Ok(stream)) = asked {
                let out = collect(stream).await;
                if out.code == 0 {
                    assert_eq!(out.stdout(), "kept\n");
                    break;
                }
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "{name} never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = killed.elapsed().as_secs_f64();
        println!("failover {round}: {took:.2} s");
        failovers.push(took);
        // The killed host comes back (it drops what was taken from it) for the next.
        hosts[victim].restart().await;
        let begun = Instant::now();
        while hosts[via]
            .client
            .hosts()
            .await
            .map(|l| l.hosts.len())
            .unwrap_or(0)
            < 3
        {
            assert!(
                begun.elapsed() < Duration::from_secs(30),
                "host did not rejoin"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        hosts[via].client.destroy(&name).await.unwrap();
    }
    let (failover_p50, _) = summary(failovers.clone(), 1.0);
    let failover_max = failovers.iter().cloned().fold(0.0, f64::max);

    let report = Report {
        exec_local_p50_ms: local_p50,
        exec_local_p90_ms: local_p90,
        exec_forwarded_p50_ms: forwarded_p50,
        exec_forwarded_p90_ms: forwarded_p90,
        forwarding_adds_p50_ms: forwarded_p50 - local_p50,
        failover_s: failovers,
        failover_p50_s: failover_p50,
        failover_max_s: failover_max,
        creates_per_s_one_host: one,
        creates_per_s_three_hosts: three,
    };
    println!("\n| measure | value | goal |\n|---|---|---|");
    println!("| exec `true`, local (p50 / p90) | {local_p50:.2} / {local_p90:.2} ms | |");
    println!(
        "| exec `true`, forwarded by another host (p50 / p90) | {forwarded_p50:.2} / {forwarded_p90:.2} ms | |"
    );
    println!(
        "| forwarding adds (p50) | {:.2} ms | ≤ 1 ms |",
        forwarded_p50 - local_p50
    );
    println!(
        "| failover, kill -9 → exec through another host (p50 / max of {kills}) | {failover_p50:.2} / {failover_max:.2} s | ≤ 10 s |"
    );
    println!("| creates per second, one host / three ({creates} by 6 clients) | {one:.1} / {three:.1} | |");
    write_report("cluster", &report);
    hosts[0].client.destroy("seed").await.ok();
    drop(hosts);
    drop(etcd);
}
