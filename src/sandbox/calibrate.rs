//! Per-case timeouts calibrated from the reference solution's runtime on this machine (as
//! EvalPlus does), with a floor, so that a slow machine does not turn passes into timeouts.

use std::time::Duration;

use super::{Job, LoadOutcome, RawOutcome, Sandbox, SandboxConfig, SandboxError};

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
    let mut slowest = Duration::ZERO;
    for _ in 0..policy.runs.max(1) {
        let (rep, took) = sandbox.execute_timed(reference)?;
        if rep.load != LoadOutcome::Loaded {
            return Err(SandboxError::Calibration(format!(
                "the reference did not load: {:?}",
                rep.load
            )));
        }
        let bad = rep
            .calls
            .iter()
            .chain(rep.check.iter())
            .find(|c| !matches!(c, RawOutcome::Returned(_) | RawOutcome::CheckPassed));
        if let Some(bad) = bad {
            return Err(SandboxError::Calibration(format!(
                "the reference solution did not pass: {bad:?}"
            )));
        }
        slowest = slowest.max(took);
    }
    let scaled = slowest.mul_f64(policy.factor.max(1.0));
    Ok(scaled.clamp(policy.floor, policy.ceiling))
}
