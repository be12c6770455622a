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

/// System calls refused with EPERM whatever their arguments.
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
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_open_by_handle_at,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_userfaultfd,
];

/// Namespace flags refused in clone and unshare: a new user namespace would give back
/// the capabilities dropped here.
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

/// The filters, in install order.
pub fn seccomp_programs() -> Result<Vec<BpfProgram>, SandboxError> {
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .map(|&number| (number, Vec::new()))
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
                SeccompRule::new(vec![condition])
                    .map_err(|e| SandboxError::SeccompBuild(e.to_string()))
            })
            .collect()
    };
    denied.insert(libc::SYS_clone, flag_rules(0)?);
    denied.insert(libc::SYS_unshare, flag_rules(0)?);
    let deny = build(denied, SeccompAction::Errno(libc::EPERM as u32))?;
    // clone3 passes its flags in memory a filter cannot read: answer ENOSYS so libc
    // falls back to clone, whose flags the rule above checks.
    let clone3 = build(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    Ok(vec![deny, clone3])
}

/// Applies the filters, drops capabilities and core dumps. Call once, in PID 1, after
/// the mounts are done.
pub fn lock_down() -> Result<(), SandboxError> {
    for program in seccomp_programs()? {
        let raw: Vec<libc::sock_filter> = program
            .iter()
            .map(|f| libc::sock_filter {
                code: f.code,
                jt: f.jt,
                jf: f.jf,
                k: f.k,
            })
            .collect();
        crate::sys::install_seccomp(&raw).map_err(SandboxError::Seccomp)?;
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
        let programs = seccomp_programs().expect("build");
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty()));
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
