//! A test-made "internet" for network tests: a network namespace behind a veth of its
//! own with an HTTP server (port 8000, any address), an echo server (8001) and a DNS
//! server at `.53` that answers `A` questions from a table after a delay (so a test can
//! race forged answers against it). Optionally also the cloud metadata address
//! 169.254.169.254, routed from the host. Removed on drop, even when a test fails.
#![allow(dead_code, clippy::unwrap_used)]

use super::*;
use std::process::Command;

const SERVERS: &str = r#"
import socket, sys, threading, time, http.server, socketserver
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
def dns(address, delay, table):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 53))
    def answer(q, peer):
        time.sleep(delay)
        # The question: labels until the zero byte, then type and class.
        i = 12
        labels = []
        while q[i]:
            labels.append(q[i+1:i+1+q[i]].decode().lower()); i += 1 + q[i]
        qtype = q[i+1:i+3]; end = i + 5
        name = ".".join(labels)
        ip = table.get(name)
        if ip and qtype == b"\x00\x01":
            head = q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00"
            rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(ip)
        else:
            code = b"\x81\x80" if ip else b"\x81\x83"
            head = q[:2] + code + q[4:6] + b"\x00\x00\x00\x00\x00\x00"
            rr = b""
        s.sendto(head + q[12:end] + rr, peer)
    while True:
        q, peer = s.recvfrom(4096)
        threading.Thread(target=answer, args=(q, peer), daemon=True).start()
prefix, delay = sys.argv[1], float(sys.argv[2])
table = {"allowed.test": prefix + ".2", "denied.test": prefix + ".3", "metadata.test": "169.254.169.254", "lan.test": prefix + ".2"}
threading.Thread(target=dns, args=(prefix + ".53", delay, table), daemon=True).start()
socketserver.ThreadingTCPServer.allow_reuse_address = True
threading.Thread(target=socketserver.ThreadingTCPServer(("0.0.0.0", 8001), Echo).serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Page).serve_forever()
"#;

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's stand-in for the internet.
pub struct Internet {
    namespace: String,
    host_link: String,
    servers: Option<std::process::Child>,
    /// Addresses inside: `.2` (allowed.test), `.3` (denied.test), `.53` (DNS).
    pub prefix: String,
    metadata: bool,
}

impl Internet {
    /// `salt` keeps two internets of one test binary apart; `dns_delay` is how long
    /// its DNS server waits before each answer.
    pub fn new(salt: u32, dns_delay: f64, metadata: bool) -> Internet {
        let id = std::process::id() * 4 + salt;
        let tag = id % 200 + 20;
        let namespace = format!("sprt-inet-{id}");
        let host_link = format!("sprti{}", id % 100_000);
        // Not a private range: answers in private ranges are never admitted by a policy
        // that does not name them.
        let prefix = format!("198.18.{tag}");
        let mut internet = Internet {
            namespace: namespace.clone(),
            host_link: host_link.clone(),
            servers: None,
            prefix: prefix.clone(),
            metadata,
        };
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        let mut inside = vec![
            format!("addr add {prefix}.2/24 dev eth0"),
            format!("addr add {prefix}.3/24 dev eth0"),
            format!("addr add {prefix}.53/24 dev eth0"),
            "link set eth0 up".to_string(),
            "link set lo up".to_string(),
            format!("route add default via {prefix}.1"),
        ];
        if metadata {
            inside.push("addr add 169.254.169.254/32 dev eth0".to_string());
        }
        for args in inside {
            let mut full = vec!["-n", namespace.as_str()];
            full.extend(args.split(' '));
            ip(&full);
        }
        if metadata {
            ip(&["route", "add", "169.254.169.254/32", "dev", &host_link]);
        }
        internet.servers = Some(
            Command::new("ip")
                .args(["netns", "exec", &namespace, "python3", "-c", SERVERS])
                .arg(&prefix)
                .arg(dns_delay.to_string())
                .spawn()
                .unwrap(),
        );
        // Until the servers listen.
        for _ in 0..100 {
            let up = Command::new("ip")
                .args(["netns", "exec", &namespace, "ss", "-ltn"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(":8000"))
                .unwrap_or(false);
            if up {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        internet
    }

    pub fn address(&self, last: u8) -> String {
        format!("{}.{last}", self.prefix)
    }

    /// The DNS server inside, for `dns_upstreams`.
    pub fn dns(&self) -> String {
        format!("{}.53:53", self.prefix)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        if let Some(mut servers) = self.servers.take() {
            let _ = servers.kill();
            let _ = servers.wait();
        }
        if self.metadata {
            let _ = Command::new("ip")
                .args(["route", "del", "169.254.169.254/32", "dev", &self.host_link])
                .output();
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
pub const CLIENT: &str = r#"
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

/// Puts net.py into a sprite.
pub async fn install_client(daemon: &Daemon, sprite: &str) {
    daemon
        .client
        .fs_write(
            sprite,
            "/home/sprite/net.py",
            None,
            true,
            std::io::Cursor::new(CLIENT.as_bytes().to_vec()),
        )
        .await
        .unwrap();
}

pub async fn py(daemon: &Daemon, sprite: &str, args: &[&str]) -> String {
    let mut argv = vec!["python3", "/home/sprite/net.py"];
    argv.extend_from_slice(args);
    run(&daemon.client, sprite, &argv)
        .await
        .stdout()
        .trim()
        .to_string()
}

pub async fn set_policy(
    daemon: &Daemon,
    sprite: &str,
    rules: serde_json::Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/sprites/{sprite}/policy/network", daemon.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "rules": rules }))
        .send()
        .await
        .unwrap()
}
