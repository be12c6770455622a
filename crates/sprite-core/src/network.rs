//! Each running sprite's network: a slot of the daemon's subnet (a veth pair with NAT,
//! `sprite_sandbox::net`), a DNS resolver on its gateway address that enforces its
//! egress policy (`dns`), and the policy itself (API.md, "Policy").
//!
//! With an empty policy a sprite reaches anything beyond the host. With rules, its
//! egress is restricted to the addresses its allowed names resolved to: the resolver
//! admits them into the slot's nftables set before it answers, so raw-IP connections
//! go nowhere unless the address came from an allowed name. A policy change applies
//! at once; addresses no allowed name accounts for any more are revoked, which cuts
//! their live connections.
//!
//! A slot lives as long as the sprite's network namespace: from a start to the next
//! cold sleep or destroy. It is recorded in the sprite's state directory, so a
//! restarted daemon re-installs its tables around the sprites that still run.

use crate::dns::{self, Admitted, AllowSink, ResolverConfig};
use crate::error::CoreError;
use crate::ids::SpriteKey;
use parking_lot::Mutex;
use sprite_api::policy::NetworkPolicy;
use sprite_sandbox::net::{Egress, Net, NetPlan, SlotAddrs};
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the daemon's sprite networking is set up (`[network]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The subnet sprites' links come from, e.g. `10.231.0.0/16` (a /30 each).
    pub cidr: String,
    /// Where the sprites' resolvers forward allowed queries.
    pub dns_upstreams: Vec<SocketAddr>,
    /// Whether sprites without a policy may reach link-local addresses and the host's
    /// own networks (`egress_private = "allow"`; dropped by default).
    pub local_egress: bool,
}

/// DNS answers whose addresses one sprite may have admitted: 200 at once, then 50 a
/// second. Past that its lookups answer SERVFAIL until the budget refills (answers
/// whose addresses are still admitted cost nothing).
const ADMISSION_BURST: u32 = 200;
const ADMISSIONS_PER_SECOND: f64 = 50.0;
/// Admissions waiting for the nft transaction of their batch.
const ADMISSION_QUEUE: usize = 4096;

/// The file in a sprite's state directory that records its slot.
const SLOT_FILE: &str = "net-slot";

struct Slot {
    slot: u32,
    addrs: SlotAddrs,
    policy: tokio::sync::watch::Sender<Arc<NetworkPolicy>>,
    admitted: Arc<Mutex<Admitted>>,
    resolver: tokio::task::JoinHandle<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.resolver.abort();
    }
}

/// The daemon's sprite networking.
pub struct Network {
    net: Arc<Net>,
    upstreams: Vec<SocketAddr>,
    slots: Mutex<HashMap<String, Slot>>,
    used: Mutex<BTreeSet<u32>>,
    /// The queue of [`run_admissions`] (started with the first resolver).
    admissions: Mutex<Option<tokio::sync::mpsc::Sender<Admission>>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("plan", self.net.plan())
            .field("slots", &self.slots.lock().len())
            .finish()
    }
}

fn net_error(sprite: &str) -> impl FnOnce(sprite_sandbox::SandboxError) -> CoreError + '_ {
    move |source| CoreError::Sandbox {
        sprite: sprite.to_string(),
        source,
    }
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CoreError::Task(what, e))
}

/// One DNS answer's addresses waiting to be admitted into a slot's set.
struct Admission {
    slot: u32,
    addrs: Vec<(Ipv4Addr, Duration)>,
    done: tokio::sync::oneshot::Sender<bool>,
}

/// Admits queued answers in batches: whatever queued while one nft transaction ran goes
/// into the next, so admissions cost one process per batch, not one per answer, however
/// many sprites look names up at once. A batch that fails (a slot just went away) is
/// retried slot by slot.
async fn run_admissions(net: Arc<Net>, mut queue: tokio::sync::mpsc::Receiver<Admission>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let work: Vec<(u32, Vec<(Ipv4Addr, Duration)>)> =
            batch.iter().map(|a| (a.slot, a.addrs.clone())).collect();
        let batch_net = net.clone();
        let all = blocking("admit addresses", move || {
            batch_net.allow_many(&work).is_ok()
        })
        .await
        .unwrap_or(false);
        for admission in batch {
            let admitted = all || {
                let one_net = net.clone();
                let (slot, addrs) = (admission.slot, admission.addrs.clone());
                match blocking("admit addresses", move || one_net.allow(slot, &addrs)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(error)) => {
                        tracing::warn!(
                            slot,
                            "could not admit addresses: {}",
                            sprite_api::error_chain(&error)
                        );
                        false
                    }
                    Err(error) => {
                        tracing::warn!(slot, "could not admit addresses: {error}");
                        false
                    }
                }
            };
            let _ = admission.done.send(admitted);
        }
    }
}

/// Admits what a sprite's allowed names resolve to into its slot's set.
struct SlotSink {
    slot: u32,
    admitted: Arc<Mutex<Admitted>>,
    queue: tokio::sync::mpsc::Sender<Admission>,
    budget: crate::limits::Buckets,
    /// When each address's element in the slot's set expires (as last admitted).
    in_set: Mutex<HashMap<Ipv4Addr, Instant>>,
}

#[async_trait::async_trait]
impl AllowSink for SlotSink {
    async fn allow(&self, name: &str, addrs: Vec<(Ipv4Addr, Duration)>) -> bool {
        let now = Instant::now();
        self.admitted.lock().note(name, &addrs, now);
        // Addresses still admitted for at least half their new TTL need no transaction.
        let fresh = {
            let in_set = self.in_set.lock();
            addrs.iter().all(|(address, ttl)| {
                in_set
                    .get(address)
                    .is_some_and(|until| *until >= now + *ttl / 2)
            })
        };
        if fresh {
            return true;
        }
        if self.budget.take("").is_err() {
            return false;
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let admission = Admission {
            slot: self.slot,
            addrs: addrs.clone(),
            done,
        };
        if self.queue.try_send(admission).is_err() || !answer.await.unwrap_or(false) {
            return false;
        }
        let mut in_set = self.in_set.lock();
        if in_set.len() > 4096 {
            in_set.retain(|_, until| *until > now);
        }
        for (address, ttl) in addrs {
            in_set.insert(address, now + ttl);
        }
        true
    }
}

fn egress_of(policy: &NetworkPolicy) -> Egress {
    if policy.restricted() {
        Egress::Restricted
    } else {
        Egress::Open
    }
}

impl Network {
    /// The networking of the daemon whose data lives in `data_dir`: its own nftables
    /// table and interface prefix, named after the directory so that several daemons
    /// on one host keep apart.
    pub fn new(config: &NetworkConfig, data_dir: &Path) -> Result<Network, CoreError> {
        let tag = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            data_dir.hash(&mut hasher);
            format!("{:05x}", hasher.finish() & 0xfffff)
        };
        let mut plan = NetPlan::new(&config.cidr, &format!("sprites_{tag}"), &format!("sp{tag}"))
            .map_err(|e| CoreError::InvalidValue {
            field: "network",
            reason: format!("{:?}: {}", config.cidr, sprite_api::error_chain(&e)),
        })?;
        plan.local_egress = config.local_egress;
        // For admins (and test harnesses): which nftables table is this daemon's.
        let note = data_dir.join("network-table");
        std::fs::write(&note, format!("inet {}\n", plan.table))
            .map_err(CoreError::io("write", note))?;
        Ok(Network {
            net: Arc::new(Net::system(plan)),
            upstreams: config.dns_upstreams.clone(),
            slots: Mutex::new(HashMap::new()),
            used: Mutex::new(BTreeSet::new()),
            admissions: Mutex::new(None),
        })
    }

    /// The admissions queue, its worker started on first use (inside the runtime).
    fn admissions(&self) -> tokio::sync::mpsc::Sender<Admission> {
        self.admissions
            .lock()
            .get_or_insert_with(|| {
                let (sender, receiver) = tokio::sync::mpsc::channel(ADMISSION_QUEUE);
                tokio::spawn(run_admissions(self.net.clone(), receiver));
                sender
            })
            .clone()
    }

    fn slot_file(state_dir: &Path) -> PathBuf {
        state_dir.join(SLOT_FILE)
    }

    /// The slot a sprite recorded in its state directory, if any.
    pub fn recorded_slot(state_dir: &Path) -> Option<u32> {
        std::fs::read_to_string(Self::slot_file(state_dir))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Installs the daemon's tables, keeping the slots of sprites that still run
    /// (`live`: sprite id, slot, policy) and starting their resolvers again.
    pub async fn install(&self, live: Vec<(String, u32, NetworkPolicy)>) -> Result<(), CoreError> {
        let net = self.net.clone();
        let slots: Vec<(u32, Egress)> = live
            .iter()
            .map(|(_, slot, policy)| (*slot, egress_of(policy)))
            .collect();
        // Live slots stay taken whatever happens below: a new sprite must never get one.
        self.used
            .lock()
            .extend(live.iter().map(|(_, slot, _)| *slot));
        blocking("install the network", move || net.install(&slots))
            .await?
            .map_err(net_error("(all)"))?;
        for (sprite_id, slot, policy) in live {
            let Some(addrs) = self.net.plan().addresses(slot) else {
                continue;
            };
            if let Err(error) = self.register(&sprite_id, slot, addrs, policy).await {
                tracing::warn!(sprite = %sprite_id, "no DNS resolver after the restart: {}", sprite_api::error_chain(&error));
            }
        }
        Ok(())
    }

    /// Removes the daemon's tables (the sprites' links go with their namespaces).
    pub async fn uninstall(&self) -> Result<(), CoreError> {
        let net = self.net.clone();
        blocking("remove the network", move || net.uninstall())
            .await?
            .map_err(net_error("(all)"))
    }

    async fn register(
        &self,
        sprite_id: &str,
        slot: u32,
        addrs: SlotAddrs,
        policy: NetworkPolicy,
    ) -> Result<(), CoreError> {
        let socket = tokio::net::UdpSocket::bind(SocketAddr::from((addrs.gateway, 53)))
            .await
            .map_err(|source| CoreError::Io {
                what: "bind the DNS resolver of a sprite on",
                path: format!("{}:53", addrs.gateway).into(),
                source,
            })?;
        let (policy, watched) = tokio::sync::watch::channel(Arc::new(policy));
        let admitted = Arc::new(Mutex::new(Admitted::new()));
        let sink = Arc::new(SlotSink {
            slot,
            admitted: admitted.clone(),
            queue: self.admissions(),
            budget: crate::limits::Buckets::new(ADMISSION_BURST, ADMISSIONS_PER_SECOND),
            in_set: Mutex::new(HashMap::new()),
        });
        let config = ResolverConfig {
            upstreams: self.upstreams.clone(),
            timeout: Duration::from_secs(3),
            sprite_network: Some((self.net.plan().subnet, self.net.plan().prefix_len)),
        };
        let id = sprite_id.to_string();
        let resolver = tokio::spawn(async move {
            let Err(error) = dns::serve(socket, config, watched, sink).await;
            tracing::warn!(sprite = %id, "DNS resolver stopped: {}", sprite_api::error_chain(&error));
        });
        self.slots.lock().insert(
            sprite_id.to_string(),
            Slot {
                slot,
                addrs,
                policy,
                admitted,
                resolver,
            },
        );
        Ok(())
    }

    /// Gives a just-started sprite (PID 1 `init_pid`) its link, resolver and policy.
    /// Answers its addresses.
    pub async fn attach(
        &self,
        sprite: &str,
        sprite_id: &str,
        init_pid: u32,
        state_dir: &Path,
        policy: NetworkPolicy,
    ) -> Result<SlotAddrs, CoreError> {
        // A sprite restarted in place (a restore) gives its old slot back first.
        self.release(sprite_id, state_dir).await;
        let slot = {
            let mut used = self.used.lock();
            let free = (0..self.net.plan().max_slots()).find(|s| !used.contains(s));
            let slot = free
                .ok_or_else(|| CoreError::TooManySprites(self.net.plan().max_slots() as usize))?;
            used.insert(slot);
            slot
        };
        let net = self.net.clone();
        let egress = egress_of(&policy);
        let attached = blocking("attach a sprite's network", move || {
            net.attach(slot, init_pid, egress)
        })
        .await
        .and_then(|r| r.map_err(net_error(sprite)));
        let addrs = match attached {
            Ok(addrs) => addrs,
            Err(error) => {
                self.used.lock().remove(&slot);
                return Err(error);
            }
        };
        std::fs::write(Self::slot_file(state_dir), slot.to_string())
            .map_err(CoreError::io("write", Self::slot_file(state_dir)))?;
        if let Err(error) = self.register(sprite_id, slot, addrs, policy).await {
            self.release(sprite_id, state_dir).await;
            return Err(error);
        }
        Ok(addrs)
    }

    /// Takes a stopped sprite's slot back: its resolver, nftables objects and link.
    pub async fn release(&self, sprite_id: &str, state_dir: &Path) {
        let slot = self
            .slots
            .lock()
            .remove(sprite_id)
            .map(|s| s.slot)
            .or_else(|| Self::recorded_slot(state_dir));
        let _ = std::fs::remove_file(Self::slot_file(state_dir));
        let Some(slot) = slot else {
            return;
        };
        let net = self.net.clone();
        match blocking("detach a sprite's network", move || net.detach(slot)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                slot,
                "network slot cleanup: {}",
                sprite_api::error_chain(&error)
            ),
            Err(error) => tracing::warn!(slot, "network slot cleanup: {error}"),
        }
        self.used.lock().remove(&slot);
    }

    /// Applies a new policy to a running sprite at once: its resolver answers by it,
    /// its egress is opened or restricted, and addresses no allowed name accounts for
    /// any more are revoked (cutting their connections).
    pub async fn set_policy(
        &self,
        sprite: &str,
        sprite_id: &str,
        policy: NetworkPolicy,
    ) -> Result<(), CoreError> {
        let (slot, revoked) = {
            let slots = self.slots.lock();
            let Some(state) = slots.get(sprite_id) else {
                return Ok(()); // not running: the policy applies at its next start
            };
            let revoked = state.admitted.lock().revoke_for(&policy, Instant::now());
            state.policy.send_replace(Arc::new(policy.clone()));
            (state.slot, revoked)
        };
        let net = self.net.clone();
        let egress = egress_of(&policy);
        blocking("apply a network policy", move || {
            net.set_egress(slot, egress)?;
            if !revoked.is_empty() {
                net.revoke(slot, &revoked)?;
            }
            Ok::<_, sprite_sandbox::SandboxError>(())
        })
        .await?
        .map_err(net_error(sprite))
    }

    /// Bytes a running sprite received and sent through its veth pair (since it was
    /// made: the counters start again at each start).
    pub fn traffic(&self, sprite_id: &str) -> Option<(u64, u64)> {
        let slot = self.slots.lock().get(sprite_id).map(|s| s.slot)?;
        let dir = std::path::Path::new("/sys/class/net")
            .join(self.net.plan().host_iface(slot))
            .join("statistics");
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        // The host end's transmit is what the sprite received.
        Some((read("tx_bytes")?, read("rx_bytes")?))
    }

    /// A running sprite's addresses.
    pub fn addresses(&self, sprite_id: &str) -> Option<SlotAddrs> {
        self.slots.lock().get(sprite_id).map(|s| s.addrs)
    }
}

/// Where a sprite can read its policy (API.md, Policy).
pub(crate) const POLICY_FILE: &str = "/.sprite/policy/network.json";

impl crate::SpriteManager {
    fn stored_policy(&self, sprite_id: &str) -> NetworkPolicy {
        stored_policy(&self.db, sprite_id)
    }

    /// Installs the daemon's network tables around the sprites that still run (after a
    /// daemon restart) and starts their resolvers again.
    pub(crate) async fn recover_network(&self) -> Result<(), CoreError> {
        let Some(network) = &self.lifecycle.network else {
            return Ok(());
        };
        let mut live = Vec::new();
        for record in self.db.all()? {
            let state_dir = self.lifecycle.state_dir(&record.id);
            let Some(slot) = Network::recorded_slot(&state_dir) else {
                continue;
            };
            let running = self
                .lifecycle
                .cgroup(&record.id)
                .ok()
                .and_then(|c| c.init_pid().ok().flatten())
                .is_some();
            if running {
                live.push((record.id.to_string(), slot, self.stored_policy(&record.id)));
            } else {
                let _ = std::fs::remove_file(state_dir.join(SLOT_FILE));
            }
        }
        network.install(live).await
    }

    /// `GET /v1/sprites/{name}/policy/network`.
    pub fn network_policy(&self, key: &SpriteKey) -> Result<NetworkPolicy, CoreError> {
        let record = self.record(key)?;
        Ok(self.stored_policy(&record.id))
    }

    /// `POST /v1/sprites/{name}/policy/network`: validated, stored, and applied at
    /// once when the sprite runs (else at its next start). Does not wake the sprite.
    pub async fn set_network_policy(
        &self,
        key: &SpriteKey,
        policy: NetworkPolicy,
    ) -> Result<NetworkPolicy, CoreError> {
        let record = self.record(key)?;
        policy.validate().map_err(|e| CoreError::InvalidValue {
            field: "policy",
            reason: sprite_api::error_chain(&e),
        })?;
        let json = serde_json::to_string(&policy).unwrap_or_default();
        self.db.set_network_policy(&record.id, &json)?;
        if let Some(network) = &self.lifecycle.network {
            network
                .set_policy(&record.name, &record.id, policy.clone())
                .await?;
            if network.addresses(&record.id).is_some() {
                self.lifecycle.write_network_files(&record, None, &policy);
            }
        }
        tracing::info!(sprite = %record.name, rules = policy.rules.len(), "network policy set");
        Ok(policy)
    }
}

/// A sprite's egress policy as stored (none when unset or unreadable, with a warning).
pub(crate) fn stored_policy(db: &crate::db::Database, sprite_id: &str) -> NetworkPolicy {
    match db.network_policy(sprite_id) {
        Ok(Some(json)) => serde_json::from_str(&json).unwrap_or_else(|error| {
            tracing::warn!(sprite = %sprite_id, "unreadable network policy, using none: {error}");
            NetworkPolicy::default()
        }),
        Ok(None) => NetworkPolicy::default(),
        Err(error) => {
            tracing::warn!(sprite = %sprite_id, "cannot read the network policy: {}", sprite_api::error_chain(&error));
            NetworkPolicy::default()
        }
    }
}
