//! Failure analysis: why a sample failed, as one class (syntax error, import error, exception
//! with its type, wrong answer, returned None, uncomparable value, timeout, memory, output
//! limit, blocked, crash, generation error, truncated at max tokens), with the first failing test and, where the traceback names
//! one, the generated line that raised; and the counts per class over a model's cases.
//! Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::engine::FinishReason;
use crate::evaluate::sandbox::Raised;
use crate::evaluate::verdict::{LoadVerdict, TestVerdict};
use crate::evaluate::{CaseOutcome, SampleOutcome};

/// Why a sample failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "class", content = "type", rename_all = "snake_case")]
pub enum FailureClass {
    /// Generation stopped at max new tokens and the program failed.
    Truncated,
    SyntaxError,
    /// `ImportError` or `ModuleNotFoundError`.
    ImportError,
    /// Raised an exception of this type (where a value was expected).
    Exception(String),
    WrongAnswer,
    /// A wrong answer whose value was `None` (a missing `return`).
    ReturnedNone,
    /// Returned a value that cannot be compared outside the process (a subclass of a builtin
    /// with a forged `__eq__`, a custom object, a generator).
    Uncomparable,
    Timeout,
    Memory,
    /// Printed more than the sandbox's output limit.
    OutputLimit,
    Blocked,
    /// Wrote on the harness's result channel what the harness did not ask for.
    Tampering,
    /// Crashed or killed by a signal.
    Crash,
    /// The completion source failed: no program to judge.
    GenerationError,
    /// Nothing that says more.
    Other,
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureClass::Truncated => f.write_str("truncated at max tokens"),
            FailureClass::SyntaxError => f.write_str("syntax error"),
            FailureClass::ImportError => f.write_str("import error"),
            FailureClass::Exception(t) => write!(f, "exception {t}"),
            FailureClass::WrongAnswer => f.write_str("wrong answer"),
            FailureClass::ReturnedNone => f.write_str("returned None"),
            FailureClass::Uncomparable => f.write_str("uncomparable value"),
            FailureClass::Timeout => f.write_str("timeout"),
            FailureClass::Memory => f.write_str("memory"),
            FailureClass::OutputLimit => f.write_str("output limit"),
            FailureClass::Blocked => f.write_str("blocked"),
            FailureClass::Tampering => f.write_str("tampering"),
            FailureClass::Crash => f.write_str("crash"),
            FailureClass::GenerationError => f.write_str("generation error"),
            FailureClass::Other => f.write_str("other"),
        }
    }
}

/// One failing sample, analysed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    /// The label of the first failing test (none when the program did not load).
    pub test: Option<String>,
    /// The generated program's line that raised, and its text.
    pub line: Option<usize>,
    pub source: Option<String>,
}

/// Classify one sample; `None` when it passed.
pub fn classify(sample: &SampleOutcome) -> Option<Failure> {
    if sample.passed {
        return None;
    }
    let mut failure = Failure {
        class: FailureClass::Other,
        test: None,
        line: None,
        source: None,
    };
    let raised = match &sample.load {
        LoadVerdict::Ok => {
            let first = sample
                .tests
                .iter()
                .find(|t| !t.verdict.is_pass() && !matches!(t.verdict, TestVerdict::NotRun { .. }));
            if let Some(t) = first {
                failure.test = Some(t.label.clone());
                failure.class = test_class(&t.verdict);
            }
            match first.map(|t| &t.verdict) {
                Some(TestVerdict::Raised { error } | TestVerdict::WrongException { error, .. }) => {
                    Some(error)
                }
                _ => None,
            }
        }
        LoadVerdict::Raised { error } => {
            failure.class = raised_class(error);
            Some(error)
        }
        LoadVerdict::TimedOut { .. } => load_class(&mut failure, FailureClass::Timeout),
        LoadVerdict::MemoryLimit => load_class(&mut failure, FailureClass::Memory),
        LoadVerdict::Blocked { .. } => load_class(&mut failure, FailureClass::Blocked),
        LoadVerdict::OutputLimit { .. } => load_class(&mut failure, FailureClass::OutputLimit),
        LoadVerdict::Tampered { .. } => load_class(&mut failure, FailureClass::Tampering),
        LoadVerdict::Crashed { .. } | LoadVerdict::KilledBySignal { .. } => {
            load_class(&mut failure, FailureClass::Crash)
        }
    };
    if let Some(e) = raised.filter(|e| e.location.as_deref() == Some("program")) {
        failure.line = e.line;
        failure.source = e.source.clone();
    }
    if !sample.syntax.valid {
        failure.class = FailureClass::SyntaxError;
    }
    if sample.finish_reason == Some(FinishReason::MaxNewTokens) {
        failure.class = FailureClass::Truncated;
    }
    Some(failure)
}

fn load_class(failure: &mut Failure, class: FailureClass) -> Option<&'static Raised> {
    failure.class = class;
    None
}

fn raised_class(e: &Raised) -> FailureClass {
    match e.exc_type.as_str() {
        "ImportError" | "ModuleNotFoundError" => FailureClass::ImportError,
        "SyntaxError" | "IndentationError" | "TabError" => FailureClass::SyntaxError,
        t => FailureClass::Exception(t.to_string()),
    }
}

fn test_class(v: &TestVerdict) -> FailureClass {
    match v {
        TestVerdict::WrongAnswer { got, .. } if got == "None" => FailureClass::ReturnedNone,
        TestVerdict::WrongAnswer { .. } | TestVerdict::DidNotRaise { .. } => {
            FailureClass::WrongAnswer
        }
        // A check block's failed assertion is a wrong answer, not the program's exception.
        TestVerdict::Raised { error }
            if error.exc_type == "AssertionError" && error.location.as_deref() == Some("check") =>
        {
            FailureClass::WrongAnswer
        }
        TestVerdict::Raised { error } | TestVerdict::WrongException { error, .. } => {
            raised_class(error)
        }
        TestVerdict::TimedOut { .. } => FailureClass::Timeout,
        TestVerdict::MemoryLimit => FailureClass::Memory,
        TestVerdict::Blocked { .. } => FailureClass::Blocked,
        TestVerdict::OutputLimit { .. } => FailureClass::OutputLimit,
        TestVerdict::Tampered { .. } => FailureClass::Tampering,
        TestVerdict::Uncomparable { .. } => FailureClass::Uncomparable,
        TestVerdict::Crashed { .. } | TestVerdict::KilledBySignal { .. } => FailureClass::Crash,
        TestVerdict::Passed | TestVerdict::NotRun { .. } => FailureClass::Other,
    }
}

/// Failing samples per class over a model's cases, with what the sanitizer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FailureCounts {
    /// Class (as [`FailureClass`] displays it) -> failing samples.
    pub classes: BTreeMap<String, usize>,
    /// Samples whose code, as chosen from the reply, did not parse.
    pub raw_syntax_invalid: usize,
    /// Of those, samples whose incomplete tail was dropped so that the program parsed.
    pub sanitized: usize,
}

impl FailureCounts {
    pub fn of<'a>(outcomes: impl Iterator<Item = &'a CaseOutcome>) -> FailureCounts {
        let mut counts = FailureCounts::default();
        for o in outcomes {
            if o.generation_error {
                *counts
                    .classes
                    .entry(FailureClass::GenerationError.to_string())
                    .or_default() += 1;
            }
            for s in &o.samples {
                if !s.extraction.raw_syntax_valid {
                    counts.raw_syntax_invalid += 1;
                    counts.sanitized += s.syntax.valid as usize;
                }
                if let Some(f) = classify(s) {
                    *counts.classes.entry(f.class.to_string()).or_default() += 1;
                }
            }
        }
        counts
    }

    /// `wrong answer 40, returned None 3, ...`, most frequent first; `none` when nothing failed.
    pub fn line(&self) -> String {
        let mut by_count: Vec<(&String, &usize)> = self.classes.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = by_count.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let mut s = if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        };
        if self.raw_syntax_invalid > 0 {
            s.push_str(&format!(
                "; raw code syntax invalid in {} sample(s), {} of them repaired by dropping a cut-off tail",
                self.raw_syntax_invalid, self.sanitized
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::verdict::TestResult;

    fn sample(load: LoadVerdict, verdict: TestVerdict) -> SampleOutcome {
        let mut s = crate::snapshot::tests::outcome(false).samples.remove(0);
        s.load = load;
        s.tests = vec![TestResult {
            label: "f()".into(),
            verdict,
        }];
        s
    }

    fn raised(exc_type: &str, location: &str) -> Raised {
        Raised {
            exc_type: exc_type.into(),
            mro: vec![],
            message: "m".into(),
            line: Some(3),
            location: Some(location.into()),
            source: Some("return x[5]".into()),
        }
    }

    fn wrong(got: &str) -> TestVerdict {
        TestVerdict::WrongAnswer {
            got: got.into(),
            expected: "1".into(),
        }
    }

    fn class(s: &SampleOutcome) -> FailureClass {
        classify(s).unwrap().class
    }

    #[test]
    fn passed_samples_have_no_failure() {
        let mut s = sample(LoadVerdict::Ok, TestVerdict::Passed);
        s.passed = true;
        assert_eq!(classify(&s), None);
    }

    #[test]
    fn wrong_answer_and_returned_none() {
        let f = classify(&sample(LoadVerdict::Ok, wrong("2"))).unwrap();
        assert_eq!(f.class, FailureClass::WrongAnswer);
        assert_eq!(f.test.as_deref(), Some("f()"));
        assert_eq!(
            class(&sample(LoadVerdict::Ok, wrong("None"))),
            FailureClass::ReturnedNone
        );
        let check = TestVerdict::Raised {
            error: raised("AssertionError", "check"),
        };
        assert_eq!(
            class(&sample(LoadVerdict::Ok, check)),
            FailureClass::WrongAnswer
        );
    }

    #[test]
    fn exception_with_type_and_the_generated_line() {
        let v = TestVerdict::Raised {
            error: raised("IndexError", "program"),
        };
        let f = classify(&sample(LoadVerdict::Ok, v)).unwrap();
        assert_eq!(f.class, FailureClass::Exception("IndexError".into()));
        assert_eq!(f.class.to_string(), "exception IndexError");
        assert_eq!(
            (f.line, f.source.as_deref()),
            (Some(3), Some("return x[5]"))
        );
    }

    #[test]
    fn import_error_at_load() {
        let load = LoadVerdict::Raised {
            error: raised("ModuleNotFoundError", "program"),
        };
        let not_run = TestVerdict::NotRun { why: "x".into() };
        let f = classify(&sample(load, not_run)).unwrap();
        assert_eq!(f.class, FailureClass::ImportError);
        assert_eq!(f.test, None);
        assert_eq!(f.line, Some(3));
    }

    #[test]
    fn syntax_error() {
        let mut s = sample(
            LoadVerdict::Raised {
                error: raised("SyntaxError", "program"),
            },
            TestVerdict::NotRun { why: "x".into() },
        );
        assert_eq!(class(&s), FailureClass::SyntaxError);
        s.syntax.valid = false;
        s.load = LoadVerdict::Ok;
        assert_eq!(class(&s), FailureClass::SyntaxError);
    }

    #[test]
    fn timeout_memory_blocked_crash() {
        let ok = LoadVerdict::Ok;
        let t = TestVerdict::TimedOut { after_ms: 10 };
        assert_eq!(class(&sample(ok.clone(), t)), FailureClass::Timeout);
        let load = LoadVerdict::TimedOut { after_ms: 10 };
        assert_eq!(class(&sample(load, wrong("2"))), FailureClass::Timeout);
        assert_eq!(
            class(&sample(ok.clone(), TestVerdict::MemoryLimit)),
            FailureClass::Memory
        );
        let b = TestVerdict::Blocked {
            operation: "socket".into(),
        };
        assert_eq!(class(&sample(ok.clone(), b)), FailureClass::Blocked);
        let k = TestVerdict::KilledBySignal { signal: 11 };
        assert_eq!(class(&sample(ok, k)), FailureClass::Crash);
    }

    #[test]
    fn output_limit_and_uncomparable_values_are_named() {
        let ok = LoadVerdict::Ok;
        let printed = TestVerdict::OutputLimit { bytes: 1 << 20 };
        let c = class(&sample(ok.clone(), printed));
        assert_eq!(
            (c.to_string(), c),
            ("output limit".into(), FailureClass::OutputLimit)
        );
        let load = LoadVerdict::OutputLimit { bytes: 1 << 20 };
        assert_eq!(class(&sample(load, wrong("2"))), FailureClass::OutputLimit);
        let forged = TestVerdict::Uncomparable {
            what: "a value of type `L`".into(),
        };
        let c = class(&sample(ok, forged));
        assert_eq!(
            (c.to_string(), c),
            ("uncomparable value".into(), FailureClass::Uncomparable)
        );
    }

    #[test]
    fn truncated_at_max_tokens_wins() {
        let mut s = sample(LoadVerdict::Ok, wrong("2"));
        s.finish_reason = Some(FinishReason::MaxNewTokens);
        assert_eq!(class(&s), FailureClass::Truncated);
        s.finish_reason = Some(FinishReason::Eos);
        assert_eq!(class(&s), FailureClass::WrongAnswer);
    }

    #[test]
    fn counts_per_class_with_generation_errors() {
        let mut errored = crate::snapshot::tests::outcome(false);
        errored.samples.clear();
        errored.error = Some("source failed".into());
        errored.generation_error = true;
        let outcomes = [
            crate::snapshot::tests::outcome(false),
            crate::snapshot::tests::outcome(false),
            crate::snapshot::tests::outcome(true),
            errored,
        ];
        let counts = FailureCounts::of(outcomes.iter());
        assert_eq!(counts.line(), "wrong answer 2, generation error 1");
        assert_eq!(FailureCounts::default().line(), "none");
    }
}
