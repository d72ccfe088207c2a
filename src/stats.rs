//! Error bars and paired comparisons for pass rates: the Wilson score interval of a
//! proportion, the unbiased pass^k estimator (pass@k lives in [`crate::score`] and is
//! re-exported here), and the exact two-sided McNemar test on the cases two runs both measured.
//! Pure functions; no I/O.

use serde::Serialize;

pub use crate::score::pass_at_k;

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

#[cfg(test)]
mod tests {
    use super::*;

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
