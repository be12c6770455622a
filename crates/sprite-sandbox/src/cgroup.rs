//! A sprite's cgroup: memory, pids and cpu limits and a way to kill everything in it.
//!
//! Works on cgroup v2 hosts (one unified hierarchy with the controllers enabled) and on
//! v1 hosts (one hierarchy per controller). On a hybrid host, like one with v1
//! controllers plus an empty v2 tree at `/sys/fs/cgroup/unified`, the v1 controllers are
//! used. Every sprite's cgroup is `<hierarchy>/sprites/<sprite id>`.

use crate::spec::Limits;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PARENT: &str = "sprites";
/// `cpuacct` counts the CPU time usage history reads; where it shares a hierarchy
/// with `cpu` (`cpu,cpuacct`), that one directory serves both.
const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy under {0}")]
    NoHierarchy(PathBuf),
    #[error("create cgroup {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cgroup {0} still has processes after kill")]
    NotEmpty(PathBuf),
    #[error("remove cgroup {0}")]
    Remove(PathBuf, #[source] std::io::Error),
    #[error("cgroup {0} has no freezer")]
    NoFreezer(PathBuf),
    #[error("cgroup {0} did not freeze within {1:?}")]
    FreezeTimeout(PathBuf, Duration),
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy at this path with memory, pids and cpu available.
    V2(PathBuf),
    /// Per-controller hierarchies: (controller, mount point).
    V1(Vec<(String, PathBuf)>),
}

impl Layout {
    /// Looks at `root` (normally `/sys/fs/cgroup`) to find the layout.
    pub fn detect(root: &Path) -> Result<Layout, CgroupError> {
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
        if has("memory") && has("pids") {
            return Ok(Layout::V2(root.to_path_buf()));
        }
        let mut v1: Vec<(String, PathBuf)> = Vec::new();
        let mut seen: Vec<PathBuf> = Vec::new();
        for controller in V1_CONTROLLERS {
            let path = root.join(controller);
            if !path.join("cgroup.procs").exists() {
                continue;
            }
            // Two names of one hierarchy (symlinks to `cpu,cpuacct`): one directory.
            let real = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if seen.contains(&real) {
                continue;
            }
            seen.push(real);
            v1.push((controller.to_string(), path));
        }
        if v1.iter().any(|(c, _)| c == "memory") && v1.iter().any(|(c, _)| c == "pids") {
            return Ok(Layout::V1(v1));
        }
        Err(CgroupError::NoHierarchy(root.to_path_buf()))
    }
}

/// The cgroup (one directory per hierarchy) of one sprite.
#[derive(Debug, Clone)]
pub struct SpriteCgroup {
    layout: Layout,
    name: String,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::Create(path.to_path_buf(), e)),
    }
}

/// Creates `parent/name`, recreating `parent` if the last sprite's removal raced us.
fn create_nested(parent: &Path, name: &str) -> Result<(), CgroupError> {
    let dir = parent.join(name);
    for _ in 0..3 {
        create_dir(parent)?;
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(CgroupError::Create(dir, e)),
        }
    }
    Err(CgroupError::Create(
        dir,
        std::io::Error::from(ErrorKind::NotFound),
    ))
}

impl SpriteCgroup {
    pub fn new(layout: Layout, sprite_id: &str) -> Self {
        SpriteCgroup {
            layout,
            name: sprite_id.to_string(),
        }
    }

    /// The directories of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2(root) => vec![root.join(PARENT).join(&self.name)],
            Layout::V1(list) => list
                .iter()
                .map(|(_, mount)| mount.join(PARENT).join(&self.name))
                .collect(),
        }
    }

    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1(list) => list
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, m)| m.join(PARENT).join(&self.name)),
            Layout::V2(_) => None,
        }
    }

    /// Creates the cgroup and sets its limits.
    pub fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2(root) => {
                let parent = root.join(PARENT);
                // Enabling controllers at the root can fail when they already are; the
                // write to the parent below is what matters.
                let _ = write(&root.join("cgroup.subtree_control"), "+memory +pids +cpu");
                create_dir(&parent)?;
                write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
                create_nested(&parent, &self.name)?;
            }
            Layout::V1(list) => {
                for (_, mount) in list {
                    create_nested(&mount.join(PARENT), &self.name)?;
                }
            }
        }
        self.set_limits(limits)
    }

    /// Sets the limits of an existing cgroup (at creation, and live for a running
    /// sprite). Lowering memory below what the sprite uses makes the kernel reclaim
    /// first and fails if it cannot.
    pub fn set_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2(root) => {
                let dir = root.join(PARENT).join(&self.name);
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), "0")?;
                }
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                write(
                    &dir.join("cpu.max"),
                    &format!("{} 100000", limits.cpu_millis * 100),
                )?;
            }
            Layout::V1(_) => {
                if let Some(dir) = self.v1_dir("memory") {
                    let memory = dir.join("memory.limit_in_bytes");
                    let swap = dir.join("memory.memsw.limit_in_bytes");
                    let bytes = limits.memory_bytes.to_string();
                    // memory + swap may never be below memory: raising takes the
                    // combined limit first, lowering the memory limit first.
                    let first = write(&memory, &bytes);
                    match (first, swap.exists()) {
                        (Ok(()), true) => {
                            let _ = write(&swap, &bytes);
                        }
                        (Err(_), true) => {
                            write(&swap, &bytes)?;
                            write(&memory, &bytes)?;
                        }
                        (result, false) => result?,
                    }
                }
                if let Some(dir) = self.v1_dir("pids") {
                    write(&dir.join("pids.max"), &limits.pids.to_string())?;
                }
                if let Some(dir) = self.v1_dir("cpu") {
                    write(&dir.join("cpu.cfs_period_us"), "100000")?;
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        &(limits.cpu_millis * 100).to_string(),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Moves a process into the cgroup (all hierarchies).
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Pids in the cgroup (from the memory or unified hierarchy).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = match &self.layout {
            Layout::V2(_) => self.dirs().remove(0),
            Layout::V1(_) => self.v1_dir("pids").unwrap_or_else(|| self.dirs().remove(0)),
        };
        let path = dir.join("cgroup.procs");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(CgroupError::Read(path, e)),
        }
    }

    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }

    /// Kills every process in the cgroup and waits until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        if let Layout::V2(_) = &self.layout {
            let kill = self.dirs()[0].join("cgroup.kill");
            if kill.exists() {
                let _ = write(&kill, "1");
            }
        }
        // Freezing first stops a fork bomb from outrunning the kill loop.
        let freezer = self.v1_dir("freezer");
        if let Some(dir) = &freezer {
            let _ = write(&dir.join("freezer.state"), "FROZEN");
        }
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let Some(dir) = &freezer {
                // SIGKILL is delivered only once the task thaws.
                let _ = write(&dir.join("freezer.state"), "THAWED");
            }
            if Instant::now() > deadline {
                return Err(CgroupError::NotEmpty(self.dirs().remove(0)));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Removes the cgroup directories (they must be empty of processes).
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            let mut tries = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    // A just-killed task can keep the directory busy for a moment.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(CgroupError::Remove(dir, e)),
                }
            }
            // The shared parent goes with the last sprite, so an idle host holds no
            // cgroup of ours; it fails harmlessly while other sprites exist.
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    /// The file that freezes the cgroup, and what to write to freeze and thaw it.
    fn freezer(&self) -> Result<(PathBuf, &'static str, &'static str), CgroupError> {
        match &self.layout {
            Layout::V2(_) => Ok((self.dirs()[0].join("cgroup.freeze"), "1", "0")),
            Layout::V1(_) => self
                .v1_dir("freezer")
                .map(|dir| (dir.join("freezer.state"), "FROZEN", "THAWED"))
                .ok_or_else(|| CgroupError::NoFreezer(self.dirs().remove(0))),
        }
    }

    /// Freezes every process of the cgroup (memory kept, no CPU) and waits until the
    /// kernel reports all of them frozen.
    pub fn freeze(&self, timeout: Duration) -> Result<(), CgroupError> {
        let (file, frozen, _) = self.freezer()?;
        write(&file, frozen)?;
        let deadline = Instant::now() + timeout;
        let mut polls = 0u32;
        while !self.is_frozen() {
            if Instant::now() > deadline {
                let _ = self.thaw();
                return Err(CgroupError::FreezeTimeout(file, timeout));
            }
            std::thread::sleep(Duration::from_micros(200));
            polls += 1;
            // The v1 freezer can stay FREEZING when a task forked while it froze (the
            // child was missed): writing FROZEN again retries the ones left.
            if polls.is_multiple_of(50) {
                write(&file, frozen)?;
            }
        }
        Ok(())
    }

    /// Lets the cgroup's processes run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let (file, _, thawed) = self.freezer()?;
        write(&file, thawed)
    }

    /// Whether every process of the cgroup is frozen (false when it does not exist).
    pub fn is_frozen(&self) -> bool {
        match &self.layout {
            Layout::V2(_) => fs::read_to_string(self.dirs()[0].join("cgroup.events"))
                .is_ok_and(|events| events.lines().any(|line| line.trim() == "frozen 1")),
            Layout::V1(_) => self.v1_dir("freezer").is_some_and(|dir| {
                fs::read_to_string(dir.join("freezer.state"))
                    .is_ok_and(|state| state.trim() == "FROZEN")
            }),
        }
    }

    /// Host pid of the sprite's PID 1: the process of the cgroup that is pid 1 in its
    /// own pid namespace.
    pub fn init_pid(&self) -> Result<Option<u32>, CgroupError> {
        for pid in self.pids()? {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let is_init = status
                .lines()
                .find_map(|line| line.strip_prefix("NSpid:"))
                .is_some_and(|ids| ids.split_whitespace().last() == Some("1"));
            if is_init {
                return Ok(u32::try_from(pid).ok());
            }
        }
        Ok(None)
    }

    /// CPU time the sprite's processes used since the cgroup was made, in nanoseconds.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        match &self.layout {
            Layout::V2(_) => {
                let stat = fs::read_to_string(self.dirs()[0].join("cpu.stat")).ok()?;
                stat.lines()
                    .find_map(|line| line.strip_prefix("usage_usec "))
                    .and_then(|usec| usec.trim().parse::<u64>().ok())
                    .map(|usec| usec.saturating_mul(1000))
            }
            Layout::V1(_) => ["cpuacct", "cpu"]
                .iter()
                .filter_map(|controller| self.v1_dir(controller))
                .find_map(|dir| fs::read_to_string(dir.join("cpuacct.usage")).ok())?
                .trim()
                .parse()
                .ok(),
        }
    }

    /// Memory in use by the sprite, in bytes.
    pub fn memory_current(&self) -> Option<u64> {
        let path = match &self.layout {
            Layout::V2(_) => self.dirs()[0].join("memory.current"),
            Layout::V1(_) => self.v1_dir("memory")?.join("memory.usage_in_bytes"),
        };
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_v2_with_controllers() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids io").expect("write");
        assert_eq!(
            Layout::detect(dir.path()).expect("layout"),
            Layout::V2(dir.path().into())
        );
    }

    #[test]
    fn detects_hybrid_as_v1() {
        let dir = tempfile::tempdir().expect("tempdir");
        for c in ["memory", "pids", "cpu", "freezer"] {
            fs::create_dir(dir.path().join(c)).expect("mkdir");
            fs::write(dir.path().join(c).join("cgroup.procs"), "").expect("write");
        }
        fs::create_dir(dir.path().join("unified")).expect("mkdir");
        fs::write(dir.path().join("cgroup.controllers"), "hugetlb").expect("write");
        match Layout::detect(dir.path()).expect("layout") {
            Layout::V1(list) => assert_eq!(list.len(), 4),
            other => panic!("expected v1, got {other:?}"),
        }
    }

    #[test]
    fn no_hierarchy_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Layout::detect(dir.path()),
            Err(CgroupError::NoHierarchy(_))
        ));
    }

    #[test]
    fn v1_limits_land_in_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut list = Vec::new();
        for c in ["memory", "pids", "cpu"] {
            fs::create_dir(dir.path().join(c)).expect("mkdir");
            list.push((c.to_string(), dir.path().join(c)));
        }
        let cgroup = SpriteCgroup::new(Layout::V1(list), "s1");
        cgroup
            .create(&Limits {
                memory_bytes: 1 << 20,
                pids: 7,
                cpu_millis: 500,
            })
            .expect("create");
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).expect("read");
        assert_eq!(read("memory/sprites/s1/memory.limit_in_bytes"), "1048576");
        assert_eq!(read("pids/sprites/s1/pids.max"), "7");
        assert_eq!(read("cpu/sprites/s1/cpu.cfs_quota_us"), "50000");
    }
}
