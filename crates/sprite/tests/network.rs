//! End to end, as root: each sprite's network. A test-made "internet" (a network
//! namespace with an HTTP server and an echo server behind its own veth) and a test DNS
//! server on the host's loopback stand in for the world. Sprites reach it through NAT,
//! never each other nor the host's own services, and their egress policy (API.md,
//! Policy) decides which names resolve and which addresses answer, at once.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

/// The test's stand-in for the internet; removed on drop, even when the test fails.
struct Internet {
    namespace: String,
    host_link: String,
    servers: Option<std::process::Child>,
    /// Addresses inside: `.2` (allowed.test) and `.3` (denied.test).
    prefix: String,
}

const SERVERS: &str = r#"
import socket, threading, http.server, socketserver
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the internet\n"
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(4096)
            if not data: return
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
threading.Thread(target=socketserver.ThreadingTCPServer(("0.0.0.0", 8001), Echo).serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Page).serve_forever()
"#;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Internet {
    fn new() -> Internet {
        let tag = std::process::id() % 200 + 20;
        let namespace = format!("sprt-inet-{}", std::process::id());
        let host_link = format!("sprti{}", std::process::id() % 100_000);
        // Not a private range: answers in private ranges are never admitted by a policy
        // that does not name them (the escape suite tests that).
        let prefix = format!("198.18.{tag}");
        let mut internet = Internet {
            namespace: namespace.clone(),
            host_link: host_link.clone(),
            servers: None,
            prefix: prefix.clone(),
        };
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        for args in [
            format!("addr add {prefix}.2/24 dev eth0"),
            format!("addr add {prefix}.3/24 dev eth0"),
            "link set eth0 up".to_string(),
            "link set lo up".to_string(),
            format!("route add default via {prefix}.1"),
        ] {
            let mut full = vec!["-n", namespace.as_str()];
            full.extend(args.split(' '));
            ip(&full);
        }
        internet.servers = Some(
            Command::new("ip")
                .args(["netns", "exec", &namespace, "python3", "-c", SERVERS])
                .spawn()
                .unwrap(),
        );
        internet
    }

    fn address(&self, last: u8) -> String {
        format!("{}.{last}", self.prefix)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        if let Some(mut servers) = self.servers.take() {
            let _ = servers.kill();
            let _ = servers.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
    }
}

/// A program run in the sprite: `net.py resolve NAME`, `get URL`, `connect IP PORT`,
/// `hold HOST PORT` (echoes a line every 200 ms; prints "cut" when the connection dies).
const CLIENT: &str = r#"
import socket, sys, time, urllib.request
what = sys.argv[1]
try:
    if what == "resolve":
        print(socket.gethostbyname(sys.argv[2]))
    elif what == "get":
        print(urllib.request.urlopen(sys.argv[2], timeout=3).read().decode().strip())
    elif what == "connect":
        socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=2).close()
        print("connected")
    elif what == "hold":
        s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3)
        s.settimeout(3)
        print("held", flush=True)
        for i in range(200):
            s.sendall(b"ping\n")
            if not s.recv(100):
                raise OSError("closed")
            time.sleep(0.2)
        print("never cut")
except Exception as e:
    print("failed", type(e).__name__, e, flush=True)
"#;

async fn py(daemon: &Daemon, sprite: &str, args: &[&str]) -> String {
    let mut argv = vec!["python3", "/home/sprite/net.py"];
    argv.extend_from_slice(args);
    run(&daemon.client, sprite, &argv)
        .await
        .stdout()
        .trim()
        .to_string()
}

async fn set_policy(daemon: &Daemon, sprite: &str, rules: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/sprites/{sprite}/policy/network", daemon.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "rules": rules }))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sprites_reach_the_world_not_each_other_and_policy_decides() {
    let internet = Internet::new();
    // The test's DNS server, the daemon's upstream.
    let dns_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_port = dns_socket.local_addr().unwrap().port();
    let records: HashMap<String, Vec<Ipv4Addr>> = HashMap::from([
        (
            "allowed.test".to_string(),
            vec![internet.address(2).parse().unwrap()],
        ),
        (
            "denied.test".to_string(),
            vec![internet.address(3).parse().unwrap()],
        ),
    ]);
    let dns = tokio::spawn(sprite_core::dns::serve_static(dns_socket, records));
    let daemon = Daemon::start_with(
        "debian",
        // The test's internet is a network the host is connected to, which sprites
        // without a policy do not reach by default.
        &format!("storage = \"local\"\nwarm_after = \"never\"\ncold_after = \"never\"\negress_private = \"allow\"\ndns_upstreams = [\"127.0.0.1:{dns_port}\"]\n"),
    )
    .await;
    let client = &daemon.client;
    for name in ["a", "b"] {
        create(client, name).await;
        client
            .fs_write(
                name,
                "/home/sprite/net.py",
                None,
                true,
                std::io::Cursor::new(CLIENT.as_bytes().to_vec()),
            )
            .await
            .unwrap();
    }

    // Unrestricted: names resolve through the sprite's resolver, NAT reaches the world.
    let allowed_ip = internet.address(2);
    let denied_ip = internet.address(3);
    assert_eq!(
        py(&daemon, "a", &["resolve", "allowed.test"]).await,
        allowed_ip
    );
    assert_eq!(
        py(&daemon, "a", &["get", "http://allowed.test:8000/"]).await,
        "hello from the internet"
    );
    assert_eq!(
        py(&daemon, "a", &["connect", &denied_ip, "8000"]).await,
        "connected"
    );

    // Not each other, not the host's services (a listener on all the host's addresses).
    let gateway_b = run(
        client,
        "b",
        &[
            "sh",
            "-c",
            "awk '/^nameserver/ {print $2}' /etc/resolv.conf",
        ],
    )
    .await
    .stdout();
    let gateway_b: Ipv4Addr = gateway_b.trim().parse().unwrap();
    let address_b = Ipv4Addr::from(u32::from(gateway_b) + 1).to_string();
    let _server_b = client
        .exec(
            "b",
            &params(&["python3", "-m", "http.server", "--bind", "0.0.0.0", "9000"]),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        py(&daemon, "b", &["connect", &address_b, "9000"]).await,
        "connected",
        "b's own server is up"
    );
    assert!(
        py(&daemon, "a", &["connect", &address_b, "9000"])
            .await
            .starts_with("failed"),
        "a reached b"
    );
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port().to_string();
    let gateway_a = run(
        client,
        "a",
        &[
            "sh",
            "-c",
            "awk '/^nameserver/ {print $2}' /etc/resolv.conf",
        ],
    )
    .await
    .stdout();
    for host_address in [
        gateway_a.trim(),
        gateway_b.to_string().as_str(),
        internet.address(1).as_str(),
    ] {
        assert!(
            py(&daemon, "a", &["connect", host_address, &host_port])
                .await
                .starts_with("failed"),
            "a reached the host at {host_address}"
        );
    }
    let daemon_port = daemon.url.rsplit(':').next().unwrap().to_string();
    assert!(
        py(&daemon, "a", &["connect", gateway_a.trim(), &daemon_port])
            .await
            .starts_with("failed")
    );

    // Only allowed.test: denied.test does not resolve, raw IPs answer only once an
    // allowed name resolved to them.
    let response = set_policy(
        &daemon,
        "a",
        serde_json::json!([{"domain": "allowed.test", "action": "allow"}]),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        py(&daemon, "a", &["connect", &allowed_ip, "8000"])
            .await
            .starts_with("failed"),
        "a raw IP before any name"
    );
    assert_eq!(
        py(&daemon, "a", &["get", "http://allowed.test:8000/"]).await,
        "hello from the internet"
    );
    assert_eq!(
        py(&daemon, "a", &["connect", &allowed_ip, "8000"]).await,
        "connected"
    );
    assert!(py(&daemon, "a", &["resolve", "denied.test"])
        .await
        .starts_with("failed"));
    assert!(py(&daemon, "a", &["connect", &denied_ip, "8000"])
        .await
        .starts_with("failed"));
    // b has no policy: unaffected.
    assert_eq!(
        py(&daemon, "b", &["connect", &denied_ip, "8000"]).await,
        "connected"
    );
    // The sprite can read its policy; the API gives it back.
    let inside = run(client, "a", &["cat", "/.sprite/policy/network.json"])
        .await
        .stdout();
    assert!(inside.contains("allowed.test"), "{inside}");
    let policy = daemon.get_json("/v1/sprites/a/policy/network").await;
    assert_eq!(
        policy,
        serde_json::json!({"rules": [{"domain": "allowed.test", "action": "allow"}]})
    );

    // A rule change cuts a live connection that it denies.
    let mut hold = client
        .exec(
            "a",
            &params(&[
                "python3",
                "/home/sprite/net.py",
                "hold",
                "allowed.test",
                "8001",
            ]),
        )
        .await
        .unwrap();
    let mut output = String::new();
    while !output.contains("held") {
        match tokio::time::timeout(Duration::from_secs(10), hold.next())
            .await
            .unwrap()
            .unwrap()
        {
            sprite_client::ExecEvent::Stdout(data) => {
                output.push_str(&String::from_utf8_lossy(&data))
            }
            sprite_client::ExecEvent::Exit(code) => panic!("hold exited {code}: {output}"),
            _ => {}
        }
    }
    let response = set_policy(
        &daemon,
        "a",
        serde_json::json!([{"domain": "*.example.org", "action": "allow"}]),
    )
    .await;
    assert_eq!(response.status(), 200);
    let cut_at = std::time::Instant::now();
    let done = collect(hold).await;
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("failed"),
        "{}",
        String::from_utf8_lossy(&done.stdout)
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(5),
        "the connection lived on for {:?}",
        cut_at.elapsed()
    );

    // Bad rules are refused with what to write instead; an empty list opens it again.
    let response = set_policy(
        &daemon,
        "a",
        serde_json::json!([{"domain": "https://x.com/", "action": "allow"}]),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("x.com"));
    assert_eq!(
        set_policy(&daemon, "a", serde_json::json!([]))
            .await
            .status(),
        200
    );
    assert_eq!(
        py(&daemon, "a", &["connect", &denied_ip, "8000"]).await,
        "connected"
    );
    dns.abort();
}
