//! Near-tie resolution toward the accepted output. Greedy decoding flips where two tokens are
//! nearly tied and kernels round differently (another instruction set, another GPU): the same
//! model, prompt and settings then write another text. A row with a [`Guide`] is
//! teacher-forced through the ordinary decode loop: at each step the accepted token is kept
//! when it is within `tolerance` nats of this machine's top choice, and from the first step
//! where it is not the row decodes freely.
//!
//! Forcing happens in the decode loop itself, not in a separate prefill over the accepted
//! tokens: on one machine a prefill and incremental decoding differ by up to 0.25 nats at some
//! steps (docs/reproducibility.md), while the decode loop gives the accepted tokens back exactly
//! on the machine that accepted them. The rule ([`follow_step`]) is one function for the host
//! path and the device head: it sees the pick and the gap, wherever they were computed.

use super::sampling::{Pick, Rng};

/// The accepted tokens a row is checked against, and where it is in them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Guide {
    pub tokens: Vec<u32>,
    pub tolerance: f32,
}

/// What the rule decided at one step of a guided row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mark {
    /// The accepted token was kept though this machine's top choice was `gap` nats ahead.
    Kept { gap: f32 },
    /// The accepted token was `gap` nats (at least) below the top choice, more than the
    /// tolerance: the row takes this machine's choice and decodes freely from here.
    Left { gap: f32 },
}

/// How far below this machine's top choice the accepted token is, in nats of log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Gap {
    Exact(f32),
    /// The accepted token is not among the alternatives the device head returned: it is at
    /// least this far below (never kept: the rule keeps only what it can measure).
    AtLeast(f32),
}

impl Gap {
    /// The gap from a row's logits (the host path): log-probabilities share the normaliser,
    /// so their gap is the logits' gap.
    pub fn from_logits(logits: &[f32], top: usize, accepted: usize) -> Gap {
        match (logits.get(top), logits.get(accepted)) {
            (Some(t), Some(a)) => Gap::Exact(t - a),
            _ => Gap::AtLeast(f32::INFINITY),
        }
    }

    /// The gap from the alternatives the device head returned (token, log-probability), best
    /// first.
    pub fn from_top(top: &[(usize, f32)], accepted: usize) -> Gap {
        let Some(&(_, best)) = top.first() else {
            return Gap::AtLeast(f32::INFINITY);
        };
        match top.iter().find(|(t, _)| *t == accepted) {
            Some(&(_, lp)) => Gap::Exact(best - lp),
            None => Gap::AtLeast(top.last().map_or(f32::INFINITY, |&(_, lp)| best - lp)),
        }
    }
}

/// The rule, one step: keep `accepted` when it is this machine's pick, or when the gap to
/// the pick is at most `tolerance`; otherwise take the pick and say by how much it won.
pub(crate) fn follow_step(
    pick: Pick,
    accepted: u32,
    gap: Gap,
    tolerance: f32,
) -> (Pick, Option<Mark>) {
    let accepted = accepted as usize;
    if pick.token == accepted {
        return (pick, None);
    }
    match gap {
        Gap::Exact(gap) if gap <= tolerance => {
            let logprob = pick.logprob - gap;
            let kept = Pick {
                token: accepted,
                logprob,
                top: pick.top,
            };
            (kept, Some(Mark::Kept { gap }))
        }
        Gap::Exact(gap) | Gap::AtLeast(gap) => (pick, Some(Mark::Left { gap })),
    }
}

/// Uniform noise added to every logit, a fixed function of (seed, position): for tests that
/// show which perturbations the tolerance absorbs and which it does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitNoise {
    /// Each logit moves by a value drawn uniformly from [-amplitude, amplitude].
    pub amplitude: f32,
    pub seed: u64,
}

impl LogitNoise {
    /// Add this noise to the logits that predict the token after absolute position `position`.
    pub(crate) fn apply(&self, logits: &mut [f32], position: usize) {
        let mut rng = Rng::new(self.seed ^ (position as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let scale = 2.0 * self.amplitude as f64;
        for l in logits.iter_mut() {
            *l += ((rng.next_f64() - 0.5) * scale) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(top: &[(usize, f32)]) -> Pick {
        Pick {
            token: top[0].0,
            logprob: top[0].1,
            top: top.to_vec(),
        }
    }

    #[test]
    fn a_near_tie_keeps_the_accepted_token_and_says_by_how_much() {
        let logits = [0.0, 5.0, 4.9, 1.0];
        let p = pick(&[(1, -0.5), (2, -0.6)]);
        let (kept, mark) = follow_step(p.clone(), 2, Gap::from_logits(&logits, 1, 2), 0.25);
        assert_eq!(kept.token, 2);
        assert!((kept.logprob + 0.6).abs() < 1e-5, "{}", kept.logprob);
        assert!(matches!(mark, Some(Mark::Kept { gap }) if (gap - 0.1).abs() < 1e-5));
        // The device head's alternatives give the same decision.
        let (kept, mark) = follow_step(p.clone(), 2, Gap::from_top(&p.top, 2), 0.25);
        assert_eq!(kept.token, 2);
        assert!(matches!(mark, Some(Mark::Kept { gap }) if (gap - 0.1).abs() < 1e-5));
        // This machine's own choice is no decision at all.
        assert_eq!(follow_step(p.clone(), 1, Gap::Exact(0.0), 0.25).1, None);
    }

    #[test]
    fn a_shift_above_the_tolerance_is_never_masked() {
        let logits = [0.0, 5.0, 4.7, 1.0];
        let p = pick(&[(1, -0.5), (2, -0.8)]);
        let (taken, mark) = follow_step(p.clone(), 2, Gap::from_logits(&logits, 1, 2), 0.25);
        assert_eq!(taken.token, 1);
        assert!(matches!(mark, Some(Mark::Left { gap }) if (gap - 0.3).abs() < 1e-5));
        // Not among the head's alternatives: left, with the gap it is at least.
        let (taken, mark) = follow_step(p.clone(), 3, Gap::from_top(&p.top, 3), 10.0);
        assert_eq!(taken.token, 1);
        assert!(matches!(mark, Some(Mark::Left { gap }) if (gap - 0.3).abs() < 1e-5));
        // A token the vocabulary does not have, and NaN logits, are never kept.
        assert!(matches!(
            follow_step(p.clone(), 9, Gap::from_logits(&logits, 1, 9), 0.25).1,
            Some(Mark::Left { .. })
        ));
        assert!(matches!(
            follow_step(p, 0, Gap::from_logits(&[f32::NAN, 1.0], 1, 0), 0.25).1,
            Some(Mark::Left { .. })
        ));
    }

    #[test]
    fn noise_is_a_fixed_function_of_seed_and_position() {
        let noise = LogitNoise {
            amplitude: 0.05,
            seed: 7,
        };
        let (mut a, mut b, mut c) = (vec![0.0f32; 64], vec![0.0f32; 64], vec![0.0f32; 64]);
        noise.apply(&mut a, 3);
        noise.apply(&mut b, 3);
        noise.apply(&mut c, 4);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|x| x.abs() <= 0.05));
        assert!(a.iter().any(|x| x.abs() > 0.01));
    }
}
