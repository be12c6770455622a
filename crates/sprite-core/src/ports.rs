//! Which TCP ports a sprite listens on, and events when that changes: what
//! `WS .../ports/watch` and the exec sessions' `port_opened` / `port_closed` frames
//! report (API.md, "TCP proxy and ports").
//!
//! The listening sockets are read from the sprite's own network namespace (by
//! `NETLINK_SOCK_DIAG`, listening sockets only: see [`listening`]), and matched to the
//! process holding each by the socket inodes in the `fd` directories of the processes
//! of its cgroup; pids are given as the sprite sees them. One poller per sprite runs
//! while anyone subscribes, so a hundred watchers cost one scan every half second.

use crate::db::Database;
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::slots::Slots;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::broadcast;

/// How often a watched sprite's ports are read.
const POLL: Duration = Duration::from_millis(500);

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PortInfo {
    pub port: u16,
    pub address: String,
    /// The listening process, as the sprite sees it (0 when unknown).
    pub pid: u32,
}

/// A change of the listening set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortEvent {
    Opened(PortInfo),
    Closed(PortInfo),
}

/// One sprite's poller: its current ports and the channel its changes go out on.
#[derive(Debug)]
pub struct PortWatch {
    /// The last scan (`None` before the first).
    current: Mutex<Option<Vec<PortInfo>>>,
    sender: broadcast::Sender<PortEvent>,
}

/// A subscription to the changes of a sprite's ports. The poller runs for as long as
/// a subscription is alive.
#[derive(Debug)]
pub struct PortSubscription {
    events: broadcast::Receiver<PortEvent>,
    _watch: Arc<PortWatch>,
}

impl PortSubscription {
    /// The next change (`None` only if the channel closed, which a live subscription,
    /// holding the sender, never sees). A subscriber that fell behind
    /// skips what it missed.
    pub async fn recv(&mut self) -> Option<PortEvent> {
        loop {
            match self.events.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Parses `/proc/net/tcp` or `tcp6`: the listening sockets as (inode, port, address).
pub fn parse_proc_net(text: &str, v6: bool) -> Vec<(u64, u16, String)> {
    let mut found = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
        if fields.len() < 10 || fields[3] != "0A" {
            continue;
        }
        let Some((address, port)) = fields[1].split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), fields[9].parse::<u64>())
        else {
            continue;
        };
        let address = if v6 {
            match parse_v6(address) {
                Some(address) => match address.to_ipv4_mapped() {
                    Some(v4) => v4.to_string(),
                    None => address.to_string(),
                },
                None => continue,
            }
        } else {
            match u32::from_str_radix(address, 16) {
                // The kernel prints the address in host (little-endian) byte order.
                Ok(raw) => Ipv4Addr::from(raw.swap_bytes()).to_string(),
                Err(_) => continue,
            }
        };
        found.push((inode, port, address));
    }
    found
}

fn parse_v6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for word in 0..4 {
        let raw = u32::from_str_radix(&hex[word * 8..word * 8 + 8], 16).ok()?;
        bytes[word * 4..word * 4 + 4].copy_from_slice(&raw.swap_bytes().to_be_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

/// The pid a host process has inside the sprite's pid namespace (last `NSpid` field).
fn inner_pid(host_pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        .and_then(|id| id.parse().ok())
}

/// The listening TCP sockets of the sprite whose PID 1 is `init_pid`, with the
/// processes (`pids`, host pids of its cgroup) that hold them.
///
/// Asked of the kernel by `NETLINK_SOCK_DIAG` for listening sockets alone, which walks
/// only the listening hash; `/proc/<pid>/net/tcp`, read only if that fails (a kernel
/// without `inet_diag`), walks every TCP connection of the host.
pub fn listening(init_pid: u32, pids: &[i32]) -> Vec<PortInfo> {
    let sockets: Vec<(u64, u16, String)> =
        match sprite_sys::sockdiag::listeners_in_namespace_of(init_pid) {
            Ok(found) => found
                .into_iter()
                .map(|l| (l.inode, l.port, l.address.to_string()))
                .collect(),
            // The sprite stopped (its `/proc/<pid>/ns/net` is gone).
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(error) => {
                tracing::debug!(init_pid, "sock_diag: {error}; reading /proc/net/tcp");
                let mut sockets = Vec::new();
                for (file, v6) in [("tcp", false), ("tcp6", true)] {
                    if let Ok(text) =
                        std::fs::read_to_string(format!("/proc/{init_pid}/net/{file}"))
                    {
                        sockets.extend(parse_proc_net(&text, v6));
                    }
                }
                sockets
            }
        };
    if sockets.is_empty() {
        return Vec::new();
    }
    let wanted: HashMap<u64, usize> = sockets.iter().enumerate().map(|(i, s)| (s.0, i)).collect();
    let mut owners: HashMap<usize, u32> = HashMap::new();
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inode| inode.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(&index) = wanted.get(&inode) {
                owners
                    .entry(index)
                    .or_insert_with(|| inner_pid(pid).unwrap_or(0));
            }
        }
    }
    let mut ports: Vec<PortInfo> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (_, port, address))| PortInfo {
            port,
            address,
            pid: owners.get(&i).copied().unwrap_or(0),
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// The changes from `old` to `new` (both sorted).
pub fn diff(old: &[PortInfo], new: &[PortInfo]) -> Vec<PortEvent> {
    let key = |p: &PortInfo| (p.port, p.address.clone());
    let old_keys: std::collections::HashSet<_> = old.iter().map(key).collect();
    let new_keys: std::collections::HashSet<_> = new.iter().map(key).collect();
    let mut events: Vec<PortEvent> = old
        .iter()
        .filter(|p| !new_keys.contains(&key(p)))
        .map(|p| PortEvent::Closed(p.clone()))
        .collect();
    events.extend(
        new.iter()
            .filter(|p| !old_keys.contains(&key(p)))
            .map(|p| PortEvent::Opened(p.clone())),
    );
    events
}

/// Port watching, a component of its own: it reads sprites' records (to find a
/// sprite by its key) and keeps each sprite's poller in its slot.
#[derive(Debug)]
pub struct Ports {
    db: Arc<Database>,
    slots: Arc<Slots>,
}

impl Ports {
    pub(crate) fn new(db: Arc<Database>, slots: Arc<Slots>) -> Arc<Ports> {
        Arc::new(Ports { db, slots })
    }

    /// The listening ports of a sprite now (empty when it is cold).
    fn scan(&self, sprite_id: &str) -> Vec<PortInfo> {
        let Ok(cgroup) = crate::sandboxes::sprite_cgroup(sprite_id) else {
            return Vec::new();
        };
        let Ok(Some(init)) = cgroup.init_pid() else {
            return Vec::new();
        };
        let pids = cgroup.pids().unwrap_or_default();
        listening(init, &pids)
    }

    /// The listening ports of a sprite now (empty when it is cold). Does not wake it.
    pub async fn now(self: &Arc<Self>, key: &SpriteKey) -> Result<Vec<PortInfo>, CoreError> {
        let record = self.db.record(key)?;
        let ports = self.clone();
        tokio::task::spawn_blocking(move || ports.scan(&record.id))
            .await
            .map_err(|e| CoreError::Task("scan ports", e))
    }

    /// Subscribes to a sprite's port changes, starting its poller if none runs (its
    /// first scan is the baseline: ports already open are not reported as opened).
    /// Does not wake the sprite, nor keep it awake, and does not wait for a scan.
    pub fn watch(self: &Arc<Self>, key: &SpriteKey) -> Result<PortSubscription, CoreError> {
        let record = self.db.record(key)?;
        let id = record.id;
        let slot = self.slots.get(&id);
        let mut current = slot.port_watch.lock();
        let watch = match current.upgrade() {
            Some(watch) => watch,
            None => {
                let (sender, _) = broadcast::channel(64);
                let watch = Arc::new(PortWatch {
                    current: Mutex::new(None),
                    sender,
                });
                *current = Arc::downgrade(&watch);
                tokio::spawn(poll_ports(self.clone(), id, Arc::downgrade(&watch)));
                watch
            }
        };
        Ok(PortSubscription {
            events: watch.sender.subscribe(),
            _watch: watch,
        })
    }
}

async fn poll_ports(ports: Arc<Ports>, sprite_id: crate::ids::SpriteId, watch: Weak<PortWatch>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if watch.strong_count() == 0 {
            break;
        }
        let scanner = ports.clone();
        let id = sprite_id.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || scanner.scan(&id)).await else {
            break;
        };
        let Some(watch) = watch.upgrade() else {
            break;
        };
        let events = {
            let mut current = watch.current.lock();
            let events = current
                .as_ref()
                .map(|old| diff(old, &now))
                .unwrap_or_default();
            *current = Some(now);
            events
        };
        for event in events {
            let _ = watch.sender.send(event);
        }
    }
    // The slot's handle to this poller is now a dead `Weak`: the next watcher
    // replaces it, a destroy drops it with the slot.
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1388 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 555 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_sockets_are_read_from_proc() {
        assert_eq!(
            parse_proc_net(TCP, false),
            vec![
                (12345, 8080, "127.0.0.1".to_string()),
                (222, 22, "0.0.0.0".to_string())
            ]
        );
        assert_eq!(
            parse_proc_net(TCP6, true),
            vec![
                (444, 3000, "::1".to_string()),
                (555, 5000, "127.0.0.1".to_string())
            ]
        );
    }

    #[test]
    fn changes_are_opened_and_closed() {
        let port = |p: u16| PortInfo {
            port: p,
            address: "127.0.0.1".into(),
            pid: 7,
        };
        let events = diff(&[port(1), port(2)], &[port(2), port(3)]);
        assert_eq!(
            events,
            vec![PortEvent::Closed(port(1)), PortEvent::Opened(port(3))]
        );
        assert!(diff(&[port(1)], &[port(1)]).is_empty());
    }
}
