//! `sprite daemon`: resolves its settings (flags over config file over defaults: see
//! [`DaemonSettings::resolve`]),
//! recovers existing sprites and serves the API until SIGINT/SIGTERM. Sprites keep
//! running when the daemon stops; the next daemon adopts them.

mod cluster;
mod settings;

pub use settings::DaemonSettings;

use anyhow::{Context, Result};
use sprite_core::SpriteManager;
use sprite_server::{AppState, Tokens};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Default, clap::Args)]
pub struct DaemonArgs {
    /// Where sprites, images and the control-plane database live.
    #[arg(long, env = "SPRITE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API.
    #[arg(long)]
    pub listen: Option<String>,
    /// Config file (TOML); flags win over it.
    #[arg(long, default_value = "/etc/sprites/daemon.toml")]
    pub config: PathBuf,
    /// Image of new sprites: dev (default: Debian with compilers, Node.js and coding agents), debian (minimal) or busybox.
    #[arg(long)]
    pub image: Option<String>,
    /// Where sprites' files live: spritefs (default: volumes in an object store) or
    /// local (plain host directories: no checkpoints, forks or recovery on a new host).
    #[arg(long)]
    pub storage: Option<String>,
    /// SpriteFS object store: file:///path or s3://bucket/prefix (default: <data-dir>/store).
    #[arg(long)]
    pub store: Option<String>,
    /// Idle time before a sprite goes warm: its processes are frozen, memory kept
    /// (default 30s; "never" turns it off).
    #[arg(long, value_name = "DURATION")]
    pub warm_after: Option<String>,
    /// Idle time before a sprite goes cold: stopped, disk flushed to the object store
    /// and released (default 10m; "never" turns it off).
    #[arg(long, value_name = "DURATION")]
    pub cold_after: Option<String>,
    /// Ready sprites of the default image kept frozen, so a create only renames and
    /// thaws one (default 2; 0 turns the pool off).
    #[arg(long, value_name = "N")]
    pub pool: Option<usize>,
    /// When an fsync in a sprite returns, unless the sprite's config says otherwise:
    /// `local` (default: durable on this host's disk, the object store trails by at
    /// most a second) or `store` (durable in the object store: survives losing the host).
    #[arg(long, value_name = "MODE")]
    pub durability: Option<sprite_api::sprite::Durability>,
    /// Join a cluster of hosts coordinated by etcd: etcd://HOST:PORT[,HOST:PORT...]
    /// (every host uses the same --store s3://...; sprites default to store durability).
    #[arg(long, value_name = "ETCD_URL")]
    pub cluster: Option<String>,
    /// This host's name in the cluster (default: the hostname).
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub host_id: Option<String>,
    /// How the cluster's other hosts reach this host's API (default: http://<listen>).
    #[arg(long, value_name = "URL", requires = "cluster")]
    pub advertise: Option<String>,
    /// Subnet of the sprites' network links (default 10.231.0.0/16), or "off" for
    /// loopback-only sprites.
    #[arg(long, value_name = "CIDR|off")]
    pub network: Option<String>,
    /// Serve the web console (and the API it uses) on this address too, besides the API
    /// listener (where it is at `/`).
    #[arg(long, value_name = "ADDR")]
    pub console_listen: Option<String>,
    /// Address of the URL proxy that serves http://NAME.DOMAIN:PORT/ (default
    /// 127.0.0.1:7080).
    #[arg(long, value_name = "ADDR")]
    pub proxy_listen: Option<String>,
    /// Domain of sprite URLs (default localhost: browsers on the host open
    /// http://NAME.localhost:7080/ directly).
    #[arg(long)]
    pub domain: Option<String>,
    /// Serve sprite URLs over HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The admin token: from the flag/env/config, else the one written on an earlier start,
/// else a new one written now (mode 0600) where the CLI looks for it.
fn admin_token(given: Option<String>, data_dir: &Path) -> Result<String> {
    let path = crate::settings::token_file(data_dir);
    if let Some(token) = given.filter(|t| !t.is_empty()) {
        return Ok(token);
    }
    if let Ok(text) = std::fs::read_to_string(&path) {
        if !text.trim().is_empty() {
            return Ok(text.trim().to_string());
        }
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, &token).with_context(|| format!("write {}", temporary.display()))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated admin token");
    Ok(token)
}

/// `token` is the global `--token` flag: the admin token to accept.
pub async fn run(args: DaemonArgs, token: Option<String>) -> Result<u8> {
    crate::init_logging();
    let file = settings::load_file_config(&args.config)?;
    let environment = settings::Environment {
        token: std::env::var("SPRITE_TOKEN").ok().filter(|t| !t.is_empty()),
        executable: std::env::current_exe().context("find the sprite binary")?,
        resolv_conf: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
    };
    let DaemonSettings {
        data_dir,
        listen,
        token,
        core: config,
        proxy_listen,
        console_listen,
        domain,
        tls,
        wake_timeout,
        expedite_rcu: expedite,
        cluster,
    } = DaemonSettings::resolve(&args, token, file, &environment)?;
    if config.network.is_some() {
        // Links and routes go through netlink; rules through libnftables, which the
        // nftables package installs with `nft` (used if the library cannot be loaded).
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join("nft").is_file()))
            .unwrap_or(false);
        if !found {
            anyhow::bail!(
                "sprite networking needs nftables: apt install nftables (or run ./install.sh), or start with --network off for loopback-only sprites"
            );
        }
    }
    let tls = match tls {
        Some((cert, key)) => {
            Some(sprite_server::proxy::tls_acceptor(&cert, &key).context("TLS for sprite URLs")?)
        }
        None => None,
    };
    // The host's OOM killer takes sprites first; the daemon (restartable, but every
    // API call needs it) only after them.
    protect_from_oom("daemon", -900);
    match sprite_sandbox::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open files limit raised"),
        Err(error) => tracing::warn!("could not raise the open files limit: {error}"),
    }
    if let Err(error) = install_sprite_env(&data_dir, config.id_base) {
        tracing::warn!("sprite-env will be missing in sprites: {error:#}");
    }
    if let Some(cluster) = &cluster {
        // Hosts of one cluster may share a machine (tests, benches): each keeps its own
        // cgroups of a sprite.
        sprite_core::sandboxes::set_cgroup_scope(&cluster.host_id);
    }
    let manager = SpriteManager::open(config).context("open the daemon's state")?;
    let token = admin_token(token, &data_dir)?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listen on {listen} (is another daemon running?)"))?;
    let proxy_listener = tokio::net::TcpListener::bind(&proxy_listen)
        .await
        .with_context(|| format!("listen on {proxy_listen} for sprite URLs (is another daemon running? --proxy-listen picks another address)"))?;
    // In a cluster, membership first: local copies of sprites another host took over
    // while this one was away are stopped before anything starts them.
    let member = match cluster {
        Some(config) => {
            let member = cluster::Member::join(config, manager.clone(), &data_dir, &token).await?;
            tracing::info!(host = member.host_id(), "joined the cluster");
            manager.set_directory(member.clone());
            Some(member)
        }
        None => None,
    };
    let adopted = manager.recover().await.context("recover sprites")?;
    tokio::spawn(manager.clone().run_lifecycle());
    tracing::info!(
        adopted,
        running = manager.running_count(),
        "sprites recovered"
    );
    if matches!(
        manager.config().storage,
        sprite_core::StorageBackend::SpriteFs { .. }
    ) {
        if expedite {
            expedite_rcu();
        }
        tokio::spawn(
            manager
                .clone()
                .supervise_storage(std::time::Duration::from_millis(500)),
        );
        tokio::spawn(manager.clone().run_space_guard());
    }
    tokio::spawn(manager.clone().run_usage(manager.config().usage_interval));
    {
        let manager = manager.clone();
        tokio::spawn(async move {
            if let Err(error) = manager.prepare_default_image().await {
                tracing::error!("default image: {}", sprite_api::error_chain(&error));
                return;
            }
            manager.run_pool().await;
        });
    }
    let cookie_key = data_dir.join("proxy-cookie-key");
    let cookies = sprite_server::proxy::CookieKey::load(&cookie_key)
        .with_context(|| format!("load the URL proxy's cookie key {}", cookie_key.display()))?;
    let tokens = vec![(token, "default".to_string())];
    let tokens = Tokens::new(tokens);
    let mut published = tokens.grants();
    published.extend(manager.access().grants());
    let mut state = AppState::new(manager, Arc::new(tokens));
    if let Some(member) = &member {
        member.publish_tokens(&published).await?;
        tokio::spawn(member.clone().run());
        state.peers = Some(member.clone());
    }
    tokio::spawn(sprite_server::inner::serve_sprite_sockets(state.clone()));
    tokio::spawn(sprite_server::proxy::serve_proxy(
        state.clone(),
        proxy_listener,
        sprite_server::proxy::ProxySettings {
            domain: domain.clone(),
            wake_timeout,
            tls,
            cookies,
        },
    ));
    tracing::info!(listen = %proxy_listen, %domain, "sprite URLs served");
    tracing::info!(%listen, data_dir = %data_dir.display(), "sprite daemon listening");
    sprite_server::admin::note_start();
    let stop = state.stop.clone();
    // The MCP tools call this API; an unspecified listen address is reached on loopback.
    let own_api = match listener.local_addr() {
        Ok(addr) if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        Ok(addr) => format!("http://{addr}"),
        Err(_) => format!("http://{listen}"),
    };
    let stopped_manager = state.manager.clone();
    let app = sprite_server::router(state.clone()).merge(crate::mcp::http_routes(state, &own_api));
    if let Some(address) = &console_listen {
        let console = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listen on {address} for the console (--console-listen)"))?;
        tracing::info!(listen = %address, "web console served");
        tokio::spawn(sprite_server::serve::serve_tcp(
            console,
            app.clone(),
            sprite_server::serve::API_LIMITS,
            std::future::pending(),
        ));
    }
    sprite_server::serve::serve_tcp(
        listener,
        app,
        sprite_server::serve::API_LIMITS,
        // A stopped daemon stays a member until its lease runs out: restarted within
        // it, the host keeps its lease and its sprites; away longer, its sprites are
        // taken over by the other hosts. A host leaves for good with a drain.
        async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = stop.notified() => {}
            }
        },
    )
    .await;
    if stopped_manager.stopping() {
        tracing::info!("daemon stopped; every sprite is cold and the host is clean");
    } else {
        tracing::info!("daemon stopped; sprites keep running");
    }
    Ok(0)
}

/// What this host offers the cluster now: available memory and its sprites by status.
pub(crate) fn capacity(manager: &SpriteManager) -> sprite_cluster::Capacity {
    let free_memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib / 1024);
    let (running, warm, cold) = manager.host_counts().unwrap_or_default();
    sprite_cluster::Capacity {
        free_memory_mb,
        running,
        warm,
        cold,
    }
}

/// A checkpoint freezes the sprite's ext4 (FIFREEZE); the kernel's freeze waits for
/// three RCU grace periods (bench/freeze.sh: 51 ms on a 2-CPU VM) unless grace periods
/// are expedited (then 1–2 ms, at the cost of an IPI to every CPU per grace period).
const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

fn expedite_rcu() {
    match std::fs::read_to_string(RCU_EXPEDITED) {
        Ok(value) if value.trim() == "1" => {}
        _ => match std::fs::write(RCU_EXPEDITED, "1") {
            Ok(()) => tracing::info!(
                "expedited RCU grace periods on ({RCU_EXPEDITED}): checkpoint freezes take ~1 ms instead of ~50; expedite_rcu = false in the config leaves the kernel alone"
            ),
            Err(error) => tracing::warn!(
                "could not turn on expedited RCU grace periods ({RCU_EXPEDITED}: {error}); checkpoints take ~50 ms longer"
            ),
        },
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Copies this binary to `<data>/sprite-env-layer/.sprite/bin/sprite-env`: that
/// directory is a read-only lower layer of every sprite's root, so sprites find it at
/// `/.sprite/bin/sprite-env` (the binary acts as sprite-env under that name). Replaced
/// by rename, so sprites running the old one are not disturbed. Owned by `owner` (the
/// storage id of root inside sprites), so `/.sprite` is root's inside.
fn install_sprite_env(data_dir: &Path, owner: u32) -> Result<()> {
    let executable = std::env::current_exe().context("find the sprite binary")?;
    let layer = data_dir.join(sprite_core::config::SPRITE_ENV_LAYER);
    let dir = layer.join(".sprite/bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for dir in [&layer, &layer.join(".sprite"), &dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.display()))?;
        std::os::unix::fs::chown(dir, Some(owner), Some(owner))
            .with_context(|| format!("chown {}", dir.display()))?;
    }
    let target = dir.join("sprite-env");
    let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.len() == b.len() && a.modified().ok() <= b.modified().ok(),
        _ => false,
    };
    if same(&executable, &target) {
        return Ok(());
    }
    let temporary = dir.join(".sprite-env.new");
    std::fs::copy(&executable, &temporary)
        .with_context(|| format!("copy {} to {}", executable.display(), temporary.display()))?;
    std::os::unix::fs::chown(&temporary, Some(owner), Some(owner))
        .with_context(|| format!("chown {}", temporary.display()))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", temporary.display()))?;
    std::fs::rename(&temporary, &target)
        .with_context(|| format!("rename {} to {}", temporary.display(), target.display()))?;
    Ok(())
}

/// Lowers this process's `oom_score_adj` (root may: CAP_SYS_RESOURCE), so the host's
/// OOM killer takes sprite processes (`sprite_oom_score_adj`, 500 by default) first.
pub(crate) fn protect_from_oom(what: &str, score: i32) {
    if let Err(error) = std::fs::write("/proc/self/oom_score_adj", score.to_string()) {
        tracing::warn!("the {what} could not lower its oom_score_adj to {score}: {error}");
    }
}

#[cfg(test)]
mod fuzz_targets {
    use super::*;
    use sprite_api::fuzz::{budget, fuzz};

    /// The daemon's config file: reading it never panics, and every file that reads
    /// resolves to settings or is refused with a message.
    #[test]
    fn fuzz_toml_config() {
        let seeds: &[&[u8]] = &[
            b"pool = 2\nwarm_after = \"30s\"\ncold_after = \"10m\"\n",
            b"storage = \"spritefs\"\nstore = \"s3://b/p\"\n[s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n",
            b"network = \"10.231.0.0/16\"\ndns_upstreams = [\"127.0.0.1:53\"]\negress_private = \"allow\"\n",
            b"sprite_ids_from = 1073741824\nmax_checkpoints = 100\nmin_free_disk_mb = 2048\n",
            b"stop_grace = \"never\"\nwake_timeout = \"1e300s\"\n",
        ];
        let dictionary: &[&[u8]] = &[
            b" = ",
            b"\"",
            b"\n[",
            b"]\n",
            b"warm_after",
            b"1e999",
            b"[[",
            b"\\u0000",
        ];
        fuzz("toml config", budget(), seeds, dictionary, |input| {
            let text = String::from_utf8_lossy(input);
            let Ok(file) = toml::from_str::<settings::FileConfig>(&text) else {
                return;
            };
            let environment = settings::Environment::default();
            let _ = DaemonSettings::resolve(&DaemonArgs::default(), None, file, &environment);
        });
    }
}
