//! End to end, as root: a real daemon, real sandboxes (busybox image), the typed client.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sprite_client::ExecEvent;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_tty_reattach_destroy() {
    let daemon = Daemon::start("busybox").await;
    let client = &daemon.client;
    create(client, "life").await;
    // The sprite was forked by the daemon's launch server, not by a launcher process
    // the daemon spawned for it (one start right after the daemon's own may fall back).
    create(client, "second").await;
    let log = daemon.log();
    assert!(
        log.matches("the launch server is not there").count() <= 1,
        "{log}"
    );
    // The server is the daemon's child; sprites' PID 1s (forked from it) show the same
    // command line but belong to no one.
    assert!(daemon.data.path().join("launcher.sock").exists());
    let pattern = "init --serve";
    let parent = daemon.pid.to_string();
    let server = std::process::Command::new("pgrep")
        .args(["-P", &parent, "-f", pattern])
        .output()
        .unwrap();
    assert!(!server.stdout.is_empty(), "no launch server runs");
    client.destroy("second").await.unwrap();
    // Without its launch server a start still works (a launcher process), and the
    // server is started again.
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-P", &parent, "-f", pattern])
        .status();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = daemon
        .log()
        .matches("the launch server is not there")
        .count();
    create(client, "third").await;
    assert_eq!(
        daemon
            .log()
            .matches("the launch server is not there")
            .count(),
        before + 1
    );
    let again = std::process::Command::new("pgrep")
        .args(["-P", &parent, "-f", pattern])
        .output()
        .unwrap();
    assert!(
        !again.stdout.is_empty(),
        "the launch server was not started again"
    );
    client.destroy("third").await.unwrap();
    // PID 1's command line, readable in the sprite, names no host path.
    let cmdline = run(client, "life", &["cat", "/proc/1/cmdline"]).await;
    let data = daemon.data.path().display().to_string();
    assert!(!cmdline.stdout().contains(&data), "{:?}", cmdline.stdout());
    // The sprite started before the server was killed runs on.
    assert_eq!(run(client, "life", &["true"]).await.code, 0);

    let out = run(client, "life", &["sh", "-c", "echo out; echo err >&2"]).await;
    assert_eq!(out.stdout(), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.code, 0);
    for code in [1, 42, 255] {
        let out = run(client, "life", &["sh", "-c", &format!("exit {code}")]).await;
        assert_eq!(out.code, code);
    }
    // A process killed by a signal reports 128 + the signal.
    let out = run(client, "life", &["sh", "-c", "kill -TERM $$"]).await;
    assert_eq!(out.code, 143);
    // A signal frame from the client reaches the process.
    let mut stream = client
        .exec("life", &params(&["sleep", "30"]))
        .await
        .unwrap();
    assert!(matches!(
        stream.next().await.unwrap(),
        ExecEvent::SessionInfo { .. }
    ));
    stream.signal("INT").await.unwrap();
    assert_eq!(collect(stream).await.code, 130);
    // Stdin in, EOF, binary-safe out.
    let mut p = params(&["cat"]);
    p.stdin = true;
    let mut stream = client.exec("life", &p).await.unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    for chunk in payload.chunks(60_000) {
        stream.send_stdin(chunk).await.unwrap();
    }
    stream.send_eof().await.unwrap();
    let out = collect(stream).await;
    assert_eq!(out.code, 0);
    assert!(
        out.stdout == payload,
        "cat returned {} bytes",
        out.stdout.len()
    );
    // A missing program fails like a shell would.
    assert_eq!(run(client, "life", &["no-such-program"]).await.code, 127);

    // TTY: a pts device, and resize reaches the terminal.
    let mut p = params(&["sh", "-c", "tty; stty size; read x; stty size"]);
    p.tty = true;
    p.stdin = true;
    p.cols = 100;
    p.rows = 30;
    let mut stream = client.exec("life", &p).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("30 100") {
        if let ExecEvent::Stdout(d) = stream.next().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&d));
        }
    }
    assert!(seen.contains("/dev/pts/"), "{seen}");
    stream.resize(120, 40).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.send_stdin(b"\n").await.unwrap();
    let out = collect(stream).await;
    assert!(out.stdout().contains("40 120"), "{}", out.stdout());

    // Detach from a TTY session and re-attach: output is replayed, input still works.
    let mut p = params(&["sh", "-c", "echo before-detach; read line; echo got-$line"]);
    p.tty = true;
    p.stdin = true;
    let mut stream = client.exec("life", &p).await.unwrap();
    let session = match stream.next().await.unwrap() {
        ExecEvent::SessionInfo { session_id, tty } => {
            assert!(tty);
            session_id
        }
        other => panic!("expected session_info, got {other:?}"),
    };
    let mut seen = String::new();
    while !seen.contains("before-detach") {
        if let ExecEvent::Stdout(d) = stream.next().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&d));
        }
    }
    stream.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sessions = client.sessions("life").await.unwrap();
    assert!(sessions
        .iter()
        .any(|s| s.id == session && s.is_active && s.tty));
    let mut stream = client.attach("life", &session).await.unwrap();
    stream.send_stdin(b"again\n").await.unwrap();
    let out = collect(stream).await;
    assert!(
        out.stdout().contains("before-detach"),
        "replay missing: {}",
        out.stdout()
    );
    assert!(out.stdout().contains("got-again"), "{}", out.stdout());
    assert_eq!(out.code, 0);

    // Kill of an exited session is 410.
    let error = client
        .kill_session("life", &session, "TERM", "10s", |_| {})
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(410));

    client.destroy("life").await.unwrap();
    assert_eq!(client.get("life").await.unwrap_err().status(), Some(404));
    assert!(
        daemon.sprite_ids().is_empty(),
        "state left behind: {:?}",
        daemon.sprite_ids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_daemon_restart() {
    let mut daemon = Daemon::start("busybox").await;
    create(&daemon.client, "keep").await;
    let mut p = params(&["sh", "-c", "echo started; read x; echo resumed-$x"]);
    p.stdin = true;
    p.max_run_after_disconnect_secs = Some(0);
    let mut stream = daemon.client.exec("keep", &p).await.unwrap();
    let session = match stream.next().await.unwrap() {
        ExecEvent::SessionInfo { session_id, .. } => session_id,
        other => panic!("{other:?}"),
    };
    daemon.restart().await;
    drop(stream);
    let info = daemon.client.get("keep").await.unwrap();
    assert_eq!(info.status.as_str(), "running");
    assert!(daemon.log().contains("adopted=1"), "{}", daemon.log());
    let mut stream = daemon.client.attach("keep", &session).await.unwrap();
    stream.send_stdin(b"yes\n").await.unwrap();
    stream.send_eof().await.unwrap();
    let out = collect(stream).await;
    assert!(
        out.stdout().contains("started") && out.stdout().contains("resumed-yes"),
        "{}",
        out.stdout()
    );
    daemon.client.destroy("keep").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let daemon = Daemon::start("busybox").await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", daemon.url);
    let auth = format!("Bearer {TOKEN}");

    let response = http.get(url("/v1/sprites")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "authentication failed");

    for name in ["Bad", "-x", "a_b", "", &"a".repeat(64)] {
        let response = http
            .post(url("/v1/sprites"))
            .header("authorization", &auth)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "name {name:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("sprite name"),
            "{body}"
        );
    }
    let response = http
        .post(url("/v1/sprites"))
        .header("authorization", &auth)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );
    assert!(response_has_version(&http, &url("/healthz")).await);

    let response = http
        .get(url("/v1/sprites/ghost"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "sprite not found");

    create(&daemon.client, "dup").await;
    let response = http
        .post(url("/v1/sprites"))
        .header("authorization", &auth)
        .json(&serde_json::json!({ "name": "dup" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["name"], "dup");
    assert_eq!(daemon.client.list_all(None).await.unwrap().len(), 1);

    let response = http
        .get(url("/v1/sprites/dup/exec?cmd=true&cols=abc"))
        .header("authorization", &auth)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http
        .get(url("/v1/sprites?max_results=abc"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A frame over the limit closes the socket; the daemon stays up.
    let mut p = params(&["cat"]);
    p.stdin = true;
    let mut stream = daemon.client.exec("dup", &p).await.unwrap();
    let big = vec![b'x'; 2 * 1024 * 1024];
    let _ = stream.send_stdin(&big).await;
    let mut closed = false;
    for _ in 0..10 {
        match stream.next().await {
            Err(_) => {
                closed = true;
                break;
            }
            Ok(ExecEvent::Exit(_)) => break,
            Ok(_) => {}
        }
    }
    assert!(closed, "oversize frame was accepted");
    assert!(daemon.client.health().await.is_ok());
    daemon.client.destroy("dup").await.unwrap();
}

async fn response_has_version(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .send()
        .await
        .unwrap()
        .headers()
        .contains_key("sprite-version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_and_prefixes() {
    let daemon = Daemon::start("busybox").await;
    for name in ["pa-1", "pa-2", "pb-1"] {
        create(&daemon.client, name).await;
    }
    let list = daemon.client.list(Some("pa-"), None).await.unwrap();
    assert_eq!(
        list.sprites
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["pa-1", "pa-2"]
    );
    assert!(!list.has_more);
    let page = daemon.get_json("/v1/sprites?max_results=2").await;
    assert_eq!(page["has_more"], true);
    assert_eq!(page["next_continuation_token"], "pa-2");
    let update = sprite_api::sprite::UpdateSpriteRequest {
        labels: Some(vec!["x".into()]),
        ..Default::default()
    };
    assert_eq!(
        daemon.client.update("pb-1", &update).await.unwrap().labels,
        ["x"]
    );
    for name in ["pa-1", "pa-2", "pb-1"] {
        daemon.client.destroy(name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_commands_stop_after_their_grace() {
    let daemon = Daemon::start("busybox").await;
    create(&daemon.client, "grace").await;
    let mut p = params(&["sleep", "300"]);
    p.max_run_after_disconnect_secs = Some(1);
    let mut stream = daemon.client.exec("grace", &p).await.unwrap();
    let session = match stream.next().await.unwrap() {
        ExecEvent::SessionInfo { session_id, .. } => session_id,
        other => panic!("{other:?}"),
    };
    stream.close().await;
    let active = |sessions: &[sprite_api::exec::SessionInfo]| {
        sessions.iter().any(|s| s.id == session && s.is_active)
    };
    assert!(
        active(&daemon.client.sessions("grace").await.unwrap()),
        "stopped too early"
    );
    let mut stopped = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !active(&daemon.client.sessions("grace").await.unwrap()) {
            stopped = true;
            break;
        }
    }
    assert!(
        stopped,
        "an abandoned non-TTY command kept running past max_run_after_disconnect"
    );
    daemon.client.destroy("grace").await.unwrap();
}
