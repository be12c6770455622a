//! End to end, as root: a sprite's URL reaches the server in it (port 8080 or its
//! service's `http_port`), wakes it when it sleeps, and asks for a token unless public.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sprite_api::services::ServiceSpec;
use sprite_api::sprite::{SpriteStatus, UpdateSpriteRequest, UrlAuth, UrlSettingsUpdate};
use std::time::Duration;

async fn get(daemon: &Daemon, host: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client
        .get(format!("{}{path}", daemon.proxy_url))
        .header("host", host)
        .timeout(Duration::from_secs(30));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Serves `dir` of `sprite` on port 8080 with busybox httpd, as service `service` that
/// claims the sprite's URL (`http_port`).
async fn serve_files(client: &sprite_client::Client, sprite: &str, service: &str, dir: &str) {
    let spec = ServiceSpec {
        cmd: "httpd".into(),
        args: ["-f", "-p", "127.0.0.1:8080", "-h", dir]
            .map(String::from)
            .to_vec(),
        http_port: Some(8080),
        ..Default::default()
    };
    client
        .put_service(sprite, service, &spec, None, |_| {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprite_url_reaches_its_server_wakes_it_and_checks_the_token() {
    let daemon = Daemon::start_with(
        "busybox",
        "storage = \"spritefs\"\nwarm_after = \"never\"\ncold_after = \"never\"\nwake_timeout = \"3s\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "site").await;
    let page = "mkdir -p /home/sprite/www && echo hello from site > /home/sprite/www/index.html";
    assert_eq!(run(client, "site", &["sh", "-c", page]).await.code, 0);
    serve_files(client, "site", "web", "/home/sprite/www").await;

    // With the token: the page.
    let response = get(&daemon, "site.localhost", "/index.html", Some(TOKEN)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello from site\n");

    // Without it: 401 with a page saying how; `?token=` once sets a cookie.
    let response = get(&daemon, "site.localhost:7080", "/index.html", None).await;
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("token"));
    let response = get(
        &daemon,
        "site.localhost",
        &format!("/index.html?token={TOKEN}"),
        None,
    )
    .await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/index.html");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("sprite_auth="), "{cookie}");
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is not the token: {cookie}"
    );
    let with_cookie = reqwest::Client::new()
        .get(format!("{}/index.html", daemon.proxy_url))
        .header("host", "site.localhost")
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 200);
    let response = get(&daemon, "site.localhost", "/", Some("wrong-token")).await;
    assert_eq!(response.status(), 401);

    // Public: no token needed.
    let public = UpdateSpriteRequest {
        url_settings: Some(UrlSettingsUpdate {
            auth: Some(UrlAuth::Public),
            private_access: None,
        }),
        ..Default::default()
    };
    client.update("site", &public).await.unwrap();
    let response = get(&daemon, "site.localhost", "/index.html", None).await;
    assert_eq!(response.status(), 200);

    // A cold sprite wakes on a request (its service starts with it) and answers it.
    assert_eq!(
        client.sleep("site", true).await.unwrap().status,
        SpriteStatus::Cold
    );
    let response = get(&daemon, "site.localhost", "/index.html", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello from site\n");
    assert_eq!(
        client.get("site").await.unwrap().status,
        SpriteStatus::Running
    );

    // Nothing listening: 503 after the wake timeout, with the reason.
    create(client, "empty").await;
    let response = get(&daemon, "empty.localhost", "/", Some(TOKEN)).await;
    assert_eq!(response.status(), 503);
    assert!(response.text().await.unwrap().contains("port 8080"));

    // Not a sprite.
    assert_eq!(
        get(&daemon, "nobody.localhost", "/", Some(TOKEN))
            .await
            .status(),
        404
    );
    assert_eq!(
        get(&daemon, "example.com", "/", Some(TOKEN)).await.status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_url_connection_keeps_the_sprite_awake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let daemon = Daemon::start_with(
        "busybox",
        "warm_after = \"1s\"\ncold_after = \"never\"\nwake_timeout = \"5s\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "held").await;
    assert_eq!(
        run(client, "held", &["sh", "-c", "echo hi > /home/sprite/hi"])
            .await
            .code,
        0
    );
    let web = ServiceSpec {
        cmd: "httpd".into(),
        args: ["-f", "-p", "127.0.0.1:8080", "-h", "/home/sprite"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    client
        .put_service("held", "web", &web, None, |_| {})
        .await
        .unwrap();
    let status = || async { client.get("held").await.unwrap().status };
    // Asleep first: the request wakes it.
    let start = std::time::Instant::now();
    while status().await != SpriteStatus::Warm {
        assert!(start.elapsed() < Duration::from_secs(5), "never went warm");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let address = daemon.proxy_url.trim_start_matches("http://").to_string();
    let mut connection = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /hi HTTP/1.1\r\nHost: held.localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = connection.read(&mut answer).await.unwrap();
    let head = String::from_utf8_lossy(&answer[..read]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The connection stays open (keep-alive): the sprite stays awake.
    for _ in 0..15 {
        assert_eq!(status().await, SpriteStatus::Running);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reasons: Vec<String> = client
        .get("held")
        .await
        .unwrap()
        .lifecycle
        .unwrap()
        .awake_because
        .into_iter()
        .map(|r| r.reason)
        .collect();
    assert_eq!(reasons, ["proxy"]);
    drop(connection);
    let start = std::time::Instant::now();
    while status().await != SpriteStatus::Warm {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the closed connection kept it awake"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_and_large_downloads_pass_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let daemon = Daemon::start_with(
        "busybox",
        "warm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "pipe").await;
    // An upgrade server (101, then it echoes) on 8080 and a file server on 8081.
    let setup = r#"cat > /home/sprite/echo.sh <<'SH'
#!/bin/sh
while read -r line; do line=$(printf '%s' "$line" | tr -d '\r'); [ -z "$line" ] && break; done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n'
exec cat
SH
chmod +x /home/sprite/echo.sh && mkdir -p /home/sprite/files && dd if=/dev/urandom of=/home/sprite/files/big bs=1M count=100 2>/dev/null"#;
    assert_eq!(run(client, "pipe", &["sh", "-c", setup]).await.code, 0);
    let echo = ServiceSpec {
        cmd: "nc".into(),
        args: ["-ll", "-p", "8080", "-e", "/home/sprite/echo.sh"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    client
        .put_service("pipe", "echo", &echo, None, |_| {})
        .await
        .unwrap();

    let address = daemon.proxy_url.trim_start_matches("http://").to_string();
    let mut connection = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /socket HTTP/1.1\r\nHost: pipe.localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        connection.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in ["ping\n", "second message\n"] {
        connection.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), connection.read_exact(&mut echoed))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&echoed), message);
    }
    drop(connection);

    // 100 MiB through the proxy, read as it streams: the daemon's memory stays flat.
    client.delete_service("pipe", "echo").await.unwrap();
    serve_files(client, "pipe", "files", "/home/sprite/files").await;
    let before = rss_kib(daemon.pid);
    let mut response = get(&daemon, "pipe.localhost", "/big", Some(TOKEN)).await;
    assert_eq!(response.status(), 200);
    let mut total = 0usize;
    let mut peak = before;
    while let Some(chunk) = response.chunk().await.unwrap() {
        total += chunk.len();
        if total % (8 << 20) < chunk.len() {
            peak = peak.max(rss_kib(daemon.pid));
        }
    }
    assert_eq!(total, 100 << 20);
    let grown_mib = (peak.saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 16,
        "the daemon grew {grown_mib} MiB streaming 100 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_proxy_reaches_a_port_in_a_sleeping_sprite() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let daemon = Daemon::start_with(
        "busybox",
        "storage = \"spritefs\"\nwarm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "db").await;
    let echo = ServiceSpec {
        cmd: "nc".into(),
        args: ["-ll", "-p", "5432", "-e", "cat"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    client
        .put_service("db", "echo", &echo, None, |_| {})
        .await
        .unwrap();
    // Cold: the proxy wakes it and waits for the port.
    assert_eq!(
        client.sleep("db", true).await.unwrap().status,
        SpriteStatus::Cold
    );

    let open = || async {
        let request = daemon.ws_request("/v1/sprites/db/proxy");
        tokio_tungstenite::connect_async(request).await.unwrap().0
    };
    let mut socket = open().await;
    socket
        .send(Message::Text(r#"{"host":"localhost","port":5432}"#.into()))
        .await
        .unwrap();
    let answer = socket.next().await.unwrap().unwrap().into_text().unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"], "connected", "{answer}");
    assert_eq!(answer["target"], "localhost:5432");
    assert_eq!(
        client.get("db").await.unwrap().status,
        SpriteStatus::Running
    );
    socket
        .send(Message::Binary(b"ping through the tunnel".to_vec().into()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 23 {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("no echo")
            .unwrap()
            .unwrap();
        echoed.extend_from_slice(&message.into_data());
    }
    assert_eq!(echoed, b"ping through the tunnel");
    // Our EOF (an empty message) half-closes: what the program still says comes back,
    // then the tunnel closes.
    socket
        .send(Message::Binary(b"last words".to_vec().into()))
        .await
        .unwrap();
    socket
        .send(Message::Binary(Vec::new().into()))
        .await
        .unwrap();
    let mut tail = Vec::new();
    while let Some(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("the tunnel did not close")
    {
        if message.is_close() {
            break;
        }
        tail.extend_from_slice(&message.into_data());
    }
    assert_eq!(tail, b"last words");
    drop(socket);

    // Other hosts are refused, saying why.
    let mut socket = open().await;
    socket
        .send(Message::Text(r#"{"host":"10.0.0.1","port":22}"#.into()))
        .await
        .unwrap();
    let answer = socket.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(
        answer.contains("error") && answer.contains("loopback"),
        "{answer}"
    );
}

async fn next_text(socket: &mut sprite_client::Tunnel) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no message in 10 s")
            .expect("the socket closed")
            .expect("the socket failed");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_opening_and_closing_are_reported() {
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = &daemon.client;
    create(client, "ports").await;
    let mut watch = client.ports_watch("ports").await.unwrap();
    let list = next_text(&mut watch).await;
    assert_eq!(list["type"], "port_list");
    assert_eq!(list["ports"], serde_json::json!([]));

    // An exec that starts a server gets port_opened on its own socket, with its pid.
    let mut exec = client
        .exec(
            "ports",
            &params(&["sh", "-c", "sleep 1; exec httpd -f -p 127.0.0.1:9123"]),
        )
        .await
        .unwrap();
    let opened = loop {
        match tokio::time::timeout(Duration::from_secs(10), exec.next())
            .await
            .unwrap()
            .unwrap()
        {
            sprite_client::ExecEvent::Text(text) => {
                break serde_json::from_str::<serde_json::Value>(&text).unwrap()
            }
            sprite_client::ExecEvent::Exit(code) => panic!("server exited with {code}"),
            _ => {}
        }
    };
    assert_eq!(
        (
            opened["type"].as_str(),
            opened["port"].as_u64(),
            opened["address"].as_str()
        ),
        (Some("port_opened"), Some(9123), Some("127.0.0.1"))
    );
    let pid = opened["pid"].as_u64().unwrap();
    assert!(pid > 1, "{opened}");
    // ... and the watcher too.
    let event = next_text(&mut watch).await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["port"].as_u64(),
            event["pid"].as_u64()
        ),
        (Some("port_opened"), Some(9123), Some(pid))
    );
    exec.signal("KILL").await.unwrap();
    let event = next_text(&mut watch).await;
    assert_eq!(
        (event["type"].as_str(), event["port"].as_u64()),
        (Some("port_closed"), Some(9123))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_with_h2_and_http1() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=secure.localhost",
        ])
        .arg("-addext")
        .arg("subjectAltName=DNS:secure.localhost")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = format!(
        "storage = \"local\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let daemon = Daemon::start_with("busybox", &config).await;
    let client = &daemon.client;
    create(client, "secure").await;
    let info = client.get("secure").await.unwrap();
    assert!(
        info.url.starts_with("https://secure.localhost:"),
        "{info:?}"
    );
    let server = "mkdir -p /tmp/www && echo over tls > /tmp/www/index.html && dd if=/dev/zero of=/tmp/www/big bs=1M count=16 2>/dev/null && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www";
    let _server = client
        .exec("secure", &params(&["sh", "-c", server]))
        .await
        .unwrap();
    let port = daemon.proxy_url.rsplit(':').next().unwrap().to_string();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(&cert)
            .args([
                flag,
                "--retry",
                "5",
                "--retry-all-errors",
                "--retry-delay",
                "1",
            ])
            .args(["--resolve", &format!("secure.localhost:{port}:127.0.0.1")])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args(["-w", "|%{http_version}|%{http_code}"])
            .arg(format!("https://secure.localhost:{port}/index.html"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            text,
            format!("over tls\n|{version}|200"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // HTTP/2 requests side by side on one connection all get their answer, while the
    // other answers (16 MiB each) are still streaming.
    let url = format!("https://secure.localhost:{port}/big");
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--cacert"])
        .arg(&cert)
        .args([
            "--http2",
            "--parallel",
            "--parallel-immediate",
            "--parallel-max",
            "8",
        ])
        .args(["--resolve", &format!("secure.localhost:{port}:127.0.0.1")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-w", "%{http_code} %{size_download}\n"])
        .args([&url, &url, &url, &url, &url, &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.matches("200 16777216").count(), 6, "{text}");
    // Plain HTTP on the TLS port gets no page.
    let plain = reqwest::Client::new()
        .get(format!("{}/", daemon.proxy_url))
        .header("host", "secure.localhost")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_on_one_connection_do_not_wait_for_each_other() {
    let daemon = Daemon::start_with(
        "busybox",
        "storage = \"local\"\nwarm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "streams").await;
    // /fast is a file; /cgi-bin/slow answers after 3 s (its headers included).
    let setup = r#"mkdir -p /home/sprite/www/cgi-bin && echo fast > /home/sprite/www/fast && cat > /home/sprite/www/cgi-bin/slow <<'SH'
#!/bin/sh
sleep 3
printf 'Content-Type: text/plain\r\n\r\nslow\n'
SH
chmod +x /home/sprite/www/cgi-bin/slow"#;
    assert_eq!(run(client, "streams", &["sh", "-c", setup]).await.code, 0);
    serve_files(client, "streams", "web", "/home/sprite/www").await;
    // One HTTP/2 connection (h2c, prior knowledge) carries every request below.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let get = |path: &str| {
        h2.get(format!("{}{path}", daemon.proxy_url))
            .header("host", "streams.localhost")
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(30))
            .send()
    };
    let first = get("/fast").await.unwrap();
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    assert_eq!(first.text().await.unwrap(), "fast\n");

    let slow = {
        let request = get("/cgi-bin/slow");
        tokio::spawn(async move { request.await.unwrap().text().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let fast = get("/fast").await.unwrap();
    assert_eq!(fast.status(), 200);
    assert_eq!(fast.text().await.unwrap(), "fast\n");
    let took = started.elapsed();
    assert!(
        !slow.is_finished(),
        "the fast answer ({took:?}) waited for the slow one"
    );
    assert!(
        took < Duration::from_secs(2),
        "the fast answer took {took:?} beside a slow one"
    );
    assert_eq!(slow.await.unwrap(), "slow\n");
}
