//! End to end, as root: services start in `needs` order, restart with backoff, stop
//! sticky, log, survive daemon restarts, and come back after cold sleep.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sprite_api::services::{ServiceInfo, ServiceSpec, ServiceStatus};
use sprite_api::sprite::SpriteStatus;
use sprite_client::Client;
use std::time::{Duration, Instant};

fn spec(script: &str) -> ServiceSpec {
    ServiceSpec {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

async fn put(client: &Client, sprite: &str, name: &str, spec: &ServiceSpec) -> Vec<String> {
    client
        .put_service(sprite, name, spec, Some("1s"), |_| {})
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}:{}", e.kind, e.data.unwrap_or_default().trim()))
        .collect()
}

async fn service(client: &Client, sprite: &str, name: &str) -> ServiceInfo {
    client.service(sprite, name).await.unwrap()
}

async fn wait_for(
    client: &Client,
    sprite: &str,
    name: &str,
    what: &str,
    ok: impl Fn(&ServiceInfo) -> bool,
) -> ServiceInfo {
    let start = Instant::now();
    loop {
        let info = service(client, sprite, name).await;
        if ok(&info) {
            return info;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name}: never {what}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_in_order_restart_with_backoff_and_come_back_after_cold_sleep() {
    let mut daemon = Daemon::start_with(
        "busybox",
        "storage = \"spritefs\"\nwarm_after = \"never\"\ncold_after = \"never\"\nstop_grace = \"1s\"\n",
    )
    .await;
    let client = daemon.client.clone();
    create(&client, "svc").await;

    // Create: the stream shows it start and its first output.
    let events = put(&client, "svc", "db", &spec("echo db up; exec sleep 1000")).await;
    assert!(
        events[0].starts_with("started:db started with pid"),
        "{events:?}"
    );
    assert!(events.contains(&"stdout:db up".to_string()), "{events:?}");
    assert_eq!(events.last().unwrap(), "complete:");
    let api = ServiceSpec {
        needs: vec!["db".into()],
        http_port: Some(8080),
        ..spec("exec sleep 1000")
    };
    put(&client, "svc", "api", &api).await;

    // Bad definitions are refused, saying why.
    let missing = ServiceSpec {
        needs: vec!["nope".into()],
        ..spec("true")
    };
    let error = client
        .put_service("svc", "bad", &missing, None, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("nope") && error.contains("does not exist"),
        "{error}"
    );
    let second_port = ServiceSpec {
        http_port: Some(8080),
        ..spec("sleep 1000")
    };
    let error = client
        .put_service("svc", "other", &second_port, None, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&error, sprite_client::ClientError::Api { status: 409, .. }),
        "{error}"
    );

    // Running, with pids; their runs are not exec sessions.
    let list = client.services("svc").await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["api", "db"]
    );
    assert!(list
        .iter()
        .all(|s| s.state.status == ServiceStatus::Running && s.state.pid.is_some()));
    assert!(client.sessions("svc").await.unwrap().is_empty());
    let logs = client.service_logs("svc", "db", 10).await.unwrap();
    assert_eq!(logs, "db up\n");

    // A run that keeps failing is restarted with growing waits (1 s, 2 s, 4 s...).
    put(&client, "svc", "crash", &spec("echo boom; exit 3")).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let crash = service(&client, "svc", "crash").await;
    assert!(
        (2..=3).contains(&crash.state.restart_count),
        "no backoff: {crash:?}"
    );
    assert_eq!(crash.state.error.as_deref(), Some("exited with code 3"));
    assert!(crash.state.next_restart_at.is_some());
    let boom = client.service_logs("svc", "crash", 100).await.unwrap();
    assert!(boom.matches("boom").count() >= 2, "{boom}");

    // A stop is sticky.
    let events: Vec<String> = client
        .service_action("svc", "crash", "stop", None, |_| {})
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(events.last().map(String::as_str), Some("complete"));
    let stopped = wait_for(&client, "svc", "crash", "stopped", |s| {
        s.state.status == ServiceStatus::Stopped
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        service(&client, "svc", "crash").await.state.restart_count,
        stopped.state.restart_count,
        "a stopped service restarted"
    );

    // A signal reaches it; the run that ends is restarted.
    let api_pid = service(&client, "svc", "api").await.state.pid;
    client.signal_service("svc", "api", "TERM").await.unwrap();
    wait_for(&client, "svc", "api", "restarted", |s| {
        s.state.restart_count == 1 && s.state.pid.is_some() && s.state.pid != api_pid
    })
    .await;

    // A daemon restart leaves them running (sprite-init runs them).
    let db_pid = service(&client, "svc", "db").await.state.pid;
    daemon.restart().await;
    assert_eq!(service(&client, "svc", "db").await.state.pid, db_pid);

    // Cold sleep stops them; the wake starts them again in needs order, except the
    // stopped one.
    assert_eq!(
        client.sleep("svc", true).await.unwrap().status,
        SpriteStatus::Cold
    );
    let woken = client.wake("svc").await.unwrap();
    assert_eq!(woken.status, SpriteStatus::Running);
    wait_for(&client, "svc", "api", "running after the wake", |s| {
        s.state.status == ServiceStatus::Running && s.state.pid.is_some()
    })
    .await;
    assert_eq!(
        service(&client, "svc", "crash").await.state.status,
        ServiceStatus::Stopped
    );
    // Pids count up in the sprite's fresh pid namespace: db was started first.
    let db = service(&client, "svc", "db").await.state.pid.unwrap();
    let api = service(&client, "svc", "api").await.state.pid.unwrap();
    assert!(
        db < api,
        "api (pid {api}) started before db (pid {db}), which it needs"
    );

    // A service another needs cannot be deleted first.
    let error = client
        .delete_service("svc", "db")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("api needs db"), "{error}");
    client.delete_service("svc", "api").await.unwrap();
    client.delete_service("svc", "db").await.unwrap();
    let names: Vec<String> = client
        .services("svc")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["crash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_services_do_not_keep_a_sprite_awake() {
    let daemon =
        Daemon::start_with("busybox", "warm_after = \"1s\"\ncold_after = \"never\"\n").await;
    let client = &daemon.client;
    create(client, "quiet").await;
    put(
        client,
        "quiet",
        "ticker",
        &spec("while :; do sleep 0.1; done"),
    )
    .await;
    let start = Instant::now();
    loop {
        if client.get("quiet").await.unwrap().status == SpriteStatus::Warm {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "a service kept it awake"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Asking about services wakes it; the service is still there, same run.
    let before = client.services("quiet").await.unwrap();
    assert_eq!(before[0].state.status, ServiceStatus::Running);
    assert_eq!(before[0].state.restart_count, 0);
}
