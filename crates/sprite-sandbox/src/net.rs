//! A sprite's network: one veth pair to the host per sprite, NAT to the outside, and
//! nftables rules that keep sprites away from the host and from each other.
//!
//! # Addresses
//!
//! The daemon's [`NetPlan`] subnet (say `10.231.0.0/16`) is carved into /30 blocks, one
//! per *slot*. Slot `s` (counted from 0; every slot is usable) owns
//! `base + 4s .. base + 4s + 3`: the host end of its veth, named `<iface_prefix><s>`
//! (`spv17`), has the gateway address `base + 4s + 1`, and the sprite's end, `eth0` in the
//! sprite's network namespace, has `base + 4s + 2` and a default route via the gateway.
//!
//! # Rules
//!
//! Everything lives in one nftables table, `inet <table>`, that the daemon owns:
//!
//! - `input` (filter, priority 0, policy accept) sends packets that come in on a sprite
//!   interface to `from_sprite`, which accepts replies (`ct state established,related`)
//!   and DNS (TCP or UDP port 53) to the slot's own gateway address only (the set
//!   `resolvers`, `ifname . ipv4_addr`, where the daemon runs one resolver per sprite),
//!   and drops the rest. A sprite cannot reach the daemon's API, ssh or any other service
//!   of the host, on any host address, over IPv4 or IPv6.
//! - `forward` (filter, priority 0, policy accept, so the host's other forwarding is left
//!   alone) drops sprite-to-sprite packets, lets into a sprite only replies to what the
//!   sprite started, drops everything but IPv4 from sprites and packets whose source is
//!   not the sprite's own address (`sources`; root in a sprite has `CAP_NET_RAW`), then
//!   sends a sprite's packets to `egress_open` if its interface is in the set `open`, or to
//!   `egress_restricted` if it is in `restricted`. A packet from a sprite interface in
//!   neither is dropped.
//! - `egress_open` accepts ([`Egress::Open`]) but the host's own networks and link-local
//!   addresses (unless [`NetPlan::local_egress`]); `egress_restricted` accepts only
//!   destinations in the set `allowed` (`ifname . ipv4_addr`, with timeouts) and rejects
//!   the rest, TCP with a reset ([`Egress::Restricted`]). They see every packet, not only
//!   new connections, so revoking an address cuts live connections: the sprite's next
//!   packet gets a reset.
//!
//! A slot owns no chain or rule, only set elements: attaching, detaching or changing a
//! sprite costs the same with one sprite on the host as with thousands (a chain or jump
//! per slot would make the kernel validate the whole table on every change).
//! - `postrouting` (nat, priority 100) masquerades what leaves the subnet on every
//!   interface that is not a sprite's.
//!
//! [`Net::install`] turns on IPv4 forwarding and (re)creates the table in one transaction;
//! [`Net::attach`] and [`Net::detach`] add and remove one slot's veth pair and elements.
//! Each change is one nftables script (run in process by libnftables), so it applies
//! atomically. Interfaces are matched by the
//! wildcard `<iface_prefix>*`, so the prefix must belong to this daemon alone; [`Net::install`]
//! refuses to run if a host interface starts with it but is not named like a slot.
//!
//! # A restarted daemon
//!
//! Sprites outlive the daemon, and so do their veth pairs. A restarted daemon calls
//! [`Net::install`] with the slots still alive and their egress policy: the new table is
//! built with their elements in the same transaction, and the addresses they were allowed
//! in the old table are carried over with the time they had left,
//! so neither their connectivity nor their allowed connections are interrupted.

use crate::SandboxError;
use sprite_sys::netlink::Rtnl;
use sprite_sys::nft::NftError;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Linux's interface name limit (IFNAMSIZ 16, minus the terminating NUL).
const MAX_INTERFACE_NAME: usize = 15;
/// The name of the sprite's end of its veth pair, inside its network namespace.
const SPRITE_INTERFACE: &str = "eth0";
/// nftables takes element timeouts up to `u32::MAX` milliseconds on older kernels.
const MAX_ALLOW_SECONDS: u64 = u32::MAX as u64 / 1000;
/// The block each slot gets: a /30, so four addresses.
const SLOT_PREFIX_LEN: u8 = 30;

/// How the daemon lays out sprite networking: the subnet its slots come from, the nftables
/// table it owns and the prefix of the host-side interface names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// Network address of the sprites' subnet, aligned to `prefix_len`.
    pub subnet: Ipv4Addr,
    /// Length of the subnet's prefix, 8 to 28.
    pub prefix_len: u8,
    /// Name of the `inet` nftables table the daemon owns (letters, digits, `_`).
    pub table: String,
    /// Prefix of the host-side interface names: slot 17 is `<iface_prefix>17`.
    pub iface_prefix: String,
    /// Whether sprites with open egress may reach link-local addresses (169.254.0.0/16,
    /// where clouds serve instance metadata) and the networks the host is connected to
    /// (its LAN). Off by default: `egress_private = "allow"` turns it on.
    pub local_egress: bool,
}

/// The addresses of one slot's veth pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAddrs {
    /// The host's end: the sprite's default gateway and DNS resolver.
    pub gateway: Ipv4Addr,
    /// The sprite's end (`eth0` in its network namespace).
    pub sprite: Ipv4Addr,
    /// Prefix length of the pair's link, always 30.
    pub prefix_len: u8,
}

/// What a sprite may reach beyond the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// Any address (through NAT).
    Open,
    /// Only the addresses in the slot's allow set ([`Net::allow`]); other connections are
    /// refused at once (TCP reset, ICMP unreachable otherwise).
    Restricted,
}

impl NetPlan {
    /// Parses `cidr` (like `10.231.0.0/16`) and checks the names: the prefix must be 8 to
    /// 28 bits and the address the network's own, `table` must be letters, digits or `_`
    /// starting with a letter, and `iface_prefix` letters, digits or `_` short enough that
    /// the name of the last slot's interface fits in 15 characters.
    pub fn new(cidr: &str, table: &str, iface_prefix: &str) -> Result<NetPlan, SandboxError> {
        let invalid = |reason: String| SandboxError::NetworkPlan {
            plan: format!("{cidr} {table} {iface_prefix}"),
            reason,
        };
        let (address, prefix_len) = cidr
            .split_once('/')
            .ok_or_else(|| invalid(format!("subnet {cidr:?} is not address/prefix")))?;
        let subnet: Ipv4Addr = address
            .parse()
            .map_err(|_| invalid(format!("{address:?} is not an IPv4 address")))?;
        let prefix_len: u8 = prefix_len
            .parse()
            .map_err(|_| invalid(format!("{prefix_len:?} is not a prefix length")))?;
        if !(8..=28).contains(&prefix_len) {
            return Err(invalid(format!(
                "prefix length {prefix_len} is not between 8 and 28"
            )));
        }
        let host_bits = u32::MAX >> prefix_len;
        if u32::from(subnet) & host_bits != 0 {
            let network = Ipv4Addr::from(u32::from(subnet) & !host_bits);
            return Err(invalid(format!(
                "{subnet} is not the network address of /{prefix_len} (that is {network})"
            )));
        }
        let name_chars = |name: &str| {
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !name_chars(table) || !table.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(invalid(format!(
                "table name {table:?} must be lowercase letters, digits or _, starting with a letter"
            )));
        }
        if iface_prefix.is_empty() || !name_chars(iface_prefix) {
            return Err(invalid(format!(
                "interface prefix {iface_prefix:?} must be lowercase letters, digits or _"
            )));
        }
        let plan = NetPlan {
            subnet,
            prefix_len,
            table: table.to_string(),
            iface_prefix: iface_prefix.to_string(),
            local_egress: false,
        };
        let longest = plan.host_iface(plan.max_slots() - 1);
        if longest.len() > MAX_INTERFACE_NAME {
            return Err(invalid(format!(
                "interface prefix {iface_prefix:?} is too long: the last slot's interface \
                 {longest} has more than {MAX_INTERFACE_NAME} characters"
            )));
        }
        Ok(plan)
    }

    /// How many slots (sprites) the subnet holds: one per /30, slots `0..max_slots()`, all
    /// usable. Zero only for a hand-built plan whose prefix is longer than 30 bits.
    pub fn max_slots(&self) -> u32 {
        SLOT_PREFIX_LEN
            .checked_sub(self.prefix_len)
            .and_then(|bits| 1u32.checked_shl(u32::from(bits)))
            .unwrap_or(0)
    }

    /// The addresses of `slot`, or `None` if the subnet has no such slot.
    pub fn addresses(&self, slot: u32) -> Option<SlotAddrs> {
        if slot >= self.max_slots() {
            return None;
        }
        let block = u32::from(self.subnet).checked_add(slot.checked_mul(4)?)?;
        Some(SlotAddrs {
            gateway: Ipv4Addr::from(block.checked_add(1)?),
            sprite: Ipv4Addr::from(block.checked_add(2)?),
            prefix_len: SLOT_PREFIX_LEN,
        })
    }

    /// The name of the host's end of `slot`'s veth pair: `<iface_prefix><slot>`.
    pub fn host_iface(&self, slot: u32) -> String {
        format!("{}{slot}", self.iface_prefix)
    }

    /// The slot's addresses, or an error naming the slot.
    fn slot(&self, slot: u32) -> Result<SlotAddrs, SandboxError> {
        self.addresses(slot).ok_or(SandboxError::NetworkSlot {
            slot,
            max_slots: self.max_slots(),
        })
    }

    /// Whether `name` is an interface name this plan gives a slot.
    fn is_slot_iface(&self, name: &str) -> bool {
        name.strip_prefix(&self.iface_prefix)
            .and_then(|rest| rest.parse::<u32>().ok())
            .is_some_and(|slot| slot < self.max_slots() && self.host_iface(slot) == name)
    }
}

impl Net {
    /// Turns on IPv4 forwarding and (re)creates the daemon's nftables table (see the module
    /// documentation) in one transaction. `live` lists the slots whose sprites are still
    /// running (from a previous daemon) with their egress policy: their chains, sets and map
    /// entries are part of the new table, and the addresses their allow sets held in the old
    /// table are kept with the time they had left. Their veth pairs are not touched. A slot
    /// left out gets nothing through until it is attached again; [`Net::detach`] it to remove its
    /// interface if that is still there.
    ///
    /// Fails if a host interface starts with the plan's interface prefix but is not named like
    /// one of its slots: the rules match the prefix as a wildcard.
    pub fn install(&self, live: &[(u32, Egress)]) -> Result<(), SandboxError> {
        let plan = &self.plan;
        check_interfaces(&*self.host, plan)?;
        let mut slots = Vec::with_capacity(live.len());
        for &(slot, egress) in live {
            slots.push((slot, plan.slot(slot)?, egress));
        }
        self.host
            .enable_forwarding()
            .map_err(SandboxError::IpForwarding)?;
        let kept = if slots.is_empty() {
            Vec::new()
        } else {
            self.allowed_in_old_table()
        };
        let mut script = table_script(plan);
        for &(slot, addrs, egress) in &slots {
            script.push_str(&slot_script(plan, slot, addrs, egress));
            let elements: Vec<String> = kept
                .iter()
                .filter(|element| element.slot == slot)
                .map(|element| {
                    let key = format!("\"{}\" . {}", plan.host_iface(slot), element.address);
                    match element.seconds_left {
                        Some(seconds) => format!("{key} timeout {seconds}s"),
                        None => key,
                    }
                })
                .collect();
            if !elements.is_empty() {
                let _ = writeln!(
                    script,
                    "add element inet {} allowed {{ {} }}",
                    plan.table,
                    elements.join(", ")
                );
            }
        }
        self.firewall(&script, || format!("create table inet {}", plan.table))
    }

    /// Deletes the daemon's nftables table, and with it every slot's rules; fine if it is
    /// absent. Leaves IPv4 forwarding on (other software may rely on it) and the veth pairs
    /// alone (they vanish with their sprites).
    pub fn uninstall(&self) -> Result<(), SandboxError> {
        let plan = &self.plan;
        let table = &plan.table;
        self.firewall(
            &format!("add table inet {table}\ndelete table inet {table}\n"),
            || format!("delete table inet {table}"),
        )
    }

    /// Gives the sprite whose PID 1 has host pid `init_pid` its network: the slot's
    /// nftables objects with `egress` and an empty allow set, then a veth pair whose host
    /// end is [`NetPlan::host_iface`] (a stale interface of that name is deleted first) and
    /// whose other end is created as `eth0` in the sprite's network namespace, the slot's
    /// addresses, a default route via the gateway, loopback up.
    ///
    /// Rules first: the sprite's egress is in force before its first packet can leave (and
    /// until a slot's rules land, the table drops whatever comes from its interface).
    /// No process is started (netlink and libnftables). If a step fails, what was done is
    /// undone. The host refuses a process in the daemon's own network namespace (a stale
    /// pid, say), whose `eth0` would otherwise be the host's.
    pub fn attach(
        &self,
        slot: u32,
        init_pid: u32,
        egress: Egress,
    ) -> Result<SlotAddrs, SandboxError> {
        let plan = &self.plan;
        let addrs = plan.slot(slot)?;
        let host = plan.host_iface(slot);
        let step = || format!("add slot {slot} to table inet {}", plan.table);
        // A new sprite in the slot does not inherit what the previous one was allowed
        // (detach removes it; this is for a detach that failed).
        let result = self
            .clear_allowed_script(slot, step)
            .and_then(|clear| {
                let script = slot_script(plan, slot, addrs, egress) + &clear;
                self.firewall(&script, step)
            })
            .and_then(|()| {
                self.host
                    .create_links(&host, init_pid, addrs)
                    .map_err(|source| match source {
                        LinkError::SameNamespace => SandboxError::SharedNetworkNamespace(init_pid),
                        LinkError::Step { step, source } => SandboxError::Link {
                            step: format!("{step} (veth {host} to the sprite of pid {init_pid})"),
                            source,
                        },
                    })
            });
        if let Err(error) = result {
            if let Err(undo) = self.detach(slot) {
                tracing::warn!(slot, error = %undo, "could not undo a failed attach");
            }
            return Err(error);
        }
        Ok(addrs)
    }

    /// Removes `slot`'s nftables objects and the host end of its veth pair, and forgets the
    /// connections the sprite started (so a later sprite in the slot receives no packet of
    /// them). Whatever is already gone (the pair vanishes by itself with the sprite's
    /// network namespace; the table may not exist) is fine. Detach a slot before reusing it.
    pub fn detach(&self, slot: u32) -> Result<(), SandboxError> {
        let plan = &self.plan;
        let addrs = plan.slot(slot)?;
        let table = &plan.table;
        let host = plan.host_iface(slot);
        // Adding each object first makes deleting it succeed whether it existed or not, all in
        // one transaction; only the table itself must exist.
        let step = || format!("remove slot {slot} from table inet {table}");
        let rules = self.clear_allowed_script(slot, step).and_then(|clear| {
            let script = format!(
                "add element inet {table} open {{ \"{host}\" }}\n\
                 add element inet {table} restricted {{ \"{host}\" }}\n\
                 add element inet {table} resolvers {{ \"{host}\" . {gateway} }}\n\
                 add element inet {table} sources {{ \"{host}\" . {sprite} }}\n\
                 delete element inet {table} open {{ \"{host}\" }}\n\
                 delete element inet {table} restricted {{ \"{host}\" }}\n\
                 delete element inet {table} resolvers {{ \"{host}\" . {gateway} }}\n\
                 delete element inet {table} sources {{ \"{host}\" . {sprite} }}\n\
                 {clear}",
                gateway = addrs.gateway,
                sprite = addrs.sprite
            );
            self.firewall(&script, step)
        });
        let rules = match rules {
            Err(SandboxError::Firewall { source, .. }) if is_missing(&source.message()) => Ok(()),
            other => other,
        };
        let link = self
            .host
            .delete_link(&host)
            .map_err(|source| SandboxError::Link {
                step: format!("delete interface {host}"),
                source,
            });
        let forgotten = self.host.forget_connections(addrs.sprite, None);
        rules.and(link).and(forgotten)
    }

    /// Sets what `slot`'s sprite may reach (see [`Egress`]) in one transaction. The allowed
    /// addresses are kept either way.
    pub fn set_egress(&self, slot: u32, egress: Egress) -> Result<(), SandboxError> {
        let plan = &self.plan;
        plan.slot(slot)?;
        let script = egress_elements(plan, slot, egress);
        self.firewall(&script, || {
            format!("set egress of slot {slot} to {egress:?}")
        })
    }

    /// Lets `slot`'s sprite reach each address for its duration (at least 1 s, at most about
    /// 49 days) when its egress is [`Egress::Restricted`]. Adding an address already there
    /// restarts its timeout.
    pub fn allow(&self, slot: u32, addrs: &[(Ipv4Addr, Duration)]) -> Result<(), SandboxError> {
        self.allow_many(&[(slot, addrs.to_vec())])
    }

    /// [`Net::allow`] for several slots in one nftables transaction (one for a whole batch of
    /// DNS answers, however many sprites they came from).
    pub fn allow_many(
        &self,
        batch: &[(u32, Vec<(Ipv4Addr, Duration)>)],
    ) -> Result<(), SandboxError> {
        let plan = &self.plan;
        let mut script = String::new();
        for (slot, addrs) in batch {
            plan.slot(*slot)?;
            let set = format!("inet {} allowed", plan.table);
            let host = plan.host_iface(*slot);
            for &(address, duration) in addrs {
                let seconds = allow_seconds(duration);
                // Older kernels keep an existing element's timeout on `add`; deleting and
                // adding it again in the same transaction restarts it everywhere.
                let _ = writeln!(
                    script,
                    "add element {set} {{ \"{host}\" . {address} timeout {seconds}s }}\n\
                     delete element {set} {{ \"{host}\" . {address} }}\n\
                     add element {set} {{ \"{host}\" . {address} timeout {seconds}s }}"
                );
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        self.firewall(&script, || {
            format!("allow addresses for {} slots", batch.len())
        })
    }

    /// Takes addresses out of `slot`'s allow set (absent ones are fine) and deletes the
    /// connection-tracking entries from the sprite to them, so a restricted sprite's live
    /// connections to them end at its next packet. Skips the latter if `conntrack` is not
    /// installed.
    pub fn revoke(&self, slot: u32, addrs: &[Ipv4Addr]) -> Result<(), SandboxError> {
        let plan = &self.plan;
        let slot_addrs = plan.slot(slot)?;
        if addrs.is_empty() {
            return Ok(());
        }
        let set = format!("inet {} allowed", plan.table);
        let host = plan.host_iface(slot);
        let mut script = String::new();
        for address in addrs {
            let _ = writeln!(
                script,
                "add element {set} {{ \"{host}\" . {address} timeout 1s }}\n\
                 delete element {set} {{ \"{host}\" . {address} }}"
            );
        }
        self.firewall(&script, || format!("revoke addresses of slot {slot}"))?;
        for address in addrs {
            self.host
                .forget_connections(slot_addrs.sprite, Some(*address))?;
        }
        Ok(())
    }

    /// Forgets every address `slot`'s sprite was allowed. Live connections are cut at their
    /// next packet if the slot's egress is [`Egress::Restricted`] (their conntrack entries
    /// stay until they time out).
    pub fn clear_allowed(&self, slot: u32) -> Result<(), SandboxError> {
        self.plan.slot(slot)?;
        let step = || format!("clear allowed addresses of slot {slot}");
        let script = self.clear_allowed_script(slot, step)?;
        if script.is_empty() {
            return Ok(());
        }
        self.firewall(&script, step)
    }

    /// The commands that delete `slot`'s allowed addresses (read from the `allowed` set:
    /// its size is what the restricted sprites were allowed, not the number of sprites).
    fn clear_allowed_script(
        &self,
        slot: u32,
        step: impl Fn() -> String,
    ) -> Result<String, SandboxError> {
        let what = format!("set inet {} allowed", self.plan.table);
        let listing = match self.host.firewall_listing(&what) {
            Ok(listing) => listing,
            Err(error) if is_missing(&error.message()) => return Ok(String::new()),
            Err(source) => {
                return Err(SandboxError::Firewall {
                    step: step(),
                    source,
                })
            }
        };
        let listing = serde_json::from_str(&listing).unwrap_or(serde_json::Value::Null);
        Ok(clear_allowed_script(&self.plan, slot, &listing))
    }
}

/// Whether a failed `conntrack -D` only means there was nothing to delete (exit status 1,
/// "0 flow entries have been deleted") or that conntrack is not installed.
fn conntrack_harmless(error: &SandboxError) -> bool {
    match error {
        SandboxError::NetworkCommand { stderr, .. } => stderr.contains("0 flow entries"),
        SandboxError::NetworkSpawn { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// The script that replaces the table with a fresh one holding the shared objects.
fn table_script(plan: &NetPlan) -> String {
    let NetPlan {
        subnet,
        prefix_len,
        table,
        iface_prefix,
        ..
    } = plan;
    let sprites = format!("\"{iface_prefix}*\"");
    let mut local: Vec<String> = LOCAL_NETWORKS.iter().map(|n| n.to_string()).collect();
    local.extend(connected_networks(iface_prefix));
    let local = local.join(", ");
    let open_rules = if plan.local_egress {
        String::new()
    } else {
        "        ip daddr @local_networks meta l4proto tcp reject with tcp reset\n        \
         ip daddr @local_networks reject\n"
            .to_string()
    };
    format!(
        "add table inet {table}
delete table inet {table}
table inet {table} {{
    set resolvers {{
        type ifname . ipv4_addr
    }}
    set sources {{
        type ifname . ipv4_addr
    }}
    set local_networks {{
        type ipv4_addr
        flags interval
        auto-merge
        elements = {{ {local} }}
    }}
    set open {{
        type ifname
    }}
    set restricted {{
        type ifname
    }}
    set allowed {{
        type ifname . ipv4_addr
        flags timeout
    }}
    chain from_sprite {{
        meta nfproto != ipv4 drop
        iifname . ip saddr != @sources drop
        ct state established,related accept
        iifname . ip daddr @resolvers meta l4proto {{ tcp, udp }} th dport 53 accept
        drop
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname {sprites} jump from_sprite
    }}
    chain egress_open {{
{open_rules}        accept
    }}
    chain egress_restricted {{
        iifname . ip daddr @allowed accept
        meta l4proto tcp reject with tcp reset
        reject
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        iifname {sprites} oifname {sprites} drop
        oifname {sprites} ct state established,related accept
        oifname {sprites} drop
        iifname {sprites} meta nfproto != ipv4 drop
        iifname {sprites} iifname . ip saddr != @sources drop
        iifname @open jump egress_open
        iifname @restricted jump egress_restricted
        iifname {sprites} drop
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        ip saddr {subnet}/{prefix_len} ip daddr != {subnet}/{prefix_len} oifname != {sprites} masquerade
    }}
}}
"
    )
}

/// The commands that give one slot its source and resolver elements and its egress.
/// Nothing of a slot is a chain of its own: every change is set elements, so a
/// transaction costs the same with one sprite as with thousands (a chain or jump would
/// make the kernel validate the whole table).
fn slot_script(plan: &NetPlan, slot: u32, addrs: SlotAddrs, egress: Egress) -> String {
    let table = &plan.table;
    let host = plan.host_iface(slot);
    let mut script = format!(
        "add element inet {table} resolvers {{ \"{host}\" . {} }}\n\
         add element inet {table} sources {{ \"{host}\" . {} }}\n",
        addrs.gateway, addrs.sprite
    );
    script.push_str(&egress_elements(plan, slot, egress));
    script
}

/// Puts `slot`'s interface in the set of its egress and out of the other, in one
/// transaction (adding before deleting makes the delete succeed either way).
fn egress_elements(plan: &NetPlan, slot: u32, egress: Egress) -> String {
    let table = &plan.table;
    let host = plan.host_iface(slot);
    let (into, out_of) = match egress {
        Egress::Open => ("open", "restricted"),
        Egress::Restricted => ("restricted", "open"),
    };
    format!(
        "add element inet {table} {out_of} {{ \"{host}\" }}\n\
         delete element inet {table} {out_of} {{ \"{host}\" }}\n\
         add element inet {table} {into} {{ \"{host}\" }}\n"
    )
}

/// The commands that delete `slot`'s elements of the `allowed` set, as listed in
/// `listing` (`nft -j list set` output); empty if it has none.
fn clear_allowed_script(plan: &NetPlan, slot: u32, listing: &serde_json::Value) -> String {
    let host = plan.host_iface(slot);
    let mut script = String::new();
    for element in allowed_in_listing(plan, listing)
        .into_iter()
        .filter(|element| element.slot == slot)
    {
        let _ = writeln!(
            script,
            "delete element inet {} allowed {{ \"{host}\" . {} }}",
            plan.table, element.address
        );
    }
    script
}

/// Where a sprite with open egress never goes (unless [`NetPlan::local_egress`]): "this
/// network", link-local (cloud instance metadata at 169.254.169.254), multicast and the
/// reserved block; the host's connected networks are added at [`Net::install`].
pub const LOCAL_NETWORKS: [&str; 4] = ["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"];

/// The IPv4 networks the host is directly connected to (its routes without a gateway,
/// from /proc/net/route), but its loopback and the sprites' own links.
fn connected_networks(iface_prefix: &str) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    parse_connected_networks(&table, iface_prefix)
}

fn parse_connected_networks(table: &str, iface_prefix: &str) -> Vec<String> {
    let mut networks = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [iface, destination, gateway, _, _, _, _, mask, ..] = fields.as_slice() else {
            continue;
        };
        if *iface == "lo" || iface.starts_with(iface_prefix) || *gateway != "00000000" {
            continue;
        }
        // Little-endian hex, as the kernel prints them.
        let parse = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::swap_bytes);
        let (Some(destination), Some(mask)) = (parse(destination), parse(mask)) else {
            continue;
        };
        if mask == 0 || mask.leading_ones() + mask.trailing_zeros() != 32 {
            continue;
        }
        let network = format!(
            "{}/{}",
            Ipv4Addr::from(destination & mask),
            mask.leading_ones()
        );
        if !networks.contains(&network) {
            networks.push(network);
        }
    }
    networks
}

/// An element of a slot's allow set found in the old table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeptElement {
    slot: u32,
    address: Ipv4Addr,
    /// Whole seconds before it expires (at least 1), or `None` if it never does.
    seconds_left: Option<u64>,
}

/// The allow-set elements of the table as it is now: none if there is no table, and none
/// with a warning if it cannot be read (nft without JSON support, say).
fn allowed_in_old_table(host: &dyn NetHost, plan: &NetPlan) -> Vec<KeptElement> {
    let table = format!("table inet {}", plan.table);
    let listing = match host.firewall_listing(&table) {
        Ok(listing) => listing,
        Err(error) if is_missing(&error.message()) => return Vec::new(),
        Err(error) => {
            tracing::warn!(%table, error = %error, "allowed addresses of live sprites not kept");
            return Vec::new();
        }
    };
    match serde_json::from_str(&listing) {
        Ok(listing) => allowed_in_listing(plan, &listing),
        Err(error) => {
            tracing::warn!(%table, %error, "unreadable nft listing; allowed addresses not kept");
            Vec::new()
        }
    }
}

/// The allowed addresses of each slot in `nft -j list` output (of the table or the set).
fn allowed_in_listing(plan: &NetPlan, listing: &serde_json::Value) -> Vec<KeptElement> {
    let items = listing
        .get("nftables")
        .and_then(|items| items.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let slot_of_iface = |name: &str| {
        plan.is_slot_iface(name)
            .then(|| name.strip_prefix(&plan.iface_prefix)?.parse::<u32>().ok())
            .flatten()
    };
    let mut kept = Vec::new();
    for set in items.iter().filter_map(|item| item.get("set")) {
        let name = set.get("name").and_then(|name| name.as_str()).unwrap_or("");
        // `allowed` (interface . address) now; `allow_<slot>` (address) in tables made
        // before sprites' rules became set elements only.
        let old_slot = name
            .strip_prefix("allow_")
            .and_then(|slot| slot.parse::<u32>().ok());
        if name != "allowed" && old_slot.is_none() {
            continue;
        }
        let elements = set
            .get("elem")
            .and_then(|elements| elements.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for element in elements {
            // A plain value, or {"elem": {"val": ..., "timeout": s, "expires": s}}.
            let (value, seconds_left) = match element.get("elem") {
                Some(inner) => (
                    inner.get("val"),
                    inner
                        .get("expires")
                        .or_else(|| inner.get("timeout"))
                        .and_then(|seconds| seconds.as_u64())
                        .map(|seconds| seconds.clamp(1, MAX_ALLOW_SECONDS)),
                ),
                None => (Some(element), None),
            };
            let Some(value) = value else { continue };
            let (slot, address) = match old_slot {
                Some(slot) => (Some(slot), value.as_str()),
                None => {
                    let pair = value
                        .get("concat")
                        .and_then(|pair| pair.as_array())
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    match pair {
                        [iface, address] => {
                            (iface.as_str().and_then(slot_of_iface), address.as_str())
                        }
                        _ => (None, None),
                    }
                }
            };
            if let (Some(slot), Some(Ok(address))) = (slot, address.map(str::parse)) {
                kept.push(KeptElement {
                    slot,
                    address,
                    seconds_left,
                });
            }
        }
    }
    kept
}

/// A duration in whole seconds as nft takes it: at least 1, at most [`MAX_ALLOW_SECONDS`].
fn allow_seconds(duration: Duration) -> u64 {
    let rounded_up = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    rounded_up.clamp(1, MAX_ALLOW_SECONDS)
}

/// Refuses a plan whose interface prefix matches a host interface that is not a slot's.
fn check_interfaces(host: &dyn NetHost, plan: &NetPlan) -> Result<(), SandboxError> {
    for name in host.interfaces().map_err(SandboxError::ListInterfaces)? {
        if name.starts_with(&plan.iface_prefix) && !plan.is_slot_iface(&name) {
            return Err(SandboxError::ForeignInterface {
                interface: name,
                prefix: plan.iface_prefix.clone(),
            });
        }
    }
    Ok(())
}

/// Whether nft's error says an object (like the table) does not exist.
fn is_missing(message: &str) -> bool {
    message.contains("No such file or directory")
}

/// Why [`NetHost::create_links`] failed.
#[derive(Debug)]
pub enum LinkError {
    /// The process is in the host's own network namespace.
    SameNamespace,
    /// A netlink step failed.
    Step {
        step: &'static str,
        source: std::io::Error,
    },
}

/// What sprite networking changes on the host: the seam between the rules and order of
/// [`Net`] and the kernel, so both are tested without root ([`RecordingNetHost`]).
pub trait NetHost: Send + Sync + std::fmt::Debug {
    /// Applies an nftables script as one transaction.
    fn firewall(&self, script: &str) -> Result<(), NftError>;
    /// `what` (like `table inet sprites` or `set inet sprites allowed`) as `nft -j list`
    /// prints it.
    fn firewall_listing(&self, what: &str) -> Result<String, NftError>;
    /// Makes the veth pair of a slot: `host` here with the gateway address, up; `eth0` in
    /// the network namespace of process `pid` with the sprite's address, up, its loopback
    /// up and a default route via the gateway. A stale `host` link is replaced.
    fn create_links(&self, host: &str, pid: u32, addrs: SlotAddrs) -> Result<(), LinkError>;
    /// Deletes link `host`; fine if it is gone.
    fn delete_link(&self, host: &str) -> std::io::Result<()>;
    /// Forgets the tracked connections from `source` (to `destination` only, if given).
    fn forget_connections(
        &self,
        source: Ipv4Addr,
        destination: Option<Ipv4Addr>,
    ) -> Result<(), SandboxError>;
    /// The names of the host's network interfaces.
    fn interfaces(&self) -> std::io::Result<Vec<String>>;
    /// Turns IPv4 forwarding on.
    fn enable_forwarding(&self) -> std::io::Result<()>;
}

/// The host itself: rtnetlink for links, libnftables for rules (both in process), and
/// `conntrack` for forgetting connections (on stop and revoke only).
#[derive(Debug)]
pub struct SystemNetHost {
    nft: sprite_sys::nft::Nft,
    rtnl: parking_lot::Mutex<Option<Rtnl>>,
}

impl SystemNetHost {
    pub fn new() -> SystemNetHost {
        SystemNetHost {
            nft: sprite_sys::nft::Nft::new(),
            rtnl: parking_lot::Mutex::new(None),
        }
    }

    /// Runs `f` on the host's netlink socket (opened once, kept).
    fn with_rtnl<T>(&self, f: impl FnOnce(&mut Rtnl) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut rtnl = self.rtnl.lock();
        if rtnl.is_none() {
            *rtnl = Some(Rtnl::open()?);
        }
        match rtnl.as_mut() {
            Some(rtnl) => f(rtnl),
            None => Err(std::io::Error::other("no netlink socket")),
        }
    }
}

/// Turns IPv6 off on a host end before it comes up: sprites speak IPv4 only (the
/// forward chain drops the rest), and an IPv6 link-local route per sprite interface
/// would make every route change and lookup in the host's IPv6 table walk all of them
/// (the kernel keeps one list of `fe80::/64` routes across interfaces). A host without
/// IPv6 has no such setting: nothing to do.
fn disable_ipv6(interface: &str) -> std::io::Result<()> {
    let setting = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
    match std::fs::write(&setting, "1") {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Default for SystemNetHost {
    fn default() -> Self {
        SystemNetHost::new()
    }
}

impl NetHost for SystemNetHost {
    fn firewall(&self, script: &str) -> Result<(), NftError> {
        self.nft.run(script).map(drop)
    }

    fn firewall_listing(&self, what: &str) -> Result<String, NftError> {
        self.nft.run_json(&format!("list {what}"))
    }

    fn create_links(&self, host: &str, pid: u32, addrs: SlotAddrs) -> Result<(), LinkError> {
        let step = |step: &'static str| move |source| LinkError::Step { step, source };
        if !separate_namespace(pid).map_err(step("read the network namespace"))? {
            return Err(LinkError::SameNamespace);
        }
        self.with_rtnl(|rtnl| {
            rtnl.delete_link(host)?;
            rtnl.add_veth(host, SPRITE_INTERFACE, pid)?;
            let index = rtnl.link_index(host)?;
            disable_ipv6(host)?;
            rtnl.add_address(index, addrs.gateway, addrs.prefix_len)?;
            rtnl.set_up(index)
        })
        .map_err(step("create the host end"))?;
        let mut inside = Rtnl::in_namespace_of(pid).map_err(step("enter the sprite's network"))?;
        let configured = (|| {
            let lo = inside.link_index("lo")?;
            inside.set_up(lo)?;
            let eth0 = inside.link_index(SPRITE_INTERFACE)?;
            inside.add_address(eth0, addrs.sprite, addrs.prefix_len)?;
            inside.set_up(eth0)?;
            inside.add_default_route(addrs.gateway, eth0)
        })();
        configured.map_err(step("configure eth0 in the sprite"))
    }

    fn delete_link(&self, host: &str) -> std::io::Result<()> {
        self.with_rtnl(|rtnl| rtnl.delete_link(host))
    }

    fn forget_connections(
        &self,
        source: Ipv4Addr,
        destination: Option<Ipv4Addr>,
    ) -> Result<(), SandboxError> {
        let source = source.to_string();
        let destination = destination.map(|d| d.to_string());
        let mut command = vec!["conntrack", "-D", "-s", &source];
        if let Some(destination) = &destination {
            command.extend(["-d", destination]);
        }
        match run(&command, || {
            format!("forget tracked connections from {source}")
        }) {
            Err(error) if conntrack_harmless(&error) => Ok(()),
            other => other,
        }
    }

    fn interfaces(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir("/sys/class/net")? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn enable_forwarding(&self) -> std::io::Result<()> {
        const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
        // Writing it, even the same value, resets other per-interface settings; only if
        // needed.
        if std::fs::read_to_string(PATH)?.trim() != "1" {
            std::fs::write(PATH, "1")?;
        }
        Ok(())
    }
}

/// Whether process `pid` has a network namespace other than this process's.
fn separate_namespace(pid: u32) -> std::io::Result<bool> {
    Ok(std::fs::read_link(format!("/proc/{pid}/ns/net"))?
        != std::fs::read_link("/proc/self/ns/net")?)
}

/// Runs `command`; a failure carries `step` and, if the command ran, its stderr.
fn run(command: &[&str], step: impl Fn() -> String) -> Result<(), SandboxError> {
    let (program, args) = command.split_first().unwrap_or((&"true", &[]));
    let output = Command::new(sprite_sys::tools::find(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SandboxError::NetworkSpawn {
            step: step(),
            command: command.join(" "),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(SandboxError::NetworkCommand {
            step: step(),
            command: command.join(" "),
            stderr: if stderr.is_empty() {
                format!("exited with {}", output.status)
            } else {
                stderr
            },
        });
    }
    Ok(())
}

/// A [`NetHost`] that changes nothing and records every call, in order, as a line
/// (`firewall <script>`, `links <host> <pid>`, `delete <host>`, `forget <source>`), for
/// tests of what [`Net`] does and in which order. `fail_on` makes the first call whose
/// line starts with it fail.
#[derive(Debug, Default)]
pub struct RecordingNetHost {
    calls: parking_lot::Mutex<Vec<String>>,
    fail_on: parking_lot::Mutex<Option<String>>,
}

impl RecordingNetHost {
    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }

    /// Makes the next call whose line starts with `prefix` fail.
    pub fn fail_on(&self, prefix: &str) {
        *self.fail_on.lock() = Some(prefix.to_string());
    }

    /// Records `line`; whether it is to fail.
    fn record(&self, line: String) -> bool {
        let mut fail_on = self.fail_on.lock();
        let fails = fail_on
            .as_deref()
            .is_some_and(|prefix| line.starts_with(prefix));
        if fails {
            *fail_on = None;
        }
        self.calls.lock().push(line);
        fails
    }
}

impl NetHost for RecordingNetHost {
    fn firewall(&self, script: &str) -> Result<(), NftError> {
        if self.record(format!("firewall {script}")) {
            return Err(NftError::Refused("refused by the test".into()));
        }
        Ok(())
    }

    fn firewall_listing(&self, what: &str) -> Result<String, NftError> {
        if self.record(format!("list {what}")) {
            return Err(NftError::Refused("No such file or directory".into()));
        }
        Ok("{\"nftables\": []}".into())
    }

    fn create_links(&self, host: &str, pid: u32, addrs: SlotAddrs) -> Result<(), LinkError> {
        if self.record(format!(
            "links {host} {pid} {} {}",
            addrs.gateway, addrs.sprite
        )) {
            return Err(LinkError::Step {
                step: "create the host end",
                source: std::io::Error::from_raw_os_error(libc::EEXIST),
            });
        }
        Ok(())
    }

    fn delete_link(&self, host: &str) -> std::io::Result<()> {
        if self.record(format!("delete {host}")) {
            return Err(std::io::Error::other("refused by the test"));
        }
        Ok(())
    }

    fn forget_connections(
        &self,
        source: Ipv4Addr,
        destination: Option<Ipv4Addr>,
    ) -> Result<(), SandboxError> {
        let to = destination.map(|d| format!(" {d}")).unwrap_or_default();
        self.record(format!("forget {source}{to}"));
        Ok(())
    }

    fn interfaces(&self) -> std::io::Result<Vec<String>> {
        self.record("interfaces".into());
        Ok(vec!["lo".into(), "spv2".into(), "spv9".into()])
    }

    fn enable_forwarding(&self) -> std::io::Result<()> {
        self.record("forwarding".into());
        Ok(())
    }
}

/// Sprite networking on a host: the [`NetPlan`] and the [`NetHost`] it changes.
#[derive(Debug, Clone)]
pub struct Net {
    plan: NetPlan,
    host: std::sync::Arc<dyn NetHost>,
}

impl Net {
    /// `plan` on this host (netlink and libnftables).
    pub fn system(plan: NetPlan) -> Net {
        Net::with_host(plan, std::sync::Arc::new(SystemNetHost::new()))
    }

    /// `plan` on `host` (a [`RecordingNetHost`] in tests).
    pub fn with_host(plan: NetPlan, host: std::sync::Arc<dyn NetHost>) -> Net {
        Net { plan, host }
    }

    pub fn plan(&self) -> &NetPlan {
        &self.plan
    }

    /// Applies `script`; a refusal names `step`.
    fn firewall(&self, script: &str, step: impl Fn() -> String) -> Result<(), SandboxError> {
        self.host
            .firewall(script)
            .map_err(|source| SandboxError::Firewall {
                step: step(),
                source,
            })
    }

    fn allowed_in_old_table(&self) -> Vec<KeptElement> {
        allowed_in_old_table(&*self.host, &self.plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> NetPlan {
        NetPlan::new("10.231.0.0/16", "sprites_ab12", "spv").expect("valid plan")
    }

    #[test]
    fn a_plan_parses_and_carves_slots_into_30s() {
        let plan = plan();
        assert_eq!(plan.subnet, Ipv4Addr::new(10, 231, 0, 0));
        assert_eq!(plan.prefix_len, 16);
        assert_eq!(plan.max_slots(), 16384);
        let first = plan.addresses(0).expect("slot 0");
        assert_eq!(first.gateway, Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(first.sprite, Ipv4Addr::new(10, 231, 0, 2));
        assert_eq!(first.prefix_len, 30);
        let seventeen = plan.addresses(17).expect("slot 17");
        assert_eq!(seventeen.gateway, Ipv4Addr::new(10, 231, 0, 69));
        assert_eq!(seventeen.sprite, Ipv4Addr::new(10, 231, 0, 70));
        let last = plan.addresses(16383).expect("last slot");
        assert_eq!(last.gateway, Ipv4Addr::new(10, 231, 255, 253));
        assert_eq!(last.sprite, Ipv4Addr::new(10, 231, 255, 254));
        assert_eq!(plan.addresses(16384), None);
        assert_eq!(plan.addresses(u32::MAX), None);
        assert_eq!(plan.host_iface(17), "spv17");
    }

    #[test]
    fn the_smallest_and_largest_subnets() {
        let small = NetPlan::new("192.168.7.16/28", "t", "spv").expect("/28");
        assert_eq!(small.max_slots(), 4);
        assert_eq!(
            small.addresses(3).map(|a| a.sprite),
            Some(Ipv4Addr::new(192, 168, 7, 30))
        );
        assert_eq!(small.addresses(4), None);
        // /8 has 4194304 slots: seven digits, so the prefix may have eight characters.
        let large = NetPlan::new("10.0.0.0/8", "t", "abcdefgh").expect("/8");
        assert_eq!(large.max_slots(), 4_194_304);
        assert_eq!(large.host_iface(4_194_303).len(), 15);
        assert!(NetPlan::new("10.0.0.0/8", "t", "abcdefghi").is_err());
        // /16 has 16384 slots: five digits, so ten characters.
        assert!(NetPlan::new("10.231.0.0/16", "t", "abcdefghij").is_ok());
        assert!(NetPlan::new("10.231.0.0/16", "t", "abcdefghijk").is_err());
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        let message = |cidr: &str, table: &str, prefix: &str| {
            NetPlan::new(cidr, table, prefix)
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default()
        };
        assert!(message("10.231.0.0", "t", "spv").contains("not address/prefix"));
        assert!(message("10.231.0/16", "t", "spv").contains("not an IPv4 address"));
        assert!(message("10.231.0.0/x", "t", "spv").contains("not a prefix length"));
        assert!(message("10.0.0.0/7", "t", "spv").contains("not between 8 and 28"));
        assert!(message("10.0.0.0/29", "t", "spv").contains("not between 8 and 28"));
        assert!(message("10.231.0.4/16", "t", "spv").contains("that is 10.231.0.0"));
        assert!(message("10.231.0.0/16", "Sprites", "spv").contains("table name"));
        assert!(message("10.231.0.0/16", "1sprites", "spv").contains("table name"));
        assert!(message("10.231.0.0/16", "sprites-x", "spv").contains("table name"));
        assert!(message("10.231.0.0/16", "t", "").contains("interface prefix"));
        assert!(message("10.231.0.0/16", "t", "sp*").contains("interface prefix"));
        assert!(message("10.231.0.0/16", "t", "sp v").contains("interface prefix"));
    }

    #[test]
    fn a_hand_built_plan_never_panics() {
        let plan = NetPlan {
            subnet: Ipv4Addr::new(255, 255, 255, 252),
            prefix_len: 31,
            table: "t".into(),
            iface_prefix: "spv".into(),
            local_egress: false,
        };
        assert_eq!(plan.max_slots(), 0);
        assert_eq!(plan.addresses(0), None);
        let unaligned = NetPlan {
            subnet: Ipv4Addr::new(255, 255, 255, 255),
            prefix_len: 28,
            ..plan
        };
        assert_eq!(unaligned.addresses(3), None);
    }

    #[test]
    fn only_slot_names_count_as_slot_interfaces() {
        let plan = NetPlan::new("10.253.0.0/24", "t", "spv").expect("plan");
        assert!(plan.is_slot_iface("spv0"));
        assert!(plan.is_slot_iface("spv63"));
        assert!(!plan.is_slot_iface("spv64"));
        assert!(!plan.is_slot_iface("spv07"));
        assert!(!plan.is_slot_iface("spv+1"));
        assert!(!plan.is_slot_iface("spvx"));
        assert!(!plan.is_slot_iface("eth0"));
    }

    #[test]
    fn attach_refuses_a_process_in_the_hosts_namespace() {
        // Checked before anything changes, so this needs no privilege.
        let addrs = plan().addresses(3).expect("slot");
        assert!(matches!(
            SystemNetHost::new().create_links("spv3", std::process::id(), addrs),
            Err(LinkError::SameNamespace)
        ));
        let host = std::sync::Arc::new(RecordingNetHost::default());
        let net = Net::with_host(plan(), host.clone());
        assert!(matches!(
            net.attach(16384, 4242, Egress::Open),
            Err(SandboxError::NetworkSlot {
                slot: 16384,
                max_slots: 16384
            })
        ));
        assert!(host.calls().is_empty());
    }

    fn recorded() -> (Net, std::sync::Arc<RecordingNetHost>) {
        let host = std::sync::Arc::new(RecordingNetHost::default());
        (Net::with_host(plan(), host.clone()), host)
    }

    #[test]
    fn attach_puts_the_rules_in_force_before_the_links_exist() {
        let (net, host) = recorded();
        let addrs = net.attach(5, 4242, Egress::Restricted).expect("attach");
        assert_eq!(addrs.sprite, Ipv4Addr::new(10, 231, 0, 22));
        let calls = host.calls();
        assert_eq!(calls.len(), 3, "{calls:#?}");
        // What a previous sprite in the slot was allowed is looked up, then the rules.
        assert_eq!(calls[0], "list set inet sprites_ab12 allowed");
        assert!(calls[1].starts_with("firewall "), "{}", calls[1]);
        let restricted = "add element inet sprites_ab12 restricted { \"spv5\" }";
        assert!(calls[1].contains(restricted), "{}", calls[1]);
        assert!(calls[1].contains("sources { \"spv5\" . 10.231.0.22 }"));
        assert_eq!(calls[2], "links spv5 4242 10.231.0.21 10.231.0.22");
    }

    #[test]
    fn a_failed_attach_is_undone() {
        for failing in ["links", "firewall"] {
            let (net, host) = recorded();
            host.fail_on(failing);
            net.attach(7, 4242, Egress::Open).expect_err("fails");
            let calls = host.calls();
            // The undo: the slot's objects, its link and its connections, whatever step
            // failed; with failing rules, no link was made.
            let undo = &calls[calls.len() - 3..];
            assert!(
                undo[0].starts_with("firewall ")
                    && undo[0].contains("delete element inet sprites_ab12 open { \"spv7\" }"),
                "{calls:#?}"
            );
            assert_eq!(undo[1], "delete spv7");
            assert_eq!(undo[2], "forget 10.231.0.30");
            let made_links = calls.iter().any(|c| c.starts_with("links "));
            assert_eq!(made_links, failing == "links", "{calls:#?}");
        }
    }

    #[test]
    fn a_restarted_daemon_keeps_live_slots_in_the_new_table() {
        let (net, host) = recorded();
        net.install(&[(2, Egress::Open), (9, Egress::Restricted)])
            .expect("install");
        let calls = host.calls();
        assert_eq!(
            calls[..3],
            ["interfaces", "forwarding", "list table inet sprites_ab12"]
        );
        assert_eq!(calls.len(), 4, "{calls:#?}");
        let script = &calls[3];
        let table = script.find("table inet sprites_ab12 {").expect("table");
        let slot = script
            .find("add element inet sprites_ab12 restricted { \"spv9\" }")
            .expect("slot 9");
        assert!(table < slot, "slots come after the fresh table");
        assert!(script.contains("open { \"spv2\" }"), "{script}");
    }

    #[test]
    fn timeouts_round_up_and_stay_in_nft_range() {
        assert_eq!(allow_seconds(Duration::ZERO), 1);
        assert_eq!(allow_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(allow_seconds(Duration::from_secs(300)), 300);
        assert_eq!(allow_seconds(Duration::MAX), 4_294_967);
    }

    #[test]
    fn the_slot_script_names_its_objects_and_guards_the_source() {
        let plan = plan();
        let addrs = plan.addresses(5).expect("slot 5");
        let open = slot_script(&plan, 5, addrs, Egress::Open);
        assert!(open.contains("sources { \"spv5\" . 10.231.0.22 }"));
        assert!(open.contains("resolvers { \"spv5\" . 10.231.0.21 }"));
        assert!(open.ends_with(
            "add element inet sprites_ab12 restricted { \"spv5\" }\n\
             delete element inet sprites_ab12 restricted { \"spv5\" }\n\
             add element inet sprites_ab12 open { \"spv5\" }\n"
        ));
        // No chain, rule or jump per slot: only elements.
        for line in open.lines() {
            assert!(
                line.starts_with("add element ") || line.starts_with("delete element "),
                "{line}"
            );
        }
        let restricted = egress_elements(&plan, 5, Egress::Restricted);
        assert!(restricted.ends_with("add element inet sprites_ab12 restricted { \"spv5\" }\n"));
        let lan_table = table_script(&NetPlan {
            local_egress: true,
            ..plan.clone()
        });
        assert!(!lan_table.contains("ip daddr @local_networks"));
        let table = table_script(&plan);
        assert!(table.contains("iifname . ip saddr != @sources drop"));
        assert!(table.contains("iifname \"spv*\" iifname . ip saddr != @sources drop"));
        assert!(table.contains("iifname @restricted jump egress_restricted"));
        assert!(table.contains("iifname . ip daddr @allowed accept"));
        assert!(table.contains("ip daddr @local_networks meta l4proto tcp reject with tcp reset"));
        assert!(table.contains("169.254.0.0/16"));
        assert!(table.starts_with("add table inet sprites_ab12\ndelete table inet sprites_ab12\n"));
        assert!(table.contains(
            "ip saddr 10.231.0.0/16 ip daddr != 10.231.0.0/16 oifname != \"spv*\" masquerade"
        ));
    }

    #[test]
    fn connected_networks_come_from_routes_without_a_gateway() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
spv3\t0C00E70A\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0
lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0
";
        assert_eq!(
            parse_connected_networks(table, "spv"),
            vec!["192.168.2.0/24", "172.17.0.0/16"]
        );
    }

    #[test]
    fn allow_sets_of_an_old_table_are_read_from_its_listing() {
        let listing = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {"set": {"family": "inet", "name": "allow_3", "table": "t", "type": "ipv4_addr",
                "flags": ["timeout"], "elem": [
                    {"elem": {"val": "1.2.3.4", "timeout": 50, "expires": 49}},
                    {"elem": {"val": "5.6.7.8", "timeout": 3600, "expires": 0}},
                    "9.9.9.9"]}},
            {"set": {"family": "inet", "name": "allow_4", "table": "t", "type": "ipv4_addr"}},
            {"set": {"family": "inet", "name": "resolvers", "table": "t",
                "elem": [{"concat": ["spv1", "10.0.0.1"]}]}},
            {"chain": {"family": "inet", "table": "t", "name": "egress_3"}}
        ]});
        assert_eq!(
            allowed_in_listing(&plan(), &listing),
            vec![
                KeptElement {
                    slot: 3,
                    address: Ipv4Addr::new(1, 2, 3, 4),
                    seconds_left: Some(49)
                },
                KeptElement {
                    slot: 3,
                    address: Ipv4Addr::new(5, 6, 7, 8),
                    seconds_left: Some(1)
                },
                KeptElement {
                    slot: 3,
                    address: Ipv4Addr::new(9, 9, 9, 9),
                    seconds_left: None
                },
            ]
        );
        assert!(allowed_in_listing(&plan(), &serde_json::json!({})).is_empty());
        // The set of today's tables: interface . address, the slot from the interface.
        let listing = serde_json::json!({"nftables": [
            {"set": {"family": "inet", "name": "allowed", "table": "t",
                "type": ["ifname", "ipv4_addr"], "flags": ["timeout"], "elem": [
                    {"elem": {"val": {"concat": ["spv3", "1.2.3.4"]}, "timeout": 50, "expires": 49}},
                    {"concat": ["spv4", "9.9.9.9"]},
                    {"concat": ["other7", "8.8.8.8"]},
                    {"concat": ["spv99999", "8.8.4.4"]}]}}
        ]});
        assert_eq!(
            allowed_in_listing(&plan(), &listing),
            vec![
                KeptElement {
                    slot: 3,
                    address: Ipv4Addr::new(1, 2, 3, 4),
                    seconds_left: Some(49)
                },
                KeptElement {
                    slot: 4,
                    address: Ipv4Addr::new(9, 9, 9, 9),
                    seconds_left: None
                },
            ]
        );
        assert_eq!(
            clear_allowed_script(&plan(), 3, &listing),
            "delete element inet sprites_ab12 allowed { \"spv3\" . 1.2.3.4 }\n"
        );
        assert_eq!(clear_allowed_script(&plan(), 5, &listing), "");
    }
}
