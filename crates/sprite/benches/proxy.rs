//! URL proxy benchmark, side by side in one run (as root): the same HTTP client, over
//! one keep-alive connection, talks to a server in a sprite directly (from inside the
//! sprite's network namespace) and through the URL proxy (from the host):
//! - small requests: p50 and p99 latency, and the latency the proxy adds;
//! - a 256 MiB download: throughput both ways, median of 5 downloads each, alternating.
//!
//! And the file-system API in the same run: `sprite cp` of a 1 GiB file into the sprite
//! (fs/write, synced) and back out (fs/read, then synced on the host), against `cp` of
//! the same file followed by `sync` of the copy, both inside the sprite (its own disk:
//! what the API adds) and on the host's disk. Three rounds of all four; before each
//! copy the disks are left to go quiet (the previous copy's writeback and upload done)
//! and page caches are dropped; medians are reported, with each round in the JSON. The
//! sprite is on SpriteFS (the default storage).
//!
//! And HTTP/2 through the proxy: a small request's latency alone, and beside a slow one
//! (a second before its headers) on the same connection (no head-of-line wait).
//!
//! Run: `sudo ./bench/proxy.sh` (or `cargo bench -p sprite --bench proxy`);
//! `PROXY_FS=0` leaves out the file-system copies.
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
const DOWNLOADS: usize = 5;
const FS_MIB: usize = 1024;
const FS_ROUNDS: usize = 3;

/// Sectors written to the machine's disks so far (loop and ram devices left out: what
/// they write reaches a real disk, or nothing).
fn sectors_written() -> u64 {
    std::fs::read_to_string("/proc/diskstats")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let device = fields.get(2)?;
            if device.starts_with("loop") || device.starts_with("ram") {
                return None;
            }
            fields.get(9)?.parse::<u64>().ok()
        })
        .sum()
}

/// Syncs, waits until no disk has been written for a second (at most a minute: a
/// previous copy's writeback and the storage process's upload are over), then drops
/// the page caches, so every copy starts from the same quiet machine.
fn settle() {
    let _ = std::process::Command::new("sync").status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = sectors_written();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(200));
        let now = sectors_written();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Runs a command; panics if it fails.
fn run_ok(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seconds a command takes, from a settled machine; panics if it fails.
fn timed(program: &str, args: &[&str]) -> f64 {
    settle();
    let start = Instant::now();
    run_ok(program, args);
    start.elapsed().as_secs_f64()
}

/// `sprite` arguments for `sprite <api> <command>...`.
fn sprite_args<'a>(api: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    [api, command].concat()
}

/// MiB/s of one round of each copy.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct FsRound {
    cp_on_host: f64,
    cp_in_sprite: f64,
    write: f64,
    read: f64,
}

/// Rounds of `cp` + `sync` on the host, of the same inside the sprite (its own disk),
/// and of `sprite cp` into the sprite and back.
fn measure_fs(daemon: &Daemon) -> Vec<FsRound> {
    let dir = tempfile::Builder::new()
        .prefix("sprite-fs-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let source = dir.path().join("source");
    let out = std::process::Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", source.display()),
            "bs=1M",
            &format!("count={FS_MIB}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let copy = dir.path().join("copy");
    let back = dir.path().join("back");
    let (source, copy, back) = (
        source.to_str().unwrap(),
        copy.to_str().unwrap(),
        back.to_str().unwrap(),
    );
    let sprite = env!("CARGO_BIN_EXE_sprite");
    let api = ["--api-url", daemon.url.as_str(), "--token", TOKEN];
    let cp = |from: &str, to: &str| timed(sprite, &sprite_args(&api, &["cp", "-q", from, to]));
    let in_sprite =
        |script: &'static str| sprite_args(&api, &["exec", "-s", "web", "--", "sh", "-c", script]);
    let mib = FS_MIB as f64;
    (0..FS_ROUNDS)
        .map(|_| {
            let _ = std::fs::remove_file(copy);
            let _ = std::fs::remove_file(back);
            let clear = "rm -f /home/sprite/fs-bench /home/sprite/fs-bench-copy";
            run_ok(sprite, &in_sprite(clear));
            let host = timed("sh", &["-c", &format!("cp {source} {copy} && sync {copy}")]);
            let write = cp(source, "web:/home/sprite/fs-bench");
            let read = cp("web:/home/sprite/fs-bench", back);
            let copy_inside =
                "cp /home/sprite/fs-bench /home/sprite/fs-bench-copy && sync /home/sprite/fs-bench-copy";
            let inside = timed(sprite, &in_sprite(copy_inside));
            let same = std::process::Command::new("cmp")
                .args([source, back])
                .status()
                .unwrap();
            assert!(same.success(), "the file came back different");
            FsRound {
                cp_on_host: mib / host,
                cp_in_sprite: mib / inside,
                write: mib / write,
                read: mib / read,
            }
        })
        .collect()
}

/// The median of what `pick` takes from each round.
fn median_of<T>(rounds: &[T], pick: impl Fn(&T) -> f64) -> f64 {
    if rounds.is_empty() {
        return f64::NAN;
    }
    summary(rounds.iter().map(pick).collect(), 0.5).0
}

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

/// Small-request latencies (ms) over `client`.
fn latencies(client: &mut Client) -> Vec<f64> {
    for _ in 0..100 {
        client.get("/small");
    }
    (0..SMALL_REQUESTS)
        .map(|_| {
            let start = Instant::now();
            client.get("/small");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// MiB/s of one big download over `client`.
fn download(client: &mut Client) -> f64 {
    let start = Instant::now();
    assert_eq!(client.get("/big"), BIG_MIB << 20);
    BIG_MIB as f64 / start.elapsed().as_secs_f64()
}

/// Rounds of the HTTP/2 measure.
const H2_ROUNDS: usize = 10;

/// Over one HTTP/2 connection (h2c) through the proxy: the latency (ms) of a small
/// request alone, and of the same request while `/slow` (a second before its headers)
/// is in flight on the same connection, [`H2_ROUNDS`] each.
async fn side_by_side(proxy_url: &str) -> (Vec<f64>, Vec<f64>) {
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let get = |path: &str| {
        h2.get(format!("{proxy_url}{path}"))
            .header("host", "web.localhost")
            .bearer_auth(TOKEN)
            .send()
    };
    let small = || async {
        let start = Instant::now();
        let response = get("/small").await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello sprite\n");
        start.elapsed().as_secs_f64() * 1000.0
    };
    for _ in 0..20 {
        small().await;
    }
    let mut alone = Vec::new();
    let mut beside = Vec::new();
    for _ in 0..H2_ROUNDS {
        alone.push(small().await);
        let slow = get("/slow");
        let slow = tokio::spawn(async move { slow.await.unwrap().bytes().await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        beside.push(small().await);
        assert_eq!(slow.await.unwrap().as_ref(), b"slow\n");
    }
    (alone, beside)
}

fn main() {
    run_bench(bench());
}

async fn bench() {
    let daemon =
        Daemon::start_with("debian", "warm_after = \"never\"\ncold_after = \"never\"\n").await;
    let client = &daemon.client;
    create(client, "web").await;
    let setup = format!(
        "mkdir -p /home/sprite/www && cd /home/sprite/www && echo hello sprite > small && echo slow > slow \
         && dd if=/dev/urandom of=big bs=1M count={BIG_MIB} 2>/dev/null"
    );
    assert_eq!(run(client, "web", &["sh", "-c", &setup]).await.code, 0);
    // Python's file server, with HTTP/1.1 keep-alive, one write per small answer and
    // TCP_NODELAY (else Nagle and delayed ACKs add 40 ms to every request, both ways);
    // `/slow` waits a second before it answers (headers too).
    let server = "import http.server as h, functools, time\n\
                  class H(h.SimpleHTTPRequestHandler):\n\
                  \x20   protocol_version = 'HTTP/1.1'\n\
                  \x20   disable_nagle_algorithm = True\n\
                  \x20   wbufsize = 65536\n\
                  \x20   def log_message(self, *a): pass\n\
                  \x20   def do_GET(self):\n\
                  \x20       if self.path == '/slow': time.sleep(1)\n\
                  \x20       return super().do_GET()\n\
                  h.ThreadingHTTPServer(('127.0.0.1', 8080), \
                  functools.partial(H, directory='/home/sprite/www')).serve_forever()\n";
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
    let address = daemon.proxy_url.trim_start_matches("http://").to_string();
    let (direct, proxied, downloads) = tokio::task::spawn_blocking(move || {
        let init = sprite_sandbox::PinnedProcess::pin(init, &id).unwrap();
        let stream =
            sprite_sandbox::connect_in_sprite(&init, 8080, Duration::from_secs(5)).unwrap();
        let mut direct = Client::new(stream, "127.0.0.1:8080", None);
        let mut proxied = Client::new(
            TcpStream::connect(&address).unwrap(),
            "web.localhost",
            Some(TOKEN),
        );
        let latencies = (latencies(&mut direct), latencies(&mut proxied));
        let downloads: Vec<(f64, f64)> = (0..DOWNLOADS)
            .map(|_| (download(&mut direct), download(&mut proxied)))
            .collect();
        (latencies.0, latencies.1, downloads)
    })
    .await
    .unwrap();
    let direct_mibs = median_of(&downloads, |d| d.0);
    let proxied_mibs = median_of(&downloads, |d| d.1);

    let (h2_alone, h2_beside) = side_by_side(&daemon.proxy_url).await;
    let h2_alone_p50 = summary(h2_alone.clone(), 0.5).0;
    let h2_beside_p50 = summary(h2_beside.clone(), 0.5).0;

    // PROXY_FS=0 leaves out the file-system API copies (minutes of the run).
    let with_fs = std::env::var("PROXY_FS").map_or(true, |v| v != "0");
    let rounds = if with_fs {
        measure_fs(&daemon)
    } else {
        Vec::new()
    };
    let host_mibs = median_of(&rounds, |r| r.cp_on_host);
    let inside_mibs = median_of(&rounds, |r| r.cp_in_sprite);
    let write_mibs = median_of(&rounds, |r| r.write);
    let read_mibs = median_of(&rounds, |r| r.read);

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
        format!("{BIG_MIB} MiB download (MiB/s, median of {DOWNLOADS})")
    );
    println!(
        "{:<44} {:>21.0}%",
        "proxy throughput vs direct",
        proxied_mibs / direct_mibs * 100.0
    );
    println!(
        "{:<44} {h2_alone_p50:>10.3} {h2_beside_p50:>10.3}",
        "HTTP/2 small request p50 (ms): alone / beside a slow one"
    );
    let mut report = serde_json::json!({
        "downloads_mib_s": downloads.iter().map(|(d, p)| serde_json::json!({ "direct": d, "proxy": p })).collect::<Vec<_>>(),
        "small_p50_ms": { "direct": direct_p50, "proxy": proxy_p50 },
        "small_p99_ms": { "direct": direct_p99, "proxy": proxy_p99 },
        "added_p50_ms": proxy_p50 - direct_p50,
        "download_mib_s": { "direct": direct_mibs, "proxy": proxied_mibs },
        "h2_small_p50_ms": { "alone": h2_alone_p50, "beside_slow": h2_beside_p50 },
        "h2_small_ms": { "alone": h2_alone, "beside_slow": h2_beside },
    });
    if !with_fs {
        write_report("proxy", &report);
        return;
    }
    println!(
        "\n{:<44} {:>10} {:>10} {:>10}",
        format!("file-system API, {FS_MIB} MiB (MiB/s, median of {FS_ROUNDS})"),
        "API",
        "cp sprite",
        "cp host"
    );
    println!(
        "{:<44} {write_mibs:>10.0} {inside_mibs:>10.0} {host_mibs:>10.0}",
        "into the sprite: sprite cp (fs/write, synced)"
    );
    println!(
        "{:<44} {read_mibs:>10.0} {inside_mibs:>10.0} {host_mibs:>10.0}",
        "out of the sprite: sprite cp (fs/read)"
    );
    println!(
        "{:<44} {:>9.0}% {:>9.0}%",
        "fs/write vs cp in the sprite / on the host",
        write_mibs / inside_mibs * 100.0,
        write_mibs / host_mibs * 100.0
    );
    println!(
        "{:<44} {:>9.0}% {:>9.0}%",
        "fs/read vs cp in the sprite / on the host",
        read_mibs / inside_mibs * 100.0,
        read_mibs / host_mibs * 100.0
    );
    for (n, round) in rounds.iter().enumerate() {
        println!(
            "  round {}: write {:.0}, read {:.0}, cp in the sprite {:.0}, cp on the host {:.0}",
            n + 1,
            round.write,
            round.read,
            round.cp_in_sprite,
            round.cp_on_host
        );
    }
    let fs = serde_json::json!({
        "fs_rounds_mib_s": rounds,
        "fs_mib_s": { "cp_in_sprite": inside_mibs, "cp_on_host": host_mibs, "write": write_mibs, "read": read_mibs },
        "fs_vs_cp_in_sprite": { "write": write_mibs / inside_mibs, "read": read_mibs / inside_mibs },
        "fs_vs_cp_on_host": { "write": write_mibs / host_mibs, "read": read_mibs / host_mibs },
    });
    if let (Some(report), serde_json::Value::Object(fs)) = (report.as_object_mut(), fs) {
        report.extend(fs);
    }
    write_report("proxy", &report);
}
