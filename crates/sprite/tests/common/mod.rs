//! Test harness: a real daemon (this crate's binary) on a free port with its own data
//! directory. Dropping it kills the daemon and every sprite it made (by their cgroups),
//! even when the test failed.
#![allow(dead_code, clippy::unwrap_used)]

pub mod browser;
pub mod cluster;
pub mod internet;
pub mod registry;

use sprite_api::exec::ExecParams;
use sprite_client::{Client, ExecEvent, ExecStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const TOKEN: &str = "test-token-0123456789";

pub struct Daemon {
    child: Option<Child>,
    /// Base of the URL proxy: `http://127.0.0.1:PORT`.
    pub proxy_url: String,
    /// The S3 server under a SpriteFS daemon when SPRITE_TEST_STORE=s3.
    s3: Option<Child>,
    pub url: String,
    pub data: tempfile::TempDir,
    pub client: Client,
    pub pid: u32,
    image: String,
}

/// Where test daemons listen: below the kernel's ephemeral range (32768 and up), so no
/// outgoing connection can take a daemon's port while it restarts.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A free port from [`PORTS`], picked at random (tests run in parallel) and checked,
/// and never one handed out before in this process: a port is free when checked but
/// its daemon binds it later, so two tests starting at once could otherwise both get
/// it (CI saw a daemon's proxy fail with "address already in use").
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for attempt in 0u32..1000 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(attempt);
        hasher.write_u32(std::process::id());
        let port = PORTS.start + (hasher.finish() % u64::from(PORTS.end - PORTS.start)) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
}

/// Shared, prebuilt images (debootstrap takes a minute: once per machine).
fn shared_images() -> PathBuf {
    PathBuf::from(
        std::env::var("SPRITE_TEST_IMAGES")
            .unwrap_or_else(|_| "/var/tmp/sprites-test-images".into()),
    )
}

async fn ensure_shared_image(name: &str) -> PathBuf {
    static BUILD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = BUILD.lock().await;
    let dir = shared_images();
    std::fs::create_dir_all(&dir).unwrap();
    // Root's alone: sprites get their image as a detached mount, never by path.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    lock.lock().unwrap();
    let store = sprite_core::image::ImageStore::new(
        dir.clone(),
        100_000,
        "http://deb.debian.org/debian".into(),
    );
    store.ensure(name).await.unwrap();
    dir.join(name)
}

fn s3s_fs() -> PathBuf {
    if let Ok(path) = std::env::var("SPRITE_S3S_FS") {
        return PathBuf::from(path);
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .join(".cargo/bin/s3s-fs");
    if home.exists() {
        home
    } else {
        PathBuf::from("s3s-fs")
    }
}

/// A line of a test daemon's config that puts its object store on a real S3 server
/// (s3s-fs) even without SPRITE_TEST_STORE=s3.
pub const S3_STORE: &str = "# test: s3 store\n";

/// With SPRITE_TEST_STORE=s3, a SpriteFS daemon's object store is a real S3 server
/// (s3s-fs) serving `<data>/store` (kept by [`Daemon::lose_host`], like a bucket).
/// Returns the server and the config lines that point the daemon at it.
/// A config with the line [`S3_STORE`] gets one whatever the environment says.
fn s3_store_for(data: &Path, config: &str) -> Option<(Child, String)> {
    let wanted =
        std::env::var("SPRITE_TEST_STORE").as_deref() == Ok("s3") || config.contains(S3_STORE);
    if !wanted || !config.contains("storage = \"spritefs\"") || config.contains("store = \"") {
        return None;
    }
    Some(start_s3(&data.join("store")))
}

/// A real S3 server (s3s-fs) over `root`, and the config lines that point a daemon
/// at it (bucket `sprites`, prefix `test`).
pub fn start_s3(root: &Path) -> (Child, String) {
    std::fs::create_dir_all(root.join("sprites")).unwrap();
    let port = free_port();
    let child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "test-key", "--secret-key", "test-secret"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start s3s-fs ({e}); scripts/test.sh installs it"));
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = format!(
        "store = \"s3://sprites/test\"\n\
         [s3]\n\
         endpoint = \"http://127.0.0.1:{port}\"\n\
         region = \"us-east-1\"\n\
         access_key_id = \"test-key\"\n\
         secret_access_key = \"test-secret\"\n\
         allow_http = true\n"
    );
    (child, lines)
}

/// Starts `sprite daemon` on a data directory; its log is appended to `daemon.log`.
/// It starts with SIGINT and SIGQUIT ignored, as a daemon started from a script with
/// `&` does: sprites' commands must still get them (lifecycle.rs sends a SIGINT).
fn spawn_daemon(data: &Path, port: u16, image: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("daemon.log"))
        .unwrap();
    Command::new("bash")
        .args(["-c", "trap '' INT QUIT; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_sprite"))
        .args([
            "daemon",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--image",
            image,
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(data.join("daemon.toml"))
        .env("SPRITE_TOKEN", TOKEN)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

impl Daemon {
    /// A WebSocket request to the API's `path_and_query`, with the test token.
    pub fn ws_request(
        &self,
        path_and_query: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}{path_and_query}",
            self.url.replacen("http://", "ws://", 1)
        );
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        request
    }

    /// `GET path_and_query` on the API with the test token, as JSON.
    pub async fn get_json(&self, path_and_query: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}{path_and_query}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn start(image: &str) -> Daemon {
        Self::start_with(image, "").await
    }

    pub async fn start_with(image: &str, config: &str) -> Daemon {
        let data = tempfile::Builder::new()
            .prefix("sprite-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            data.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        std::fs::create_dir_all(data.path().join("images")).unwrap();
        let shared = ensure_shared_image(image).await;
        std::os::unix::fs::symlink(&shared, data.path().join("images").join(image)).unwrap();
        // No pool unless a test asks: pooled sprites would start alongside every test.
        let config = if config.contains("pool =") {
            config.to_string()
        } else {
            format!("pool = 0\n{config}")
        };
        // Each daemon its own URL proxy port.
        let proxy_port = free_port();
        let config = format!("proxy_listen = \"127.0.0.1:{proxy_port}\"\n{config}");
        // Each daemon its own sprite subnet (a /23, 128 sprites), from its proxy port
        // (in PORTS, and unique among running daemons).
        let config = if config.contains("network =") {
            config
        } else {
            let index = u32::from(proxy_port - PORTS.start);
            format!(
                "network = \"10.{}.{}.0/23\"\n{config}",
                (index >> 7) & 255,
                (index & 127) << 1
            )
        };
        let (s3, config) = match s3_store_for(data.path(), &config) {
            Some((child, lines)) => (Some(child), format!("{config}{lines}")),
            None => (None, config.to_string()),
        };
        std::fs::write(data.path().join("daemon.toml"), config).unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let child = spawn_daemon(data.path(), port, image);
        let pid = child.id();
        let client = Client::new(&url, TOKEN);
        let mut daemon = Daemon {
            child: Some(child),
            proxy_url: format!("http://127.0.0.1:{proxy_port}"),
            s3,
            url,
            data,
            client,
            pid,
            image: image.to_string(),
        };
        daemon.wait_healthy().await;
        daemon
    }

    pub async fn wait_healthy(&mut self) {
        for _ in 0..200 {
            if self.client.health().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("daemon did not come up: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("daemon.log")).unwrap_or_default()
    }

    /// Waits up to `timeout` for the daemon process to exit by itself; whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills the daemon process only (sprites keep running), then starts a new one on
    /// the same data directory and port.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let child = spawn_daemon(self.data.path(), port, &self.image);
        self.pid = child.id();
        self.child = Some(child);
        self.wait_healthy().await;
    }

    /// Loses the host: kills the daemon, every sprite and the storage process, and
    /// deletes all local state except the object store (and the shared image link),
    /// then starts a daemon on the empty data directory.
    pub async fn lose_host(&mut self) {
        self.lose_host_with(false).await
    }

    /// [`Self::lose_host`] as a power cut would: the storage process is SIGKILLed
    /// first (no flush on the way out), then the daemon and every sprite process.
    pub async fn lose_host_abruptly(&mut self) {
        self.lose_host_with(true).await
    }

    async fn lose_host_with(&mut self, abruptly: bool) {
        if abruptly {
            let pattern = format!("storage --data-dir {}", self.data.path().display());
            let _ = Command::new("pkill")
                .args(["-KILL", "-f", &pattern])
                .output();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let ids = self.sprite_ids();
        let layout = sprite_sandbox::cgroup::Layout::detect(Path::new("/sys/fs/cgroup")).unwrap();
        for id in &ids {
            for cgroup in sprite_cgroups(&layout, id) {
                let _ = cgroup.kill_all(Duration::from_secs(10));
                let _ = cgroup.remove();
            }
        }
        cleanup_storage(self.data.path(), &ids);
        for entry in std::fs::read_dir(self.data.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if ["store", "images", "daemon.toml", "daemon.log"].contains(&name.as_str()) {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
        self.restart().await;
    }

    /// Kills the host as a crash would: its storage process, its daemon and every
    /// process of its sprites (SIGKILL, nothing flushed), and leaves it dead.
    pub fn kill_host(&mut self) {
        let pattern = format!("storage --data-dir {}", self.data.path().display());
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &pattern])
            .output();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let layout = sprite_sandbox::cgroup::Layout::detect(Path::new("/sys/fs/cgroup")).unwrap();
        for id in self.sprite_ids() {
            for cgroup in sprite_cgroups(&layout, &id) {
                let _ = cgroup.kill_all(Duration::from_secs(10));
            }
        }
    }

    pub fn sprite_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.data.path().join("sprites"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn data_path(&self) -> &Path {
        self.data.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let layout = sprite_sandbox::cgroup::Layout::detect(Path::new("/sys/fs/cgroup")).unwrap();
        for id in self.sprite_ids() {
            for cgroup in sprite_cgroups(&layout, &id) {
                let _ = cgroup.kill_all(Duration::from_secs(10));
                let _ = cgroup.remove();
            }
        }
        cleanup_storage(self.data.path(), &self.sprite_ids());
        // The daemon's nftables table outlives it by design (sprites keep running).
        if let Ok(table) = std::fs::read_to_string(self.data.path().join("network-table")) {
            let mut args = vec!["delete", "table"];
            args.extend(table.split_whitespace());
            let _ = Command::new("nft").args(&args).output();
        }
        if let Some(mut s3) = self.s3.take() {
            let _ = s3.kill();
            let _ = s3.wait();
        }
    }
}

/// The cgroups of sprite `id` on this machine: named by the id, or `<id>.<host>` by a
/// daemon of a cluster.
pub fn sprite_cgroups(
    layout: &sprite_sandbox::cgroup::Layout,
    id: &str,
) -> Vec<sprite_sandbox::cgroup::SpriteCgroup> {
    let plain = sprite_sandbox::cgroup::SpriteCgroup::new(layout.clone(), id);
    let mut names = vec![id.to_string()];
    if let Some(parent) = plain
        .dirs()
        .first()
        .and_then(|dir| dir.parent().map(Path::to_path_buf))
    {
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{id}.")) {
                names.push(name);
            }
        }
    }
    names
        .into_iter()
        .map(|name| sprite_sandbox::cgroup::SpriteCgroup::new(layout.clone(), &name))
        .collect()
}

/// Undoes what a SpriteFS daemon left: sprite ext4 mounts, loop devices over the FUSE
/// files, the storage process and its FUSE mount.
fn cleanup_storage(data: &Path, sprites: &[String]) {
    let data_text = data.to_string_lossy().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&data_text) && !point.ends_with("/fs/mnt"))
        .map(str::to_string)
        .collect();
    mounts.sort();
    for point in mounts.iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(point).output();
    }
    let loops = Command::new("losetup")
        .args(["-n", "-O", "NAME,BACK-FILE"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    for line in loops.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(device), Some(file)) = (parts.next(), parts.next()) {
            let ours = file.starts_with(&data_text)
                || sprites.iter().any(|id| {
                    file.ends_with(&format!("/{id}")) || file.contains(&format!("/{id}@"))
                });
            if ours {
                let _ = Command::new("losetup").args(["-d", device]).output();
            }
        }
    }
    let pattern = format!("storage --data-dir {data_text}");
    let _ = Command::new("pkill")
        .args(["-TERM", "-f", &pattern])
        .output();
    for _ in 0..100 {
        let alive = Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", &pattern])
        .output();
    let _ = Command::new("umount")
        .arg("-l")
        .arg(data.join("fs/mnt"))
        .output();
}

pub fn params(argv: &[&str]) -> ExecParams {
    let mut params = ExecParams::from_query(&[], 0).unwrap();
    params.argv = argv.iter().map(|s| s.to_string()).collect();
    params.path = argv[0].to_string();
    params
}

/// Output of a finished command.
#[derive(Debug, Default)]
pub struct Finished {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: i32,
    pub session: String,
}

impl Finished {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub async fn collect(mut stream: ExecStream) -> Finished {
    let mut finished = Finished::default();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("exec timed out")
            .expect("exec stream")
        {
            ExecEvent::SessionInfo { session_id, .. } => finished.session = session_id,
            ExecEvent::Stdout(d) => finished.stdout.extend(d),
            ExecEvent::Stderr(d) => finished.stderr.extend(d),
            ExecEvent::Exit(code) => {
                finished.code = code;
                return finished;
            }
            ExecEvent::Text(_) => {}
        }
    }
}

pub async fn run(client: &Client, sprite: &str, argv: &[&str]) -> Finished {
    collect(client.exec(sprite, &params(argv)).await.unwrap()).await
}

/// A create request with nothing but the name set.
pub fn sprite_request(name: &str) -> sprite_api::sprite::CreateSpriteRequest {
    sprite_api::sprite::CreateSpriteRequest {
        name: name.into(),
        url_settings: None,
        labels: None,
        config: None,
        environment: None,
        wait_for_capacity: None,
        runtime: None,
        image: None,
        from: None,
        host: None,
        template: None,
        run_cmd: None,
    }
}

/// A create request forking `parent` at `checkpoint`.
pub fn fork_request(
    name: &str,
    parent: &str,
    checkpoint: &str,
) -> sprite_api::sprite::CreateSpriteRequest {
    sprite_api::sprite::CreateSpriteRequest {
        from: Some(sprite_api::sprite::ForkSource {
            sprite: parent.into(),
            checkpoint: Some(checkpoint.into()),
        }),
        ..sprite_request(name)
    }
}

pub async fn create(client: &Client, name: &str) {
    client.create(&sprite_request(name)).await.unwrap();
}

/// p50 and the `tail` percentile of samples.
pub fn summary(mut samples: Vec<f64>, tail: f64) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(tail))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Ready sprites in the daemon's pool (`/healthz`).
pub async fn pool_ready(daemon: &Daemon) -> u64 {
    let health: serde_json::Value = reqwest::get(format!("{}/healthz", daemon.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["pool_ready"].as_u64().unwrap_or(0)
}

/// Waits until the pool holds `want` sprites.
pub async fn wait_pool(daemon: &Daemon, want: u64) {
    let start = std::time::Instant::now();
    while pool_ready(daemon).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "pool never reached {want}: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the sprite has `want`, polling its info (never an exec: that would be
/// activity); answers how long that took.
pub async fn wait_status(
    client: &Client,
    name: &str,
    want: sprite_api::sprite::SpriteStatus,
    within: Duration,
) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let now = client.get(name).await.unwrap();
        if now.status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{name} still {:?} after {within:?}, wanted {want:?}: {:?}",
            now.status,
            now.lifecycle
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a benchmark's async body on a 2-worker runtime (the benches' `main`).
pub fn run_bench<F: std::future::Future<Output = ()>>(bench: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench);
}

/// Writes a benchmark's figures to `target/bench/<name>.json`.
pub fn write_report(name: &str, report: &impl serde::Serialize) {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(report).unwrap(),
    )
    .unwrap();
}

/// The host pid of a running sprite's PID 1, from its cgroup.
pub fn init_pid_of(sprite_id: &str) -> u32 {
    let layout = sprite_sandbox::cgroup::Layout::detect(Path::new("/sys/fs/cgroup")).unwrap();
    sprite_sandbox::cgroup::SpriteCgroup::new(layout, sprite_id)
        .init_pid()
        .unwrap()
        .unwrap_or_else(|| panic!("sprite {sprite_id} has no pid 1"))
}
