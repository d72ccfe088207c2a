//! Per-case timeouts calibrated from the reference solution's runtime on this machine (as
//! EvalPlus does), with a floor, so that a slow machine does not turn passes into timeouts.

use std::time::Duration;

use crate::evaluate::sandbox::{
    Job, LoadOutcome, RawOutcome, Sandbox, SandboxConfig, SandboxError,
};
use crate::evaluate::verdict;

/// How calibrated timeouts are derived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutPolicy {
    pub floor: Duration,
    pub factor: f64,
    pub ceiling: Duration,
    /// Runs of the reference; the slowest counts.
    pub runs: u32,
}

impl TimeoutPolicy {
    pub fn from_config(c: &SandboxConfig) -> TimeoutPolicy {
        TimeoutPolicy {
            floor: Duration::from_millis(c.timeout_floor_ms),
            factor: c.timeout_factor,
            ceiling: Duration::from_millis(c.timeout_ceiling_ms.max(c.timeout_floor_ms)),
            runs: 3,
        }
    }
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        TimeoutPolicy::from_config(&SandboxConfig::default())
    }
}

/// Run `reference` (a job whose program is the reference solution, with generous timeouts)
/// `policy.runs` times and return the per-call timeout to use for this case:
/// `clamp(factor x slowest execution time, floor, ceiling)`, where the execution time is the
/// program's and all its calls' (the sandbox's [`Sandbox::execute_timed`]: not the wait for a
/// free worker, which on a busy machine once turned a 1 s timeout into 10 s). The whole
/// execution bounds every single call, so the result is conservative. Fails if the reference
/// does not pass cleanly (every call returns, or the check block passes).
pub fn calibrate(
    sandbox: &dyn Sandbox,
    reference: &Job,
    policy: &TimeoutPolicy,
) -> Result<Duration, SandboxError> {
    calibrate_expecting(sandbox, reference, &[], policy)
}

/// [`calibrate`] for a case with `raises` tests: `raises[i]` names the exception call `i`
/// expects (`None`, or a missing entry, for a call that must return). A reference that raises
/// what its test expects passed that test; one that raises anything else, or returns where an
/// exception was expected, did not.
pub fn calibrate_expecting(
    sandbox: &dyn Sandbox,
    reference: &Job,
    raises: &[Option<String>],
    policy: &TimeoutPolicy,
) -> Result<Duration, SandboxError> {
    let mut slowest = Duration::ZERO;
    for _ in 0..policy.runs.max(1) {
        let (rep, took) = sandbox.execute_timed(reference)?;
        if rep.load != LoadOutcome::Loaded {
            return Err(SandboxError::Calibration(format!(
                "the reference did not load: {}",
                verdict::describe_load(&rep.load)
            )));
        }
        for (i, call) in rep.calls.iter().enumerate() {
            let want = raises.get(i).and_then(Option::as_deref);
            let passed = match (call, want) {
                (RawOutcome::Returned(_), None) => true,
                (RawOutcome::Raised(e), Some(want)) => verdict::raised_matches(want, e),
                _ => false,
            };
            if !passed {
                let expected = want.map(|w| format!(" (expects {w})")).unwrap_or_default();
                return Err(SandboxError::Calibration(format!(
                    "the reference solution did not pass test {} `{}`{expected}: {}",
                    i + 1,
                    reference.calls.get(i).map(String::as_str).unwrap_or("?"),
                    verdict::describe_raw(call)
                )));
            }
        }
        if let Some(check) = rep
            .check
            .as_ref()
            .filter(|c| **c != RawOutcome::CheckPassed)
        {
            return Err(SandboxError::Calibration(format!(
                "the reference solution did not pass its check block: {}",
                verdict::describe_raw(check)
            )));
        }
        slowest = slowest.max(took);
    }
    let scaled = slowest.mul_f64(policy.factor.max(1.0));
    Ok(scaled.clamp(policy.floor, policy.ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::sandbox::{ExecReport, Raised};
    use crate::evaluate::value::Value;

    /// Answers every job with the same report, taking `took`.
    struct Fixed(ExecReport, Duration);

    impl Sandbox for Fixed {
        fn execute(&self, _job: &Job) -> Result<ExecReport, SandboxError> {
            Ok(self.0.clone())
        }
        fn execute_timed(&self, _job: &Job) -> Result<(ExecReport, Duration), SandboxError> {
            Ok((self.0.clone(), self.1))
        }
        fn evaluate_expected(&self, _exprs: &[String]) -> Result<Vec<Value>, SandboxError> {
            Ok(Vec::new())
        }
        fn isolation(&self) -> String {
            String::new()
        }
    }

    fn raised(exc_type: &str, mro: &[&str]) -> RawOutcome {
        RawOutcome::Raised(Raised {
            exc_type: exc_type.into(),
            mro: mro.iter().map(|s| s.to_string()).collect(),
            message: "bad".into(),
            line: Some(2),
            location: Some("program".into()),
            source: Some("raise KeyError('bad')".into()),
        })
    }

    fn reference(calls: Vec<RawOutcome>) -> (Fixed, Job) {
        let report = ExecReport {
            load: LoadOutcome::Loaded,
            calls,
            check: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        };
        let job = Job {
            program: String::new(),
            setup: None,
            entry_point: "f".into(),
            calls: vec!["f(1)".into(), "f(None)".into()],
            check: None,
            prelude: None,
            test_timeout: Duration::from_secs(20),
            load_timeout: Duration::from_secs(20),
            stop_after_timeout: false,
        };
        (Fixed(report, Duration::from_millis(300)), job)
    }

    fn policy() -> TimeoutPolicy {
        TimeoutPolicy {
            floor: Duration::from_millis(100),
            factor: 4.0,
            ceiling: Duration::from_secs(20),
            runs: 2,
        }
    }

    #[test]
    fn a_reference_raising_what_its_test_expects_passed_it() {
        let calls = vec![
            RawOutcome::Returned(Value::Int("1".into())),
            raised("KeyError", &["KeyError", "LookupError", "Exception"]),
        ];
        let (sandbox, job) = reference(calls);
        let raises = [None, Some("LookupError".to_string())];
        let timeout = calibrate_expecting(&sandbox, &job, &raises, &policy()).unwrap();
        assert_eq!(timeout, Duration::from_millis(300).mul_f64(4.0));
    }

    #[test]
    fn a_reference_raising_something_else_fails_in_words() {
        let calls = vec![
            RawOutcome::Returned(Value::Int("1".into())),
            raised("KeyError", &["KeyError", "LookupError", "Exception"]),
        ];
        let (sandbox, job) = reference(calls);
        let raises = [None, Some("TypeError".to_string())];
        let err = calibrate_expecting(&sandbox, &job, &raises, &policy())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "failed to calibrate a timeout: the reference solution did not pass test 2 `f(None)` (expects TypeError): exception: KeyError: bad (program line 2: raise KeyError('bad'))"
        );
        // Without the expectation, the same exception is a failure too.
        assert!(calibrate(&sandbox, &job, &policy()).is_err());
    }
}
