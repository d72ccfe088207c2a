//! ROC curves of token-uncertainty scores as predictors of failure, drawn as inline SVG: for
//! each model, one curve per score its samples carry (mean NLL, sum NLL, 1 - min probability,
//! 1 - mean probability; higher means "more likely to fail"), computed from each sample's
//! `confidence` in `results-<model>.jsonl`. The area under a curve is the trapezoid sum over
//! the curve's points, where tied scores make one diagonal step; that is exactly
//! [`crate::score::stats::auroc`] (ties count half), which a test checks.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::legend;
use super::page::esc;
use super::results::{ModelResults, num};

/// The uncertainty scores are [`crate::score::uncertainty::Score`]: the same four the summary's AUROCs
/// are computed for.
pub use crate::score::uncertainty::Score;

/// The colour of a score's curve and legend entry.
fn colour(score: Score) -> &'static str {
    match score {
        Score::MeanNll => "#4e79a7",
        Score::SumNll => "#f28e2b",
        Score::MinProb => "#e15759",
        Score::MeanProb => "#59a14f",
    }
}

/// A score of a sample's `confidence` object as results JSON holds it (higher: more likely to
/// fail), if it carries the field.
pub fn score_of(score: Score, confidence: &Json) -> Option<f64> {
    let v = num(confidence, &[score.key()])?;
    let s = match score {
        Score::MeanNll | Score::SumNll => v,
        Score::MinProb | Score::MeanProb => 1.0 - v,
    };
    s.is_finite().then_some(s)
}

/// An ROC curve: (false positive rate, true positive rate) from (0, 0) to (1, 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Roc {
    pub points: Vec<(f64, f64)>,
    /// Area under the curve.
    pub auc: f64,
    pub positives: usize,
    pub negatives: usize,
}

/// The ROC curve of `scores` for predicting `positive`: thresholds from the highest score
/// down, one point per distinct score. `None` when only one class is present.
pub fn roc(scores: &[f64], positive: &[bool]) -> Option<Roc> {
    let mut pairs: Vec<(f64, bool)> = scores
        .iter()
        .copied()
        .zip(positive.iter().copied())
        .collect();
    let p = pairs.iter().filter(|x| x.1).count();
    let n = pairs.len() - p;
    if p == 0 || n == 0 {
        return None;
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut auc = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            if pairs[j].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        let (x0, y0) = *points.last().expect("starts with the origin");
        let (x, y) = (fp as f64 / n as f64, tp as f64 / p as f64);
        auc += (x - x0) * (y + y0) / 2.0;
        points.push((x, y));
        i = j;
    }
    Some(Roc {
        points,
        auc,
        positives: p,
        negatives: n,
    })
}

/// One score's curve for one model, with the summary's confidence interval of its AUROC.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub score: Score,
    pub roc: Roc,
    pub ci: Option<(f64, f64)>,
}

/// The curves of every score that the model's samples carry (positive = the sample failed).
pub fn curves(m: &ModelResults) -> Vec<Curve> {
    let scored: Vec<(&Json, bool)> = m
        .samples()
        .filter(|s| s["confidence"].is_object())
        .map(|s| (&s["confidence"], s["passed"] != true))
        .collect();
    let cis = m.summary_field(&["uncertainty", "scores"]);
    Score::ALL
        .iter()
        .filter_map(|&score| {
            let (xs, ys): (Vec<f64>, Vec<bool>) = scored
                .iter()
                .filter_map(|(c, failed)| Some((score_of(score, c)?, *failed)))
                .unzip();
            let roc = roc(&xs, &ys)?;
            let ci = cis
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["score"] == score.key())
                .and_then(|e| Some((num(e, &["ci", "low"])?, num(e, &["ci", "high"])?)));
            Some(Curve { score, roc, ci })
        })
        .collect()
}

const PLOT: f64 = 220.0;
const LEFT: f64 = 44.0;
const TOP: f64 = 12.0;
const WIDTH: f64 = 330.0;

/// A model's ROC plot as an SVG element, or a sentence saying why there is none.
pub fn plot(m: &ModelResults) -> String {
    let curves = curves(m);
    let has_confidence = m.samples().any(|s| s["confidence"].is_object());
    if curves.is_empty() {
        let why = if has_confidence {
            "every scored sample passed, or every one failed: no ROC curve"
        } else {
            "no token confidence (the source generated nothing): no ROC curve"
        };
        return format!(
            "<div class=\"roc-box\"><h3>{}</h3><p class=\"note\">{why}</p></div>",
            esc(&m.name)
        );
    }
    let (pos, neg) = (curves[0].roc.positives, curves[0].roc.negatives);
    let entries: Vec<(String, String)> = curves
        .iter()
        .map(|c| {
            let ci =
                c.ci.map(|(l, h)| format!(" [{l:.2}, {h:.2}]"))
                    .unwrap_or_default();
            (
                format!("{}: AUROC {:.3}{ci}", c.score.label(), c.roc.auc),
                colour(c.score).to_string(),
            )
        })
        .collect();
    let legend_y = TOP + PLOT + 34.0;
    let (legend_svg, l) = legend::svg(&entries, 8.0, legend_y, WIDTH - 16.0, 11.0);
    let width = WIDTH.max(l.width + 16.0);
    let height = legend_y + l.height + 6.0;
    let mut s = format!(
        "<div class=\"roc-box\"><h3>{}</h3><svg class=\"roc\" data-model=\"{}\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"10\">",
        esc(&m.name),
        esc(&m.name)
    );
    let (x_of, y_of) = (|x: f64| LEFT + x * PLOT, |y: f64| TOP + (1.0 - y) * PLOT);
    let _ = write!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{PLOT}\" height=\"{PLOT}\" fill=\"none\" stroke=\"#999\"/>\
<line class=\"chance\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#aaa\" stroke-dasharray=\"4 3\"/>",
        x_of(0.0),
        y_of(0.0),
        x_of(1.0),
        y_of(1.0)
    );
    for t in [0.0, 0.5, 1.0] {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" dominant-baseline=\"central\">{t}</text>",
            x_of(t),
            TOP + PLOT + 12.0,
            LEFT - 4.0,
            y_of(t)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">false positive rate (passing samples flagged)</text>\
<text transform=\"translate(12 {:.1}) rotate(-90)\" text-anchor=\"middle\">true positive rate (failures caught)</text>",
        LEFT + PLOT / 2.0,
        TOP + PLOT + 25.0,
        TOP + PLOT / 2.0
    );
    for c in &curves {
        let pts: Vec<String> = c
            .roc
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"roc-curve\" data-score=\"{}\" data-auroc=\"{:.6}\" points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
            c.score.key(),
            c.roc.auc,
            pts.join(" "),
            colour(c.score)
        );
    }
    s.push_str(&legend_svg);
    let _ = write!(
        s,
        "</svg><p class=\"note\">{pos} failing and {neg} passing samples; dashed: chance (AUROC 0.5)</p></div>"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::stats::auroc;
    use serde_json::json;

    #[test]
    fn area_matches_score_auroc_with_ties() {
        // A small deterministic generator; scores on a coarse grid so that ties are common.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..50 {
            let n = 2 + round * 3;
            let scores: Vec<f64> = (0..n).map(|_| (next() % 7) as f64 / 7.0).collect();
            let labels: Vec<bool> = (0..n)
                .map(|i| i == 0 || (i > 1 && next() % 3 == 0))
                .collect();
            let r = roc(&scores, &labels).expect("both classes");
            let expected = auroc(&scores, &labels).unwrap();
            assert!((r.auc - expected).abs() < 1e-12, "{} vs {expected}", r.auc);
            assert_eq!(r.points.first(), Some(&(0.0, 0.0)));
            assert_eq!(r.points.last(), Some(&(1.0, 1.0)));
            assert!(
                r.points
                    .windows(2)
                    .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
            );
        }
        assert_eq!(roc(&[0.1, 0.2], &[true, true]), None);
        // Perfect separation: through (0, 1); all tied: the diagonal.
        let perfect = roc(&[0.9, 0.8, 0.1], &[true, true, false]).unwrap();
        assert_eq!(perfect.auc, 1.0);
        assert!(perfect.points.contains(&(0.0, 1.0)));
        let tied = roc(&[0.5, 0.5], &[true, false]).unwrap();
        assert_eq!(tied.points, vec![(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(tied.auc, 0.5);
    }

    #[test]
    fn curves_from_results_with_summary_ci() {
        let sample = |passed: bool, nll: f64, min: f64| json!({"passed": passed, "confidence": {"mean_nll": nll, "min_prob": min, "mean_prob": 1.0 - nll}});
        let m = ModelResults {
            name: "m".into(),
            summary: json!({"summary": {"uncertainty": {"scores": [
                {"score": "mean_nll", "auroc": 0.75, "ci": {"low": 0.4, "high": 0.95}}
            ]}}}),
            cases: vec![json!({"key": "a/1", "error": null, "samples": [
                sample(true, 0.1, 0.9), sample(false, 0.5, 0.2), sample(true, 0.3, 0.1), sample(false, 0.2, 0.5),
                {"passed": true, "confidence": null}
            ]})],
        };
        let c = curves(&m);
        let keys: Vec<&str> = c.iter().map(|c| c.score.key()).collect();
        assert_eq!(
            keys,
            ["mean_nll", "min_prob", "mean_prob"],
            "sum_nll absent"
        );
        assert_eq!(c[0].ci, Some((0.4, 0.95)));
        assert_eq!(c[1].ci, None);
        // Failing 0.5, 0.2 vs passing 0.1, 0.3: 3 of 4 pairs ranked right.
        assert_eq!(c[0].roc.auc, 0.75);
        let svg = plot(&m);
        assert_eq!(svg.matches("class=\"roc-curve\"").count(), 3);
        assert!(svg.contains("mean NLL: AUROC 0.750 [0.40, 0.95]"), "{svg}");
        assert!(svg.contains("class=\"chance\""));
        let bare = ModelResults {
            cases: vec![json!({"key": "a/1", "error": null, "samples": [{"passed": true}]})],
            ..m
        };
        assert!(plot(&bare).contains("no token confidence"));
    }
}
