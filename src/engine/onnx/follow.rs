//! Near-tie resolution toward the accepted output. Greedy decoding flips where two tokens are
//! nearly tied and kernels round differently (int8 activations on AVX2 and on AVX-512 VNNI,
//! another GPU, another batch): the same model, prompt and settings then write another text.
//! A job with a [`Guide`] is first checked in one teacher-forced pass over its prompt and the
//! accepted tokens: every accepted token within `tolerance` nats of this machine's top choice
//! is kept ([`Preset`]), and decoding goes on freely from the first that is not. The pass is a
//! prefill, so a suite whose outputs are kept costs prefill time, not decode time.
//!
//! The rule ([`decide`]) is a pure function of one step's logits, the same on every provider:
//! the pass copies its logits to the host whatever the device.

use std::borrow::Cow;

use ort::value::Tensor;

use super::decode::{SeqJob, step_tensors};
use super::error::EngineError;
use super::kv::{GrowingKv, KvCache, SharedKv, StepInputs};
use super::model::Model;
use super::sampling::{self, Pick, Rng};
use super::tensor::Float;

/// The accepted tokens a job is checked against.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Guide {
    pub tokens: Vec<u32>,
    pub tolerance: f32,
}

/// A step decided before decoding: the accepted token with this machine's probabilities.
#[derive(Debug, Clone)]
pub(crate) struct Preset {
    pub pick: Pick,
    /// `Some(gap)` when this machine's top choice was another token, `gap` nats ahead.
    pub kept_over: Option<f32>,
}

/// What the teacher-forced pass found.
#[derive(Debug, Clone, Default)]
pub(crate) struct FollowOutcome {
    /// The accepted tokens kept, in order.
    pub presets: Vec<Preset>,
    /// The first step whose accepted token was too far below the top choice, and the gap.
    pub left: Option<(usize, f32)>,
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

/// One step's decision: keep `accepted` when this machine's top choice is at most `tolerance`
/// nats of log-probability above it. `Ok` carries the kept pick, `Err` the gap.
pub(crate) fn decide(
    logits: &[f32],
    accepted: u32,
    tolerance: f32,
    top_logprobs: usize,
    threads: usize,
) -> Result<Preset, f32> {
    let accepted = accepted as usize;
    let best = sampling::argmax(logits);
    let Some(&chosen) = logits.get(accepted) else {
        return Err(f32::INFINITY); // a token the vocabulary does not have
    };
    // Log-probabilities share the normaliser: their gap is the logits' gap.
    let gap = logits[best] - chosen;
    if gap > tolerance || gap.is_nan() {
        return Err(gap);
    }
    let lse = sampling::log_sum_exp(logits, logits[best], threads);
    let lp = |i: usize| (logits[i] as f64 - lse) as f32;
    Ok(Preset {
        pick: Pick {
            token: accepted,
            logprob: lp(accepted),
            top: sampling::top_k(logits, top_logprobs)
                .into_iter()
                .map(|(i, _)| (i, lp(i)))
                .collect(),
        },
        kept_over: (best != accepted).then_some(gap),
    })
}

impl Model {
    /// Check `guide`'s tokens after `job`'s prompt in one teacher-forced pass.
    pub(crate) fn follow(
        &mut self,
        job: &SeqJob,
        guide: &Guide,
    ) -> Result<FollowOutcome, EngineError> {
        let n = guide.tokens.len();
        if n == 0 {
            return Ok(FollowOutcome::default());
        }
        let p = job.prompt_ids.len();
        let mut ids = job.prompt_ids.clone();
        ids.extend_from_slice(&guide.tokens[..n - 1]);
        let len = ids.len();
        let forced = SeqJob {
            prompt_ids: ids,
            ..job.clone()
        };
        let _turn = self.gate.clone();
        let _turn = _turn.step(0, false);
        let mut kv: Box<dyn KvCache> = if self.shares_kv() {
            Box::new(SharedKv::new(self, 1, len + 1)?)
        } else {
            Box::new(GrowingKv::new(self, 1)?)
        };
        let width = kv.mask_width(0, len);
        let (ids, mask, positions, q) = step_tensors(
            self.graph.layout,
            0,
            std::slice::from_ref(&forced),
            &[len],
            &[],
            self.tokens.pad,
            width,
        );
        // The positions whose logits predict each accepted token.
        let wanted: Vec<i64> = (0..n).map(|i| (p - 1 + i) as i64).collect();
        let logits_positions = match self.graph.logits_positions {
            true => Some(Tensor::<i64>::from_array(([1, n], wanted)).map_err(EngineError::run)?),
            false => None,
        };
        let inputs = StepInputs {
            step: 0,
            ids: Tensor::<i64>::from_array(([1, q], ids)).map_err(EngineError::run)?,
            mask: Tensor::<i64>::from_array(([1, width], mask)).map_err(EngineError::run)?,
            positions,
            shape: [1, q],
            vocab: 0,
            logits_on_device: false,
            logits_positions,
        };
        let logits_type = self.graph.logits_type;
        let with_positions = self.graph.logits_positions;
        let (threads, noise) = (self.sampling_threads, self.logit_noise);
        let logits = kv.run(self, inputs)?;
        let shape: Vec<i64> = logits.shape().to_vec();
        let rows = if with_positions { n } else { len };
        if shape.len() != 3 || shape[1] as usize != rows {
            return Err(EngineError::Run(format!(
                "the accepted-output pass got logits of shape {shape:?}, expected [1, {rows}, vocab]"
            )));
        }
        let vocab = shape[2] as usize;
        let data: Cow<'_, [f32]> = match logits_type {
            Float::F32 => Cow::Borrowed(
                logits
                    .try_extract_tensor::<f32>()
                    .map_err(EngineError::run)?
                    .1,
            ),
            Float::F16 => Cow::Owned(
                logits
                    .try_extract_tensor::<half::f16>()
                    .map_err(EngineError::run)?
                    .1
                    .iter()
                    .map(|x| x.to_f32())
                    .collect(),
            ),
        };
        let mut out = FollowOutcome::default();
        let mut noisy = Vec::new();
        for (i, &token) in guide.tokens.iter().enumerate() {
            let at = if with_positions { i } else { p - 1 + i };
            let mut row = &data[at * vocab..(at + 1) * vocab];
            if let Some(noise) = noise {
                noisy.clear();
                noisy.extend_from_slice(row);
                noise.apply(&mut noisy, p - 1 + i);
                row = &noisy;
            }
            match decide(row, token, guide.tolerance, job.top_logprobs, threads) {
                Ok(preset) => out.presets.push(preset),
                Err(gap) => {
                    out.left = Some((i, gap));
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_tie_keeps_the_accepted_token_and_says_by_how_much() {
        // Token 1 is the top choice; token 2 is 0.1 behind.
        let logits = [0.0, 5.0, 4.9, 1.0];
        let kept = decide(&logits, 2, 0.25, 2, 1).unwrap();
        assert_eq!(kept.pick.token, 2);
        assert!((kept.kept_over.unwrap() - 0.1).abs() < 1e-5);
        assert_eq!(
            kept.pick.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // The top choice itself is kept with no gap.
        assert_eq!(decide(&logits, 1, 0.25, 2, 1).unwrap().kept_over, None);
    }

    #[test]
    fn a_shift_above_the_tolerance_is_never_masked() {
        let logits = [0.0, 5.0, 4.7, 1.0];
        let gap = decide(&logits, 2, 0.25, 2, 1).unwrap_err();
        assert!((gap - 0.3).abs() < 1e-5, "{gap}");
        assert!(decide(&logits, 0, 0.25, 2, 1).is_err());
        assert_eq!(decide(&logits, 9, 0.25, 2, 1).unwrap_err(), f32::INFINITY);
        // NaN logits are never a near tie.
        assert!(decide(&[f32::NAN, 1.0], 0, 0.25, 1, 1).is_err());
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
