//! Run a generated program and a case's tests in Python, and report what each call did.
//!
//! [`Sandbox`] is the seam. [`WorkerSandbox`] is the sandbox of record: a pool of warm Python
//! workers, each in fresh user, network, mount, pid and IPC namespaces, each forking a child
//! per execution (once its job has arrived) that locks itself down before generated code runs:
//! rlimits (CPU, address space, processes, open files, file size), a Landlock layer (writes
//! only in its private scratch dir on a tmpfs; the worker's own layer leaves only Python and
//! the shared libraries readable; signals and abstract sockets scoped; TCP denied) and a
//! seccomp filter built in Rust ([`seccomp`]). Per-call deadlines and the output limit are
//! enforced by the worker, a backstop by Rust; a worker that dies is replaced and its case
//! reported. The child answers the worker's requests, one reply each (anything else is
//! [`RawOutcome::Tampered`]); a check block runs in a trusted process of its own that calls the
//! candidate directly over two pipes, with values only (docs/sandbox.md).
//!
//! Outcomes are raw facts ("returned this value", "raised that", "blocked: opening
//! '/etc/shadow'"); judging them against expected values is the job of
//! [`crate::evaluate::verdict`], outside any process that ran generated code.
//! [`config::SandboxConfig`] is the `[sandbox]` table of `harness/codegen.toml`;
//! [`isolation::IsolationReport`] says what is in force; [`crate::evaluate::calibrate`] derives
//! per-case timeouts from the reference solution (sandbox and verdict together). `worker` runs the
//! pool of warm workers, `process` starts and talks to one, `protocol` reads their reports.

pub mod config;
mod host_user;
pub mod isolation;
mod process;
mod protocol;
pub mod seccomp;
pub mod worker;

pub use config::{Level, SandboxConfig};
pub use isolation::IsolationReport;
pub use worker::WorkerSandbox;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::evaluate::value::Value;

/// The warm worker of [`WorkerSandbox`]: forks and locks down a child per execution.
pub const WORKER_PY: &str = include_str!("../../../harness/python/worker.py");

/// One execution: a program, optional setup code, and the calls (or a check block) to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub program: String,
    pub setup: Option<String>,
    pub entry_point: String,
    /// Python call expressions, reported one by one.
    pub calls: Vec<String>,
    /// A HumanEval-style `def check(candidate)` block, run once after the program, in a
    /// trusted process of its own that calls the candidate through a value-only channel.
    pub check: Option<String>,
    /// Trusted code the check block may use (the case's prompt: HumanEval's helpers such as
    /// `poly`), run before it in the check's process; never the candidate's definitions.
    pub prelude: Option<String>,
    /// Deadline for each call (and for the check block as a whole).
    pub test_timeout: Duration,
    /// Deadline for loading the program (its top-level code and setup).
    pub load_timeout: Duration,
    /// A call that times out ends the run: later calls are not run (see
    /// [`SandboxConfig::stop_after_timeout`]).
    pub stop_after_timeout: bool,
}

/// Where in generated or test code an exception came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Raised {
    pub exc_type: String,
    /// The names of the exception type's MRO, for `raises = "LookupError"` matching subclasses.
    pub mro: Vec<String>,
    pub message: String,
    /// 1-based line in the code named by `location` (`program`, `test`, `check`, `setup`).
    pub line: Option<usize>,
    pub location: Option<String>,
    /// The source line that raised, stripped.
    pub source: Option<String>,
}

/// What happened to one call (or the check block).
#[derive(Debug, Clone, PartialEq)]
pub enum RawOutcome {
    /// Returned a value of exact builtin types.
    Returned(Value),
    /// Returned something that cannot be compared outside the process (a custom object, a
    /// subclass of a builtin, a structure too deep or too large).
    Unsupported(String),
    /// Raised an exception.
    Raised(Raised),
    /// The check block ran to the end without raising.
    CheckPassed,
    /// No answer before the deadline; the process tree was killed.
    TimedOut(Duration),
    /// The process died while running it (an exit code, or a broken result channel).
    Crashed(String),
    /// The program failed to load, so the call never ran.
    NotRun,
    /// The program ran out of memory (a `MemoryError` under the sandbox's memory limit).
    MemoryLimit,
    /// The program printed more than the sandbox's output limit (bytes seen when stopped).
    OutputLimit(u64),
    /// The sandbox denied an operation and the program failed because of it, e.g.
    /// "opening '/etc/shadow'", "creating a socket (family 2, ...)", "starting a process
    /// (os.fork)", "writing to the harness's result channel".
    Blocked { operation: String },
    /// The process was killed by this signal (e.g. 11 for SIGSEGV) while running the call.
    KilledBySignal(i32),
    /// The program wrote on the harness's result channel what the harness did not ask for (a
    /// second reply, a reply before its call, a line that is no reply): what it was.
    Tampered(String),
}

/// How loading the program went.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadOutcome {
    Loaded,
    Raised(Raised),
    TimedOut(Duration),
    Crashed(String),
    /// Same meanings as the [`RawOutcome`] variants of the same names.
    MemoryLimit,
    OutputLimit(u64),
    Blocked {
        operation: String,
    },
    KilledBySignal(i32),
    Tampered(String),
}

/// Everything one execution produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecReport {
    pub load: LoadOutcome,
    /// One per call of the job, in order.
    pub calls: Vec<RawOutcome>,
    /// The check block's outcome, when the job had one.
    pub check: Option<RawOutcome>,
    /// The end of what the program printed (bounded), for diagnostics; never compared.
    pub stdout_tail: String,
    pub stderr_tail: String,
}

/// A failure of the harness itself (not of the generated code).
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("failed to find a Python interpreter `{0}` (a path, or a name found on PATH)")]
    NoPython(String),
    #[error("failed to start Python: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("failed to talk to the Python child: {0}")]
    Protocol(String),
    #[error("failed to evaluate expected value `{expr}`: {message}")]
    Expected { expr: String, message: String },
    /// The configured isolation level cannot be had on this machine.
    #[error("the sandbox cannot provide isolation level `{level}`: {missing}")]
    Unavailable { level: String, missing: String },
    /// The harness runs as root, `nobody` cannot reach the interpreter, and the strict level
    /// does not let generated code run as host root unless the config allows it.
    #[error(
        "failed to run generated code as an unprivileged user: the harness runs as root and {reason}, so generated code would run as host root (uid 0). To fix it, {fix}; to accept it, set `allow_host_root = true` under [sandbox] in harness/codegen.toml"
    )]
    HostRoot { reason: String, fix: String },
    /// The reference solution did not pass, so no timeout could be calibrated from it.
    #[error("failed to calibrate a timeout: {0}")]
    Calibration(String),
}

/// Runs jobs. Implementations must survive anything the generated code does.
pub trait Sandbox: Send + Sync {
    /// Execute one job and report every call's outcome.
    fn execute(&self, job: &Job) -> Result<ExecReport, SandboxError>;

    /// [`Sandbox::execute`], with how long the program and its calls ran. By default the
    /// whole wall time; a sandbox that can tell leaves out waiting for a free worker and its
    /// own overhead, which is what timeout calibration must measure (a busy machine queues
    /// jobs, and queueing is not the reference solution's speed).
    fn execute_timed(&self, job: &Job) -> Result<(ExecReport, Duration), SandboxError> {
        let t0 = std::time::Instant::now();
        let rep = self.execute(job)?;
        Ok((rep, t0.elapsed()))
    }

    /// Evaluate trusted expressions (a case's expected values) to canonical values.
    fn evaluate_expected(&self, exprs: &[String]) -> Result<Vec<Value>, SandboxError>;

    /// A one-line description of the isolation in force, for the summary and results.
    fn isolation(&self) -> String;

    /// The isolation in force, structured (for results JSON). `None` for sandboxes that do
    /// not detect it.
    fn isolation_report(&self) -> Option<IsolationReport> {
        None
    }
}
