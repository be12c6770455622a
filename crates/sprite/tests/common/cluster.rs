//! Clusters of daemons on this one machine (tests and benches): a shared S3 server, a
//! host of a cluster, and pausing or killing hosts.

use super::*;

/// The S3 server every host shares; stopped last (after the daemons flushed).
pub struct SharedStore {
    child: std::process::Child,
    dir: tempfile::TempDir,
    lines: String,
}

impl SharedStore {
    pub fn start() -> SharedStore {
        let dir = tempfile::Builder::new()
            .prefix("sprite-cluster-store-")
            .tempdir()
            .unwrap();
        let (child, lines) = start_s3(dir.path());
        SharedStore { child, dir, lines }
    }

    /// The S3 server's root (bucket `sprites`, prefix `test`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The daemon and storage process of a host.
pub fn host_pids(daemon: &Daemon) -> Vec<String> {
    let pattern = format!("storage --data-dir {}", daemon.data_path().display());
    let storage = std::process::Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    let mut pids: Vec<String> = String::from_utf8_lossy(&storage.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(!pids.is_empty(), "no storage process for {pattern}");
    pids.push(daemon.pid.to_string());
    pids
}

pub fn signal(pids: &[String], signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pids:?}");
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_host(cluster: &str, id: &str, store: &SharedStore) -> Daemon {
    let config = format!(
        "storage = \"spritefs\"\nwarm_after = \"never\"\ncold_after = \"never\"\n\
         cluster = \"{cluster}\"\nhost_id = \"{id}\"\n{}",
        store.lines
    );
    Daemon::start_with("busybox", &config).await
}

pub fn create_on(name: &str, host: &str) -> sprite_api::sprite::CreateSpriteRequest {
    sprite_api::sprite::CreateSpriteRequest {
        host: Some(host.into()),
        ..sprite_request(name)
    }
}

/// host-a, host-b and host-c of `cluster` over `store`. host-a makes sprite `seed`
/// first, which puts the image in the store: the others find it there.
pub async fn start_three(cluster: &str, store: &SharedStore) -> Vec<Daemon> {
    let a = start_host(cluster, "host-a", store).await;
    create(&a.client, "seed").await;
    let b = start_host(cluster, "host-b", store).await;
    let c = start_host(cluster, "host-c", store).await;
    vec![a, b, c]
}
