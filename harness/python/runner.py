"""Executes one case's program and tests for codegen-harness, in a child process.

The parent (Rust) writes one JSON job on stdin and reads JSON lines from file descriptor 3.
Expected values never come here: the child only reports what each call returned, in a strict
canonical form built from exact builtin types, and the parent compares. The same script, in
"evaluate" mode, is the trusted evaluator of a case's expected expressions (no generated code).
"""

import json
import os
import sys
import traceback

# Capture what we need before any untrusted code can patch modules or builtins.
_dumps = json.dumps
_write = os.write
_int_repr = int.__repr__
_float_repr = float.__repr__
_type = type
_len = len
_isinstance = isinstance
_BaseException = BaseException

MAX_DEPTH = 64
MAX_ITEMS = 200_000

try:
    sys.set_int_max_str_digits(0)
except AttributeError:
    pass


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
        return ["int", _int_repr(x)]
    if t is float:
        return ["float", _float_repr(x)]
    if t is complex:
        return ["complex", _float_repr(x.real), _float_repr(x.imag)]
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
    raise Unsupported("a value of type `%s`" % (getattr(t, "__qualname__", None) or "?"))


class Channel:
    def __init__(self, fd):
        self.fd = fd

    def send(self, obj):
        data = (_dumps(obj, ensure_ascii=True) + "\n").encode()
        view = memoryview(data)
        while view:
            n = _write(self.fd, view)
            view = view[n:]


def exception_event(exc, filenames, sources):
    """Describe an exception: type, its MRO names, message and line in our code."""
    t = _type(exc)
    try:
        message = str(exc)
    except BaseException:
        message = "<unprintable exception>"
    line = None
    where = None
    source = None
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
        "type": getattr(t, "__qualname__", "?"),
        "mro": [getattr(c, "__qualname__", "?") for c in getattr(t, "__mro__", ())],
        "message": message[:2000],
        "line": line,
        "where": where,
        "source": source,
    }


def value_event(value):
    try:
        return {"kind": "returned", "value": canon(value, [MAX_ITEMS])}
    except Unsupported as e:
        return {"kind": "unsupported", "what": str(e)}
    except RecursionError:
        return {"kind": "unsupported", "what": "a value nested too deeply"}


def run(job, chan):
    sources = {"<program>": job["program"]}
    filenames = {"<program>", "<test>", "<check>"}
    scratch = job.get("scratch")
    if scratch:
        os.chdir(scratch)
    start = job.get("start", 0)
    namespace = {"__name__": "__codegen__", "__builtins__": __builtins__}
    try:
        if job.get("setup"):
            sources["<setup>"] = job["setup"]
            exec(compile(job["setup"], "<setup>", "exec"), {"__name__": "__setup__"})
        exec(compile(job["program"], "<program>", "exec"), namespace)
    except _BaseException as e:  # noqa: B036 - the program may raise anything
        ev = exception_event(e, filenames | {"<setup>"}, sources)
        ev["event"] = "load"
        chan.send(ev)
        return
    chan.send({"event": "load", "kind": "ok"})
    if job.get("check"):
        sources["<check>"] = job["check"]
        try:
            check_ns = dict(namespace)
            exec(compile(job["check"], "<check>", "exec"), check_ns)
            check_ns["check"](namespace[job["entry_point"]])
            ev = {"kind": "passed"}
        except _BaseException as e:
            ev = exception_event(e, filenames, sources)
        ev["event"] = "check"
        chan.send(ev)
        return
    for i, call in enumerate(job["tests"]):
        if i < start:
            continue
        sources["<test>"] = call
        try:
            value = eval(compile(call.strip(), "<test>", "eval"), namespace)
            ev = value_event(value)
        except _BaseException as e:
            ev = exception_event(e, filenames, sources)
        ev["event"] = "test"
        ev["index"] = i
        chan.send(ev)


def evaluate(job, chan):
    for i, expr in enumerate(job["exprs"]):
        try:
            ev = value_event(eval(compile(expr.strip(), "<expected>", "eval"), {}))
        except BaseException as e:
            ev = {"kind": "raised", "type": type(e).__qualname__, "message": str(e)[:2000]}
        ev["event"] = "expected"
        ev["index"] = i
        chan.send(ev)


def main():
    chan = Channel(int(os.environ.get("CODEGEN_RESULT_FD", "3")))
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    if job.get("mode") == "evaluate":
        evaluate(job, chan)
    else:
        run(job, chan)
    chan.send({"event": "done"})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
