//! Starting and talking to one warm Python worker: the process with its namespaces, uid/gid
//! maps and privilege drop set up before Python runs ([`Spawner`]), and the line protocol with
//! a running worker ([`Worker`]: one job per line on stdin, one report per line on fd 3).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use super::{SandboxError, WORKER_PY};

const TAIL_BYTES: usize = 4096;

/// Workers started so far in this process: each worker takes the next CPU of those it may run
/// on, round-robin (`cpu_slot` in its configuration; see `harness/python/worker.py`).
static CPU_SLOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One warm worker process.
pub(super) struct Worker {
    pub(super) child: Child,
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
    pub(super) fn kill(mut self) {
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Close the worker's stdin so that it exits by itself, wait up to `grace` for it (so its
    /// CPU time and its children's reach our RUSAGE_CHILDREN), then kill what is left.
    pub(super) fn close(self, grace: Duration) {
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

    pub(super) fn stderr_tail(&self) -> String {
        let e = self.stderr.lock().map(|v| v.clone()).unwrap_or_default();
        String::from_utf8_lossy(&e).into_owned()
    }

    /// Read one line from the result channel before `deadline`.
    pub(super) fn read_line(&mut self, deadline: Instant) -> Result<Json, String> {
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

    pub(super) fn request(&mut self, job: &Json, deadline: Instant) -> Result<Json, String> {
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
pub(super) struct Spawner {
    pub(super) python: PathBuf,
    pub(super) config_json: String,
    pub(super) namespaces: bool,
    pub(super) maps: Option<(CString, CString)>,
    /// Running as root: become this unprivileged uid/gid before anything else.
    pub(super) drop_to: Option<u32>,
}

impl Spawner {
    pub(super) fn spawn(&self) -> Result<(Worker, Json), SandboxError> {
        let scratch = self.scratch()?;
        let mut cfg: Json = serde_json::from_str(&self.config_json).expect("config is json");
        cfg["scratch_base"] = json!(match &scratch {
            Some(dir) => dir.path().to_string_lossy().into_owned(),
            None => "/tmp".into(),
        });
        cfg["cpu_slot"] = json!(CPU_SLOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let cfg = cfg.to_string();

        let mut fds = [0i32; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(SandboxError::Spawn(std::io::Error::last_os_error()));
        }
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let cmd = self.command(cfg, write_end.as_raw_fd());
        let mut child = spawn_from_lasting_thread(cmd).map_err(SandboxError::Spawn)?;
        drop(write_end);
        let stdin = child.stdin.take().expect("stdin is piped");
        let stderr = keep_tail(child.stderr.take().expect("stderr is piped"));
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

    /// Without namespaces, a private scratch folder for the worker's runs (owned by the uid it
    /// drops to); with them, none (the worker's own /tmp).
    fn scratch(&self) -> Result<Option<tempfile::TempDir>, SandboxError> {
        if self.namespaces {
            return Ok(None);
        }
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
        Ok(Some(dir))
    }

    /// The worker's command line, environment and pre-exec set-up (see [`enter_sandbox`]),
    /// its results written to `write_raw`.
    fn command(&self, cfg: String, write_raw: RawFd) -> Command {
        let namespaces = self.namespaces;
        let maps = self.maps.clone();
        let drop_to = self.drop_to;
        let harness_pid = std::process::id() as libc::pid_t;

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
            cmd.pre_exec(move || enter_sandbox(write_raw, drop_to, namespaces, &maps, harness_pid));
        }
        cmd
    }
}

/// In the forked child, before exec: a session of its own, the results pipe at fd 3, the
/// unprivileged uid (`drop_to`), the namespaces with their id `maps`, and death with the
/// harness. Only async-signal-safe calls.
///
/// # Safety
/// Called between fork and exec only.
unsafe fn enter_sandbox(
    write_raw: RawFd,
    drop_to: Option<u32>,
    namespaces: bool,
    maps: &Option<(CString, CString)>,
    harness_pid: libc::pid_t,
) -> std::io::Result<()> {
    unsafe {
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
        // Changing uid made us undumpable, which leaves /proc/self owned by root and the id
        // maps below unwritable.
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
        // The worker dies with the harness, whatever ends it. Set last: a change of effective
        // uid or gid clears it. Should the harness have died since the fork, the signal never
        // comes: stop here instead.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != harness_pid {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    }
}

/// Keep the last [`TAIL_BYTES`] (or so) of the worker's stderr, read on a thread of its own.
fn keep_tail(mut err: std::process::ChildStderr) -> Arc<Mutex<Vec<u8>>> {
    let stderr = Arc::new(Mutex::new(Vec::new()));
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
    stderr
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Start `cmd` from a thread that lives as long as the process. A child's parent-death signal
/// fires when the thread that forked it ends, not the process, and the trial threads that ask
/// for workers end while the pool keeps their workers.
fn spawn_from_lasting_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let gone = || std::io::Error::other("failed to reach the thread that starts workers");
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, received) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("codegen-worker-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in received {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .ok()
            .map(|_| requests)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .as_ref()
        .ok_or_else(gone)?
        .send((cmd, reply))
        .map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
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
