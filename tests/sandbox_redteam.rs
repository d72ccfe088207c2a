//! Red-team corpus for the sandbox: each probe is a hostile "completion" with the contained
//! outcome it must get. After every probe the harness must still be alive (a sane job still
//! passes), and nothing may have been written outside the sandbox's scratch directories.
//!
//! Network probes target a listener this test starts on 127.0.0.1 only, or Unix sockets it
//! creates in a world-writable folder of its own under /tmp (outside every scratch directory).
//!
//! The probes run at the configured level (`strict` unless `CODEGEN_SANDBOX_LEVEL` says
//! otherwise); those that must hold at `basic` too (the GPU configs use it) also run on a
//! second sandbox at `basic`. Run the file as root and as an unprivileged user: the results
//! must be the same.

use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use codegen_harness::calibrate::{TimeoutPolicy, calibrate};
use codegen_harness::env::Env;
use codegen_harness::sandbox::{
    ExecReport, Job, Level, LoadOutcome, RawOutcome, Sandbox, SandboxConfig, SandboxError,
    WorkerSandbox,
};

fn sandbox() -> &'static WorkerSandbox {
    static SB: OnceLock<WorkerSandbox> = OnceLock::new();
    SB.get_or_init(|| new_sandbox(None))
}

/// A sandbox at `basic`, whatever the configured level (for the probes that must hold there).
fn basic_sandbox() -> &'static WorkerSandbox {
    static SB: OnceLock<WorkerSandbox> = OnceLock::new();
    SB.get_or_init(|| new_sandbox(Some(Level::Basic)))
}

fn new_sandbox(level: Option<Level>) -> WorkerSandbox {
    // The probes test the namespaces, Landlock, seccomp and limits. Whether the workers
    // also drop to `nobody` depends on the machine's Python (a root harness whose Python
    // lies under /root cannot drop); the isolation line printed below says which.
    let mut cfg = SandboxConfig {
        workers: 2,
        memory_mb: 512,
        output_bytes: 256 << 10,
        allow_host_root: true,
        ..SandboxConfig::default()
    };
    let env = Env::from_process().expect("a valid environment");
    if let Some(py) = &env.python {
        cfg.python = py.to_string_lossy().into_owned();
    }
    cfg.apply_env(&env);
    if let Some(level) = level {
        cfg.level = level;
    }
    let sb = WorkerSandbox::new(&cfg).expect("the sandbox starts");
    eprintln!("{}", sb.isolation());
    sb
}

fn job(program: &str, calls: &[&str]) -> Job {
    Job {
        program: program.into(),
        setup: None,
        entry_point: "f".into(),
        calls: calls.iter().map(|c| c.to_string()).collect(),
        check: None,
        prelude: None,
        test_timeout: Duration::from_millis(1500),
        load_timeout: Duration::from_secs(3),
        stop_after_timeout: false,
    }
}

fn run(program: &str, call: &str) -> ExecReport {
    let rep = sandbox()
        .execute(&job(program, &[call]))
        .expect("no harness error");
    assert_alive();
    rep
}

/// The outcome of a single call given more time (for probes about memory, not time).
fn slow_outcome(program: &str, call: &str) -> RawOutcome {
    let mut j = job(program, &[call]);
    j.test_timeout = Duration::from_secs(8);
    let rep = sandbox().execute(&j).expect("no harness error");
    assert_alive();
    assert_eq!(rep.load, LoadOutcome::Loaded, "{rep:?}");
    rep.calls[0].clone()
}

/// The outcome of the single call, with the load required to succeed.
fn outcome(program: &str, call: &str) -> RawOutcome {
    let rep = run(program, call);
    assert_eq!(rep.load, LoadOutcome::Loaded, "{rep:?}");
    rep.calls[0].clone()
}

fn assert_alive() {
    let rep = sandbox()
        .execute(&job("def f(x):\n    return x * 2\n", &["f(21)"]))
        .expect("the harness is alive");
    match &rep.calls[0] {
        RawOutcome::Returned(v) => assert_eq!(v.repr(), "42"),
        other => panic!("sanity job after a probe: {other:?}"),
    }
}

fn returned(o: &RawOutcome) -> String {
    match o {
        RawOutcome::Returned(v) => v.repr(),
        other => panic!("expected a returned value, got {other:?}"),
    }
}

fn blocked(o: &RawOutcome, needle: &str) {
    match o {
        RawOutcome::Blocked { operation } => {
            assert!(
                operation.contains(needle),
                "blocked `{operation}`, wanted `{needle}`"
            )
        }
        other => panic!("expected blocked ({needle}), got {other:?}"),
    }
}

fn tampered(o: &RawOutcome, needle: &str) {
    match o {
        RawOutcome::Tampered(what) => {
            assert!(
                what.contains(needle),
                "tampered `{what}`, wanted `{needle}`"
            )
        }
        other => panic!("expected tampering ({needle}), got {other:?}"),
    }
}

fn not_a_pass(o: &RawOutcome, forged: &str) {
    if let RawOutcome::Returned(v) = o {
        assert_ne!(v.repr(), forged, "a forged answer got through");
    }
    assert_ne!(*o, RawOutcome::CheckPassed);
}

fn marker(name: &str) -> String {
    format!("/tmp/codegen-redteam-{}-{name}", std::process::id())
}

fn assert_not_written(path: &str) {
    assert!(
        !Path::new(path).exists(),
        "{path} was written outside scratch"
    );
}

macro_rules! probe {
    ($name:ident, $body:block) => {
        #[test]
        fn $name() $body
    };
}

// ------------------------------------------------------------------ plain outcomes

probe!(p01_correct_answer_returns_exact_value, {
    assert_eq!(
        returned(&outcome(
            "def f(x):\n    return [x, 'a', (1.5, None)]\n",
            "f(1)"
        )),
        "[1, 'a', (1.5, None)]"
    );
});

probe!(p02_exception_has_type_message_and_line, {
    match outcome("def f():\n    x = 1\n    raise ValueError('nope')\n", "f()") {
        RawOutcome::Raised(r) => {
            assert_eq!(r.exc_type, "ValueError");
            assert_eq!(r.message, "nope");
            assert_eq!(r.line, Some(3));
            assert_eq!(r.location.as_deref(), Some("program"));
        }
        other => panic!("{other:?}"),
    }
});

probe!(p03_sys_exit_is_an_exception, {
    match outcome("import sys\ndef f():\n    sys.exit(0)\n", "f()") {
        RawOutcome::Raised(r) => assert_eq!(r.exc_type, "SystemExit"),
        other => panic!("{other:?}"),
    }
});

probe!(p04_os_exit_is_a_crash_and_later_calls_run, {
    let rep = sandbox()
        .execute(&job(
            "import os\ndef f(x):\n    if x: os._exit(0)\n    return 5\n",
            &["f(1)", "f(0)"],
        ))
        .unwrap();
    match &rep.calls[0] {
        RawOutcome::Crashed(why) => assert!(why.contains("code 0"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(returned(&rep.calls[1]), "5");
});

probe!(p05_os_exit_at_load_is_a_load_crash, {
    let rep = run("import os\nos._exit(3)\n", "1");
    assert!(
        matches!(&rep.load, LoadOutcome::Crashed(w) if w.contains("code 3")),
        "{:?}",
        rep.load
    );
    assert_eq!(rep.calls[0], RawOutcome::NotRun);
});

probe!(p06_infinite_loop_times_out_then_next_call_runs, {
    let rep = sandbox()
        .execute(&job(
            "def f(x):\n    while x: pass\n    return 1\n",
            &["f(1)", "f(0)"],
        ))
        .unwrap();
    assert!(
        matches!(rep.calls[0], RawOutcome::TimedOut(_)),
        "{:?}",
        rep.calls[0]
    );
    assert_eq!(returned(&rep.calls[1]), "1");
});

probe!(p06b_stop_after_timeout_leaves_later_calls_unrun, {
    let mut j = job(
        "def f(x):\n    while x: pass\n    return 1\n",
        &["f(1)", "f(0)", "f(1)"],
    );
    j.stop_after_timeout = true;
    j.test_timeout = Duration::from_millis(400);
    let rep = sandbox().execute(&j).unwrap();
    assert!(
        matches!(rep.calls[0], RawOutcome::TimedOut(_)),
        "{:?}",
        rep.calls[0]
    );
    assert_eq!(rep.calls[1..], [RawOutcome::NotRun, RawOutcome::NotRun]);
});

probe!(p07_sleep_times_out, {
    assert!(matches!(
        outcome("import time\ndef f():\n    time.sleep(60)\n", "f()"),
        RawOutcome::TimedOut(_)
    ));
});

probe!(p08_load_time_loop_times_out, {
    let mut j = job("while True: pass\n", &["1"]);
    j.load_timeout = Duration::from_millis(800);
    let rep = sandbox().execute(&j).unwrap();
    assert!(
        matches!(rep.load, LoadOutcome::TimedOut(_)),
        "{:?}",
        rep.load
    );
    assert_alive();
});

probe!(p09_recursion_error_is_an_exception, {
    match outcome("def f():\n    return f()\n", "f()") {
        RawOutcome::Raised(r) => assert_eq!(r.exc_type, "RecursionError"),
        other => panic!("{other:?}"),
    }
});

// ------------------------------------------------------------------ signals and crashes

probe!(p10_sigsegv_via_ctypes, {
    assert_eq!(
        outcome(
            "import ctypes\ndef f():\n    return ctypes.string_at(0)\n",
            "f()"
        ),
        RawOutcome::KilledBySignal(11)
    );
});

probe!(p11_stack_overflow_segfaults, {
    // repr of a deeply nested list recurses in C; with the recursion limit lifted the C stack
    // overflows.
    let mut j = job(
        "import sys\nsys.setrecursionlimit(10**8)\ndef f():\n    x = []\n    for _ in range(2 * 10**5):\n        x = [x]\n    return len(repr(x))\n",
        &["f()"],
    );
    j.test_timeout = Duration::from_secs(8);
    let rep = sandbox().execute(&j).unwrap();
    assert_eq!(rep.calls[0], RawOutcome::KilledBySignal(11));
    assert_alive();
});

probe!(p12_sigkill_self, {
    assert_eq!(
        outcome(
            "import os, signal\ndef f():\n    os.kill(os.getpid(), signal.SIGKILL)\n",
            "f()"
        ),
        RawOutcome::KilledBySignal(9)
    );
});

probe!(p13_abort, {
    assert_eq!(
        outcome("import os\ndef f():\n    os.abort()\n", "f()"),
        RawOutcome::KilledBySignal(6)
    );
});

probe!(p14_alarm_signal, {
    assert_eq!(
        outcome(
            "import signal, time\ndef f():\n    signal.alarm(1)\n    time.sleep(5)\n",
            "f()"
        ),
        RawOutcome::KilledBySignal(14)
    );
});

probe!(p15_kill_parent, {
    let o = outcome(
        "import os, signal\ndef f():\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 1\n",
        "f()",
    );
    blocked(&o, "sending signal");
});

probe!(p16_kill_everything, {
    // kill(-1): in a pid namespace there is nothing else to kill; without one, Landlock's
    // signal scope (ABI >= 6) skips every process outside the sandbox. Either way the harness
    // and the workers survive (checked by `outcome`), and the call cannot count as a kill.
    let o = outcome(
        "import os, signal\ndef f():\n    os.kill(-1, signal.SIGKILL)\n    return 42\n",
        "f()",
    );
    assert!(
        matches!(
            o,
            RawOutcome::Blocked { .. }
                | RawOutcome::Raised(_)
                | RawOutcome::KilledBySignal(9)
                | RawOutcome::Returned(_)
        ),
        "{o:?}"
    );
});

probe!(p17_killpg_own_group, {
    let o = outcome(
        "import os, signal\ndef f():\n    os.killpg(0, signal.SIGKILL)\n    return 1\n",
        "f()",
    );
    assert!(
        matches!(
            o,
            RawOutcome::Blocked { .. } | RawOutcome::KilledBySignal(9)
        ),
        "{o:?}"
    );
});

// ------------------------------------------------------------------ processes and threads

probe!(p18_fork_bomb, {
    blocked(
        &outcome(
            "import os\ndef f():\n    while True:\n        os.fork()\n",
            "f()",
        ),
        "starting a process",
    );
});

probe!(p19_subprocess, {
    blocked(
        &outcome(
            "import subprocess\ndef f():\n    return subprocess.run(['id'], capture_output=True).stdout\n",
            "f()",
        ),
        "starting a process",
    );
});

probe!(p20_os_system_cannot_run_commands, {
    let m = marker("system");
    let o = outcome(
        &format!("import os\ndef f():\n    return os.system('touch {m}')\n"),
        "f()",
    );
    assert_ne!(returned(&o), "0");
    assert_not_written(&m);
});

probe!(p21_execv, {
    blocked(
        &outcome(
            "import os\ndef f():\n    os.execv('/bin/sh', ['sh', '-c', 'id'])\n",
            "f()",
        ),
        "starting a process",
    );
});

probe!(p22_thread_bomb_is_contained, {
    let o = slow_outcome(
        "import threading, time\ndef f():\n    ts = []\n    while True:\n        t = threading.Thread(target=time.sleep, args=(30,))\n        t.start()\n        ts.append(t)\n",
        "f()",
    );
    assert!(
        matches!(
            o,
            RawOutcome::Raised(_) | RawOutcome::MemoryLimit | RawOutcome::TimedOut(_)
        ),
        "{o:?}"
    );
});

probe!(p23_threads_still_work, {
    assert_eq!(
        returned(&outcome(
            "import threading\ndef f():\n    out = []\n    ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n    [t.start() for t in ts]\n    [t.join() for t in ts]\n    return sorted(out)\n",
            "f()"
        )),
        "[0, 1, 2, 3, 4, 5, 6, 7]"
    );
});

// ------------------------------------------------------------------ memory and output

probe!(p24_memory_bomb_at_once, {
    assert_eq!(
        outcome("def f():\n    return len(bytearray(8 << 30))\n", "f()"),
        RawOutcome::MemoryLimit
    );
});

probe!(p25_memory_bomb_gradual, {
    assert_eq!(
        slow_outcome(
            "def f():\n    xs = []\n    while True:\n        xs.append(' ' * 10**7)\n",
            "f()"
        ),
        RawOutcome::MemoryLimit
    );
});

probe!(p26_infinite_stdout, {
    assert!(matches!(
        outcome(
            "def f():\n    while True:\n        print('x' * 1000)\n",
            "f()"
        ),
        RawOutcome::OutputLimit(_)
    ));
});

probe!(p27_infinite_stderr_at_load, {
    let rep = run(
        "import sys\nwhile True:\n    sys.stderr.write('y' * 4096)\n",
        "1",
    );
    assert!(
        matches!(rep.load, LoadOutcome::OutputLimit(_)),
        "{:?}",
        rep.load
    );
});

probe!(p28_huge_file_in_scratch, {
    let o = outcome(
        "def f():\n    with open('big', 'wb') as fh:\n        for _ in range(64):\n            fh.write(b'x' * (1 << 20))\n",
        "f()",
    );
    blocked(&o, "larger than");
});

// ------------------------------------------------------------------ files

probe!(p29_read_shadow, {
    blocked(
        &outcome("def f():\n    return open('/etc/shadow').read()\n", "f()"),
        "/etc/shadow",
    );
});

probe!(p30_read_passwd, {
    blocked(
        &outcome("def f():\n    return open('/etc/passwd').read()\n", "f()"),
        "/etc/passwd",
    );
});

probe!(p31_list_root, {
    blocked(
        &outcome("import os\ndef f():\n    return os.listdir('/')\n", "f()"),
        "/",
    );
});

probe!(p32_read_harness_source, {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let o = outcome(
        &format!("def f():\n    return open('{path}').read()\n"),
        "f()",
    );
    // A checkout under /tmp is not even visible (the sandbox mounts a private tmpfs there);
    // elsewhere Landlock denies the read. Either way the source never comes back.
    match &o {
        RawOutcome::Raised(e) if e.exc_type == "FileNotFoundError" && path.starts_with("/tmp/") => {
        }
        _ => blocked(&o, "Cargo.toml"),
    }
});

probe!(p33_write_tmp_outside_scratch, {
    let m = marker("write");
    blocked(
        &outcome(
            &format!("def f():\n    open('{m}', 'w').write('owned')\n"),
            "f()",
        ),
        &m,
    );
    assert_not_written(&m);
});

probe!(p34_symlink_escape, {
    let o = outcome(
        "import os\ndef f():\n    os.symlink('/etc/shadow', 'link')\n    return open('link').read()\n",
        "f()",
    );
    assert!(matches!(o, RawOutcome::Blocked { .. }), "{o:?}");
});

probe!(p35_proc_of_others, {
    let o = outcome(
        "def f():\n    return open('/proc/1/environ', 'rb').read()\n",
        "f()",
    );
    assert!(matches!(o, RawOutcome::Blocked { .. }), "{o:?}");
});

probe!(p36_scratch_is_private_and_removed, {
    let o = outcome(
        "import os\ndef f():\n    open('note.txt', 'w').write('hi')\n    return [os.getcwd(), sorted(os.listdir('.'))]\n",
        "f()",
    );
    let s = returned(&o);
    assert!(s.contains("note.txt"), "{s}");
    // A second execution does not see the first one's files.
    let o2 = outcome("import os\ndef f():\n    return os.listdir('.')\n", "f()");
    assert_eq!(returned(&o2), "[]");
});

probe!(p37_environment_is_empty, {
    let o = outcome(
        "import os\ndef f():\n    return sorted(os.environ)\n",
        "f()",
    );
    let s = returned(&o);
    for key in ["PATH", "CARGO", "USER", "SSH", "TOKEN", "KEY"] {
        assert!(!s.contains(key), "{key} leaked: {s}");
    }
});

probe!(p38_dev_shm, {
    let o = outcome(
        "def f():\n    open('/dev/shm/codegen-redteam', 'w').write('x')\n",
        "f()",
    );
    assert!(matches!(o, RawOutcome::Blocked { .. }), "{o:?}");
    assert_not_written("/dev/shm/codegen-redteam");
});

// ------------------------------------------------------------------ network (127.0.0.1 only)

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn assert_no_connection(l: &TcpListener) {
    std::thread::sleep(Duration::from_millis(50));
    assert!(l.accept().is_err(), "the sandbox reached the listener");
}

probe!(p39_tcp_connect_to_local_listener, {
    let (l, port) = listener();
    let o = outcome(
        &format!(
            "import socket\ndef f():\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    s.sendall(b'hi')\n    return 1\n"
        ),
        "f()",
    );
    blocked(&o, "socket");
    assert_no_connection(&l);
});

probe!(p40_http_to_local_listener, {
    let (l, port) = listener();
    let o = outcome(
        &format!(
            "import urllib.request\ndef f():\n    return urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1).read()\n"
        ),
        "f()",
    );
    assert!(matches!(o, RawOutcome::Blocked { .. }), "{o:?}");
    assert_no_connection(&l);
});

probe!(p41_udp_to_local_listener, {
    let (l, port) = listener();
    let o = outcome(
        &format!(
            "import socket\ndef f():\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.sendto(b'x', ('127.0.0.1', {port}))\n"
        ),
        "f()",
    );
    blocked(&o, "socket");
    assert_no_connection(&l);
});

probe!(p42_raw_socket_via_ctypes, {
    // socket(AF_INET, SOCK_STREAM, 0) straight through libc: -1 (EPERM).
    assert_eq!(
        returned(&outcome(
            "import ctypes\ndef f():\n    return ctypes.CDLL(None).socket(2, 1, 0)\n",
            "f()"
        )),
        "-1"
    );
});

probe!(p43_unix_socketpair_allowed, {
    assert_eq!(
        returned(&outcome(
            "import socket\ndef f():\n    a, b = socket.socketpair()\n    a.send(b'ok')\n    return b.recv(2)\n",
            "f()"
        )),
        "b'ok'"
    );
});

/// A folder under /tmp that anyone may write to (mode 777, as a careless socket folder under
/// a home directory would be), outside every scratch directory; removed when dropped.
struct HostDir(PathBuf);

impl HostDir {
    fn new(name: &str) -> HostDir {
        let dir = PathBuf::from(marker(name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        HostDir(dir)
    }

    /// A path in the folder, for a socket anyone may connect to.
    fn socket(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_to_all(path: &str) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// The code connects to a listening Unix socket (by path, then by abstract name) and sends a
/// datagram to a bound Unix datagram socket (as to `/dev/log`): every one is blocked, and
/// nothing reaches the host's sockets.
fn host_unix_sockets_are_unreachable(sb: &WorkerSandbox, tag: &str) {
    let dir = HostDir::new(&format!("unix-{tag}"));
    let stream = dir.socket("agent.sock");
    let listener = UnixListener::bind(&stream).unwrap();
    listener.set_nonblocking(true).unwrap();
    open_to_all(&stream);
    let abstract_name = format!("codegen-redteam-{}-{tag}", std::process::id());
    let abstract_listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(&abstract_name).unwrap()).unwrap();
    abstract_listener.set_nonblocking(true).unwrap();
    let log = dir.socket("log");
    let datagrams = UnixDatagram::bind(&log).unwrap();
    datagrams.set_nonblocking(true).unwrap();
    open_to_all(&log);

    let probes = [
        format!(
            "import socket\ndef f():\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    s.connect({stream:?})\n    s.sendall(b'hi')\n    return 1\n"
        ),
        format!(
            "import socket\ndef f():\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    s.connect('\\0{abstract_name}')\n    s.sendall(b'hi')\n    return 1\n"
        ),
        format!(
            "import socket\ndef f():\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    s.sendto(b'<13>hi', {log:?})\n    return 1\n"
        ),
        // Straight through libc: socket(AF_UNIX, SOCK_STREAM, 0) answers -1.
        "import ctypes\ndef f():\n    return ctypes.CDLL(None).socket(1, 1, 0)\n".to_string(),
        // A datagram pair is refused too: only stream pairs (asyncio's self-pipe) remain.
        "import socket\ndef f():\n    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n    return 1\n"
            .to_string(),
    ];
    for program in &probes {
        let rep = sb
            .execute(&job(program, &["f()"]))
            .expect("no harness error");
        assert_eq!(rep.load, LoadOutcome::Loaded, "{rep:?}");
        match &rep.calls[0] {
            RawOutcome::Returned(v) => assert_eq!(v.repr(), "-1", "{program}"),
            o => assert!(matches!(o, RawOutcome::Blocked { .. }), "{program}: {o:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(listener.accept().is_err(), "the sandbox reached {stream}");
    assert!(
        abstract_listener.accept().is_err(),
        "the sandbox reached the abstract socket {abstract_name}"
    );
    let mut buf = [0u8; 64];
    assert!(
        datagrams.recv(&mut buf).is_err(),
        "the sandbox sent to {log}"
    );
}

probe!(p43b_host_unix_sockets_unreachable, {
    host_unix_sockets_are_unreachable(sandbox(), "configured");
    assert_alive();
});

probe!(p43c_host_unix_sockets_unreachable_at_basic, {
    host_unix_sockets_are_unreachable(basic_sandbox(), "basic");
});

// ------------------------------------------------------------------ kernel attack surface

probe!(p44_ptrace_unshare_mount_bpf_io_uring_denied, {
    let o = outcome(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\ndef f():\n    return [libc.ptrace(16, 1, 0, 0), libc.unshare(0x10000000), libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), libc.syscall(321, 0, 0, 0), libc.syscall(425, 8, 0), libc.syscall(298, 0, 0, -1, -1, 0)]\n",
        "f()",
    );
    assert_eq!(returned(&o), "[-1, -1, -1, -1, -1, -1]");
});

probe!(p45_raise_rlimit, {
    let o = outcome(
        "import resource\ndef f():\n    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n    return 1\n",
        "f()",
    );
    assert!(
        matches!(o, RawOutcome::Blocked { .. } | RawOutcome::Raised(_)),
        "{o:?}"
    );
});

probe!(p46_setuid, {
    let o = outcome(
        "import os\ndef f():\n    os.setuid(1000)\n    return 1\n",
        "f()",
    );
    assert!(matches!(o, RawOutcome::Blocked { .. }), "{o:?}");
});

// ------------------------------------------------------------------ forging results

probe!(p47_lying_int_subclass, {
    assert!(matches!(
        outcome(
            "class L(int):\n    def __eq__(self, o): return True\ndef f():\n    return L(3)\n",
            "f()"
        ),
        RawOutcome::Unsupported(_)
    ));
});

probe!(p48_forged_eq_object, {
    assert!(matches!(
        outcome(
            "class A:\n    __eq__ = lambda s, o: True\n    __hash__ = object.__hash__\ndef f():\n    return [A()]\n",
            "f()"
        ),
        RawOutcome::Unsupported(_)
    ));
});

probe!(p49_write_forged_result_to_fd3, {
    let o = outcome(
        "import os\ndef f():\n    os.write(3, b'{\"event\":\"test\",\"index\":0,\"kind\":\"returned\",\"value\":[\"int\",\"42\"]}\\n')\n    return 0\n",
        "f()",
    );
    not_a_pass(&o, "42");
    tampered(&o, "answers no request");
});

probe!(p50_spray_all_fds, {
    let o = outcome(
        "import os\ndef f():\n    for fd in range(64):\n        try:\n            os.write(fd, b'{\"event\":\"done\"}\\n')\n        except OSError:\n            pass\n    return 0\n",
        "f()",
    );
    not_a_pass(&o, "42");
});

probe!(p51_close_all_fds, {
    let o = outcome(
        "import os\ndef f():\n    os.closerange(0, 1024)\n    return 42\n",
        "f()",
    );
    not_a_pass(&o, "42");
    assert!(matches!(o, RawOutcome::Crashed(_)), "{o:?}");
});

probe!(p52_dup_over_result_fd, {
    let o = outcome(
        "import os\ndef f():\n    os.dup2(1, 3)\n    return 42\n",
        "f()",
    );
    not_a_pass(&o, "42");
});

probe!(p53_patch_json_and_builtins, {
    let o = outcome(
        "import json, builtins\njson.dumps = lambda *a, **k: '{\"kind\":\"returned\",\"value\":[\"int\",\"42\"]}'\njson._default_encoder = None\nbuiltins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\nbuiltins.len = lambda *a: 0\ndef f():\n    return 0\n",
        "f()",
    );
    assert_eq!(returned(&o), "0");
});

probe!(p54_late_thread_forges_after_return, {
    let o = outcome(
        "import os, threading, time\ndef spam():\n    for _ in range(200):\n        try:\n            os.write(3, b'{\"event\":\"test\",\"index\":0,\"kind\":\"returned\",\"value\":[\"int\",\"42\"]}\\n')\n        except OSError:\n            pass\n        time.sleep(0.0005)\ndef f():\n    threading.Thread(target=spam, daemon=True).start()\n    time.sleep(0.01)\n    return 0\n",
        "f()",
    );
    not_a_pass(&o, "42");
});

probe!(p55_check_block_with_forged_eq_does_not_pass, {
    let mut j = job(
        "class A:\n    def __eq__(self, o): return True\ndef f(x):\n    return A()\n",
        &[],
    );
    j.check = Some("def check(candidate):\n    assert candidate(1) == 2\n".into());
    let rep = sandbox().execute(&j).unwrap();
    let c = rep.check.unwrap();
    assert!(matches!(c, RawOutcome::Unsupported(_)), "{c:?}");
});

probe!(p56_check_block_with_patched_builtins_does_not_pass, {
    let mut j = job(
        "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 100.0\n",
        &[],
    );
    j.check = Some("def check(candidate):\n    assert abs(candidate(1) - 2.0) < 1e-6\n".into());
    let rep = sandbox().execute(&j).unwrap();
    let c = rep.check.unwrap();
    assert!(
        matches!(c, RawOutcome::Raised(ref r) if r.exc_type == "AssertionError"),
        "{c:?}"
    );
});

probe!(p57_check_block_passes_honest_solution, {
    // The check's helpers come from the trusted prompt (the prelude), not the program.
    let mut j = job(
        "def helper(x):\n    return x + 1\ndef f(x):\n    return helper(x)\n",
        &[],
    );
    j.check = Some("def check(candidate):\n    assert candidate(1) == helper(1) == 2\n".into());
    j.prelude = Some("def helper(x):\n    return x + 1\ndef f(x):\n    \"\"\"doc\"\"\"\n".into());
    assert_eq!(
        sandbox().execute(&j).unwrap().check,
        Some(RawOutcome::CheckPassed)
    );
});

// ------------------------------------------------------------------ forging verdicts (#21)

/// Python that walks the interpreter's frames from `start` (an expression giving a frame) and
/// collects every string named `token` (main's per-execution secret) and every function named
/// `send` it finds in their locals and globals, as `tokens` and `senders`.
fn frame_walk(start: &str) -> String {
    format!(
        "    tokens, senders = [], []\n    fr = {start}\n    while fr is not None:\n        for d in (fr.f_locals, fr.f_globals):\n            for k, v in list(d.items()):\n                if k == 'token' and isinstance(v, str):\n                    tokens.append(v)\n                if callable(v) and getattr(v, '__name__', '') == 'send':\n                    senders.append(v)\n        fr = fr.f_back\n"
    )
}

/// Forge, with everything the frame walk found: the old protocol's messages (with each
/// token), the new one's replies for requests 1 to 4 and its end, a check verdict; then
/// `after` (e.g. `return 0`, `os._exit(0)`).
fn forge(after: &str) -> String {
    "    import os, json\n    msgs = []\n    for t in tokens + [None]:\n        msgs += [{'event': 'test', 'index': i, 'kind': 'returned', 'value': ['int', '42'], 't': t} for i in range(3)]\n        msgs += [{'event': 'check', 'kind': 'passed', 't': t}, {'event': 'done', 't': t}]\n    msgs += [{'event': 'reply', 'seq': s, 'kind': 'returned', 'value': ['int', '42']} for s in range(1, 5)]\n    msgs += [{'op': 'done', 'kind': 'passed'}, {'event': 'end', 'seq': 2, 'busy': 0.0}]\n    for m in msgs:\n        for send in senders:\n            try:\n                send(dict(m))\n            except Exception:\n                pass\n        try:\n            os.write(3, (json.dumps(m) + '\\n').encode())\n        except OSError:\n            pass\n".to_string()
        + "    "
        + after
        + "\n"
}

probe!(p58_frame_walk_to_the_token_forges_no_value, {
    // During call 0, forge "test 1 returned 42" (and every other message) with whatever the
    // frames hold: call 0 is reported as tampering and call 1, run afresh, as what it returned.
    let program = format!(
        "import sys\ndef forge_all():\n{}{}def f(x):\n    if x == 0:\n        forge_all()\n    return 7\n",
        frame_walk("sys._getframe()"),
        forge("pass")
    );
    let rep = sandbox()
        .execute(&job(&program, &["f(0)", "f(1)"]))
        .expect("no harness error");
    assert_alive();
    not_a_pass(&rep.calls[0], "42");
    assert!(matches!(rep.calls[0], RawOutcome::Tampered(_)), "{rep:?}");
    assert_eq!(returned(&rep.calls[1]), "7");
});

probe!(p58b_a_reply_before_its_request_is_tampering, {
    // Replies in the new protocol's own format, written at once during call 0: the one for
    // call 0 is a value the code could have returned; the one for call 1, written before the
    // harness asked for call 1, is tampering.
    let program = "import os\ndef f(x):\n    if x == 0:\n        os.write(3, b'{\"event\":\"reply\",\"seq\":1,\"kind\":\"returned\",\"value\":[\"int\",\"42\"]}\\n{\"event\":\"reply\",\"seq\":2,\"kind\":\"returned\",\"value\":[\"int\",\"42\"]}\\n')\n        os._exit(0)\n    return 7\n";
    let rep = sandbox()
        .execute(&job(program, &["f(0)", "f(1)"]))
        .expect("no harness error");
    assert_alive();
    not_a_pass(&rep.calls[1], "42");
    tampered(&rep.calls[1], "before the harness sent it");
});

probe!(p59_frame_walk_to_send_after_an_exception_then_exit, {
    // The traceback's frames lead to the worker's functions; forge, then os._exit(0) so that
    // no honest reply follows.
    let program = format!(
        "def f(x):\n    try:\n        1 / 0\n    except ZeroDivisionError as e:\n        tb = e.__traceback__\n{}{}    return 7\n",
        frame_walk("tb.tb_frame"),
        forge("os._exit(0)")
    );
    let rep = sandbox()
        .execute(&job(&program, &["f(0)", "f(1)"]))
        .expect("no harness error");
    assert_alive();
    for call in &rep.calls {
        not_a_pass(call, "42");
        assert!(
            matches!(call, RawOutcome::Tampered(_) | RawOutcome::Crashed(_)),
            "{rep:?}"
        );
    }
});

probe!(p59b_a_reply_of_kind_passed_is_tampering, {
    // Only the trusted side says "passed" or "timed out". The child's message of that kind for
    // the waiting call (with main's token, then as a reply) is tampering; on main it passed a
    // value test. In a check block's call, the same.
    let program = format!(
        "import os, sys, json\ndef forge(kind):\n{}    for t in tokens:\n        os.write(3, (json.dumps({{'event': 'test', 'index': 0, 'kind': kind, 't': t}}) + '\\n').encode())\n    os.write(3, (json.dumps({{'event': 'reply', 'seq': 1, 'kind': kind}}) + '\\n').encode())\n    os._exit(0)\ndef f(kind):\n    forge(kind)\n",
        frame_walk("sys._getframe()")
    );
    for kind in ["passed", "timeout", "crashed"] {
        let call = format!("f('{kind}')");
        let rep = sandbox()
            .execute(&job(&program, &[&call]))
            .expect("no harness error");
        assert_alive();
        not_a_pass(&rep.calls[0], "");
        tampered(&rep.calls[0], "");
    }
    let o = check_outcome(&check_job(
        &program,
        "def check(candidate):\n    candidate('passed')\n",
        None,
    ));
    assert!(matches!(o, RawOutcome::Tampered(_)), "{o:?}");
});

fn check_job(program: &str, check: &str, prelude: Option<&str>) -> Job {
    let mut j = job(program, &[]);
    j.check = Some(check.into());
    j.prelude = prelude.map(str::to_string);
    j
}

fn check_outcome(j: &Job) -> RawOutcome {
    let rep = sandbox().execute(j).expect("no harness error");
    assert_alive();
    assert_eq!(rep.load, LoadOutcome::Loaded, "{rep:?}");
    rep.check.expect("a check outcome")
}

probe!(p60_check_block_forged_pass_then_exit_is_not_a_pass, {
    // The wrong answer forges the check's verdict with everything the frames hold (main's
    // token and send function; the new protocol's messages too), then exits or returns: the
    // check, in its own process, never passes.
    for after in ["os._exit(0)", "return 2"] {
        let program = format!(
            "import sys, os, json\ndef f(x):\n{}    msgs = [{{'event': 'check', 'kind': 'passed', 't': t}} for t in tokens]\n    msgs += [{{'event': 'done', 't': t}} for t in tokens]\n    msgs += [{{'event': 'reply', 'seq': 1, 'kind': 'passed'}}, {{'op': 'done', 'kind': 'passed'}}, {{'event': 'end', 'seq': 2}}]\n    for m in msgs:\n        for send in senders:\n            send(dict(m))\n        os.write(3, (json.dumps(m) + '\\n').encode())\n    {after}\n",
            frame_walk("sys._getframe()")
        );
        let o = check_outcome(&check_job(
            &program,
            "def check(candidate):\n    assert candidate(1) == 1\n",
            None,
        ));
        assert_ne!(o, RawOutcome::CheckPassed, "{after}: {o:?}");
        assert!(matches!(o, RawOutcome::Tampered(_)), "{after}: {o:?}");
    }
});

probe!(p61_check_block_helpers_come_from_the_prompt, {
    // HumanEval/32: the check judges find_zero with the prompt's poly. A candidate that
    // redefines poly (to 0 everywhere) passed on main; the prompt's poly is used now.
    let prelude = "import math\ndef poly(xs: list, x: float):\n    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])\ndef find_zero(xs: list):\n    \"\"\"doc\"\"\"\n";
    let cheat = "def poly(xs, x):\n    return 0.0\ndef find_zero(xs):\n    return 12345.0\n";
    let honest = "import math\ndef poly(xs, x):\n    return sum([c * math.pow(x, i) for i, c in enumerate(xs)])\ndef find_zero(xs):\n    lo, hi = -1.0, 1.0\n    while poly(xs, lo) * poly(xs, hi) > 0:\n        lo *= 2.0\n        hi *= 2.0\n    while hi - lo > 1e-10:\n        mid = (lo + hi) / 2.0\n        if poly(xs, mid) * poly(xs, lo) > 0:\n            lo = mid\n        else:\n            hi = mid\n    return lo\n";
    let check = "def check(candidate):\n    import copy\n    for coeffs in ([1, 2], [-6, 11, -6, 1], [3, -4, 1]):\n        solution = candidate(copy.deepcopy(coeffs))\n        assert abs(poly(coeffs, solution)) < 1e-4\n";
    let find_zero = |program: &str| {
        let mut j = check_job(program, check, Some(prelude));
        j.entry_point = "find_zero".into();
        check_outcome(&j)
    };
    let o = find_zero(cheat);
    assert!(
        matches!(&o, RawOutcome::Raised(r) if r.exc_type == "AssertionError"),
        "{o:?}"
    );
    assert_eq!(find_zero(honest), RawOutcome::CheckPassed);
    // The entry point's name is the candidate too (HumanEval/33 calls sort_third by name),
    // whatever else the program binds to it.
    let by_name = "def check(candidate):\n    assert f(1) == 2\n";
    let program = "def f(x):\n    return 3\ndef g():\n    pass\n";
    let o = check_outcome(&check_job(
        program,
        by_name,
        Some("def f(x):\n    \"\"\"doc\"\"\"\n"),
    ));
    assert!(
        matches!(&o, RawOutcome::Raised(r) if r.exc_type == "AssertionError"),
        "{o:?}"
    );
});

probe!(
    p62_check_block_channel_carries_values_mutations_and_exceptions,
    {
        // Arguments the candidate changes in place come back; its exceptions arrive as the
        // nearest builtin type, with its own type and line in the verdict when uncaught.
        let program = "class MyError(ValueError):\n    pass\ndef f(xs, d=None):\n    if xs is None:\n        raise MyError('no list')\n    xs.sort()\n    if d is not None:\n        d['seen'] = len(xs)\n    return len(xs)\n";
        let check = "def check(candidate):\n    xs = [3, 1, 2]\n    d = {}\n    assert candidate(xs, d=d) == 3\n    assert xs == [1, 2, 3] and d == {'seen': 3}\n    try:\n        candidate(None)\n        assert False\n    except ValueError as e:\n        assert str(e) == 'no list'\n    candidate(None)\n";
        match check_outcome(&check_job(program, check, None)) {
            RawOutcome::Raised(r) => {
                assert_eq!(r.exc_type, "MyError");
                assert_eq!(r.location.as_deref(), Some("program"));
                assert_eq!(r.line, Some(5));
            }
            other => panic!("{other:?}"),
        }
        // A generator (or any object) cannot cross: a clear verdict, even when the check
        // swallows the refusal.
        let o = check_outcome(&check_job(
            "def f(x):\n    yield x\n",
            "def check(candidate):\n    try:\n        list(candidate(1))\n    except BaseException:\n        pass\n",
            None,
        ));
        assert!(
            matches!(&o, RawOutcome::Unsupported(w) if w.contains("generator")),
            "{o:?}"
        );
    }
);

probe!(
    p63_a_check_that_does_not_finish_gets_a_fresh_check_process,
    {
        // The trusted check process serves one check after another; one stopped in the middle of
        // a check (here: its own loop) is killed, and the next checks run in a fresh one, with
        // nothing left of the last check's names.
        let mut j = check_job(
            "def f(x):\n    return x\n",
            "LEFT = 1\ndef check(candidate):\n    while candidate(1) == 1:\n        pass\n",
            None,
        );
        j.test_timeout = Duration::from_millis(700);
        assert!(
            matches!(check_outcome(&j), RawOutcome::TimedOut(_)),
            "a looping check block"
        );
        for _ in 0..4 {
            let o = check_outcome(&check_job(
                "def f(x):\n    return x + 1\n",
                "def check(candidate):\n    assert 'LEFT' not in globals()\n    assert candidate(1) == 2\n",
                None,
            ));
            assert_eq!(o, RawOutcome::CheckPassed);
        }
    }
);

probe!(p64_tampering_with_the_check_channel_is_reported, {
    // The candidate answers a check's calls on fd 7, straight to the trusted check process,
    // which holds the same rules: one reply per request, by sequence number, of a kind a
    // child may report.
    let check =
        "def check(candidate):\n    assert candidate(1) == 1\n    assert candidate(2) == 2\n";
    for (forged, what) in [
        // a second reply to request 1 (a value it could have returned, then the honest one;
        // caught as a second reply or, when it comes late, as no reply to request 2)
        (
            "{\"event\":\"reply\",\"seq\":1,\"kind\":\"returned\",\"value\":[\"int\",\"1\"]}",
            "reply",
        ),
        // a verdict only the check decides
        (
            "{\"event\":\"reply\",\"seq\":1,\"kind\":\"passed\"}",
            "kind",
        ),
        // a reply to request 2 before it was sent, then the honest reply to request 1
        (
            "{\"event\":\"reply\",\"seq\":2,\"kind\":\"returned\",\"value\":[\"int\",\"2\"]}",
            "reply",
        ),
    ] {
        let program = format!(
            "import os\ndef f(x):\n    if x == 1:\n        os.write(7, b'{}\\n')\n    return x\n",
            forged.replace('\\', "\\\\")
        );
        let o = check_outcome(&check_job(&program, check, None));
        tampered(&o, what);
    }
    // Forging the value of the waiting call and leaving: a value it could have returned, so
    // the check passes, or the exit is seen first and the program crashed; never tampering.
    // (The value as the channel carries an int: plain JSON.)
    let program = "import os\ndef f(x):\n    os.write(7, b'{\"event\":\"reply\",\"seq\":%d,\"kind\":\"returned\",\"value\":%d}\\n' % (x, x))\n    os._exit(0)\n";
    let once = "def check(candidate):\n    assert candidate(1) == 1\n";
    let o = check_outcome(&check_job(program, once, None));
    assert!(
        o == RawOutcome::CheckPassed
            || matches!(&o, RawOutcome::Crashed(w) if w.contains("code 0")),
        "{o:?}"
    );
    // The next call finds it gone: how it ended is the check's outcome.
    let o = check_outcome(&check_job(program, check, None));
    assert!(
        matches!(&o, RawOutcome::Crashed(w) if w.contains("code 0")),
        "{o:?}"
    );
});

// ------------------------------------------------------------------ reporting

#[test]
fn isolation_report_is_structured() {
    let r = sandbox().isolation_report().expect("a report");
    let json = serde_json::to_value(&r).unwrap();
    assert!(
        json.get("landlock_abi").is_some() && json.get("level").is_some(),
        "{json}"
    );
    assert!(!sandbox().isolation().is_empty());
}

#[test]
fn expected_values_are_evaluated() {
    let v = sandbox()
        .evaluate_expected(&["(1, 2.5)".into(), "{'a': [None]}".into()])
        .unwrap();
    assert_eq!(v[0].repr(), "(1, 2.5)");
    assert!(sandbox().evaluate_expected(&["1/0".into()]).is_err());
}

#[test]
fn calibration_uses_the_reference_with_a_floor() {
    let policy = TimeoutPolicy {
        floor: Duration::from_millis(500),
        factor: 4.0,
        ceiling: Duration::from_secs(10),
        runs: 2,
    };
    let fast = job("def f(x):\n    return x + 1\n", &["f(1)", "f(2)"]);
    assert_eq!(
        calibrate(sandbox(), &fast, &policy).unwrap(),
        Duration::from_millis(500)
    );
    let slow = job(
        "import time\ndef f(x):\n    time.sleep(0.2)\n    return x\n",
        &["f(1)"],
    );
    let t = calibrate(sandbox(), &slow, &policy).unwrap();
    assert!(t >= Duration::from_millis(800), "{t:?}");
    let broken = job("def f(x):\n    return 1 / 0\n", &["f(1)"]);
    assert!(matches!(
        calibrate(sandbox(), &broken, &policy),
        Err(SandboxError::Calibration(_))
    ));
}

#[test]
fn a_dead_worker_is_replaced_and_the_case_reported() {
    // Kill every process of the worker from outside (as an OOM killer would): the case in
    // flight is reported as crashed and the next one runs on a fresh worker.
    let sb = WorkerSandbox::new(&SandboxConfig {
        workers: 1,
        level: sandbox().config().level,
        python: sandbox().config().python.clone(),
        allow_host_root: true,
        ..SandboxConfig::default()
    })
    .unwrap();
    let mut j = job("import time\ndef f():\n    time.sleep(30)\n", &["f()"]);
    j.test_timeout = Duration::from_secs(20);
    std::thread::scope(|s| {
        let h = s.spawn(|| sb.execute(&j).unwrap());
        std::thread::sleep(Duration::from_millis(500));
        sb.kill_workers_for_test();
        let rep = h.join().unwrap();
        assert!(
            matches!(&rep.load, LoadOutcome::Crashed(w) if w.contains("replaced")),
            "{:?}",
            rep.load
        );
    });
    let rep = sb
        .execute(&job("def f():\n    return 7\n", &["f()"]))
        .unwrap();
    assert_eq!(returned(&rep.calls[0]), "7");
}
