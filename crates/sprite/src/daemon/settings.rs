//! The daemon's settings: flags over environment over config file over defaults,
//! resolved in one pure function ([`DaemonSettings::resolve`]) that reads nothing from
//! the host, so every rule of it has a unit test. Each default lives in one place: the
//! core's in [`CoreConfig::new`], the daemon's own below.

use super::DaemonArgs;
use anyhow::{Context, Result};
use sprite_core::CoreConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API's address when neither `--listen` nor `listen` is given.
pub const DEFAULT_LISTEN: &str = crate::settings::DEFAULT_LISTEN;
/// The URL proxy's address when neither `--proxy-listen` nor `proxy_listen` is given.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:7080";
/// The domain of sprite URLs by default (browsers on the host resolve `*.localhost`).
pub const DEFAULT_DOMAIN: &str = "localhost";
/// The subnet of sprites' links by default.
pub const DEFAULT_NETWORK: &str = "10.231.0.0/16";
/// How long a request to a sleeping sprite waits by default.
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's config file (TOML). Every key is optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub token: Option<String>,
    pub image: Option<String>,
    pub debian_mirror: Option<String>,
    /// Registries pulled from over plain HTTP (loopback ones always are).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
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
    /// Sprites awake at once per organization without limits of its own (default:
    /// max_sprites; `sprite orgs set` sets one organization's).
    pub running_limit: Option<u64>,
    /// Sprites in warm sleep per organization without limits of its own (default:
    /// max_sprites); past it, sprites that go to sleep go cold.
    pub warm_limit: Option<u64>,
    /// Sprites an organization may create per minute (default 600; a burst of as many).
    pub creates_per_minute: Option<u32>,
    /// What sprite URLs show: `http://<name>.<url_domain>` (default `<domain>:<proxy
    /// port>`; set it when a front proxy or DNS name serves them).
    pub url_domain: Option<String>,
    /// Address of the URL proxy (default 127.0.0.1:7080).
    pub proxy_listen: Option<String>,
    /// The web console on this address too (besides `/` of the API listener).
    pub console_listen: Option<String>,
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
    /// How often each sprite's usage is sampled for its history and `/metrics`
    /// (default `30s`, at least `1s`).
    pub usage_interval: Option<String>,
    /// Time between SIGTERM and SIGKILL when a sprite goes cold (default "10s").
    pub stop_grace: Option<String>,
    /// Below this much available host memory (MiB), warm sprites go cold, longest idle
    /// first (default 256).
    pub min_free_memory_mb: Option<u64>,
    /// Ready sprites kept frozen so a create takes milliseconds (default 2; 0: none).
    /// When a sprite's fsyncs return unless its config says (`local`, the default, or
    /// `store`).
    pub durability: Option<sprite_api::sprite::Durability>,
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
    /// Join a cluster: "etcd://HOST:PORT[,HOST:PORT...]" (every host of it uses the
    /// same `store = "s3://..."`).
    pub cluster: Option<String>,
    /// This host's name in the cluster (default: the hostname).
    pub host_id: Option<String>,
    /// How the cluster's other hosts reach this host's API (default: http://<listen>).
    pub advertise: Option<String>,
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
    pub(super) fn env(&self) -> Vec<(String, String)> {
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

/// What the daemon reads from its environment, gathered by the caller (so that
/// [`DaemonSettings::resolve`] stays pure).
#[derive(Debug, Default)]
pub struct Environment {
    /// `SPRITE_TOKEN`.
    pub token: Option<String>,
    /// This binary (sprites' launcher and storage process run it).
    pub executable: PathBuf,
    /// The host's /etc/resolv.conf, for the default DNS upstreams.
    pub resolv_conf: String,
    /// The host's name (the default cluster host id).
    pub hostname: String,
}

/// A setting that cannot be used; the message names it and says what to use.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SettingsError {
    pub key: &'static str,
    pub message: String,
}

fn invalid(key: &'static str, message: String) -> SettingsError {
    SettingsError { key, message }
}

/// Everything the daemon runs with.
#[derive(Debug)]
pub struct DaemonSettings {
    pub data_dir: PathBuf,
    /// Address of the API.
    pub listen: String,
    /// The admin token given (flag, `SPRITE_TOKEN`, config file); `None`: the one in the
    /// data directory, or a new one.
    pub token: Option<String>,
    /// The core's configuration.
    pub core: CoreConfig,
    /// Address of the URL proxy.
    pub proxy_listen: String,
    /// A second listener for the web console (and the API it uses).
    pub console_listen: Option<String>,
    /// Sprites are served at `<name>.<domain>`.
    pub domain: String,
    /// HTTPS on the URL proxy: the certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub wake_timeout: Duration,
    /// Turn on expedited RCU grace periods (SpriteFS checkpoints).
    pub expedite_rcu: bool,
    /// The cluster this host joins (`--cluster`); None: a single host.
    pub cluster: Option<sprite_cluster::ClusterConfig>,
}

/// A duration setting: `Some(None)` is "never".
pub(super) fn duration_setting(
    key: &'static str,
    value: Option<String>,
) -> Result<Option<Option<Duration>>, SettingsError> {
    value
        .map(|text| {
            sprite_core::activity::parse_duration(&text)
                .map_err(|e| invalid(key, format!("{key}: {e}")))
        })
        .transpose()
}

/// The config file at `path`; a missing file is an empty one.
pub(super) fn load_file_config(path: &Path) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(error) => Err(error).with_context(|| format!("read config file {}", path.display())),
    }
}

/// `value` if it is within `range`, else an error saying the range and the default.
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    default: T,
) -> Result<T, SettingsError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            format!(
                "{key} = {value} is out of range; use {} to {} (default {default})",
                range.start(),
                range.end()
            ),
        ))
    }
}

impl DaemonSettings {
    /// The settings from the flags (`token` is the global `--token`), the environment
    /// and the config file, in that order of precedence, over the defaults. Checks
    /// every value and how they fit together; reads nothing.
    pub fn resolve(
        flags: &DaemonArgs,
        token: Option<String>,
        file: FileConfig,
        env: &Environment,
    ) -> Result<DaemonSettings, SettingsError> {
        let data_dir = flags
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(crate::settings::DEFAULT_DATA_DIR));
        let listen = flags
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let mut config = CoreConfig::new(data_dir.clone(), env.executable.clone());
        let defaults = CoreConfig::new(PathBuf::new(), PathBuf::new());
        if let Some(image) = flags.image.clone().or(file.image) {
            config.default_image = image;
        }
        config.insecure_registries = file.insecure_registries;
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
                return Err(invalid(
                    "region",
                    format!(
                        "region = {region:?} is not valid; use 1 to 32 of a-z, 0-9 and - (default {:?})",
                        defaults.region
                    ),
                ));
            }
            config.region = region;
        }
        if let Some(most) = file.max_checkpoints {
            config.max_checkpoints = in_range(
                "max_checkpoints",
                most,
                1..=10_000,
                defaults.max_checkpoints,
            )?;
        }
        if let Some(score) = file.sprite_oom_score_adj {
            config.sprite_oom_score_adj = in_range(
                "sprite_oom_score_adj",
                score,
                -1000..=1000,
                defaults.sprite_oom_score_adj,
            )?;
        }
        config.nested_containers = file.nested_containers.unwrap_or(config.nested_containers);
        config.default_ram_mb = file.default_ram_mb.unwrap_or(config.default_ram_mb);
        config.default_cpus = file.default_cpus.unwrap_or(config.default_cpus);
        config.pids_limit = file.pids_limit.unwrap_or(config.pids_limit);
        config.max_sprites = file.max_sprites.unwrap_or(config.max_sprites);
        config.org_running_limit = file.running_limit.unwrap_or(config.org_running_limit);
        config.org_warm_limit = file.warm_limit.unwrap_or(config.org_warm_limit);
        if let Some(rate) = file.creates_per_minute {
            config.creates_per_minute = in_range(
                "creates_per_minute",
                rate,
                1..=100_000,
                defaults.creates_per_minute,
            )?;
        }
        let proxy_listen = flags
            .proxy_listen
            .clone()
            .or(file.proxy_listen)
            .unwrap_or_else(|| DEFAULT_PROXY_LISTEN.into());
        let domain = flags
            .domain
            .clone()
            .or(file.domain)
            .unwrap_or_else(|| DEFAULT_DOMAIN.into())
            .trim_matches('.')
            .to_string();
        if domain.is_empty() || domain.contains(['/', ':', ' ']) {
            return Err(invalid(
                "domain",
                format!("domain {domain:?} is not a domain name; use something like localhost or sprites.example.com"),
            ));
        }
        let tls = match (
            flags.tls_cert.clone().or(file.tls_cert),
            flags.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => {
                config.url_scheme = "https".into();
                Some((cert, key))
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tls_cert",
                    "tls_cert and tls_key go together: give both, or neither for plain http".into(),
                ))
            }
        };
        let wake_timeout = duration_setting("wake_timeout", file.wake_timeout)?
            .flatten()
            .unwrap_or(DEFAULT_WAKE_TIMEOUT);
        let proxy_port = match proxy_listen.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => port.to_string(),
            _ => {
                return Err(invalid(
                    "proxy_listen",
                    format!("proxy_listen = {proxy_listen:?} is not an address; use IP:PORT (default {DEFAULT_PROXY_LISTEN})"),
                ))
            }
        };
        config.url_domain = file
            .url_domain
            .unwrap_or_else(|| format!("{domain}:{proxy_port}"));
        if let Some(after) =
            duration_setting("warm_after", flags.warm_after.clone().or(file.warm_after))?
        {
            config.sleep.warm_after = after;
        }
        if let Some(after) =
            duration_setting("cold_after", flags.cold_after.clone().or(file.cold_after))?
        {
            config.sleep.cold_after = after;
        }
        if let Some(every) = duration_setting("usage_interval", file.usage_interval)? {
            match every {
                Some(every) if every >= Duration::from_secs(1) => config.usage_interval = every,
                _ => {
                    return Err(invalid(
                        "usage_interval",
                        "usage_interval: sample at most once a second (\"1s\" or longer)".into(),
                    ))
                }
            }
        }
        if let Some(grace) = duration_setting("stop_grace", file.stop_grace)? {
            config.stop_grace = grace.unwrap_or_default();
        }
        config.min_free_memory_mb = file.min_free_memory_mb.unwrap_or(config.min_free_memory_mb);
        let cluster = match flags.cluster.clone().or(file.cluster) {
            None => None,
            Some(url) => {
                let endpoints = sprite_cluster::parse_cluster_url(&url)
                    .map_err(|e| invalid("cluster", e.to_string()))?;
                let host_id = flags
                    .host_id
                    .clone()
                    .or(file.host_id)
                    .unwrap_or_else(|| env.hostname.trim().to_string());
                let valid = !host_id.is_empty()
                    && host_id.len() <= 63
                    && host_id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !valid {
                    return Err(invalid(
                        "host_id",
                        format!("host_id {host_id:?} is not valid; use 1 to 63 of a-z, A-Z, 0-9, - and . (default: the hostname)"),
                    ));
                }
                let advertise = flags
                    .advertise
                    .clone()
                    .or(file.advertise)
                    .unwrap_or_else(|| format!("http://{listen}"));
                if !(advertise.starts_with("http://") || advertise.starts_with("https://")) {
                    return Err(invalid(
                        "advertise",
                        format!("advertise = {advertise:?} is not a URL; use http://HOST:PORT of this host's API as its peers reach it"),
                    ));
                }
                let shared = flags
                    .store
                    .as_deref()
                    .or(file.store.as_deref())
                    .is_some_and(|store| store.starts_with("s3://"));
                if !shared {
                    return Err(invalid(
                        "cluster",
                        "every host of a cluster keeps its sprites in one object store: set store = \"s3://BUCKET/PREFIX\" (or --store) on each".into(),
                    ));
                }
                let mut cluster =
                    sprite_cluster::ClusterConfig::new(endpoints, &host_id, &advertise);
                // Peers reach the URL proxy at the advertised host, on the proxy's port.
                let advertised_host = advertise
                    .split_once("://")
                    .map_or(advertise.as_str(), |(_, rest)| rest)
                    .split('/')
                    .next()
                    .unwrap_or_default();
                let advertised_host = advertised_host
                    .rsplit_once(':')
                    .map_or(advertised_host, |(host, _)| host);
                cluster.advertise_proxy = format!("http://{advertised_host}:{proxy_port}");
                Some(cluster)
            }
        };
        // In a cluster a host may be lost with its sprites claimed elsewhere: fsyncs are
        // durable in the store unless said otherwise.
        if cluster.is_some() {
            config.default_durability = sprite_api::sprite::Durability::Store;
            config.cluster = true;
        }
        if let Some(durability) = flags.durability.or(file.durability) {
            config.default_durability = durability;
        }
        if let Some(pool) = flags.pool.or(file.pool) {
            config.pool_size = in_range("pool", pool, 0..=100, defaults.pool_size)?;
        }
        let network = flags
            .network
            .clone()
            .or(file.network)
            .unwrap_or_else(|| DEFAULT_NETWORK.into());
        if network != "off" {
            let dns_upstreams = match file.dns_upstreams {
                Some(list) => list
                    .iter()
                    .map(|a| {
                        a.parse::<std::net::SocketAddr>()
                            .or_else(|_| a.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                            .map_err(|_| {
                                invalid(
                                    "dns_upstreams",
                                    format!("dns_upstreams: {a:?} is not IP or IP:PORT"),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => sprite_core::dns::upstreams_from_resolv_conf(&env.resolv_conf, false),
            };
            let local_egress = match file.egress_private.as_deref() {
                None | Some("deny") => false,
                Some("allow") => true,
                Some(other) => {
                    return Err(invalid(
                        "egress_private",
                        format!("egress_private = {other:?} is not known; use \"deny\" (the default) or \"allow\""),
                    ))
                }
            };
            config.network = Some(sprite_core::network::NetworkConfig {
                cidr: network,
                dns_upstreams,
                local_egress,
            });
        }
        if let Some(gb) = file.default_storage_gb {
            config.default_storage_gb = in_range(
                "default_storage_gb",
                gb,
                1..=16384,
                defaults.default_storage_gb,
            )?;
        }
        if let Some(kib) = file.block_kib {
            if !kib.is_power_of_two() || !(64..=16384).contains(&kib) {
                return Err(invalid(
                    "block_kib",
                    format!(
                        "block_kib = {kib} is not a power of two from 64 to 16384; the default is {}",
                        defaults.block_bytes / 1024
                    ),
                ));
            }
            config.block_bytes = kib * 1024;
        }
        if let Some(spec) = &file.store_faults {
            sprite_fs::store::parse_faults(spec).map_err(|e| invalid("store_faults", e))?;
        }
        let store = flags.store.clone().or(file.store);
        config.storage = match flags.storage.clone().or(file.storage).as_deref() {
            Some("local") => sprite_core::StorageBackend::Local,
            None | Some("spritefs") => sprite_core::StorageBackend::SpriteFs {
                store_url: store,
                store_env: file.s3.as_ref().map(S3Config::env).unwrap_or_default(),
                store_faults: file.store_faults.clone(),
            },
            Some(other) => {
                return Err(invalid(
                    "storage",
                    format!("storage = {other:?} is not known; use local or spritefs"),
                ))
            }
        };
        let storage_ids =
            u64::from(config.id_base)..u64::from(config.id_base) + u64::from(config.id_count);
        let ranges = config.id_ranges();
        let sprite_ids = u64::from(ranges.first)
            ..u64::from(ranges.first) + u64::from(ranges.size) * u64::from(ranges.count);
        if sprite_ids.start < storage_ids.end && storage_ids.start < sprite_ids.end {
            return Err(invalid(
                "sprite_ids_from",
                format!(
                    "sprite_ids_from = {} overlaps the storage ids {}..{} (id_base); pick ids above them",
                    config.sprite_ids_from, storage_ids.start, storage_ids.end
                ),
            ));
        }
        if (ranges.count as usize) < config.max_sprites + config.pool_size {
            return Err(invalid(
                "sprite_ids_from",
                format!(
                    "sprite_ids_from = {} leaves room for {} sprites below 2^31, fewer than max_sprites + pool ({}); use a lower value (the default is {})",
                    config.sprite_ids_from,
                    ranges.count,
                    config.max_sprites + config.pool_size,
                    defaults.sprite_ids_from
                ),
            ));
        }
        Ok(DaemonSettings {
            data_dir,
            listen,
            token: token
                .or_else(|| env.token.clone())
                .or(file.token)
                .filter(|t| !t.is_empty()),
            core: config,
            proxy_listen,
            console_listen: flags.console_listen.clone().or(file.console_listen),
            domain,
            tls,
            wake_timeout,
            expedite_rcu: file.expedite_rcu.unwrap_or(true),
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment {
            token: None,
            executable: PathBuf::from("/usr/bin/sprite"),
            resolv_conf: "nameserver 192.0.2.53\n".into(),
            hostname: "host-a\n".into(),
        }
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn resolve(flags: &DaemonArgs, text: &str) -> Result<DaemonSettings, SettingsError> {
        DaemonSettings::resolve(flags, None, file(text), &env())
    }

    fn refused(flags: &DaemonArgs, text: &str) -> SettingsError {
        match resolve(flags, text) {
            Ok(settings) => panic!("{text:?} was taken: {settings:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn usage_interval_limits_and_the_console_address() {
        let text = "usage_interval = \"5s\"\nrunning_limit = 3\nwarm_limit = 4\nconsole_listen = \"127.0.0.1:9999\"\n";
        let settings =
            resolve(&DaemonArgs::default(), text).unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(settings.core.usage_interval, Duration::from_secs(5));
        assert_eq!(
            (
                settings.core.org_running_limit,
                settings.core.org_warm_limit
            ),
            (3, 4)
        );
        assert_eq!(settings.console_listen.as_deref(), Some("127.0.0.1:9999"));
        let flagged = DaemonArgs {
            console_listen: Some("127.0.0.1:8888".into()),
            ..Default::default()
        };
        let settings = resolve(&flagged, text).unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(settings.console_listen.as_deref(), Some("127.0.0.1:8888"));
        let error = refused(&DaemonArgs::default(), "usage_interval = \"100ms\"\n");
        assert!(error.to_string().contains("usage_interval"), "{error}");
        let defaults =
            resolve(&DaemonArgs::default(), "").unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(defaults.core.usage_interval, Duration::from_secs(30));
        assert_eq!(defaults.console_listen, None);
    }

    #[test]
    fn nothing_given_is_the_documented_defaults() {
        let Ok(settings) = resolve(&DaemonArgs::default(), "") else {
            panic!("defaults refused");
        };
        assert_eq!(settings.listen, "127.0.0.1:7070");
        assert_eq!(
            crate::settings::DEFAULT_API_URL,
            format!("http://{}", settings.listen),
            "the CLI talks to where the daemon listens"
        );
        assert_eq!(settings.proxy_listen, "127.0.0.1:7080");
        assert_eq!(settings.domain, "localhost");
        assert_eq!(settings.core.url_domain, "localhost:7080");
        assert_eq!(settings.core.url_scheme, "http");
        assert_eq!(settings.data_dir, PathBuf::from("/var/lib/sprites"));
        assert_eq!(settings.core.pool_size, 2);
        assert_eq!(settings.core.default_image, "dev");
        assert_eq!(settings.wake_timeout, Duration::from_secs(30));
        assert!(settings.expedite_rcu);
        assert!(settings.token.is_none());
        assert!(settings.tls.is_none());
        let network = settings.core.network.as_ref().map(|n| n.cidr.as_str());
        assert_eq!(network, Some("10.231.0.0/16"));
        let upstreams = settings
            .core
            .network
            .as_ref()
            .map(|n| n.dns_upstreams.clone())
            .unwrap_or_default();
        assert_eq!(
            upstreams,
            vec!["192.0.2.53:53".parse().unwrap_or_else(|_| unreachable!())]
        );
        assert!(matches!(
            settings.core.storage,
            sprite_core::StorageBackend::SpriteFs {
                store_url: None,
                ..
            }
        ));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let flags = DaemonArgs {
            listen: Some("127.0.0.1:9000".into()),
            pool: Some(0),
            warm_after: Some("never".into()),
            network: Some("off".into()),
            ..Default::default()
        };
        let text = "listen = \"127.0.0.1:8000\"\npool = 5\nwarm_after = \"5s\"\ncold_after = \"1m30s\"\nproxy_listen = \"0.0.0.0:8080\"\ndomain = \"sprites.example.com.\"\nnetwork = \"10.1.0.0/16\"\n";
        let settings = resolve(&flags, text).unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(settings.listen, "127.0.0.1:9000");
        assert_eq!(settings.core.pool_size, 0);
        assert_eq!(settings.core.sleep.warm_after, None);
        assert_eq!(
            settings.core.sleep.cold_after,
            Some(Duration::from_secs(90))
        );
        assert_eq!(settings.domain, "sprites.example.com");
        assert_eq!(settings.core.url_domain, "sprites.example.com:8080");
        assert!(settings.core.network.is_none(), "--network off wins");
        let from_file =
            resolve(&DaemonArgs::default(), text).unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(from_file.listen, "127.0.0.1:8000");
        assert_eq!(from_file.core.pool_size, 5);
        assert_eq!(
            from_file.core.sleep.warm_after,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_cluster_needs_a_shared_store_and_defaults_to_store_durability() {
        use sprite_api::sprite::Durability;
        let flags = DaemonArgs::default();
        assert!(resolve(&flags, "").expect("no cluster").cluster.is_none());
        let text = "cluster = \"etcd://127.0.0.1:2379\"\nstore = \"s3://b/p\"\n";
        let settings = resolve(&flags, text).expect("a cluster");
        let cluster = settings.cluster.expect("a cluster");
        assert_eq!(cluster.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(cluster.host_id, "host-a", "the hostname by default");
        assert_eq!(cluster.advertise, format!("http://{DEFAULT_LISTEN}"));
        assert_eq!(
            cluster.advertise_proxy,
            DEFAULT_PROXY_LISTEN.replace("127.0.0.1", "http://127.0.0.1")
        );
        assert_eq!(settings.core.default_durability, Durability::Store);
        let flagged = DaemonArgs {
            host_id: Some("h2".into()),
            advertise: Some("http://10.0.0.2:8080".into()),
            durability: Some(Durability::Local),
            ..DaemonArgs::default()
        };
        let settings = resolve(&flagged, text).expect("a cluster");
        let cluster = settings.cluster.expect("a cluster");
        assert_eq!(
            (cluster.host_id.as_str(), cluster.advertise.as_str()),
            ("h2", "http://10.0.0.2:8080")
        );
        assert_eq!(
            settings.core.default_durability,
            Durability::Local,
            "the flag wins"
        );
        for (bad, key) in [
            ("cluster = \"etcd://127.0.0.1:2379\"\n", "cluster"),
            (
                "cluster = \"etcd://127.0.0.1:2379\"\nstore = \"file:///x\"\n",
                "cluster",
            ),
            (
                "cluster = \"127.0.0.1:2379\"\nstore = \"s3://b/p\"\n",
                "cluster",
            ),
            (
                "cluster = \"etcd://h:1\"\nstore = \"s3://b/p\"\nhost_id = \"a b\"\n",
                "host_id",
            ),
            (
                "cluster = \"etcd://h:1\"\nstore = \"s3://b/p\"\nadvertise = \"h:1\"\n",
                "advertise",
            ),
        ] {
            assert_eq!(refused(&flags, bad).key, key, "{bad}");
        }
    }

    #[test]
    fn durability_defaults_to_local_and_is_set_by_the_file_or_the_flag() {
        use sprite_api::sprite::Durability;
        let default = resolve(&DaemonArgs::default(), "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default.core.default_durability, Durability::Local);
        let text = "durability = \"store\"\n";
        let from_file = resolve(&DaemonArgs::default(), text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_file.core.default_durability, Durability::Store);
        let flags = DaemonArgs {
            durability: Some(Durability::Local),
            ..Default::default()
        };
        let flagged = resolve(&flags, text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(flagged.core.default_durability, Durability::Local);
        let refused = toml::from_str::<FileConfig>("durability = \"disk\"\n");
        assert!(
            refused.is_err_and(|e| {
                let text = e.to_string();
                text.contains("durability") && text.contains("local") && text.contains("store")
            }),
            "a bad mode names the key and the modes"
        );
    }

    #[test]
    fn the_token_comes_from_the_flag_then_the_environment_then_the_file() {
        let with = |flag: Option<&str>, variable: Option<&str>, text: &str| {
            let env = Environment {
                token: variable.map(String::from),
                ..env()
            };
            DaemonSettings::resolve(
                &DaemonArgs::default(),
                flag.map(String::from),
                file(text),
                &env,
            )
            .ok()
            .and_then(|s| s.token)
        };
        let text = "token = \"from-file\"\n";
        assert_eq!(
            with(Some("flag"), Some("var"), text).as_deref(),
            Some("flag")
        );
        assert_eq!(with(None, Some("var"), text).as_deref(), Some("var"));
        assert_eq!(with(None, None, text).as_deref(), Some("from-file"));
        assert_eq!(with(None, None, "token = \"\"\n"), None);
    }

    #[test]
    fn tls_needs_both_files_and_makes_urls_https() {
        let Ok(settings) = resolve(
            &DaemonArgs::default(),
            "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
        ) else {
            panic!("refused");
        };
        assert_eq!(settings.core.url_scheme, "https");
        assert_eq!(
            settings.tls,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert_eq!(
            refused(&DaemonArgs::default(), "tls_cert = \"/c.pem\"\n").key,
            "tls_cert"
        );
    }

    #[test]
    fn bad_values_are_refused_with_what_to_use() {
        for (text, key, says) in [
            ("pool = 101\n", "pool", "use 0 to 100 (default 2)"),
            (
                "max_checkpoints = 0\n",
                "max_checkpoints",
                "use 1 to 10000 (default 100)",
            ),
            (
                "sprite_oom_score_adj = 2000\n",
                "sprite_oom_score_adj",
                "use -1000 to 1000",
            ),
            (
                "creates_per_minute = 0\n",
                "creates_per_minute",
                "(default 600)",
            ),
            (
                "default_storage_gb = 0\n",
                "default_storage_gb",
                "use 1 to 16384",
            ),
            ("block_kib = 100\n", "block_kib", "power of two"),
            ("region = \"US East\"\n", "region", "a-z, 0-9 and -"),
            ("domain = \"a/b\"\n", "domain", "not a domain name"),
            ("proxy_listen = \"nowhere\"\n", "proxy_listen", "IP:PORT"),
            ("warm_after = \"soon\"\n", "warm_after", "warm_after"),
            ("egress_private = \"maybe\"\n", "egress_private", "\"deny\""),
            (
                "dns_upstreams = [\"dns.example\"]\n",
                "dns_upstreams",
                "not IP or IP:PORT",
            ),
            ("storage = \"zfs\"\n", "storage", "use local or spritefs"),
            ("store_faults = \"2000\"\n", "store_faults", "0 to 1000"),
            (
                "sprite_ids_from = 100000\n",
                "sprite_ids_from",
                "overlaps the storage ids",
            ),
            (
                "sprite_ids_from = 2147000000\n",
                "sprite_ids_from",
                "leaves room for",
            ),
        ] {
            let error = refused(&DaemonArgs::default(), text);
            assert_eq!(error.key, key, "{text:?}: {error}");
            assert!(error.to_string().contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn local_storage_and_an_s3_store_are_understood() {
        let Ok(local) = resolve(&DaemonArgs::default(), "storage = \"local\"\n") else {
            panic!("refused");
        };
        assert!(matches!(
            local.core.storage,
            sprite_core::StorageBackend::Local
        ));
        let flags = DaemonArgs {
            store: Some("s3://bucket/prefix".into()),
            ..Default::default()
        };
        let Ok(s3) = resolve(
            &flags,
            "[s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n",
        ) else {
            panic!("refused");
        };
        let sprite_core::StorageBackend::SpriteFs {
            store_url,
            store_env,
            ..
        } = &s3.core.storage
        else {
            panic!("not spritefs");
        };
        assert_eq!(store_url.as_deref(), Some("s3://bucket/prefix"));
        assert!(store_env.contains(&("AWS_ALLOW_HTTP".into(), "true".into())));
    }
}
