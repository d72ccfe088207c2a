//! Error bars and tests: the Wilson score interval of a proportion, the unbiased pass^k
//! estimator (pass@k lives in [`crate::score`] and is re-exported here), the exact two-sided
//! McNemar test on the cases two runs both measured, the AUROC of a score with DeLong's
//! confidence interval, the exact upper tail of a Poisson-binomial count, and percentiles.
//! Pure functions; no I/O.

use serde::Serialize;

/// The standard normal quantile for a two-sided 95% interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// A closed interval of rates, both ends in 0.0 - 1.0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The 95% Wilson score interval of `successes` out of `n` trials (see [`wilson_z`]).
pub fn wilson(successes: f64, n: usize) -> Interval {
    wilson_z(successes, n, Z_95)
}

/// The Wilson score interval (Wilson 1927) for a binomial proportion with normal quantile `z`:
/// centre `(p + z²/2n) / (1 + z²/n)`, half-width
/// `z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)`, where `p = successes / n`. Unlike the normal
/// (Wald) interval it stays inside 0 - 1 and is not degenerate at 0 or n successes.
/// `successes` may be fractional (a mean pass@1 over cases times the number of cases).
/// With `n = 0` the interval is the whole range 0 - 1.
pub fn wilson_z(successes: f64, n: usize, z: f64) -> Interval {
    if n == 0 {
        return Interval {
            low: 0.0,
            high: 1.0,
        };
    }
    let n = n as f64;
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Interval {
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    }
}

/// Unbiased pass^k estimator: the chance that `k` samples drawn without replacement from `n`
/// samples, `c` of them passing, all pass: C(c, k) / C(n, k), computed as the product
/// `∏_{i<k} (c-i)/(n-i)`. NaN when `k` is 0 or more than `n`.
pub fn pass_hat_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n == 0 || k > n {
        return f64::NAN;
    }
    if c < k {
        return 0.0;
    }
    (0..k).map(|i| (c - i) as f64 / (n - i) as f64).product()
}

/// The outcome of an exact McNemar test on paired pass/fail verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    /// Discordant pairs of one kind (e.g. passed before, fails now).
    pub b: usize,
    /// Discordant pairs of the other kind (e.g. failed before, passes now).
    pub c: usize,
    /// Two-sided p-value.
    pub p: f64,
}

/// Exact two-sided McNemar test: under the null hypothesis each of the `b + c` discordant pairs
/// is `b` or `c` with probability 1/2, so `min(b, c)` is Binomial(b + c, 0.5) and
/// `p = min(1, 2·P(X <= min(b, c)))`. With no discordant pairs `p = 1`.
pub fn mcnemar_exact(b: usize, c: usize) -> McNemar {
    let n = b + c;
    let k = b.min(c);
    // Terms C(n, i) / 2^n in log space, so that large n neither overflows nor underflows.
    let mut log_term = -(n as f64) * std::f64::consts::LN_2;
    let mut cdf = log_term.exp();
    for i in 1..=k {
        log_term += ((n - i + 1) as f64 / i as f64).ln();
        cdf += log_term.exp();
    }
    McNemar {
        b,
        c,
        p: (2.0 * cdf).min(1.0),
    }
}

/// The McNemar test on paired verdicts `(before, now)` of the same cases: `b` counts cases that
/// passed before and fail now, `c` cases that failed before and pass now.
pub fn mcnemar_paired(pairs: impl IntoIterator<Item = (bool, bool)>) -> McNemar {
    let (mut b, mut c) = (0, 0);
    for (before, now) in pairs {
        match (before, now) {
            (true, false) => b += 1,
            (false, true) => c += 1,
            _ => {}
        }
    }
    mcnemar_exact(b, c)
}

/// Area under the ROC curve of `scores` for predicting `positive` (ties count half): the
/// chance that a random positive scores above a random negative. `None` when only one class is
/// present.
#[cfg(test)]
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    auroc_delong(scores, positive).map(|a| a.auroc)
}

/// An AUROC with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Auroc {
    pub auroc: f64,
    pub ci: Interval,
}

/// How [`auroc_delong`]'s interval is computed, for reports.
pub const AUROC_METHOD: &str = "AUROC 95% CI: DeLong's variance (DeLong et al. 1988), normal approximation, clipped to [0, 1]; the whole range when a class has fewer than 2 samples";

/// The AUROC of `scores` for predicting `positive`, with DeLong's 95% interval.
///
/// With `m` positives `X` and `n` negatives `Y`, and `ψ(x, y)` = 1 when x > y, 1/2 on a tie,
/// 0 otherwise: the placement values are `V10(Xi) = mean_j ψ(Xi, Yj)` and
/// `V01(Yj) = mean_i ψ(Xi, Yj)`, the AUROC is the mean of either, and its variance is
/// `S10/m + S01/n` with `S10`, `S01` the sample variances (denominator m-1, n-1) of the
/// placement values. The interval is `AUROC ± z·sqrt(variance)` clipped to 0 - 1; with fewer
/// than 2 samples in a class there is no variance to estimate and it is the whole range.
/// Deterministic (no resampling). `None` when only one class is present.
pub fn auroc_delong(scores: &[f64], positive: &[bool]) -> Option<Auroc> {
    let pick = |want: bool| -> Vec<f64> {
        scores
            .iter()
            .zip(positive)
            .filter(|p| *p.1 == want)
            .map(|p| *p.0)
            .collect()
    };
    let (pos, neg) = (pick(true), pick(false));
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let psi = |x: f64, y: f64| {
        if x > y {
            1.0
        } else if x == y {
            0.5
        } else {
            0.0
        }
    };
    let (m, n) = (pos.len() as f64, neg.len() as f64);
    let v10: Vec<f64> = pos
        .iter()
        .map(|&x| neg.iter().map(|&y| psi(x, y)).sum::<f64>() / n)
        .collect();
    let v01: Vec<f64> = neg
        .iter()
        .map(|&y| pos.iter().map(|&x| psi(x, y)).sum::<f64>() / m)
        .collect();
    let auc = v10.iter().sum::<f64>() / m;
    if pos.len() < 2 || neg.len() < 2 {
        return Some(Auroc {
            auroc: auc,
            ci: Interval {
                low: 0.0,
                high: 1.0,
            },
        });
    }
    let var = |v: &[f64]| v.iter().map(|x| (x - auc).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    let se = (var(&v10) / m + var(&v01) / n).sqrt();
    Some(Auroc {
        auroc: auc,
        ci: Interval {
            low: (auc - Z_95 * se).clamp(0.0, 1.0),
            high: (auc + Z_95 * se).clamp(0.0, 1.0),
        },
    })
}

/// `P(X >= k)` for `X` the number of successes of independent trials with success chances
/// `ps` (a Poisson-binomial count), exactly: the distribution of the count is built one trial
/// at a time (`P_i(j) = P_{i-1}(j)·(1 - p_i) + P_{i-1}(j-1)·p_i`), then its tail summed.
pub fn poisson_binomial_upper_tail(ps: &[f64], k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > ps.len() {
        return 0.0;
    }
    let mut dist = vec![0.0; ps.len() + 1];
    dist[0] = 1.0;
    for (i, &p) in ps.iter().enumerate() {
        let p = p.clamp(0.0, 1.0);
        for j in (1..=i + 1).rev() {
            dist[j] = dist[j] * (1.0 - p) + dist[j - 1] * p;
        }
        dist[0] *= 1.0 - p;
    }
    dist[k..].iter().sum::<f64>().min(1.0)
}

/// The `q`-quantile (0 - 1) of `values` by the nearest-rank method: the smallest value with at
/// least `q·n` of the values at or below it. `None` when there are no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.max(1) - 1])
}

/// Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n == 0 || k > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    // Product form avoids huge binomials.
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_with_delong_interval_matches_a_hand_computation() {
        // Positives X = {0.8, 0.6, 0.4}, negatives Y = {0.5, 0.3}.
        // ψ: 0.8 beats both, 0.6 beats both, 0.4 beats 0.3 only.
        // V10 = {1, 1, 1/2}; AUROC = 2.5/3 = 5/6.
        // V01: Y=0.5 is beaten by 2 of 3 -> 2/3; Y=0.3 by 3 of 3 -> 1 (mean 5/6, as it must).
        // S10 = ((1/6)² + (1/6)² + (1/3)²) / 2 = (6/36) / 2 = 1/12.
        // S01 = ((2/3 - 5/6)² + (1 - 5/6)²) / 1 = 2/36 = 1/18.
        // var = S10/3 + S01/2 = 1/36 + 1/36 = 1/18; se = 0.235702.
        // CI = 0.833333 ± 1.959964·0.235702 = 0.833333 ± 0.461968 -> [0.371365, 1.295301],
        // clipped to [0.371365, 1].
        let a = auroc_delong(
            &[0.8, 0.6, 0.4, 0.5, 0.3],
            &[true, true, true, false, false],
        )
        .unwrap();
        assert!((a.auroc - 5.0 / 6.0).abs() < 1e-12, "{a:?}");
        assert!((a.ci.low - 0.371365).abs() < 1e-5, "{a:?}");
        assert_eq!(a.ci.high, 1.0);
        // Reversed scores mirror it: AUROC 1/6, CI [0, 0.628635].
        let b = auroc_delong(
            &[0.2, 0.4, 0.6, 0.5, 0.7],
            &[true, true, true, false, false],
        )
        .unwrap();
        assert!((b.auroc - 1.0 / 6.0).abs() < 1e-12, "{b:?}");
        assert_eq!(b.ci.low, 0.0);
        assert!((b.ci.high - 0.628635).abs() < 1e-5, "{b:?}");
        // All tied: 1/2, and every placement value is 1/2 so the variance is 0.
        let t = auroc_delong(&[0.5; 4], &[true, true, false, false]).unwrap();
        assert_eq!((t.auroc, t.ci.low, t.ci.high), (0.5, 0.5, 0.5));
        // One sample in a class: no variance estimate, the whole range.
        let one = auroc_delong(&[0.9, 0.1, 0.2], &[true, false, false]).unwrap();
        assert_eq!(one.auroc, 1.0);
        assert_eq!((one.ci.low, one.ci.high), (0.0, 1.0));
        assert!(auroc_delong(&[0.5, 0.6], &[true, true]).is_none());
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
    }

    #[test]
    fn poisson_binomial_tail_small_cases() {
        // p = {0.5, 0.25}: P(0) = 0.5·0.75 = 0.375, P(2) = 0.125, P(1) = 0.5.
        assert!((poisson_binomial_upper_tail(&[0.5, 0.25], 1) - 0.625).abs() < 1e-12);
        assert!((poisson_binomial_upper_tail(&[0.5, 0.25], 2) - 0.125).abs() < 1e-12);
        assert_eq!(poisson_binomial_upper_tail(&[0.5, 0.25], 0), 1.0);
        assert_eq!(poisson_binomial_upper_tail(&[0.5, 0.25], 3), 0.0);
        // Three fair coins, at least 2 heads: (3 + 1) / 8.
        assert!((poisson_binomial_upper_tail(&[0.5; 3], 2) - 0.5).abs() < 1e-12);
        // Equal chances reduce to the binomial: 10 trials at 0.1, at least 3:
        // 1 - (0.9^10 + 10·0.1·0.9^9 + 45·0.01·0.9^8) = 1 - 0.929809 = 0.070191.
        assert!((poisson_binomial_upper_tail(&[0.1; 10], 3) - 0.070191).abs() < 1e-6);
        // Certain trials: p = 1 always succeeds, p = 0 never.
        assert_eq!(poisson_binomial_upper_tail(&[1.0, 0.0], 1), 1.0);
        assert_eq!(poisson_binomial_upper_tail(&[1.0, 0.0], 2), 0.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert_eq!(percentile(&v, 0.95), Some(5.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-3
    }

    #[test]
    fn wilson_matches_hand_computed_intervals() {
        // 0/10: centre = half = (z²/20) / (1 + z²/10) = 0.19207 / 1.38415 = 0.13877.
        let i = wilson(0.0, 10);
        assert!(close(i.low, 0.0) && close(i.high, 0.2775), "{i:?}");
        // 5/10: 0.5 ± 1.95996·sqrt(0.025 + 0.0096037) / 1.38415 = 0.5 ± 0.26341.
        let i = wilson(5.0, 10);
        assert!(close(i.low, 0.2366) && close(i.high, 0.7634), "{i:?}");
        // 94/164: p = 0.57317, centre 0.58488 / 1.02342 = 0.57150, half 0.07660 / 1.02342 = 0.07485.
        let i = wilson(94.0, 164);
        assert!(close(i.low, 0.4966) && close(i.high, 0.6463), "{i:?}");
        // 10/10 mirrors 0/10; no cases: the whole range.
        let i = wilson(10.0, 10);
        assert!(close(i.low, 1.0 - 0.2775) && close(i.high, 1.0), "{i:?}");
        assert_eq!(
            wilson(0.0, 0),
            Interval {
                low: 0.0,
                high: 1.0
            }
        );
    }

    #[test]
    fn mcnemar_exact_p_values() {
        // 2·(C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2·56/1024.
        let m = mcnemar_exact(2, 8);
        assert_eq!((m.b, m.c), (2, 8));
        assert!((m.p - 0.109375).abs() < 1e-12, "{m:?}");
        assert_eq!(mcnemar_exact(0, 0).p, 1.0);
        // Symmetric, and capped at 1: 2·P(X <= 3) for Binomial(6, 0.5) = 2·42/64 > 1.
        assert_eq!(mcnemar_exact(8, 2).p, m.p);
        assert_eq!(mcnemar_exact(3, 3).p, 1.0);
        // 0 vs 6: 2/64.
        assert!((mcnemar_exact(0, 6).p - 0.03125).abs() < 1e-12);
        // Large counts stay finite.
        let big = mcnemar_exact(600, 900).p;
        assert!(big > 0.0 && big < 1e-9, "{big}");
        let paired = mcnemar_paired([(true, false), (true, false), (false, true), (true, true)]);
        assert_eq!((paired.b, paired.c), (2, 1));
        assert_eq!(paired.p, 1.0);
    }

    #[test]
    fn pass_at_k_and_pass_hat_k_small_cases() {
        // pass@2 with 3 of 10 passing: 1 - C(7,2)/C(10,2) = 1 - 21/45.
        assert!((pass_at_k(10, 3, 2) - 24.0 / 45.0).abs() < 1e-12);
        // pass^2 with 3 of 10 passing: C(3,2)/C(10,2) = 3/45.
        assert!((pass_hat_k(10, 3, 2) - 3.0 / 45.0).abs() < 1e-12);
        // pass^1 is the pass rate; pass^k is 1 when all pass, 0 when fewer than k pass.
        assert!((pass_hat_k(4, 1, 1) - 0.25).abs() < 1e-12);
        assert_eq!(pass_hat_k(5, 5, 3), 1.0);
        assert_eq!(pass_hat_k(5, 2, 3), 0.0);
        assert!(pass_hat_k(2, 1, 3).is_nan());
        // pass^3 with 4 of 5: C(4,3)/C(5,3) = 4/10.
        assert!((pass_hat_k(5, 4, 3) - 0.4).abs() < 1e-12);
    }
}
