//! Judge raw sandbox outcomes against a case's expectations: one verdict per test call and one
//! for loading the program, in words a person can read. Pure: no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::case::{Case, Expectation};
use crate::evaluate::sandbox::{ExecReport, LoadOutcome, Raised, RawOutcome};
use crate::evaluate::value::Value;

/// The verdict on one test call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum TestVerdict {
    Passed,
    /// Returned a value that differs from the expected one (both as Python reprs).
    WrongAnswer {
        got: String,
        expected: String,
    },
    /// Raised where a value was expected.
    Raised {
        error: Raised,
    },
    /// Raised, but not the expected exception type.
    WrongException {
        expected: String,
        error: Raised,
    },
    /// Returned normally where an exception was expected.
    DidNotRaise {
        expected: String,
        got: String,
    },
    /// Returned something that cannot be compared outside the process.
    Uncomparable {
        what: String,
    },
    TimedOut {
        after_ms: u64,
    },
    Crashed {
        why: String,
    },
    NotRun {
        why: String,
    },
    /// Ran out of the sandbox's memory limit.
    MemoryLimit,
    /// Printed more than the sandbox's output limit.
    OutputLimit {
        bytes: u64,
    },
    /// The sandbox denied an operation the code needed.
    Blocked {
        operation: String,
    },
    KilledBySignal {
        signal: i32,
    },
    /// The program wrote on the harness's result channel what the harness did not ask for.
    Tampered {
        what: String,
    },
}

impl TestVerdict {
    pub fn is_pass(&self) -> bool {
        matches!(self, TestVerdict::Passed)
    }

    /// One line a person can read.
    pub fn describe(&self) -> String {
        match self {
            TestVerdict::Passed => "passed".into(),
            TestVerdict::WrongAnswer { got, expected } => {
                format!("wrong answer: got {got}, expected {expected}")
            }
            TestVerdict::Raised { error } => format!("exception: {}", describe_raised(error)),
            TestVerdict::WrongException { expected, error } => {
                format!(
                    "expected {expected}, but got exception: {}",
                    describe_raised(error)
                )
            }
            TestVerdict::DidNotRaise { expected, got } => {
                format!("expected {expected} to be raised, but it returned {got}")
            }
            TestVerdict::Uncomparable { what } => {
                format!("returned {what}, which cannot be compared (only exact builtin types are)")
            }
            TestVerdict::TimedOut { after_ms } => format!("timed out after {after_ms} ms"),
            TestVerdict::Crashed { why } => format!("crashed: {why}"),
            TestVerdict::NotRun { why } => format!("not run: {why}"),
            TestVerdict::MemoryLimit => "memory limit exceeded".into(),
            TestVerdict::OutputLimit { bytes } => {
                format!("output limit exceeded (printed more than {bytes} bytes)")
            }
            TestVerdict::Blocked { operation } => format!("blocked by the sandbox: {operation}"),
            TestVerdict::KilledBySignal { signal } => {
                format!("killed by signal {signal} ({})", signal_name(*signal))
            }
            TestVerdict::Tampered { what } => {
                format!("tampered with the harness's result channel: {what}")
            }
        }
    }
}

/// `ValueError: bad input (program line 3: raise ValueError(...))`.
pub fn describe_raised(e: &Raised) -> String {
    let mut s = if e.message.is_empty() {
        e.exc_type.clone()
    } else {
        format!("{}: {}", e.exc_type, first_line(&e.message, 200))
    };
    if let (Some(line), Some(loc)) = (e.line, &e.location) {
        s.push_str(&format!(" ({loc} line {line}"));
        if let Some(src) = &e.source {
            s.push_str(&format!(": {}", first_line(src, 80)));
        }
        s.push(')');
    }
    s
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let short: String = line.chars().take(max).collect();
    if short.len() < line.len() || s.lines().nth(1).is_some() {
        format!("{short}...")
    } else {
        short
    }
}

/// One test and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// The call (or `check(<entry point>)`).
    pub label: String,
    #[serde(flatten)]
    pub verdict: TestVerdict,
}

/// `SIGSEGV` for 11, and so on, for the signals generated code meets.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => "signal",
    }
}

/// How loading the program went, as shown to people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "load", rename_all = "snake_case")]
pub enum LoadVerdict {
    Ok,
    Raised { error: Raised },
    TimedOut { after_ms: u64 },
    Crashed { why: String },
    MemoryLimit,
    OutputLimit { bytes: u64 },
    Blocked { operation: String },
    KilledBySignal { signal: i32 },
    Tampered { what: String },
}

impl LoadVerdict {
    pub fn describe(&self) -> String {
        match self {
            LoadVerdict::Ok => "ok".into(),
            LoadVerdict::Raised { error } => format!("failed: {}", describe_raised(error)),
            LoadVerdict::TimedOut { after_ms } => format!("timed out after {after_ms} ms"),
            LoadVerdict::Crashed { why } => format!("crashed: {why}"),
            LoadVerdict::MemoryLimit => "memory limit exceeded".into(),
            LoadVerdict::OutputLimit { bytes } => {
                format!("output limit exceeded (printed more than {bytes} bytes)")
            }
            LoadVerdict::Blocked { operation } => format!("blocked by the sandbox: {operation}"),
            LoadVerdict::KilledBySignal { signal } => {
                format!("killed by signal {signal} ({})", signal_name(*signal))
            }
            LoadVerdict::Tampered { what } => {
                format!("tampered with the harness's result channel: {what}")
            }
        }
    }
}

/// Judge one execution against the case. `expected` holds the evaluated expected value of each
/// test whose expectation is a value (`None` for `raises` tests), aligned with `case.tests`.
pub fn judge(
    case: &Case,
    expected: &[Option<Value>],
    report: &ExecReport,
) -> (LoadVerdict, Vec<TestResult>) {
    let load = load_verdict(&report.load);
    let not_loaded = || TestVerdict::NotRun {
        why: "the program did not load".into(),
    };
    let mut results = Vec::new();
    if case.check.is_some() {
        let verdict = match (&load, &report.check) {
            (LoadVerdict::Ok, Some(RawOutcome::CheckPassed)) => TestVerdict::Passed,
            (LoadVerdict::Ok, Some(other)) => raw_failure(other),
            (LoadVerdict::Ok, None) => TestVerdict::NotRun {
                why: "the check block did not report".into(),
            },
            _ => not_loaded(),
        };
        results.push(TestResult {
            label: format!("check({})", case.entry_point),
            verdict,
        });
    }
    for (i, test) in case.tests.iter().enumerate() {
        let raw = report.calls.get(i).cloned().unwrap_or(RawOutcome::NotRun);
        let verdict = if load != LoadVerdict::Ok {
            not_loaded()
        } else {
            match (&test.expect, raw) {
                (Expectation::Value(_), RawOutcome::Returned(got)) => {
                    match expected.get(i).and_then(Option::as_ref) {
                        Some(want) if got.equals(want, test.tolerance) => TestVerdict::Passed,
                        Some(want) => TestVerdict::WrongAnswer {
                            got: got.repr(),
                            expected: want.repr(),
                        },
                        None => TestVerdict::NotRun {
                            why: "the expected value was not evaluated".into(),
                        },
                    }
                }
                (Expectation::Raises(want), RawOutcome::Raised(e)) => {
                    if raised_matches(want, &e) {
                        TestVerdict::Passed
                    } else {
                        TestVerdict::WrongException {
                            expected: want.clone(),
                            error: e,
                        }
                    }
                }
                (Expectation::Raises(want), RawOutcome::Returned(got)) => {
                    TestVerdict::DidNotRaise {
                        expected: want.clone(),
                        got: got.repr(),
                    }
                }
                (_, other) => raw_failure(&other),
            }
        };
        results.push(TestResult {
            label: test.call.clone(),
            verdict,
        });
    }
    (load, results)
}

/// Is `e` the exception a `raises = "want"` test expects (its type or a subclass; `want` may
/// be qualified, `json.JSONDecodeError`)?
pub fn raised_matches(want: &str, e: &Raised) -> bool {
    let short = want.rsplit('.').next().unwrap_or(want);
    e.exc_type == short || e.mro.iter().any(|m| m == short)
}

/// A raw outcome that is not a plain returned value, in the words of its verdict.
pub fn describe_raw(raw: &RawOutcome) -> String {
    match raw {
        RawOutcome::Returned(v) => format!("returned {}", v.repr()),
        other => raw_failure(other).describe(),
    }
}

/// How loading went, in the words of its verdict.
pub fn describe_load(load: &LoadOutcome) -> String {
    load_verdict(load).describe()
}

fn load_verdict(load: &LoadOutcome) -> LoadVerdict {
    match load {
        LoadOutcome::Loaded => LoadVerdict::Ok,
        LoadOutcome::Raised(e) => LoadVerdict::Raised { error: e.clone() },
        LoadOutcome::TimedOut(d) => LoadVerdict::TimedOut { after_ms: ms(*d) },
        LoadOutcome::Crashed(why) => LoadVerdict::Crashed { why: why.clone() },
        LoadOutcome::MemoryLimit => LoadVerdict::MemoryLimit,
        LoadOutcome::OutputLimit(bytes) => LoadVerdict::OutputLimit { bytes: *bytes },
        LoadOutcome::Blocked { operation } => LoadVerdict::Blocked {
            operation: operation.clone(),
        },
        LoadOutcome::KilledBySignal(signal) => LoadVerdict::KilledBySignal { signal: *signal },
        LoadOutcome::Tampered(what) => LoadVerdict::Tampered { what: what.clone() },
    }
}

fn raw_failure(raw: &RawOutcome) -> TestVerdict {
    match raw {
        RawOutcome::Returned(v) => TestVerdict::Crashed {
            why: format!("unexpected value {}", v.repr()),
        },
        // Only a check block passes as a whole (judged above); for a test call it is no value.
        RawOutcome::CheckPassed => TestVerdict::Crashed {
            why: "the sandbox reported a check block's verdict for a test call".into(),
        },
        RawOutcome::Unsupported(what) => TestVerdict::Uncomparable { what: what.clone() },
        RawOutcome::Raised(e) => TestVerdict::Raised { error: e.clone() },
        RawOutcome::TimedOut(d) => TestVerdict::TimedOut { after_ms: ms(*d) },
        RawOutcome::Crashed(why) => TestVerdict::Crashed { why: why.clone() },
        RawOutcome::NotRun => TestVerdict::NotRun {
            why: "an earlier failure stopped the run".into(),
        },
        RawOutcome::MemoryLimit => TestVerdict::MemoryLimit,
        RawOutcome::OutputLimit(bytes) => TestVerdict::OutputLimit { bytes: *bytes },
        RawOutcome::Blocked { operation } => TestVerdict::Blocked {
            operation: operation.clone(),
        },
        RawOutcome::KilledBySignal(signal) => TestVerdict::KilledBySignal { signal: *signal },
        RawOutcome::Tampered(what) => TestVerdict::Tampered { what: what.clone() },
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}
