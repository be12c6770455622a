//! The host's disk never fills because of sprites. Sprite disks are thin: each says it
//! has its full size free (100 GiB by default) whatever the host has left. When the
//! host's free space under the data directory falls below `min_free_disk_mb`, every
//! sprite that wrote since the last look gets a *reserve*: a file in its disk's root
//! (outside what the sprite sees), `fallocate`d over all the space its ext4 has left.
//! Its next allocation then fails inside with a clean ENOSPC from ext4 itself, while
//! sprites that do not write carry on. Unwritten extents cost the host nothing: the
//! reserve is metadata only. When the host has twice the threshold free again, the
//! reserves go. A reserve left by a crash is removed when the disk is next mounted.

use crate::manager::SpriteManager;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The reserve's name in the root of a sprite's disk.
pub const RESERVE_FILE: &str = ".space-reserve";
/// How often the host's free space is looked at.
const GUARD_INTERVAL: Duration = Duration::from_secs(2);

/// What the guard does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    /// Reserve the free space of these sprites (the ones that wrote).
    Reserve(Vec<String>),
    /// Drop every reserve: the host has room again.
    Release,
    Nothing,
}

/// The guard's decision: below `threshold` free bytes, sprites whose disk use grew
/// since the last round (`grew`) get reserves; at twice the threshold, reserves go.
pub fn decide(
    free: u64,
    threshold: u64,
    grew: &[String],
    reserved: &HashSet<String>,
) -> GuardAction {
    if threshold == 0 {
        return if reserved.is_empty() {
            GuardAction::Nothing
        } else {
            GuardAction::Release
        };
    }
    if free < threshold {
        let new: Vec<String> = grew
            .iter()
            .filter(|id| !reserved.contains(*id))
            .cloned()
            .collect();
        return if new.is_empty() {
            GuardAction::Nothing
        } else {
            GuardAction::Reserve(new)
        };
    }
    if free >= threshold.saturating_mul(2) && !reserved.is_empty() {
        return GuardAction::Release;
    }
    GuardAction::Nothing
}

/// Free bytes an unprivileged writer has on the file system of `path`, and used bytes.
pub fn usage(path: &Path) -> Option<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let block = stat.fragment_size().max(1);
    let free = stat.blocks_available().saturating_mul(block);
    let used = stat
        .blocks()
        .saturating_sub(stat.blocks_free())
        .saturating_mul(block);
    Some((free, used))
}

/// Fills the free space of the disk mounted at `disk` with its reserve file.
pub fn reserve(disk: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc_nofollow())
        .open(disk.join(RESERVE_FILE))?;
    let (free, _) = usage(disk).unwrap_or((0, 0));
    let current = file.metadata()?.len();
    // ext4 keeps a little for its metadata: ask for what is free, less 1 MiB.
    let wanted = current + free.saturating_sub(1 << 20);
    if wanted > current {
        nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, wanted as i64)
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Removes the reserve of the disk mounted at `disk` (fine if there is none).
pub fn release(disk: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(disk.join(RESERVE_FILE)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// Whether the guard looks at every awake sprite's disk this round: only while the host
/// has less than twice the threshold free. Further from it nothing can be reserved
/// (see [`decide`]), and a look at a thousand disks every 2 s is work for nothing; from
/// twice the threshold down, it knows who writes by the time the threshold is crossed.
pub fn watches_sprites(free: u64, threshold: u64) -> bool {
    threshold > 0 && free < threshold.saturating_mul(2)
}

impl SpriteManager {
    /// Watches the host's free space for as long as the daemon runs (see the module).
    pub async fn run_space_guard(self: Arc<Self>) {
        let threshold = self.config.min_free_disk_mb.saturating_mul(1 << 20);
        let mut last_used: HashMap<String, u64> = HashMap::new();
        let mut reserved: HashSet<String> = HashSet::new();
        let mut ticker = tokio::time::interval(GUARD_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let data_dir = self.config.data_dir.clone();
            let Ok(Some((free, _))) = tokio::task::spawn_blocking(move || usage(&data_dir)).await
            else {
                continue;
            };
            let grew = if watches_sprites(free, threshold) {
                let awake = self.lifecycle.activity.awake();
                let roots = self.lifecycle.roots.clone();
                // System calls per sprite: off the async workers.
                let Ok(seen) = tokio::task::spawn_blocking(move || {
                    awake
                        .into_iter()
                        .filter_map(|(id, _)| {
                            let disk = roots.disk_mount(&id)?;
                            let (_, used) = usage(&disk)?;
                            Some((id, used))
                        })
                        .collect::<HashMap<String, u64>>()
                })
                .await
                else {
                    continue;
                };
                let grew: Vec<String> = seen
                    .iter()
                    .filter(|(id, used)| last_used.get(*id).is_some_and(|before| *used > before))
                    .map(|(id, _)| id.clone())
                    .collect();
                last_used = seen;
                // The reserve of a sprite that went cold is removed at its disk's next
                // mount.
                reserved.retain(|id| last_used.contains_key(id));
                grew
            } else {
                // Far from the threshold: the next look from close to it starts afresh
                // (and any reserve goes: see `decide`).
                last_used.clear();
                Vec::new()
            };
            match decide(free, threshold, &grew, &reserved) {
                GuardAction::Reserve(ids) => {
                    for id in ids {
                        let Some(disk) = self.lifecycle.roots.disk_mount(&id) else {
                            continue;
                        };
                        tracing::warn!(sprite = %id, free_mb = free >> 20, "the host is low on disk: this sprite's disk is full until it has room again");
                        match tokio::task::spawn_blocking(move || reserve(&disk)).await {
                            Ok(Ok(())) => {
                                reserved.insert(id);
                            }
                            Ok(Err(error)) => {
                                tracing::warn!(sprite = %id, "could not reserve its free space: {error}")
                            }
                            Err(error) => {
                                tracing::warn!(sprite = %id, "could not reserve its free space: {error}")
                            }
                        }
                    }
                }
                GuardAction::Release => {
                    for id in reserved.drain() {
                        if let Some(disk) = self.lifecycle.roots.disk_mount(&id) {
                            if let Err(error) = release(&disk) {
                                tracing::warn!(sprite = %id, "could not release its reserve: {error}");
                            }
                        }
                    }
                    tracing::info!(
                        free_mb = free >> 20,
                        "the host has disk space again: sprite disks are released"
                    );
                }
                GuardAction::Nothing => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_get_reserves_below_the_threshold_and_lose_them_well_above_it() {
        let grew = vec!["a".to_string(), "b".to_string()];
        let none = HashSet::new();
        assert_eq!(decide(100, 50, &grew, &none), GuardAction::Nothing);
        assert_eq!(
            decide(40, 50, &grew, &none),
            GuardAction::Reserve(grew.clone())
        );
        let held: HashSet<String> = ["a".to_string()].into();
        assert_eq!(
            decide(40, 50, &grew, &held),
            GuardAction::Reserve(vec!["b".to_string()])
        );
        assert_eq!(decide(40, 50, &[], &held), GuardAction::Nothing);
        // Between the threshold and twice it: reserves stay (no flapping).
        assert_eq!(decide(70, 50, &[], &held), GuardAction::Nothing);
        assert_eq!(decide(100, 50, &[], &held), GuardAction::Release);
        assert_eq!(decide(0, 0, &grew, &held), GuardAction::Release);
        assert_eq!(decide(0, 0, &grew, &none), GuardAction::Nothing);
    }

    #[test]
    fn sprites_are_looked_at_only_near_the_threshold() {
        assert!(!watches_sprites(100, 0), "no threshold, no guard");
        assert!(!watches_sprites(100, 50));
        assert!(watches_sprites(99, 50));
        assert!(watches_sprites(10, 50));
        assert!(
            watches_sprites(u64::MAX - 1, u64::MAX),
            "twice the threshold saturates"
        );
    }

    #[test]
    fn a_reserve_takes_the_free_space_and_goes_again() {
        // On whatever file system the temp dir is: the reserve is a sparse-free file.
        let dir = tempfile::tempdir().expect("dir");
        let (free_before, _) = usage(dir.path()).expect("usage");
        // Only where it is cheap: a test must not fill a big disk.
        if free_before > 4 << 30 {
            return;
        }
        reserve(dir.path()).expect("reserve");
        let (free, _) = usage(dir.path()).expect("usage");
        assert!(free < 4 << 20, "{free} bytes still free");
        release(dir.path()).expect("release");
        release(dir.path()).expect("twice");
    }
}
