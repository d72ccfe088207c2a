//! How well token-level uncertainty predicts failure over a model's samples: the AUROC of each
//! confidence score with DeLong's interval, and whether a failing sample's least likely token
//! marks the line where it failed, tested against chance. Pure: no I/O.

use serde::Serialize;

use crate::evaluate::confidence::{self, Confidence};
use crate::evaluate::{CaseOutcome, SampleOutcome};
use crate::score::stats::{self, Interval};

/// How well confidence scores separate passing from failing samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UncertaintyStats {
    /// Samples with a token trace.
    pub samples: usize,
    pub mean_nll_passed: Option<f64>,
    pub mean_nll_failed: Option<f64>,
    /// AUROC of mean NLL as a predictor of failure (0.5 = no signal, 1.0 = perfect).
    pub auroc_mean_nll: Option<f64>,
    /// AUROC of (1 - min token probability) as a predictor of failure.
    pub auroc_min_prob: Option<f64>,
    /// Every score's AUROC with its 95% interval.
    pub scores: Vec<ScoreAuroc>,
    /// How the intervals of `scores` are computed.
    pub auroc_method: &'static str,
    /// Whether failing samples' least likely tokens mark the failing line more often than chance.
    pub low_prob_line: LowProbLine,
}

/// A confidence score, oriented so that higher means "more likely to fail".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Mean negative log-likelihood per token.
    MeanNll,
    /// Negative log-likelihood of the whole sequence.
    SumNll,
    /// 1 - the smallest token probability.
    MinProb,
    /// 1 - the mean token probability.
    MeanProb,
}

impl Score {
    pub const ALL: [Score; 4] = [
        Score::MeanNll,
        Score::SumNll,
        Score::MinProb,
        Score::MeanProb,
    ];

    /// The score of one sample (higher: more likely to fail).
    pub fn of(self, c: &Confidence) -> f64 {
        match self {
            Score::MeanNll => c.mean_nll,
            Score::SumNll => c.sum_nll,
            Score::MinProb => 1.0 - c.min_prob,
            Score::MeanProb => 1.0 - c.mean_prob,
        }
    }

    /// Its name in `summary.uncertainty.scores[].score` (as serde writes it).
    pub fn key(self) -> &'static str {
        match self {
            Score::MeanNll => "mean_nll",
            Score::SumNll => "sum_nll",
            Score::MinProb => "min_prob",
            Score::MeanProb => "mean_prob",
        }
    }

    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            Score::MeanNll => "mean NLL",
            Score::SumNll => "sum NLL",
            Score::MinProb => "1 - min prob",
            Score::MeanProb => "1 - mean prob",
        }
    }
}

/// One score's AUROC for predicting failure, with its 95% interval (both `None` when all
/// samples passed or all failed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreAuroc {
    pub score: Score,
    pub auroc: Option<f64>,
    pub ci: Option<Interval>,
}

/// The method sentence of [`LowProbLine`].
pub const LOW_PROB_LINE_METHOD: &str = "a hit is a failing sample whose least likely token of the extracted code lies on the line where it failed; by chance (a token of the code picked uniformly) sample i hits with p_i = tokens on that line / tokens in the code; p = P(hits >= observed) under hits ~ Poisson-binomial(p_i), exact, one-sided";

/// Do the least likely tokens of failing samples mark the line where they failed more often
/// than chance?
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LowProbLine {
    /// Failing samples with a token trace.
    pub failing_samples: usize,
    /// Those whose failure names a line of the extracted code that generated tokens lie on.
    pub located: usize,
    /// Located samples whose least likely token lies on that line.
    pub hits: usize,
    /// Hits expected by chance: the sum of p_i.
    pub expected_hits: f64,
    /// One-sided exact p-value; `None` when no failure was located.
    pub p_value: Option<f64>,
    pub method: &'static str,
}

impl LowProbLine {
    /// The test over `(hit, chance)` of each located sample, of `failing_samples` in all.
    pub fn test(failing_samples: usize, located: &[confidence::LineHit]) -> LowProbLine {
        let chances: Vec<f64> = located.iter().map(|l| l.chance).collect();
        let hits = located.iter().filter(|l| l.hit).count();
        LowProbLine {
            failing_samples,
            located: located.len(),
            hits,
            // A fold from +0.0: an empty `sum` of floats is -0.0.
            expected_hits: chances.iter().fold(0.0, |a, p| a + p),
            p_value: (!located.is_empty())
                .then(|| stats::poisson_binomial_upper_tail(&chances, hits)),
            method: LOW_PROB_LINE_METHOD,
        }
    }

    /// `least likely token on the failing line: 3 of 7 located failures (chance 1.20; p = 0.041, ...)`.
    pub fn line(&self) -> String {
        let p = self
            .p_value
            .map_or_else(|| "n/a".to_string(), |p| format!("{p:.3}"));
        format!(
            "least likely token on the failing line: {} of {} located failures (chance {:.2}; p = {p}, exact one-sided Poisson-binomial; {} failing samples)",
            self.hits, self.located, self.expected_hits, self.failing_samples
        )
    }
}

impl UncertaintyStats {
    /// Over every sample of `outcomes` that has a token trace; `None` when none has.
    pub fn of<'a>(outcomes: impl Iterator<Item = &'a CaseOutcome>) -> Option<UncertaintyStats> {
        let samples: Vec<(&SampleOutcome, &Confidence)> = outcomes
            .flat_map(|o| o.samples.iter())
            .filter_map(|s| s.confidence.as_ref().map(|c| (s, c)))
            .collect();
        if samples.is_empty() {
            return None;
        }
        let mean = |passed: bool| {
            let xs: Vec<f64> = samples
                .iter()
                .filter(|p| p.0.passed == passed)
                .map(|p| p.1.mean_nll)
                .collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        };
        let failed: Vec<bool> = samples.iter().map(|p| !p.0.passed).collect();
        let scores: Vec<ScoreAuroc> = Score::ALL
            .into_iter()
            .map(|score| {
                let values: Vec<f64> = samples.iter().map(|p| score.of(p.1)).collect();
                let a = stats::auroc_delong(&values, &failed);
                ScoreAuroc {
                    score,
                    auroc: a.map(|a| a.auroc),
                    ci: a.map(|a| a.ci),
                }
            })
            .collect();
        let auroc_of = |s: Score| scores.iter().find(|x| x.score == s).and_then(|x| x.auroc);
        let failing: Vec<&SampleOutcome> =
            samples.iter().map(|p| p.0).filter(|s| !s.passed).collect();
        let located: Vec<confidence::LineHit> = failing
            .iter()
            .filter_map(|s| {
                let line = s.failure.as_ref()?.line?;
                confidence::line_hit(s.tokens.as_ref()?, &s.extraction.code, line)
            })
            .collect();
        Some(UncertaintyStats {
            samples: samples.len(),
            mean_nll_passed: mean(true),
            mean_nll_failed: mean(false),
            auroc_mean_nll: auroc_of(Score::MeanNll),
            auroc_min_prob: auroc_of(Score::MinProb),
            low_prob_line: LowProbLine::test(failing.len(), &located),
            scores,
            auroc_method: stats::AUROC_METHOD,
        })
    }

    /// `AUROC for failure (95% CI): mean NLL 0.712 [0.601, 0.823], ...`.
    pub fn auroc_line(&self) -> String {
        let parts: Vec<String> = self
            .scores
            .iter()
            .map(|s| match (s.auroc, s.ci) {
                (Some(a), Some(ci)) => {
                    format!("{} {a:.3} [{:.3}, {:.3}]", s.score.label(), ci.low, ci.high)
                }
                _ => format!("{} n/a", s.score.label()),
            })
            .collect();
        format!("AUROC for failure (95% CI, DeLong): {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::confidence::LineHit;

    #[test]
    fn a_scores_key_is_its_name_in_the_summary() {
        for score in Score::ALL {
            assert_eq!(serde_json::to_value(score).unwrap(), score.key());
        }
    }
    use crate::engine::TokenTrace;
    use crate::evaluate::failure::{Failure, FailureClass};

    /// A sample of one case whose reply is `code` token by token, with these probabilities,
    /// failing at `failed_line` when given.
    fn outcome(tokens: &[(&str, f64)], passed: bool, failed_line: Option<usize>) -> CaseOutcome {
        let mut o = crate::snapshot::tests::outcome(passed);
        let trace = TokenTrace {
            ids: (0..tokens.len() as u32).collect(),
            pieces: tokens.iter().map(|t| t.0.to_string()).collect(),
            logprobs: tokens.iter().map(|t| t.1.ln() as f32).collect(),
            top: vec![Vec::new(); tokens.len()],
            kept: Vec::new(),
        };
        let s = &mut o.samples[0];
        s.extraction.code = trace.pieces.concat();
        s.confidence = Confidence::from_trace(&trace, &s.extraction.code, 0.5);
        s.tokens = Some(trace);
        s.failure = (!passed).then(|| Failure {
            class: FailureClass::Exception("ZeroDivisionError".into()),
            test: None,
            line: failed_line,
            source: None,
        });
        o
    }

    #[test]
    fn scores_and_the_low_probability_line_over_samples() {
        let line1 = [("def f():\n", 0.9), ("  return", 0.8), (" 1/0", 0.1)];
        let line2 = [("def f():\n", 0.2), ("  return", 0.9), (" 1", 0.9)];
        let outcomes = [
            // Fails on line 2, where its least likely token is: a hit with chance 2/3.
            outcome(&line1, false, Some(2)),
            // Fails on line 2, its least likely token is on line 1: a miss with chance 2/3.
            outcome(&line2, false, Some(2)),
            // Fails with no line: failing but not located.
            outcome(&line1, false, None),
            outcome(&line2, true, None),
            outcome(&[("x", 0.99)], true, None),
        ];
        let u = UncertaintyStats::of(outcomes.iter()).unwrap();
        assert_eq!(u.samples, 5);
        assert_eq!(u.scores.len(), 4);
        assert_eq!(u.scores[0].score, Score::MeanNll);
        assert_eq!(u.auroc_mean_nll, u.scores[0].auroc);
        // 1 - min prob: failing {0.9, 0.8, 0.9} against passing {0.8, 0.01}: 5.5 of 6 pairs.
        let min = u.scores[2];
        assert!((min.auroc.unwrap() - 5.5 / 6.0).abs() < 1e-9, "{min:?}");
        let l = &u.low_prob_line;
        assert_eq!((l.failing_samples, l.located, l.hits), (3, 2, 1));
        assert!((l.expected_hits - 4.0 / 3.0).abs() < 1e-9, "{l:?}");
        // P(at least 1 hit of 2 at 2/3 each) = 1 - (1/3)² = 8/9.
        assert!((l.p_value.unwrap() - 8.0 / 9.0).abs() < 1e-9, "{l:?}");
        assert!(
            u.auroc_line().contains("1 - min prob 0.917 ["),
            "{}",
            u.auroc_line()
        );
    }

    #[test]
    fn the_line_test_counts_hits_against_their_chances() {
        let hit = |hit, chance| LineHit { hit, chance };
        let t = LowProbLine::test(5, &[hit(true, 0.1), hit(true, 0.2), hit(false, 0.5)]);
        assert_eq!((t.failing_samples, t.located, t.hits), (5, 3, 2));
        assert!((t.expected_hits - 0.8).abs() < 1e-12);
        // P(X >= 2) = all three (0.1·0.2·0.5) + exactly the first two (0.1·0.2·0.5)
        // + first and third (0.1·0.8·0.5) + second and third (0.9·0.2·0.5)
        // = 0.01 + 0.01 + 0.04 + 0.09 = 0.15.
        assert!((t.p_value.unwrap() - 0.15).abs() < 1e-12, "{t:?}");
        assert_eq!(
            t.line(),
            "least likely token on the failing line: 2 of 3 located failures (chance 0.80; p = 0.150, exact one-sided Poisson-binomial; 5 failing samples)"
        );
        let none = LowProbLine::test(4, &[]);
        assert_eq!((none.located, none.hits, none.p_value), (0, 0, None));
        assert!(
            none.line().contains("(chance 0.00; p = n/a,"),
            "{}",
            none.line()
        );
    }
}
