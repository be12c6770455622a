//! Images benchmark, side by side in one run (as root):
//! - building the `dev` image from nothing (debootstrap, apt, Node.js, the agents, uv)
//!   against building the minimal `debian` image: wall time and size on disk;
//! - storing each as an image volume (the first create of a SpriteFS daemon whose store
//!   has no copy): time and bytes added to the object store;
//! - create → first exec p50 from `dev` against `debian` (images already stored).
//!
//! Run: `sudo ./bench/images.sh` (or `cargo bench -p sprite --bench images`).
//! `SKIP_BUILD=1` times only storing and creating (the shared test images are used).
//! Results go to stdout and to target/bench/images.json.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::path::Path;
use std::time::Instant;

fn main() {
    run_bench(bench());
}

/// Bytes of every file below `path` (apparent sizes, as `du -sb`).
fn bytes_below(path: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-sb"])
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
    write_report("images", &report);
}
