//! Membership and the directory against a real etcd started here (Debian's
//! `etcd-server`; `.ci/run` installs it). No mocks of etcd.
#![allow(clippy::unwrap_used)]

use sprite_cluster::testing::{start_etcd, Etcd};
use sprite_cluster::{Capacity, Cluster, ClusterConfig, ClusterError};
use std::time::{Duration, Instant};

fn config(etcd: &Etcd, host: &str) -> ClusterConfig {
    ClusterConfig {
        lease_ttl: Duration::from_secs(2),
        ..ClusterConfig::new(
            vec![etcd.endpoint.clone()],
            host,
            &format!("http://{host}:8080"),
        )
    }
}

async fn join(etcd: &Etcd, host: &str) -> Cluster {
    Cluster::join(config(etcd, host), Capacity::default(), None)
        .await
        .unwrap()
}

async fn host_ids(cluster: &Cluster) -> Vec<String> {
    let mut ids: Vec<String> = cluster
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_join_publish_and_leave_with_their_lease() {
    let etcd = start_etcd().unwrap();
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    assert_eq!(host_ids(&a).await, ["a", "b"]);
    // One live member per id.
    match Cluster::join(config(&etcd, "a"), Capacity::default(), None).await {
        Err(ClusterError::HostTaken(id)) => assert_eq!(id, "a"),
        other => panic!("a second host a joined: {other:?}"),
    }
    let capacity = Capacity {
        free_memory_mb: 4096,
        running: 3,
        warm: 2,
        cold: 1,
    };
    b.publish(capacity.clone(), true).await.unwrap();
    let seen = a.hosts().await.unwrap();
    let seen_b = seen.iter().find(|h| h.id == "b").unwrap();
    assert_eq!((&seen_b.capacity, seen_b.draining), (&capacity, true));
    // The heartbeat outlives the lease's TTL many times over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(host_ids(&a).await, ["a", "b"]);
    assert!(!*a.lease_lost().borrow());
    // Leaving revokes at once; a host that just stops goes when its lease expires.
    b.leave().await.unwrap();
    assert_eq!(host_ids(&a).await, ["a"]);
    let c = join(&etcd, "c").await;
    drop(c);
    assert_eq!(host_ids(&a).await, ["a", "c"]);
    let started = Instant::now();
    while host_ids(&a).await.contains(&"c".to_string()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "c never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "c left too soon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_raced_on_three_hosts_makes_one_sprite() {
    let etcd = start_etcd().unwrap();
    let mut hosts = Vec::new();
    for id in ["h1", "h2", "h3"] {
        hosts.push(join(&etcd, id).await);
    }
    for round in 0..10 {
        let name = format!("race-{round}");
        let (r1, r2, r3) = tokio::join!(
            hosts[0].claim_name("org", &name),
            hosts[1].claim_name("org", &name),
            hosts[2].claim_name("org", &name),
        );
        let results = [r1, r2, r3];
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = &winners[0].placement;
        assert_eq!(winner.epoch, 1);
        for result in &results {
            if let Err(error) = result {
                match error {
                    ClusterError::NameTaken { owner, .. } => assert_eq!(owner, &winner.owner),
                    other => panic!("round {round}: {other}"),
                }
            }
        }
        let found = hosts[1].lookup("org", &name).await.unwrap().unwrap();
        assert_eq!(&found.placement, winner);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_bumps_the_epoch_and_a_stale_one_loses() {
    let etcd = start_etcd().unwrap();
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let c = join(&etcd, "c").await;
    let made = a.claim_name("org", "s").await.unwrap();
    a.claim_name("org", "t").await.unwrap();
    assert_eq!(b.sprites_of("a").await.unwrap().len(), 2);
    // b and c both saw a's entry and race to claim it: one wins, with epoch 2.
    let seen = b.lookup("org", "s").await.unwrap().unwrap();
    let (by_b, by_c) = tokio::join!(b.take_over(&seen), c.take_over(&seen));
    let winner = match (by_b, by_c) {
        (Ok(entry), Err(ClusterError::Changed { .. }))
        | (Err(ClusterError::Changed { .. }), Ok(entry)) => entry,
        other => panic!("{other:?}"),
    };
    assert_eq!(winner.placement.epoch, 2);
    // a, with what it read before, can neither take it back nor delete it.
    assert!(matches!(
        a.take_over(&made).await,
        Err(ClusterError::Changed { .. })
    ));
    assert!(matches!(
        a.release(&made).await,
        Err(ClusterError::Changed { .. })
    ));
    let now = a.lookup("org", "s").await.unwrap().unwrap();
    assert_eq!(now, winner);
    // The owner releases it with what it holds.
    let owner = if winner.placement.owner == "b" {
        &b
    } else {
        &c
    };
    owner.release(&winner).await.unwrap();
    assert!(a.lookup("org", "s").await.unwrap().is_none());
    assert_eq!(a.sprites_of("a").await.unwrap().len(), 1);
}
