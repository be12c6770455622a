//! Usage history: every `usage_interval` each sprite is sampled (CPU time and memory
//! from its cgroup, bytes through its veth pair, its status) and the differences are
//! added to its row of the hour in SQLite (`usage_hourly`); the bytes it stores are
//! read once an hour. Rows older than [`KEEP_DAYS`] are dropped. The same samples feed
//! `/metrics` ([`SpriteManager::sprite_stats`]).

use crate::db::SpriteRecord;
use crate::error::CoreError;
use crate::SpriteManager;
use parking_lot::Mutex;
use rusqlite::params;
use sprite_api::admin::UsageHour;
use sprite_api::sprite::SpriteStatus;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Days of hourly rows kept.
pub const KEEP_DAYS: u64 = 90;
const HOUR_MS: u64 = 3_600_000;
/// Most stored-bytes reads (a walk of a volume's block map in the storage process) in
/// one pass: with many sprites, the hour's reads spread over the passes instead of all
/// landing on the first (the daemon's start).
const STORED_READS_PER_PASS: usize = 50;
/// Longest gap between two samples counted as time in a status (a longer one, as
/// across a daemon restart, counts this much).
const MAX_GAP_MS: u64 = 300_000;

/// What the last sample of one sprite read.
#[derive(Debug, Clone, Default)]
struct Last {
    at_ms: u64,
    status: Option<SpriteStatus>,
    cpu_ns: Option<u64>,
    traffic: Option<(u64, u64)>,
    stored_hour: Option<u64>,
}

/// Live figures of one sprite (for `/metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpriteStats {
    pub org: String,
    pub name: String,
    pub status: SpriteStatus,
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Received and sent since its last start.
    pub traffic: Option<(u64, u64)>,
    /// As of the last hourly read.
    pub stored_bytes: Option<u64>,
}

/// The sampler's memory (held by the manager).
#[derive(Debug, Default)]
pub(crate) struct UsageState {
    /// The first pass (at daemon start) has run: sprites seen later are new since then.
    baselined: std::sync::atomic::AtomicBool,
    last: Mutex<HashMap<String, Last>>,
    stored: Mutex<HashMap<String, u64>>,
}

/// One sample's additions to an hour's row.
#[derive(Debug, Clone, Default, PartialEq)]
struct Delta {
    cpu_ms: u64,
    memory: Option<u64>,
    rx: u64,
    tx: u64,
    stored: Option<u64>,
    status_ms: [u64; 3],
}

/// Growth of a counter that restarts from zero when a sprite starts again.
fn grew(now: Option<u64>, before: Option<u64>) -> u64 {
    match (now, before) {
        (Some(now), Some(before)) if now >= before => now - before,
        (Some(now), _) => now,
        _ => 0,
    }
}

/// A status's place in `[running, warm, cold]` arrays.
pub(crate) fn status_index(status: SpriteStatus) -> usize {
    match status {
        SpriteStatus::Running => 0,
        SpriteStatus::Warm => 1,
        SpriteStatus::Cold => 2,
    }
}

impl SpriteManager {
    /// Samples usage every `every`, forever.
    pub async fn run_usage(self: Arc<Self>, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            ticker.tick().await;
            if let Err(error) = self.sample_usage().await {
                tracing::warn!("usage sample: {}", sprite_api::error_chain(&error));
            }
            ticks += 1;
            if ticks % 1000 == 1 {
                let cutoff =
                    (self.lifecycle.activity.now_ms() / HOUR_MS).saturating_sub(KEEP_DAYS * 24);
                if let Err(error) = self.db.lock().execute(
                    "DELETE FROM usage_hourly WHERE hour < ?1",
                    params![cutoff as i64],
                ) {
                    tracing::warn!("usage retention: {error}");
                }
            }
        }
    }

    /// Every sprite's record (pooled ones aside), status and live figures. A thousand
    /// sprites are thousands of system calls (a few cgroup and veth files each): read
    /// on a blocking thread, not on an async worker a create would wait behind.
    async fn live_figures(&self) -> Result<Vec<(SpriteRecord, SpriteStatus, Live)>, CoreError> {
        let (db, lifecycle) = (self.db.clone(), self.lifecycle.clone());
        tokio::task::spawn_blocking(move || {
            let layout =
                sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).ok();
            Ok(db
                .all()?
                .into_iter()
                .filter(|r| !r.pooled)
                .map(|record| {
                    let (status, _) = lifecycle.activity.status(&record.id);
                    let live = read_live(&lifecycle, &record, status, layout.as_ref());
                    (record, status, live)
                })
                .collect())
        })
        .await
        .map_err(|e| CoreError::Task("read sprites' usage", e))?
    }

    /// Reads every sprite's figures once and adds them to the hour's rows.
    pub async fn sample_usage(&self) -> Result<(), CoreError> {
        let sampled = self.live_figures().await?;
        let now = self.lifecycle.activity.now_ms();
        let hour = now / HOUR_MS;
        let first_pass = !self
            .usage_state
            .baselined
            .swap(true, std::sync::atomic::Ordering::SeqCst);
        let mut rows = Vec::with_capacity(sampled.len());
        let mut stored_reads = 0;
        for &(ref record, status, live) in &sampled {
            let before = self
                .usage_state
                .last
                .lock()
                .get(record.id.as_str())
                .cloned();
            let before = before.unwrap_or_default();
            let stored = if before.stored_hour != Some(hour) && stored_reads < STORED_READS_PER_PASS
            {
                stored_reads += 1;
                match self.lifecycle.roots.usage(&record.id).await {
                    Ok(Some(usage)) => {
                        self.usage_state
                            .stored
                            .lock()
                            .insert(record.id.to_string(), usage.bytes_stored);
                        Some(usage.bytes_stored)
                    }
                    _ => None,
                }
            } else {
                None
            };
            // The first pass after the daemon starts is a baseline for the sprites
            // already there (what their counters held is not this hour's); a sprite
            // seen later started since, and its counters count from zero.
            let first = first_pass && before.status.is_none();
            let counted =
                |now: Option<u64>, then: Option<u64>| if first { 0 } else { grew(now, then) };
            let mut delta = Delta {
                cpu_ms: counted(live.cpu_ns, before.cpu_ns) / 1_000_000,
                memory: live.memory,
                rx: counted(live.traffic.map(|t| t.0), before.traffic.map(|t| t.0)),
                tx: counted(live.traffic.map(|t| t.1), before.traffic.map(|t| t.1)),
                stored,
                status_ms: [0; 3],
            };
            if let Some(previous) = before.status {
                let gap = now.saturating_sub(before.at_ms).min(MAX_GAP_MS);
                delta.status_ms[status_index(previous)] = gap;
            }
            self.usage_state.last.lock().insert(
                record.id.to_string(),
                Last {
                    at_ms: now,
                    status: Some(status),
                    // Kept while asleep: a warm sprite's counters go on after a thaw.
                    cpu_ns: live
                        .cpu_ns
                        .or(before.cpu_ns.filter(|_| status == SpriteStatus::Warm)),
                    traffic: live
                        .traffic
                        .or(before.traffic.filter(|_| status == SpriteStatus::Warm)),
                    stored_hour: if stored.is_some() {
                        Some(hour)
                    } else {
                        before.stored_hour
                    },
                },
            );
            rows.push((record, delta));
        }
        let mut connection = self.db.lock();
        let transaction = connection.transaction()?;
        for (record, delta) in rows {
            transaction.execute(
                "INSERT INTO usage_hourly (sprite_id, org, name, hour, cpu_ms, memory_peak_bytes, memory_sum_bytes, samples, net_rx_bytes, net_tx_bytes, stored_bytes, running_ms, warm_ms, cold_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (sprite_id, hour) DO UPDATE SET
                   cpu_ms = cpu_ms + ?5,
                   memory_peak_bytes = max(memory_peak_bytes, ?6),
                   memory_sum_bytes = memory_sum_bytes + ?6,
                   samples = samples + ?7,
                   net_rx_bytes = net_rx_bytes + ?8,
                   net_tx_bytes = net_tx_bytes + ?9,
                   stored_bytes = coalesce(stored_bytes, ?10),
                   running_ms = running_ms + ?11,
                   warm_ms = warm_ms + ?12,
                   cold_ms = cold_ms + ?13",
                params![
                    record.id.as_str(),
                    record.org,
                    record.name,
                    hour as i64,
                    delta.cpu_ms as i64,
                    delta.memory.unwrap_or(0) as i64,
                    i64::from(delta.memory.is_some()),
                    delta.rx as i64,
                    delta.tx as i64,
                    delta.stored.map(|b| b as i64),
                    delta.status_ms[0] as i64,
                    delta.status_ms[1] as i64,
                    delta.status_ms[2] as i64,
                ],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Every sprite's live figures (for `/metrics`).
    pub async fn sprite_stats(&self) -> Result<Vec<SpriteStats>, CoreError> {
        let stored = self.usage_state.stored.lock().clone();
        Ok(self
            .live_figures()
            .await?
            .into_iter()
            .map(|(record, status, live)| SpriteStats {
                stored_bytes: stored.get(record.id.as_str()).copied(),
                org: record.org,
                name: record.name,
                status,
                cpu_seconds: live.cpu_ns.map(|ns| ns as f64 / 1e9),
                memory_bytes: live.memory,
                traffic: live.traffic,
            })
            .collect())
    }

    /// A sprite's hours since `since_ms`, oldest first.
    pub fn usage_history(
        &self,
        key: &crate::ids::SpriteKey,
        since_ms: u64,
    ) -> Result<Vec<UsageHour>, CoreError> {
        let record = self.record(key)?;
        let sprite_id = record.id.as_str();
        let connection = self.db.lock();
        let mut statement = connection.prepare(
            "SELECT hour, cpu_ms, memory_peak_bytes, memory_sum_bytes, samples, net_rx_bytes, net_tx_bytes, stored_bytes, running_ms, warm_ms, cold_ms
             FROM usage_hourly WHERE sprite_id = ?1 AND hour >= ?2 ORDER BY hour",
        )?;
        let rows = statement.query_map(params![sprite_id, (since_ms / HOUR_MS) as i64], |row| {
            let get = |i: usize| row.get::<_, i64>(i).map(|v| v.max(0) as u64);
            let samples = get(4)?;
            Ok(UsageHour {
                hour: crate::time::ms_to_rfc3339(get(0)? * HOUR_MS),
                cpu_seconds: get(1)? as f64 / 1000.0,
                memory_peak_bytes: get(2)?,
                memory_avg_bytes: get(3)?.checked_div(samples).unwrap_or(0),
                net_rx_bytes: get(5)?,
                net_tx_bytes: get(6)?,
                stored_bytes: row.get::<_, Option<i64>>(7)?.map(|v| v.max(0) as u64),
                running_seconds: get(8)? as f64 / 1000.0,
                warm_seconds: get(9)? as f64 / 1000.0,
                cold_seconds: get(10)? as f64 / 1000.0,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Forgets a destroyed sprite's samples (its rows stay until retention).
    pub(crate) fn forget_usage(&self, sprite_id: &str) {
        self.usage_state.last.lock().remove(sprite_id);
        self.usage_state.stored.lock().remove(sprite_id);
    }
}

/// What a sprite's cgroup and veth pair say now.
fn read_live(
    lifecycle: &crate::lifecycle::Lifecycle,
    record: &SpriteRecord,
    status: SpriteStatus,
    layout: Option<&sprite_sandbox::cgroup::Layout>,
) -> Live {
    if status == SpriteStatus::Cold {
        return Live::default();
    }
    let cgroup = layout.map(|layout| {
        sprite_sandbox::cgroup::SpriteCgroup::new(
            layout.clone(),
            &crate::sandboxes::cgroup_name(&record.id),
        )
    });
    Live {
        cpu_ns: cgroup.as_ref().and_then(|c| c.cpu_usage_ns()),
        memory: cgroup.as_ref().and_then(|c| c.memory_current()),
        traffic: lifecycle
            .network
            .as_ref()
            .and_then(|n| n.traffic(&record.id)),
    }
}

/// Counters read from a sprite that is awake.
#[derive(Debug, Default, Clone, Copy)]
struct Live {
    cpu_ns: Option<u64>,
    memory: Option<u64>,
    traffic: Option<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_that_restart_count_from_zero() {
        assert_eq!(grew(Some(10), Some(4)), 6);
        assert_eq!(grew(Some(3), Some(40)), 3, "restarted");
        assert_eq!(grew(Some(3), None), 3);
        assert_eq!(grew(None, Some(3)), 0);
    }
}
