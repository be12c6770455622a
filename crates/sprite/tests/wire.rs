//! The wire as the official SDKs read it, end to end on a real daemon (busybox image):
//! what the Go SDK expects (it cannot be built here) checked frame by frame, and the
//! fixes the Python and JS SDKs need (docs/sdk-compat.md).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use sprite_api::services::ServiceSpec;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CONFIG: &str = "warm_after = \"never\"\ncold_after = \"never\"\nstop_grace = \"1s\"\n";

async fn socket(daemon: &Daemon, path_and_query: &str, agent: &str) -> Socket {
    let mut request = daemon.ws_request(path_and_query);
    request
        .headers_mut()
        .insert("user-agent", agent.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The next message that is not a ping or pong.
async fn next(socket: &mut Socket) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("no message within 20 s")
            .expect("the socket ended")
            .unwrap();
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

fn text(message: &Message) -> String {
    match message {
        Message::Text(text) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

fn binary(message: &Message) -> Vec<u8> {
    match message {
        Message::Binary(data) => data.to_vec(),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

fn op_start(args: serde_json::Value) -> Message {
    let body = serde_json::json!({ "type": "op.start", "op": "exec", "args": args });
    Message::Text(format!("control:{body}").into())
}

/// Reads one control exec op to its `op.complete`: (stdout, stderr, exit frame code,
/// op.complete exitCode, session id).
async fn finish_op(socket: &mut Socket, tty: bool) -> (Vec<u8>, Vec<u8>, i32, i64, String) {
    let info: serde_json::Value = serde_json::from_str(&text(&next(socket).await)).unwrap();
    assert_eq!(info["type"], "session_info", "{info}");
    assert_eq!(info["tty"], tty);
    let session = info["session_id"].as_str().unwrap().to_string();
    let (mut stdout, mut stderr, mut exit) = (Vec::new(), Vec::new(), None);
    loop {
        match next(socket).await {
            Message::Binary(data) if tty => stdout.extend_from_slice(&data),
            Message::Binary(data) => match data[0] {
                1 => stdout.extend_from_slice(&data[1..]),
                2 => stderr.extend_from_slice(&data[1..]),
                3 => {
                    assert!(exit.is_none(), "two exit frames");
                    exit = Some(i32::from(data[1]));
                }
                other => panic!("stream id {other}"),
            },
            Message::Text(text) if text.starts_with("control:") => {
                let envelope: serde_json::Value =
                    serde_json::from_str(text.strip_prefix("control:").unwrap()).unwrap();
                assert_eq!(envelope["type"], "op.complete", "{envelope}");
                let code = envelope["args"]["exitCode"].as_i64().unwrap();
                let exit = exit.expect("op.complete before the exit (Go needs the exit)");
                return (stdout, stderr, exit, code, session);
            }
            Message::Text(text) => {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "exit" {
                    assert!(tty, "a text exit without a TTY: {message}");
                    exit = Some(message["exit_code"].as_i64().unwrap() as i32);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_connection_runs_ops_one_after_another() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    create(&daemon.client, "ctl").await;
    let mut ws = socket(&daemon, "/v1/sprites/ctl/control", "sprites-py/0.7.2").await;

    // Output on both streams, the exit frame, then op.complete with the same code.
    let args = serde_json::json!({
        "cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"], "stdin": "false",
    });
    ws.send(op_start(args)).await.unwrap();
    let (stdout, stderr, exit, complete, _) = finish_op(&mut ws, false).await;
    assert_eq!(
        (stdout.as_slice(), stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!((exit, complete), (3, 3));

    // The same socket, next op: stdin as [0]+data, EOF as [4]; env and dir apply.
    let args = serde_json::json!({
        "cmd": ["sh", "-c", "cat; echo \" $GREETING $(pwd)\""], "stdin": "true",
        "env": ["GREETING=hi"], "dir": "/tmp",
    });
    ws.send(op_start(args)).await.unwrap();
    ws.send(Message::Binary([&[0u8][..], b"hello"].concat().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![4u8].into())).await.unwrap();
    let (stdout, _, exit, complete, _) = finish_op(&mut ws, false).await;
    assert_eq!(String::from_utf8_lossy(&stdout), "hello hi /tmp\n");
    assert_eq!((exit, complete), (0, 0));

    // A TTY op: raw output, the text exit, op.complete.
    ws.send(op_start(serde_json::json!({
        "cmd": ["sh", "-c", "tty; exit 2"], "tty": "true", "rows": "30", "cols": "100",
    })))
    .await
    .unwrap();
    let info: serde_json::Value = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
    assert_eq!(
        (info["cols"].as_u64(), info["rows"].as_u64()),
        (Some(100), Some(30)),
        "{info}"
    );
    let (stdout, _, exit, complete, _) = finish_rest_tty(&mut ws).await;
    assert!(String::from_utf8_lossy(&stdout).contains("/dev/pts/"));
    assert_eq!((exit, complete), (2, 2));

    // A missing program fails like a shell would, and the socket stays usable.
    ws.send(op_start(serde_json::json!({ "cmd": ["no-such-program"] })))
        .await
        .unwrap();
    let mut frames = Vec::new();
    loop {
        let message = next(&mut ws).await;
        if text_is_complete(&message) {
            break;
        }
        frames.push(message);
    }
    assert!(frames
        .iter()
        .any(|m| matches!(m, Message::Binary(d) if d[..] == [3u8, 127])));

    // A bad op is an op.error, not a closed socket.
    ws.send(op_start(
        serde_json::json!({ "cmd": ["sh"], "cols": "wide", "tty": "true" }),
    ))
    .await
    .unwrap();
    let error = text(&next(&mut ws).await);
    assert!(
        error.starts_with("control:") && error.contains("op.error"),
        "{error}"
    );
    ws.send(op_start(serde_json::json!({ "cmd": ["true"] })))
        .await
        .unwrap();
    assert_eq!(finish_op(&mut ws, false).await.3, 0);

    // A new op.start while one runs lets the old one go and runs the new one.
    ws.send(op_start(serde_json::json!({ "cmd": ["sleep", "30"] })))
        .await
        .unwrap();
    assert!(text(&next(&mut ws).await).contains("session_info"));
    ws.send(op_start(serde_json::json!({ "cmd": ["echo", "second"] })))
        .await
        .unwrap();
    let (stdout, _, _, complete, _) = finish_op(&mut ws, false).await;
    assert_eq!((stdout.as_slice(), complete), (&b"second\n"[..], 0));

    // Ops on many sockets at once.
    let started = Instant::now();
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let mut ws = socket(&daemon, "/v1/sprites/ctl/control", "sprites-py/0.7.2").await;
        ws.send(op_start(serde_json::json!({ "cmd": ["sleep", "1"] })))
            .await
            .unwrap();
        sockets.push(ws);
    }
    for mut ws in sockets {
        assert_eq!(finish_op(&mut ws, false).await.3, 0);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ops ran one by one"
    );

    // An unknown sprite: 404 on the upgrade, which is what makes the SDKs fall back.
    let request = daemon.ws_request("/v1/sprites/nope/control");
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
}

fn text_is_complete(message: &Message) -> bool {
    matches!(message, Message::Text(t) if t.starts_with("control:") && t.contains("op.complete"))
}

/// What the Go SDK does over the control socket: raw stdin, attach by id, fs ops
/// with query-string args, the TCP proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_connection_speaks_go() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    create(&daemon.client, "goctl").await;
    let agent = "sprites-go-sdk/1.0";
    let mut ws = socket(&daemon, "/v1/sprites/goctl/control", agent).await;

    // Raw stdin (no stream id byte), [4] EOF.
    let args = serde_json::json!({ "cmd": ["cat"], "path": "cat", "stdin": "true" });
    ws.send(op_start(args)).await.unwrap();
    ws.send(Message::Binary(b"\x00raw\x01".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![4u8].into())).await.unwrap();
    let (stdout, _, exit, _, _) = finish_op(&mut ws, false).await;
    assert_eq!((stdout.as_slice(), exit), (&b"\x00raw\x01"[..], 0));
    ws.send(Message::Text("{\"type\":\"release\"}\n".into()))
        .await
        .unwrap();

    // Attach by id: session_info, then the replay.
    let args = serde_json::json!({ "cmd": ["sh", "-c", "echo early; sleep 30"] });
    ws.send(op_start(args)).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
    let session = info["session_id"].as_str().unwrap().to_string();
    assert_eq!(binary(&next(&mut ws).await), b"\x01early\n");
    ws.send(Message::Text("{\"type\":\"release\"}\n".into()))
        .await
        .unwrap();
    let mut again = socket(&daemon, "/v1/sprites/goctl/control", agent).await;
    again
        .send(op_start(serde_json::json!({ "id": session })))
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&text(&next(&mut again).await)).unwrap();
    assert_eq!(info["session_id"], session.as_str());
    assert_eq!(binary(&next(&mut again).await), b"\x01early\n");
    // Go signals over HTTP: ?signal=TERM&timeout=0s, then 410 once it is gone.
    let kill = format!("/v1/sprites/goctl/exec/{session}/kill?signal=TERM&timeout=0s");
    let response = post(&daemon, &kill, "").await;
    assert_eq!(response.status(), 200);
    let (_, _, exit, _, _) = finish_rest(&mut again).await;
    assert_eq!(exit, 143);
    assert_eq!(post(&daemon, &kill, "").await.status(), 410);

    // fs ops: un-prefixed envelopes, args as a query string, un-prefixed answers.
    let fs = |op: &str, args: &str| {
        let body = serde_json::json!({ "type": "op.start", "op": op, "args": args });
        Message::Text(format!("{body}\n").into())
    };
    ws.send(fs(
        "fs.write",
        "path=%2Fhome%2Fsprite%2Fnote.txt&workingDir=%2Fhome%2Fsprite&mode=0600",
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(b"hello go".to_vec().into()))
        .await
        .unwrap();
    let written: serde_json::Value = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
    assert_eq!(written["size"], 8, "{written}");
    assert_complete(&mut ws).await;
    ws.send(fs("fs.read", "path=note.txt&workingDir=%2Fhome%2Fsprite"))
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
    assert_eq!(info["size"], 8, "{info}");
    assert_eq!(binary(&next(&mut ws).await), b"hello go");
    assert_complete(&mut ws).await;
    ws.send(fs("fs.list", "path=%2Fhome%2Fsprite&workingDir=%2F"))
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
    assert!(list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "note.txt" && e["mode"] == "0600"));
    assert_complete(&mut ws).await;
    // An error is the error JSON alone (Go returns on it without reading further).
    ws.send(fs("fs.read", "path=%2Fno%2Fsuch")).await.unwrap();
    let error: serde_json::Value = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
    assert_eq!(error["code"], "ENOENT", "{error}");
    ws.send(fs("fs.mkfifo", "path=x")).await.unwrap();
    let error: serde_json::Value = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
    assert_eq!(error["code"], "ENOTSUP", "{error}");

    // The TCP proxy over the socket, to a port in the sprite.
    let echo = ServiceSpec {
        cmd: "sh".into(),
        args: ["-c", "while true; do nc -l -p 9000 -e cat; done"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    daemon
        .client
        .put_service("goctl", "echo", &echo, Some(""), |_| {})
        .await
        .unwrap();
    let start = serde_json::json!({
        "type": "start", "operation": "proxy",
        "params": { "host": "localhost", "port": 9000, "keep_alive": true },
    });
    ws.send(Message::Text(start.to_string().into()))
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
    assert_eq!(status["status"], "connected", "{status}");
    ws.send(Message::Binary(b"ping through\n".to_vec().into()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while echoed != b"ping through\n" {
        echoed.extend(binary(&next(&mut ws).await));
    }
    ws.send(Message::Text("{\"type\":\"release\"}\n".into()))
        .await
        .unwrap();
    // Released: the socket takes the next op.
    ws.send(op_start(serde_json::json!({ "cmd": ["echo", "after"] })))
        .await
        .unwrap();
    assert_eq!(finish_op(&mut ws, false).await.0, b"after\n");
}

/// The rest of a TTY op already past its session_info: (output, _, exit, op.complete).
async fn finish_rest_tty(socket: &mut Socket) -> (Vec<u8>, Vec<u8>, i32, i64, String) {
    let (mut stdout, mut exit) = (Vec::new(), None);
    loop {
        match next(socket).await {
            Message::Binary(data) => stdout.extend_from_slice(&data),
            Message::Text(text) if text.starts_with("control:") => {
                let envelope: serde_json::Value =
                    serde_json::from_str(text.strip_prefix("control:").unwrap()).unwrap();
                let code = envelope["args"]["exitCode"].as_i64().unwrap();
                return (stdout, Vec::new(), exit.unwrap(), code, String::new());
            }
            Message::Text(text) => {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "exit" {
                    exit = Some(message["exit_code"].as_i64().unwrap() as i32);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The rest of an op already past its session_info.
async fn finish_rest(socket: &mut Socket) -> (Vec<u8>, Vec<u8>, i32, i64, String) {
    let (mut stdout, mut stderr, mut exit) = (Vec::new(), Vec::new(), None);
    loop {
        match next(socket).await {
            Message::Binary(data) => match data[0] {
                1 => stdout.extend_from_slice(&data[1..]),
                2 => stderr.extend_from_slice(&data[1..]),
                3 => exit = Some(i32::from(data[1])),
                _ => {}
            },
            message if text_is_complete(&message) => {
                return (stdout, stderr, exit.unwrap(), 0, String::new());
            }
            _ => {}
        }
    }
}

async fn assert_complete(socket: &mut Socket) {
    let message: serde_json::Value = serde_json::from_str(&text(&next(socket).await)).unwrap();
    assert_eq!(message["type"], "op.complete", "{message}");
}

/// A JSON request to the API with the test token.
async fn send_json(
    daemon: &Daemon,
    method: reqwest::Method,
    path: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .request(method, format!("{}{path}", daemon.url))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post(daemon: &Daemon, path: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", daemon.url))
        .bearer_auth(TOKEN)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn ndjson(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Items 2, 3, 4, 6, 7, 10, 11 of issue 13 as each SDK reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_wire_matches_the_sdks() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    let client = &daemon.client;
    create(client, "wire").await;
    let http = reqwest::Client::new();

    // Sprite-Version is a bare semver (Go parses it; a release version means the
    // path attach works).
    let response = http
        .head(format!("{}/v1/sprites/wire/exec", daemon.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let version = response.headers()["sprite-version"]
        .to_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = version.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok()),
        "{version}"
    );

    // The legacy attach, WS .../exec?id=SESSION, attaches (and replays).
    let mut first = socket(
        &daemon,
        "/v1/sprites/wire/exec?cmd=sh&cmd=-c&cmd=echo+kept%3B+sleep+30&max_run_after_disconnect=1m0s",
        "sprites-go-sdk/1.0",
    )
    .await;
    let info: serde_json::Value = serde_json::from_str(&text(&next(&mut first).await)).unwrap();
    let session = info["session_id"].as_str().unwrap().to_string();
    // session_info says what runs, since when, and that this connection started it.
    assert_eq!(info["command"], "sh -c echo kept; sleep 30", "{info}");
    assert!(info["created"].as_str().unwrap().ends_with('Z'), "{info}");
    assert_eq!(info["is_owner"], true, "{info}");
    assert!(info.get("cols").is_none(), "a size without a TTY: {info}");
    assert_eq!(binary(&next(&mut first).await), b"\x01kept\n");
    drop(first);
    let mut legacy = socket(
        &daemon,
        &format!("/v1/sprites/wire/exec?id={session}&stdin=false"),
        "sprites-go-sdk/1.0",
    )
    .await;
    let info: serde_json::Value = serde_json::from_str(&text(&next(&mut legacy).await)).unwrap();
    assert_eq!(
        info["session_id"],
        session.as_str(),
        "a new command started"
    );
    assert_eq!(info["is_owner"], false, "{info}");
    let listed = daemon.get_json("/v1/sprites/wire/exec").await;
    let entry = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == session.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (entry["is_owner"].as_bool(), entry["command"].as_str()),
        (Some(true), Some("sh -c echo kept; sleep 30")),
        "{entry}"
    );
    assert_eq!(binary(&next(&mut legacy).await), b"\x01kept\n");

    // Kill as sprites-py sends it: a JSON body; the NDJSON says what happened.
    let kill = format!("/v1/sprites/wire/exec/{session}/kill");
    let events = ndjson(
        &post(&daemon, &kill, r#"{"signal":"SIGTERM","timeout":10}"#)
            .await
            .text()
            .await
            .unwrap(),
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["signal", "exited", "complete"], "{events:?}");
    assert_eq!(events[1]["exit_code"], 143);
    drop(legacy);

    // A process that ignores TERM is killed after the timeout (a Go duration).
    let mut stubborn = client
        .exec(
            "wire",
            &params(&[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 1; done",
            ]),
        )
        .await
        .unwrap();
    let session = match stubborn.next().await.unwrap() {
        sprite_client::ExecEvent::SessionInfo { session_id, .. } => session_id,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        stubborn.next().await.unwrap(),
        sprite_client::ExecEvent::Stdout(_)
    ));
    let started = Instant::now();
    let path = format!("/v1/sprites/wire/exec/{session}/kill?signal=TERM&timeout=500ms");
    let events = ndjson(&post(&daemon, &path, "").await.text().await.unwrap());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["signal", "timeout", "killed", "complete"],
        "{events:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(collect(stubborn).await.code, 137);
    let bad = post(
        &daemon,
        &format!("/v1/sprites/wire/exec/{session}/kill?timeout=soon"),
        "",
    )
    .await;
    assert_eq!(bad.status(), 400);

    // A TTY command's exit code is in its close code (the JS SDK reads only that).
    for (code, close) in [(0, 1000u16), (3, 4003)] {
        let path = format!("/v1/sprites/wire/exec?cmd=sh&cmd=-c&cmd=exit+{code}&tty=true");
        let mut tty = socket(&daemon, &path, "sprites-js").await;
        let seen = loop {
            match next(&mut tty).await {
                Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
                _ => continue,
            }
        };
        assert_eq!(seen, Some(close), "exit {code}");
    }

    // Services: integer millisecond timestamps, log_files on complete; PUT follows
    // 5 s when no duration is given (output a second in is still in the stream); stop
    // honours ?timeout= and says stopping/exit/stopped.
    let late = serde_json::json!({ "cmd": "sh", "args": ["-c", "sleep 1; echo late; sleep 100"] });
    let started = Instant::now();
    let response = send_json(
        &daemon,
        reqwest::Method::PUT,
        "/v1/sprites/wire/services/late",
        &late,
    )
    .await;
    let events = ndjson(&response.text().await.unwrap());
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "stdout" && e["data"] == "late\n"),
        "{events:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let _ = http
        .delete(format!("{}/v1/sprites/wire/services/late", daemon.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let body =
        r#"{"cmd":"sh","args":["-c","echo up; trap '' TERM; while true; do sleep 1; done"]}"#;
    let response = http
        .put(format!(
            "{}/v1/sprites/wire/services/web?duration=1s",
            daemon.url
        ))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    let events = ndjson(&response.text().await.unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for event in &events {
        let at = event["timestamp"]
            .as_i64()
            .unwrap_or_else(|| panic!("{event}"));
        assert!((now - 60_000..=now + 1000).contains(&at), "{event}");
    }
    assert_eq!(events[0]["type"], "started");
    assert!(events
        .iter()
        .any(|e| e["type"] == "stdout" && e["data"] == "up\n"));
    let complete = events.last().unwrap();
    assert_eq!(complete["type"], "complete");
    assert_eq!(
        complete["log_files"]["combined"],
        "/.sprite/logs/services/web.log"
    );
    let logs = http
        .get(format!(
            "{}/v1/sprites/wire/services/web/logs?lines=5",
            daemon.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(logs.headers()["content-type"], "application/x-ndjson");
    let events = ndjson(&logs.text().await.unwrap());
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "stdout" && e["data"] == "up\n"),
        "{events:?}"
    );
    let started = Instant::now();
    let events = ndjson(
        &post(&daemon, "/v1/sprites/wire/services/web/stop?timeout=1s", "")
            .await
            .text()
            .await
            .unwrap(),
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["stopping", "exit", "stopped", "complete"],
        "{events:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let events = ndjson(
        &post(
            &daemon,
            "/v1/sprites/wire/services/web/restart?duration=500ms",
            "",
        )
        .await
        .text()
        .await
        .unwrap(),
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"stopped"), "{events:?}");
    assert!(
        kinds.contains(&"started") && kinds.last() == Some(&"complete"),
        "{events:?}"
    );
    let bad = post(&daemon, "/v1/sprites/wire/services/web/stop?timeout=1d", "").await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("1m30s"));

    // PUT of only some url_settings keeps the rest.
    let public = serde_json::json!({ "url_settings": { "auth": "public" } });
    let response = send_json(&daemon, reqwest::Method::PUT, "/v1/sprites/wire", &public).await;
    assert_eq!(response.status(), 200);
    let labels_only = serde_json::json!({ "url_settings": {}, "labels": ["a"] });
    let info: serde_json::Value = send_json(
        &daemon,
        reqwest::Method::PUT,
        "/v1/sprites/wire",
        &labels_only,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(info["url_settings"]["auth"], "public", "{info}");

    // Create keeps what the SDKs send (runtime, config.region, private_access) and
    // shows it back; a region this daemon does not serve is a 400 that says which it does.
    let body = serde_json::json!({
        "name": "kept", "runtime": "dev", "config": { "region": "local", "ram_mb": 256 },
        "url_settings": { "auth": "sprite", "private_access": "org_users" },
    });
    let created = send_json(&daemon, reqwest::Method::POST, "/v1/sprites", &body).await;
    assert_eq!(created.status(), 201);
    let info: serde_json::Value = created.json().await.unwrap();
    assert_eq!(info["runtime"], "dev", "{info}");
    assert_eq!(info["config"]["region"], "local", "{info}");
    assert_eq!(info["primary_region"], "local", "{info}");
    assert_eq!(
        info["url_settings"]["private_access"], "org_users",
        "{info}"
    );
    let public = serde_json::json!({ "url_settings": { "auth": "public" } });
    let info: serde_json::Value =
        send_json(&daemon, reqwest::Method::PUT, "/v1/sprites/kept", &public)
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(
        info["url_settings"]["private_access"], "org_users",
        "{info}"
    );
    assert_eq!(daemon.get_json("/v1/sprites/kept").await["runtime"], "dev");
    for (bad, hint) in [
        (
            serde_json::json!({ "name": "far", "config": { "region": "iad" } }),
            "local",
        ),
        (
            serde_json::json!({ "name": "far", "runtime": "gpu" }),
            "default or dev",
        ),
        (
            serde_json::json!({ "name": "far", "url_settings": { "private_access": "all" } }),
            "org_users",
        ),
    ] {
        let response = send_json(&daemon, reqwest::Method::POST, "/v1/sprites", &bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert!(response.text().await.unwrap().contains(hint), "{bad}");
    }
    client.destroy("kept").await.unwrap();

    // Health, restart, the organization, list counts and the NDJSON watch.
    let check = daemon.get_json("/v1/sprites/wire/check").await;
    assert_eq!(check["status"], "healthy", "{check}");
    assert_eq!(check["sprite_name"], "wire");
    let org = daemon.get_json("/v1/organization").await;
    assert_eq!(
        (org["running"].as_u64(), org["sprites"].as_u64()),
        (Some(1), Some(1)),
        "{org}"
    );
    let list = daemon.get_json("/v1/sprites").await;
    assert_eq!(list["running"], 1, "{list}");
    assert_eq!(list["org"]["running"], 1, "{list}");
    assert!(list["running_limit"].as_u64().unwrap() >= 1, "{list}");
    let mut watch = http
        .get(format!("{}/v1/sprites", daemon.url))
        .bearer_auth(TOKEN)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(watch.headers()["content-type"], "application/x-ndjson");
    let mut pending = Vec::new();
    let mut next_line = async || -> serde_json::Value {
        loop {
            if let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), watch.chunk())
                .await
                .expect("no watch line within 10 s")
                .unwrap()
                .expect("the watch ended");
            pending.extend_from_slice(&chunk);
        }
    };
    let first = next_line().await;
    assert_eq!(
        (first["name"].as_str(), first["status"].as_str()),
        (Some("wire"), Some("running")),
        "{first}"
    );
    // A service comes back after a restart, as a new process; the watch sees the stop.
    let before = daemon.get_json("/v1/sprites/wire/services/web").await["state"]["pid"].clone();
    let _ = post(&daemon, "/v1/sprites/wire/services/web/start", "").await;
    let before = if before.is_null() {
        daemon.get_json("/v1/sprites/wire/services/web").await["state"]["pid"].clone()
    } else {
        before
    };
    let restarted: serde_json::Value = post(&daemon, "/v1/sprites/wire/restart", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(restarted["sprite_name"], "wire", "{restarted}");
    assert_eq!(restarted["status"], "running", "{restarted}");
    let mut pid = serde_json::Value::Null;
    for _ in 0..100 {
        pid = daemon.get_json("/v1/sprites/wire/services/web").await["state"]["pid"].clone();
        if !pid.is_null() && pid != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !pid.is_null() && pid != before,
        "service not back after the restart: {before} {pid}"
    );
    let _ = post(&daemon, "/v1/sprites/wire/sleep", "").await;
    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some("cold") {
        let line = next_line().await;
        if line["type"] != "heartbeat" {
            statuses.push(line["status"].as_str().unwrap_or_default().to_string());
        }
    }
    let check = daemon.get_json("/v1/sprites/wire/check").await;
    assert_eq!(check["status"], "cold", "a check woke the sprite: {check}");
    assert_eq!(daemon.get_json("/v1/organization").await["cold"], 1);

    // HTTP exec of a missing program: a stderr frame, then [3, 127].
    let body = http
        .post(format!(
            "{}/v1/sprites/wire/exec?cmd=no-such-program",
            daemon.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body[0], 2);
    assert!(body.ends_with(&[3, 127]));
}

/// Checkpoints as the SDKs read them (item 13): ISO 8601 event times, `source_id` and
/// `history`, the `Current` row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_lineage() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    create(&daemon.client, "lin").await;
    let checkpoint = async |comment: &str| {
        let body = serde_json::json!({ "comment": comment }).to_string();
        let events = ndjson(
            &post(&daemon, "/v1/sprites/lin/checkpoint", &body)
                .await
                .text()
                .await
                .unwrap(),
        );
        assert_eq!(events.last().unwrap()["type"], "complete", "{events:?}");
        for event in &events {
            let time = event["time"].as_str().unwrap_or_default();
            assert!(time.contains('T') && time.ends_with('Z'), "{event}");
        }
    };
    checkpoint("a").await; // v0
    checkpoint("b").await; // v1, from v0
    let restored = ndjson(
        &post(&daemon, "/v1/sprites/lin/checkpoints/v0/restore", "")
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(restored.last().unwrap()["type"], "complete", "{restored:?}");
    checkpoint("c").await; // v2, from v0 (not v1)

    let plain = daemon.get_json("/v1/sprites/lin/checkpoints").await;
    let ids: Vec<&str> = plain
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["v2", "v1", "v0"], "{plain}");
    assert_eq!(plain[0]["source_id"], "v0", "{plain}");
    assert_eq!(plain[1]["source_id"], "v0", "{plain}");
    assert!(plain[2].get("source_id").is_none(), "{plain}");
    assert!(
        plain[0].get("history").is_none(),
        "history without ?history: {plain}"
    );

    let full = daemon
        .get_json("/v1/sprites/lin/checkpoints?history=true")
        .await;
    assert_eq!(full[0]["id"], "Current", "{full}");
    assert_eq!(full[0]["source_id"], "v2", "{full}");
    assert_eq!(
        full[0]["history"],
        serde_json::json!(["v2", "v0"]),
        "{full}"
    );
    assert_eq!(full[1]["history"], serde_json::json!(["v0"]), "{full}");
    let current = daemon.get_json("/v1/sprites/lin/checkpoints/Current").await;
    assert_eq!(current["source_id"], "v2", "{current}");
    let refused = post(&daemon, "/v1/sprites/lin/checkpoints/Current/restore", "").await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("current state"));
    daemon.client.destroy("lin").await.unwrap();
}

/// The TCP proxy reaches any address of the sprite itself, and nothing else; the port
/// list's entries carry `type` (item 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reaches_the_sprites_own_addresses() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    let client = &daemon.client;
    create(client, "addr").await;
    let script = "ip -4 -o addr show | grep -v ' lo ' | awk '{print $4}' | cut -d/ -f1 | head -1";
    let out = run(client, "addr", &["sh", "-c", script]).await;
    let own = out.stdout().trim().to_string();
    assert!(
        own.parse::<std::net::Ipv4Addr>().is_ok(),
        "no address: {:?}",
        out.stdout()
    );
    // A web server bound to the sprite's own address only (not its loopback).
    let page = "mkdir -p /tmp/www && echo own address > /tmp/www/index.html";
    assert_eq!(run(client, "addr", &["sh", "-c", page]).await.code, 0);
    let web = ServiceSpec {
        cmd: "httpd".into(),
        args: ["-f", "-p", &format!("{own}:9100"), "-h", "/tmp/www"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    client
        .put_service("addr", "web", &web, Some(""), |_| {})
        .await
        .unwrap();
    // The port list: entries are port_opened notifications.
    let mut ports = socket(&daemon, "/v1/sprites/addr/ports/watch", "sprites-js").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while !seen {
        assert!(Instant::now() < deadline, "port 9100 never reported");
        let event: serde_json::Value =
            serde_json::from_str(&text(&next(&mut ports).await)).unwrap();
        seen = match event["type"].as_str() {
            Some("port_list") => event["ports"].as_array().unwrap().iter().any(|p| {
                assert_eq!(p["type"], "port_opened", "{p}");
                p["port"] == 9100
            }),
            Some("port_opened") => event["port"] == 9100,
            _ => false,
        };
    }
    let connect = async |host: &str| -> (serde_json::Value, Socket) {
        let mut ws = socket(&daemon, "/v1/sprites/addr/proxy", "sprites-go-sdk/1.0").await;
        let init = serde_json::json!({ "host": host, "port": 9100 });
        ws.send(Message::Text(init.to_string().into()))
            .await
            .unwrap();
        let answer = serde_json::from_str(&text(&next(&mut ws).await)).unwrap();
        (answer, ws)
    };
    let (answer, mut ws) = connect(&own).await;
    assert_eq!(answer["status"], "connected", "{answer}");
    let request = format!("GET /index.html HTTP/1.0\r\nHost: {own}\r\n\r\n");
    ws.send(Message::Binary(request.into_bytes().into()))
        .await
        .unwrap();
    let mut page = Vec::new();
    while !String::from_utf8_lossy(&page).contains("own address") {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => page.extend_from_slice(&data),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!(
                "no page through the proxy: {other:?} after {:?}",
                String::from_utf8_lossy(&page)
            ),
        }
    }
    // Addresses that are not the sprite's are refused at once, names are not resolved.
    let started = Instant::now();
    for host in ["10.255.255.1", "198.51.100.7"] {
        let (answer, _) = connect(host).await;
        assert_eq!(answer["status"], "error", "{host}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("not an address of the sprite"), "{answer}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusals waited for a timeout"
    );
    let (answer, _) = connect("example.com").await;
    assert_eq!(answer["status"], "error", "{answer}");
}

/// 429s as the SDKs read them, and `wait_for_capacity` (item 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_as_the_sdks_read_them() {
    let config = format!("{CONFIG}max_sprites = 2\ncreates_per_minute = 3\n");
    let daemon = Daemon::start_with("busybox", &config).await;
    let create = async |name: &str, wait: bool| {
        let mut body = serde_json::json!({ "name": name });
        if wait {
            body["wait_for_capacity"] = true.into();
        }
        send_json(&daemon, reqwest::Method::POST, "/v1/sprites", &body).await
    };
    assert_eq!(create("a", false).await.status(), 201);
    assert_eq!(create("b", false).await.status(), 201);
    let full = create("c", false).await;
    assert_eq!(full.status(), 429);
    assert!(full.headers().contains_key("retry-after"));
    assert_eq!(full.headers()["x-ratelimit-limit"], "2");
    let body: serde_json::Value = full.json().await.unwrap();
    assert_eq!(body["error"], "concurrent_sprite_limit_exceeded", "{body}");
    assert_eq!(
        (body["limit"].as_u64(), body["current_count"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("wait_for_capacity"),
        "{body}"
    );

    // With wait_for_capacity the create waits for room instead.
    let started = Instant::now();
    let waiting = create("c", true);
    let freeing = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        daemon.client.destroy("a").await.unwrap();
    };
    let (created, ()) = tokio::join!(waiting, freeing);
    assert_eq!(created.status(), 201);
    assert!(started.elapsed() >= Duration::from_millis(800));

    // Three creates used the minute's budget: the next is rate limited.
    daemon.client.destroy("b").await.unwrap();
    let limited = create("d", false).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["x-ratelimit-limit"], "3");
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "sprite_creation_rate_limited", "{body}");
    assert_eq!(body["window_seconds"], 60, "{body}");
    assert_eq!(body["retry_after_seconds"].as_u64(), Some(retry), "{body}");
    daemon.client.destroy("c").await.unwrap();
}

/// `/policy/resources` changes a running sprite's cgroup live; `/policy/privileges`
/// answers as the JS SDK types it (item 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_and_privilege_policies() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    create(&daemon.client, "res").await;
    let id = daemon.get_json("/v1/sprites/res").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let memory_limit = || -> u64 {
        for path in [
            format!("/sys/fs/cgroup/memory/sprites/{id}/memory.limit_in_bytes"),
            format!("/sys/fs/cgroup/unified/sprites/{id}/memory.max"),
            format!("/sys/fs/cgroup/sprites/{id}/memory.max"),
        ] {
            if let Ok(text) = std::fs::read_to_string(&path) {
                return text.trim().parse().unwrap();
            }
        }
        panic!("no memory limit file for {id}");
    };
    let send = async |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let path = format!("/v1/sprites/res/policy/{path}");
        send_json(&daemon, method, &path, &body.unwrap_or_default()).await
    };
    let before = daemon.get_json("/v1/sprites/res/policy/resources").await;
    let default_mb = before["memory"]["limit_mb"].as_u64().unwrap();
    assert_eq!(memory_limit(), default_mb * 1024 * 1024);
    let changed = send(
        reqwest::Method::POST,
        "resources",
        Some(serde_json::json!({ "memory": { "limit_mb": 300 }, "cpu": { "cpus": 1 } })),
    )
    .await;
    assert_eq!(changed.status(), 200);
    let changed: serde_json::Value = changed.json().await.unwrap();
    assert_eq!(changed["memory"]["limit_mb"], 300, "{changed}");
    assert_eq!(memory_limit(), 300 * 1024 * 1024, "not applied live");
    assert_eq!(
        daemon.get_json("/v1/sprites/res").await["config"]["ram_mb"],
        300
    );
    // Still runs, and keeps the limit across a restart.
    assert_eq!(run(&daemon.client, "res", &["true"]).await.code, 0);
    let _ = post(&daemon, "/v1/sprites/res/restart", "").await;
    assert_eq!(memory_limit(), 300 * 1024 * 1024, "lost at restart");
    for (bad, hint) in [
        (serde_json::json!({ "memory": { "limit_mb": 8 } }), "ram_mb"),
        (
            serde_json::json!({ "memory": { "limit_mb": 512, "autoscale": true } }),
            "autoscale",
        ),
        (
            serde_json::json!({ "disk": { "storage_gb": 99999 } }),
            "set at create",
        ),
        (serde_json::json!({ "gpu": {} }), "gpu"),
    ] {
        let response = send(reqwest::Method::POST, "resources", Some(bad.clone())).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert!(response.text().await.unwrap().contains(hint), "{bad}");
    }
    let reset = send(reqwest::Method::DELETE, "resources", None).await;
    assert_eq!(reset.status(), 200);
    assert_eq!(memory_limit(), default_mb * 1024 * 1024);

    let privileges = daemon.get_json("/v1/sprites/res/policy/privileges").await;
    assert_eq!(privileges["profile"], "standard", "{privileges}");
    let same = send(
        reqwest::Method::POST,
        "privileges",
        Some(serde_json::json!({ "profile": "standard", "devices": [] })),
    )
    .await;
    assert_eq!(same.status(), 200);
    let more = send(
        reqwest::Method::POST,
        "privileges",
        Some(serde_json::json!({ "profile": "privileged" })),
    )
    .await;
    assert_eq!(more.status(), 400);
    assert!(more.text().await.unwrap().contains("standard profile"));
    assert_eq!(
        send(reqwest::Method::DELETE, "privileges", None)
            .await
            .status(),
        200
    );
    daemon.client.destroy("res").await.unwrap();
}

/// What a stolen-token-less client or a hostile sprite can do with the control socket:
/// nothing without the token, no host file through its fs ops, no unbounded message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_connection_holds_its_bounds() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    create(&daemon.client, "bound").await;
    // No token, or a wrong one: 401 on the upgrade.
    for token in [None, Some("not-the-token")] {
        let mut request = daemon.ws_request("/v1/sprites/bound/control");
        match token {
            None => drop(request.headers_mut().remove("authorization")),
            Some(token) => {
                let value = format!("Bearer {token}").parse().unwrap();
                request.headers_mut().insert("authorization", value);
            }
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{token:?}")
            }
            other => panic!("expected 401 for {token:?}, got {:?}", other.map(|_| ())),
        }
    }
    // A host file the sprite points at with a symlink, or reaches with `..`: its fs ops
    // stay in the sprite's root.
    let secret = format!("/tmp/control-host-secret-{}", std::process::id());
    std::fs::write(&secret, "HOST SECRET").unwrap();
    let link = format!("ln -sf {secret} /home/sprite/link");
    assert_eq!(
        run(&daemon.client, "bound", &["sh", "-c", &link])
            .await
            .code,
        0
    );
    let mut ws = socket(&daemon, "/v1/sprites/bound/control", "sprites-go-sdk/1.0").await;
    for path in [
        "/home/sprite/link".to_string(),
        format!("/home/sprite/../../../..{secret}"),
    ] {
        let query = form_urlencoded_path(&path);
        let body = serde_json::json!({ "type": "op.start", "op": "fs.read", "args": query });
        ws.send(Message::Text(body.to_string().into()))
            .await
            .unwrap();
        let answer = text(&next(&mut ws).await);
        assert!(!answer.contains("HOST SECRET"), "{path}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert!(answer["error"].is_string(), "{path} was read: {answer}");
    }
    let _ = std::fs::remove_file(&secret);
    // A message over the 8 MiB bound ends the socket; the daemon carries on.
    let big = vec![0u8; 9 * 1024 * 1024];
    let _ = ws.send(Message::Binary(big.into())).await;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => break false,
        }
    };
    assert!(ended, "an oversized message did not end the socket");
    assert_eq!(run(&daemon.client, "bound", &["true"]).await.code, 0);
}

/// `path=<path>` as a query string.
fn form_urlencoded_path(path: &str) -> String {
    let escaped: String = path
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    format!("path={escaped}")
}
