//! Tasks (API.md, inside a sprite): named leases that keep a sprite awake until they
//! expire or are deleted. Code inside the sprite (an agent mid-job) registers one
//! through `/.sprite/api.sock`. Saved in the database, so a daemon restart keeps them.

use crate::error::CoreError;
use crate::lifecycle::{ActivityGuard, Reason};
use crate::manager::{ms_to_rfc3339, SpriteManager};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
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

#[derive(Debug, Default)]
pub(crate) struct Tasks {
    /// By sprite id.
    live: Mutex<HashMap<String, SpriteTasks>>,
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

impl SpriteManager {
    fn task_info(name: &str, expires_ms: u64) -> TaskInfo {
        TaskInfo {
            name: name.to_string(),
            expires_at: ms_to_rfc3339(expires_ms),
        }
    }

    /// The live tasks of a sprite (by id).
    pub fn tasks(&self, sprite_id: &str) -> Vec<TaskInfo> {
        self.expire_tasks();
        self.tasks
            .live
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
    pub fn add_task(
        &self,
        sprite_id: &str,
        name: &str,
        expire: Duration,
    ) -> Result<TaskInfo, CoreError> {
        check_name(name)?;
        check_expire(expire)?;
        self.expire_tasks();
        let expires = self.activity.now_ms() + expire.as_millis() as u64;
        {
            let mut live = self.tasks.live.lock();
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
    pub fn renew_task(
        &self,
        sprite_id: &str,
        name: &str,
        expire: Duration,
    ) -> Result<TaskInfo, CoreError> {
        check_expire(expire)?;
        self.expire_tasks();
        let expires = self.activity.now_ms() + expire.as_millis() as u64;
        {
            let mut live = self.tasks.live.lock();
            let task = live
                .get_mut(sprite_id)
                .and_then(|tasks| tasks.get_mut(name))
                .ok_or_else(|| CoreError::TaskNotFound(name.to_string()))?;
            task.0 = expires;
        }
        self.db.save_task(sprite_id, name, expires)?;
        Ok(Self::task_info(name, expires))
    }

    pub fn delete_task(&self, sprite_id: &str, name: &str) -> Result<(), CoreError> {
        let removed = self
            .tasks
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
    pub(crate) fn expire_tasks(&self) {
        let now = self.activity.now_ms();
        let mut expired = Vec::new();
        for (sprite, tasks) in self.tasks.live.lock().iter_mut() {
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
    pub(crate) fn recover_tasks(&self) -> Result<(), CoreError> {
        let now = self.activity.now_ms();
        for (sprite, name, expires) in self.db.tasks()? {
            if expires <= now {
                let _ = self.db.delete_task(&sprite, Some(&name));
                continue;
            }
            let (guard, _) = self.activity.hold(&sprite, Reason::Task);
            self.tasks
                .live
                .lock()
                .entry(sprite)
                .or_default()
                .insert(name, (expires, guard));
        }
        Ok(())
    }

    /// Forgets the tasks of a destroyed sprite.
    pub(crate) fn forget_tasks(&self, sprite_id: &str) {
        self.tasks.live.lock().remove(sprite_id);
        let _ = self.db.delete_task(sprite_id, None);
    }
}
