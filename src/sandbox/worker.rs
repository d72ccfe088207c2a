//! The real sandbox: a pool of warm Python workers, each in its own user, network, mount, pid
//! and IPC namespaces (strict level), each forking a locked-down child per execution.
//!
//! Rust sends one job per line on the worker's stdin and reads one report per line on its fd 3.
//! The worker enforces per-call deadlines and the output limit itself; Rust keeps a backstop
//! deadline per job, and a worker that dies or stops answering is killed (its whole process
//! group) and replaced, and the case is reported as crashed.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use super::config::{Level, SandboxConfig};
use super::isolation::{self, Capabilities, IsolationReport};
use super::{ExecReport, Job, LoadOutcome, Raised, RawOutcome, Sandbox, SandboxError, WORKER_PY};
use crate::value::Value;

const TAIL_BYTES: usize = 4096;

/// One warm worker process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    results: OwnedFd,
    buf: Vec<u8>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The host directory holding scratch dirs (levels without a mount namespace; at the
    /// strict level scratch lives on a tmpfs mounted over /tmp inside the worker's namespace).
    _scratch: Option<tempfile::TempDir>,
}

impl Worker {
    /// Kill the worker's whole process group and reap it.
    fn kill(mut self) {
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Close the worker's stdin so that it exits by itself, wait up to `grace` for it (so its
    /// CPU time and its children's reach our RUSAGE_CHILDREN), then kill what is left.
    fn close(self, grace: Duration) {
        let Worker {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        let _ = child.wait();
    }

    fn stderr_tail(&self) -> String {
        let e = self.stderr.lock().map(|v| v.clone()).unwrap_or_default();
        String::from_utf8_lossy(&e).into_owned()
    }

    /// Read one line from the result channel before `deadline`.
    fn read_line(&mut self, deadline: Instant) -> Result<Json, String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line)
                    .map_err(|e| format!("the worker sent a malformed line: {e}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the worker did not answer in time".into());
            }
            let mut pfd = libc::pollfd {
                fd: self.results.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32 + 1;
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            if r == 0 {
                continue;
            }
            let mut chunk = [0u8; 65536];
            let n = unsafe {
                libc::read(
                    self.results.as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("read: {e}"));
            }
            if n == 0 {
                return Err("the worker exited".into());
            }
            self.buf.extend_from_slice(&chunk[..n as usize]);
        }
    }

    fn request(&mut self, job: &Json, deadline: Instant) -> Result<Json, String> {
        let mut line = serde_json::to_vec(job).expect("job serializes");
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("the worker is gone: {e}"))?;
        self.read_line(deadline)
    }
}

/// Everything needed to start a worker.
#[derive(Debug, Clone)]
struct Spawner {
    python: PathBuf,
    config_json: String,
    namespaces: bool,
    maps: Option<(CString, CString)>,
    /// Running as root: become this unprivileged uid/gid before anything else.
    drop_to: Option<u32>,
}

impl Spawner {
    fn spawn(&self) -> Result<(Worker, Json), SandboxError> {
        let scratch = if self.namespaces {
            None
        } else {
            let dir = tempfile::Builder::new()
                .prefix("codegen-sandbox-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .tempdir()
                .map_err(SandboxError::Spawn)?;
            remove_at_exit(dir.path());
            if let Some(id) = self.drop_to {
                std::os::unix::fs::chown(dir.path(), Some(id), Some(id))
                    .map_err(SandboxError::Spawn)?;
            }
            Some(dir)
        };
        let mut cfg: Json = serde_json::from_str(&self.config_json).expect("config is json");
        cfg["scratch_base"] = json!(match &scratch {
            Some(dir) => dir.path().to_string_lossy().into_owned(),
            None => "/tmp".into(),
        });
        let cfg = cfg.to_string();

        let mut fds = [0i32; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(SandboxError::Spawn(std::io::Error::last_os_error()));
        }
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let write_raw = write_end.as_raw_fd();
        let namespaces = self.namespaces;
        let maps = self.maps.clone();
        let drop_to = self.drop_to;

        let mut cmd = Command::new(&self.python);
        cmd.arg("-I")
            .arg("-S")
            .arg("-B")
            .arg("-c")
            .arg(WORKER_PY)
            .arg(cfg)
            .env_clear()
            .env("PYTHONIOENCODING", "utf-8")
            .env("MALLOC_ARENA_MAX", "2")
            // Resolve every dynamic symbol at start-up: lazy binding would write the GOT in
            // each forked child, one copy-on-write fault per page it touches.
            .env("LD_BIND_NOW", "1")
            .env("LANG", "C.UTF-8")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::dup2(write_raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(id) = drop_to
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setresgid(id, id, id) != 0
                        || libc::setresuid(id, id, id) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Changing uid made us undumpable, which leaves /proc/self owned by root and
                // the id maps below unwritable.
                if drop_to.is_some() && libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if namespaces {
                    let flags = libc::CLONE_NEWUSER
                        | libc::CLONE_NEWNET
                        | libc::CLONE_NEWNS
                        | libc::CLONE_NEWPID
                        | libc::CLONE_NEWIPC;
                    if libc::unshare(flags) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let (uid_map, gid_map) = maps.as_ref().expect("maps with namespaces");
                    write_proc(c"/proc/self/setgroups", b"deny")?;
                    write_proc(c"/proc/self/uid_map", uid_map.as_bytes())?;
                    write_proc(c"/proc/self/gid_map", gid_map.as_bytes())?;
                }
                if drop_to.is_some() {
                    libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(SandboxError::Spawn)?;
        drop(write_end);
        let stdin = child.stdin.take().expect("stdin is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let mut err = child.stderr.take().expect("stderr is piped");
            let keep = Arc::clone(&stderr);
            thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 8192];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut k) = keep.lock() {
                        k.extend_from_slice(&buf[..n]);
                        if k.len() > 2 * TAIL_BYTES {
                            let cut = k.len() - TAIL_BYTES;
                            k.drain(..cut);
                        }
                    }
                }
            });
        }
        let mut worker = Worker {
            child,
            stdin,
            results: read_end,
            buf: Vec::new(),
            stderr,
            _scratch: scratch,
        };
        match worker.read_line(Instant::now() + Duration::from_secs(30)) {
            Ok(hello) if hello["event"] == "hello" => Ok((worker, hello)),
            Ok(other) => {
                worker.kill();
                Err(SandboxError::Protocol(format!(
                    "expected the worker's hello, got {other}"
                )))
            }
            Err(e) => {
                thread::sleep(Duration::from_millis(50));
                let tail = worker.stderr_tail();
                worker.kill();
                Err(SandboxError::Protocol(format!(
                    "the sandbox worker failed to start ({e}): {tail}"
                )))
            }
        }
    }
}

/// Host scratch bases to remove when the process exits, for sandboxes that are never dropped
/// (a `static` in a test binary).
static SCRATCH_BASES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_scratch_bases() {
    if let Ok(dirs) = SCRATCH_BASES.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn remove_at_exit(dir: &Path) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| unsafe {
        libc::atexit(remove_scratch_bases);
    });
    if let Ok(mut dirs) = SCRATCH_BASES.lock() {
        dirs.retain(|d| d.exists());
        dirs.push(dir.to_path_buf());
    }
}

/// Write a whole small buffer to a /proc file, in a pre_exec hook (no allocation).
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

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

/// The overflow uid/gid.
const NOBODY: u32 = 65534;

/// Whether `python` and its standard library can be reached by an unprivileged user (every
/// ancestor directory searchable by others, the files readable by others).
fn reachable_by_others(python: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path, bits: u32| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & bits == bits)
            .unwrap_or(false)
    };
    let Ok(real) = std::fs::canonicalize(python) else {
        return false;
    };
    let ancestors_ok = |p: &Path| p.ancestors().skip(1).all(|a| ok(a, 0o001));
    if !(ok(&real, 0o005) && ancestors_ok(&real)) {
        return false;
    }
    // The standard library lives under the interpreter's prefix (`<prefix>/bin/python3`).
    let prefix = real.parent().and_then(Path::parent);
    let out = Command::new(&real)
        .args([
            "-I",
            "-S",
            "-c",
            "import os; print(os.path.dirname(os.__file__))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let stdlib = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            ok(&stdlib, 0o005) && ancestors_ok(&stdlib)
        }
        _ => prefix.is_some_and(|p| ok(p, 0o005) && ancestors_ok(p)),
    }
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
            "level": config.level.as_str(),
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
        // As root, the workers run as `nobody` when the interpreter is reachable by it, so
        // that even a Landlock bypass would meet ordinary permissions (/etc/shadow, /root).
        let drop_to =
            (unsafe { libc::geteuid() } == 0 && reachable_by_others(&python)).then_some(NOBODY);
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
        let report = IsolationReport {
            level: config.level,
            user_namespace: strict,
            network_namespace: strict,
            mount_namespace: strict,
            pid_namespace: strict,
            landlock_abi,
            seccomp_filters: hello["seccomp_filters"].as_u64().unwrap_or(0) as usize,
            cgroups: caps.cgroups.clone(),
            host_uid: caps.uid,
            sandbox_uid: hello["uid"].as_u64().unwrap_or(u64::MAX) as u32,
            sandbox_host_uid: uid,
            memory_mb: config.memory_mb,
            cpu_seconds: config.cpu_seconds,
            max_processes: config.max_processes,
            open_files: config.open_files,
            file_size: config.file_size,
            output_bytes: config.output_bytes,
            workers: max_workers,
            python: hello["python"].as_str().unwrap_or("?").to_string(),
        };
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

fn parse_raised(ev: &Json) -> Raised {
    let s = |k: &str| ev.get(k).and_then(Json::as_str).map(str::to_string);
    Raised {
        exc_type: s("type").unwrap_or_else(|| "?".into()),
        mro: ev
            .get("mro")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        message: s("message").unwrap_or_default(),
        line: ev.get("line").and_then(Json::as_u64).map(|l| l as usize),
        location: s("where"),
        source: s("source"),
    }
}

fn secs(ev: &Json) -> Duration {
    Duration::from_secs_f64(ev["seconds"].as_f64().unwrap_or(0.0).max(0.0))
}

/// One outcome as the worker reports it.
fn parse_outcome(ev: &Json) -> RawOutcome {
    match ev.get("kind").and_then(Json::as_str) {
        None if ev.is_null() => RawOutcome::NotRun,
        Some("returned") => match ev.get("value").map(Value::from_json) {
            Some(Ok(v)) => RawOutcome::Returned(v),
            Some(Err(e)) => RawOutcome::Crashed(format!("the child sent a malformed value: {e}")),
            None => RawOutcome::Crashed("the child sent no value".into()),
        },
        Some("unsupported") => RawOutcome::Unsupported(
            ev.get("what")
                .and_then(Json::as_str)
                .unwrap_or("?")
                .to_string(),
        ),
        Some("raised") => RawOutcome::Raised(parse_raised(ev)),
        Some("passed") => RawOutcome::CheckPassed,
        Some("timeout") => RawOutcome::TimedOut(secs(ev)),
        Some("memory") => RawOutcome::MemoryLimit,
        Some("output_limit") => RawOutcome::OutputLimit(ev["bytes"].as_u64().unwrap_or(0)),
        Some("blocked") => RawOutcome::Blocked {
            operation: ev["operation"].as_str().unwrap_or("?").to_string(),
        },
        Some("signal") => RawOutcome::KilledBySignal(ev["signal"].as_i64().unwrap_or(0) as i32),
        Some("crashed") => RawOutcome::Crashed(ev["reason"].as_str().unwrap_or("?").to_string()),
        other => RawOutcome::Crashed(format!("the child sent an unknown outcome {other:?}")),
    }
}

fn parse_load(ev: &Json) -> LoadOutcome {
    if ev["kind"] == "ok" {
        return LoadOutcome::Loaded;
    }
    match parse_outcome(ev) {
        RawOutcome::Raised(r) => LoadOutcome::Raised(r),
        RawOutcome::TimedOut(d) => LoadOutcome::TimedOut(d),
        RawOutcome::MemoryLimit => LoadOutcome::MemoryLimit,
        RawOutcome::OutputLimit(n) => LoadOutcome::OutputLimit(n),
        RawOutcome::Blocked { operation } => LoadOutcome::Blocked { operation },
        RawOutcome::KilledBySignal(s) => LoadOutcome::KilledBySignal(s),
        RawOutcome::Crashed(why) => LoadOutcome::Crashed(why),
        other => LoadOutcome::Crashed(format!("unexpected load outcome {other:?}")),
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
            "load_timeout": job.load_timeout.as_secs_f64(),
            "test_timeout": job.test_timeout.as_secs_f64(),
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
        self.execute_timed(job).map(|(rep, _)| rep)
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
