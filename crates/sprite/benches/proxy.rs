//! URL proxy benchmark, side by side in one run (as root): the same HTTP client, over
//! one keep-alive connection, talks to a server in a sprite directly (from inside the
//! sprite's network namespace) and through the URL proxy (from the host):
//! - small requests: p50 and p99 latency, and the latency the proxy adds;
//! - a 256 MiB download: throughput both ways.
//!
//! Run: `sudo ./bench/proxy.sh` (or `cargo bench -p sprite --bench proxy`).
//! Results go to stdout and to target/bench/proxy.json.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use sprite_api::services::ServiceSpec;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SMALL_REQUESTS: usize = 2000;
const BIG_MIB: usize = 256;

/// A minimal HTTP/1.1 client on one kept-alive connection.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
    token: Option<String>,
}

impl Client {
    fn new(stream: TcpStream, host: &str, token: Option<&str>) -> Client {
        stream.set_nodelay(true).unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::with_capacity(1 << 20, stream),
            host: host.to_string(),
            token: token.map(String::from),
        }
    }

    /// GETs `path`; returns the body's length.
    fn get(&mut self, path: &str) -> usize {
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}\r\n",
            self.host
        )
        .unwrap();
        let mut length = 0usize;
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut remaining = length;
        let mut buffer = vec![0u8; 1 << 20];
        while remaining > 0 {
            let n = self
                .reader
                .read(&mut buffer[..remaining.min(1 << 20)])
                .unwrap();
            assert!(n > 0, "connection closed mid-body");
            remaining -= n;
        }
        length
    }
}

/// Small-request latencies (ms) and big-download throughput (MiB/s) over `client`.
fn measure(mut client: Client) -> (Vec<f64>, f64) {
    for _ in 0..100 {
        client.get("/small");
    }
    let latencies = (0..SMALL_REQUESTS)
        .map(|_| {
            let start = Instant::now();
            client.get("/small");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let start = Instant::now();
    assert_eq!(client.get("/big"), BIG_MIB << 20);
    let throughput = BIG_MIB as f64 / start.elapsed().as_secs_f64();
    (latencies, throughput)
}

fn main() {
    run_bench(bench());
}

async fn bench() {
    let daemon = Daemon::start_with(
        "debian",
        "storage = \"local\"\nwarm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "web").await;
    let setup = format!(
        "mkdir -p /home/sprite/www && cd /home/sprite/www && echo hello sprite > small \
         && dd if=/dev/urandom of=big bs=1M count={BIG_MIB} 2>/dev/null"
    );
    assert_eq!(run(client, "web", &["sh", "-c", &setup]).await.code, 0);
    // Python's file server, with HTTP/1.1 keep-alive, one write per small answer and
    // TCP_NODELAY (else Nagle and delayed ACKs add 40 ms to every request, both ways).
    let server = "import http.server as h, functools; \
                  h.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'; \
                  h.SimpleHTTPRequestHandler.disable_nagle_algorithm = True; \
                  h.SimpleHTTPRequestHandler.wbufsize = 65536; \
                  h.SimpleHTTPRequestHandler.log_message = lambda *a: None; \
                  h.ThreadingHTTPServer(('127.0.0.1', 8080), \
                  functools.partial(h.SimpleHTTPRequestHandler, directory='/home/sprite/www')).serve_forever()";
    let spec = ServiceSpec {
        cmd: "python3".into(),
        args: vec!["-c".into(), server.into()],
        http_port: Some(8080),
        ..Default::default()
    };
    client
        .put_service("web", "files", &spec, None, |_| {})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let id = client.get("web").await.unwrap().id;
    let layout =
        sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap();
    let init = sprite_sandbox::cgroup::SpriteCgroup::new(layout, &id)
        .init_pid()
        .unwrap()
        .unwrap();
    let (direct, direct_mibs) = tokio::task::spawn_blocking(move || {
        let stream = sprite_sandbox::connect_in_sprite(init, 8080, Duration::from_secs(5)).unwrap();
        measure(Client::new(stream, "127.0.0.1:8080", None))
    })
    .await
    .unwrap();
    let address = daemon.proxy_url.trim_start_matches("http://").to_string();
    let (proxied, proxied_mibs) = tokio::task::spawn_blocking(move || {
        let stream = TcpStream::connect(&address).unwrap();
        measure(Client::new(stream, "web.localhost", Some(TOKEN)))
    })
    .await
    .unwrap();

    let (direct_p50, direct_p99) = summary(direct, 0.99);
    let (proxy_p50, proxy_p99) = summary(proxied, 0.99);
    println!(
        "\nsprites URL proxy benchmark (python3 http.server in a Debian sprite, {} CPUs)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("{:<44} {:>10} {:>10}", "measure", "direct", "proxy");
    println!(
        "{:<44} {direct_p50:>10.3} {proxy_p50:>10.3}",
        "small request p50 (ms)"
    );
    println!(
        "{:<44} {direct_p99:>10.3} {proxy_p99:>10.3}",
        "small request p99 (ms)"
    );
    println!(
        "{:<44} {:>21.3}",
        "added by the proxy, p50 (ms)",
        proxy_p50 - direct_p50
    );
    println!(
        "{:<44} {direct_mibs:>10.0} {proxied_mibs:>10.0}",
        format!("{BIG_MIB} MiB download (MiB/s)")
    );
    println!(
        "{:<44} {:>21.0}%",
        "proxy throughput vs direct",
        proxied_mibs / direct_mibs * 100.0
    );
    let report = serde_json::json!({
        "small_p50_ms": { "direct": direct_p50, "proxy": proxy_p50 },
        "small_p99_ms": { "direct": direct_p99, "proxy": proxy_p99 },
        "added_p50_ms": proxy_p50 - direct_p50,
        "download_mib_s": { "direct": direct_mibs, "proxy": proxied_mibs },
    });
    write_report("proxy", &report);
}
