//! Judge raw sandbox outcomes against a case's expectations, then aggregate: pass@1, unbiased
//! pass@k, pass rate per category, syntax-valid rate, and how well token-level uncertainty
//! predicts failure (AUROC).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::case::{Case, Expectation};
use crate::engine::{Timing, TokenTrace};
use crate::extract::Extraction;
use crate::sandbox::{ExecReport, LoadOutcome, Raised, RawOutcome};
use crate::syntax::SyntaxReport;
use crate::value::Value;

/// The verdict on one test call.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
        }
    }
}

/// Token-level confidence of one generated sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confidence {
    pub tokens: usize,
    /// Mean negative log-likelihood per token (greedy NLL).
    pub mean_nll: f64,
    pub mean_prob: f64,
    pub min_prob: f64,
    /// Tokens generated with probability below 0.5.
    pub low_confidence_tokens: usize,
}

impl Confidence {
    pub fn from_trace(trace: &TokenTrace) -> Option<Confidence> {
        // A NaN log-probability (fp16 logits can overflow) says nothing about confidence; it
        // must not turn every mean into NaN.
        let logprobs: Vec<f64> = trace
            .logprobs
            .iter()
            .map(|&l| l as f64)
            .filter(|l| !l.is_nan())
            .map(|l| l.max(-100.0))
            .collect();
        if logprobs.is_empty() {
            return None;
        }
        let n = logprobs.len() as f64;
        let probs: Vec<f64> = logprobs.iter().map(|l| l.exp()).collect();
        Some(Confidence {
            tokens: logprobs.len(),
            mean_nll: -logprobs.iter().sum::<f64>() / n,
            mean_prob: probs.iter().sum::<f64>() / n,
            min_prob: probs.iter().cloned().fold(1.0, f64::min),
            low_confidence_tokens: probs.iter().filter(|&&p| p < 0.5).count(),
        })
    }
}

/// Everything about one sample of one case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleOutcome {
    pub extraction: Extraction,
    pub syntax: SyntaxReport,
    pub load: LoadVerdict,
    pub tests: Vec<TestResult>,
    pub passed: bool,
    pub confidence: Option<Confidence>,
    pub finish_reason: Option<String>,
    /// Generation timings and memory (results only; never in snapshots).
    pub timing: Option<Timing>,
    /// The generated tokens with their probabilities (results only; for the HTML heatmap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenTrace>,
}

/// Judge one execution against the case. `expected` holds the evaluated expected value of each
/// test whose expectation is a value (`None` for `raises` tests), aligned with `case.tests`.
pub fn judge(
    case: &Case,
    expected: &[Option<Value>],
    report: &ExecReport,
) -> (LoadVerdict, Vec<TestResult>) {
    let load = match &report.load {
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
    };
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
                    let short = want.rsplit('.').next().unwrap_or(want);
                    if e.exc_type == short || e.mro.iter().any(|m| m == short) {
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

fn raw_failure(raw: &RawOutcome) -> TestVerdict {
    match raw {
        RawOutcome::Returned(v) => TestVerdict::Crashed {
            why: format!("unexpected value {}", v.repr()),
        },
        RawOutcome::CheckPassed => TestVerdict::Passed,
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
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The outcome of one case for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseOutcome {
    pub key: String,
    pub category: String,
    pub model: String,
    pub mode: String,
    pub samples: Vec<SampleOutcome>,
    /// Set when the case could not be evaluated at all (bad case file, source failure).
    pub error: Option<String>,
}

impl CaseOutcome {
    pub fn passed_samples(&self) -> usize {
        self.samples.iter().filter(|s| s.passed).count()
    }

    /// Mean pass rate over samples (pass@1 estimate); 0 for an errored case.
    pub fn pass_at_1(&self) -> f64 {
        if self.samples.is_empty() {
            0.0
        } else {
            self.passed_samples() as f64 / self.samples.len() as f64
        }
    }

    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.samples.is_empty() && self.samples.iter().all(|s| s.passed)
    }
}

/// Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n == 0 || k > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    // Product form avoids huge binomials.
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// Counts and rates over a group of cases.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub cases: usize,
    /// Cases whose every sample passed.
    pub passed: usize,
    pub samples: usize,
    pub passed_samples: usize,
    pub syntax_valid_samples: usize,
    /// Mean over cases of pass@1.
    pub pass_rate: f64,
    pub syntax_valid_rate: f64,
    /// Unbiased pass@k for k = 1, 2, 5, 10 up to the number of samples.
    pub pass_at_k: BTreeMap<usize, f64>,
}

impl Totals {
    fn of<'a>(cases: impl Iterator<Item = &'a CaseOutcome> + Clone) -> Totals {
        let mut t = Totals::default();
        let mut rate_sum = 0.0;
        for c in cases.clone() {
            t.cases += 1;
            t.passed += c.passed() as usize;
            t.samples += c.samples.len().max(1);
            t.passed_samples += c.passed_samples();
            t.syntax_valid_samples += c.samples.iter().filter(|s| s.syntax.valid).count();
            rate_sum += c.pass_at_1();
        }
        if t.cases > 0 {
            t.pass_rate = rate_sum / t.cases as f64;
            t.syntax_valid_rate = t.syntax_valid_samples as f64 / t.samples as f64;
        }
        let min_n = cases.clone().map(|c| c.samples.len()).min().unwrap_or(0);
        for k in [1usize, 2, 5, 10] {
            if k <= min_n && t.cases > 0 {
                let sum: f64 = cases
                    .clone()
                    .map(|c| pass_at_k(c.samples.len(), c.passed_samples(), k))
                    .sum();
                t.pass_at_k.insert(k, sum / t.cases as f64);
            }
        }
        t
    }
}

/// How well a confidence score separates passing from failing samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UncertaintyStats {
    pub samples: usize,
    pub mean_nll_passed: Option<f64>,
    pub mean_nll_failed: Option<f64>,
    /// AUROC of mean NLL as a predictor of failure (0.5 = no signal, 1.0 = perfect).
    pub auroc_mean_nll: Option<f64>,
    /// AUROC of (1 - min token probability) as a predictor of failure.
    pub auroc_min_prob: Option<f64>,
}

/// The run's summary for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub model: String,
    pub overall: Totals,
    pub categories: BTreeMap<String, Totals>,
    pub uncertainty: Option<UncertaintyStats>,
}

impl Summary {
    pub fn of(model: &str, outcomes: &[CaseOutcome]) -> Summary {
        let mine = outcomes.iter().filter(|o| o.model == model);
        let mut categories = BTreeMap::new();
        let names: std::collections::BTreeSet<&str> =
            mine.clone().map(|o| o.category.as_str()).collect();
        for cat in names {
            categories.insert(
                cat.to_string(),
                Totals::of(mine.clone().filter(|o| o.category == cat)),
            );
        }
        Summary {
            model: model.to_string(),
            overall: Totals::of(mine.clone()),
            categories,
            uncertainty: uncertainty(mine),
        }
    }
}

fn uncertainty<'a>(outcomes: impl Iterator<Item = &'a CaseOutcome>) -> Option<UncertaintyStats> {
    let pairs: Vec<(&Confidence, bool)> = outcomes
        .flat_map(|o| o.samples.iter())
        .filter_map(|s| s.confidence.as_ref().map(|c| (c, s.passed)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let mean = |passed: bool| {
        let xs: Vec<f64> = pairs
            .iter()
            .filter(|p| p.1 == passed)
            .map(|p| p.0.mean_nll)
            .collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let failed: Vec<bool> = pairs.iter().map(|p| !p.1).collect();
    Some(UncertaintyStats {
        samples: pairs.len(),
        mean_nll_passed: mean(true),
        mean_nll_failed: mean(false),
        auroc_mean_nll: auroc(
            &pairs.iter().map(|p| p.0.mean_nll).collect::<Vec<_>>(),
            &failed,
        ),
        auroc_min_prob: auroc(
            &pairs.iter().map(|p| 1.0 - p.0.min_prob).collect::<Vec<_>>(),
            &failed,
        ),
    })
}

/// Area under the ROC curve of `scores` for predicting `positive` (ties count half).
/// `None` when only one class is present.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let pos: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|p| *p.1)
        .map(|p| *p.0)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|p| !*p.1)
        .map(|p| *p.0)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_closed_form() {
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        // 1 - C(7,2)/C(10,2) = 1 - 21/45
        assert!((pass_at_k(10, 3, 2) - (1.0 - 21.0 / 45.0)).abs() < 1e-12);
        assert_eq!(pass_at_k(5, 5, 3), 1.0);
        assert_eq!(pass_at_k(5, 0, 3), 0.0);
    }

    #[test]
    fn confidence_ignores_nan_logprobs() {
        let trace = TokenTrace {
            logprobs: vec![-0.5, f32::NAN, f32::NEG_INFINITY],
            ..TokenTrace::default()
        };
        let c = Confidence::from_trace(&trace).unwrap();
        assert_eq!(c.tokens, 2);
        assert!(c.mean_nll.is_finite() && c.mean_nll > 0.5);
    }

    #[test]
    fn auroc_basics() {
        assert_eq!(
            auroc(&[0.9, 0.8, 0.1, 0.2], &[true, true, false, false]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.1, 0.2, 0.9, 0.8], &[true, true, false, false]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
        assert_eq!(auroc(&[0.5], &[true]), None);
    }
}
