//! Turn pass rates into a CI verdict: every case measured (a case that could not be measured
//! is not a measured 0), minimum pass rate overall and per category, and the largest allowed
//! drop against the accepted baseline (the verdicts in accepted snapshots), optionally only
//! when an exact McNemar test on the paired verdicts finds the drop significant.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{GateConfig, Rate};
use crate::score::Summary;
use crate::score::stats::{self, McNemar};

/// The accepted pass rate over the same cases that ran, and the paired verdicts of the cases
/// measured in both runs, reduced to their discordant counts (all McNemar needs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Cases that ran and have an accepted snapshot.
    pub cases: usize,
    pub passed: usize,
    /// Cases measured now that passed in the accepted snapshot and fail now.
    pub lost: usize,
    /// Cases measured now that failed in the accepted snapshot and pass now.
    pub gained: usize,
}

impl Baseline {
    pub fn rate(&self) -> f64 {
        if self.cases == 0 {
            0.0
        } else {
            self.passed as f64 / self.cases as f64
        }
    }

    /// Exact McNemar test of the accepted verdicts against now (`b` = lost, `c` = gained).
    pub fn mcnemar(&self) -> McNemar {
        stats::mcnemar_exact(self.lost, self.gained)
    }
}

/// The gate's verdict: the thresholds not met, which rule let a drop larger than `max_drop`
/// pass (a line for the summary), if one did, and every rule that was checked and held (so a
/// passing summary says what decided it).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub failures: Vec<GateFailure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
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

/// A p-value with three decimals, or in scientific notation when smaller than that shows.
fn p_value(p: f64) -> String {
    if p >= 0.001 || p == 0.0 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// "McNemar p = 0.109 on 8 lost vs 2 gained discordant cases".
fn mcnemar_text(m: &McNemar) -> String {
    format!(
        "McNemar p = {} on {} lost vs {} gained discordant cases",
        p_value(m.p),
        m.b,
        m.c
    )
}

/// Check a model's summary against its gate. Categories that did not run are not judged.
#[cfg(test)]
pub fn evaluate(
    summary: &Summary,
    gate: &GateConfig,
    baseline: Option<Baseline>,
) -> Vec<GateFailure> {
    judge(summary, gate, baseline).failures
}

/// [`evaluate`], with the line that says when `significance` let a large drop pass.
pub fn judge(summary: &Summary, gate: &GateConfig, baseline: Option<Baseline>) -> Verdict {
    let mut v = Verdict {
        failures: Vec::new(),
        note: None,
        held: Vec::new(),
    };
    judge_errors(summary, gate, &mut v);
    if summary.overall.cases == 0 {
        return v;
    }
    judge_pass_rates(summary, gate, &mut v);
    if let Some(base) = baseline {
        judge_drop(summary, gate, base, &mut v);
    }
    v
}

/// Unmeasured cases: held where `allow_errors`, else a failure.
fn judge_errors(summary: &Summary, gate: &GateConfig, v: &mut Verdict) {
    let model = &summary.model;
    let errors = summary.overall.errors;
    if errors > 0 && gate.allow_errors {
        v.held.push(format!(
            "{errors} unmeasured case(s) allowed by allow_errors"
        ));
    }
    if errors > 0 && !gate.allow_errors {
        let total = errors + summary.overall.cases;
        v.failures.push(GateFailure {
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
}

/// The overall `min_pass_rate`, then each category's minimum.
fn judge_pass_rates(summary: &Summary, gate: &GateConfig, v: &mut Verdict) {
    let model = &summary.model;
    if let Some(min) = gate.min_pass_rate.map(Rate::get) {
        let actual = summary.overall.pass_rate;
        if actual + 1e-12 >= min {
            v.held.push(format!(
                "pass rate {} >= min_pass_rate {}",
                pct(actual),
                pct(min)
            ));
        }
        if actual + 1e-12 < min {
            v.failures.push(GateFailure {
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
        if t.pass_rate + 1e-12 >= min {
            v.held
                .push(format!("`{cat}` {} >= {}", pct(t.pass_rate), pct(min)));
        }
        if t.pass_rate + 1e-12 < min {
            v.failures.push(GateFailure {
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
}

/// The drop from the accepted baseline against `max_drop` (and, with `significance`, whether
/// a larger drop is significant).
fn judge_drop(summary: &Summary, gate: &GateConfig, base: Baseline, v: &mut Verdict) {
    let model = &summary.model;
    if let Some(max_drop) = gate.max_drop.map(Rate::get)
        && base.cases > 0
    {
        let drop = base.rate() - summary.overall.pass_rate;
        if drop <= max_drop + 1e-12 {
            v.held.push(format!(
                "{} against the accepted baseline {} ({} cases) is within max_drop {:.1} points",
                match drop > 1e-12 {
                    true => format!("a drop of {:.1} points", drop * 100.0),
                    false => "no drop".to_string(),
                },
                pct(base.rate()),
                base.cases,
                max_drop * 100.0
            ));
        }
        let test = gate.significance.map(|alpha| (alpha.get(), base.mcnemar()));
        let significant = test.is_none_or(|(alpha, m)| m.p < alpha);
        if drop > max_drop + 1e-12 && !significant {
            let (alpha, m) = test.expect("only a test can find a drop insignificant");
            v.note = Some(format!(
                "passed (drop of {:.1} points > max_drop {:.1}, but not significant: {}, significance {alpha})",
                drop * 100.0,
                max_drop * 100.0,
                mcnemar_text(&m)
            ));
        } else if drop > max_drop + 1e-12 {
            let why = match test {
                Some((alpha, m)) => {
                    format!(
                        ", and significant: {}, below significance {alpha}",
                        mcnemar_text(&m)
                    )
                }
                None => String::new(),
            };
            v.failures.push(GateFailure {
                model: model.clone(),
                scope: "overall".into(),
                threshold_name: "max_drop".into(),
                threshold: max_drop,
                actual: drop,
                message: format!(
                    "gate failed for model `{model}`: pass rate {} dropped {:.1} points from the accepted baseline {} ({} cases), more than max_drop {:.1} points{why}",
                    pct(summary.overall.pass_rate),
                    drop * 100.0,
                    pct(base.rate()),
                    base.cases,
                    max_drop * 100.0
                ),
            });
        }
    }
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
            profile: None,
            timing: None,
            overall: t(rate),
            categories: [("algos".to_string(), t(cat_rate))].into(),
            uncertainty: None,
            diversity: None,
            following: None,
            trials: None,
            config_order: None,
            failures: Default::default(),
            resources: None,
            devices: Vec::new(),
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
            significance: None,
            allow_errors: false,
        };
        let base = Baseline {
            cases: 10,
            passed: 9,
            ..Baseline::default()
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

    fn drop_gate(significance: f64) -> GateConfig {
        GateConfig {
            max_drop: Rate::new(0.03),
            significance: Rate::new(significance),
            ..GateConfig::default()
        }
    }

    #[test]
    fn insignificant_drop_passes_and_says_why() {
        // 60% -> 54% of 100 cases: 8 passed before and fail now, 2 the reverse.
        let base = Baseline {
            cases: 100,
            passed: 60,
            lost: 8,
            gained: 2,
        };
        let v = judge(&summary(0.54, 1.0), &drop_gate(0.05), Some(base));
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert_eq!(
            v.note.as_deref(),
            Some(
                "passed (drop of 6.0 points > max_drop 3.0, but not significant: McNemar p = 0.109 on 8 lost vs 2 gained discordant cases, significance 0.05)"
            )
        );
        // The same drop without `significance` fails, as before.
        let f = evaluate(
            &summary(0.54, 1.0),
            &GateConfig {
                significance: None,
                ..drop_gate(0.05)
            },
            Some(base),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(!f[0].message.contains("McNemar"), "{}", f[0]);
        // A drop within max_drop needs no test and no note; the rule that held is named.
        let v = judge(&summary(0.58, 1.0), &drop_gate(0.05), Some(base));
        assert!(v.failures.is_empty() && v.note.is_none(), "{v:?}");
        assert!(
            v.held
                .iter()
                .any(|h| h.starts_with("a drop of 2.0 points against the accepted baseline 60.0% (100 cases) is within max_drop 3.0 points")),
            "{v:?}"
        );
    }

    #[test]
    fn significant_drop_fails_and_names_the_test() {
        let base = Baseline {
            cases: 100,
            passed: 60,
            lost: 9,
            gained: 0,
        };
        let v = judge(&summary(0.51, 1.0), &drop_gate(0.05), Some(base));
        assert_eq!(v.note, None);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        assert_eq!(v.failures[0].threshold_name, "max_drop");
        // 2 / 2^9 = 0.0039.
        assert!(
            v.failures[0].message.ends_with(
                "more than max_drop 3.0 points, and significant: McNemar p = 0.004 on 9 lost vs 0 gained discordant cases, below significance 0.05"
            ),
            "{}",
            v.failures[0]
        );
        // The same counts at a stricter level pass.
        let v = judge(&summary(0.51, 1.0), &drop_gate(0.001), Some(base));
        assert!(v.failures.is_empty() && v.note.is_some(), "{v:?}");
    }
}
