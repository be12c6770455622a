//! Three daemons on this machine make one cluster: a real etcd and a real S3 server
//! (s3s-fs) started here, each daemon with its own data directory, ports, sprite
//! subnet and host id. Placement, forwarding through every host (API, exec, fs,
//! services, URL proxy), one sprite per raced name, moves, a drain, and a host killed
//! with `kill -9` whose sprites answer through another host with their fsynced data.
#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::*;
use common::*;
use sprite_api::services::ServiceSpec;
use sprite_cluster::testing::start_etcd;
use std::time::{Duration, Instant};

/// The index of the host whose data directory holds sprite `name` now.
async fn holder(hosts: &[Daemon], name: &str) -> Option<usize> {
    let id = hosts[0].client.get(name).await.ok()?.id;
    hosts
        .iter()
        .position(|daemon| daemon.sprite_ids().contains(&id))
}

/// `argv` in sprite `name` through host `via`; every host's log when it fails.
async fn run_via(hosts: &[Daemon], via: usize, name: &str, argv: &[&str]) -> Finished {
    match hosts[via].client.exec(name, &params(argv)).await {
        Ok(stream) => collect(stream).await,
        Err(error) => {
            let logs: Vec<String> = hosts.iter().map(|h| h.log()).collect();
            panic!(
                "exec in {name} through host {via}: {error}\n{}",
                logs.join("\n-----\n")
            );
        }
    }
}

/// [`run_via`], retried while the sprite's host is gone and not yet replaced (503).
async fn run_when_back(hosts: &[Daemon], via: usize, name: &str, argv: &[&str]) -> Finished {
    let started = Instant::now();
    loop {
        match hosts[via].client.exec(name, &params(argv)).await {
            Ok(stream) => return collect(stream).await,
            Err(error)
                if error.status() == Some(503) && started.elapsed() < Duration::from_secs(20) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => {
                let logs: Vec<String> = hosts.iter().map(|h| h.log()).collect();
                panic!(
                    "exec in {name} through host {via}: {error}\n{}",
                    logs.join("\n-----\n")
                );
            }
        }
    }
}

async fn wait_members(daemon: &Daemon, want: usize) {
    let started = Instant::now();
    loop {
        let live = daemon
            .client
            .hosts()
            .await
            .map(|l| l.hosts.len())
            .unwrap_or(0);
        if live == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{live} hosts, not {want}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_place_forward_move_drain_and_fail_over() {
    let etcd = start_etcd().unwrap();
    let cluster = etcd.endpoint.replace("http://", "etcd://");
    let store = SharedStore::start();
    let mut hosts = start_three(&cluster, &store).await;
    wait_members(&hosts[0], 3).await;
    let listed = hosts[1].client.hosts().await.unwrap();
    assert!(
        listed.hosts.iter().any(|h| h.id == "host-b" && h.this_host),
        "{listed:?}"
    );

    // One name raced on all three hosts makes one sprite.
    let race = sprite_request("race");
    let raced =
        futures_util::future::join_all(hosts.iter().map(|daemon| daemon.client.create(&race)))
            .await;
    let made = raced.iter().filter(|r| r.is_ok()).count();
    assert_eq!(made, 1, "{raced:?}");
    for refused in raced.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.status(), Some(409), "{refused}");
    }
    for daemon in &hosts {
        let names: Vec<String> = daemon
            .client
            .list_all(Some("race"))
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["race"]);
    }

    // Placement spreads creates sent to one host.
    for n in 0..6 {
        hosts[0]
            .client
            .create(&sprite_request(&format!("spread-{n}")))
            .await
            .unwrap();
    }
    let mut used = std::collections::BTreeSet::new();
    for n in 0..6 {
        used.insert(holder(&hosts, &format!("spread-{n}")).await.unwrap());
    }
    assert!(used.len() >= 2, "every create went to one host: {used:?}");
    // Any host lists every host's sprites.
    let everything = hosts[2].client.list_all(None).await.unwrap();
    assert_eq!(everything.len(), 8, "{everything:?}");

    // A sprite on host-b answers through every host: exec (WebSocket), a TTY, fs,
    // services and its URL.
    hosts[0]
        .client
        .create(&create_on("remote", "host-b"))
        .await
        .unwrap();
    assert_eq!(holder(&hosts, "remote").await, Some(1));
    for daemon in &hosts {
        let out = run(&daemon.client, "remote", &["echo", "through"]).await;
        assert_eq!((out.code, out.stdout()), (0, "through\n".into()));
    }
    let mut tty = params(&["sh", "-c", "tty >/dev/null && echo on a tty"]);
    tty.tty = true;
    let out = collect(hosts[2].client.exec("remote", &tty).await.unwrap()).await;
    assert!(out.stdout().contains("on a tty"), "{out:?}");
    hosts[2]
        .client
        .fs_write(
            "remote",
            "/home/sprite/www/index.html",
            None,
            true,
            &b"page of remote\n"[..],
        )
        .await
        .unwrap();
    let read = hosts[0]
        .client
        .fs_read("remote", "/home/sprite/www/index.html", None)
        .await
        .unwrap();
    assert_eq!(read.text().await.unwrap(), "page of remote\n");
    let web = ServiceSpec {
        cmd: "httpd".into(),
        args: ["-f", "-p", "127.0.0.1:8080", "-h", "/home/sprite/www"]
            .map(String::from)
            .to_vec(),
        http_port: Some(8080),
        ..Default::default()
    };
    hosts[0]
        .client
        .put_service("remote", "web", &web, None, |_| {})
        .await
        .unwrap();
    let services = hosts[2].client.services("remote").await.unwrap();
    assert_eq!(services.len(), 1, "{services:?}");
    for daemon in [&hosts[0], &hosts[2]] {
        let page = reqwest::Client::new()
            .get(format!("{}/index.html", daemon.proxy_url))
            .header("host", "remote.localhost")
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{}", daemon.log());
        assert_eq!(page.text().await.unwrap(), "page of remote\n");
    }

    // A template of remote (on host-b), asked of host-a, starts a sprite on host-c;
    // every host lists it.
    hosts[2]
        .client
        .checkpoint("remote", Some("web"))
        .await
        .unwrap();
    let template = sprite_api::sprite::CreateTemplateRequest {
        name: "site".into(),
        from: sprite_api::sprite::ForkSource {
            sprite: "remote".into(),
            checkpoint: None,
        },
        comment: None,
    };
    let made = hosts[0].client.create_template(&template).await.unwrap();
    assert_eq!(made.source_sprite, "remote");
    let copy = sprite_api::sprite::CreateSpriteRequest {
        template: Some("site".into()),
        ..create_on("copy", "host-c")
    };
    hosts[0].client.create(&copy).await.unwrap();
    assert_eq!(holder(&hosts, "copy").await, Some(2));
    let out = run_via(&hosts, 1, "copy", &["cat", "/home/sprite/www/index.html"]).await;
    assert_eq!(out.stdout(), "page of remote\n", "{}", hosts[2].log());
    for daemon in &hosts {
        let listed = daemon.client.templates().await.unwrap();
        assert_eq!(listed.templates.len(), 1, "{listed:?}");
    }
    hosts[2].client.delete_template("site").await.unwrap();
    assert!(hosts[0]
        .client
        .templates()
        .await
        .unwrap()
        .templates
        .is_empty());
    hosts[1].client.destroy("copy").await.unwrap();

    // A move keeps the data and the services.
    hosts[0]
        .client
        .create(&create_on("mover", "host-a"))
        .await
        .unwrap();
    let write = "echo moved data > /home/sprite/kept && sync";
    assert_eq!(
        run_via(&hosts, 0, "mover", &["sh", "-c", write]).await.code,
        0
    );
    hosts[0]
        .client
        .put_service("mover", "web", &web, None, |_| {})
        .await
        .unwrap();
    let moved = hosts[1]
        .client
        .move_sprite("mover", Some("host-c"))
        .await
        .unwrap();
    assert_eq!(
        (moved.from.as_str(), moved.to.as_str()),
        ("host-a", "host-c")
    );
    let out = run_via(&hosts, 1, "mover", &["cat", "/home/sprite/kept"]).await;
    assert_eq!(out.stdout(), "moved data\n", "{}", hosts[2].log());
    assert_eq!(
        holder(&hosts, "mover").await,
        Some(2),
        "host-a's log:\n{}",
        hosts[0].log()
    );
    let services = hosts[0].client.services("mover").await.unwrap();
    assert_eq!(services.first().map(|s| s.name.as_str()), Some("web"));
    let bad = hosts[0].client.move_sprite("mover", Some("host-z")).await;
    assert_eq!(bad.err().and_then(|e| e.status()), Some(400));

    // A daemon restarted within its lease keeps its membership and its sprites.
    hosts[0].restart().await;
    wait_members(&hosts[1], 3).await;
    assert!(
        hosts[0]
            .log()
            .contains("rejoined the cluster with the lease of the last run"),
        "{}",
        hosts[0].log()
    );
    assert_eq!(holder(&hosts, "seed").await, Some(0));
    assert_eq!(run_via(&hosts, 1, "seed", &["true"]).await.code, 0);

    // kill -9 of host-b (daemon, storage and sprites): its sprites answer through
    // another host within 10 s, with every acknowledged fsync.
    hosts[1]
        .client
        .create(&create_on("victim", "host-b"))
        .await
        .unwrap();
    let before = "echo checkpointed > /home/sprite/old";
    assert_eq!(
        run_via(&hosts, 1, "victim", &["sh", "-c", before])
            .await
            .code,
        0
    );
    hosts[1]
        .client
        .checkpoint("victim", Some("before the loss"))
        .await
        .unwrap();
    let write = "echo acknowledged > /home/sprite/fsynced && sync";
    assert_eq!(
        run_via(&hosts, 1, "victim", &["sh", "-c", write])
            .await
            .code,
        0
    );
    let on_b: Vec<String> = {
        let mut names = Vec::new();
        for sprite in hosts[0].client.list_all(None).await.unwrap() {
            if holder(&hosts, &sprite.name).await == Some(1) {
                names.push(sprite.name);
            }
        }
        names
    };
    hosts[1].kill_host();
    let killed = Instant::now();
    let answered = loop {
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            hosts[0]
                .client
                .exec("victim", &params(&["cat", "/home/sprite/fsynced"])),
        )
        .await;
        if let Ok(Ok(stream)) = out {
            let out = collect(stream).await;
            if out.code == 0 {
                break (killed.elapsed(), out.stdout());
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "victim never came back\n{}\n{}",
            hosts[0].log(),
            hosts[2].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answered.1, "acknowledged\n");
    assert!(
        answered.0 < Duration::from_secs(10),
        "failover took {:?}",
        answered.0
    );
    // Its checkpoints survive, and fork.
    let checkpoints = hosts[2].client.checkpoints("victim", false).await.unwrap();
    let kept = checkpoints
        .iter()
        .find(|c| c.comment.as_deref() == Some("before the loss"))
        .unwrap_or_else(|| panic!("{checkpoints:?}"));
    hosts[2]
        .client
        .create(&fork_request("heir", "victim", &kept.id))
        .await
        .unwrap();
    let out = run_via(&hosts, 0, "heir", &["cat", "/home/sprite/old"]).await;
    assert_eq!(out.stdout(), "checkpointed\n");
    for name in &on_b {
        let out = run_when_back(&hosts, 2, name, &["true"]).await;
        assert_eq!(out.code, 0, "{name} after failover");
    }
    wait_members(&hosts[0], 2).await;

    // Fencing: host-c paused (SIGSTOP) past its lease while its sprite writes and
    // fsyncs, its sprite taken over by host-a, then host-c resumed: its storage may not
    // publish over the new owner's head, and it drops its stale copy.
    hosts[0]
        .client
        .create(&create_on("fenced", "host-c"))
        .await
        .unwrap();
    let fenced_id = hosts[0].client.get("fenced").await.unwrap().id;
    let first = "echo first > /home/sprite/first && sync";
    assert_eq!(
        run_via(&hosts, 2, "fenced", &["sh", "-c", first])
            .await
            .code,
        0
    );
    // fsync of its own file only: a global sync(2) would wait on the paused host's
    // disk for every host of this one machine.
    let writer = "setsid sh -c 'while true; do date | dd of=/home/sprite/stale conv=fsync 2>/dev/null; sleep 0.1; done' </dev/null >/dev/null 2>&1 &";
    assert_eq!(
        run_via(&hosts, 2, "fenced", &["sh", "-c", writer])
            .await
            .code,
        0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused = host_pids(&hosts[2]);
    signal(&paused, "-STOP");
    let stopped = Instant::now();
    loop {
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            hosts[0]
                .client
                .exec("fenced", &params(&["cat", "/home/sprite/first"])),
        )
        .await;
        match out {
            Ok(Ok(stream)) => {
                let done = collect(stream).await;
                if done.code == 0 {
                    break;
                }
                eprintln!("attempt: {done:?}");
            }
            Ok(Err(error)) => eprintln!("attempt: {error}"),
            Err(_) => eprintln!("attempt timed out"),
        }
        if stopped.elapsed() > Duration::from_secs(30) {
            signal(&paused, "-CONT");
            panic!("fenced was not taken over\n{}", hosts[0].log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let owner = "echo owner | dd of=/home/sprite/owner conv=fsync 2>/dev/null";
    assert_eq!(
        run_via(&hosts, 0, "fenced", &["sh", "-c", owner])
            .await
            .code,
        0
    );
    signal(&paused, "-CONT");
    // host-c notices and drops its copy; nothing it held is published over host-a's.
    let resumed = Instant::now();
    while hosts[2].sprite_ids().contains(&fenced_id.to_string()) {
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "host-c kept its stale copy\n{}",
            hosts[2].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let head_path = store
        .dir()
        .join(format!("sprites/test/volumes/{fenced_id}/head.json"));
    let head: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&head_path).unwrap()).unwrap();
    let epoch = head["epoch"].clone();
    assert!(
        epoch.as_u64().is_some_and(|e| e >= 2),
        "the head in the store is not the new owner's: {epoch}\n{}",
        hosts[2].log()
    );
    assert!(
        hosts[2].log().contains("another host owns this volume now")
            || std::fs::read_to_string(hosts[2].data_path().join("storage.log"))
                .unwrap_or_default()
                .contains("another host owns this volume now"),
        "host-c's storage never tried to publish (the test proves nothing)\n{}",
        std::fs::read_to_string(hosts[2].data_path().join("storage.log")).unwrap_or_default()
    );
    let out = run_via(&hosts, 2, "fenced", &["cat", "/home/sprite/owner"]).await;
    assert_eq!(out.stdout(), "owner\n");
    wait_members(&hosts[0], 2).await;

    // A drain moves everything off host-a and keeps it from taking more.
    let report = hosts[2].client.drain("host-a").await.unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(!report.moved.is_empty(), "{report:?}");
    for moved in &report.moved {
        assert_eq!(moved.to, "host-c", "{report:?}");
    }
    let out = run_via(&hosts, 0, "mover", &["cat", "/home/sprite/kept"]).await;
    assert_eq!(out.stdout(), "moved data\n");
    assert_eq!(holder(&hosts, "mover").await, Some(2));
    let services = hosts[0].client.services("mover").await.unwrap();
    assert_eq!(services.first().map(|s| s.name.as_str()), Some("web"));
    let out = run_via(&hosts, 0, "fenced", &["cat", "/home/sprite/owner"]).await;
    assert_eq!(out.stdout(), "owner\n");
    assert!(
        hosts[0].sprite_ids().is_empty(),
        "{:?}",
        hosts[0].sprite_ids()
    );
    let refused = hosts[2].client.create(&create_on("late", "host-a")).await;
    assert_eq!(refused.err().and_then(|e| e.status()), Some(400));
    let listed = hosts[2].client.hosts().await.unwrap();
    assert!(
        listed.hosts.iter().any(|h| h.id == "host-a" && h.draining),
        "{listed:?}"
    );

    // Every sprite is destroyed through some host; the names are free again.
    for sprite in hosts[2].client.list_all(None).await.unwrap() {
        hosts[2].client.destroy(&sprite.name).await.unwrap();
    }
    let left: Vec<String> = hosts[0]
        .client
        .list_all(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let logs: Vec<String> = hosts.iter().map(|h| h.log()).collect();
    assert!(left.is_empty(), "{left:?}\n{}", logs.join("\n-----\n"));
    drop(hosts);
    drop(etcd);
}
