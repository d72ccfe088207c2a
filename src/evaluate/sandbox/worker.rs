//! The real sandbox: a pool of warm Python workers, each in its own user, network, mount, pid
//! and IPC namespaces (strict level), each forking a locked-down child per execution.
//!
//! Rust sends one job per line on the worker's stdin and reads one report per line on its fd 3.
//! The worker enforces per-call deadlines and the output limit itself; Rust keeps a backstop
//! deadline per job, and a worker that dies or stops answering is killed (its whole process
//! group) and replaced, and the case is reported as crashed.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use super::config::{Level, SandboxConfig};
use super::host_user;
use super::isolation::{self, Capabilities, IsolationReport};
use super::process::{Spawner, Worker};
use super::protocol::{parse_load, parse_outcome};
use super::{ExecReport, Job, LoadOutcome, RawOutcome, Sandbox, SandboxError};
use crate::evaluate::value::Value;

struct Pool {
    idle: Vec<Worker>,
    alive: usize,
    /// Process group ids of every live worker (idle or busy).
    pgids: Vec<i32>,
}

/// The sandbox of record: warm workers, per-execution lockdown, detected isolation.
pub struct WorkerSandbox {
    spawner: Spawner,
    pool: Mutex<Pool>,
    freed: Condvar,
    max_workers: usize,
    config: SandboxConfig,
    report: IsolationReport,
}

/// The interpreter behind `name`, which the edge has resolved to a path
/// ([`SandboxConfig::apply_env`]); a bare name is not searched here.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let found = Path::new(name).is_file().then(|| PathBuf::from(name))?;
    // Resolve wrappers (pyenv shims, scripts) to the interpreter itself: a wrapper that forks
    // would become pid 1 of the worker's pid namespace.
    let out = Command::new(&found)
        .args(["-I", "-S", "-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !exe.is_empty()).then(|| PathBuf::from(exe))
}

/// The worker's configuration (`harness/python/worker.py`): what it sets up, each decided here
/// from the level and this machine's capabilities, and the limits; and whether it applies
/// Landlock.
fn worker_config(
    config: &SandboxConfig,
    caps: &Capabilities,
) -> Result<(Json, bool), SandboxError> {
    let strict = config.level == Level::Strict;
    let use_landlock = match config.level {
        Level::Strict => true,
        Level::Basic => caps.landlock_abi > 0,
        Level::None => false,
    };
    let seccomp: Vec<String> = if config.level == Level::None {
        Vec::new()
    } else {
        super::seccomp::programs()
            .map_err(|e| SandboxError::Unavailable {
                level: config.level.as_str().into(),
                missing: format!("failed to build the seccomp filter: {e}"),
            })?
            .iter()
            .map(super::seccomp::to_hex)
            .collect()
    };
    let worker_cfg = json!({
        "confine_children": config.level != Level::None,
        "pidns": strict,
        "mount": strict,
        "landlock": use_landlock,
        "seccomp": seccomp,
        "limits": {
            "memory_mb": config.memory_mb,
            "cpu_seconds": config.cpu_seconds,
            "open_files": config.open_files,
            "file_bytes": config.file_size,
            "max_processes": config.max_processes,
            "output_bytes": config.output_bytes,
            "result_bytes": 256u64 << 20,
            "scratch_mb": config.scratch_mb,
        },
    });
    Ok((worker_cfg, use_landlock))
}

/// What the sandbox isolates, as its first worker's `hello` confirmed; `uid` is the host uid
/// runs have.
fn isolation_report(
    config: &SandboxConfig,
    caps: &Capabilities,
    hello: &Json,
    uid: u32,
    host_root_because: Option<String>,
    python_note: Option<String>,
    max_workers: usize,
) -> IsolationReport {
    let strict = config.level == Level::Strict;
    IsolationReport {
        level: config.level,
        user_namespace: strict,
        network_namespace: strict,
        mount_namespace: strict,
        pid_namespace: strict,
        landlock_abi: hello["landlock_abi"].as_u64().unwrap_or(0) as u32,
        seccomp_filters: hello["seccomp_filters"].as_u64().unwrap_or(0) as usize,
        cgroups: caps.cgroups.clone(),
        host_uid: caps.uid,
        sandbox_uid: hello["uid"].as_u64().unwrap_or(u64::MAX) as u32,
        sandbox_host_uid: uid,
        host_root_because,
        memory_mb: config.memory_mb,
        cpu_seconds: config.cpu_seconds,
        max_processes: config.max_processes,
        open_files: config.open_files,
        file_size: config.file_size,
        output_bytes: config.output_bytes,
        workers: max_workers,
        python: {
            let version = hello["python"].as_str().unwrap_or("?");
            match &python_note {
                Some(why) => format!("{version} ({why})"),
                None => version.to_string(),
            }
        },
    }
}

impl WorkerSandbox {
    /// Detect what this machine allows, fail if `config.level` cannot be had (with a message
    /// saying what is missing and how to allow it), and start one worker.
    pub fn new(config: &SandboxConfig) -> Result<WorkerSandbox, SandboxError> {
        let caps = isolation::detect();
        Self::with_capabilities(config, caps)
    }

    fn with_capabilities(
        config: &SandboxConfig,
        caps: Capabilities,
    ) -> Result<WorkerSandbox, SandboxError> {
        if let Some(missing) = isolation::missing(config, &caps) {
            return Err(SandboxError::Unavailable {
                level: config.level.as_str().into(),
                missing,
            });
        }
        let python = find_on_path(&config.python)
            .ok_or_else(|| SandboxError::NoPython(config.python.clone()))?;
        let strict = config.level == Level::Strict;
        let (worker_cfg, use_landlock) = worker_config(config, &caps)?;
        let host_user = host_user::decide(&python, config, unsafe { libc::geteuid() })?;
        let (python, python_note) = match host_user.python_instead.clone() {
            Some((other, why)) => (other, Some(why)),
            None => (python, None),
        };
        let drop_to = host_user.drop_to;
        let (uid, gid) = match drop_to {
            Some(id) => (id, id),
            None => unsafe { (libc::geteuid(), libc::getegid()) },
        };
        let maps = strict.then(|| {
            (
                CString::new(format!("0 {uid} 1")).expect("no nul"),
                CString::new(format!("0 {gid} 1")).expect("no nul"),
            )
        });
        let spawner = Spawner {
            python,
            config_json: worker_cfg.to_string(),
            namespaces: strict,
            maps,
            drop_to,
        };
        let (first, hello) = spawner.spawn()?;
        let landlock_abi = hello["landlock_abi"].as_u64().unwrap_or(0) as u32;
        if use_landlock && config.level == Level::Strict && landlock_abi == 0 {
            first.kill();
            return Err(SandboxError::Unavailable {
                level: "strict".into(),
                missing: "Landlock inside the worker".into(),
            });
        }
        let max_workers = config.worker_count();
        let report = isolation_report(
            config,
            &caps,
            &hello,
            uid,
            host_user.as_root_because,
            python_note,
            max_workers,
        );
        Ok(WorkerSandbox {
            spawner,
            pool: Mutex::new(Pool {
                pgids: vec![first.child.id() as i32],
                idle: vec![first],
                alive: 1,
            }),
            freed: Condvar::new(),
            max_workers,
            config: config.clone(),
            report,
        })
    }

    /// The configuration this sandbox was built from.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Start workers until `max_workers` are warm (optional; they start on demand otherwise).
    pub fn warm_up(&self) -> Result<(), SandboxError> {
        let mut started = Vec::new();
        while {
            let p = self.pool.lock().expect("pool lock");
            p.alive + started.len() < self.max_workers
        } {
            started.push(self.spawner.spawn()?.0);
        }
        let mut p = self.pool.lock().expect("pool lock");
        p.alive += started.len();
        p.pgids.extend(started.iter().map(|w| w.child.id() as i32));
        p.idle.extend(started);
        self.freed.notify_all();
        Ok(())
    }

    fn acquire(&self) -> Result<Worker, SandboxError> {
        let mut p = self.pool.lock().expect("pool lock");
        loop {
            if let Some(mut w) = p.idle.pop() {
                // A worker that died while idle (killed from outside) is replaced, so that an
                // innocent case is not reported as crashed.
                if matches!(w.child.try_wait(), Ok(Some(_))) {
                    let pgid = w.child.id() as i32;
                    p.pgids.retain(|&g| g != pgid);
                    p.alive -= 1;
                    drop(p);
                    w.kill();
                    p = self.pool.lock().expect("pool lock");
                    continue;
                }
                return Ok(w);
            }
            if p.alive < self.max_workers {
                p.alive += 1;
                drop(p);
                return match self.spawner.spawn() {
                    Ok((w, _)) => {
                        let mut p = self.pool.lock().expect("pool lock");
                        p.pgids.push(w.child.id() as i32);
                        Ok(w)
                    }
                    Err(e) => {
                        let mut p = self.pool.lock().expect("pool lock");
                        p.alive -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            p = self.freed.wait(p).expect("pool lock");
        }
    }

    fn release(&self, w: Worker) {
        let mut p = self.pool.lock().expect("pool lock");
        p.idle.push(w);
        self.freed.notify_one();
    }

    fn discard(&self, w: Worker) {
        let pgid = w.child.id() as i32;
        w.kill();
        let mut p = self.pool.lock().expect("pool lock");
        p.pgids.retain(|&g| g != pgid);
        p.alive -= 1;
        self.freed.notify_one();
    }

    /// Send a job to a worker; a worker that fails is killed and replaced by a fresh one.
    fn round_trip(&self, job: &Json, backstop: Duration) -> Result<Json, String> {
        let mut w = self.acquire().map_err(|e| e.to_string())?;
        match w.request(job, Instant::now() + backstop) {
            Ok(rep) => {
                self.release(w);
                Ok(rep)
            }
            Err(e) => {
                let tail = w.stderr_tail();
                self.discard(w);
                let tail = tail.trim();
                Err(if tail.is_empty() {
                    format!("{e}; the sandbox worker was replaced")
                } else {
                    format!(
                        "{e}; the sandbox worker was replaced (its stderr: {})",
                        &tail[tail.len().saturating_sub(500)..]
                    )
                })
            }
        }
    }
}

impl WorkerSandbox {
    /// Kill every worker's process tree from outside, as an OOM killer might (for tests of
    /// the harness's recovery).
    #[doc(hidden)]
    pub fn kill_workers_for_test(&self) {
        let p = self.pool.lock().expect("pool lock");
        for &g in &p.pgids {
            unsafe {
                libc::kill(-g, libc::SIGKILL);
            }
        }
    }

    /// Stop every idle worker gracefully (they exit when their stdin closes).
    pub fn shutdown(self) {
        if let Ok(mut p) = self.pool.lock() {
            for w in p.idle.drain(..) {
                w.close(Duration::from_secs(2));
            }
        }
    }
}

impl Drop for WorkerSandbox {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pool.lock() {
            for w in p.idle.drain(..) {
                w.kill();
            }
        }
    }
}

impl WorkerSandbox {
    /// [`Sandbox::execute`], also returning how long the child spent running the program and
    /// its tests (excluding the sandbox's own overhead: fork, lockdown, transport).
    pub fn execute_timed(&self, job: &Job) -> Result<(ExecReport, Duration), SandboxError> {
        let n = job.calls.len();
        let payload = json!({
            "program": job.program,
            "setup": job.setup,
            "entry_point": job.entry_point,
            "tests": job.calls,
            "check": job.check,
            "prelude": job.prelude,
            "load_timeout": job.load_timeout.as_secs_f64(),
            "test_timeout": job.test_timeout.as_secs_f64(),
            "stop_after_timeout": job.stop_after_timeout,
        });
        let runs = if job.check.is_some() { 1 } else { n.max(1) } as u32;
        // Each call may time out and restart the program: load + call per call, plus slack.
        let backstop = (job.load_timeout + job.test_timeout) * runs + Duration::from_secs(10);
        match self.round_trip(&payload, backstop) {
            Ok(rep) if rep["event"] == "report" => {
                let calls = (0..n).map(|i| parse_outcome(&rep["calls"][i])).collect();
                let check = job.check.as_ref().map(|_| parse_outcome(&rep["check"]));
                let busy = Duration::from_secs_f64(rep["busy"].as_f64().unwrap_or(0.0).max(0.0));
                Ok((
                    ExecReport {
                        load: parse_load(&rep["load"]),
                        calls,
                        check,
                        stdout_tail: rep["stdout"].as_str().unwrap_or("").to_string(),
                        stderr_tail: rep["stderr"].as_str().unwrap_or("").to_string(),
                    },
                    busy,
                ))
            }
            Ok(rep) => Err(SandboxError::Protocol(
                rep["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| rep.to_string()),
            )),
            Err(why) => Ok((
                ExecReport {
                    load: LoadOutcome::Crashed(why.clone()),
                    calls: vec![RawOutcome::NotRun; n],
                    check: job.check.as_ref().map(|_| RawOutcome::Crashed(why.clone())),
                    stdout_tail: String::new(),
                    stderr_tail: String::new(),
                },
                Duration::ZERO,
            )),
        }
    }
}

impl Sandbox for WorkerSandbox {
    fn execute(&self, job: &Job) -> Result<ExecReport, SandboxError> {
        WorkerSandbox::execute_timed(self, job).map(|(rep, _)| rep)
    }

    fn execute_timed(&self, job: &Job) -> Result<(ExecReport, Duration), SandboxError> {
        WorkerSandbox::execute_timed(self, job)
    }

    fn evaluate_expected(&self, exprs: &[String]) -> Result<Vec<Value>, SandboxError> {
        if exprs.is_empty() {
            return Ok(Vec::new());
        }
        let payload = json!({"mode": "evaluate", "exprs": exprs, "timeout": 30.0});
        let rep = self
            .round_trip(&payload, Duration::from_secs(40))
            .map_err(SandboxError::Protocol)?;
        if rep["event"] != "report" {
            return Err(SandboxError::Protocol(rep.to_string()));
        }
        let mut out = Vec::with_capacity(exprs.len());
        for (i, expr) in exprs.iter().enumerate() {
            match parse_outcome(&rep["values"][i]) {
                RawOutcome::Returned(v) => out.push(v),
                RawOutcome::Raised(r) => {
                    return Err(SandboxError::Expected {
                        expr: expr.clone(),
                        message: format!("{}: {}", r.exc_type, r.message),
                    });
                }
                RawOutcome::Unsupported(what) => {
                    return Err(SandboxError::Expected {
                        expr: expr.clone(),
                        message: format!("{what} cannot be compared"),
                    });
                }
                other => {
                    return Err(SandboxError::Expected {
                        expr: expr.clone(),
                        message: format!("{other:?}"),
                    });
                }
            }
        }
        Ok(out)
    }

    fn isolation(&self) -> String {
        self.report.summary()
    }

    fn isolation_report(&self) -> Option<IsolationReport> {
        Some(self.report.clone())
    }
}
