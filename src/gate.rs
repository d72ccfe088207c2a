//! Turn pass rates into a CI verdict: every case measured (a case that could not be measured
//! is not a measured 0), minimum pass rate overall and per category, and the largest allowed
//! drop against the accepted baseline (the verdicts in accepted snapshots).

use std::fmt;

use serde::Serialize;

use crate::config::{GateConfig, Rate};
use crate::score::Summary;

/// The accepted pass rate over the same cases that ran.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Baseline {
    /// Cases that ran and have an accepted snapshot.
    pub cases: usize,
    pub passed: usize,
}

impl Baseline {
    pub fn rate(&self) -> f64 {
        if self.cases == 0 {
            0.0
        } else {
            self.passed as f64 / self.cases as f64
        }
    }
}

/// One threshold that was not met.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateFailure {
    pub model: String,
    /// `overall` or `category <name>`.
    pub scope: String,
    /// `allow_errors`, `min_pass_rate`, `categories.<name>` or `max_drop`.
    pub threshold_name: String,
    pub threshold: f64,
    pub actual: f64,
    pub message: String,
}

impl fmt::Display for GateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Check a model's summary against its gate. Categories that did not run are not judged.
pub fn evaluate(
    summary: &Summary,
    gate: &GateConfig,
    baseline: Option<Baseline>,
) -> Vec<GateFailure> {
    let mut failures = Vec::new();
    let model = &summary.model;
    let errors = summary.overall.errors;
    if errors > 0 && !gate.allow_errors {
        let total = errors + summary.overall.cases;
        failures.push(GateFailure {
            model: model.clone(),
            scope: "overall".into(),
            threshold_name: "allow_errors".into(),
            threshold: 0.0,
            actual: errors as f64,
            message: format!(
                "gate failed for model `{model}`: {errors} of {total} cases could not be measured (errors, not wrong answers; listed above); fix them, or set allow_errors = true to gate on the measured cases only"
            ),
        });
    }
    if summary.overall.cases == 0 {
        return failures;
    }
    if let Some(min) = gate.min_pass_rate.map(Rate::get) {
        let actual = summary.overall.pass_rate;
        if actual + 1e-12 < min {
            failures.push(GateFailure {
                model: model.clone(),
                scope: "overall".into(),
                threshold_name: "min_pass_rate".into(),
                threshold: min,
                actual,
                message: format!(
                    "gate failed for model `{model}`: overall pass rate {} is below min_pass_rate {} (short by {:.1} points)",
                    pct(actual),
                    pct(min),
                    (min - actual) * 100.0
                ),
            });
        }
    }
    for (cat, min) in &gate.categories {
        let min = min.get();
        let Some(t) = summary.categories.get(cat) else {
            continue;
        };
        if t.pass_rate + 1e-12 < min {
            failures.push(GateFailure {
                model: model.clone(),
                scope: format!("category {cat}"),
                threshold_name: format!("categories.{cat}"),
                threshold: min,
                actual: t.pass_rate,
                message: format!(
                    "gate failed for model `{model}`: category `{cat}` pass rate {} is below its minimum {} (short by {:.1} points)",
                    pct(t.pass_rate),
                    pct(min),
                    (min - t.pass_rate) * 100.0
                ),
            });
        }
    }
    if let (Some(max_drop), Some(base)) = (gate.max_drop.map(Rate::get), baseline)
        && base.cases > 0
    {
        let drop = base.rate() - summary.overall.pass_rate;
        if drop > max_drop + 1e-12 {
            failures.push(GateFailure {
                model: model.clone(),
                scope: "overall".into(),
                threshold_name: "max_drop".into(),
                threshold: max_drop,
                actual: drop,
                message: format!(
                    "gate failed for model `{model}`: pass rate {} dropped {:.1} points from the accepted baseline {} ({} cases), more than max_drop {:.1} points",
                    pct(summary.overall.pass_rate),
                    drop * 100.0,
                    pct(base.rate()),
                    base.cases,
                    max_drop * 100.0
                ),
            });
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::Totals;

    fn summary(rate: f64, cat_rate: f64) -> Summary {
        let t = |r| Totals {
            cases: 10,
            pass_rate: r,
            ..Totals::default()
        };
        Summary {
            model: "m".into(),
            overall: t(rate),
            categories: [("algos".to_string(), t(cat_rate))].into(),
            uncertainty: None,
            resources: None,
        }
    }

    #[test]
    fn unmeasured_cases_fail_the_gate_unless_allowed() {
        let mut s = summary(1.0, 1.0);
        s.overall.errors = 2;
        let f = evaluate(&s, &GateConfig::default(), None);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].message.contains("2 of 12 cases could not be measured"),
            "{}",
            f[0]
        );
        let allowed = GateConfig {
            allow_errors: true,
            ..GateConfig::default()
        };
        assert!(evaluate(&s, &allowed, None).is_empty());
        s.overall.cases = 0;
        assert_eq!(evaluate(&s, &GateConfig::default(), None).len(), 1);
    }

    #[test]
    fn min_rate_message_names_threshold_and_gap() {
        let gate = GateConfig {
            min_pass_rate: Rate::new(0.9),
            ..GateConfig::default()
        };
        let f = evaluate(&summary(0.8, 0.8), &gate, None);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message
                .contains("80.0% is below min_pass_rate 90.0% (short by 10.0 points)"),
            "{}",
            f[0]
        );
        assert!(evaluate(&summary(0.9, 0.9), &gate, None).is_empty());
    }

    #[test]
    fn category_and_drop() {
        let gate = GateConfig {
            min_pass_rate: None,
            categories: [
                ("algos".to_string(), Rate::new(0.75).unwrap()),
                ("absent".to_string(), Rate::new(1.0).unwrap()),
            ]
            .into(),
            max_drop: Rate::new(0.05),
            allow_errors: false,
        };
        let base = Baseline {
            cases: 10,
            passed: 9,
        };
        let f = evaluate(&summary(0.8, 0.7), &gate, Some(base));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].message.contains("category `algos`"));
        assert!(
            f[1].message
                .contains("dropped 10.0 points from the accepted baseline 90.0%"),
            "{}",
            f[1]
        );
    }
}
