//! A daemon in a cluster: it joins a real etcd started here, publishes its sprites,
//! leaves when it stops and joins again when it starts. (Placement, forwarding and
//! failover are issue 16's next steps.)
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sprite_cluster::testing::start_etcd;
use sprite_cluster::{Capacity, Cluster, ClusterConfig, HostInfo};
use std::time::{Duration, Instant};

async fn host(observer: &Cluster, id: &str) -> Option<HostInfo> {
    observer
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_joins_publishes_its_sprites_and_leaves() {
    let etcd = start_etcd().unwrap();
    let cluster = etcd.endpoint.replace("http://", "etcd://");
    let config = format!(
        "storage = \"spritefs\"\nwarm_after = \"never\"\ncluster = \"{cluster}\"\nhost_id = \"host-one\"\n{S3_STORE}"
    );
    let mut daemon = Daemon::start_with("busybox", &config).await;
    let observer = Cluster::join(
        ClusterConfig::new(
            vec![etcd.endpoint.clone()],
            "observer",
            "http://127.0.0.1:9",
        ),
        Capacity::default(),
    )
    .await
    .unwrap();
    let joined = host(&observer, "host-one")
        .await
        .unwrap_or_else(|| panic!("host-one is no member\n{}", daemon.log()));
    assert_eq!(
        joined.advertise, daemon.url,
        "advertises its API by default"
    );
    assert!(joined.capacity.free_memory_mb > 0, "{joined:?}");

    // Its sprites show in what it publishes; in a cluster they default to `store`.
    create(&daemon.client, "member").await;
    let info = serde_json::to_value(daemon.client.get("member").await.unwrap()).unwrap();
    assert_eq!(info["storage"]["durability"], "store", "{info}");
    let started = Instant::now();
    loop {
        let seen = host(&observer, "host-one").await.unwrap();
        if seen.capacity.running >= 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stopped, it leaves at once (well before its 5 s lease would run out) ...
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.pid.to_string()])
        .status();
    let stopped = Instant::now();
    while host(&observer, "host-one").await.is_some() {
        assert!(
            stopped.elapsed() < Duration::from_secs(4),
            "host-one still a member after its daemon stopped\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and started again, it is a member again.
    daemon.restart().await;
    assert!(
        host(&observer, "host-one").await.is_some(),
        "{}",
        daemon.log()
    );
    daemon.client.destroy("member").await.unwrap();
}
