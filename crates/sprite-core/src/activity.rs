//! When sprites sleep: what keeps one awake, and the idle policy that sends it to warm
//! (cgroup frozen, memory kept) and cold (stopped, disk released) sleep.
//!
//! Everything here is plain data and arithmetic on a [`Clock`], so the policy is tested
//! with a manual clock; the lifecycle (`lifecycle.rs`) applies its decisions to real sprites.

use parking_lot::Mutex;
use serde::Serialize;
use sprite_api::sprite::SpriteStatus;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds since the Unix epoch, from the system or from a test.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        chrono::Utc::now().timestamp_millis().max(0) as u64
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock(AtomicU64::new(start_ms))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Something that keeps a sprite awake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// An exec or console session with a client connected.
    Session,
    /// A TTY session whose process still runs (attached or not).
    Tty,
    /// An API operation in progress (checkpoint, restore, a file operation...).
    Api,
    /// An open request or connection through the sprite's URL or TCP proxy.
    Proxy,
    /// A live Task registered through `/.sprite/api.sock`.
    Task,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Session => "exec or console session",
            Reason::Tty => "TTY session with a running process",
            Reason::Api => "API operation",
            Reason::Proxy => "proxied request or connection",
            Reason::Task => "task",
        }
    }
}

#[derive(Debug)]
struct Entry {
    status: SpriteStatus,
    since_ms: u64,
    guards: BTreeMap<Reason, usize>,
    last_active_ms: u64,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            status: SpriteStatus::Cold,
            since_ms: 0,
            guards: BTreeMap::new(),
            last_active_ms: 0,
        }
    }
}

/// Each sprite's status, what keeps it awake and when it last was active. Status and
/// reasons share one lock: a caller that holds a reason and then sees `Running` can rely
/// on no sleep starting under it (a sleep is decided under the same lock, before the
/// freeze or stop, and only when no reason is held).
#[derive(Debug)]
pub struct Activity {
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Activity {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Activity> {
        Arc::new(Activity {
            clock,
            entries: Mutex::new(HashMap::new()),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Marks the sprite awake for `reason` until the guard is dropped; also answers the
    /// sprite's status as of that moment.
    pub fn hold(
        self: &Arc<Self>,
        sprite_id: &str,
        reason: Reason,
    ) -> (ActivityGuard, SpriteStatus) {
        let now = self.now_ms();
        let mut entries = self.entries.lock();
        let entry = entries.entry(sprite_id.to_string()).or_default();
        *entry.guards.entry(reason).or_default() += 1;
        entry.last_active_ms = entry.last_active_ms.max(now);
        let guard = ActivityGuard {
            activity: self.clone(),
            sprite_id: sprite_id.to_string(),
            reason,
        };
        (guard, entry.status)
    }

    /// The sprite's status and since when (Unix ms).
    pub fn status(&self, sprite_id: &str) -> (SpriteStatus, u64) {
        self.entries
            .lock()
            .get(sprite_id)
            .map_or((SpriteStatus::Cold, 0), |e| (e.status, e.since_ms))
    }

    /// Sets the status (since now, unless it is unchanged).
    pub fn set_status(&self, sprite_id: &str, status: SpriteStatus) {
        self.set_status_since(sprite_id, status, self.now_ms());
    }

    /// Sets the status as of `since_ms` (a status restored after a daemon restart).
    pub fn set_status_since(&self, sprite_id: &str, status: SpriteStatus, since_ms: u64) {
        let mut entries = self.entries.lock();
        let entry = entries.entry(sprite_id.to_string()).or_default();
        if entry.status != status {
            entry.status = status;
            entry.since_ms = since_ms;
        }
    }

    /// Starts a sleep: moves the sprite from an awake status to `to` if nothing holds it
    /// awake (and, for warm sleep, if it is running). Answers whether it did; the caller
    /// then freezes or stops the sprite, or sets the status back if that fails.
    pub fn begin_sleep(&self, sprite_id: &str, to: SpriteStatus) -> bool {
        let now = self.now_ms();
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(sprite_id) else {
            return false;
        };
        let allowed = match to {
            SpriteStatus::Warm => entry.status == SpriteStatus::Running,
            SpriteStatus::Cold => entry.status != SpriteStatus::Cold,
            SpriteStatus::Running => false,
        };
        if !allowed || entry.guards.values().any(|n| *n > 0) {
            return false;
        }
        entry.status = to;
        entry.since_ms = now;
        true
    }

    /// Sprites whose status is not cold.
    pub fn awake(&self) -> Vec<(String, SpriteStatus)> {
        self.entries
            .lock()
            .iter()
            .filter(|(_, e)| e.status != SpriteStatus::Cold)
            .map(|(id, e)| (id.clone(), e.status))
            .collect()
    }

    /// Records activity now (a wake, a TTY session seen running).
    pub fn touch(&self, sprite_id: &str) {
        self.touch_at(sprite_id, self.now_ms());
    }

    /// Records activity at `at_ms` unless a later one is known (restores the timer of a
    /// sprite after a daemon restart).
    pub fn touch_at(&self, sprite_id: &str, at_ms: u64) {
        let mut entries = self.entries.lock();
        let entry = entries.entry(sprite_id.to_string()).or_default();
        entry.last_active_ms = entry.last_active_ms.max(at_ms);
    }

    /// The reasons held now, each with its count.
    pub fn reasons(&self, sprite_id: &str) -> Vec<(Reason, usize)> {
        self.entries
            .lock()
            .get(sprite_id)
            .map(|e| {
                e.guards
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, n)| (*r, *n))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn last_active_ms(&self, sprite_id: &str) -> Option<u64> {
        self.entries.lock().get(sprite_id).map(|e| e.last_active_ms)
    }

    /// Forgets a destroyed sprite.
    pub fn forget(&self, sprite_id: &str) {
        self.entries.lock().remove(sprite_id);
    }

    fn release(&self, sprite_id: &str, reason: Reason) {
        let now = self.now_ms();
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get_mut(sprite_id) {
            if let Some(count) = entry.guards.get_mut(&reason) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    entry.guards.remove(&reason);
                }
            }
            entry.last_active_ms = entry.last_active_ms.max(now);
        }
    }
}

/// Keeps a sprite awake while it lives; the idle timer starts when the last one drops.
#[derive(Debug)]
pub struct ActivityGuard {
    activity: Arc<Activity>,
    sprite_id: String,
    reason: Reason,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.activity.release(&self.sprite_id, self.reason);
    }
}

/// How long a sprite may idle before each sleep (`None`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepPolicy {
    pub warm_after: Option<Duration>,
    pub cold_after: Option<Duration>,
}

impl Default for SleepPolicy {
    fn default() -> Self {
        SleepPolicy {
            warm_after: Some(Duration::from_secs(30)),
            cold_after: Some(Duration::from_secs(600)),
        }
    }
}

/// Where the policy sends a sprite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Warm,
    Cold,
}

/// The transition due for a sprite in `status` that has been idle `idle` and is `busy`
/// (some reason holds it) or not.
pub fn decide(
    status: SpriteStatus,
    idle: Duration,
    busy: bool,
    policy: SleepPolicy,
) -> Option<Transition> {
    if busy || status == SpriteStatus::Cold {
        return None;
    }
    if policy.cold_after.is_some_and(|after| idle >= after) {
        return Some(Transition::Cold);
    }
    if status == SpriteStatus::Running && policy.warm_after.is_some_and(|after| idle >= after) {
        return Some(Transition::Warm);
    }
    None
}

/// Parses a sleep timer: a duration in the one grammar of every duration we take
/// ([`sprite_api::exec::parse_duration`]: `30s`, `10m`, `1m30s`, `250ms`, a plain
/// number of seconds; `min` and `sec` are understood too); `never` (or `0`) turns the
/// timer off. At most a year.
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text == "never" || text == "0" {
        return Ok(None);
    }
    let is_number = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let normalized = [("mins", "m"), ("min", "m"), ("secs", "s"), ("sec", "s")]
        .iter()
        .find_map(|(word, unit)| {
            text.strip_suffix(word)
                .filter(|n| is_number(n))
                .map(|n| format!("{n}{unit}"))
        })
        .unwrap_or_else(|| text.to_string());
    let duration = sprite_api::exec::parse_duration(&normalized).ok_or_else(|| {
        if text.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            format!("unknown unit in {text:?}; use ms, s, m or h, alone or together (like 30s, 10m or 1m30s), or never")
        } else {
            format!("{text:?} is not a duration; use a number with ms, s, m or h (like 30s, 10m or 1m30s), or never")
        }
    })?;
    if duration.is_zero() || duration > Duration::from_secs(366 * 86400) {
        return Err(format!(
            "{text:?} is out of range; use more than 0 and at most a year, or never"
        ));
    }
    Ok(Some(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SleepPolicy = SleepPolicy {
        warm_after: Some(Duration::from_secs(30)),
        cold_after: Some(Duration::from_secs(600)),
    };

    #[test]
    fn idle_sprites_go_warm_then_cold_at_the_configured_times() {
        let running = SpriteStatus::Running;
        let warm = SpriteStatus::Warm;
        let s = Duration::from_secs;
        assert_eq!(decide(running, s(29), false, POLICY), None);
        assert_eq!(
            decide(running, s(30), false, POLICY),
            Some(Transition::Warm)
        );
        assert_eq!(decide(warm, s(599), false, POLICY), None);
        assert_eq!(decide(warm, s(600), false, POLICY), Some(Transition::Cold));
        // A running sprite idle past both goes straight to cold.
        assert_eq!(
            decide(running, s(700), false, POLICY),
            Some(Transition::Cold)
        );
        assert_eq!(decide(SpriteStatus::Cold, s(9999), false, POLICY), None);
    }

    #[test]
    fn busy_sprites_never_sleep() {
        for status in [SpriteStatus::Running, SpriteStatus::Warm] {
            assert_eq!(
                decide(status, Duration::from_secs(9999), true, POLICY),
                None
            );
        }
    }

    #[test]
    fn timers_turned_off_never_fire() {
        let never = SleepPolicy {
            warm_after: None,
            cold_after: None,
        };
        assert_eq!(
            decide(
                SpriteStatus::Running,
                Duration::from_secs(1 << 30),
                false,
                never
            ),
            None
        );
        let warm_only = SleepPolicy {
            cold_after: None,
            ..POLICY
        };
        assert_eq!(
            decide(
                SpriteStatus::Warm,
                Duration::from_secs(1 << 30),
                false,
                warm_only
            ),
            None
        );
    }

    #[test]
    fn the_idle_timer_starts_when_the_last_guard_drops() {
        let clock = Arc::new(ManualClock::new(1_000));
        let activity = Activity::new(clock.clone());
        let (first, status) = activity.hold("s", Reason::Session);
        assert_eq!(status, SpriteStatus::Cold);
        let (second, _) = activity.hold("s", Reason::Session);
        let (api, _) = activity.hold("s", Reason::Api);
        assert_eq!(
            activity.reasons("s"),
            [(Reason::Session, 2), (Reason::Api, 1)]
        );
        clock.advance(Duration::from_secs(100));
        drop(first);
        drop(api);
        assert_eq!(activity.reasons("s"), [(Reason::Session, 1)]);
        clock.advance(Duration::from_secs(100));
        drop(second);
        assert!(activity.reasons("s").is_empty());
        assert_eq!(activity.last_active_ms("s"), Some(201_000));
        // An older timestamp (from before a restart) never moves the timer back.
        activity.touch_at("s", 5);
        assert_eq!(activity.last_active_ms("s"), Some(201_000));
        activity.forget("s");
        assert_eq!(activity.last_active_ms("s"), None);
    }

    #[test]
    fn a_sleep_starts_only_when_nothing_holds_the_sprite() {
        let clock = Arc::new(ManualClock::new(1_000));
        let activity = Activity::new(clock.clone());
        assert!(
            !activity.begin_sleep("s", SpriteStatus::Warm),
            "unknown sprite"
        );
        activity.set_status("s", SpriteStatus::Running);
        let (guard, status) = activity.hold("s", Reason::Session);
        assert_eq!(status, SpriteStatus::Running);
        assert!(!activity.begin_sleep("s", SpriteStatus::Warm));
        assert!(!activity.begin_sleep("s", SpriteStatus::Cold));
        drop(guard);
        clock.advance(Duration::from_secs(5));
        assert!(activity.begin_sleep("s", SpriteStatus::Warm));
        assert_eq!(activity.status("s"), (SpriteStatus::Warm, 6_000));
        // A caller arriving now sees the sleep and must wake the sprite.
        let (_guard, status) = activity.hold("s", Reason::Api);
        assert_eq!(status, SpriteStatus::Warm);
        assert!(!activity.begin_sleep("s", SpriteStatus::Warm), "warm twice");
        assert_eq!(activity.awake(), [("s".to_string(), SpriteStatus::Warm)]);
    }

    #[test]
    fn durations_parse_with_clear_errors() {
        assert_eq!(parse_duration("30s"), Ok(Some(Duration::from_secs(30))));
        assert_eq!(parse_duration("10m"), Ok(Some(Duration::from_secs(600))));
        assert_eq!(parse_duration("1h"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(parse_duration("45"), Ok(Some(Duration::from_secs(45))));
        assert_eq!(
            parse_duration("250ms"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_duration("never"), Ok(None));
        assert_eq!(parse_duration("1m30s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(
            parse_duration("2h0m0s"),
            Ok(Some(Duration::from_secs(7200)))
        );
        assert_eq!(parse_duration("5min"), Ok(Some(Duration::from_secs(300))));
        assert_eq!(parse_duration("1.5h"), Ok(Some(Duration::from_secs(5400))));
        assert!(parse_duration("400d").is_err());
        assert!(parse_duration("9000h")
            .expect_err("too long")
            .contains("at most a year"));
        assert!(parse_duration("10 parsecs")
            .expect_err("an error")
            .contains("unknown unit"));
        assert!(parse_duration("soon")
            .expect_err("an error")
            .contains("not a duration"));
        assert!(parse_duration("-5s").is_err());
    }
}

#[cfg(test)]
mod fuzz_targets {
    use super::*;
    use sprite_api::fuzz::{budget, fuzz};

    /// Sleep timers in configs and create requests (`30s`, `10m`, `never`).
    #[test]
    fn fuzz_sleep_durations() {
        let seeds: &[&[u8]] = &[
            b"30s",
            b"10m",
            b"1h",
            b"never",
            b"0",
            b"1.5h",
            b"99999999999999h",
        ];
        fuzz(
            "sleep durations",
            budget(),
            seeds,
            &[b"never", b"ms", b"h", b"."],
            |input| {
                let text = String::from_utf8_lossy(input);
                if let Ok(Some(duration)) = parse_duration(&text) {
                    // Whatever was written, a duration that sleep timers can add to a clock.
                    assert!(std::time::Instant::now().checked_add(duration).is_some());
                }
            },
        );
    }
}
