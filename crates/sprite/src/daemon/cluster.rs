//! This host as a member of a cluster: its membership (kept across a quick restart),
//! the directory the manager claims names in, the peers the API forwards to, and the
//! loop that keeps this host's sprites and the directory in agreement: orphans of a
//! dead host are taken over, sprites moved here are adopted, and copies another host
//! now owns are abandoned.

use anyhow::{Context, Result};
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use sprite_api::admin::{DrainReport, HostStatus, MoveReport, TokenGrant};
use sprite_api::ErrorKind;
use sprite_cluster::{Cluster, ClusterConfig, ClusterError, Entry, HostInfo};
use sprite_core::directory::{Directory, DirectoryError, DirectoryFuture};
use sprite_core::ids::SpriteKey;
use sprite_core::{CoreError, SpriteManager};
use sprite_server::peers::{Location, Peer, Peers};
use sprite_server::ApiError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often this host compares its sprites with the directory.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// How often capacity is published.
const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// A name this host claimed this recently is being created here: not adopted.
const CREATE_WINDOW: Duration = Duration::from_secs(120);
/// An orphan the host picked for it did not take over within this: any host does.
const ORPHAN_PATIENCE: Duration = Duration::from_secs(3);
/// A failed adoption is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(2);

pub struct Member {
    cluster: RwLock<Arc<Cluster>>,
    config: ClusterConfig,
    manager: Arc<SpriteManager>,
    /// Names claimed here (creates in flight), and when.
    claimed: Mutex<HashMap<SpriteKey, Instant>>,
    /// Sprites being handed to another host: never adopted back meanwhile.
    leaving: Mutex<std::collections::HashSet<SpriteKey>>,
    /// Orphans first seen, and adoptions that failed, and when.
    orphans_seen: Mutex<HashMap<SpriteKey, Instant>>,
    failed: Mutex<HashMap<SpriteKey, Instant>>,
    /// One adoption of a sprite at a time (the loop and a request may race).
    adopting: tokio::sync::Mutex<()>,
    draining: AtomicBool,
    lease_file: PathBuf,
    /// A token of this host (asks a target host to take a moved sprite now).
    token: String,
    peer_client: sprite_server::peers::PeerClient,
    /// Creates this host sent to each host since that host last published its load
    /// (counted as load, so a burst of creates spreads before the numbers catch up).
    placed: Mutex<HashMap<String, (u64, Instant)>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("host", &self.config.host_id)
            .finish_non_exhaustive()
    }
}

fn key_of(entry: &Entry) -> SpriteKey {
    SpriteKey::new(&entry.placement.org, &entry.placement.name)
}

fn peer_of(host: &HostInfo) -> Peer {
    Peer {
        id: host.id.clone(),
        api: host.advertise.clone(),
        proxy: if host.proxy.is_empty() {
            host.advertise.clone()
        } else {
            host.proxy.clone()
        },
    }
}

fn unavailable(error: impl std::error::Error) -> ApiError {
    ApiError::new(ErrorKind::Unavailable, sprite_api::error_chain(&error))
}

impl Member {
    /// Joins (keeping the lease of the last run if it is still alive), waits for the
    /// first picture of the cluster, and stops the local copies of sprites another
    /// host owns now (they were taken over while this host was away).
    pub async fn join(
        config: ClusterConfig,
        manager: Arc<SpriteManager>,
        data_dir: &std::path::Path,
        token: &str,
    ) -> Result<Arc<Member>> {
        let lease_file = data_dir.join("cluster-lease");
        let previous = std::fs::read_to_string(&lease_file)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok());
        let endpoints = config.endpoints.join(",");
        let cluster = Cluster::join(config.clone(), super::capacity(&manager), previous)
            .await
            .with_context(|| format!("join the cluster at {endpoints}"))?;
        if previous == Some(cluster.lease()) {
            tracing::info!(
                host = cluster.host_id(),
                "rejoined the cluster with the lease of the last run"
            );
        }
        std::fs::write(&lease_file, cluster.lease().to_string())
            .with_context(|| format!("write {}", lease_file.display()))?;
        if !cluster.view().loaded(Duration::from_secs(10)).await {
            anyhow::bail!("the cluster at {endpoints} did not answer a full read in 10 s");
        }
        let member = Arc::new(Member {
            cluster: RwLock::new(Arc::new(cluster)),
            config,
            manager,
            claimed: Mutex::default(),
            leaving: Mutex::default(),
            orphans_seen: Mutex::default(),
            failed: Mutex::default(),
            adopting: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
            lease_file,
            placed: Mutex::default(),
            token: token.to_string(),
            peer_client: sprite_server::peers::PeerClient::default(),
        });
        member.abandon_foreign().await;
        Ok(member)
    }

    fn cluster(&self) -> Arc<Cluster> {
        self.cluster.read().clone()
    }

    pub fn host_id(&self) -> &str {
        &self.config.host_id
    }

    /// Publishes the tokens of this host (its admin tokens and those minted here), so
    /// every host authenticates its clients.
    pub async fn publish_tokens(&self, tokens: &[(String, TokenGrant)]) -> Result<()> {
        for (hash, grant) in tokens {
            self.cluster()
                .publish_token(hash, Some(grant))
                .await
                .context("publish a token to the cluster")?;
        }
        Ok(())
    }

    /// Keeps the membership (a new lease after a lost one), publishes capacity and
    /// reconciles, forever.
    pub async fn run(self: Arc<Self>) {
        let mut last_publish = Instant::now();
        loop {
            tokio::time::sleep(RECONCILE_EVERY).await;
            let cluster = self.cluster();
            if *cluster.lease_lost().borrow() {
                tracing::error!("this host lost its cluster lease: its sprites may be claimed by other hosts; joining again");
                drop(cluster);
                self.rejoin().await;
                continue;
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                let draining = self.draining.load(Ordering::Relaxed);
                if let Err(error) = cluster
                    .publish(super::capacity(&self.manager), draining)
                    .await
                {
                    tracing::warn!(
                        "publish capacity to the cluster: {}",
                        sprite_api::error_chain(&error)
                    );
                }
            }
            self.reconcile().await;
        }
    }

    async fn rejoin(&self) {
        loop {
            match Cluster::join(self.config.clone(), super::capacity(&self.manager), None).await {
                Ok(cluster) => {
                    let _ = std::fs::write(&self.lease_file, cluster.lease().to_string());
                    if cluster.view().loaded(Duration::from_secs(10)).await {
                        *self.cluster.write() = Arc::new(cluster);
                        tracing::info!("joined the cluster again");
                        self.abandon_foreign().await;
                        return;
                    }
                }
                Err(error) => tracing::warn!(
                    "join the cluster again: {}",
                    sprite_api::error_chain(&error)
                ),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Local sprites the directory gives to another host: their copies here are stale.
    async fn abandon_foreign(&self) {
        let view = self.cluster().view().clone();
        let Ok(keys) = self.manager.sprite_keys() else {
            return;
        };
        for key in keys {
            let owner = view.owner(&key.org, &key.name).map(|e| e.placement.owner);
            if owner
                .as_deref()
                .is_some_and(|owner| owner != self.host_id())
            {
                if let Err(error) = self.manager.abandon(&key).await {
                    tracing::warn!(sprite = %key.name, "abandon: {}", sprite_api::error_chain(&error));
                }
            }
        }
    }

    /// One round: take over orphans this host is picked for (or any, after a while),
    /// adopt sprites the directory gives this host, abandon the ones it gave away.
    async fn reconcile(&self) {
        let cluster = self.cluster();
        let view = cluster.view().clone();
        let me = self.host_id().to_string();
        let mut open: Vec<String> = view
            .hosts()
            .into_iter()
            .filter(|h| !h.draining)
            .map(|h| h.id)
            .collect();
        open.sort();
        let orphans = view.orphans();
        {
            let mut seen = self.orphans_seen.lock();
            seen.retain(|key, _| orphans.iter().any(|o| key_of(o) == *key));
        }
        for orphan in orphans {
            let key = key_of(&orphan);
            let first_seen = *self
                .orphans_seen
                .lock()
                .entry(key.clone())
                .or_insert_with(Instant::now);
            let picked = pick_for(&key, &open).is_some_and(|host| *host == me);
            if !picked && first_seen.elapsed() < ORPHAN_PATIENCE {
                continue;
            }
            if open.is_empty() && self.draining.load(Ordering::Relaxed) {
                continue;
            }
            match cluster.take_over(&orphan).await {
                Ok(taken) => {
                    tracing::info!(sprite = %key.name, from = %orphan.placement.owner, epoch = taken.placement.epoch, "took over a sprite of a lost host");
                    self.adopt(&key, &taken).await;
                }
                Err(ClusterError::Changed { .. }) => {}
                Err(error) => {
                    tracing::warn!(sprite = %key.name, "take over: {}", sprite_api::error_chain(&error))
                }
            }
        }
        let local: std::collections::HashSet<SpriteKey> = match self.manager.sprite_keys() {
            Ok(keys) => keys.into_iter().collect(),
            Err(_) => return,
        };
        for entry in view.sprites_of(&me) {
            let key = key_of(&entry);
            if local.contains(&key) || self.recently_claimed(&key) || self.is_leaving(&key) {
                continue;
            }
            let retry = self
                .failed
                .lock()
                .get(&key)
                .is_some_and(|at| at.elapsed() < RETRY_AFTER);
            if !retry {
                self.adopt(&key, &entry).await;
            }
        }
        for key in local {
            if self.is_leaving(&key) {
                continue;
            }
            let owner = view.owner(&key.org, &key.name).map(|e| e.placement.owner);
            if owner.as_deref().is_some_and(|owner| owner != me) {
                if let Err(error) = self.manager.abandon(&key).await {
                    tracing::warn!(sprite = %key.name, "abandon: {}", sprite_api::error_chain(&error));
                }
            }
        }
    }

    fn is_leaving(&self, key: &SpriteKey) -> bool {
        self.leaving.lock().contains(key)
    }

    fn recently_claimed(&self, key: &SpriteKey) -> bool {
        let mut claimed = self.claimed.lock();
        claimed.retain(|_, at| at.elapsed() < CREATE_WINDOW);
        claimed.contains_key(key)
    }

    /// Brings a sprite this host owns in the directory here from the store. A name
    /// with no sprite in the store (a create that never finished) is released.
    async fn adopt(&self, key: &SpriteKey, entry: &Entry) {
        let _one = self.adopting.lock().await;
        if self.manager.check_exists(key).is_ok() {
            return;
        }
        let begun = Instant::now();
        match self.manager.adopt(key, entry.placement.epoch).await {
            Ok(()) => {
                self.failed.lock().remove(key);
                tracing::info!(sprite = %key.name, ms = begun.elapsed().as_millis() as u64, "sprite adopted");
            }
            Err(CoreError::SpriteNotFound(_)) => {
                tracing::warn!(sprite = %key.name, "the directory names a sprite the store does not hold: name released");
                let _ = self.cluster().release(entry).await;
            }
            Err(error) => {
                self.failed.lock().insert(key.clone(), Instant::now());
                tracing::warn!(sprite = %key.name, "adopt: {}", sprite_api::error_chain(&error));
            }
        }
    }

    /// Hands a sprite of this host to `to`: flushed and forgotten here, then the
    /// directory names the new owner (epoch bumped), which adopts it.
    async fn hand_over(&self, key: &SpriteKey, to: &str) -> Result<MoveReport, ApiError> {
        let begun = Instant::now();
        let cluster = self.cluster();
        let entry = cluster
            .lookup(&key.org, &key.name)
            .await
            .map_err(unavailable)?
            .filter(|e| e.placement.owner == self.host_id())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Conflict,
                    format!("sprite {} is not this host's in the directory", key.name),
                )
            })?;
        self.leaving.lock().insert(key.clone());
        let handed = async {
            self.manager.disown(key).await?;
            cluster.hand_over(&entry, to).await.map_err(unavailable)
        }
        .await;
        if handed.is_ok() {
            // Still leaving until this host's own picture shows the new owner: a round
            // in between would find it "this host's, not here" and adopt it back.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && cluster
                    .view()
                    .owner(&key.org, &key.name)
                    .is_some_and(|e| e.placement.owner == self.host_id())
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.leaving.lock().remove(key);
        // On failure it is still this host's in the directory: the next round adopts
        // it back here.
        handed?;
        // Answered once the target holds it (a request about it, as from a peer, makes
        // the target take it now), so lists and requests find it there at once.
        if let Some(target) = cluster.view().host(to) {
            let request = axum::http::Request::get(format!("/v1/sprites/{}", key.name))
                .header(
                    axum::http::header::AUTHORIZATION,
                    format!("Bearer {}", self.token),
                )
                .body(axum::body::Body::empty());
            let taken = match request {
                Ok(request) => tokio::time::timeout(
                    Duration::from_secs(60),
                    self.peer_client
                        .forward(&target.advertise, self.host_id(), request),
                )
                .await
                .unwrap_or_else(|_| Err("no answer in 60 s".into())),
                Err(error) => Err(error.to_string()),
            };
            match taken {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(sprite = %key.name, target = to, status = %response.status(), "the target did not confirm the move; it takes the sprite on its next round")
                }
                Err(error) => {
                    tracing::warn!(sprite = %key.name, target = to, "the target did not confirm the move ({error}); it takes the sprite on its next round")
                }
            }
        }
        Ok(MoveReport {
            sprite: key.name.clone(),
            from: self.host_id().to_string(),
            to: to.to_string(),
            ms: begun.elapsed().as_millis() as u64,
        })
    }

    /// The host a moved sprite goes to: `to` if it is live and takes sprites, else
    /// the best of two others.
    fn target(&self, to: Option<&str>) -> Result<String, ApiError> {
        let hosts = self.cluster().view().hosts();
        let others: Vec<HostInfo> = hosts
            .into_iter()
            .filter(|h| h.id != self.host_id())
            .collect();
        match to {
            Some(id) if id == self.host_id() => {
                Err(ApiError::invalid(format!("the sprite is on {id} already")))
            }
            Some(id) => match others.iter().find(|h| h.id == id) {
                Some(host) if !host.draining => Ok(host.id.clone()),
                Some(_) => Err(ApiError::invalid(format!(
                    "host {id} is draining: it takes no sprites"
                ))),
                None => Err(ApiError::invalid(format!(
                    "no live host {id}; hosts: {}",
                    others
                        .iter()
                        .map(|h| h.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            },
            None => sprite_cluster::pick_of_two(
                &others,
                rand::random::<u32>() as usize,
                rand::random::<u32>() as usize,
            )
            .map(|h| h.id.clone())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Unavailable,
                    "no other live host takes sprites: add a host, or end a drain",
                )
            }),
        }
    }
}

/// The host picked to take over an orphan: a stable hash of its name over the open
/// hosts, so the orphans of a lost host spread over the others and each is tried by
/// one host first.
fn pick_for<'a>(key: &SpriteKey, open: &'a [String]) -> Option<&'a String> {
    use std::hash::{Hash, Hasher};
    if open.is_empty() {
        return None;
    }
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    key.org.hash(&mut hasher);
    key.name.hash(&mut hasher);
    open.get((hasher.finish() % open.len() as u64) as usize)
}

impl Member {
    /// The live host that owns `entry` when it is another host (a lost host's sprite
    /// is answered here until a live host takes it over).
    fn elsewhere(&self, view: &sprite_cluster::View, entry: Option<Entry>) -> Option<Peer> {
        let owner = entry?.placement.owner;
        if owner == self.host_id() {
            return None;
        }
        view.host(&owner).map(|h| peer_of(&h))
    }
}

impl Directory for Member {
    fn claim<'a>(&'a self, key: &'a SpriteKey) -> DirectoryFuture<'a, ()> {
        Box::pin(async move {
            self.claimed.lock().insert(key.clone(), Instant::now());
            match self.cluster().claim_name(&key.org, &key.name).await {
                Ok(_) => Ok(()),
                Err(ClusterError::NameTaken { owner, .. }) => {
                    self.claimed.lock().remove(key);
                    Err(DirectoryError::Taken { owner })
                }
                Err(error) => {
                    self.claimed.lock().remove(key);
                    Err(DirectoryError::Unavailable(sprite_api::error_chain(&error)))
                }
            }
        })
    }

    fn owns<'a>(&'a self, key: &'a SpriteKey) -> DirectoryFuture<'a, Option<String>> {
        Box::pin(async move {
            let entry = self
                .cluster()
                .lookup(&key.org, &key.name)
                .await
                .map_err(|e| DirectoryError::Unavailable(sprite_api::error_chain(&e)))?;
            Ok(entry
                .map(|e| e.placement.owner)
                .filter(|owner| owner != self.host_id()))
        })
    }

    fn made(&self, key: &SpriteKey) {
        self.claimed.lock().remove(key);
    }

    fn release<'a>(&'a self, key: &'a SpriteKey) -> DirectoryFuture<'a, ()> {
        Box::pin(async move {
            self.claimed.lock().remove(key);
            let cluster = self.cluster();
            let entry = cluster
                .lookup(&key.org, &key.name)
                .await
                .map_err(|e| DirectoryError::Unavailable(sprite_api::error_chain(&e)))?;
            match entry {
                Some(entry) if entry.placement.owner == self.host_id() => cluster
                    .release(&entry)
                    .await
                    .map_err(|e| DirectoryError::Unavailable(sprite_api::error_chain(&e))),
                _ => Ok(()),
            }
        })
    }
}

impl Peers for Member {
    fn host_id(&self) -> &str {
        &self.config.host_id
    }

    fn owner(&self, org: &str, name: &str) -> Option<Peer> {
        let cluster = self.cluster();
        self.elsewhere(cluster.view(), cluster.view().owner(org, name))
    }

    fn owner_by_name(&self, name: &str) -> Option<Peer> {
        let cluster = self.cluster();
        self.elsewhere(cluster.view(), cluster.view().owner_by_name(name))
    }

    fn place(&self, wanted: Option<&str>) -> Result<Option<Peer>, String> {
        let mut hosts = self.cluster().view().hosts();
        {
            let mut placed = self.placed.lock();
            placed.retain(|_, (_, at)| at.elapsed() < PUBLISH_EVERY + PUBLISH_EVERY / 2);
            for host in &mut hosts {
                if let Some((count, _)) = placed.get(&host.id) {
                    host.capacity.running += count;
                }
            }
        }
        let chosen = match wanted {
            Some(id) => match hosts.iter().find(|h| h.id == id) {
                Some(host) if host.draining => {
                    return Err(format!("host {id} is draining: it takes no new sprites"))
                }
                Some(host) => host.clone(),
                None => {
                    return Err(format!(
                        "host = {id:?} is not a live host of the cluster; hosts: {}",
                        hosts
                            .iter()
                            .map(|h| h.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            },
            None => match sprite_cluster::pick_of_two(
                &hosts,
                rand::random::<u32>() as usize,
                rand::random::<u32>() as usize,
            ) {
                Some(host) => host.clone(),
                None => return Ok(None),
            },
        };
        {
            let mut placed = self.placed.lock();
            let entry = placed
                .entry(chosen.id.clone())
                .or_insert((0, Instant::now()));
            entry.0 += 1;
        }
        Ok((chosen.id != self.host_id()).then(|| peer_of(&chosen)))
    }

    fn grant_of_token(&self, token: &str) -> Option<TokenGrant> {
        self.cluster().view().grant_of_token(token)
    }

    fn publish_token<'a>(
        &'a self,
        hash: &'a str,
        grant: Option<&'a TokenGrant>,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            self.cluster()
                .publish_token(hash, grant)
                .await
                .map_err(|error| {
                    ApiError::new(
                        sprite_api::ErrorKind::Unavailable,
                        format!(
                            "the cluster did not take the token change ({}); retry when etcd is reachable",
                            sprite_api::error_chain(&error)
                        ),
                    )
                })
        })
    }

    fn others(&self) -> Vec<Peer> {
        self.cluster()
            .view()
            .hosts()
            .iter()
            .filter(|h| h.id != self.host_id())
            .map(peer_of)
            .collect()
    }

    fn locate<'a>(&'a self, org: &'a str, name: &'a str, sure: bool) -> BoxFuture<'a, Location> {
        Box::pin(async move {
            let cluster = self.cluster();
            let view = cluster.view();
            let at = |owner: &str| match view.host(owner) {
                Some(host) => Location::At(peer_of(&host)),
                None => Location::Lost {
                    host: owner.to_string(),
                },
            };
            if !sure {
                if let Some(entry) = view.owner(org, name) {
                    if entry.placement.owner != self.host_id() {
                        return at(&entry.placement.owner);
                    }
                }
            }
            // This host's, unknown, or asked to be sure: the directory itself says.
            let entry = match cluster.lookup(org, name).await {
                Ok(Some(entry)) => entry,
                Ok(None) => return Location::Here,
                Err(error) => {
                    tracing::warn!(sprite = %name, "directory lookup: {}", sprite_api::error_chain(&error));
                    return Location::Here;
                }
            };
            if entry.placement.owner != self.host_id() {
                return at(&entry.placement.owner);
            }
            let key = SpriteKey::new(org, name);
            if self.is_leaving(&key) {
                return Location::Moving;
            }
            if !self.recently_claimed(&key) {
                self.adopt(&key, &entry).await;
            }
            Location::Here
        })
    }

    fn move_sprite<'a>(
        &'a self,
        org: &'a str,
        name: &'a str,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<MoveReport, ApiError>> {
        Box::pin(async move {
            let target = self.target(to)?;
            self.hand_over(&SpriteKey::new(org, name), &target).await
        })
    }

    fn drain(&self) -> BoxFuture<'_, Result<DrainReport, ApiError>> {
        Box::pin(async move {
            self.draining.store(true, Ordering::Relaxed);
            self.cluster()
                .publish(super::capacity(&self.manager), true)
                .await
                .map_err(unavailable)?;
            let mut report = DrainReport {
                host: self.host_id().to_string(),
                moved: Vec::new(),
                failed: Vec::new(),
            };
            for key in self.manager.sprite_keys()? {
                let moved = match self.target(None) {
                    Ok(target) => self.hand_over(&key, &target).await,
                    Err(error) => Err(error),
                };
                match moved {
                    Ok(moved) => report.moved.push(moved),
                    Err(error) => report.failed.push((key.name.clone(), error.message)),
                }
            }
            Ok(report)
        })
    }

    fn hosts(&self) -> Vec<HostStatus> {
        let cluster = self.cluster();
        let view = cluster.view();
        view.hosts()
            .into_iter()
            .map(|host| HostStatus {
                sprites: view.sprites_of(&host.id).len() as u64,
                this_host: host.id == self.host_id(),
                id: host.id,
                api: host.advertise,
                proxy: host.proxy,
                free_memory_mb: host.capacity.free_memory_mb,
                running: host.capacity.running,
                warm: host.capacity.warm,
                cold: host.capacity.cold,
                draining: host.draining,
            })
            .collect()
    }
}
