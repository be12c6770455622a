//! How a sprite's PID 1 builds its root, as data: [`plan`] turns a [`SandboxSpec`] into
//! the ordered [`Step`]s (attach the layers, mount the overlay, /proc, /sys, /dev and
//! the rest, move into the root), and `launch.rs` applies them one by one. Keeping the
//! order in a plan lets unit tests check it without root or namespaces: the overlay
//! before anything under it, /dev before its devices, nothing but the views left to
//! propagate from the host, the move into the root (or pivot_root) last.

use crate::spec::SandboxSpec;
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// One of the detached mounts the launcher made for PID 1 (see `LayerMounts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    /// The image's layers, uppermost first.
    Lower(usize),
    /// The sprite's own disk (`upper/`, `work/`, `home/`).
    Disk,
    /// The directory of the in-sprite API's socket.
    Run,
    /// The read-only checkpoint views.
    Views,
}

/// One step of building the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Sets the propagation of every mount (`MS_PRIVATE` or `MS_SLAVE`), recursively
    /// from `target`.
    Propagation { target: PathBuf, flags: MsFlags },
    /// Changes the working directory (relative names below are from it).
    Chdir(PathBuf),
    /// Attaches one of the launcher's detached mounts.
    Attach { layer: Layer, target: PathBuf },
    /// Mounts a filesystem: `fstype` from `source` with `flags` and `data`.
    Mount {
        what: &'static str,
        source: String,
        target: PathBuf,
        fstype: String,
        flags: MsFlags,
        data: Option<String>,
    },
    /// Binds `source` on `target`.
    Bind { source: PathBuf, target: PathBuf },
    /// Makes a directory unless it is there.
    Dir(PathBuf),
    /// Makes an empty file (a bind target).
    File(PathBuf),
    /// Makes a symbolic link `link` → `target` (`keep`: unless `link` exists).
    Symlink {
        target: PathBuf,
        link: PathBuf,
        keep: bool,
    },
    /// `pivot_root(".", ".")` in the new root, then the old root detached and `/`
    /// entered.
    PivotRoot,
    /// Detaches the mount at this path (lazily: it goes when nothing uses it).
    Detach(PathBuf),
    /// From inside the new root (the working directory): moves it onto `/` and
    /// chroots into it, as `switch_root` does. Only on a seed namespace's stub, which
    /// holds nothing of the host (see [`SandboxSpec::mount_namespace`]).
    MoveRoot,
}

/// Where PID 1 builds the root in a seed namespace's stub: a tmpfs of its own on it.
pub(crate) const WORKSPACE: &str = "/work";

/// Device nodes of the host bound into the sprite's /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Mounts a special filesystem (`proc`, `sysfs`, `tmpfs`, `devpts`) whose source is
/// its type.
fn special(
    what: &'static str,
    fstype: &str,
    target: PathBuf,
    flags: MsFlags,
    data: Option<&str>,
) -> Step {
    Step::Mount {
        what,
        source: fstype.to_string(),
        target,
        fstype: fstype.to_string(),
        flags,
        data: data.map(String::from),
    }
}

/// Where lower layer `index` is attached in the workspace while PID 1 builds
/// its root (relative names: the overlay's options, which the sprite can read in its
/// mountinfo, name no host path).
pub(crate) fn lower_name(index: usize) -> String {
    format!("lower{index}")
}

/// The steps of building `spec`'s root, in order. `lowers` is how many lower layers
/// the launcher attached; `run` and `views` whether it made those mounts.
pub(crate) fn plan(spec: &SandboxSpec, lowers: usize, run: bool, views: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    // Nothing mounted here shows on the host. With checkpoint views, mounts the host
    // makes under the views directory must still reach the sprite: slave, not private
    // (the host root is detached after pivot_root, so only the views bind receives).
    steps.push(Step::Propagation {
        target: PathBuf::from("/"),
        flags: if views {
            MsFlags::MS_SLAVE
        } else {
            MsFlags::MS_PRIVATE
        },
    });
    // The root is built in a directory of PID 1's own: a tmpfs on the stub's `/work`
    // (a seed namespace), or the state directory the launcher made.
    let stub = spec.mount_namespace.is_some();
    let workspace = if stub {
        let workspace = PathBuf::from(WORKSPACE);
        steps.push(special(
            "the workspace",
            "tmpfs",
            workspace.clone(),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=700,size=64k,nr_inodes=64"),
        ));
        workspace
    } else {
        spec.state_dir.clone()
    };
    // Relative names from here on: the overlay keeps its options as given.
    steps.push(Step::Chdir(workspace.clone()));
    let lower: Vec<String> = (0..lowers).map(lower_name).collect();
    for name in lower.iter().map(String::as_str).chain(["disk", "root"]) {
        steps.push(Step::Dir(PathBuf::from(name)));
    }
    for (index, name) in lower.iter().enumerate() {
        steps.push(Step::Attach {
            layer: Layer::Lower(index),
            target: PathBuf::from(name),
        });
    }
    steps.push(Step::Attach {
        layer: Layer::Disk,
        target: PathBuf::from("disk"),
    });
    steps.push(Step::Mount {
        what: "the overlay root",
        source: "overlay".into(),
        target: PathBuf::from("root"),
        fstype: "overlay".into(),
        flags: MsFlags::empty(),
        data: Some(format!(
            "lowerdir={},upperdir=disk/upper,workdir=disk/work,userxattr",
            lower.join(":")
        )),
    });
    let root = workspace.join("root");
    let at = |p: &str| root.join(p);
    for dir in ["proc", "sys", "dev", "tmp", "home", ".sprite"] {
        steps.push(Step::Dir(at(dir)));
    }
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    steps.push(special(
        "/proc",
        "proc",
        at("proc"),
        nosuid_nodev_noexec,
        None,
    ));
    steps.push(special(
        "/sys",
        "sysfs",
        at("sys"),
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None,
    ));
    steps.push(special(
        "/dev",
        "tmpfs",
        at("dev"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    ));
    for device in DEVICES {
        steps.push(Step::File(at("dev").join(device)));
        steps.push(Step::Bind {
            source: Path::new("/dev").join(device),
            target: at("dev").join(device),
        });
    }
    for dir in ["pts", "shm"] {
        steps.push(Step::Dir(at("dev").join(dir)));
    }
    steps.push(special(
        "/dev/pts",
        "devpts",
        at("dev/pts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ));
    steps.push(special(
        "/dev/shm",
        "tmpfs",
        at("dev/shm"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    ));
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: PathBuf::from(target),
            link: at("dev").join(link),
            keep: false,
        });
    }
    if spec.layers.home {
        steps.push(Step::Bind {
            source: PathBuf::from("disk/home"),
            target: at("home"),
        });
    }
    if run {
        steps.push(Step::Dir(at(".sprite/run")));
        steps.push(Step::Attach {
            layer: Layer::Run,
            target: at(".sprite/run"),
        });
        // A link, not a bound socket: the daemon re-creates the socket when it restarts.
        steps.push(Step::Symlink {
            target: PathBuf::from("run/api.sock"),
            link: at(".sprite/api.sock"),
            keep: true,
        });
    }
    if views {
        // The views directory's own mount is shared with the host's: as a slave of it,
        // checkpoint views the host mounts later appear here too, and nothing goes back.
        steps.push(Step::Dir(at(".sprite/checkpoints")));
        steps.push(Step::Attach {
            layer: Layer::Views,
            target: at(".sprite/checkpoints"),
        });
        steps.push(Step::Propagation {
            target: at(".sprite/checkpoints"),
            flags: MsFlags::MS_SLAVE,
        });
    }
    if stub {
        // The overlay holds its layers itself; their mounts go before the root moves
        // off the workspace (unreachable from the sprite anyway).
        for name in lower.iter().map(String::as_str).chain(["disk"]) {
            steps.push(Step::Detach(PathBuf::from(name)));
        }
        steps.push(Step::Chdir(root));
        steps.push(Step::MoveRoot);
    } else {
        steps.push(Step::Chdir(root));
        steps.push(Step::PivotRoot);
    }
    steps
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::{Limits, RootLayers};

    fn spec(home: bool) -> SandboxSpec {
        SandboxSpec {
            sprite_id: "s1".into(),
            cgroup_name: None,
            hostname: "dev".into(),
            state_dir: PathBuf::from("/data/sprites/s1"),
            layers: RootLayers {
                lower: vec![PathBuf::from("/img"), PathBuf::from("/env")],
                disk: PathBuf::from("/disks/s1"),
                views: None,
                home,
            },
            id_base: 1 << 30,
            id_count: 65536,
            storage_id_base: 100_000,
            mount_namespace: None,
            limits: Limits {
                memory_bytes: 1 << 30,
                pids: 100,
                cpu_millis: 1000,
            },
            run_dir: None,
            oom_score_adj: 500,
            nested_containers: false,
        }
    }

    /// Where each step puts something (mounts, binds, attaches), in order.
    fn targets(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|step| match step {
                Step::Attach { target, .. }
                | Step::Mount { target, .. }
                | Step::Bind { target, .. } => Some(target.display().to_string()),
                Step::PivotRoot => Some("pivot_root".into()),
                _ => None,
            })
            .collect()
    }

    fn position(targets: &[String], target: &str) -> usize {
        targets
            .iter()
            .position(|t| t == target)
            .unwrap_or_else(|| panic!("{target} is never mounted: {targets:?}"))
    }

    #[test]
    fn the_root_is_built_from_the_bottom_up_and_pivoted_into_last() {
        let steps = plan(&spec(true), 2, true, true);
        let targets = targets(&steps);
        let root = "/data/sprites/s1/root";
        // The layers are attached before the overlay that stacks them, and the
        // overlay before anything mounted inside it.
        let overlay = position(&targets, "root");
        assert!(position(&targets, "lower0") < overlay);
        assert!(position(&targets, "lower1") < overlay);
        assert!(position(&targets, "disk") < overlay);
        for inside in [
            "proc",
            "sys",
            "dev",
            "home",
            ".sprite/run",
            ".sprite/checkpoints",
        ] {
            assert!(
                overlay < position(&targets, &format!("{root}/{inside}")),
                "{inside}"
            );
        }
        // /dev is a tmpfs first, then its devices, pts and shm go in it.
        let dev = position(&targets, &format!("{root}/dev"));
        for inside in ["null", "tty", "urandom", "pts", "shm"] {
            assert!(
                dev < position(&targets, &format!("{root}/dev/{inside}")),
                "{inside}"
            );
        }
        // Everything is mounted in the state directory or the new root, never
        // elsewhere on the host; pivot_root is the last step.
        for target in &targets[..targets.len() - 1] {
            assert!(
                !target.starts_with('/') || target.starts_with(root),
                "{target} is outside the sprite"
            );
        }
        assert_eq!(steps.last(), Some(&Step::PivotRoot));
        assert_eq!(
            steps[steps.len() - 2],
            Step::Chdir(PathBuf::from(root)),
            "pivot_root(\".\", \".\") runs in the new root"
        );
        // The overlay stacks the lowers uppermost first over the disk.
        let data = steps.iter().find_map(|step| match step {
            Step::Mount {
                what: "the overlay root",
                data,
                ..
            } => data.clone(),
            _ => None,
        });
        assert_eq!(
            data.as_deref(),
            Some("lowerdir=lower0:lower1,upperdir=disk/upper,workdir=disk/work,userxattr")
        );
    }

    #[test]
    fn on_a_seed_stub_the_root_is_built_in_the_workspace_and_moved_onto_it_last() {
        let mut spec = spec(true);
        spec.mount_namespace = Some(PathBuf::from("/proc/1/fd/9"));
        let steps = plan(&spec, 2, true, true);
        // The workspace is PID 1's own tmpfs, mounted before anything goes in it.
        let workspace = steps
            .iter()
            .position(|s| {
                matches!(
                    s,
                    Step::Mount {
                        what: "the workspace",
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(steps[workspace + 1], Step::Chdir(PathBuf::from("/work")));
        let first_attach = steps
            .iter()
            .position(|s| matches!(s, Step::Attach { .. }))
            .unwrap();
        assert!(workspace < first_attach);
        for name in ["lower0", "lower1", "disk", "root"] {
            let made = steps
                .iter()
                .position(|s| *s == Step::Dir(PathBuf::from(name)))
                .unwrap_or_else(|| panic!("{name} is never made"));
            assert!(workspace < made && made < first_attach, "{name}");
        }
        // Nothing of the host's state directory is used; every mount is in the
        // workspace.
        let targets = targets(&steps);
        assert!(
            !format!("{steps:?}").contains("/data/sprites"),
            "the state directory is not in a seed namespace: {steps:?}"
        );
        for target in &targets {
            assert!(
                !target.starts_with('/') || target.starts_with("/work"),
                "{target} is outside the workspace"
            );
        }
        // The layers' own mounts are detached once the overlay holds them and everything
        // is mounted; the move into the root is the last step, from inside it.
        let last_mount = steps
            .iter()
            .rposition(|s| {
                matches!(
                    s,
                    Step::Mount { .. } | Step::Attach { .. } | Step::Bind { .. }
                )
            })
            .unwrap();
        for name in ["lower0", "lower1", "disk"] {
            let detached = steps
                .iter()
                .position(|s| *s == Step::Detach(PathBuf::from(name)))
                .unwrap_or_else(|| panic!("{name} is never detached"));
            assert!(last_mount < detached, "{name}");
        }
        assert!(!steps.contains(&Step::PivotRoot));
        assert_eq!(steps.last(), Some(&Step::MoveRoot));
        assert_eq!(
            steps[steps.len() - 2],
            Step::Chdir(PathBuf::from("/work/root")),
            "the root is moved from inside it"
        );
    }

    #[test]
    fn special_filesystems_cannot_carry_setuid_or_devices_and_sys_is_read_only() {
        let steps = plan(&spec(false), 1, false, false);
        for step in &steps {
            if let Step::Mount { what, flags, .. } = step {
                if *what == "the overlay root" {
                    continue;
                }
                assert!(flags.contains(MsFlags::MS_NOSUID), "{what} allows setuid");
                if *what != "/dev" && *what != "/dev/pts" {
                    assert!(flags.contains(MsFlags::MS_NODEV), "{what} allows devices");
                }
            }
        }
        let sys = steps.iter().find_map(|step| match step {
            Step::Mount {
                what: "/sys",
                flags,
                ..
            } => Some(*flags),
            _ => None,
        });
        assert!(sys.unwrap().contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn nothing_propagates_from_the_host_but_the_checkpoint_views() {
        let private = plan(&spec(false), 1, false, false);
        assert_eq!(
            private[0],
            Step::Propagation {
                target: PathBuf::from("/"),
                flags: MsFlags::MS_PRIVATE
            }
        );
        assert!(!targets(&private).iter().any(|t| t.contains(".sprite")));
        assert!(
            !targets(&private).iter().any(|t| t.ends_with("/home")),
            "no home bind"
        );
        let with_views = plan(&spec(false), 1, false, true);
        assert_eq!(
            with_views[0],
            Step::Propagation {
                target: PathBuf::from("/"),
                flags: MsFlags::MS_SLAVE
            }
        );
        let views = PathBuf::from("/data/sprites/s1/root/.sprite/checkpoints");
        let attached = with_views
            .iter()
            .position(|s| {
                matches!(
                    s,
                    Step::Attach {
                        layer: Layer::Views,
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(
            with_views[attached + 1],
            Step::Propagation {
                target: views,
                flags: MsFlags::MS_SLAVE
            },
            "the views receive from the host and send nothing back"
        );
    }
}
