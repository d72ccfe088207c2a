//! The seccomp filters of an execution, built in Rust with `seccompiler` and handed to the
//! Python worker as raw BPF, which the child installs on itself (`seccomp(2)` through ctypes)
//! right before running generated code.
//!
//! Two filters: `clone3` answers ENOSYS (so glibc falls back to `clone`, where the flags can be
//! inspected), and everything in [`DENIED`] answers EPERM: new processes (`clone` without
//! `CLONE_THREAD`, fork, vfork), exec, ptrace and cross-process memory access, mount and
//! namespace calls, bpf, io_uring, perf, keyrings, kernel modules, raising rlimits, and every
//! socket: `socket(2)` of any family (AF_UNIX included), `connect(2)` and `bind(2)`. Landlock
//! does not govern connecting to a Unix socket, so a socket file in any host directory the
//! code can name (a Docker, D-Bus or agent socket) would otherwise be reachable; an abstract
//! socket or a datagram to `/dev/log` needs `socket(2)` too. Only `socketpair(2)` of AF_UNIX
//! stream sockets stays, which asyncio's self-pipe needs and which reaches nothing outside the
//! process. Threads stay allowed.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls denied outright (EPERM).
pub const DENIED: &[(&str, i64)] = &[
    ("fork", libc::SYS_fork),
    ("vfork", libc::SYS_vfork),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("bpf", libc::SYS_bpf),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("setrlimit", libc::SYS_setrlimit),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("setuid", libc::SYS_setuid),
    ("setgid", libc::SYS_setgid),
    ("setreuid", libc::SYS_setreuid),
    ("setregid", libc::SYS_setregid),
    ("setresuid", libc::SYS_setresuid),
    ("setresgid", libc::SYS_setresgid),
    ("setgroups", libc::SYS_setgroups),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("sethostname", libc::SYS_sethostname),
    // Every socket the code could open or address: see the module's doc.
    ("socket", libc::SYS_socket),
    ("connect", libc::SYS_connect),
    ("bind", libc::SYS_bind),
];

/// The bits of `socket(2)`'s type argument that hold the type (the rest are flags).
const SOCK_TYPE_MASK: u64 = 0xf;

fn arch() -> Result<TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: unsupported architecture: {e:?}"))
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, v: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, v).expect("valid seccomp condition")
}

/// The two BPF programs, in install order.
pub fn programs() -> Result<Vec<BpfProgram>, String> {
    let arch = arch()?;
    let mut enosys = BTreeMap::new();
    enosys.insert(libc::SYS_clone3, vec![]);
    let first = SeccompFilter::new(
        enosys,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(_, nr) in DENIED {
        rules.insert(nr, vec![]);
    }
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).expect("valid seccomp rule");
    // clone without CLONE_THREAD makes a process.
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )])],
    );
    // Socket pairs of anything but AF_UNIX stream sockets: the family, or any type (its low
    // four bits; SOCK_CLOEXEC and SOCK_NONBLOCK are flags above them) other than SOCK_STREAM.
    let mut pair_rules = vec![rule(vec![cond(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Ne,
        libc::AF_UNIX as u64,
    )])];
    for kind in (0..=SOCK_TYPE_MASK).filter(|&t| t != libc::SOCK_STREAM as u64) {
        pair_rules.push(rule(vec![cond(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK),
            kind,
        )]));
    }
    rules.insert(libc::SYS_socketpair, pair_rules);
    // prlimit64 that sets a limit (a non-null new-limit pointer).
    rules.insert(
        libc::SYS_prlimit64,
        vec![rule(vec![cond(
            2,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Ne,
            0,
        )])],
    );
    let second = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![
        first
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
        second
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
    ])
}

/// A BPF program as the hex of `struct sock_filter[]` in native byte order.
pub fn to_hex(prog: &BpfProgram) -> String {
    let mut out = String::with_capacity(prog.len() * 16);
    for ins in prog {
        let mut bytes = Vec::with_capacity(8);
        bytes.extend_from_slice(&ins.code.to_ne_bytes());
        bytes.push(ins.jt);
        bytes.push(ins.jf);
        bytes.extend_from_slice(&ins.k.to_ne_bytes());
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_both_programs() {
        let progs = super::programs().unwrap();
        assert_eq!(progs.len(), 2);
        assert!(progs[1].len() > super::DENIED.len());
        assert_eq!(super::to_hex(&progs[0]).len(), progs[0].len() * 16);
    }
}
