//! The `[sandbox]` table of `harness/codegen.toml`.

use serde::{Deserialize, Serialize};

/// How much isolation the run requires. The run fails at start when the configured level
/// cannot be had, so a weaker level is only ever in force when the user chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// User, network, mount, pid and IPC namespaces for each worker, Landlock (read-only Python
    /// and shared libraries, a private scratch dir) and a seccomp filter for each execution,
    /// plus rlimits. Required pieces missing: the run fails.
    #[default]
    Strict,
    /// Seccomp and rlimits, and Landlock when the kernel has it; no namespaces (so no network
    /// isolation beyond the seccomp socket filter). For machines without user namespaces.
    Basic,
    /// Rlimits and a scratch dir only: generated code can read the host and reach the network.
    None,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Strict => "strict",
            Level::Basic => "basic",
            Level::None => "none",
        }
    }
}

/// `[sandbox]` in `harness/codegen.toml`. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// "strict" (default), "basic" or "none".
    pub level: Level,
    /// The Python interpreter: a name on PATH or a path.
    pub python: String,
    /// Warm workers (parallel executions); 0 means one per available CPU.
    pub workers: usize,
    /// Address-space limit of each execution, in MiB (RLIMIT_AS; threads count against it).
    pub memory_mb: u64,
    /// CPU-time limit of each execution (RLIMIT_CPU), in seconds.
    pub cpu_seconds: u64,
    /// Wall-clock limit for loading a program (its top-level code and setup), in ms.
    pub load_timeout_ms: u64,
    /// Smallest per-call wall-clock timeout after calibration, in ms.
    pub timeout_floor_ms: u64,
    /// Calibrated per-call timeout = max(floor, factor x the reference solution's time).
    pub timeout_factor: f64,
    /// Largest per-call timeout calibration may give, in ms.
    pub timeout_ceiling_ms: u64,
    /// A test that times out ends the case's run; its later tests are reported "not run". Off
    /// by default (every test gets its own verdict); HumanEval's configs turn it on, as
    /// HumanEval's own check stops at its first failing assert, so a looping completion costs
    /// one timeout rather than one per test.
    pub stop_after_timeout: bool,
    /// RLIMIT_NPROC (processes and threads of the sandbox's uid; process creation is also
    /// denied by seccomp at the strict and basic levels).
    pub max_processes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// Largest file an execution may write, in bytes (RLIMIT_FSIZE).
    pub file_size: u64,
    /// Stdout plus stderr an execution may print before it is stopped, in bytes.
    pub output_bytes: u64,
    /// Size of the private scratch tmpfs of each worker, in MiB (strict level).
    pub scratch_mb: u64,
    /// Let generated code run as host root at the strict level, when the harness runs as root
    /// and `nobody` cannot reach the interpreter (otherwise the run is refused, saying why).
    pub allow_host_root: bool,
    /// `python` was a bare name looked up on `PATH` (so another interpreter of the same
    /// version may stand in for it when a root harness's `nobody` cannot reach it).
    #[serde(skip)]
    pub python_from_path: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            level: Level::Strict,
            python: "python3".into(),
            workers: 0,
            memory_mb: 1024,
            cpu_seconds: 10,
            load_timeout_ms: 5000,
            timeout_floor_ms: 1000,
            timeout_factor: 4.0,
            timeout_ceiling_ms: 20_000,
            stop_after_timeout: false,
            max_processes: 64,
            open_files: 64,
            file_size: 16 << 20,
            output_bytes: 1 << 20,
            scratch_mb: 64,
            allow_host_root: false,
            python_from_path: false,
        }
    }
}

impl SandboxConfig {
    /// The number of workers to keep warm.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partial_table_and_rejects_unknown_keys() {
        let c: SandboxConfig = toml::from_str("level = \"basic\"\nmemory_mb = 512\n").unwrap();
        assert_eq!(c.level, Level::Basic);
        assert_eq!(c.memory_mb, 512);
        assert_eq!(c.cpu_seconds, 10);
        assert!(toml::from_str::<SandboxConfig>("memroy_mb = 1").is_err());
        assert!(toml::from_str::<SandboxConfig>("level = \"loose\"").is_err());
    }
}
