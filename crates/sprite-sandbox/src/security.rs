//! What PID 1 locks down before it runs anything of the user's: a seccomp filter that
//! refuses what a sprite must never do, a reduced capability set, and no core dumps.
//!
//! Root inside a sprite keeps the capabilities a container's root usually has (chown,
//! setuid for sudo, binding low ports...), never CAP_SYS_ADMIN, CAP_SYS_MODULE,
//! CAP_SYS_BOOT, CAP_SYS_PTRACE, CAP_SYS_TIME or CAP_SYS_RAWIO.

use crate::error::{step, SandboxError};
use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Capabilities root inside a sprite keeps.
pub const KEPT_CAPABILITIES: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// System calls refused with EPERM whatever their arguments (with
/// [`NESTED_CONTAINER_SYSCALLS`] too unless nested containers are on).
const DENIED_SYSCALLS: &[i64] = &[
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_syslog,
    libc::SYS_userfaultfd,
    libc::SYS_lookup_dcookie,
    libc::SYS_uselib,
    libc::SYS_vhangup,
];

/// System calls that answer ENOSYS, as on a kernel without them, so programs that
/// probe for them fall back: io_uring (a large kernel surface of its own, and the
/// path of many recent kernel exploits; libuv, liburing users and databases fall back
/// to epoll and threads).
const ABSENT_SYSCALLS: &[i64] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Socket families a sprite may open: what Linux userland needs (unix, IPv4, IPv6,
/// netlink for `ip` and `ss`, packet for `ping`, `tcpdump` and DHCP clients). Any other
/// family answers EAFNOSUPPORT: it would otherwise make the kernel load its module
/// (a sprite must not choose which kernel code gets loaded), and AF_VSOCK reaches the
/// hypervisor.
pub const ALLOWED_SOCKET_FAMILIES: [i32; 5] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
    libc::AF_PACKET,
];

/// Netlink protocols a sprite may open (routes and links for `ip`, socket diagnostics
/// for `ss`, xfrm, audit for sudo and PAM, netfilter for nft, uevents, generic netlink):
/// the others answer EAFNOSUPPORT instead of loading modules.
pub const ALLOWED_NETLINK_PROTOCOLS: [u64; 7] = [
    libc::NETLINK_ROUTE as u64,
    libc::NETLINK_SOCK_DIAG as u64,
    libc::NETLINK_XFRM as u64,
    libc::NETLINK_AUDIT as u64,
    libc::NETLINK_NETFILTER as u64,
    libc::NETLINK_KOBJECT_UEVENT as u64,
    libc::NETLINK_GENERIC as u64,
];

/// System calls refused with EPERM unless nested containers are on. They only act on
/// namespaces the caller holds CAP_SYS_ADMIN over: a sprite's root never does over the
/// sprite's own, so when allowed (see [`seccomp_programs`]) they work only inside
/// namespaces the sprite made itself.
const NESTED_CONTAINER_SYSCALLS: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
];

/// Namespace flags refused in clone and unshare (unless nested containers are on): a
/// new user namespace gives its maker every capability over the namespaces it makes
/// in it, and so the whole kernel surface those reach (netfilter, mounts of many
/// filesystems), where most kernel privilege escalations of recent years began.
const DENIED_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
];

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SandboxError::SeccompBuild(format!("{e:?}")))
}

fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::SeccompBuild(e.to_string()))
}

fn condition(
    argument: u8,
    operator: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(argument, SeccompCmpArgLen::Dword, operator, value)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

/// Rules matching a socket family outside [`ALLOWED_SOCKET_FAMILIES`] (argument 0 of
/// socket and socketpair), and for `socket`, a netlink protocol outside
/// [`ALLOWED_NETLINK_PROTOCOLS`] (argument 2).
fn socket_rules(netlink: bool) -> Result<Vec<SeccompRule>, SandboxError> {
    // Families are small numbers (AF_MAX is 46 in Linux 6.x): every one below 64 that
    // is not allowed, and anything from 64 up.
    const FAMILIES: i32 = 64;
    let mut rules = vec![rule(vec![condition(
        0,
        SeccompCmpOp::Ge,
        FAMILIES as u64,
    )?])?];
    for family in 0..FAMILIES {
        if !ALLOWED_SOCKET_FAMILIES.contains(&family) {
            rules.push(rule(vec![condition(0, SeccompCmpOp::Eq, family as u64)?])?);
        }
    }
    if netlink {
        // Netlink has 32 protocol slots (MAX_LINKS).
        let family = || condition(0, SeccompCmpOp::Eq, libc::AF_NETLINK as u64);
        rules.push(rule(vec![family()?, condition(2, SeccompCmpOp::Ge, 32)?])?);
        for protocol in 0..32 {
            if !ALLOWED_NETLINK_PROTOCOLS.contains(&protocol) {
                rules.push(rule(vec![
                    family()?,
                    condition(2, SeccompCmpOp::Eq, protocol)?,
                ])?);
            }
        }
    }
    Ok(rules)
}

/// Refuses every call made through another ABI than the native one: a foreign
/// architecture (the i386 `int 0x80` entry on x86_64) kills the process, as
/// seccompiler's own check does, and an x32 call (the native architecture with bit 30
/// of the number set, which no rule keyed by number would match) answers ENOSYS.
fn abi_guard() -> Result<Vec<libc::sock_filter>, SandboxError> {
    const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JUMP_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JUMP_AT_LEAST: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let statement = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
    let native: u32 = match std::env::consts::ARCH {
        "x86_64" => 0xC000_003E,  // AUDIT_ARCH_X86_64
        "aarch64" => 0xC000_00B7, // AUDIT_ARCH_AARCH64
        other => {
            return Err(SandboxError::SeccompBuild(format!(
                "no seccomp ABI guard for {other}"
            )))
        }
    };
    // struct seccomp_data: nr at offset 0, arch at offset 4.
    Ok(vec![
        statement(LOAD_WORD, 4),
        jump(JUMP_EQUAL, native, 1, 0),
        statement(RETURN, libc::SECCOMP_RET_KILL_PROCESS),
        statement(LOAD_WORD, 0),
        jump(JUMP_AT_LEAST, X32_SYSCALL_BIT, 0, 1),
        statement(RETURN, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        statement(RETURN, libc::SECCOMP_RET_ALLOW),
    ])
}

/// The calls refused whatever their arguments.
fn denied_syscalls(nested_containers: bool) -> impl Iterator<Item = i64> {
    let mounts: &[i64] = match nested_containers {
        true => &[],
        false => NESTED_CONTAINER_SYSCALLS,
    };
    DENIED_SYSCALLS.iter().chain(mounts).copied()
}

/// The filters, in install order. With `nested_containers`, a sprite may make user
/// namespaces and the others inside them, and mount, pivot and enter what it made there
/// (what rootless podman, buildah, bubblewrap and `unshare -r` need); the calls named
/// in [`NESTED_CONTAINER_SYSCALLS`] still fail with EPERM on the sprite's own
/// namespaces, for lack of CAP_SYS_ADMIN over them.
pub fn seccomp_programs(
    nested_containers: bool,
) -> Result<Vec<Vec<libc::sock_filter>>, SandboxError> {
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls(nested_containers)
        .map(|number| (number, Vec::new()))
        .collect();
    let flag_rules = |argument: u8| -> Result<Vec<SeccompRule>, SandboxError> {
        DENIED_NAMESPACE_FLAGS
            .iter()
            .map(|&flag| {
                let condition = SeccompCondition::new(
                    argument,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )
                .map_err(|e| SandboxError::SeccompBuild(e.to_string()))?;
                rule(vec![condition])
            })
            .collect()
    };
    if !nested_containers {
        denied.insert(libc::SYS_clone, flag_rules(0)?);
        denied.insert(libc::SYS_unshare, flag_rules(0)?);
    }
    let deny = build(denied, SeccompAction::Errno(libc::EPERM as u32))?;
    // clone3 passes its flags in memory a filter cannot read: answer ENOSYS so libc
    // falls back to clone, whose flags the rule above checks.
    let absent = build(
        ABSENT_SYSCALLS
            .iter()
            .chain([&libc::SYS_clone3])
            .map(|&number| (number, Vec::new()))
            .collect(),
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    let sockets = build(
        BTreeMap::from([
            (libc::SYS_socket, socket_rules(true)?),
            (libc::SYS_socketpair, socket_rules(false)?),
        ]),
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
    )?;
    let raw = |program: BpfProgram| -> Vec<libc::sock_filter> {
        program
            .iter()
            .map(|f| libc::sock_filter {
                code: f.code,
                jt: f.jt,
                jf: f.jf,
                k: f.k,
            })
            .collect()
    };
    Ok(vec![abi_guard()?, raw(deny), raw(absent), raw(sockets)])
}

/// Applies the filters, drops capabilities and core dumps. Call once, in PID 1, after
/// the mounts are done.
pub fn lock_down(nested_containers: bool) -> Result<(), SandboxError> {
    for program in seccomp_programs(nested_containers)? {
        crate::sys::install_seccomp(&program).map_err(SandboxError::Seccomp)?;
    }
    let kept: CapsHashSet = KEPT_CAPABILITIES.iter().copied().collect();
    for capability in caps::all() {
        if !kept.contains(&capability) {
            caps::drop(None, CapSet::Bounding, capability).map_err(SandboxError::Capabilities)?;
        }
    }
    caps::clear(None, CapSet::Inheritable).map_err(SandboxError::Capabilities)?;
    caps::set(None, CapSet::Effective, &kept).map_err(SandboxError::Capabilities)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(SandboxError::Capabilities)?;
    crate::sys::set_non_dumpable().map_err(step("mark pid 1 non-dumpable"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_arch() {
        let (locked, nested) = (
            seccomp_programs(false).expect("build"),
            seccomp_programs(true).expect("build"),
        );
        for programs in [&locked, &nested] {
            assert_eq!(programs.len(), 4);
            assert!(programs.iter().all(|p| !p.is_empty()));
        }
        // Nested containers take out the namespace and mount rules, nothing else.
        assert!(nested[1].len() < locked[1].len());
        assert_eq!(nested[2].len(), locked[2].len());
        assert_eq!(nested[3].len(), locked[3].len());
    }

    #[test]
    fn nested_containers_keep_the_kernel_calls_denied() {
        for number in [
            libc::SYS_bpf,
            libc::SYS_init_module,
            libc::SYS_keyctl,
            libc::SYS_kexec_load,
        ] {
            assert!(denied_syscalls(true).any(|denied| denied == number));
            assert!(!NESTED_CONTAINER_SYSCALLS.contains(&number));
        }
        let locked: Vec<i64> = denied_syscalls(false).collect();
        assert!(NESTED_CONTAINER_SYSCALLS
            .iter()
            .all(|number| locked.contains(number)));
        assert!(!denied_syscalls(true).any(|n| NESTED_CONTAINER_SYSCALLS.contains(&n)));
    }

    #[test]
    fn kept_set_excludes_dangerous_capabilities() {
        for cap in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_BOOT,
            Capability::CAP_SYS_PTRACE,
        ] {
            assert!(!KEPT_CAPABILITIES.contains(&cap));
        }
    }
}
