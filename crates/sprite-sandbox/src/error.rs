//! Errors of the sandbox backend, named after the step that failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cgroup")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("create directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("bind init socket {0}")]
    BindSocket(PathBuf, #[source] std::io::Error),
    #[error("open log {0}")]
    OpenLog(PathBuf, #[source] std::io::Error),
    #[error("open namespace {0}")]
    OpenNamespace(PathBuf, #[source] std::io::Error),
    #[error("create sync pipe")]
    Pipe(#[source] nix::Error),
    #[error("clone the sprite's pid 1 with new namespaces")]
    Clone(#[source] nix::Error),
    #[error("write {0}")]
    IdMap(PathBuf, #[source] std::io::Error),
    #[error("sprite setup failed: {0}")]
    Setup(String),
    #[error("make the id-mapping user namespace of the sprite's layers")]
    IdmapNamespace(#[source] std::io::Error),
    #[error("make a detached mount of {0}")]
    CloneMount(PathBuf, #[source] std::io::Error),
    #[error("attach a mount at {0}")]
    AttachMount(PathBuf, #[source] std::io::Error),
    #[error("set the sprite's oom_score_adj to {0}")]
    OomScore(i32, #[source] std::io::Error),
    #[error("{step}")]
    Syscall {
        step: String,
        #[source]
        source: nix::Error,
    },
    #[error("install seccomp filter")]
    Seccomp(#[source] std::io::Error),
    #[error("build seccomp filter: {0}")]
    SeccompBuild(String),
    #[error("drop capabilities")]
    Capabilities(#[source] caps::errors::CapsError),
    #[error("start launcher {0}")]
    Launch(PathBuf, #[source] std::io::Error),
    #[error("launcher failed: {0}")]
    LauncherFailed(String),
    #[error("reach the launch server at {0}")]
    LaunchServerUnreachable(PathBuf, #[source] std::io::Error),
    #[error("init protocol")]
    Protocol(#[from] crate::protocol::ProtocolError),
    #[error("connect to sprite-init at {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("sprite-init at {0} did not answer within {1:?}")]
    InitTimeout(PathBuf, std::time::Duration),
    #[error("sprite-init answered {0}")]
    Unexpected(String),
    #[error("{message}")]
    Init {
        kind: crate::protocol::ErrorCode,
        message: String,
    },
    #[error("invalid network plan ({plan}): {reason}")]
    NetworkPlan { plan: String, reason: String },
    #[error("slot {slot} is outside the network plan ({max_slots} slots)")]
    NetworkSlot { slot: u32, max_slots: u32 },
    #[error("list host interfaces in /sys/class/net")]
    ListInterfaces(#[source] std::io::Error),
    #[error("host interface {interface} starts with the sprite interface prefix {prefix:?} but is not named like a slot's")]
    ForeignInterface { interface: String, prefix: String },
    #[error("process {0} shares the host's network namespace, so it is not a sprite")]
    SharedNetworkNamespace(u32),
    #[error("enable ip forwarding in /proc/sys/net/ipv4/ip_forward")]
    IpForwarding(#[source] std::io::Error),
    #[error("enter the mount namespace {0}")]
    EnterNamespace(std::path::PathBuf, #[source] std::io::Error),
    #[error("{step}")]
    Firewall {
        step: String,
        #[source]
        source: sprite_sys::nft::NftError,
    },
    #[error("{step}")]
    Link {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: run `{command}`")]
    NetworkSpawn {
        step: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: `{command}` failed: {stderr}")]
    NetworkCommand {
        step: String,
        command: String,
        stderr: String,
    },
}

/// Shorthand for a syscall step that failed.
pub(crate) fn step(step: impl Into<String>) -> impl FnOnce(nix::Error) -> SandboxError {
    let step = step.into();
    move |source| SandboxError::Syscall { step, source }
}
