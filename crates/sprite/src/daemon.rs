//! `sprite daemon`: resolves its settings (flags over config file over defaults),
//! recovers existing sprites and serves the API until SIGINT/SIGTERM. Sprites keep
//! running when the daemon stops; the next daemon adopts them.

use anyhow::{Context, Result};
use sprite_core::{CoreConfig, SpriteManager};
use sprite_server::{AppState, Tokens};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The daemon's config file (TOML). Every key is optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub token: Option<String>,
    pub image: Option<String>,
    pub debian_mirror: Option<String>,
    pub id_base: Option<u32>,
    /// First host uid/gid of the sprites' own id ranges (65,536 ids each; default
    /// 1073741824, 2^30): pick ids no host user or other container manager uses.
    pub sprite_ids_from: Option<u32>,
    /// `oom_score_adj` of every sprite process (default 500): the host's OOM killer
    /// takes sprite processes before host services, and no sprite can lower it.
    pub sprite_oom_score_adj: Option<i32>,
    /// Lets sprites make user namespaces and the others inside them, for rootless
    /// containers (podman, buildah, bubblewrap, `unshare -r`); default false. It opens
    /// the kernel surface behind user namespaces to sprite code (docs/threat-model.md).
    pub nested_containers: Option<bool>,
    /// Most checkpoints one sprite keeps (default 100); a create past it is refused.
    pub max_checkpoints: Option<usize>,
    /// The region this daemon serves (default `local`): sprites report it as their
    /// `primary_region`, and a create asking for another `config.region` is refused.
    pub region: Option<String>,
    /// Below this much free disk under the data directory (MiB, default 2048), sprites
    /// that write get a full disk (ENOSPC inside) until the host has twice as much
    /// again; 0 turns the guard off.
    pub min_free_disk_mb: Option<u64>,
    pub default_ram_mb: Option<u64>,
    pub default_cpus: Option<u32>,
    pub pids_limit: Option<u64>,
    pub max_sprites: Option<usize>,
    /// Sprites an organization may create per minute (default 600; a burst of as many).
    pub creates_per_minute: Option<u32>,
    /// What sprite URLs show: `http://<name>.<url_domain>` (default `<domain>:<proxy
    /// port>`; set it when a front proxy or DNS name serves them).
    pub url_domain: Option<String>,
    /// Address of the URL proxy (default 127.0.0.1:7080).
    pub proxy_listen: Option<String>,
    /// Sprites are served at `<name>.<domain>` (default localhost).
    pub domain: Option<String>,
    /// How long a request to a sleeping sprite waits for it to wake and answer (30s).
    pub wake_timeout: Option<String>,
    /// `spritefs` (default) or `local`.
    pub storage: Option<String>,
    /// Object store of SpriteFS: file:///path or s3://bucket/prefix.
    pub store: Option<String>,
    /// SpriteFS: turn on the kernel's expedited RCU grace periods (default true), so the
    /// freeze of a checkpoint takes milliseconds instead of three grace periods.
    pub expedite_rcu: Option<bool>,
    /// SpriteFS block size of new volumes, in KiB (a power of two, 64 to 16384;
    /// default 1024). Volumes keep the size they were made with.
    pub block_kib: Option<u64>,
    /// Volume size of sprites whose create gives no `config.storage_gb` (default 100).
    pub default_storage_gb: Option<u64>,
    /// S3 settings of `store = "s3://..."` (else the usual AWS_* environment variables).
    pub s3: Option<S3Config>,
    /// Fault injection into the object store, for resilience tests:
    /// "PER_MILLE[,LATENCY_MS]" (e.g. "100,20": 10 % of calls fail, each waits 20 ms).
    pub store_faults: Option<String>,
    /// Idle time before a sprite goes warm (cgroup frozen): "30s" (default), "never".
    pub warm_after: Option<String>,
    /// Idle time before a sprite goes cold (stopped, disk released): "10m" (default).
    pub cold_after: Option<String>,
    /// Time between SIGTERM and SIGKILL when a sprite goes cold (default "10s").
    pub stop_grace: Option<String>,
    /// Below this much available host memory (MiB), warm sprites go cold, longest idle
    /// first (default 256).
    pub min_free_memory_mb: Option<u64>,
    /// Ready sprites kept frozen so a create takes milliseconds (default 2; 0: none).
    pub pool: Option<usize>,
    /// The subnet sprites' network links come from (a /30 each; default
    /// "10.231.0.0/16"), or "off" for loopback-only sprites.
    pub network: Option<String>,
    /// Where the sprites' DNS resolvers forward allowed queries, "IP:PORT" (default:
    /// the nameservers of the host's /etc/resolv.conf).
    pub dns_upstreams: Option<Vec<String>>,
    /// "deny" (default): sprites without a policy cannot reach link-local addresses
    /// (169.254.169.254, cloud metadata) nor the networks the host is connected to (its
    /// LAN); "allow" lets them.
    pub egress_private: Option<String>,
    /// HTTPS on the URL proxy: the certificate chain (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
}

/// `[s3]` in the config file. Each key, when set, wins over its AWS_* variable.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow plain http endpoints (MinIO, test servers).
    pub allow_http: Option<bool>,
}

impl S3Config {
    /// The AWS_* variables the storage process reads.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
            ("AWS_ALLOW_HTTP", self.allow_http.map(|b| b.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
    }
}

#[derive(Debug, clap::Args)]
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
    /// Image of new sprites: debian (default) or busybox.
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
    /// Subnet of the sprites' network links (default 10.231.0.0/16), or "off" for
    /// loopback-only sprites.
    #[arg(long, value_name = "CIDR|off")]
    pub network: Option<String>,
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

/// A duration setting: `Some(None)` is "never".
fn duration_setting(
    key: &str,
    value: Option<String>,
) -> Result<Option<Option<std::time::Duration>>> {
    value
        .map(|text| {
            sprite_core::lifecycle::parse_duration(&text).map_err(|e| anyhow::anyhow!("{key}: {e}"))
        })
        .transpose()
}

fn load_file_config(path: &Path) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(error) => Err(error).with_context(|| format!("read config file {}", path.display())),
    }
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
    let file = load_file_config(&args.config)?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(crate::settings::data_dir);
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let executable = std::env::current_exe().context("find the sprite binary")?;
    let mut config = CoreConfig::new(data_dir.clone(), executable);
    if let Some(image) = args.image.or(file.image) {
        config.default_image = image;
    }
    if let Some(mirror) = file.debian_mirror {
        config.debian_mirror = mirror;
    }
    config.id_base = file.id_base.unwrap_or(config.id_base);
    config.sprite_ids_from = file.sprite_ids_from.unwrap_or(config.sprite_ids_from);
    config.min_free_disk_mb = file.min_free_disk_mb.unwrap_or(config.min_free_disk_mb);
    if let Some(region) = file.region {
        let valid = !region.is_empty()
            && region.len() <= 32
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            anyhow::bail!("region = {region:?} is not valid; use 1 to 32 of a-z, 0-9 and - (default \"local\")");
        }
        config.region = region;
    }
    if let Some(most) = file.max_checkpoints {
        if !(1..=10_000).contains(&most) {
            anyhow::bail!("max_checkpoints = {most} is out of range; use 1 to 10000 (default 100)");
        }
        config.max_checkpoints = most;
    }
    if let Some(score) = file.sprite_oom_score_adj {
        if !(-1000..=1000).contains(&score) {
            anyhow::bail!(
                "sprite_oom_score_adj = {score} is out of range; use -1000 to 1000 (default 500)"
            );
        }
        config.sprite_oom_score_adj = score;
    }
    config.nested_containers = file.nested_containers.unwrap_or(config.nested_containers);
    config.default_ram_mb = file.default_ram_mb.unwrap_or(config.default_ram_mb);
    config.default_cpus = file.default_cpus.unwrap_or(config.default_cpus);
    config.pids_limit = file.pids_limit.unwrap_or(config.pids_limit);
    config.max_sprites = file.max_sprites.unwrap_or(config.max_sprites);
    if let Some(rate) = file.creates_per_minute {
        if !(1..=100_000).contains(&rate) {
            anyhow::bail!(
                "creates_per_minute = {rate} is out of range; use 1 to 100000 (default 600)"
            );
        }
        config.creates_per_minute = rate;
    }
    let proxy_listen = args
        .proxy_listen
        .or(file.proxy_listen)
        .unwrap_or_else(|| "127.0.0.1:7080".into());
    let domain = args
        .domain
        .or(file.domain)
        .unwrap_or_else(|| "localhost".into())
        .trim_matches('.')
        .to_string();
    if domain.is_empty() || domain.contains(['/', ':', ' ']) {
        anyhow::bail!("domain {domain:?} is not a domain name; use something like localhost or sprites.example.com");
    }
    let tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => {
            config.url_scheme = "https".into();
            Some(sprite_server::proxy::tls_acceptor(&cert, &key).context("TLS for sprite URLs")?)
        }
        (None, None) => None,
        _ => {
            anyhow::bail!("tls_cert and tls_key go together: give both, or neither for plain http")
        }
    };
    let wake_timeout = duration_setting("wake_timeout", file.wake_timeout)?
        .flatten()
        .unwrap_or(std::time::Duration::from_secs(30));
    let proxy_port = proxy_listen
        .rsplit(':')
        .next()
        .unwrap_or("7080")
        .to_string();
    config.url_domain = file
        .url_domain
        .unwrap_or_else(|| format!("{domain}:{proxy_port}"));
    if let Some(after) = duration_setting("warm_after", args.warm_after.or(file.warm_after))? {
        config.sleep.warm_after = after;
    }
    if let Some(after) = duration_setting("cold_after", args.cold_after.or(file.cold_after))? {
        config.sleep.cold_after = after;
    }
    if let Some(grace) = duration_setting("stop_grace", file.stop_grace)? {
        config.stop_grace = grace.unwrap_or_default();
    }
    config.min_free_memory_mb = file.min_free_memory_mb.unwrap_or(config.min_free_memory_mb);
    config.pool_size = args.pool.or(file.pool).unwrap_or(2);
    let network = args
        .network
        .or(file.network)
        .unwrap_or_else(|| "10.231.0.0/16".into());
    if network != "off" {
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
        let dns_upstreams = match file.dns_upstreams {
            Some(list) => list
                .iter()
                .map(|a| {
                    a.parse::<std::net::SocketAddr>()
                        .or_else(|_| a.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                        .with_context(|| format!("dns_upstreams: {a:?} is not IP or IP:PORT"))
                })
                .collect::<Result<Vec<_>>>()?,
            None => sprite_core::dns::upstreams_from_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                false,
            ),
        };
        let local_egress = match file.egress_private.as_deref() {
            None | Some("deny") => false,
            Some("allow") => true,
            Some(other) => anyhow::bail!(
                "egress_private = {other:?} is not known; use \"deny\" (the default) or \"allow\""
            ),
        };
        config.network = Some(sprite_core::network::NetworkConfig {
            cidr: network,
            dns_upstreams,
            local_egress,
        });
    }
    if config.pool_size > 100 {
        anyhow::bail!("pool = {} is too large; use 0 to 100", config.pool_size);
    }
    if let Some(gb) = file.default_storage_gb {
        if !(1..=16384).contains(&gb) {
            anyhow::bail!("default_storage_gb = {gb} is out of range; use 1 to 16384");
        }
        config.default_storage_gb = gb;
    }
    if let Some(kib) = file.block_kib {
        if !kib.is_power_of_two() || !(64..=16384).contains(&kib) {
            anyhow::bail!(
                "block_kib = {kib} is not a power of two from 64 to 16384; the default is 1024"
            );
        }
        config.block_bytes = kib * 1024;
    }
    if let Some(spec) = &file.store_faults {
        sprite_fs::store::parse_faults(spec).map_err(anyhow::Error::msg)?;
    }
    let store = args.store.or(file.store);
    config.storage = match args.storage.or(file.storage).as_deref() {
        Some("local") => sprite_core::StorageBackend::Local,
        None | Some("spritefs") => sprite_core::StorageBackend::SpriteFs {
            store_url: store,
            store_env: file.s3.as_ref().map(S3Config::env).unwrap_or_default(),
            store_faults: file.store_faults.clone(),
        },
        Some(other) => anyhow::bail!("storage = {other:?} is not known; use local or spritefs"),
    };

    let storage_ids =
        u64::from(config.id_base)..u64::from(config.id_base) + u64::from(config.id_count);
    let ranges = config.id_ranges();
    let sprite_ids = u64::from(ranges.first)
        ..u64::from(ranges.first) + u64::from(ranges.size) * u64::from(ranges.count);
    if sprite_ids.start < storage_ids.end && storage_ids.start < sprite_ids.end {
        anyhow::bail!(
            "sprite_ids_from = {} overlaps the storage ids {}..{} (id_base); pick ids above them",
            config.sprite_ids_from,
            storage_ids.start,
            storage_ids.end
        );
    }
    if (ranges.count as usize) < config.max_sprites + config.pool_size {
        anyhow::bail!(
            "sprite_ids_from = {} leaves room for {} sprites below 2^31, fewer than max_sprites + pool ({}); use a lower value (the default is 1073741824)",
            config.sprite_ids_from,
            ranges.count,
            config.max_sprites + config.pool_size
        );
    }
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
    let manager = SpriteManager::open(config).context("open the daemon's state")?;
    let given = token
        .or_else(|| std::env::var("SPRITE_TOKEN").ok())
        .or(file.token);
    let token = admin_token(given, &data_dir)?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listen on {listen} (is another daemon running?)"))?;
    let proxy_listener = tokio::net::TcpListener::bind(&proxy_listen)
        .await
        .with_context(|| format!("listen on {proxy_listen} for sprite URLs (is another daemon running? --proxy-listen picks another address)"))?;
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
        if file.expedite_rcu.unwrap_or(true) {
            expedite_rcu();
        }
        tokio::spawn(
            manager
                .clone()
                .supervise_storage(std::time::Duration::from_millis(500)),
        );
        tokio::spawn(manager.clone().run_space_guard());
    }
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
    let state = AppState {
        manager,
        tokens: Arc::new(Tokens::new(vec![(token, "default".into())])),
    };
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
    sprite_server::serve::serve_tcp(
        listener,
        sprite_server::router(state),
        sprite_server::serve::API_LIMITS,
        shutdown_signal(),
    )
    .await;
    tracing::info!("daemon stopped; sprites keep running");
    Ok(0)
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
    let layer = data_dir.join(sprite_core::manager::SPRITE_ENV_LAYER);
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

    /// The daemon's config file: reading it never panics, and every duration in a file
    /// that reads is either understood or refused with a message.
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
            let Ok(file) = toml::from_str::<FileConfig>(&text) else {
                return;
            };
            for (key, value) in [
                ("warm_after", file.warm_after),
                ("cold_after", file.cold_after),
                ("stop_grace", file.stop_grace),
                ("wake_timeout", file.wake_timeout),
            ] {
                let _ = duration_setting(key, value);
            }
            if let Some(s3) = &file.s3 {
                let _ = s3.env();
            }
        });
    }
}
