//! Tasks (API.md, inside a sprite): named leases that keep a sprite awake until they
//! expire or are deleted. Code inside the sprite (an agent mid-job) registers one
//! through `/.sprite/api.sock`. Saved in the database, so a daemon restart keeps them.

use crate::activity::{Activity, ActivityGuard, Reason};
use crate::db::Database;
use crate::error::CoreError;
use crate::time::ms_to_rfc3339;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Longest a task may keep a sprite awake without being renewed.
pub const MAX_TASK: Duration = Duration::from_secs(3600);

/// Most live tasks of one sprite.
pub const MAX_TASKS: usize = 64;

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub expires_at: String,
}

/// A sprite's live tasks: name → (expiry in Unix ms, the guard keeping it awake).
type SpriteTasks = BTreeMap<String, (u64, ActivityGuard)>;

/// The tasks of this host's sprites: a component of its own, with its dependencies
/// named (the sleep state its leases hold, the database that keeps them over a restart).
#[derive(Debug)]
pub struct Tasks {
    /// By sprite id.
    live: Mutex<HashMap<String, SpriteTasks>>,
    activity: Arc<Activity>,
    db: Arc<Database>,
}

/// Checks a task name: 1 to 128 printable characters without `/`.
fn check_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c == '/' || c.is_control()) {
        return Err(CoreError::InvalidName {
            what: "task name",
            value: name.to_string(),
            rule: "use 1 to 128 printable characters without /",
        });
    }
    Ok(())
}

fn check_expire(expire: Duration) -> Result<(), CoreError> {
    if expire.is_zero() || expire > MAX_TASK {
        return Err(CoreError::OutOfRange {
            field: "expire",
            value: format!("{}s", expire.as_secs()),
            allowed: "more than 0 and at most 1h".into(),
        });
    }
    Ok(())
}

impl Tasks {
    pub(crate) fn new(activity: Arc<Activity>, db: Arc<Database>) -> Tasks {
        Tasks {
            live: Mutex::new(HashMap::new()),
            activity,
            db,
        }
    }

    fn task_info(name: &str, expires_ms: u64) -> TaskInfo {
        TaskInfo {
            name: name.to_string(),
            expires_at: ms_to_rfc3339(expires_ms),
        }
    }

    /// The live tasks of a sprite (by id).
    pub fn list(&self, sprite_id: &str) -> Vec<TaskInfo> {
        self.expire();
        self.live
            .lock()
            .get(sprite_id)
            .map(|tasks| {
                tasks
                    .iter()
                    .map(|(name, (expires, _))| Self::task_info(name, *expires))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Registers a task; 409 if one of that name is live.
    pub fn add(
        &self,
        sprite_id: &str,
        name: &str,
        expire: Duration,
    ) -> Result<TaskInfo, CoreError> {
        check_name(name)?;
        check_expire(expire)?;
        self.expire();
        let expires = self.activity.now_ms() + expire.as_millis() as u64;
        {
            let mut live = self.live.lock();
            let tasks = live.entry(sprite_id.to_string()).or_default();
            if tasks.contains_key(name) {
                return Err(CoreError::TaskExists(name.to_string()));
            }
            if tasks.len() >= MAX_TASKS {
                return Err(CoreError::TooManyTasks(MAX_TASKS));
            }
            let (guard, _) = self.activity.hold(sprite_id, Reason::Task);
            tasks.insert(name.to_string(), (expires, guard));
        }
        self.db.save_task(sprite_id, name, expires)?;
        Ok(Self::task_info(name, expires))
    }

    /// Moves a live task's expiry to `expire` from now.
    pub fn renew(
        &self,
        sprite_id: &str,
        name: &str,
        expire: Duration,
    ) -> Result<TaskInfo, CoreError> {
        check_expire(expire)?;
        self.expire();
        let expires = self.activity.now_ms() + expire.as_millis() as u64;
        {
            let mut live = self.live.lock();
            let task = live
                .get_mut(sprite_id)
                .and_then(|tasks| tasks.get_mut(name))
                .ok_or_else(|| CoreError::TaskNotFound(name.to_string()))?;
            task.0 = expires;
        }
        self.db.save_task(sprite_id, name, expires)?;
        Ok(Self::task_info(name, expires))
    }

    pub fn delete(&self, sprite_id: &str, name: &str) -> Result<(), CoreError> {
        let removed = self
            .live
            .lock()
            .get_mut(sprite_id)
            .and_then(|tasks| tasks.remove(name));
        if removed.is_none() {
            return Err(CoreError::TaskNotFound(name.to_string()));
        }
        self.db.delete_task(sprite_id, Some(name))
    }

    /// Drops expired tasks (their guards let the sprite sleep).
    pub(crate) fn expire(&self) {
        let now = self.activity.now_ms();
        let mut expired = Vec::new();
        for (sprite, tasks) in self.live.lock().iter_mut() {
            tasks.retain(|name, (expires, _)| {
                let keep = *expires > now;
                if !keep {
                    expired.push((sprite.clone(), name.clone()));
                }
                keep
            });
        }
        for (sprite, name) in expired {
            let _ = self.db.delete_task(&sprite, Some(&name));
        }
    }

    /// After a daemon restart: the saved tasks that have not expired hold again.
    pub(crate) fn recover(&self) -> Result<(), CoreError> {
        let now = self.activity.now_ms();
        for (sprite, name, expires) in self.db.tasks()? {
            if expires <= now {
                let _ = self.db.delete_task(&sprite, Some(&name));
                continue;
            }
            let (guard, _) = self.activity.hold(&sprite, Reason::Task);
            self.live
                .lock()
                .entry(sprite)
                .or_default()
                .insert(name, (expires, guard));
        }
        Ok(())
    }

    /// Forgets the tasks of a destroyed sprite.
    pub(crate) fn forget(&self, sprite_id: &str) {
        self.live.lock().remove(sprite_id);
        let _ = self.db.delete_task(sprite_id, None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::activity::ManualClock;

    const SPRITE: &str = "sprite-00000000000000000000000000000001";

    fn tasks(dir: &std::path::Path, clock: &Arc<ManualClock>) -> (Tasks, Arc<Activity>) {
        let activity = Activity::new(clock.clone());
        let db = Arc::new(Database::open(&dir.join("control.db")).unwrap());
        (Tasks::new(activity.clone(), db), activity)
    }

    fn holds(activity: &Activity) -> usize {
        activity
            .reasons(SPRITE)
            .iter()
            .filter(|(reason, _)| *reason == Reason::Task)
            .map(|(_, count)| count)
            .sum()
    }

    #[test]
    fn a_task_holds_its_sprite_awake_until_it_expires_and_outlives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let (tasks, activity) = tasks(dir.path(), &clock);
        tasks.add(SPRITE, "build", Duration::from_secs(60)).unwrap();
        tasks
            .add(SPRITE, "tests", Duration::from_secs(600))
            .unwrap();
        assert!(matches!(
            tasks.add(SPRITE, "build", Duration::from_secs(60)),
            Err(CoreError::TaskExists(_))
        ));
        assert!(matches!(
            tasks.add(SPRITE, "a/b", Duration::from_secs(60)),
            Err(CoreError::InvalidName { .. })
        ));
        assert!(matches!(
            tasks.add(SPRITE, "long", MAX_TASK + Duration::from_secs(1)),
            Err(CoreError::OutOfRange { .. })
        ));
        assert_eq!(holds(&activity), 2);

        // A restart (a new component on the same database) holds the sprite again.
        let (after_restart, activity_after) = self::tasks(dir.path(), &clock);
        after_restart.recover().unwrap();
        assert_eq!(holds(&activity_after), 2);
        drop(after_restart);

        clock.advance(Duration::from_secs(61));
        let names: Vec<String> = tasks.list(SPRITE).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["tests"], "the expired task is gone");
        assert_eq!(holds(&activity), 1, "and lets go of the sprite");
        tasks
            .renew(SPRITE, "tests", Duration::from_secs(5))
            .unwrap();
        assert!(matches!(
            tasks.renew(SPRITE, "build", Duration::from_secs(5)),
            Err(CoreError::TaskNotFound(_))
        ));
        tasks.delete(SPRITE, "tests").unwrap();
        assert_eq!(holds(&activity), 0);

        // A destroyed sprite's tasks are forgotten in the database too.
        tasks.add(SPRITE, "again", Duration::from_secs(60)).unwrap();
        tasks.forget(SPRITE);
        let (fresh, fresh_activity) = self::tasks(dir.path(), &clock);
        fresh.recover().unwrap();
        assert_eq!(holds(&fresh_activity), 0);
    }
}
