//! The seccomp filter of an execution, built here as classic BPF and handed to the Python
//! worker as raw bytes, which the child installs on itself (`seccomp(2)` through ctypes) right
//! before running generated code.
//!
//! One program: `clone3` answers ENOSYS (so glibc falls back to `clone`, where the flags can be
//! inspected), and everything in [`DENIED`] answers EPERM: new processes (`clone` without
//! `CLONE_THREAD`, fork, vfork), exec, ptrace and cross-process memory access, mount and
//! namespace calls, bpf, io_uring, perf, keyrings, kernel modules, raising rlimits, and every
//! socket: `socket(2)` of any family (AF_UNIX included), `connect(2)` and `bind(2)`. Landlock
//! does not govern connecting to a Unix socket, so a socket file in any host directory the
//! code can name (a Docker, D-Bus or agent socket) would otherwise be reachable; an abstract
//! socket or a datagram to `/dev/log` needs `socket(2)` too. Only `socketpair(2)` of AF_UNIX
//! stream sockets stays, which asyncio's self-pipe needs and which reaches nothing outside the
//! process. Threads stay allowed. A syscall made under another architecture (32-bit compat)
//! kills the process.
//!
//! The syscall number is found by binary search, not by a list of comparisons: installing a
//! filter runs it for every syscall number (the kernel caches those it always allows), which
//! with `seccompiler`'s linear list (two filters, about 130 instructions per allowed number)
//! cost every execution about 0.2 ms. The tests check the program against the policy as
//! `seccompiler` builds it, for every syscall number and many arguments.

use seccompiler::BpfProgram;

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
const SOCK_TYPE_MASK: u32 = 0xf;

/// `seccomp_data`'s layout: the syscall number, the audit arch, then the six arguments (each
/// read as its low and high 32-bit words; every supported architecture is little-endian).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}
const fn arg_high(i: u32) -> u32 {
    16 + 8 * i + 4
}

/// The audit arch of the architecture this was built for: a syscall made under another one
/// (32-bit compat, say) kills the process.
fn audit_arch() -> Result<u32, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(0xC000_003E),
        "aarch64" => Ok(0xC000_00B7),
        "riscv64" => Ok(0xC000_00F3),
        other => Err(format!("seccomp: unsupported architecture: {other}")),
    }
}

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const ALU_AND_K: u16 = 0x04 | 0x50;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x05 | 0x10;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const JMP_JSET_K: u16 = 0x05 | 0x40;
const RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const fn ret_errno(errno: i32) -> u32 {
    0x0005_0000 | (errno as u32 & 0xffff)
}

/// What the program does with a syscall it names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Verdict {
    /// Always this errno.
    Errno(i32),
    /// The argument checks of [`Checked`].
    Checked(Checked),
}

/// Syscalls denied only for some arguments.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Checked {
    /// `clone` without `CLONE_THREAD` (a new process).
    Clone,
    /// `socketpair` of anything but AF_UNIX stream sockets.
    Socketpair,
    /// `prlimit64` that sets a limit (a non-null new-limit pointer).
    Prlimit,
}

/// Where a jump goes: an instruction index, or a shared ending resolved at the end.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Target {
    Allow,
    Errno(i32),
    Chain(Checked),
    At(usize),
}

/// A small assembler: conditional jumps only skip one instruction (or none); every longer
/// jump is a `JA`, whose 32-bit offset reaches anywhere.
#[derive(Default)]
struct Asm {
    code: Vec<BpfIns>,
    /// (index of a `JA`, where it goes)
    fixups: Vec<(usize, Target)>,
}

type BpfIns = seccompiler::sock_filter;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> BpfIns {
    BpfIns { code, jt, jf, k }
}

impl Asm {
    fn push(&mut self, i: BpfIns) {
        self.code.push(i);
    }
    /// A `JA` to `to`; returns its fixup's index (to retarget it).
    fn ja(&mut self, to: Target) -> usize {
        self.fixups.push((self.code.len(), to));
        self.code.push(ins(JMP_JA, 0, 0, 0));
        self.fixups.len() - 1
    }
    fn load(&mut self, offset: u32) {
        self.push(ins(LD_W_ABS, 0, 0, offset));
    }
    /// Go on when A == k, else jump to `to`.
    fn require_eq(&mut self, k: u32, to: Target) {
        self.push(ins(JMP_JEQ_K, 1, 0, k));
        self.ja(to);
    }

    /// The syscall number (in A) against `entries[..]`, sorted by number: a binary search, so
    /// that any number costs a handful of instructions (the kernel runs the program for every
    /// syscall number when the filter is installed, to find those it always allows: a linear
    /// list of 60 comparisons made that cost a quarter of a millisecond per execution).
    fn tree(&mut self, entries: &[(u32, Verdict)]) {
        match entries {
            [] => {
                self.ja(Target::Allow);
            }
            [(nr, verdict)] => {
                self.push(ins(JMP_JEQ_K, 0, 1, *nr));
                self.ja(match *verdict {
                    Verdict::Errno(e) => Target::Errno(e),
                    Verdict::Checked(c) => Target::Chain(c),
                });
                self.ja(Target::Allow);
            }
            _ => {
                let mid = entries.len() / 2;
                // nr >= pivot: the upper half (after the lower half's code).
                self.push(ins(JMP_JGE_K, 0, 1, entries[mid].0));
                let to_upper = self.ja(Target::At(0));
                self.tree(&entries[..mid]);
                self.fixups[to_upper].1 = Target::At(self.code.len());
                self.tree(&entries[mid..]);
            }
        }
    }

    /// The argument checks of `c`; A holds nothing they need.
    fn chain(&mut self, c: Checked) {
        let eperm = Target::Errno(libc::EPERM);
        match c {
            Checked::Clone => {
                // CLONE_THREAD set: a thread, allowed.
                self.load(arg_low(0));
                self.push(ins(JMP_JSET_K, 0, 1, libc::CLONE_THREAD as u32));
                self.ja(Target::Allow);
                self.ja(eperm);
            }
            Checked::Socketpair => {
                // The family's low word must be AF_UNIX and the type's low four bits
                // SOCK_STREAM (SOCK_CLOEXEC and SOCK_NONBLOCK are flags above them).
                self.load(arg_low(0));
                self.require_eq(libc::AF_UNIX as u32, eperm);
                self.load(arg_low(1));
                self.push(ins(ALU_AND_K, 0, 0, SOCK_TYPE_MASK));
                self.require_eq(libc::SOCK_STREAM as u32, eperm);
                self.ja(Target::Allow);
            }
            Checked::Prlimit => {
                // Both words of the new-limit pointer must be zero.
                self.load(arg_low(2));
                self.require_eq(0, eperm);
                self.load(arg_high(2));
                self.require_eq(0, eperm);
                self.ja(Target::Allow);
            }
        }
    }

    fn finish(mut self, errnos: &[i32], chains: &[Checked]) -> Result<BpfProgram, String> {
        // The argument checks, then the returns they and the search share (BPF jumps only
        // forward).
        let mut at = std::collections::HashMap::new();
        for &c in chains {
            at.insert(Target::Chain(c), self.code.len());
            self.chain(c);
        }
        at.insert(Target::Allow, self.code.len());
        self.push(ins(RET_K, 0, 0, RET_ALLOW));
        for &e in errnos {
            at.insert(Target::Errno(e), self.code.len());
            self.push(ins(RET_K, 0, 0, ret_errno(e)));
        }
        for (pos, to) in std::mem::take(&mut self.fixups) {
            let dest = match to {
                Target::At(i) => i,
                other => *at.get(&other).ok_or("seccomp: a jump to nowhere")?,
            };
            if dest <= pos {
                return Err("seccomp: a backward jump".into());
            }
            self.code[pos].k = (dest - pos - 1) as u32;
        }
        if self.code.len() > 4096 {
            return Err(format!("seccomp: {} instructions", self.code.len()));
        }
        Ok(self.code)
    }
}

/// The syscalls the filter names and what it does with each, sorted by number.
fn entries() -> Vec<(u32, Verdict)> {
    let mut out: Vec<(u32, Verdict)> = DENIED
        .iter()
        .map(|&(_, nr)| (nr as u32, Verdict::Errno(libc::EPERM)))
        .collect();
    // clone3 answers ENOSYS, so that glibc falls back to clone, whose flags can be inspected.
    out.push((libc::SYS_clone3 as u32, Verdict::Errno(libc::ENOSYS)));
    out.push((libc::SYS_clone as u32, Verdict::Checked(Checked::Clone)));
    out.push((
        libc::SYS_socketpair as u32,
        Verdict::Checked(Checked::Socketpair),
    ));
    out.push((
        libc::SYS_prlimit64 as u32,
        Verdict::Checked(Checked::Prlimit),
    ));
    out.sort_by_key(|e| e.0);
    out
}

/// Syscall numbers with this bit set are the x32 ABI's on x86-64: the same arch value, other
/// numbers, which a kernel built with x32 support runs. None of them is allowed.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The filter, as one BPF program: the arch check, x32 numbers denied (x86-64), then a binary
/// search over the syscall numbers it names (everything else is allowed).
pub fn programs() -> Result<Vec<BpfProgram>, String> {
    let entries = entries();
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("seccomp: a syscall named twice".into());
    }
    let mut asm = Asm::default();
    asm.load(DATA_ARCH);
    asm.push(ins(JMP_JEQ_K, 1, 0, audit_arch()?));
    asm.push(ins(RET_K, 0, 0, RET_KILL_PROCESS));
    asm.load(DATA_NR);
    if std::env::consts::ARCH == "x86_64" {
        asm.push(ins(JMP_JGE_K, 0, 1, X32_SYSCALL_BIT));
        asm.ja(Target::Errno(libc::EPERM));
    }
    asm.tree(&entries);
    let prog = asm.finish(
        &[libc::EPERM, libc::ENOSYS],
        &[Checked::Clone, Checked::Socketpair, Checked::Prlimit],
    )?;
    Ok(vec![prog])
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
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::*;

    /// The policy as `seccompiler` builds it, as two filters installed in this order (the
    /// filter was built this way before): the reference the program is checked against.
    fn reference() -> Vec<BpfProgram> {
        let arch: TargetArch = std::env::consts::ARCH.try_into().unwrap();
        let cond = |arg, len, op, v| SeccompCondition::new(arg, len, op, v).unwrap();
        let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).unwrap();
        let mut enosys = BTreeMap::new();
        enosys.insert(libc::SYS_clone3, vec![]);
        let first = SeccompFilter::new(
            enosys,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .unwrap();
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for &(_, nr) in DENIED {
            rules.insert(nr, vec![]);
        }
        rules.insert(
            libc::SYS_clone,
            vec![rule(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                0,
            )])],
        );
        let mut pair_rules = vec![rule(vec![cond(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )])];
        for kind in (0..=SOCK_TYPE_MASK as u64).filter(|&t| t != libc::SOCK_STREAM as u64) {
            pair_rules.push(rule(vec![cond(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK as u64),
                kind,
            )]));
        }
        rules.insert(libc::SYS_socketpair, pair_rules);
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
        .unwrap();
        vec![first.try_into().unwrap(), second.try_into().unwrap()]
    }

    /// `seccomp_data` as the kernel lays it out.
    fn data(arch: u32, nr: u32, args: [u64; 6]) -> Vec<u8> {
        let mut d = Vec::with_capacity(64);
        d.extend_from_slice(&nr.to_ne_bytes());
        d.extend_from_slice(&arch.to_ne_bytes());
        d.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            d.extend_from_slice(&a.to_ne_bytes());
        }
        d
    }

    /// Runs a classic BPF program as the kernel does (the instructions both builders use;
    /// anything else fails the test). Returns the instructions run too.
    fn run(prog: &[seccompiler::sock_filter], data: &[u8]) -> (u32, usize) {
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = &prog[pc];
            steps += 1;
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                ALU_AND_K => a &= i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K | JMP_JGE_K | JMP_JSET_K | 0x25 => {
                    let yes = match i.code {
                        JMP_JEQ_K => a == i.k,
                        JMP_JGE_K => a >= i.k,
                        JMP_JSET_K => a & i.k != 0,
                        _ => a > i.k, // JGT
                    };
                    pc += if yes { i.jt } else { i.jf } as usize;
                }
                RET_K => return (i.k, steps),
                other => panic!("instruction {other:#x} not emulated"),
            }
        }
    }

    /// Stacked filters as the kernel combines them: the action of highest precedence (the
    /// lowest action value, KILL_PROCESS first), the most recently installed one on a tie.
    fn combined(progs: &[BpfProgram], data: &[u8]) -> u32 {
        let mut ret = RET_ALLOW;
        for p in progs.iter().rev() {
            let r = run(p, data).0;
            let action = |v: u32| (v & 0xffff_0000) as i32;
            if action(r) < action(ret) {
                ret = r;
            }
        }
        ret
    }

    #[test]
    fn one_program_with_the_reference_policy() {
        let ours = programs().unwrap();
        assert_eq!(ours.len(), 1);
        let reference = reference();
        let native = audit_arch().unwrap();
        let values = [
            0u64,
            1,
            2,
            5,
            0xf,
            0x11,
            0x801,
            0x80001,
            libc::CLONE_THREAD as u64,
            (libc::CLONE_THREAD | libc::CLONE_VM | libc::CLONE_SIGHAND) as u64,
            libc::CLONE_VM as u64,
            0x7fff_ffff,
            0x8000_0001,
            0xffff_ffff,
            1 << 32,
            (1 << 32) | 1,
            (1 << 32) | libc::CLONE_THREAD as u64,
            u64::MAX,
        ];
        let mut nrs: Vec<u32> = (0..1100).collect();
        nrs.extend([0x4000_0000, 0x4000_0000 + 56, 0x4000_0000 + 59, u32::MAX]);
        let checked = [
            libc::SYS_clone as u32,
            libc::SYS_socketpair as u32,
            libc::SYS_prlimit64 as u32,
        ];
        let (mut cases, mut most_steps) = (0usize, 0usize);
        for arch in [native, 0x4000_0003, 0] {
            for &nr in &nrs {
                let mut argsets = vec![[0u64; 6], [u64::MAX; 6], [1, 1, 1, 0, 0, 0]];
                if checked.contains(&nr) && arch == native {
                    for &x in &values {
                        for &y in &values {
                            for &z in &values {
                                argsets.push([x, y, z, 0, 0, 0]);
                            }
                        }
                    }
                }
                for args in argsets {
                    let d = data(arch, nr, args);
                    let (got, steps) = run(&ours[0], &d);
                    // The reference policy allows x32 numbers; ours denies them.
                    let x32 =
                        cfg!(target_arch = "x86_64") && arch == native && nr >= X32_SYSCALL_BIT;
                    let want = match x32 {
                        true => ret_errno(libc::EPERM),
                        false => combined(&reference, &d),
                    };
                    assert_eq!(got, want, "arch {arch:#x} nr {nr} args {args:x?}");
                    most_steps = most_steps.max(steps);
                    cases += 1;
                }
            }
        }
        assert!(cases > 3 * 1100);
        // A binary search: no syscall number walks the whole list.
        assert!(most_steps < 40, "{most_steps} instructions for one syscall");
        // What the policy says, spelled out for a few.
        let at = |nr: i64, args: [u64; 6]| run(&ours[0], &data(native, nr as u32, args)).0;
        assert_eq!(at(libc::SYS_read, [0; 6]), RET_ALLOW);
        assert_eq!(at(libc::SYS_execve, [0; 6]), ret_errno(libc::EPERM));
        assert_eq!(at(libc::SYS_clone3, [0; 6]), ret_errno(libc::ENOSYS));
        assert_eq!(at(libc::SYS_clone, [0; 6]), ret_errno(libc::EPERM));
        let thread = (libc::CLONE_THREAD | libc::CLONE_VM) as u64;
        assert_eq!(at(libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), RET_ALLOW);
        let pair = [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        assert_eq!(at(libc::SYS_socketpair, pair), RET_ALLOW);
        let dgram = [libc::AF_UNIX as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0];
        assert_eq!(at(libc::SYS_socketpair, dgram), ret_errno(libc::EPERM));
        assert_eq!(at(libc::SYS_prlimit64, [0, 7, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            at(libc::SYS_prlimit64, [0, 7, 8, 0, 0, 0]),
            ret_errno(libc::EPERM)
        );
        assert_eq!(
            run(&ours[0], &data(0x4000_0003, 0, [0; 6])).0,
            RET_KILL_PROCESS
        );
        assert_eq!(super::to_hex(&ours[0]).len(), ours[0].len() * 16);
    }
}
