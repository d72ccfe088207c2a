"""Warm sandbox worker for codegen-harness.

Started once per worker by Rust (`python3 -I -S -B -c <this> <config json>`), inside fresh user,
network, mount, pid and IPC namespaces when the level is "strict". It reads one JSON job per line
on stdin, forks a child per execution, and writes one JSON report per job on fd 3.

The child locks itself down before any generated code runs: rlimits, a Landlock ruleset (read-only
Python and shared libraries, a private writable scratch directory), and a seccomp filter built in
Rust (no new processes, no exec, no ptrace, no mount or namespace calls, no sockets: only
stream socket pairs).
The worker never runs generated code itself; it enforces per-call deadlines and the output limit,
asks the child for each call (one reply per request, by sequence number: a second reply, a reply
before its request or a line nobody asked for is reported as tampering), and reports in words.

A check block runs in a trusted process of its own (one per worker, forked from it): the
case's prompt (its helpers), then the check, with the entry point bound to a stub that calls the
candidate directly over two pipes (fds 6 and 7 in the candidate), with values only. Nothing the candidate defines or sends can be
a verdict of the check. docs/sandbox.md says what crosses that channel.

Expected values never come here. The child reports what each call returned in a strict canonical
form built from exact builtin types; Rust compares.
"""

import sys


def _worker():  # noqa: C901 - one closure so nothing lives in patchable module globals
    import ctypes
    import errno
    import json
    import os
    import select
    import signal
    import struct
    import time

    # Modules generated code commonly imports: loaded once here so the locked-down child
    # rarely needs to read the stdlib at all. Not `random` itself: it reseeds itself in every
    # forked child (an at-fork hook), which costs ~45 copy-on-write faults in each of them,
    # while the few programs that use it load it themselves (freshly seeded, as before); its
    # extension modules are preloaded so that this costs them less.
    for name in (
        "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
        "typing", "operator", "copy", "struct",
        "resource", "_json", "_random", "_sha512",
    ):
        try:
            __import__(name)
        except Exception:
            pass
    import _thread

    # Threads that generated code starts get 1 MiB stacks (RLIMIT_AS counts them). Set here,
    # once: children inherit it, and the worker starts no threads.
    try:
        _thread.stack_size(1 << 20)
    except Exception:
        pass

    cfg = json.loads(sys.argv[1])
    limits = cfg["limits"]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    machine = os.uname().machine
    SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}.get(machine)
    SYS_LL_CREATE, SYS_LL_ADD, SYS_LL_RESTRICT = 444, 445, 446

    result_out = 3
    PR_SET_PDEATHSIG = 1

    # ---------------------------------------------------------------- pid namespace init
    if cfg.get("pidns"):
        pid = os.fork()
        if pid:
            # The outer process only waits: the worker proper is pid 1 of the new namespace,
            # so nothing inside can SIGKILL it, and when it dies everything inside dies too.
            os.close(0)
            os.close(result_out)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            while True:
                try:
                    _, status = os.waitpid(pid, 0)
                    break
                except ChildProcessError:
                    os._exit(1)
                except InterruptedError:
                    continue
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        # The worker proper dies with the outer process, which dies with the harness (Rust set
        # its parent-death signal); everything in the namespace dies with pid 1. Should the
        # outer process be gone already, stdin is at EOF and the worker exits at its first read.
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGQUIT, signal.SIGALRM):
        signal.signal(sig, signal.SIG_IGN)

    # The worker and its check process share one CPU (the worker's slot among the CPUs it may
    # run on, round-robin): a check's calls go back and forth between the check process and
    # the candidate, and a wake-up on another, idle CPU costs more than the work it carries.
    # Only these two trusted processes are pinned. Each child running generated code or
    # expected values gets every CPU back before anything of its own runs (spawn_child), so
    # that the scheduler keeps it beside its check process while that CPU is free and moves
    # it when that CPU is busy: its deadlines are as before.
    all_cpus = os.sched_getaffinity(0)
    if len(all_cpus) > 1 and type(cfg.get("cpu_slot")) is int:
        try:
            os.sched_setaffinity(0, {sorted(all_cpus)[cfg["cpu_slot"] % len(all_cpus)]})
        except OSError:
            all_cpus = None
    else:
        all_cpus = None

    base = cfg["scratch_base"]
    if cfg.get("mount"):
        MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "making mounts private")
        opts = ("size=%dm,mode=0700" % limits["scratch_mb"]).encode()
        if libc.mount(b"tmpfs", base.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
            raise OSError(ctypes.get_errno(), "mounting the scratch tmpfs")

    # ---------------------------------------------------------------- lockdown pieces
    def landlock_abi():
        r = libc.syscall(SYS_LL_CREATE, None, 0, 1)
        return int(r) if r > 0 else 0

    abi = landlock_abi() if cfg.get("landlock") else 0

    def real_dirs(paths):
        out = []
        for p in paths:
            if p and os.path.exists(p):
                rp = os.path.realpath(p)
                if rp not in out:
                    out.append(rp)
        return out

    stdlib = os.path.dirname(os.__file__)
    read_dirs = real_dirs(
        [stdlib, os.path.join(stdlib, "lib-dynload"), os.path.join(sys.base_prefix, "lib"),
         "/lib", "/lib64", "/usr/lib", "/usr/lib64"] + list(cfg.get("extra_read", []))
    )
    read_files = real_dirs(["/etc/ld.so.cache"])

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    filters = []
    for hexprog in cfg.get("seccomp", []):
        raw = bytes.fromhex(hexprog)
        buf = ctypes.create_string_buffer(raw, len(raw))
        filters.append((SockFprog(len(raw) // 8, ctypes.addressof(buf)), buf))

    EXEC, WRITE, READ, READDIR = 1, 2, 4, 8
    FS_ALL = (1 << 13) - 1
    if abi >= 2:
        FS_ALL |= 1 << 13
    if abi >= 3:
        FS_ALL |= 1 << 14
    if abi >= 5:
        FS_ALL |= 1 << 15
    FILE_RIGHTS = EXEC | WRITE | READ | (FS_ALL & ((1 << 14) | (1 << 15)))
    NET_ALL = 3 if abi >= 4 else 0
    SCOPE_ALL = 3 if abi >= 6 else 0
    ATTR_SIZE = 8 if abi < 4 else (16 if abi < 6 else 24)

    def landlock_ruleset(handled, rules):
        """A Landlock ruleset fd: `handled` fs rights are denied except where `rules`
        (path, rights) allow them; TCP bind/connect are denied and signals and abstract unix
        sockets are scoped to the layer's domain. Nothing is enforced until restrict_self."""
        abuf = ctypes.create_string_buffer(struct.pack("=QQQ", handled, NET_ALL, SCOPE_ALL), 24)
        rfd = libc.syscall(SYS_LL_CREATE, abuf, ATTR_SIZE, 0)
        if rfd < 0:
            raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
        try:
            for path, rights in rules:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                try:
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
                    if libc.syscall(SYS_LL_ADD, rfd, 1, rule, 0) != 0:
                        raise OSError(ctypes.get_errno(), "landlock_add_rule %s" % path)
                finally:
                    os.close(fd)
        except BaseException:
            os.close(rfd)
            raise
        return rfd

    def restrict_self(rfd):
        """Enforce the ruleset `rfd` on this process (one more layer) and close it."""
        try:
            if libc.syscall(SYS_LL_RESTRICT, rfd, 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_restrict_self")
        finally:
            os.close(rfd)

    # Layer 1, on the worker itself: read-only Python and shared libraries, /dev/null, and the
    # scratch base; nothing else of the host is visible to the worker or any child.
    if abi:
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        restrict_self(landlock_ruleset(
            FS_ALL,
            [(d, EXEC | READ | READDIR) for d in read_dirs]
            + [(f, READ) for f in read_files]
            + [("/dev/null", FILE_RIGHTS & ~EXEC), (base, FS_ALL)],
        ))
    # Layer 2, per child: writes only inside its own scratch dir (and /dev/null). The worker
    # builds each child's ruleset before forking (a ruleset restricts nobody until
    # restrict_self) and the child only enforces it: every Python-level step in the child
    # costs copy-on-write faults there, and the worker's rulesets are never enforced on itself.
    WRITE_RIGHTS = FS_ALL & ~(EXEC | READ | READDIR)
    # A child's channels: it writes its messages on fd 3 and reads the worker's requests on
    # fd 4; it finds its Landlock ruleset on fd 5. A candidate whose job has a check block
    # reads the check's calls on fd 6 and answers them on fd 7, straight to the check process.
    OUT_FD, IN_FD, RULESET_FD, CHECK_IN_FD, CHECK_OUT_FD = 3, 4, 5, 6, 7
    PARK_FD = 200  # where a child's fds wait while they move into place

    def child_ruleset(scratch):
        return landlock_ruleset(
            WRITE_RIGHTS,
            [(scratch, WRITE_RIGHTS), ("/dev/null", FILE_RIGHTS & WRITE_RIGHTS)],
        )

    def apply_seccomp():
        for prog, _buf in filters:
            if libc.syscall(SYS_SECCOMP, 1, 0, ctypes.byref(prog)) != 0:
                raise OSError(ctypes.get_errno(), "seccomp")

    # The child's rlimits, computed once (an import statement or dict lookups in the child
    # would touch pages for nothing).
    import resource
    _setrlimit = resource.setrlimit
    _mem = limits["memory_mb"] << 20
    _rlimits = (
        (resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1)),
        (resource.RLIMIT_AS, (_mem, _mem)),
        (resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"])),
        (resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"])),
        (resource.RLIMIT_NPROC, (limits["max_processes"], limits["max_processes"])),
        (resource.RLIMIT_CORE, (0, 0)),
    )
    _strict_child = cfg["confine_children"]

    def lock_down(cpu=True):
        # The check server lives for many checks: a CPU-time limit would add them up (the
        # worker's deadline bounds each check instead).
        for res, v in (_rlimits if cpu else _rlimits[1:]):
            _setrlimit(res, v)
        if _strict_child:
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            if abi:
                restrict_self(RULESET_FD)
            apply_seccomp()

    # ---------------------------------------------------------------- the child's runner
    # What the child uses to report, built once here in the worker (which never runs
    # generated code), so every child starts with pristine copies and pays nothing for them.
    _write = os.write
    _read = os.read
    _type = type
    _len = len
    _str = str
    _repr_int = int.__repr__
    _repr_float = float.__repr__
    _getattr = getattr
    _BaseException = BaseException
    _OSError = OSError
    _MemoryError = MemoryError
    _exit = os._exit
    MAX_DEPTH, MAX_ITEMS = 64, 200_000
    try:
        sys.set_int_max_str_digits(0)
    except AttributeError:
        pass

    # The C encoder, built before any generated code runs: nothing it uses can be reached
    # through a module's globals (json.dumps, json._default_encoder, ... stay patchable but
    # unused).
    import _json
    _enc = _json.make_encoder(None, _str, _json.encode_basestring_ascii, None, ":", ",",
                              False, False, True)
    _join = "".join
    _snapshot_builtins = dict(__builtins__.__dict__ if _type(__builtins__) is _type(sys)
                              else __builtins__)
    # The C scanner, likewise: a child reads the worker's requests with it.
    _scan = _json.make_scanner(json.JSONDecoder())
    _complex, _tuple, _frozenset = complex, tuple, frozenset
    _fromhex = bytes.fromhex
    _issubclass = issubclass

    def send(obj, fd=OUT_FD):
        data = (_join(_enc(obj, 0)) + "\n").encode()
        view = memoryview(data)
        while view:
            n = _write(fd, view)
            view = view[n:]

    _inbufs = {}

    def receive(fd=IN_FD, scan=_scan):
        """The next request on `fd` (one JSON line; fd 4: the worker's), or None at its end."""
        buf = _inbufs.get(fd, b"")
        while b"\n" not in buf:
            data = _read(fd, 1 << 16)
            if not data:
                return None
            buf += data
        line, _inbufs[fd] = buf.split(b"\n", 1)
        return scan(line.decode("utf-8"), 0)[0]

    class Unsupported(Exception):
        pass

    def canon(x, budget, depth=0):
        if depth > MAX_DEPTH:
            raise Unsupported("nesting deeper than %d levels" % MAX_DEPTH)
        budget[0] -= 1
        if budget[0] < 0:
            raise Unsupported("more than %d items" % MAX_ITEMS)
        t = _type(x)
        if x is None:
            return ["none"]
        if t is bool:
            return ["bool", x is True]
        if t is int:
            return ["int", _repr_int(x)]
        if t is float:
            return ["float", _repr_float(x)]
        if t is complex:
            return ["complex", _repr_float(x.real), _repr_float(x.imag)]
        if t is str:
            return ["str", str.__str__(x)]
        if t is bytes:
            return ["bytes", bytes.hex(x)]
        if t is list or t is tuple:
            return [t.__name__, [canon(i, budget, depth + 1) for i in t.__iter__(x)]]
        if t is set or t is frozenset:
            return [t.__name__, [canon(i, budget, depth + 1) for i in t.__iter__(x)]]
        if t is dict:
            return ["dict", [[canon(k, budget, depth + 1), canon(v, budget, depth + 1)]
                             for k, v in dict.items(x)]]
        raise Unsupported("a value of type `%s`" % (_getattr(t, "__qualname__", None) or "?"))

    # The check's channel carries values as JSON: None, bool, int, float and str as JSON has
    # them, a list as a JSON array, anything else as an object of one tag ("t" tuple, "s" set,
    # "f" frozenset, "d" dict as [key, value] pairs, "b" bytes as hex, "c" complex as [real,
    # imag]). The same exact builtin types as `canon`, the same limits, in a form the C
    # encoder and scanner handle almost whole (`canon`'s form, rebuilt in Python item by item,
    # cost a check about twice as much). Decoding makes builtin values only, from builtin
    # values: no code of the sender's runs in the process that decodes.
    _PLAIN = frozenset((_type(None), bool, int, float, str))
    _TAGGED = {tuple: "t", set: "s", frozenset: "f"}
    _set, _map, _list = set, map, list

    def pack(x, budget, depth=0):
        """`x` for the check's channel (see above); Unsupported where `canon` refuses it."""
        if depth > MAX_DEPTH:
            raise Unsupported("nesting deeper than %d levels" % MAX_DEPTH)
        budget[0] -= 1
        if budget[0] < 0:
            raise Unsupported("more than %d items" % MAX_ITEMS)
        t = _type(x)
        if t in _PLAIN:
            return x
        if t is list or t in _TAGGED:
            # Plain items (the usual case) go as they are, checked in one pass in C.
            if depth < MAX_DEPTH and _set(_map(_type, x)) <= _PLAIN:
                budget[0] -= _len(x)
                if budget[0] < 0:
                    raise Unsupported("more than %d items" % MAX_ITEMS)
                items = x if t is list else _list(x)
            else:
                items = [pack(i, budget, depth + 1) for i in t.__iter__(x)]
            return items if t is list else {_TAGGED[t]: items}
        if t is dict:
            return {"d": [[pack(k, budget, depth + 1), pack(v, budget, depth + 1)]
                          for k, v in dict.items(x)]}
        if t is bytes:
            return {"b": bytes.hex(x)}
        if t is complex:
            return {"c": [x.real, x.imag]}
        raise Unsupported("a value of type `%s`" % (_getattr(t, "__qualname__", None) or "?"))

    def unpack_tagged(obj):
        """A value from its tagged form (the scanner's object hook); any other object (a
        request, a reply) stays as it is."""
        if _len(obj) == 1:
            for tag, v in dict.items(obj):
                if tag == "t":
                    return _tuple(v)
                if tag == "s":
                    return _set(v)
                if tag == "f":
                    return _frozenset(v)
                if tag == "d":
                    return dict(v)
                if tag == "b":
                    return _fromhex(v)
                if tag == "c":
                    return _complex(v[0], v[1])
        return obj

    _scan_values = _json.make_scanner(json.JSONDecoder(object_hook=unpack_tagged))

    def packed(x):
        """`x` packed and encoded, for comparing (JSON text tells 1, 1.0 and True apart)."""
        return _join(_enc(pack(x, [MAX_ITEMS]), 0))

    last_op = [None]
    interesting = {
        "open", "socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
        "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system",
        "subprocess.Popen", "os.kill", "os.killpg", "os.mkdir", "os.remove", "os.rename",
        "os.rmdir", "os.listdir", "os.scandir", "os.chmod", "os.chown", "os.symlink",
        "os.link", "os.truncate", "shutil.rmtree", "shutil.copyfile", "os.chdir",
        "os.putenv", "ctypes.dlopen", "mmap.__new__", "os.startfile", "pty.spawn",
    }

    def hook(event, args):
        if event in interesting:
            try:
                if event == "open":
                    what = "opening %r" % (args[0],)
                elif event == "socket.__new__":
                    what = "creating a socket (family %r, type %r)" % (args[1], args[2])
                elif event in ("socket.connect", "socket.sendto"):
                    what = "connecting to %r" % (args[1],)
                elif event == "socket.bind":
                    what = "binding a socket to %r" % (args[1],)
                elif event in ("os.fork", "os.forkpty", "os.posix_spawn", "os.exec",
                               "os.spawn", "os.system", "subprocess.Popen", "pty.spawn"):
                    what = "starting a process (%s)" % event
                elif event in ("os.kill", "os.killpg"):
                    what = "sending signal %r to process %r" % (args[1], args[0])
                else:
                    what = "%s %r" % (event, args[0] if args else "")
                last_op[0] = what[:300]
            except _BaseException:
                last_op[0] = event

    def exception_event(exc, filenames, sources):
        t = _type(exc)
        if t is _MemoryError or _isinst(exc, _MemoryError):
            return {"kind": "memory"}
        e = exc
        for _ in range(4):
            if e is None:
                break
            code = _getattr(e, "errno", None) if _isinst(e, _OSError) else None
            if code == errno.EFBIG:
                return {"kind": "blocked", "operation": "writing a file larger than %d bytes"
                        % limits["file_bytes"]}
            if code == errno.ENOSPC:
                return {"kind": "blocked", "operation": "filling the %d MiB scratch space"
                        % limits["scratch_mb"]}
            if code in (errno.EPERM, errno.EACCES):
                op = last_op[0] or ("an operation the sandbox denies (%s)" % _str(e)[:200])
                return {"kind": "blocked", "operation": op}
            e = e.__cause__ or e.__context__
        try:
            message = _str(exc)
        except _BaseException:
            message = "<unprintable exception>"
        line = where = source = None
        tb = exc.__traceback__
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if name in filenames:
                line = tb.tb_lineno
                where = name.strip("<>")
                lines = sources.get(name, "").splitlines()
                if 0 < line <= _len(lines):
                    source = lines[line - 1].strip()
            tb = tb.tb_next
        return {
            "kind": "raised",
            "type": _str(_getattr(t, "__qualname__", "?")),
            "mro": [_str(_getattr(c, "__qualname__", "?")) for c in _getattr(t, "__mro__", ())],
            "message": message[:2000],
            "line": line,
            "where": where,
            "source": source,
        }

    _isinst = isinstance

    def value_event(value):
        try:
            return {"kind": "returned", "value": canon(value, [MAX_ITEMS])}
        except Unsupported as e:
            return {"kind": "unsupported", "what": _str(e)}
        except RecursionError:
            return {"kind": "unsupported", "what": "a value nested too deeply"}

    # The C module's signal(), not signal.signal: its enum conversions touch many pages.
    import _signal
    _setsignal = _signal.signal
    _default_int_handler = _signal.default_int_handler
    _SIGINT = int(signal.SIGINT)
    _default_signals = tuple(int(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
                                              signal.SIGUSR2, signal.SIGQUIT, signal.SIGALRM))
    _perf = time.perf_counter

    def child_main(role, scratch, job, start):
        """Runs in a forked child: locks down, then plays `role`: "candidate" (the program and
        its calls, from call `start` on), "check" (the trusted check block) or "evaluate" (the
        expected values). The child is forked once the job has arrived and inherits it parsed:
        no job pipe and no second parse, each of which cost copy-on-write faults in every
        child. Never returns."""
        last_op[0] = None
        if role == "candidate":
            # Not the candidate's to read: the check block holds expected values.
            job["checked"] = bool(job.pop("check", None))
            job.pop("prelude", None)
        try:
            os.chdir(scratch)
            if "tempfile" in sys.modules:
                sys.modules["tempfile"].tempdir = scratch
            lock_down(cpu=role != "check")
            for sig in _default_signals:
                _setsignal(sig, 0)  # SIG_DFL
            _setsignal(_SIGINT, _default_int_handler)
            sys.addaudithook(hook)
        except BaseException as e:  # the harness's own failure
            try:
                send({"event": "setup_failed", "message": "%s: %s" % (type(e).__name__, e)})
            finally:
                _exit(70)
        if role == "evaluate":
            for i, expr in enumerate(job["exprs"]):
                try:
                    ev = value_event(eval(compile(expr.strip(), "<expected>", "eval"), {}))
                except BaseException as e:
                    ev = {"kind": "raised", "type": type(e).__qualname__,
                          "message": str(e)[:2000]}
                ev["event"] = "expected"
                ev["index"] = i
                send(ev)
            serve(None, job, (), {}, time.perf_counter())
        if role == "check":
            check_server()
        candidate_main(job)

    def candidate_main(job):
        """Load the program, say how it went, then answer the worker's requests."""
        _t_run = _perf()
        sources = {"<program>": job["program"]}
        filenames = {"<program>", "<test>"}
        namespace = {"__name__": "__codegen__", "__builtins__": __builtins__}
        try:
            if job.get("setup"):
                sources["<setup>"] = job["setup"]
                exec(compile(job["setup"], "<setup>", "exec"), {"__name__": "__setup__"})
            last_op[0] = None
            exec(compile(job["program"], "<program>", "exec"), namespace)
        except _BaseException as e:  # noqa: B036 - the program may raise anything
            ev = exception_event(e, filenames | {"<setup>"}, sources)
            ev["event"] = "load"
            send(ev)
            serve(None, job, filenames, sources, _t_run)
        send({"event": "load", "kind": "ok"})
        if job.get("checked"):
            serve(namespace, job, filenames, sources, _t_run, CHECK_IN_FD, CHECK_OUT_FD,
                  _scan_values)
        serve(namespace, job, filenames, sources, _t_run)

    def serve(namespace, job, filenames, sources, t_run, fd_in=IN_FD, fd_out=OUT_FD,
              scan=_scan):
        """Answer the requests on `fd_in`, one reply each on `fd_out`, until they end: run test
        call `i`, call the entry point with a check block's arguments, or say that the run
        ended. On the worker's channel it never returns; on the check's, when the check is
        over."""
        tests = job.get("tests") or []
        while True:
            req = receive(fd_in, scan)
            if req is None:
                if fd_in != IN_FD:
                    return
                _exit(0)
            seq = req["seq"]
            if "end" in req:
                send({"event": "end", "seq": seq, "busy": _perf() - t_run})
                continue
            last_op[0] = None
            if "call" in req:
                call = tests[req["call"]]
                sources["<test>"] = call
                try:
                    ev = value_event(eval(compile(call.strip(), "<test>", "eval"), namespace))
                except _BaseException as e:
                    ev = exception_event(e, filenames, sources)
            else:
                ev = call_entry_point(namespace, job["entry_point"], req, filenames, sources)
            ev["event"] = "reply"
            ev["seq"] = seq
            send(ev, fd_out)

    def call_entry_point(namespace, entry, req, filenames, sources):
        """One call a check block made: the arguments (decoded as they arrived), the value back
        packed, and each argument the candidate changed in place (the check may read it
        afterwards), packed (None where unchanged)."""
        try:
            fn = dict.get(namespace, entry)
            if fn is None:
                raise NameError("name %r is not defined" % (entry,))
            args = req["args"]
            kwargs = dict(req["kwargs"])
            passed = args + _list(dict.values(kwargs))
            # Only containers can change in place: their packed text before the call.
            before = [(i, packed(a)) for i, a in enumerate(passed) if _type(a) not in _PLAIN]
            value = fn(*args, **kwargs)
        except _BaseException as e:
            return exception_event(e, filenames, sources)
        try:
            ev = {"kind": "returned", "value": pack(value, [MAX_ITEMS])}
        except Unsupported as e:
            return {"kind": "unsupported", "what": _str(e)}
        except RecursionError:
            return {"kind": "unsupported", "what": "a value nested too deeply"}
        if not before:
            return ev  # nothing the candidate could change in place
        try:
            changed = [None] * _len(passed)
            for i, text in before:
                if packed(passed[i]) != text:
                    changed[i] = pack(passed[i], [MAX_ITEMS])
        except Unsupported as e:
            return {"kind": "unsupported", "what": "an argument changed into %s" % _str(e)}
        except RecursionError:
            return {"kind": "unsupported", "what": "an argument nested too deeply"}
        if changed != [None] * _len(passed):
            ev["args"] = changed
        return ev

    class Refused(BaseException):
        """A call the channel cannot carry: arguments or a value that are not exact builtin
        types (a BaseException, so that a check's `except Exception` does not swallow it; the
        verdict does not depend on that either)."""

    def candidate_exception(rep):
        """The candidate's exception as the nearest builtin exception type of its MRO, with
        the candidate's own report attached (its type, message and program line)."""
        for name in (rep.get("mro") or []) + ["Exception"]:
            cls = _snapshot_builtins.get(name)
            if _type(cls) is type and _issubclass(cls, BaseException):
                try:
                    exc = cls(rep.get("message", ""))
                except Exception:
                    continue  # a constructor that wants more (UnicodeDecodeError)
                exc._codegen_origin = rep
                return exc
        return Exception(rep.get("message", ""))

    def copy_back(old, new):
        """The candidate changed argument `old` into `new`: do the same to the check's object,
        in place, where it can change (a list, dict or set)."""
        t = _type(old)
        if t is list and _type(new) is list:
            old[:] = new
        elif (t is dict and _type(new) is dict) or (t is set and _type(new) is set):
            old.clear()
            old.update(new)

    def check_server():
        """The trusted check process: forked from the worker, it never runs generated code, and
        runs the check blocks the worker sends it, one at a time, each in a fresh namespace
        (one process for many checks: a fork per check doubled the sandbox's cost). It talks to
        the candidate directly, over two pipes made with it whose other ends each candidate
        of a check job gets (through the worker, every call cost twice the system calls). The
        worker kills it when a check does not finish, and starts another. Never returns."""
        channel = CandidateChannel(CHECK_OUT_FD, CHECK_IN_FD)
        while True:
            job = receive()
            if job is None:
                _exit(0)
            channel.start()
            ev = run_check(job, channel)
            if channel.stop is None and channel.readable():
                channel.stop = tampered("a reply after the check block ended")
            if channel.stop is not None:
                ev = channel.stop
            ev["op"] = "done"
            send(ev)

    class ChannelStop(BaseException):
        """The check stops: the candidate tampered with its channel, ran out of memory, was
        blocked, or is gone (a BaseException: the check's `except Exception` does not catch
        it, and a check that catches everything is judged by `stop` anyway)."""

    class CandidateChannel:
        """The check's channel to the candidate: one request, one reply, by sequence number;
        anything else is tampering."""

        def __init__(self, to_cand, from_cand):
            self.to_cand, self.from_cand = to_cand, from_cand
            self.seq = 0
            self.buf = b""
            self.stop = None  # the outcome the check ends with, once the channel failed

        def start(self):
            """A new check, a new candidate: what an earlier (killed) one left is dropped."""
            self.seq, self.buf, self.stop = 0, b"", None
            while self.readable():
                self.buf = b""

        def readable(self):
            """Has the candidate written what nobody asked for (its end closing is not that)?"""
            if not self.buf and select.select([self.from_cand], [], [], 0)[0]:
                try:
                    self.buf = _read(self.from_cand, 1 << 16)
                except OSError:
                    pass
            return bool(self.buf)

        def fail(self, outcome):
            if self.stop is None:
                self.stop = outcome
            raise ChannelStop()

        def __call__(self, payload):
            if self.stop is not None:
                raise ChannelStop()
            # A line written before its request is read as this reply: a wrong sequence
            # number is tampering, the right one a value the code could have returned.
            self.seq += 1
            payload["seq"] = self.seq
            data = memoryview((_join(_enc(payload, 0)) + "\n").encode())
            try:
                while data:
                    data = data[_write(self.to_cand, data):]
                while b"\n" not in self.buf:
                    more = _read(self.from_cand, 1 << 16)
                    self.buf += more
                    if _len(self.buf) > limits["result_bytes"]:
                        self.fail({"kind": "output_limit", "bytes": _len(self.buf)})
            except OSError:
                self.fail({"kind": "crashed", "reason": "the check's channel failed"})
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                msg = _scan_values(line.decode("utf-8"), 0)[0]
                ok = _type(msg) is dict and msg.get("event") == "reply"
            except Exception:
                ok = False
            if not ok or msg.get("seq") != self.seq:
                self.fail(tampered("a line that is not the reply to request %d" % self.seq))
            kind = msg.get("kind")
            if kind in ("memory", "blocked"):
                self.fail(msg)
            if kind not in ("returned", "raised", "unsupported"):
                self.fail(tampered("a reply message of kind %r" % (kind,)))
            if self.buf:
                self.fail(tampered("a second reply to request %d" % self.seq))
            return msg

    _compiled = {}

    def compiled(source, filename):
        """`source` compiled, once per check process: a case's check block and prompt come
        again for every sample and calibration run (code objects are immutable, so reuse is
        safe)."""
        key = (source, filename)
        code = _compiled.get(key)
        if code is None:
            if _len(_compiled) >= 512:
                _compiled.clear()
            code = _compiled[key] = compile(source, filename, "exec")
        return code

    def run_check(job, call):
        """One check block: the prompt's helpers, then the check, with the entry point's name
        and `candidate` bound to a stub that calls the candidate in the sandboxed child through
        `call` (values only, one reply per request). Nothing the candidate defines reaches
        this process. Returns the check's outcome."""
        sources = {"<check>": job["check"]}
        filenames = {"<check>", "<prompt>"}
        refused = []

        def candidate(*args, **kwargs):
            try:
                budget = [MAX_ITEMS]
                payload = {"args": [pack(a, budget) for a in args],
                           "kwargs": [[k, pack(v, budget)] for k, v in kwargs.items()]}
            except (Unsupported, RecursionError) as e:
                refused.append("the check passed the candidate %s, which only exact builtin "
                               "types can cross" % e)
                raise Refused(refused[-1])
            rep = call(payload)
            try:
                kind = rep.get("kind")
                if kind == "returned":
                    passed = list(args) + list(kwargs.values())
                    for old, new in zip(passed, rep.get("args") or []):
                        if new is not None:
                            copy_back(old, new)
                    return rep["value"]
                if kind == "raised":
                    exc = candidate_exception(rep)
            except Exception:
                # A reply no honest child sends: never an exception the check might expect.
                refused.append("a malformed reply from the candidate")
                raise Refused(refused[-1])
            if kind == "raised":
                raise exc
            refused.append(rep.get("what", "nothing"))  # "returned <what>" in the verdict
            raise Refused(refused[-1])

        ns = {"__name__": "__check__"}
        try:
            if job.get("prelude"):
                sources["<prompt>"] = job["prelude"]
                exec(compiled(job["prelude"], "<prompt>"), ns)
            ns[job["entry_point"]] = candidate
            exec(compiled(job["check"], "<check>"), ns)
            ns["check"](candidate)
            ev = {"kind": "passed"}
        except ChannelStop:
            ev = {"kind": "stopped"}  # the channel's outcome replaces it
        except BaseException as e:
            origin = getattr(e, "_codegen_origin", None)
            ev = dict(origin) if origin is not None else exception_event(e, filenames, sources)
        if refused:
            ev = {"kind": "unsupported", "what": refused[0]}
        return ev

    # ---------------------------------------------------------------- the worker's side
    counter = [0]
    busy = [0.0]  # seconds children spent running generated and test code, per job
    TAIL = 4096

    def signal_outcome(sig):
        if sig == signal.SIGXCPU:
            return {"kind": "timeout", "seconds": float(limits["cpu_seconds"]), "cpu": True}
        if sig == signal.SIGXFSZ:
            return {"kind": "blocked", "operation": "writing a file larger than %d bytes"
                    % limits["file_bytes"]}
        if sig == signal.SIGSYS:
            return {"kind": "blocked", "operation": "a system call the sandbox denies"}
        return {"kind": "signal", "signal": sig}

    def rmtree(path):
        """Remove a scratch dir (shutil is not loaded: every MiB of the worker costs each fork)."""
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            entries = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    rmtree(e.path)
                else:
                    os.unlink(e.path)
            except OSError:
                pass
        try:
            os.rmdir(path)
        except OSError:
            pass

    def spawn_child(job, start, role, check_fds=None):
        """Fork a child playing `role` for `job` (from call `start` on); it locks itself down
        first. `check_fds` (its ends of the channel between a candidate and the check process:
        what it reads, what it writes) become its fds 6 and 7. Returns (pid, scratch, its
        messages' read end, its requests' write end (non-blocking), its stdout and stderr read
        ends or -1)."""
        counter[0] += 1
        scratch = os.path.join(base, "x%d" % counter[0])
        os.mkdir(scratch, 0o700)
        mr, mw = os.pipe()
        qr, qw = os.pipe()
        outr, outw = os.pipe() if role != "check" else (-1, devnull_w)
        errr, errw = os.pipe() if role != "check" else (-1, devnull_w)
        # Set in the worker, which reads neither, and inherited: done in the child, it would
        # copy the pages of os.environ and libc's environment there.
        os.environ["HOME"] = scratch
        os.environ["TMPDIR"] = scratch
        rfd = child_ruleset(scratch) if abi else -1
        mine = [fd for fd in (mr, mw, outr, errr, rfd) if fd >= 0]
        mine += [fd for fd in (qr, qw, outw, errw) if fd != devnull_w]
        try:
            pid = os.fork()
        except BaseException:
            for fd in mine:
                os.close(fd)
            raise
        if pid == 0:
            try:
                if all_cpus is not None and role != "check":
                    try:
                        _setaffinity(0, all_cpus)
                    except OSError:
                        pass  # a CPU set shrunk from outside: what it allows now
                if die_with_worker:
                    _prctl(PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
                    if os.getppid() != worker_pid:
                        _exit(71)
                moves = [(devnull, 0), (outw, 1), (errw, 2), (mw, OUT_FD), (qr, IN_FD)]
                if rfd >= 0:
                    moves.append((rfd, RULESET_FD))
                if check_fds is not None:
                    moves += [(check_fds[0], CHECK_IN_FD), (check_fds[1], CHECK_OUT_FD)]
                # Parked first, so that no source is overwritten before it is moved.
                for i, (src, _dst) in enumerate(moves):
                    os.dup2(src, PARK_FD + i)
                for i, (_src, dst) in enumerate(moves):
                    os.dup2(PARK_FD + i, dst)
                kept = {dst for _src, dst in moves}
                for fd in range(3, CHECK_OUT_FD + 1):
                    if fd not in kept:
                        os.close(fd)
                os.closerange(CHECK_OUT_FD + 1, 1 << 16)
                child_main(role, scratch, job, start)
            finally:
                os._exit(71)
        for fd in (mw, qr, outw, errw, rfd):
            if fd >= 0 and fd != devnull_w:
                os.close(fd)
        os.set_blocking(qw, False)
        return pid, scratch, mr, qw, outr, errr

    # Without a pid namespace, a child running generated code would outlive a killed worker:
    # it dies with the worker instead (in a pid namespace, it dies with pid 1).
    die_with_worker = not cfg.get("pidns")
    worker_pid = os.getpid()
    _prctl, _SIGKILL = libc.prctl, int(signal.SIGKILL)  # looked up once, not in each child
    _setaffinity = os.sched_setaffinity
    deferred = []  # (pid, scratch) of children killed after a clean finish, to reap
    devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # each child's stdin
    devnull_w = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)  # the check's stdout, stderr

    def reap_deferred():
        while deferred:
            pid, scratch = deferred.pop()
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            try:
                rmtree(scratch)
            except RecursionError:
                pass

    # The outcomes a child may report, per message: the rest (a timeout, a crash, a check's
    # verdict) are the worker's or the check process's to decide.
    CHILD_KINDS = {
        "load": ("ok", "raised", "memory", "blocked"),
        "reply": ("returned", "unsupported", "raised", "memory", "blocked"),
        "expected": ("returned", "unsupported", "raised", "memory", "blocked"),
    }

    # The check server: (pid, scratch, its messages, its requests, and the candidates' ends of
    # its channel: the requests' read end and the replies' write end), once started.
    check_proc = [None]

    def check_server_ready():
        """The check server, started (again) when there is none or it died."""
        if check_proc[0] is not None:
            pid = check_proc[0][0]
            try:
                alive = os.waitpid(pid, os.WNOHANG) == (0, 0)
            except ChildProcessError:
                alive = False
            if alive:
                return check_proc[0]
            retire_check_server(reaped=True)
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            pid, scratch, mr, qw, _, _ = spawn_child({}, 0, "check", (rep_r, req_w))
        except BaseException:
            for fd in (req_r, rep_w):
                os.close(fd)
            raise
        finally:
            for fd in (rep_r, req_w):
                os.close(fd)
        check_proc[0] = (pid, scratch, mr, qw, req_r, rep_w)
        return check_proc[0]

    def retire_check_server(reaped=False):
        """Kill the check server (stopped in the middle of a check, or dead) and forget it."""
        pid, scratch = check_proc[0][:2]
        for fd in check_proc[0][2:]:
            os.close(fd)
        check_proc[0] = None
        if reaped:
            rmtree(scratch)
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deferred.append((pid, scratch))

    def drain(fd):
        """Drop what waits in pipe `fd` (requests a killed candidate never read)."""
        while select.select([fd], [], [], 0)[0]:
            if not os.read(fd, 1 << 16):
                break

    def tampered(what):
        return {"kind": "tampered", "what": what}

    class Run:
        """One candidate child running `phases` of a job, and for a check block the trusted
        check process beside it. A phase is (what, index, timeout): "load" and "expected" are
        messages the child sends unasked; "test", "check" and "end" start with a request, and
        the child must answer each request once, with its sequence number. Anything else on
        the child's channel (a second reply, a reply before its request, a reply to another
        request, a line the worker did not ask for) is tampering, reported as such."""

        def __init__(self, job, start, phases, role="candidate"):
            self.job = job
            self.t0 = time.monotonic()
            self.phases = iter(phases)
            # For a check block, the candidate gets its ends of the check server's channel.
            check_fds = None
            if role == "candidate" and job.get("check"):
                check_fds = check_server_ready()[4:]
                drain(check_fds[0])
            self.pid, self.scratch, self.mr, self.qw, self.outr, self.errr = spawn_child(
                job, start, role, check_fds)
            self.poller = select.poll()
            for fd in (self.mr, self.outr, self.errr):
                self.poller.register(fd, select.POLLIN)
            self.open_fds = {self.mr, self.outr, self.errr}
            self.bufs = {self.mr: b""}
            self.outq = {}  # write end -> bytes waiting for the reader
            self.tails = {self.outr: bytearray(), self.errr: bytearray()}
            self.out_total = 0
            self.results = []  # (index, outcome), later entries override earlier ones
            self.seq = 0
            self.pending = None  # the request the child must answer now
            self.read_seq = 0  # requests sent before the child's last message was read
            self.asked = {}  # seq -> the phase index its request was for
            self.check = None  # (pid, scratch, messages, requests) of the check process
            self.cur = None
            self.deadline = 0.0
            self.end = None  # the outcome of the current phase when the child is stopped
            self.done = False
            self.advance()

        def advance(self, phase=None):
            self.cur = phase or next(self.phases)
            what, index, timeout = self.cur
            self.deadline = time.monotonic() + timeout
            if what == "test":
                self.request({"call": index})
            elif what == "end":
                self.request({"end": True})
            elif what == "check":
                self.start_check()

        def start_check(self):
            """Hand the check block and its channel's ends to the check process."""
            self.check = check_server_ready()
            mr, qw = self.check[2], self.check[3]
            self.bufs[mr] = b""
            self.open_fds.add(mr)
            self.poller.register(mr, select.POLLIN)
            job = {k: self.job.get(k) for k in ("check", "prelude", "entry_point")}
            self.queue(qw, (json.dumps(job) + "\n").encode())

        def request(self, obj):
            self.seq += 1
            obj["seq"] = self.seq
            self.pending = self.seq
            self.asked[self.seq] = self.cur[1]
            self.queue(self.qw, (json.dumps(obj) + "\n").encode())

        def queue(self, fd, data):
            """Write `data` to the non-blocking `fd`; what does not fit waits for POLLOUT."""
            q = self.outq.get(fd)
            if q is not None:
                q += data
                return
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                n = 0
            except BrokenPipeError:
                return  # the reader is gone; its end of the channel says why
            if n < len(data):
                self.outq[fd] = bytearray(data[n:])
                self.poller.register(fd, select.POLLOUT)

        def flush(self, fd):
            q = self.outq[fd]
            try:
                del q[:os.write(fd, q)]
            except BlockingIOError:
                return
            except BrokenPipeError:
                del q[:]
            if not q:
                del self.outq[fd]
                self.poller.unregister(fd)

        def tamper(self, what, seq=None):
            """Stop the child for tampering; a second reply counts against the call it was for."""
            index = self.asked.get(seq)
            if seq is not None and seq != self.pending and index not in (None, "end"):
                self.results.append((index, tampered(what)))
            self.end = tampered(what)

        def on_child(self, line):
            try:
                msg = json.loads(line)
                ok = type(msg) is dict
            except Exception:
                ok = False
            if not ok:
                return self.tamper("a line on the harness's result channel that is not a reply")
            ev = msg.pop("event", None)
            if ev == "setup_failed":
                raise RuntimeError("the sandbox could not lock the child down: "
                                   + str(msg.get("message")))
            if ev in CHILD_KINDS and msg.get("kind") not in CHILD_KINDS[ev]:
                # A verdict ("passed") or an outcome only the worker decides (a timeout).
                return self.tamper("a %s message of kind %r" % (ev, msg.get("kind")))
            want, index, _ = self.cur
            if ev in ("load", "expected"):
                if ev != want or msg.pop("index", index) != index:
                    return self.tamper("a second %s message" % ev)
                self.results.append((index, msg))
                if ev == "load" and msg.get("kind") != "ok":
                    return self.advance(("end", "end", 5.0))
                return self.advance()
            seq = msg.pop("seq", None)
            if type(seq) is not int:
                seq = None
            if seq is not None and seq > self.read_seq:
                return self.tamper("a reply to request %d before the harness sent it" % seq, seq)
            if seq != self.pending or ev not in ("reply", "end") or (ev == "end") != (
                    want == "end"):
                return self.tamper(self.unasked(ev, seq), seq)
            self.pending = None
            if ev == "end":
                busy[0] += float(msg.get("busy") or 0.0)
                self.done = True
            else:
                self.results.append((index, msg))
                self.advance()

        def unasked(self, ev, seq):
            """What was wrong with message `ev` carrying sequence number `seq`, in words."""
            if seq is None:
                return "a %s message that answers no request" % (ev or "malformed",)
            if seq in self.asked and seq != self.pending:
                return "a second reply to request %d" % seq
            if seq > self.seq:
                return "a reply to request %d before the harness sent it" % seq
            return "a %s message where the harness waited for another reply" % (ev or "malformed",)

        def on_check(self, line):
            msg = json.loads(line)
            if msg.pop("op", None) != "done":
                raise RuntimeError("the check process sent %r" % (line[:200],))
            self.release_check(finished=True)
            self.results.append(("check", msg))
            # The check's verdict ends the run: the child answered on the check's channel only.
            busy[0] += time.monotonic() - self.t0
            self.done = True

        def release_check(self, finished):
            """Stop listening to the check server; one stopped in the middle of a check is
            killed (the next check gets a fresh one)."""
            mr, qw = self.check[2], self.check[3]
            self.check = None
            if mr in self.open_fds:
                self.poller.unregister(mr)
                self.open_fds.discard(mr)
            if qw in self.outq:
                del self.outq[qw]
                self.poller.unregister(qw)
            if not finished:
                retire_check_server()

        def on_output(self, fd, data):
            self.out_total += len(data)
            t = self.tails[fd]
            t += data
            if len(t) > 2 * TAIL:
                del t[:-TAIL]
            if self.out_total > limits["output_bytes"]:
                self.end = {"kind": "output_limit", "bytes": self.out_total}

        def on_readable(self, fd):
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                self.poller.unregister(fd)
                self.open_fds.discard(fd)
                if fd == self.mr:
                    self.end = "eof"
                elif self.check is not None and fd == self.check[2]:
                    self.end = {"kind": "crashed",
                                "reason": "the check process ended without a verdict"}
                return
            if fd in self.tails:
                return self.on_output(fd, data)
            buf = self.bufs[fd] + data
            # Requests sent after this read cannot have been answered in it.
            self.read_seq = self.seq
            if len(buf) > limits["result_bytes"]:
                self.end = {"kind": "output_limit", "bytes": len(buf)}
                return
            while b"\n" in buf and self.end is None and not self.done:
                line, buf = buf.split(b"\n", 1)
                (self.on_child if fd == self.mr else self.on_check)(line)
            self.bufs[fd] = buf

        def loop(self):
            while not self.done and self.end is None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.end = {"kind": "timeout", "seconds": self.cur[2]}
                    break
                try:
                    ready = self.poller.poll(max(1, int(left * 1000) + 1))
                except InterruptedError:
                    continue
                for fd, _ev in ready:
                    if fd in self.outq:
                        self.flush(fd)
                    elif fd in self.open_fds:
                        self.on_readable(fd)
                    if self.end is not None or self.done:
                        break

        def go(self):
            """Run to the end. Returns (results, the phase stopped in or None, the outcome
            it was stopped with, (stdout tail, stderr tail))."""
            try:
                self.loop()
            finally:
                status = self.cleanup()
            end = self.end
            if end == "eof":
                if os.WIFSIGNALED(status):
                    end = signal_outcome(os.WTERMSIG(status))
                else:
                    end = {"kind": "crashed",
                           "reason": "the process exited with code %d" % os.WEXITSTATUS(status)}
            tails = tuple(bytes(self.tails[fd][-TAIL:]).decode("utf-8", "replace")
                          for fd in (self.outr, self.errr))
            return self.results, (self.cur if end is not None else None), end, tails

        def cleanup(self):
            """Stop the processes and close the channels. Returns the child's wait status
            when it ended by itself (the channel closed), else None."""
            if self.check is not None:
                self.release_check(finished=False)

            status = None
            if self.end == "eof":
                # The channel closed: give a dying child a moment to be reapable, so that
                # its own exit status (not our SIGKILL) is what gets reported.
                for _ in range(200):
                    wpid, st = os.waitpid(self.pid, os.WNOHANG)
                    if wpid:
                        status = st
                        break
                    time.sleep(0.0005)
            reap_later = status is None and self.done
            if status is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if reap_later:
                    # A clean finish: reap it and remove its scratch dir after the report is
                    # sent, so its teardown is not on the critical path.
                    deferred.append((self.pid, self.scratch))
                else:
                    _, status = os.waitpid(self.pid, 0)
                    if self.end == "eof":
                        self.end = {"kind": "crashed",
                                    "reason": "the program closed the harness's result channel"}
            for fd in (self.outr, self.errr):
                if fd in self.open_fds:
                    self.drain(fd)
            for fd in (self.mr, self.qw, self.outr, self.errr):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if not reap_later:
                try:
                    rmtree(self.scratch)
                except RecursionError:
                    pass  # absurdly deep: left on the tmpfs, which dies with the worker
            return status

        def drain(self, fd):
            """Read what is left without blocking (the child is dead)."""
            os.set_blocking(fd, False)
            try:
                while True:
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    self.tails[fd] += data
                    del self.tails[fd][:-TAIL]
            except OSError:
                pass

    def run_job(job):
        n = len(job.get("tests") or [])
        lt = job["load_timeout"]
        tt = job["test_timeout"]
        calls = [None] * n
        check = None
        load = None
        busy[0] = 0.0
        tails = ("", "")
        start = 0
        while True:
            phases = [("load", "load", lt)]
            if job.get("check"):
                phases.append(("check", "check", tt))
            else:
                phases += [("test", i, tt) for i in range(start, n)]
                phases.append(("end", "end", 5.0))
            results, stopped_at, end, tails = Run(job, start, phases).go()
            for index, msg in results:
                if index == "load":
                    load = msg
                elif index == "check":
                    check = msg
                else:
                    calls[index] = msg
            if end is None:
                break
            # The child was stopped (timeout, crash, limit, tampering) during `stopped_at`.
            if stopped_at is None or stopped_at[1] == "end":
                break  # after its last answer: nothing lost
            _, index, _ = stopped_at
            if index == "load":
                load = end
                break
            if index == "check":
                check = end
                break
            calls[index] = end
            start = index + 1
            if start >= n:
                break
            if job.get("stop_after_timeout") and end.get("kind") == "timeout":
                break  # later calls stay unrun: a loop would cost one timeout per call
        return {
            "event": "report",
            "load": load or {"kind": "crashed", "reason": "no answer"},
            "calls": calls,
            "check": check,
            "stdout": tails[0],
            "stderr": tails[1],
            "busy": busy[0],
        }

    def evaluate_job(job):
        exprs = job["exprs"]
        phases = [("expected", i, job.get("timeout", 30.0)) for i in range(len(exprs))]
        phases.append(("end", "end", 5.0))
        run = Run(job, 0, phases, "evaluate")
        results, stopped_at, end, tails = run.go()
        values = [None] * len(exprs)
        for index, msg in results:
            values[index] = msg
        if end is not None and stopped_at is not None and stopped_at[1] != "end":
            values[stopped_at[1]] = end
        return {"event": "report", "values": values, "stderr": tails[1]}

    def report(obj):
        data = (json.dumps(obj, ensure_ascii=True) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(result_out, view)
            view = view[n:]

    # Warm the compiler, the evaluator and the encoder here, once: done first in each child
    # it costs a millisecond or more.
    _warm_src = (
        "import math\nclass _C:\n    x: int = 1\n    def m(self, *a, **k):\n"
        "        return [i * 2 for i in range(3) if i] + list({1: 2}.items())\n"
        "def _f(s: str, n=3) -> str:\n    \"\"\"doc\"\"\"\n    try:\n"
        "        return f'{s!r}:{n:>4}' + str(lambda q: q)\n"
        "    except (ValueError, KeyError) as e:\n"
        "        raise RuntimeError('x') from e\n    finally:\n        pass\n"
    )
    for _ in range(2):
        _ns = {}
        exec(compile(_warm_src, "<warm>", "exec"), _ns)
        eval(compile("_f('a') + str(_C().m())", "<warm>", "eval"), _ns)
        try:
            eval(compile("1/0", "<warm>", "eval"), {})
        except ZeroDivisionError as _e:
            str(_e)
    import _json
    "".join(_json.make_encoder(None, str, _json.encode_basestring_ascii, None, ":", ",", False,
                               False, True)({"a": [["int", "1"], None, True]}, 0))

    # Objects that exist now are never collected in the children: no copy-on-write of the
    # whole heap on the child's first collection.
    import gc
    gc.collect()
    gc.freeze()

    # Tell Rust what was achieved.
    report({"event": "hello", "pid": os.getpid(), "landlock_abi": abi, "uid": os.getuid(),
            "seccomp_filters": len(filters), "python": sys.version.split()[0]})

    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            os._exit(0)  # Rust is gone or done with us.
        job = json.loads(line)
        try:
            if job.get("mode") == "evaluate":
                out = evaluate_job(job)
            else:
                out = run_job(job)
        except Exception as e:  # a harness failure, reported as such
            out = {"event": "error", "message": "%s: %s" % (type(e).__name__, e)}
        report(out)
        reap_deferred()


if __name__ == "__main__":
    _worker()
