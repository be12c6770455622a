//! What a host knows of the cluster between two questions to etcd: the live hosts, the
//! owner of every sprite and the organization of every token, kept current by one watch
//! of the cluster's prefix (a full read first, then every change after that read's
//! revision; a broken watch reads everything again). Requests are routed with it
//! without asking etcd; changes (claims, take-overs) still go to etcd as transactions.

use crate::{read, ClusterError, Entry, HostInfo, Placement};
use etcd_client::{EventType, GetOptions, WatchOptions};
use parking_lot::RwLock;
use sprite_api::admin::{TokenGrant, TokenScope};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Snapshot {
    hosts: BTreeMap<String, HostInfo>,
    sprites: HashMap<(String, String), Entry>,
    /// BLAKE3 of a token (hex) → its organization and scope.
    tokens: HashMap<String, TokenGrant>,
}

/// A published token's grant: `{"org", "scope"}`, or (hosts before scopes) the bare
/// organization of a host's admin token.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Published {
    Grant(TokenGrant),
    Org(String),
}

/// A token as the directory keeps it: never the token itself.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

impl Snapshot {
    /// Applies one key (relative to the prefix): its value, or None when deleted.
    fn apply(&mut self, key: &str, value: Option<&[u8]>, revision: i64) {
        let mut parts = key.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("hosts"), Some(id), None) => {
                match value.map(|v| read::<HostInfo>(key.as_bytes(), v)) {
                    Some(Ok(host)) => {
                        self.hosts.insert(id.to_string(), host);
                    }
                    Some(Err(error)) => tracing::warn!("{error}"),
                    None => {
                        self.hosts.remove(id);
                    }
                }
            }
            (Some("sprites"), Some(org), Some(name)) => {
                let at = (org.to_string(), name.to_string());
                match value.map(|v| read::<Placement>(key.as_bytes(), v)) {
                    Some(Ok(placement)) => {
                        self.sprites.insert(
                            at,
                            Entry {
                                placement,
                                revision,
                            },
                        );
                    }
                    Some(Err(error)) => tracing::warn!("{error}"),
                    None => {
                        self.sprites.remove(&at);
                    }
                }
            }
            (Some("tokens"), Some(hash), None) => {
                match value.map(|v| read::<Published>(key.as_bytes(), v)) {
                    Some(Ok(published)) => {
                        let grant = match published {
                            Published::Grant(grant) => grant,
                            Published::Org(org) => TokenGrant {
                                org,
                                scope: TokenScope::Admin,
                            },
                        };
                        self.tokens.insert(hash.to_string(), grant);
                    }
                    Some(Err(error)) => tracing::warn!("{error}"),
                    None => {
                        self.tokens.remove(hash);
                    }
                }
            }
            _ => {}
        }
    }
}

/// This host's picture of the cluster (cheap to clone; every clone sees the same).
#[derive(Debug, Clone)]
pub struct View {
    snapshot: Arc<RwLock<Snapshot>>,
    loaded: watch::Receiver<bool>,
}

impl View {
    /// Who owns a sprite, as far as this host knows.
    pub fn owner(&self, org: &str, name: &str) -> Option<Entry> {
        self.snapshot
            .read()
            .sprites
            .get(&(org.to_string(), name.to_string()))
            .cloned()
    }

    /// Who owns the sprite named `name` in any organization (sprite URLs name no
    /// organization).
    pub fn owner_by_name(&self, name: &str) -> Option<Entry> {
        self.snapshot
            .read()
            .sprites
            .values()
            .find(|entry| entry.placement.name == name)
            .cloned()
    }

    /// The live hosts, by id.
    pub fn hosts(&self) -> Vec<HostInfo> {
        self.snapshot.read().hosts.values().cloned().collect()
    }

    pub fn host(&self, id: &str) -> Option<HostInfo> {
        self.snapshot.read().hosts.get(id).cloned()
    }

    /// The organization of a token any host of the cluster published.
    pub fn grant_of_token(&self, token: &str) -> Option<TokenGrant> {
        self.snapshot.read().tokens.get(&token_hash(token)).cloned()
    }

    /// Sprites whose owner is not a live host (its lease expired): to be claimed.
    pub fn orphans(&self) -> Vec<Entry> {
        let snapshot = self.snapshot.read();
        snapshot
            .sprites
            .values()
            .filter(|entry| !snapshot.hosts.contains_key(&entry.placement.owner))
            .cloned()
            .collect()
    }

    /// Sprites a host owns.
    pub fn sprites_of(&self, host: &str) -> Vec<Entry> {
        self.snapshot
            .read()
            .sprites
            .values()
            .filter(|entry| entry.placement.owner == host)
            .cloned()
            .collect()
    }

    /// Waits until the first full read is in (at most `limit`).
    pub async fn loaded(&self, limit: Duration) -> bool {
        let mut loaded = self.loaded.clone();
        tokio::time::timeout(limit, loaded.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Starts following the cluster's prefix; the task ends when the handle is aborted.
pub(crate) fn follow(
    client: etcd_client::Client,
    prefix: String,
) -> (View, tokio::task::JoinHandle<()>) {
    let snapshot = Arc::new(RwLock::new(Snapshot::default()));
    let (loaded_tx, loaded) = watch::channel(false);
    let view = View {
        snapshot: snapshot.clone(),
        loaded,
    };
    let task = tokio::spawn(async move {
        loop {
            if let Err(error) = sync_and_watch(client.clone(), &prefix, &snapshot, &loaded_tx).await
            {
                tracing::warn!(
                    "cluster view: {} (reading it again)",
                    sprite_api::error_chain(&error)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (view, task)
}

/// One full read, then the changes after it until the watch breaks.
async fn sync_and_watch(
    mut client: etcd_client::Client,
    prefix: &str,
    snapshot: &RwLock<Snapshot>,
    loaded: &watch::Sender<bool>,
) -> Result<(), ClusterError> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut fresh = Snapshot::default();
    for kv in response.kvs() {
        if let Some(key) = kv.key().strip_prefix(prefix.as_bytes()) {
            fresh.apply(
                &String::from_utf8_lossy(key),
                Some(kv.value()),
                kv.mod_revision(),
            );
        }
    }
    *snapshot.write() = fresh;
    let _ = loaded.send(true);
    let (_watcher, mut stream) = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    while let Some(response) = stream.message().await? {
        if response.canceled() {
            return Ok(());
        }
        let mut snapshot = snapshot.write();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(key) = kv.key().strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            let value = match event.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            };
            snapshot.apply(&String::from_utf8_lossy(key), value, kv.mod_revision());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_update_the_snapshot_and_deletes_remove() {
        let mut snapshot = Snapshot::default();
        let host = br#"{"id":"a","advertise":"http://a","capacity":{"free_memory_mb":1,"running":0,"warm":0,"cold":0}}"#;
        snapshot.apply("hosts/a", Some(host), 3);
        let placement = br#"{"org":"o","name":"s","owner":"a","epoch":2}"#;
        snapshot.apply("sprites/o/s", Some(placement), 7);
        snapshot.apply("tokens/abc", Some(br#""o""#), 8);
        snapshot.apply("sprites/o/bad", Some(b"{"), 9);
        snapshot.apply("elsewhere", Some(b"x"), 9);
        assert_eq!(snapshot.hosts.len(), 1);
        let entry = &snapshot.sprites[&("o".to_string(), "s".to_string())];
        assert_eq!((entry.placement.epoch, entry.revision), (2, 7));
        assert_eq!(snapshot.sprites.len(), 1, "a bad record is skipped");
        assert_eq!(snapshot.tokens["abc"].org, "o");
        assert_eq!(snapshot.tokens["abc"].scope, TokenScope::Admin);
        snapshot.apply(
            "tokens/def",
            Some(br#"{"org":"p","scope":"organization"}"#),
            9,
        );
        assert_eq!(snapshot.tokens["def"].scope, TokenScope::Organization);
        snapshot.apply("hosts/a", None, 10);
        snapshot.apply("sprites/o/s", None, 10);
        assert!(snapshot.hosts.is_empty() && snapshot.sprites.is_empty());
    }
}
