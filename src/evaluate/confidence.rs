//! Token-level confidence of one generated sample: negative log-likelihood (mean and sum),
//! token probabilities, the low-confidence spans (maximal runs of tokens under a threshold)
//! with the line of the extracted code each falls on, and where the sample's least likely
//! token lies against the line where it failed. Pure: no I/O.
//!
//! Tokens are placed on lines in two steps: each token's pieces, concatenated, are the
//! generated text, so a token sits on the generated line of its first non-whitespace character
//! (a whitespace-only token on the line where it starts); the generated lines are then aligned
//! with the extracted code's lines by a longest common subsequence of their trimmed text
//! (blank lines never match). A generated line the extraction left out (prose, a fence, a
//! pruned test block) has no code line.

use serde::{Deserialize, Serialize};

use crate::engine::TokenTrace;

/// A generated token under this probability is low-confidence unless `[analysis]` says
/// otherwise.
pub const DEFAULT_LOW_PROB_THRESHOLD: f64 = 0.5;

/// Token-level confidence of one generated sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    pub tokens: usize,
    /// Mean negative log-likelihood per token (greedy NLL).
    pub mean_nll: f64,
    /// Negative log-likelihood of the whole generated sequence (the sum over its tokens).
    pub sum_nll: f64,
    pub mean_prob: f64,
    pub min_prob: f64,
    /// Tokens generated with probability below `[analysis] low_prob_threshold`.
    pub low_confidence_tokens: usize,
    /// Maximal runs of such tokens, in generation order.
    pub low_confidence_spans: Vec<Span>,
}

/// A maximal run of consecutive tokens under the low-probability threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// The 1-based line of the extracted code of the run's first token that lies in the code;
    /// `None` when the whole run lies outside it.
    pub line: Option<usize>,
    /// The run's tokens, concatenated.
    pub text: String,
    /// The smallest probability in the run.
    pub min_prob: f64,
}

/// Each token's probability; `None` for a NaN log-probability (fp16 logits can overflow),
/// which says nothing about confidence. Log-probabilities are floored at -100.
fn probabilities(trace: &TokenTrace) -> Vec<Option<f64>> {
    trace
        .logprobs
        .iter()
        .map(|&l| (!l.is_nan()).then(|| (l as f64).max(-100.0).exp()))
        .collect()
}

impl Confidence {
    /// The confidence of a generated sample whose extracted program is `code`; tokens with a
    /// probability under `threshold` are low-confidence. `None` when no token has a usable
    /// log-probability.
    pub fn from_trace(trace: &TokenTrace, code: &str, threshold: f64) -> Option<Confidence> {
        let probs = probabilities(trace);
        let known: Vec<f64> = probs.iter().flatten().copied().collect();
        if known.is_empty() {
            return None;
        }
        let n = known.len() as f64;
        let sum_nll = -known.iter().map(|p| p.ln()).sum::<f64>();
        let lines = token_lines(&trace.pieces, code);
        let mut spans: Vec<Span> = Vec::new();
        let mut open = false;
        for (i, p) in probs.iter().enumerate() {
            let Some(p) = p.filter(|&p| p < threshold) else {
                open = false;
                continue;
            };
            let piece = trace.pieces.get(i).map_or("", String::as_str);
            let line = lines.get(i).copied().flatten();
            match spans.last_mut() {
                Some(span) if open => {
                    span.text.push_str(piece);
                    span.min_prob = span.min_prob.min(p);
                    span.line = span.line.or(line);
                }
                _ => spans.push(Span {
                    line,
                    text: piece.to_string(),
                    min_prob: p,
                }),
            }
            open = true;
        }
        Some(Confidence {
            tokens: known.len(),
            mean_nll: sum_nll / n,
            sum_nll,
            mean_prob: known.iter().sum::<f64>() / n,
            min_prob: known.iter().copied().fold(1.0, f64::min),
            low_confidence_tokens: known.iter().filter(|&&p| p < threshold).count(),
            low_confidence_spans: spans,
        })
    }
}

/// The 1-based line of `code` each token of `pieces` lies on (`None`: outside the code).
pub fn token_lines(pieces: &[String], code: &str) -> Vec<Option<usize>> {
    let generated: String = pieces.concat();
    let map = align_lines(&generated, code);
    let mut line = 0;
    pieces
        .iter()
        .map(|piece| {
            let anchor = piece.find(|c: char| !c.is_whitespace()).unwrap_or(0);
            let at = line + piece[..anchor].matches('\n').count();
            line += piece.matches('\n').count();
            map.get(at).copied().flatten()
        })
        .collect()
}

/// For each line of `generated`, the 1-based line of `code` it became, by a longest common
/// subsequence of the lines' trimmed text (blank lines never match).
fn align_lines(generated: &str, code: &str) -> Vec<Option<usize>> {
    let gen_lines: Vec<&str> = generated.split('\n').map(str::trim).collect();
    let code_lines: Vec<&str> = code.split('\n').map(str::trim).collect();
    let (n, m) = (gen_lines.len(), code_lines.len());
    let same = |i: usize, j: usize| !gen_lines[i].is_empty() && gen_lines[i] == code_lines[j];
    // lcs[i][j]: the longest common subsequence of gen_lines[i..] and code_lines[j..].
    let width = m + 1;
    let mut lcs = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * width + j] = if same(i, j) {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    let mut map = vec![None; n];
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if same(i, j) && lcs[i * width + j] == lcs[(i + 1) * width + j + 1] + 1 {
            map[i] = Some(j + 1);
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * width + j] >= lcs[i * width + j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    map
}

/// A failing sample's least likely generated token of the extracted code, against the line
/// where the sample failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineHit {
    /// The least likely token of the code (the first of equals) lies on the failing line.
    pub hit: bool,
    /// The chance of a hit for a token of the code chosen uniformly at random: the failing
    /// line's tokens over the code's tokens.
    pub chance: f64,
}

/// Whether the least likely token of `code` lies on `failed_line` (1-based), and the chance of
/// that for a random token of the code. `None` when no token with a known probability lies on
/// that line (a line the model did not generate, such as a completion prompt's prefix).
pub fn line_hit(trace: &TokenTrace, code: &str, failed_line: usize) -> Option<LineHit> {
    let probs = probabilities(trace);
    let in_code: Vec<(usize, f64)> = token_lines(&trace.pieces, code)
        .into_iter()
        .zip(&probs)
        .filter_map(|(line, p)| Some((line?, (*p)?)))
        .collect();
    let on_line = in_code.iter().filter(|(l, _)| *l == failed_line).count();
    if on_line == 0 {
        return None;
    }
    let lowest = in_code
        .iter()
        .fold(None::<(usize, f64)>, |best, &(l, p)| match best {
            Some((_, q)) if q <= p => best,
            _ => Some((l, p)),
        })?;
    Some(LineHit {
        hit: lowest.0 == failed_line,
        chance: on_line as f64 / in_code.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace of `(piece, probability)` pairs.
    fn trace(tokens: &[(&str, f64)]) -> TokenTrace {
        TokenTrace {
            ids: (0..tokens.len() as u32).collect(),
            pieces: tokens.iter().map(|t| t.0.to_string()).collect(),
            logprobs: tokens.iter().map(|t| t.1.ln() as f32).collect(),
            top: vec![Vec::new(); tokens.len()],
            kept: Vec::new(),
        }
    }

    /// A fenced reply: prose on line 0, the fence on line 1, code on generated lines 2-4.
    fn reply() -> TokenTrace {
        trace(&[
            ("Here", 0.9),
            (":\n", 0.9),
            ("```python\n", 0.95),
            ("def", 0.99),
            (" f", 0.3),
            ("(x", 0.2),
            ("):\n", 0.9),
            ("    ", 0.99),
            ("return", 0.4),
            (" x", 0.9),
            (" +", 0.1),
            (" 1", 0.8),
            ("\n", 0.9),
            ("```", 0.6),
        ])
    }

    const CODE: &str = "def f(x):\n    return x + 1\n";

    #[test]
    fn tokens_land_on_the_lines_of_the_extracted_code() {
        let lines = token_lines(&reply().pieces, CODE);
        let expected = [
            None,
            None,
            None,
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            // Leading indentation sits on the line it indents.
            Some(2),
            Some(2),
            Some(2),
            Some(2),
            Some(2),
            // A newline token belongs to the line it ends; the closing fence is not code.
            Some(2),
            None,
        ];
        assert_eq!(lines, expected);
        // A prefix the model did not write shifts the lines; a dropped line maps to nothing.
        let with_prefix = format!("import math\n{CODE}");
        assert_eq!(token_lines(&reply().pieces, &with_prefix)[4], Some(2));
        assert_eq!(token_lines(&reply().pieces, "def f(x):\n")[9], None);
    }

    #[test]
    fn confidence_sums_nll_and_finds_low_spans_with_their_lines() {
        let c = Confidence::from_trace(&reply(), CODE, 0.5).unwrap();
        assert_eq!(c.tokens, 14);
        let sum: f64 = [
            0.9, 0.9, 0.95, 0.99, 0.3, 0.2, 0.9, 0.99, 0.4, 0.9, 0.1, 0.8, 0.9, 0.6,
        ]
        .iter()
        .map(|p: &f64| -p.ln())
        .sum();
        assert!((c.sum_nll - sum).abs() < 1e-5, "{c:?}");
        assert!((c.mean_nll - sum / 14.0).abs() < 1e-6, "{c:?}");
        assert!((c.min_prob - 0.1).abs() < 1e-6);
        assert_eq!(c.low_confidence_tokens, 4);
        let spans: Vec<(Option<usize>, &str)> = c
            .low_confidence_spans
            .iter()
            .map(|s| (s.line, s.text.as_str()))
            .collect();
        assert_eq!(
            spans,
            [(Some(1), " f(x"), (Some(2), "return"), (Some(2), " +")]
        );
        assert!((c.low_confidence_spans[0].min_prob - 0.2).abs() < 1e-6);
        // A higher threshold merges runs and counts more tokens; the fence is outside the code.
        let c = Confidence::from_trace(&reply(), CODE, 0.7).unwrap();
        assert_eq!(c.low_confidence_tokens, 5);
        let last = c.low_confidence_spans.last().unwrap();
        assert_eq!((last.line, last.text.as_str()), (None, "```"));
    }

    #[test]
    fn confidence_ignores_nan_logprobs() {
        let mut t = trace(&[("a", 0.6), ("b", 0.2), ("c", 0.3)]);
        t.logprobs[1] = f32::NAN;
        t.logprobs[2] = f32::NEG_INFINITY;
        let c = Confidence::from_trace(&t, "abc", 0.5).unwrap();
        assert_eq!(c.tokens, 2);
        assert!(c.mean_nll.is_finite() && c.mean_nll > 0.5);
        assert!((c.sum_nll - (100.0 - 0.6f64.ln())).abs() < 1e-4, "{c:?}");
        // The NaN token breaks the run: "c" is a span of its own.
        assert_eq!(c.low_confidence_spans.len(), 1);
        assert_eq!(c.low_confidence_spans[0].text, "c");
        let all_nan = TokenTrace {
            logprobs: vec![f32::NAN],
            pieces: vec!["x".into()],
            ..TokenTrace::default()
        };
        assert!(Confidence::from_trace(&all_nan, "x", 0.5).is_none());
    }

    #[test]
    fn the_least_likely_code_token_against_the_failing_line() {
        // The least likely token of the code is " +" (0.1) on line 2, where 6 of the code's 10
        // tokens lie (the prose and fences are not code).
        let hit = line_hit(&reply(), CODE, 2).unwrap();
        assert!(hit.hit);
        assert!((hit.chance - 6.0 / 10.0).abs() < 1e-12, "{hit:?}");
        let miss = line_hit(&reply(), CODE, 1).unwrap();
        assert!(!miss.hit);
        assert!((miss.chance - 4.0 / 10.0).abs() < 1e-12, "{miss:?}");
        // A line no generated token lies on is not a located failure.
        assert_eq!(line_hit(&reply(), CODE, 3), None);
        // The least likely token overall may lie outside the code: it does not count.
        let t = trace(&[("def f", 0.9), (":\n", 0.8), ("  pass", 0.7), ("\n!", 0.01)]);
        let h = line_hit(&t, "def f:\n  pass\n", 2).unwrap();
        assert!(h.hit, "{h:?}");
    }
}
