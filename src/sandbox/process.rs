//! The plain process sandbox: one `python3 -I` process tree per case, in its own session,
//! with a scratch directory, a scrubbed environment, a deadline per call and basic rlimits.
//! A deadline that passes kills the whole process group, and the remaining calls run in a
//! fresh process, so one hanging call costs only its own verdict.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use super::{ExecReport, Job, LoadOutcome, RUNNER_PY, Raised, RawOutcome, Sandbox, SandboxError};
use crate::value::Value;

/// Bytes of stdout/stderr kept for diagnostics; the rest is read and dropped.
const TAIL_BYTES: usize = 4096;

/// Limits applied to every child.
#[derive(Debug, Clone)]
pub struct ProcessLimits {
    /// Address-space limit in bytes (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Largest file the child may write (RLIMIT_FSIZE).
    pub file_bytes: u64,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: u64,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        ProcessLimits {
            memory_bytes: 2 << 30,
            file_bytes: 16 << 20,
            open_files: 256,
        }
    }
}

/// Runs each job in a fresh Python process.
#[derive(Debug, Clone)]
pub struct ProcessSandbox {
    python: PathBuf,
    limits: ProcessLimits,
}

impl ProcessSandbox {
    /// Find `python` (a name on PATH or a path) and use it for every job.
    pub fn new(python: &str, limits: ProcessLimits) -> Result<ProcessSandbox, SandboxError> {
        let path = find_on_path(python).ok_or_else(|| SandboxError::NoPython(python.into()))?;
        Ok(ProcessSandbox {
            python: path,
            limits,
        })
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A running child with its result channel.
struct Running {
    child: Child,
    events: Receiver<Json>,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
    _scratch: tempfile::TempDir,
}

impl Running {
    /// Kill the whole process group, reap the child, and collect its output tails.
    fn finish(mut self, kill: bool) -> (Option<std::process::ExitStatus>, String, String) {
        if kill {
            // The child called setsid(), so its pid is its process group id.
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
        }
        let status = self.child.wait().ok();
        if !kill {
            // Stragglers (forked grandchildren) must not outlive the case.
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
        }
        let out = self.stdout.join().unwrap_or_default();
        let err = self.stderr.join().unwrap_or_default();
        (status, out, err)
    }
}

fn tail_reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut keep: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    keep.extend_from_slice(&buf[..n]);
                    if keep.len() > 2 * TAIL_BYTES {
                        keep.drain(..keep.len() - TAIL_BYTES);
                    }
                }
            }
        }
        if keep.len() > TAIL_BYTES {
            keep.drain(..keep.len() - TAIL_BYTES);
        }
        String::from_utf8_lossy(&keep).into_owned()
    })
}

fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (_, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
            (Some(code), _) => format!("the process exited with code {code}"),
            _ => "the process ended".into(),
        },
        None => "the process could not be waited for".into(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

impl ProcessSandbox {
    fn spawn(&self, payload: &Json) -> Result<Running, SandboxError> {
        let scratch = tempfile::Builder::new()
            .prefix("codegen-scratch-")
            .tempdir()
            .map_err(SandboxError::Spawn)?;
        let mut payload = payload.clone();
        payload["scratch"] = json!(scratch.path().to_string_lossy());

        let mut fds = [0i32; 2];
        // O_CLOEXEC on both ends: only the dup2'd copy (fd 3) survives exec in the child.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(SandboxError::Spawn(std::io::Error::last_os_error()));
        }
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let write_raw = write_end.as_raw_fd();
        let limits = self.limits.clone();

        let mut cmd = Command::new(&self.python);
        cmd.arg("-I")
            .arg("-B")
            .arg("-c")
            .arg(RUNNER_PY)
            .env_clear()
            .env("PYTHONIOENCODING", "utf-8")
            .env("MALLOC_ARENA_MAX", "2")
            .env("HOME", scratch.path())
            .env("TMPDIR", scratch.path())
            .current_dir(scratch.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::dup2(write_raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let set = |res, v: u64| {
                    let lim = libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    };
                    libc::setrlimit(res, &lim);
                };
                set(libc::RLIMIT_AS, limits.memory_bytes);
                set(libc::RLIMIT_FSIZE, limits.file_bytes);
                set(libc::RLIMIT_NOFILE, limits.open_files);
                set(libc::RLIMIT_CORE, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(SandboxError::Spawn)?;
        drop(write_end);

        let mut stdin = child.stdin.take().expect("stdin is piped");
        let body = serde_json::to_vec(&payload).expect("job serializes");
        // A child that dies early closes stdin; that shows up as a crash, not an error here.
        thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let stdout = tail_reader(child.stdout.take().expect("stdout is piped"));
        let stderr = tail_reader(child.stderr.take().expect("stderr is piped"));

        let (tx, rx) = mpsc::channel();
        let mut reader = std::io::BufReader::new(std::fs::File::from(read_end));
        thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            loop {
                line.clear();
                // A flood on the channel is bounded by what one line may hold.
                match (&mut reader).take(64 << 20).read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => match serde_json::from_str::<Json>(&line) {
                        Ok(ev) => {
                            if tx.send(ev).is_err() {
                                break;
                            }
                        }
                        Err(_) => {
                            let _ = tx.send(json!({"event": "garbage"}));
                            break;
                        }
                    },
                }
            }
        });
        Ok(Running {
            child,
            events: rx,
            stdout,
            stderr,
            _scratch: scratch,
        })
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

fn parse_outcome(ev: &Json) -> RawOutcome {
    match ev.get("kind").and_then(Json::as_str) {
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
        other => RawOutcome::Crashed(format!("the child sent an unknown outcome {other:?}")),
    }
}

enum Wait {
    Event(Json),
    Timeout,
    Closed,
}

fn wait_event(rx: &Receiver<Json>, deadline: Instant) -> Wait {
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(ev) if ev.get("event").and_then(Json::as_str) == Some("garbage") => Wait::Closed,
        Ok(ev) => Wait::Event(ev),
        Err(RecvTimeoutError::Timeout) => Wait::Timeout,
        Err(RecvTimeoutError::Disconnected) => Wait::Closed,
    }
}

impl Sandbox for ProcessSandbox {
    #[allow(clippy::needless_range_loop)]
    fn execute(&self, job: &Job) -> Result<ExecReport, SandboxError> {
        let n = job.calls.len();
        let mut calls: Vec<Option<RawOutcome>> = vec![None; n];
        let mut check = None;
        let mut load = LoadOutcome::Loaded;
        let mut stdout_tail: String;
        let mut stderr_tail: String;
        let mut start = 0usize;

        // Each pass runs the program and the calls from `start` on; a timeout or crash on call
        // i records it and starts a new pass at i + 1.
        loop {
            let payload = json!({
                "program": job.program,
                "setup": job.setup,
                "entry_point": job.entry_point,
                "tests": job.calls,
                "check": job.check,
                "start": start,
            });
            let running = self.spawn(&payload)?;
            let load_deadline = Instant::now() + job.load_timeout;
            let mut kill = false;
            let mut next_start = None;
            let loaded = match wait_event(&running.events, load_deadline) {
                Wait::Event(ev) if ev["event"] == "load" => match ev["kind"].as_str() {
                    Some("ok") => true,
                    _ => {
                        load = LoadOutcome::Raised(parse_raised(&ev));
                        false
                    }
                },
                Wait::Event(_) => {
                    return Err(SandboxError::Protocol("expected a load event".into()));
                }
                Wait::Timeout => {
                    kill = true;
                    load = LoadOutcome::TimedOut(job.load_timeout);
                    false
                }
                Wait::Closed => {
                    let (status, out, err) = running.finish(true);
                    stdout_tail = out;
                    stderr_tail = err;
                    load = LoadOutcome::Crashed(describe_exit(status));
                    break;
                }
            };
            if loaded {
                if job.check.is_some() {
                    let deadline = Instant::now() + job.test_timeout;
                    check = Some(match wait_event(&running.events, deadline) {
                        Wait::Event(ev) => parse_outcome(&ev),
                        Wait::Timeout => {
                            kill = true;
                            RawOutcome::TimedOut(job.test_timeout)
                        }
                        Wait::Closed => {
                            kill = true;
                            RawOutcome::Crashed(String::new())
                        }
                    });
                } else {
                    for i in start..n {
                        let deadline = Instant::now() + job.test_timeout;
                        match wait_event(&running.events, deadline) {
                            Wait::Event(ev) => {
                                if ev["event"] == "test" && ev["index"].as_u64() == Some(i as u64) {
                                    calls[i] = Some(parse_outcome(&ev));
                                } else {
                                    calls[i] = Some(RawOutcome::Crashed(
                                        "the program wrote to the harness's result channel".into(),
                                    ));
                                    kill = true;
                                    next_start = Some(i + 1);
                                    break;
                                }
                            }
                            Wait::Timeout => {
                                calls[i] = Some(RawOutcome::TimedOut(job.test_timeout));
                                kill = true;
                                next_start = Some(i + 1);
                                break;
                            }
                            Wait::Closed => {
                                calls[i] = Some(RawOutcome::Crashed(String::new()));
                                kill = true;
                                next_start = Some(i + 1);
                                break;
                            }
                        }
                    }
                }
            }
            let (status, out, err) = running.finish(kill);
            stdout_tail = out;
            stderr_tail = err;
            // Fill in crash reasons now that the exit status is known.
            let reason = describe_exit(status);
            for c in calls.iter_mut().chain(std::iter::once(&mut check)) {
                if let Some(RawOutcome::Crashed(r)) = c
                    && r.is_empty()
                {
                    *r = reason.clone();
                }
            }
            match next_start {
                Some(s) if s < n => start = s,
                _ => break,
            }
        }

        let calls = calls
            .into_iter()
            .map(|c| c.unwrap_or(RawOutcome::NotRun))
            .collect();
        Ok(ExecReport {
            load,
            calls,
            check,
            stdout_tail,
            stderr_tail,
        })
    }

    fn evaluate_expected(&self, exprs: &[String]) -> Result<Vec<Value>, SandboxError> {
        if exprs.is_empty() {
            return Ok(Vec::new());
        }
        let running = self.spawn(&json!({"mode": "evaluate", "exprs": exprs}))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::with_capacity(exprs.len());
        for expr in exprs {
            match wait_event(&running.events, deadline) {
                Wait::Event(ev) => match parse_outcome(&ev) {
                    RawOutcome::Returned(v) => out.push(v),
                    RawOutcome::Raised(r) => {
                        running.finish(true);
                        return Err(SandboxError::Expected {
                            expr: expr.clone(),
                            message: format!("{}: {}", r.exc_type, r.message),
                        });
                    }
                    RawOutcome::Unsupported(what) => {
                        running.finish(true);
                        return Err(SandboxError::Expected {
                            expr: expr.clone(),
                            message: format!("{what} cannot be compared"),
                        });
                    }
                    other => {
                        running.finish(true);
                        return Err(SandboxError::Protocol(format!("{other:?}")));
                    }
                },
                _ => {
                    let (_, _, err) = running.finish(true);
                    return Err(SandboxError::Expected {
                        expr: expr.clone(),
                        message: format!("the evaluator did not answer: {err}"),
                    });
                }
            }
        }
        running.finish(false);
        Ok(out)
    }

    fn isolation(&self) -> String {
        format!(
            "process: own session, scrubbed environment, scratch dir, rlimits (memory {} MiB, file {} MiB, {} fds); no namespaces, seccomp or Landlock",
            self.limits.memory_bytes >> 20,
            self.limits.file_bytes >> 20,
            self.limits.open_files
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> ProcessSandbox {
        ProcessSandbox::new("python3", ProcessLimits::default()).unwrap()
    }

    fn job(program: &str, calls: &[&str]) -> Job {
        Job {
            program: program.into(),
            setup: None,
            entry_point: "f".into(),
            calls: calls.iter().map(|c| c.to_string()).collect(),
            check: None,
            test_timeout: Duration::from_secs(2),
            load_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn returns_values_and_exceptions() {
        let r = sandbox()
            .execute(&job(
                "def f(x):\n    if x < 0:\n        raise ValueError('neg')\n    return [x, str(x)]\n",
                &["f(1)", "f(-1)"],
            ))
            .unwrap();
        assert_eq!(r.load, LoadOutcome::Loaded);
        match &r.calls[0] {
            RawOutcome::Returned(v) => assert_eq!(v.repr(), "[1, '1']"),
            other => panic!("{other:?}"),
        }
        match &r.calls[1] {
            RawOutcome::Raised(e) => {
                assert_eq!(e.exc_type, "ValueError");
                assert_eq!(e.line, Some(3));
                assert_eq!(e.location.as_deref(), Some("program"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeout_kills_and_later_calls_still_run() {
        let mut j = job(
            "import time\ndef f(x):\n    if x:\n        while True: pass\n    return 0\n",
            &["f(1)", "f(0)"],
        );
        j.test_timeout = Duration::from_millis(500);
        let r = sandbox().execute(&j).unwrap();
        assert!(
            matches!(r.calls[0], RawOutcome::TimedOut(_)),
            "{:?}",
            r.calls[0]
        );
        assert!(
            matches!(r.calls[1], RawOutcome::Returned(_)),
            "{:?}",
            r.calls[1]
        );
    }

    #[test]
    fn hard_exit_is_a_crash() {
        let r = sandbox()
            .execute(&job(
                "import os\ndef f():\n    os._exit(7)\n",
                &["f()", "1"],
            ))
            .unwrap();
        match &r.calls[0] {
            RawOutcome::Crashed(why) => assert!(why.contains("code 7"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.calls[1], RawOutcome::Returned(_)));
    }

    #[test]
    fn lying_subclass_is_unsupported() {
        let r = sandbox()
            .execute(&job(
                "class L(int):\n    def __eq__(self, o): return True\ndef f():\n    return L(3)\n",
                &["f()"],
            ))
            .unwrap();
        assert!(
            matches!(r.calls[0], RawOutcome::Unsupported(_)),
            "{:?}",
            r.calls[0]
        );
    }

    #[test]
    fn syntax_error_is_a_load_failure() {
        let r = sandbox().execute(&job("def f(:\n", &["f()"])).unwrap();
        assert!(matches!(r.load, LoadOutcome::Raised(_)), "{:?}", r.load);
        assert_eq!(r.calls[0], RawOutcome::NotRun);
    }

    #[test]
    fn evaluates_expected_values() {
        let v = sandbox()
            .evaluate_expected(&["(1, 2.5)".into(), "{'a': [None]}".into()])
            .unwrap();
        assert_eq!(v[0].repr(), "(1, 2.5)");
        assert_eq!(v[1].repr(), "{'a': [None]}");
        assert!(sandbox().evaluate_expected(&["1/0".into()]).is_err());
    }
}
