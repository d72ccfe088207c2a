//! What isolation this machine can give, detected at start, and the report of what is in force.

use serde::Serialize;

use super::config::{Level, SandboxConfig};

/// What the kernel and the current user allow, probed without side effects.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// A child could unshare user, network, mount, pid and IPC namespaces.
    pub namespaces: bool,
    /// Why not, when `namespaces` is false.
    pub namespaces_error: Option<String>,
    /// Landlock ABI version (0: not available).
    pub landlock_abi: u32,
    /// Seccomp filters are available.
    pub seccomp: bool,
    /// Which cgroup hierarchies are mounted: "v2", "v1", "hybrid" or "none".
    pub cgroups: String,
    /// Effective uid of the harness.
    pub uid: u32,
}

/// The isolation in force for a sandbox, for the summary and for results JSON.
#[derive(Debug, Clone, Serialize)]
pub struct IsolationReport {
    /// The level configured (and in force: a level that cannot be had fails the run).
    pub level: Level,
    pub user_namespace: bool,
    pub network_namespace: bool,
    pub mount_namespace: bool,
    pub pid_namespace: bool,
    /// Landlock ABI in force (0: none). ABI >= 6 also scopes signals and abstract sockets.
    pub landlock_abi: u32,
    /// Number of seccomp filters installed in each execution (0: none).
    pub seccomp_filters: usize,
    /// Cgroup hierarchies present on the host; memory is limited with RLIMIT_AS.
    pub cgroups: String,
    /// Uid of the harness on the host, and of generated code inside its user namespace.
    pub host_uid: u32,
    pub sandbox_uid: u32,
    /// The host uid generated code runs as (65534 when the harness runs as root and the
    /// interpreter is reachable by `nobody`; the harness's own uid otherwise).
    pub sandbox_host_uid: u32,
    /// Why generated code ran as host root and how to avoid it, when it did.
    pub host_root_because: Option<String>,
    pub memory_mb: u64,
    pub cpu_seconds: u64,
    pub max_processes: u64,
    pub open_files: u64,
    pub file_size: u64,
    pub output_bytes: u64,
    pub workers: usize,
    /// Python version of the workers.
    pub python: String,
}

impl IsolationReport {
    /// One line for the run summary.
    pub fn summary(&self) -> String {
        let ns = if self.user_namespace {
            "namespaces user+net+mount+pid+ipc"
        } else {
            "no namespaces"
        };
        let ll = if self.landlock_abi > 0 {
            format!("Landlock ABI {}", self.landlock_abi)
        } else {
            "no Landlock".into()
        };
        let sc = if self.seccomp_filters > 0 {
            "seccomp"
        } else {
            "no seccomp"
        };
        let host_root = if self.sandbox_host_uid == 0 {
            match &self.host_root_because {
                Some(why) => format!("; generated code ran as host root (uid 0): {why}"),
                None => "; generated code ran as host root (uid 0)".into(),
            }
        } else {
            String::new()
        };
        format!(
            "sandbox {}: {ns}, {ll}, {sc}, uid {} (host uid {}, harness uid {}), memory {} MiB, cpu {} s, {} procs, {} fds, files {} MiB, output {} KiB, {} workers, Python {}{host_root}",
            self.level.as_str(),
            self.sandbox_uid,
            self.sandbox_host_uid,
            self.host_uid,
            self.memory_mb,
            self.cpu_seconds,
            self.max_processes,
            self.open_files,
            self.file_size >> 20,
            self.output_bytes >> 10,
            self.workers,
            self.python
        )
    }
}

fn probe_namespaces() -> Result<(), String> {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC;
    // The child only calls unshare and _exit, which are async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let r = unsafe { libc::unshare(flags) };
        let code = if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(1) & 0x7f
        };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        let errno = libc::WEXITSTATUS(status);
        Err(format!(
            "unshare(user, net, mount, pid, ipc) failed: {}",
            std::io::Error::from_raw_os_error(errno)
        ))
    }
}

fn landlock_abi() -> u32 {
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if r > 0 { r as u32 } else { 0 }
}

fn seccomp_available() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp_filters:")))
        .unwrap_or(false)
        || unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0
}

fn cgroups() -> String {
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        || std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory").exists();
    match (v1, v2) {
        (true, true) => "hybrid",
        (true, false) => "v1",
        (false, true) => "v2",
        _ => "none",
    }
    .into()
}

/// Probe the machine.
pub fn detect() -> Capabilities {
    let ns = probe_namespaces();
    Capabilities {
        namespaces: ns.is_ok(),
        namespaces_error: ns.err(),
        landlock_abi: landlock_abi(),
        seccomp: seccomp_available(),
        cgroups: cgroups(),
        uid: unsafe { libc::geteuid() },
    }
}

/// What the configured level needs that this machine lacks, with how to allow it; `None` when
/// the level can be had.
pub fn missing(cfg: &SandboxConfig, caps: &Capabilities) -> Option<String> {
    let mut gaps = Vec::new();
    match cfg.level {
        Level::Strict => {
            if !caps.namespaces {
                gaps.push(format!(
                    "user namespaces ({}); allow them with `sysctl -w kernel.unprivileged_userns_clone=1` and `sysctl -w user.max_user_namespaces=10000` (or, on Ubuntu, `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`), or run in a container started with --security-opt seccomp=unconfined",
                    caps.namespaces_error.as_deref().unwrap_or("unavailable")
                ));
            }
            if caps.landlock_abi == 0 {
                gaps.push(
                    "Landlock (kernel >= 5.13 with `lsm=...,landlock` on the kernel command line)"
                        .into(),
                );
            }
            if !caps.seccomp {
                gaps.push("seccomp filters (CONFIG_SECCOMP_FILTER)".into());
            }
        }
        Level::Basic => {
            if !caps.seccomp {
                gaps.push("seccomp filters (CONFIG_SECCOMP_FILTER)".into());
            }
        }
        Level::None => {}
    }
    if gaps.is_empty() {
        None
    } else {
        let weaker = match cfg.level {
            Level::Strict => "\"basic\" or \"none\"",
            _ => "\"none\"",
        };
        Some(format!(
            "missing {}. To accept weaker isolation, set `level = {weaker}` under [sandbox] in harness/codegen.toml.",
            gaps.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_and_none_level_needs_nothing() {
        let caps = detect();
        let cfg = SandboxConfig {
            level: Level::None,
            ..SandboxConfig::default()
        };
        assert!(missing(&cfg, &caps).is_none());
        let no = Capabilities {
            namespaces: false,
            namespaces_error: Some("EPERM".into()),
            landlock_abi: 0,
            seccomp: true,
            cgroups: "none".into(),
            uid: 1000,
        };
        let msg = missing(&SandboxConfig::default(), &no).unwrap();
        assert!(
            msg.contains("user namespaces") && msg.contains("Landlock"),
            "{msg}"
        );
        assert!(msg.contains("level = \"basic\""), "{msg}");
    }
}
