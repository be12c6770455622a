//! Many hosts, one store: what the hosts of a cluster agree on, kept in etcd (the v3 API),
//! never in a protocol of our own.
//!
//! Keys, under a prefix (`/sprites/` by default):
//! - `hosts/<host id>`: a live host, its advertised URL and its capacity. Attached to the
//!   host's lease, which its heartbeat keeps alive: when the host stops, the key goes
//!   with the lease (TTL a few seconds).
//! - `sprites/<org>/<name>`: which host owns a sprite, and the lease epoch of that
//!   ownership. Made with a transaction that requires the key to be absent (so a name is
//!   created once, however many hosts race), changed only by transactions that compare
//!   the revision the caller read (a failover claim bumps the epoch; a stale claim loses).
//!
//! This crate is the directory and membership only; placement, forwarding and failover
//! are built on it by the daemon.
#![forbid(unsafe_code)]

mod view;

pub use view::{token_hash, View};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;

/// How a host joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// This host's name, unique in the cluster.
    pub host_id: String,
    /// How peers reach this host's API.
    pub advertise: String,
    /// How peers reach this host's URL proxy.
    pub advertise_proxy: String,
    /// Key prefix of this cluster in etcd (ends with `/`).
    pub prefix: String,
    /// Lease time to live: a host that stops is gone from the cluster after this.
    pub lease_ttl: Duration,
}

impl ClusterConfig {
    /// A host of the cluster at `endpoints` with the default prefix and a 5 s lease.
    pub fn new(endpoints: Vec<String>, host_id: &str, advertise: &str) -> ClusterConfig {
        ClusterConfig {
            endpoints,
            host_id: host_id.to_string(),
            advertise: advertise.to_string(),
            advertise_proxy: advertise.to_string(),
            prefix: "/sprites/".to_string(),
            lease_ttl: Duration::from_secs(5),
        }
    }
}

/// Parses `etcd://HOST:PORT[,HOST:PORT...]` (the `--cluster` flag) into client URLs.
pub fn parse_cluster_url(url: &str) -> Result<Vec<String>, ClusterError> {
    let bad = |reason: &str| ClusterError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("expected etcd://HOST:PORT[,HOST:PORT...]"))?;
    let endpoints: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (host, port) = part
                .rsplit_once(':')
                .ok_or_else(|| bad("every endpoint needs a port"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("every endpoint is HOST:PORT with a port number"));
            }
            Ok(format!("http://{part}"))
        })
        .collect::<Result<_, _>>()?;
    if endpoints.is_empty() {
        return Err(bad("no endpoint"));
    }
    Ok(endpoints)
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd")]
    Etcd(#[from] etcd_client::Error),
    #[error("cluster url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("etcd key {key} holds no valid record")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("sprite {org}/{name} exists already (owned by host {owner})")]
    NameTaken {
        org: String,
        name: String,
        owner: String,
    },
    #[error("sprite {org}/{name} changed since it was read (another host claimed or released it)")]
    Changed { org: String, name: String },
    #[error("host {0} is already a live member of the cluster")]
    HostTaken(String),
}

/// What a host offers, published with its membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub free_memory_mb: u64,
    pub running: u64,
    pub warm: u64,
    pub cold: u64,
}

/// A live host, as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub id: String,
    /// Its API.
    pub advertise: String,
    /// Its URL proxy.
    #[serde(default)]
    pub proxy: String,
    pub capacity: Capacity,
    /// Takes no new sprites (being drained).
    #[serde(default)]
    pub draining: bool,
}

/// Who owns a sprite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub org: String,
    pub name: String,
    pub owner: String,
    /// Bumped by every change of owner: a host that holds an older epoch is stale.
    pub epoch: u64,
}

/// A placement with the etcd revision it was read at (what a change compares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub placement: Placement,
    pub revision: i64,
}

/// The host with most room for a new sprite: not draining, least loaded (running and
/// warm sprites first, then most free memory); ties go to the smaller id.
pub fn pick_host(hosts: &[HostInfo]) -> Option<&HostInfo> {
    hosts.iter().filter(|host| !host.draining).min_by(|a, b| {
        let load = |h: &HostInfo| h.capacity.running + h.capacity.warm;
        load(a)
            .cmp(&load(b))
            .then(b.capacity.free_memory_mb.cmp(&a.capacity.free_memory_mb))
            .then(a.id.cmp(&b.id))
    })
}

/// Best of two: of the hosts at `first` and `second` (indexes into the hosts that take
/// sprites, taken modulo their number), the less loaded. Random indexes spread a burst
/// of creates even while every host reads the same (slightly old) capacities.
pub fn pick_of_two(hosts: &[HostInfo], first: usize, second: usize) -> Option<&HostInfo> {
    let open: Vec<&HostInfo> = hosts.iter().filter(|host| !host.draining).collect();
    if open.is_empty() {
        return None;
    }
    let (a, b) = (open[first % open.len()], open[second % open.len()]);
    let load = |h: &HostInfo| h.capacity.running + h.capacity.warm;
    Some(if load(b) < load(a) { b } else { a })
}

/// This host's membership of a cluster, and the directory.
pub struct Cluster {
    client: etcd_client::Client,
    config: ClusterConfig,
    lease: i64,
    lost: watch::Receiver<bool>,
    heartbeat: tokio::task::JoinHandle<()>,
    view: View,
    follower: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("host_id", &self.config.host_id)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    /// Stops the heartbeat without revoking the lease: the host leaves the cluster when
    /// the lease expires, as a host that died would (`leave` revokes it at once).
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.follower.abort();
    }
}

fn record<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn read<T: for<'de> Deserialize<'de>>(
    key: &[u8],
    value: &[u8],
) -> Result<T, ClusterError> {
    serde_json::from_slice(value).map_err(|source| ClusterError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

impl Cluster {
    /// Joins: takes a lease, registers this host under it (refused while another live
    /// member has the same id) and keeps the lease alive in the background.
    ///
    /// `previous` is the lease of this host's last run: while it is still alive (a
    /// daemon restarted within the TTL) the host keeps it, and stays the member it was
    /// (its sprites are not failed over).
    pub async fn join(
        config: ClusterConfig,
        capacity: Capacity,
        previous: Option<i64>,
    ) -> Result<Cluster, ClusterError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5));
        let mut client = etcd_client::Client::connect(&config.endpoints, Some(options)).await?;
        let ttl = config.lease_ttl.as_secs().max(1) as i64;
        let key = format!("{}hosts/{}", config.prefix, config.host_id);
        let host = HostInfo {
            id: config.host_id.clone(),
            advertise: config.advertise.clone(),
            proxy: config.advertise_proxy.clone(),
            capacity,
            draining: false,
        };
        let mut kept = None;
        if let Some(lease) = previous {
            let alive = client
                .lease_time_to_live(lease, None)
                .await
                .is_ok_and(|answer| answer.ttl() > 0);
            if alive {
                let ours = client
                    .txn(
                        Txn::new()
                            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                            .and_then([TxnOp::put(
                                key.clone(),
                                record(&host),
                                Some(PutOptions::new().with_lease(lease)),
                            )]),
                    )
                    .await?;
                if ours.succeeded() {
                    kept = Some(lease);
                }
            }
        }
        let lease = match kept {
            Some(lease) => lease,
            None => {
                let lease = client.lease_grant(ttl, None).await?.id();
                let joined = client
                    .txn(
                        Txn::new()
                            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(
                                key,
                                record(&host),
                                Some(PutOptions::new().with_lease(lease)),
                            )]),
                    )
                    .await?;
                if !joined.succeeded() {
                    let _ = client.lease_revoke(lease).await;
                    return Err(ClusterError::HostTaken(config.host_id));
                }
                lease
            }
        };
        let (lost_tx, lost) = watch::channel(false);
        let heartbeat = tokio::spawn(heartbeat(client.clone(), lease, config.lease_ttl, lost_tx));
        let (view, follower) = view::follow(client.clone(), config.prefix.clone());
        Ok(Cluster {
            client,
            config,
            lease,
            lost,
            heartbeat,
            view,
            follower,
        })
    }

    /// This host's picture of the cluster, kept current by a watch.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// How peers reach this host.
    pub fn advertise(&self) -> &str {
        &self.config.advertise
    }

    /// Makes a token valid on every host of the cluster with `grant`, given its hash
    /// ([`token_hash`]: the token itself is never stored); `None` withdraws it.
    pub async fn publish_token(
        &self,
        hash: &str,
        grant: Option<&sprite_api::admin::TokenGrant>,
    ) -> Result<(), ClusterError> {
        let key = format!("{}tokens/{}", self.config.prefix, hash);
        match grant {
            Some(grant) => {
                self.client.clone().put(key, record(grant), None).await?;
            }
            None => {
                self.client.clone().delete(key, None).await?;
            }
        }
        Ok(())
    }

    pub fn host_id(&self) -> &str {
        &self.config.host_id
    }

    /// This membership's lease (kept by the daemon so that a restart within the TTL
    /// keeps it).
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Becomes true when this host's lease is gone (its heartbeat failed for a whole
    /// TTL, or etcd expired it): its sprites may have new owners, and it must stop them.
    pub fn lease_lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Leaves at once: revokes the lease, so the host's key goes now.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.heartbeat.abort();
        self.client.clone().lease_revoke(self.lease).await?;
        Ok(())
    }

    fn host_key(&self) -> String {
        format!("{}hosts/{}", self.config.prefix, self.config.host_id)
    }

    fn sprite_key(&self, org: &str, name: &str) -> String {
        format!("{}sprites/{org}/{name}", self.config.prefix)
    }

    /// Publishes this host's capacity (and whether it takes new sprites).
    pub async fn publish(&self, capacity: Capacity, draining: bool) -> Result<(), ClusterError> {
        let host = HostInfo {
            id: self.config.host_id.clone(),
            advertise: self.config.advertise.clone(),
            proxy: self.config.advertise_proxy.clone(),
            capacity,
            draining,
        };
        self.client
            .clone()
            .put(
                self.host_key(),
                record(&host),
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await?;
        Ok(())
    }

    /// The live hosts, by id.
    pub async fn hosts(&self) -> Result<Vec<HostInfo>, ClusterError> {
        let prefix = format!("{}hosts/", self.config.prefix);
        let response = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        response
            .kvs()
            .iter()
            .map(|kv| read(kv.key(), kv.value()))
            .collect()
    }

    /// Creates a sprite's name, owned by this host at epoch 1. Exactly one of any number
    /// of concurrent claims of one name succeeds; the others learn the owner.
    pub async fn claim_name(&self, org: &str, name: &str) -> Result<Entry, ClusterError> {
        let key = self.sprite_key(org, name);
        let placement = Placement {
            org: org.to_string(),
            name: name.to_string(),
            owner: self.config.host_id.clone(),
            epoch: 1,
        };
        let response = self
            .client
            .clone()
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), record(&placement), None)])
                    .or_else([TxnOp::get(key.clone(), None)]),
            )
            .await?;
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            return Ok(Entry {
                placement,
                revision,
            });
        }
        let owner = self
            .existing(&key, &response.op_responses())?
            .map_or_else(String::new, |entry| entry.placement.owner);
        Err(ClusterError::NameTaken {
            org: org.to_string(),
            name: name.to_string(),
            owner,
        })
    }

    fn existing(
        &self,
        key: &str,
        responses: &[TxnOpResponse],
    ) -> Result<Option<Entry>, ClusterError> {
        for response in responses {
            if let TxnOpResponse::Get(get) = response {
                if let Some(kv) = get.kvs().first() {
                    return Ok(Some(Entry {
                        placement: read(key.as_bytes(), kv.value())?,
                        revision: kv.mod_revision(),
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Who owns a sprite now.
    pub async fn lookup(&self, org: &str, name: &str) -> Result<Option<Entry>, ClusterError> {
        let response = self
            .client
            .clone()
            .get(self.sprite_key(org, name), None)
            .await?;
        response
            .kvs()
            .first()
            .map(|kv| {
                Ok(Entry {
                    placement: read(kv.key(), kv.value())?,
                    revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    /// Every sprite a host owns (what a failover claims, or a drain moves).
    pub async fn sprites_of(&self, host: &str) -> Result<Vec<Entry>, ClusterError> {
        let prefix = format!("{}sprites/", self.config.prefix);
        let response = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut owned = Vec::new();
        for kv in response.kvs() {
            let placement: Placement = read(kv.key(), kv.value())?;
            if placement.owner == host {
                owned.push(Entry {
                    placement,
                    revision: kv.mod_revision(),
                });
            }
        }
        Ok(owned)
    }

    /// Makes this host the owner of a sprite, bumping its epoch, if nobody changed it
    /// since `entry` was read (a host claiming a dead host's sprites).
    pub async fn take_over(&self, entry: &Entry) -> Result<Entry, ClusterError> {
        self.reassign(entry, &self.config.host_id).await
    }

    /// Gives a sprite of this host to host `to` (a move), bumping its epoch, if nobody
    /// changed it since `entry` was read.
    pub async fn hand_over(&self, entry: &Entry, to: &str) -> Result<Entry, ClusterError> {
        self.reassign(entry, to).await
    }

    /// Makes `owner` the owner of a sprite at the next epoch, if unchanged since read.
    async fn reassign(&self, entry: &Entry, owner: &str) -> Result<Entry, ClusterError> {
        let placement = Placement {
            owner: owner.to_string(),
            epoch: entry.placement.epoch + 1,
            ..entry.placement.clone()
        };
        let value = record(&placement);
        let revision = self
            .if_unchanged(entry, |key| TxnOp::put(key, value, None))
            .await?;
        Ok(Entry {
            placement,
            revision,
        })
    }

    /// Removes a sprite's name (it was destroyed), if nobody changed it since `entry`
    /// was read.
    pub async fn release(&self, entry: &Entry) -> Result<(), ClusterError> {
        self.if_unchanged(entry, |key| TxnOp::delete(key, None))
            .await
            .map(|_| ())
    }

    /// Runs `operation` on a sprite's key if its revision is still `entry`'s; answers
    /// the revision it made.
    async fn if_unchanged(
        &self,
        entry: &Entry,
        operation: impl FnOnce(String) -> TxnOp,
    ) -> Result<i64, ClusterError> {
        let key = self.sprite_key(&entry.placement.org, &entry.placement.name);
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, entry.revision);
        let response = self
            .client
            .clone()
            .txn(Txn::new().when([unchanged]).and_then([operation(key)]))
            .await?;
        if !response.succeeded() {
            return Err(ClusterError::Changed {
                org: entry.placement.org.clone(),
                name: entry.placement.name.clone(),
            });
        }
        Ok(response.header().map_or(0, |h| h.revision()))
    }
}

/// Keeps a lease alive: a keep-alive every third of the TTL. Reports the lease lost when
/// etcd says it expired, or when no keep-alive got through for a whole TTL (etcd may
/// have expired it meanwhile: the host must act as if it had).
async fn heartbeat(
    mut client: etcd_client::Client,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut last_ok = tokio::time::Instant::now();
    let mut keeper = None;
    loop {
        if keeper.is_none() {
            keeper = client.lease_keep_alive(lease).await.ok();
        }
        let mut renewed = false;
        if let Some((sender, stream)) = keeper.as_mut() {
            let answer = async {
                sender.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(every, answer).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => renewed = true,
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease, "cluster lease expired");
                    let _ = lost.send(true);
                    return;
                }
                _ => keeper = None,
            }
        }
        if renewed {
            last_ok = tokio::time::Instant::now();
        } else if last_ok.elapsed() >= ttl {
            tracing::warn!(
                lease,
                "no cluster heartbeat got through for a whole lease: lost"
            );
            let _ = lost.send(true);
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// A real etcd for tests (Debian's `etcd-server`), on free loopback ports, with its
/// data in a temporary directory; killed and removed on drop.
pub mod testing {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    #[derive(Debug)]
    pub struct Etcd {
        child: Child,
        /// Its client URL.
        pub endpoint: String,
        dir: std::path::PathBuf,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn free_port() -> std::io::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    /// Starts etcd (`$SPRITE_ETCD`, else `etcd` on the PATH) and waits for its port.
    pub fn start_etcd() -> Result<Etcd, String> {
        let (client, peer) = (
            free_port().map_err(|e| e.to_string())?,
            free_port().map_err(|e| e.to_string())?,
        );
        let dir = std::env::temp_dir().join(format!("sprite-etcd-{}-{client}", std::process::id()));
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(std::env::var("SPRITE_ETCD").unwrap_or_else(|_| "etcd".into()))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", "test", "--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start etcd ({e}): apt-get install etcd-server"))?;
        let etcd = Etcd {
            child,
            endpoint,
            dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok() {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("etcd did not start within 10 s".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, running: u64, free: u64, draining: bool) -> HostInfo {
        HostInfo {
            id: id.into(),
            advertise: format!("http://{id}"),
            proxy: String::new(),
            capacity: Capacity {
                free_memory_mb: free,
                running,
                ..Capacity::default()
            },
            draining,
        }
    }

    #[test]
    fn the_least_loaded_host_that_takes_sprites_is_picked() {
        let hosts = [
            host("a", 5, 1000, false),
            host("b", 2, 500, false),
            host("c", 2, 800, false),
            host("d", 0, 9000, true),
        ];
        assert_eq!(pick_host(&hosts).map(|h| h.id.as_str()), Some("c"));
        assert_eq!(pick_host(&hosts[3..]), None, "a draining host takes none");
        assert_eq!(pick_host(&[]), None);
        let two = |a, b| pick_of_two(&hosts, a, b).map(|h| h.id.as_str());
        assert_eq!(two(0, 1), Some("b"), "the less loaded of the two");
        assert_eq!(two(0, 0), Some("a"));
        assert_eq!(two(2, 5), Some("c"), "indexes wrap over the open hosts");
        assert_eq!(pick_of_two(&hosts[3..], 0, 1), None);
    }

    #[test]
    fn cluster_urls_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_cluster_url("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap_or_default(),
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        for bad in [
            "http://x:1",
            "etcd://",
            "etcd://host",
            "etcd://host:port",
            "etcd://:1",
        ] {
            let error = parse_cluster_url(bad).err().map(|e| e.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("cluster url")),
                "{bad}: {error:?}"
            );
        }
    }
}
