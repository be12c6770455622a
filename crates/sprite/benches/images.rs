//! Images benchmark, side by side in one run (as root):
//! - building the `dev` image from nothing (debootstrap, apt, Node.js, the agents, uv)
//!   against building the minimal `debian` image: wall time and size on disk;
//! - storing each as an image volume (the first create of a SpriteFS daemon whose store
//!   has no copy): time and bytes added to the object store;
//! - create → first exec p50 from `dev` against `debian` (images already stored);
//! - registry images (a local `docker-registry`): pulling a three-layer image (the
//!   Debian root as its base layer) against `skopeo copy` of it to a directory, the
//!   bytes a second image that shares the base adds to the store, and create → first
//!   exec p50 from the pulled image against the built `debian` one (goal: within 10 %).
//!
//! Run: `sudo ./bench/images.sh` (or `cargo bench -p sprite --bench images`).
//! `SKIP_BUILD=1` times only storing and creating (the shared test images are used);
//! `ONLY_REGISTRY=1` only the registry figures.
//! Results go to stdout and to target/bench/images.json.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::registry::*;
use common::*;
use std::path::Path;
use std::time::Instant;

fn main() {
    run_bench(bench());
}

/// Bytes of every file below `path`: apparent sizes (`du -sb`).
fn bytes_below(path: &Path) -> u64 {
    du(path, "-sb")
}

/// Bytes of every file below `path` as stored (`du -s --block-size=1`).
fn disk_bytes(path: &Path) -> u64 {
    du(path, "--block-size=1")
}

fn du(path: &Path, unit: &str) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-s", unit])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Builds `image` from nothing in a scratch directory: seconds and bytes.
async fn build(image: &str) -> (f64, u64) {
    let scratch = tempfile::Builder::new()
        .prefix("sprite-bench-images-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = sprite_core::image::ImageStore::new(
        scratch.path().to_path_buf(),
        100_000,
        "http://deb.debian.org/debian".into(),
    );
    let start = Instant::now();
    let root = store.ensure(image).await.unwrap();
    let seconds = start.elapsed().as_secs_f64();
    (seconds, bytes_below(&root))
}

/// A three-layer OCI image in a layout (`base`: the Debian root; `app`: two more layers)
/// and `second`, which shares the base layer and adds one of its own.
fn make_images(work: &Path, debian_root: &Path) -> std::path::PathBuf {
    let layout = work.join("layout");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    sh("umoci", &["init", "--layout", &layout.to_string_lossy()]);
    sh("umoci", &["new", "--image", &image("app")]);
    // The base layer: the Debian root with its owners back at 0 (as `tar` of a real
    // root would have them).
    let base = work.join("base.tar");
    sh(
        "tar",
        &[
            "-C",
            &debian_root.to_string_lossy(),
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
            &base.to_string_lossy(),
            ".",
        ],
    );
    add_layer(&layout, "app", None, &base);
    sh("umoci", &["tag", "--image", &image("app"), "base"]);
    for (tag, layer, bytes) in [
        ("app", "tools", 20 << 20),
        ("app", "code", 5 << 20),
        ("second", "other", 5 << 20),
    ] {
        let dir = work.join(layer);
        std::fs::create_dir_all(dir.join("opt").join(layer)).unwrap();
        // Random bytes: nothing for zstd to take away (a layer of binaries is not far).
        sh(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={}", dir.join("opt").join(layer).join("blob").display()),
                "bs=1M",
                &format!("count={}", bytes >> 20),
                "status=none",
            ],
        );
        let tar = work.join(format!("{layer}.tar"));
        layer_tar(&dir, &tar);
        let from = if tag == "second" { "base" } else { "app" };
        add_layer(&layout, from, Some(tag), &tar);
    }
    layout
}

async fn registry_figures(report: &mut serde_json::Map<String, serde_json::Value>) {
    let work = tempfile::Builder::new()
        .prefix("sprite-bench-registry-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // The Debian root the test images share (built once per machine).
    let debian = Daemon::start_with("debian", "storage = \"spritefs\"\n").await;
    let debian_root = debian.data_path().join("images/debian/rootfs");
    let layout = make_images(work.path(), &debian_root);
    let registry = Registry::start(&work.path().join("registry"), None);
    for tag in ["app", "second"] {
        push(
            &layout,
            tag,
            &format!("docker://127.0.0.1:{}/bench/{tag}:1", registry.port),
            None,
        );
    }
    let reference = |tag: &str| format!("127.0.0.1:{}/bench/{tag}:1", registry.port);
    let runs = 3;
    let (mut ours, mut skopeo) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // skopeo: download only, to a directory.
        let dir = work.path().join(format!("skopeo-{run}"));
        let start = Instant::now();
        sh(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{}", reference("app")),
                &format!("dir:{}", dir.display()),
            ],
        );
        skopeo.push(start.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&dir);
        // Ours, into a daemon with an empty store: download, unpack, store as volumes.
        let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
        let request = sprite_api::admin::PullRequest {
            reference: reference("app"),
            name: Some("app".into()),
            ..Default::default()
        };
        let start = Instant::now();
        daemon.client.pull_image(&request, |_| {}).await.unwrap();
        ours.push(start.elapsed().as_secs_f64());
        if run + 1 < runs {
            continue;
        }
        // The second image: only its own layer is fetched and stored.
        let store = daemon.data_path().join("store");
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let before = disk_bytes(&store);
        let request = sprite_api::admin::PullRequest {
            reference: reference("second"),
            name: Some("second".into()),
            ..Default::default()
        };
        let mut shared = 0;
        daemon
            .client
            .pull_image(&request, |event| {
                if matches!(event, sprite_api::admin::PullEvent::Layer { state, .. } if state == "stored") {
                    shared += 1;
                }
            })
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let second_bytes = disk_bytes(&store).saturating_sub(before);
        let first_bytes = before;
        println!(
            "second image: {shared} layer(s) already stored; it added {:.1} MiB to the store (the first image: {:.1} MiB)",
            second_bytes as f64 / (1 << 20) as f64,
            first_bytes as f64 / (1 << 20) as f64
        );
        report.insert("second_image_shared_layers".into(), shared.into());
        report.insert("second_image_store_bytes".into(), second_bytes.into());
        report.insert("first_image_store_bytes".into(), first_bytes.into());
        // Creates from the pulled image vs the built debian one, side by side.
        let mut pulled = Vec::new();
        let mut built = Vec::new();
        for i in 0..20 {
            for (client, image, times) in [
                (&daemon.client, "app", &mut pulled),
                (&debian.client, "debian", &mut built),
            ] {
                let name = format!("c-{i}");
                let mut request = sprite_request(&name);
                request.image = Some(image.into());
                let start = Instant::now();
                client.create(&request).await.unwrap();
                assert_eq!(run_in(client, &name).await, 0);
                times.push(ms(start.elapsed()));
            }
        }
        for i in 0..20 {
            daemon.client.destroy(&format!("c-{i}")).await.unwrap();
            debian.client.destroy(&format!("c-{i}")).await.unwrap();
        }
        // Where the time goes, from each daemon's own log of the starts.
        let part = |log: &str, field: &str| {
            let values: Vec<f64> = log
                .lines()
                .filter(|l| l.contains("sprite started") && l.contains("sprite=c-"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{field}=")))
                        .and_then(|v| v.parse().ok())
                })
                .collect();
            summary(values, 0.9).0
        };
        for field in ["ms", "mount_ms", "sandbox_ms", "network_ms"] {
            println!(
                "  start {field} p50: pulled {:.1}, debian {:.1}",
                part(&daemon.log(), field),
                part(&debian.log(), field)
            );
        }
        let (pulled_p50, _) = summary(pulled, 0.9);
        let (built_p50, _) = summary(built, 0.9);
        println!(
            "create → exec p50: pulled image {pulled_p50:.1} ms, built debian {built_p50:.1} ms ({:+.1} %)",
            (pulled_p50 / built_p50 - 1.0) * 100.0
        );
        report.insert("create_pulled_p50_ms".into(), pulled_p50.into());
        report.insert("create_debian_side_by_side_p50_ms".into(), built_p50.into());
    }
    let (ours_p50, _) = summary(ours.clone(), 0.9);
    let (skopeo_p50, _) = summary(skopeo.clone(), 0.9);
    println!(
        "pull of a 3-layer image ({runs} runs): ours {ours_p50:.2} s p50 (download, unpack, store), skopeo copy to a dir {skopeo_p50:.2} s p50 (download only)"
    );
    report.insert("pull_ours_s".into(), serde_json::json!(ours));
    report.insert("pull_skopeo_s".into(), serde_json::json!(skopeo));
    report.insert("pull_ours_p50_s".into(), ours_p50.into());
    report.insert("pull_skopeo_p50_s".into(), skopeo_p50.into());
}

async fn run_in(client: &sprite_client::Client, name: &str) -> i32 {
    run(client, name, &["true"]).await.code
}

/// A SpriteFS daemon on `image`: the first create (which stores the image as a volume)
/// and its bytes in the store, then create → first exec times of 20 more.
async fn creates(image: &str) -> (f64, u64, Vec<f64>) {
    let daemon = Daemon::start_with(image, "storage = \"spritefs\"\n").await;
    let client = &daemon.client;
    let store = daemon.data_path().join("store");
    let before = bytes_below(&store);
    let start = Instant::now();
    create(client, "first").await;
    assert_eq!(run(client, "first", &["true"]).await.code, 0);
    let first = start.elapsed().as_secs_f64();
    // The image volume reaches the store with the first sprite's (tiny) volume.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let stored = bytes_below(&store).saturating_sub(before);
    let mut times = Vec::new();
    for i in 0..20 {
        let name = format!("bench-{i}");
        let start = Instant::now();
        create(client, &name).await;
        assert_eq!(run(client, &name, &["true"]).await.code, 0);
        times.push(ms(start.elapsed()));
    }
    for i in 0..20 {
        client.destroy(&format!("bench-{i}")).await.unwrap();
    }
    client.destroy("first").await.unwrap();
    (first, stored, times)
}

async fn bench() {
    let mut report = serde_json::Map::new();
    if std::env::var("ONLY_REGISTRY").is_ok() {
        registry_figures(&mut report).await;
        write_report("images-registry", &report);
        return;
    }
    if std::env::var("SKIP_BUILD").is_err() {
        for image in ["debian", "dev"] {
            let (seconds, bytes) = build(image).await;
            println!(
                "build {image:7} {seconds:7.1} s   {:7.1} MiB on disk",
                bytes as f64 / (1 << 20) as f64
            );
            report.insert(format!("build_{image}_s"), seconds.into());
            report.insert(format!("size_{image}_bytes"), bytes.into());
        }
    }
    for image in ["debian", "dev"] {
        let (first, stored, times) = creates(image).await;
        let (p50, p90) = summary(times, 0.9);
        println!(
            "{image:7} store the image + first create {first:6.1} s, {:7.1} MiB into the store; create → exec p50 {p50:.1} ms, p90 {p90:.1} ms",
            stored as f64 / (1 << 20) as f64
        );
        report.insert(format!("store_{image}_s"), first.into());
        report.insert(format!("stored_{image}_bytes"), stored.into());
        report.insert(format!("create_{image}_p50_ms"), p50.into());
        report.insert(format!("create_{image}_p90_ms"), p90.into());
    }
    registry_figures(&mut report).await;
    write_report("images", &report);
}
