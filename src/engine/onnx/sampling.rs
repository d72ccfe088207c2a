//! Token choice: greedy or seeded sampling (temperature, top-k, top-p), and log-probabilities.

use super::simd;

/// A small, fast, seedable generator (xoshiro256**), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        Rng {
            s: [
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
            ],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
}

impl Sampler {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Natural-log softmax of `logits` (computed in f64 for stability), as f32.
#[cfg(test)]
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

/// Index of the largest value; ties go to the lowest index.
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// The `k` largest entries as (index, value), largest first, ties by lower index.
pub fn top_k(xs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let k = k.min(xs.len());
    if k == 0 {
        return Vec::new();
    }
    // Blocks whose largest value cannot enter a full list are passed over whole: a vocabulary
    // has a handful of contenders, and the per-value comparison was most of a row's pick.
    const BLOCK: usize = 64;
    let vector = simd::supported();
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    for (b, block) in xs.chunks(BLOCK).enumerate() {
        // SAFETY: `simd::supported()` said this CPU has AVX2 and FMA.
        if vector && best.len() == k && unsafe { simd::max(block) } <= best[k - 1].1 {
            continue;
        }
        for (j, &x) in block.iter().enumerate() {
            if best.len() == k && x <= best[k - 1].1 {
                continue;
            }
            let pos = best.partition_point(|&(_, v)| v >= x);
            best.insert(pos, (b * BLOCK + j, x));
            best.truncate(k);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        let xa: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    #[test]
    fn top_k_orders_and_breaks_ties() {
        assert_eq!(
            top_k(&[1.0, 3.0, 3.0, 2.0], 3),
            vec![(1, 3.0), (2, 3.0), (3, 2.0)]
        );
    }

    #[test]
    fn top_k_one_is_greedy() {
        let s = Sampler {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 1,
        };
        let mut r = Rng::new(1);
        for _ in 0..10 {
            assert_eq!(pick(&[0.0, 5.0, 4.9], &s, &mut r, 0, 1).token, 1);
        }
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        let s: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
}

/// What one row's step produced: the chosen token, its log-probability and the top
/// alternatives (token, log-probability).
#[derive(Debug, Clone)]
pub struct Pick {
    pub token: usize,
    pub logprob: f32,
    pub top: Vec<(usize, f32)>,
}

/// Fixed number of chunks for the log-sum-exp, so the result does not depend on thread count.
const CHUNKS: usize = 8;

/// `sum(e^(x - max))`: eight lanes at a time where the CPU has AVX2 (the same numbers on every
/// such CPU), else one value at a time.
fn sum_exp(xs: &[f32], max: f32) -> f64 {
    if simd::supported() {
        // SAFETY: `simd::supported()` said this CPU has AVX2 and FMA.
        unsafe { simd::sum_exp(xs, max) }
    } else {
        xs.iter().map(|&l| (l - max).exp() as f64).sum()
    }
}

/// log(sum(exp(logits))), split in a fixed number of chunks (run on `threads` threads when
/// the vocabulary is large), combined in chunk order: deterministic whatever `threads` is.
pub fn log_sum_exp(logits: &[f32], max: f32, threads: usize) -> f64 {
    let size = logits.len().div_ceil(CHUNKS).max(1);
    let chunks: Vec<&[f32]> = logits.chunks(size).collect();
    let threads = threads.min(chunks.len()).max(1);
    let sums: Vec<f64> = if threads > 1 && logits.len() >= 1 << 15 {
        let per = chunks.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .chunks(per)
                .map(|group| {
                    s.spawn(move || group.iter().map(|c| sum_exp(c, max)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("log-sum-exp thread"))
                .collect()
        })
    } else {
        chunks.iter().map(|c| sum_exp(c, max)).collect()
    };
    max as f64 + sums.iter().sum::<f64>().ln()
}

/// Choose the next token and compute its log-probability and the `k` best alternatives, in
/// two passes over the logits (no allocation of the full distribution).
pub fn pick(logits: &[f32], sampler: &Sampler, rng: &mut Rng, k: usize, threads: usize) -> Pick {
    let best = argmax(logits);
    let max = logits[best];
    let lse = log_sum_exp(logits, max, threads);
    let token = if sampler.is_greedy() {
        best
    } else {
        choose_from(logits, max, sampler, rng)
    };
    let lp = |i: usize| (logits[i] as f64 - lse) as f32;
    Pick {
        token,
        logprob: lp(token),
        top: top_k(logits, k)
            .into_iter()
            .map(|(i, _)| (i, lp(i)))
            .collect(),
    }
}

/// One row whose next token is to be chosen on the host.
pub struct RowChoice<'a> {
    pub row: usize,
    pub rng: &'a mut Rng,
    pub sampler: &'a Sampler,
    pub top_logprobs: usize,
}

/// Choose the next token of every row in `rows` from its logits (`row_at(row)`), rows in
/// parallel on up to `threads` threads; a single row splits its log-sum-exp over them instead.
/// Log-sum-exp and top-k over a large vocabulary cost more than a GPU decode step when done one
/// row at a time. The result does not depend on `threads` (see [`log_sum_exp`]).
pub fn pick_rows<'l>(
    row_at: &(dyn Fn(usize) -> &'l [f32] + Sync),
    rows: &mut [RowChoice<'_>],
    threads: usize,
) -> Vec<(usize, Pick)> {
    let workers = threads.min(rows.len()).max(1);
    let inner = if rows.len() == 1 { threads } else { 1 };
    let per = rows.len().div_ceil(workers).max(1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = rows
            .chunks_mut(per)
            .map(|chunk| {
                sc.spawn(move || {
                    chunk
                        .iter_mut()
                        .map(|c| {
                            let p = pick(row_at(c.row), c.sampler, c.rng, c.top_logprobs, inner);
                            (c.row, p)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sampling thread"))
            .collect()
    })
}

/// Sampling without sorting the whole vocabulary: tokens whose tempered probability is below
/// e^-40 of the best cannot be drawn in practice and are left out before sorting.
fn choose_from(logits: &[f32], max: f32, sampler: &Sampler, rng: &mut Rng) -> usize {
    let t = sampler.temperature as f64;
    let mut cand: Vec<(usize, f32)> = if sampler.top_k > 0 {
        top_k(logits, sampler.top_k)
    } else {
        let floor = max as f64 - 40.0 * t;
        let mut c: Vec<(usize, f32)> = logits
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, l)| l as f64 >= floor)
            .collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        c
    };
    let mut probs: Vec<f64> = cand
        .iter()
        .map(|&(_, l)| ((l as f64 - max as f64) / t).exp())
        .collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if sampler.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= sampler.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
        probs.truncate(keep);
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
    }
    let r = rng.next_f64();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return cand[i].0;
        }
    }
    cand[cand.len() - 1].0
}

#[cfg(test)]
mod pick_tests {
    use super::*;

    #[test]
    fn pick_agrees_with_log_softmax_and_is_thread_independent() {
        let logits: Vec<f32> = (0..70_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 97.0)
            .collect();
        let s = Sampler {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        };
        let a = pick(&logits, &s, &mut Rng::new(1), 3, 1);
        let b = pick(&logits, &s, &mut Rng::new(1), 3, 8);
        let lp = log_softmax(&logits);
        assert_eq!(a.token, argmax(&logits));
        assert!((a.logprob - lp[a.token]).abs() < 1e-4);
        assert_eq!(a.logprob.to_bits(), b.logprob.to_bits());
        assert_eq!(a.top.len(), 3);
    }
}
