//! How a run's greedy generations followed their accepted outputs: how many steps the accepted
//! output decided (this machine preferred another token, within the tolerance), the largest such
//! gap, and which samples left their accepted output (a gap above the tolerance) and where. The
//! summary, Markdown and HTML reports print it, so a reader sees what near-tie resolution did.

use serde::{Deserialize, Serialize};

use crate::evaluate::CaseOutcome;
use crate::outcome::Followed;

/// A sample that left its accepted output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Departure {
    pub case: String,
    /// 0-based generated token where this machine's top choice was too far ahead.
    pub step: usize,
    pub gap: f32,
}

/// What near-tie resolution did over one profile's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Following {
    /// Samples checked against an accepted output.
    pub checked: usize,
    /// Steps where the accepted token was kept over this machine's top choice.
    pub kept_steps: usize,
    /// Cases with at least one such step.
    pub kept_cases: usize,
    /// The largest gap at a kept step (nats of log-probability).
    pub largest_gap: f32,
    pub tolerance: f32,
    /// Samples that left their accepted output, by case.
    pub departures: Vec<Departure>,
}

impl Following {
    /// `None` when no sample was checked against an accepted output.
    pub fn of<'a>(outcomes: impl Iterator<Item = &'a CaseOutcome>) -> Option<Following> {
        let mut f = Following {
            checked: 0,
            kept_steps: 0,
            kept_cases: 0,
            largest_gap: 0.0,
            tolerance: 0.0,
            departures: Vec::new(),
        };
        for outcome in outcomes {
            let mut kept_here = 0;
            for sample in &outcome.samples {
                let Some(followed) = sample.followed else {
                    continue;
                };
                f.checked += 1;
                let kept = sample.tokens.as_ref().map_or(&[][..], |t| &t.kept[..]);
                kept_here += kept.len();
                for k in kept {
                    f.largest_gap = f.largest_gap.max(k.gap);
                }
                match followed {
                    Followed::Kept { tolerance } => f.tolerance = tolerance,
                    Followed::Left {
                        step,
                        gap,
                        tolerance,
                    } => {
                        f.tolerance = tolerance;
                        f.departures.push(Departure {
                            case: outcome.key.clone(),
                            step,
                            gap,
                        });
                    }
                }
            }
            f.kept_steps += kept_here;
            f.kept_cases += usize::from(kept_here > 0);
        }
        (f.checked > 0).then_some(f)
    }

    /// `accepted outputs: 36 samples checked; 9 steps in 6 cases kept the accepted output
    /// (largest gap 0.031, tolerance 0.25); 1 left it: a/b at token 17 (gap 0.412)`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "accepted outputs: {} {} checked; {} {} in {} {} kept the accepted output (largest gap {:.3}, tolerance {})",
            self.checked,
            plural(self.checked, "sample", "samples"),
            self.kept_steps,
            plural(self.kept_steps, "step", "steps"),
            self.kept_cases,
            plural(self.kept_cases, "case", "cases"),
            self.largest_gap,
            self.tolerance
        );
        if !self.departures.is_empty() {
            let which: Vec<String> = self
                .departures
                .iter()
                .map(|d| format!("{} at token {} (gap {:.3})", d.case, d.step + 1, d.gap))
                .collect();
            line.push_str(&format!(
                "; {} left it: {}",
                self.departures.len(),
                which.join(", ")
            ));
        }
        line
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{KeptStep, TokenTrace};

    fn sample_of(followed: Option<Followed>, gaps: &[f32]) -> CaseOutcome {
        let mut o = crate::snapshot::tests::outcome(true);
        o.samples[0].followed = followed;
        o.samples[0].tokens = Some(TokenTrace {
            kept: gaps
                .iter()
                .enumerate()
                .map(|(step, &gap)| KeptStep { step, gap })
                .collect(),
            ..TokenTrace::default()
        });
        o
    }

    #[test]
    fn counts_kept_steps_cases_and_departures() {
        let tolerance = 0.25;
        let mut left = sample_of(
            Some(Followed::Left {
                step: 16,
                gap: 0.4125,
                tolerance,
            }),
            &[0.01],
        );
        left.key = "a/b".into();
        let outcomes = [
            sample_of(Some(Followed::Kept { tolerance }), &[0.02, 0.031]),
            sample_of(Some(Followed::Kept { tolerance }), &[]),
            left,
            sample_of(None, &[]),
        ];
        let f = Following::of(outcomes.iter()).unwrap();
        assert_eq!((f.checked, f.kept_steps, f.kept_cases), (3, 3, 2));
        assert_eq!(
            f.line(),
            "accepted outputs: 3 samples checked; 3 steps in 2 cases kept the accepted output (largest gap 0.031, tolerance 0.25); 1 left it: a/b at token 17 (gap 0.412)"
        );
        assert_eq!(Following::of([sample_of(None, &[])].iter()), None);
    }
}
