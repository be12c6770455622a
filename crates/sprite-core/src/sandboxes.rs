//! The seam between the lifecycle (what to do with a sprite) and the kernel (cgroups,
//! namespaces, sprite-init's socket): [`Sandboxes`] is every host operation the start,
//! wake, pool, recovery and teardown sequences make on a sprite's processes.
//! [`SystemSandboxes`] does them for real; [`RecordingSandboxes`] (tests) only writes
//! them into a [`Journal`], so those sequences are unit-tested without root, the way
//! `sprite_sandbox::net::RecordingNetHost` tests network attach.

use crate::error::CoreError;
use async_trait::async_trait;
use parking_lot::Mutex;
use sprite_sandbox::cgroup::{Layout, SpriteCgroup};
use sprite_sandbox::client::InitClient;
use sprite_sandbox::spec::{Limits, SandboxSpec};
use sprite_sandbox::SandboxError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a sprite-init has to answer a ping.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a cgroup to freeze.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a sprite's processes to be gone after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a sprite's processes stand, as its cgroup says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupState {
    /// No cgroup: nothing runs.
    Absent,
    /// Processes may run.
    Live,
    /// Every process is frozen (warm sleep, or a pooled sprite).
    Frozen,
}

/// The host operations on sprites' processes.
#[async_trait]
pub trait Sandboxes: Send + Sync + std::fmt::Debug {
    /// Where the sprite's cgroup stands.
    fn state(&self, sprite_id: &str) -> Result<CgroupState, CoreError>;
    /// Thaws a frozen sprite.
    fn thaw(&self, name: &str, sprite_id: &str) -> Result<(), CoreError>;
    /// Freezes every process of the sprite, waiting until all are frozen.
    async fn freeze(&self, name: &str, sprite_id: &str) -> Result<(), CoreError>;
    /// Kills every process of the sprite and removes its cgroup.
    async fn kill(&self, name: &str, sprite_id: &str) -> Result<(), CoreError>;
    /// Stops the sprite as for cold sleep: SIGTERM to every process but its PID 1,
    /// `grace` for them to exit, then [`Sandboxes::kill`].
    async fn stop(&self, name: &str, sprite_id: &str, grace: Duration) -> Result<(), CoreError>;
    /// Whether the sprite's PID 1 answers.
    async fn ping(&self, sprite_id: &str) -> bool;
    /// Starts the sprite's PID 1 in new namespaces (`spec`).
    async fn launch(&self, name: &str, spec: &SandboxSpec) -> Result<(), CoreError>;
    /// A pooled sprite becomes `name`'s: its cgroup gets `limits`, its UTS namespace the
    /// hostname (before it is thawed).
    fn reshape(&self, name: &str, sprite_id: &str, limits: &Limits) -> Result<(), CoreError>;
    /// Tells the sprite's PID 1 its new name (after it is thawed).
    async fn rename(&self, name: &str, sprite_id: &str) -> Result<(), CoreError>;
}

/// The real thing: cgroups under /sys/fs/cgroup, sprite-init's socket in the sprite's
/// state directory, `sprite init` launched from the daemon's binary.
#[derive(Debug)]
pub struct SystemSandboxes {
    /// `<data>/sprites`: each sprite's state directory (its `init.sock`).
    state_root: PathBuf,
    /// Forks the launcher of each start (no process is spawned on the start path).
    launcher: sprite_sandbox::LaunchServer,
}

impl SystemSandboxes {
    /// `launch_socket`: where the launch server (started here) listens.
    pub fn new(state_root: PathBuf, executable: PathBuf, launch_socket: &Path) -> SystemSandboxes {
        SystemSandboxes {
            state_root,
            launcher: sprite_sandbox::LaunchServer::start(&executable, launch_socket),
        }
    }

    fn cgroup(&self, sprite_id: &str) -> Result<SpriteCgroup, CoreError> {
        sprite_cgroup(sprite_id)
    }

    fn client(&self, sprite_id: &str) -> InitClient {
        InitClient::new(self.state_root.join(sprite_id).join("init.sock"))
    }
}

/// What this daemon's cgroup names carry after the sprite id (a cluster host's id):
/// empty on a single host, so a sprite's cgroup is named by its id alone.
static CGROUP_SCOPE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this daemon's cgroups `<sprite id>.<scope>` from now on (a host of a cluster:
/// several hosts on one machine never share a sprite's cgroup). Set once, at start.
pub fn set_cgroup_scope(scope: &str) {
    let _ = CGROUP_SCOPE.set(scope.to_string());
}

/// The cgroup name of a sprite on this host.
pub fn cgroup_name(sprite_id: &str) -> String {
    match CGROUP_SCOPE.get() {
        Some(scope) if !scope.is_empty() => format!("{sprite_id}.{scope}"),
        _ => sprite_id.to_string(),
    }
}

/// The cgroup of a sprite on this host (its layout, v1 or v2, detected).
pub(crate) fn sprite_cgroup(sprite_id: &str) -> Result<SpriteCgroup, CoreError> {
    let layout = Layout::detect(Path::new("/sys/fs/cgroup")).map_err(|e| CoreError::Sandbox {
        sprite: sprite_id.into(),
        source: SandboxError::Cgroup(e),
    })?;
    Ok(SpriteCgroup::new(layout, &cgroup_name(sprite_id)))
}

fn cgroup_error(name: &str) -> impl FnOnce(sprite_sandbox::cgroup::CgroupError) -> CoreError + '_ {
    move |e| CoreError::Sandbox {
        sprite: name.to_string(),
        source: SandboxError::Cgroup(e),
    }
}

#[async_trait]
impl Sandboxes for SystemSandboxes {
    fn state(&self, sprite_id: &str) -> Result<CgroupState, CoreError> {
        let cgroup = self.cgroup(sprite_id)?;
        Ok(if !cgroup.exists() {
            CgroupState::Absent
        } else if cgroup.is_frozen() {
            CgroupState::Frozen
        } else {
            CgroupState::Live
        })
    }

    fn thaw(&self, name: &str, sprite_id: &str) -> Result<(), CoreError> {
        self.cgroup(sprite_id)?.thaw().map_err(cgroup_error(name))
    }

    async fn freeze(&self, name: &str, sprite_id: &str) -> Result<(), CoreError> {
        let cgroup = self.cgroup(sprite_id)?;
        tokio::task::spawn_blocking(move || cgroup.freeze(FREEZE_TIMEOUT))
            .await
            .map_err(|e| CoreError::Task("freeze", e))?
            .map_err(cgroup_error(name))
    }

    async fn kill(&self, name: &str, sprite_id: &str) -> Result<(), CoreError> {
        let cgroup = self.cgroup(sprite_id)?;
        tokio::task::spawn_blocking(move || {
            cgroup.kill_all(KILL_TIMEOUT).and_then(|()| cgroup.remove())
        })
        .await
        .map_err(|e| CoreError::Task("cgroup cleanup", e))?
        .map_err(cgroup_error(name))
    }

    async fn stop(&self, name: &str, sprite_id: &str, grace: Duration) -> Result<(), CoreError> {
        let cgroup = &self.cgroup(sprite_id)?;
        if cgroup.is_frozen() {
            cgroup.thaw().map_err(cgroup_error(name))?;
        }
        // Everything but sprite-init gets SIGTERM and the grace period to exit (PID 1 of
        // a pid namespace ignores SIGTERM; it goes with the SIGKILL of `kill`).
        let init = cgroup
            .init_pid()
            .map_err(cgroup_error(name))?
            .map(|pid| pid as i32);
        let others = || -> Result<Vec<i32>, CoreError> {
            Ok(cgroup
                .pids()
                .map_err(cgroup_error(name))?
                .into_iter()
                .filter(|pid| Some(*pid) != init)
                .collect())
        };
        for pid in others()? {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !others()?.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill(name, sprite_id).await
    }

    async fn ping(&self, sprite_id: &str) -> bool {
        self.client(sprite_id).ping(PING_TIMEOUT).await.is_ok()
    }

    async fn launch(&self, name: &str, spec: &SandboxSpec) -> Result<(), CoreError> {
        self.launcher
            .launch(spec)
            .await
            .map(|_| ())
            .map_err(|source| CoreError::Sandbox {
                sprite: name.to_string(),
                source,
            })
    }

    fn reshape(&self, name: &str, sprite_id: &str, limits: &Limits) -> Result<(), CoreError> {
        let cgroup = self.cgroup(sprite_id)?;
        cgroup.create(limits).map_err(cgroup_error(name))?;
        let init = cgroup
            .init_pid()
            .map_err(cgroup_error(name))?
            .ok_or_else(|| CoreError::StartTimeout(name.to_string()))?;
        sprite_sandbox::set_hostname(init, name).map_err(|source| CoreError::Sandbox {
            sprite: name.to_string(),
            source,
        })
    }

    async fn rename(&self, name: &str, sprite_id: &str) -> Result<(), CoreError> {
        self.client(sprite_id)
            .rename(name)
            .await
            .map_err(|source| CoreError::Sandbox {
                sprite: name.to_string(),
                source,
            })
    }
}

/// One line per host operation, in order, shared by the fakes of one test (so the
/// order across sandbox and storage operations can be checked).
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    pub fn note(&self, line: String) {
        self.0.lock().push(line);
    }

    /// What was noted so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().clone()
    }

    /// The lines that start with one of `prefixes`, in order.
    pub fn only(&self, prefixes: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| prefixes.iter().any(|p| line.starts_with(p)))
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().clear();
    }
}

/// A fake: keeps each sprite's cgroup state in memory and notes every operation.
/// `fail_launches` makes launches fail (a sprite that cannot start).
#[derive(Debug, Default)]
pub struct RecordingSandboxes {
    pub journal: Journal,
    states: Mutex<HashMap<String, CgroupState>>,
    /// Sprites whose PID 1 answers.
    alive: Mutex<std::collections::HashSet<String>>,
    pub fail_launches: std::sync::atomic::AtomicBool,
}

impl RecordingSandboxes {
    pub fn new(journal: Journal) -> RecordingSandboxes {
        RecordingSandboxes {
            journal,
            ..Default::default()
        }
    }

    /// Makes the sprite look as if it ran (a daemon restart finds it alive) or not.
    pub fn set_running(&self, sprite_id: &str, running: bool) {
        if running {
            self.states
                .lock()
                .insert(sprite_id.to_string(), CgroupState::Live);
            self.alive.lock().insert(sprite_id.to_string());
        } else {
            self.alive.lock().remove(sprite_id);
        }
    }
}

#[async_trait]
impl Sandboxes for RecordingSandboxes {
    fn state(&self, sprite_id: &str) -> Result<CgroupState, CoreError> {
        Ok(self
            .states
            .lock()
            .get(sprite_id)
            .copied()
            .unwrap_or(CgroupState::Absent))
    }

    fn thaw(&self, _name: &str, sprite_id: &str) -> Result<(), CoreError> {
        self.journal.note(format!("thaw {sprite_id}"));
        self.states
            .lock()
            .insert(sprite_id.to_string(), CgroupState::Live);
        Ok(())
    }

    async fn freeze(&self, _name: &str, sprite_id: &str) -> Result<(), CoreError> {
        self.journal.note(format!("freeze {sprite_id}"));
        self.states
            .lock()
            .insert(sprite_id.to_string(), CgroupState::Frozen);
        Ok(())
    }

    async fn kill(&self, _name: &str, sprite_id: &str) -> Result<(), CoreError> {
        self.journal.note(format!("kill {sprite_id}"));
        self.states.lock().remove(sprite_id);
        self.alive.lock().remove(sprite_id);
        Ok(())
    }

    async fn stop(&self, _name: &str, sprite_id: &str, _grace: Duration) -> Result<(), CoreError> {
        self.journal.note(format!("stop {sprite_id}"));
        self.states.lock().remove(sprite_id);
        self.alive.lock().remove(sprite_id);
        Ok(())
    }

    async fn ping(&self, sprite_id: &str) -> bool {
        self.states.lock().get(sprite_id) == Some(&CgroupState::Live)
            && self.alive.lock().contains(sprite_id)
    }

    async fn launch(&self, name: &str, spec: &SandboxSpec) -> Result<(), CoreError> {
        self.journal.note(format!("launch {}", spec.sprite_id));
        if self
            .fail_launches
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(CoreError::StartTimeout(name.to_string()));
        }
        self.set_running(&spec.sprite_id, true);
        Ok(())
    }

    fn reshape(&self, name: &str, sprite_id: &str, _limits: &Limits) -> Result<(), CoreError> {
        self.journal.note(format!("reshape {sprite_id} {name}"));
        Ok(())
    }

    async fn rename(&self, name: &str, sprite_id: &str) -> Result<(), CoreError> {
        self.journal.note(format!("rename {sprite_id} {name}"));
        Ok(())
    }
}
