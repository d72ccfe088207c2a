//! Aggregates over case outcomes: pass@1, unbiased pass@k and pass^k, pass rate per category,
//! syntax-valid rate, how well token-level uncertainty predicts failure ([`uncertainty`]),
//! and the profile's facts and timing ([`footprint`]).

pub mod diversity;
pub mod following;
pub mod footprint;
pub mod stats;
pub mod uncertainty;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::evaluate::CaseOutcome;
use crate::evaluate::failure::FailureCounts;
use diversity::Diversity;
use footprint::{Profile, TimingStats};
use stats::{Interval, pass_at_k};
pub use uncertainty::UncertaintyStats;

/// Counts and rates over a group of cases. Rates are over the measured cases: a case that
/// could not be measured (a malformed case file, a generation or sandbox failure) is counted in
/// `errors`, never as a wrong answer or an invalid program of the model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Measured cases.
    pub cases: usize,
    /// Cases that could not be measured.
    pub errors: usize,
    /// Cases whose every sample passed.
    pub passed: usize,
    pub samples: usize,
    pub passed_samples: usize,
    pub syntax_valid_samples: usize,
    /// Mean over cases of pass@1.
    pub pass_rate: f64,
    /// 95% Wilson score interval of `pass_rate` over the measured cases (the whole range 0 - 1
    /// when none was measured).
    pub pass_rate_ci: Interval,
    pub syntax_valid_rate: f64,
    /// Unbiased pass@k for k = 1, 2, 5, 10 up to the number of samples.
    pub pass_at_k: BTreeMap<usize, f64>,
    /// Unbiased pass^k (all k samples pass) for the same k.
    pub pass_hat_k: BTreeMap<usize, f64>,
}

impl Totals {
    fn of<'a>(cases: impl Iterator<Item = &'a CaseOutcome>) -> Totals {
        let (measured, errors): (Vec<&CaseOutcome>, Vec<&CaseOutcome>) =
            cases.partition(|c| c.error.is_none());
        let mut t = Totals {
            cases: measured.len(),
            errors: errors.len(),
            ..Totals::default()
        };
        let mut rate_sum = 0.0;
        for c in &measured {
            t.passed += c.passed() as usize;
            t.samples += c.samples.len();
            t.passed_samples += c.passed_samples();
            t.syntax_valid_samples += c.samples.iter().filter(|s| s.syntax.valid).count();
            rate_sum += c.pass_at_1();
        }
        if t.cases > 0 {
            t.pass_rate = rate_sum / t.cases as f64;
        }
        t.pass_rate_ci = stats::wilson(rate_sum, t.cases);
        if t.samples > 0 {
            t.syntax_valid_rate = t.syntax_valid_samples as f64 / t.samples as f64;
        }
        let min_n = measured.iter().map(|c| c.samples.len()).min().unwrap_or(0);
        for k in [1usize, 2, 5, 10] {
            if k <= min_n && t.cases > 0 {
                let sum: f64 = measured
                    .iter()
                    .map(|c| pass_at_k(c.samples.len(), c.passed_samples(), k))
                    .sum();
                t.pass_at_k.insert(k, sum / t.cases as f64);
                let sum: f64 = measured
                    .iter()
                    .map(|c| stats::pass_hat_k(c.samples.len(), c.passed_samples(), k))
                    .sum();
                t.pass_hat_k.insert(k, sum / t.cases as f64);
            }
        }
        t
    }
}

/// The run's summary for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub model: String,
    /// The profile as run (set by the harness, which knows the source; `None` otherwise).
    pub profile: Option<Profile>,
    /// Generation timing (only when the source timed its samples: a model).
    pub timing: Option<TimingStats>,
    pub overall: Totals,
    pub categories: BTreeMap<String, Totals>,
    pub uncertainty: Option<UncertaintyStats>,
    /// What generation used, when the source measured it (a model; not replayed answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// How different a case's samples are (only when some case has two samples or more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diversity: Option<Diversity>,
    /// Failing samples per class.
    pub failures: FailureCounts,
    /// What each device's session generated, for a profile spread over several GPUs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<crate::outcome::DeviceUsage>,
    /// How greedy generations followed their accepted outputs through near ties.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub following: Option<following::Following>,
    /// The profile's place in the config (reports list profiles in this order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_order: Option<usize>,
    /// How the profile's trials ended (their snapshots), when the run recorded them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trials: Option<crate::trial::TrialCounts>,
}

/// What generating the run's completions used: tokens, and the peak memory of the process on
/// the host and on the GPU (ONNX Runtime's arena holds its high-water mark, so the largest
/// reading is the run's peak).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub generated_tokens: usize,
    pub peak_host_bytes: Option<u64>,
    pub peak_device_bytes: Option<u64>,
}

impl Resources {
    fn of<'a>(outcomes: impl Iterator<Item = &'a CaseOutcome>) -> Option<Resources> {
        let timings: Vec<_> = outcomes
            .flat_map(|o| o.samples.iter())
            .filter_map(|s| s.timing.as_ref())
            .collect();
        if timings.is_empty() {
            return None;
        }
        Some(Resources {
            generated_tokens: timings.iter().map(|t| t.generated_tokens).sum(),
            peak_host_bytes: timings.iter().filter_map(|t| t.peak_host_bytes).max(),
            peak_device_bytes: timings.iter().filter_map(|t| t.peak_device_bytes).max(),
        })
    }
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
            profile: None,
            timing: TimingStats::of(mine.clone()),
            overall: Totals::of(mine.clone()),
            categories,
            uncertainty: UncertaintyStats::of(mine.clone()),
            resources: Resources::of(mine.clone()),
            diversity: Diversity::of(mine.clone()),
            following: following::Following::of(mine.clone()),
            config_order: None,
            trials: crate::trial::TrialCounts::of(mine.clone().map(|o| o.trial)),
            failures: FailureCounts::of(mine),
            devices: Vec::new(),
        }
    }
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

    /// A case of `category` that passed, failed, or (`None`) could not be measured.
    fn outcome(category: &str, passed: Option<bool>) -> CaseOutcome {
        let mut o = crate::snapshot::tests::outcome(passed.unwrap_or(false));
        o.category = category.into();
        if passed.is_none() {
            o.samples.clear();
            o.error = Some("tests/x.toml:3: bad".into());
        }
        o
    }

    #[test]
    fn unmeasured_cases_are_errors_not_failures_or_invalid_syntax() {
        let outcomes = [
            outcome("a", Some(true)),
            outcome("a", Some(false)),
            outcome("a", None),
        ];
        let s = Summary::of("m", &outcomes);
        assert_eq!(s.overall.cases, 2);
        assert_eq!(s.overall.errors, 1);
        assert_eq!(s.overall.pass_rate, 0.5);
        // Wilson 95% for 1 of 2: 0.5 ± 1.95996·sqrt(0.125 + 0.24005) / 2.92078.
        let ci = s.overall.pass_rate_ci;
        assert!(
            (ci.low - 0.0945).abs() < 1e-3 && (ci.high - 0.9055).abs() < 1e-3,
            "{ci:?}"
        );
        assert_eq!(s.overall.syntax_valid_rate, 1.0);
        let only_errors = Summary::of("m", &[outcome("b", None)]);
        assert_eq!(only_errors.overall.cases, 0);
        assert_eq!(only_errors.overall.errors, 1);
    }

    #[test]
    fn pass_hat_k_next_to_pass_at_k() {
        // Two cases of 2 samples: one with 1 of 2 passing, one with 2 of 2.
        let mut half = outcome("a", Some(true));
        let mut failing = half.samples[0].clone();
        failing.passed = false;
        half.samples.push(failing);
        let mut full = outcome("b", Some(true));
        full.samples.push(full.samples[0].clone());
        let s = Summary::of("m", &[half, full]);
        // pass@2: (1 + 1) / 2; pass^2: (0 + 1) / 2; at k = 1 both are the pass rate 0.75.
        assert_eq!(s.overall.pass_at_k, [(1, 0.75), (2, 1.0)].into());
        assert_eq!(s.overall.pass_hat_k, [(1, 0.75), (2, 0.5)].into());
        assert_eq!(s.categories["a"].pass_hat_k, [(1, 0.5), (2, 0.0)].into());
    }

    #[test]
    fn auroc_basics() {
        use super::stats::auroc;
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
