//! Per-sprite slots: what is live about one sprite on this host and in no record (its
//! start lock, the port its URL goes to, its port poller, its connection places, its
//! parsed sleep timers), in
//! one place, looked up once per operation. A destroy drops the slot: nothing to
//! forget map by map. The sprite's sleep state, tasks and network slot belong to their
//! components (`lifecycle::Activity`, `tasks::Tasks`, `network::Network`), which its
//! teardown tells.

use crate::activity::SleepPolicy;
use crate::ports::PortWatch;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Most connections into one sprite at once (URL proxy and TCP proxy together).
pub const MAX_CONNECTIONS_PER_SPRITE: usize = 512;

/// Everything live about one sprite.
#[derive(Debug)]
pub(crate) struct Slot {
    /// One start (or stop, restore, destroy) of the sprite at a time.
    pub(crate) start: Arc<tokio::sync::Mutex<()>>,
    /// The port its URL goes to, and when it was looked up.
    pub(crate) http_port: Mutex<Option<(u16, Instant)>>,
    /// Its port poller, while someone watches its ports.
    pub(crate) port_watch: Mutex<Weak<PortWatch>>,
    /// Places for connections into it.
    pub(crate) places: Arc<tokio::sync::Semaphore>,
    /// Its sleep timers, parsed from the `config` values they were parsed from.
    pub(crate) sleep_policy: Mutex<Option<(SleepKey, SleepPolicy)>>,
    /// TTY sessions started in it (counting from 1, so a new slot, as after a daemon
    /// restart, is asked once), and the count when it last had none running: the idle
    /// policy asks its init about running TTY sessions only while the two differ, not
    /// every running sprite every tick.
    pub(crate) tty_started: AtomicU64,
    pub(crate) tty_none_at: AtomicU64,
}

/// A sprite's own `warm_after` and `cold_after`, as stored.
pub(crate) type SleepKey = (Option<String>, Option<String>);

impl Slot {
    fn new() -> Slot {
        Slot {
            start: Arc::default(),
            http_port: Mutex::new(None),
            port_watch: Mutex::new(Weak::new()),
            places: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_SPRITE)),
            sleep_policy: Mutex::new(None),
            tty_started: AtomicU64::new(1),
            tty_none_at: AtomicU64::new(0),
        }
    }
}

/// The slots of the sprites of this host, by sprite id.
#[derive(Debug, Default)]
pub(crate) struct Slots(Mutex<HashMap<String, Arc<Slot>>>);

impl Slots {
    /// The sprite's slot, made on first use.
    pub(crate) fn get(&self, sprite_id: &str) -> Arc<Slot> {
        self.0
            .lock()
            .entry(sprite_id.to_string())
            .or_insert_with(|| Arc::new(Slot::new()))
            .clone()
    }

    /// The sprite's slot if it has one (looking does not make one).
    pub(crate) fn peek(&self, sprite_id: &str) -> Option<Arc<Slot>> {
        self.0.lock().get(sprite_id).cloned()
    }

    /// Drops the sprite's slot (it was destroyed). Holders of it keep theirs until done.
    pub(crate) fn remove(&self, sprite_id: &str) {
        self.0.lock().remove(sprite_id);
    }

    /// How many sprites have a slot.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().len()
    }
}
