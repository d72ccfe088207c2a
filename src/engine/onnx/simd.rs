//! Vector pieces of the CPU engine (the attention kernel, the host's log-sum-exp and top-k):
//! AVX2 + FMA only, so that every x86-64 CPU that runs them (AVX2 or AVX-512 alike) computes
//! the same numbers in the same order. Callers check [`supported`] first; each function is
//! `unsafe` for that reason and its pointer contract alone.

// Each `unsafe fn` here is unsafe for its pointer contract alone, stated in its `# Safety`;
// its body is one unsafe region.
#![allow(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU runs the kernel (AVX2 and FMA).
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[j] = scale * dot(q, k[j])` for the `rows` key rows at `k` (each `head` floats apart,
/// `head` a multiple of 8). Rows go four at a time; a last group of fewer repeats its first
/// row, so every score is the same sum of the same products whatever the row count.
///
/// # Safety
/// The CPU has AVX2 and FMA; `q` holds `head` floats, `k` `rows * head`, `out` `rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn scores(
    q: &[f32],
    k: *const f32,
    rows: usize,
    head: usize,
    scale: f32,
    out: &mut [f32],
) {
    debug_assert!(head.is_multiple_of(8) && q.len() >= head && out.len() >= rows);
    let mut j = 0;
    while j < rows {
        let r = |i: usize| if j + i < rows { j + i } else { j };
        let (k0, k1, k2, k3) = (
            k.add(r(0) * head),
            k.add(r(1) * head),
            k.add(r(2) * head),
            k.add(r(3) * head),
        );
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let mut d = 0;
        while d < head {
            let qv = _mm256_loadu_ps(q.as_ptr().add(d));
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0.add(d)), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1.add(d)), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2.add(d)), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3.add(d)), a3);
            d += 8;
        }
        let t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        let sums = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        let mut four = [0f32; 4];
        _mm_storeu_ps(four.as_mut_ptr(), _mm_mul_ps(sums, _mm_set1_ps(scale)));
        for (i, s) in four.iter().enumerate().take(rows - j) {
            out[j + i] = *s;
        }
        j += 4;
    }
}

/// `e^x` for eight lanes, `x <= 0` (softmax after the maximum is taken off): Cephes' range
/// reduction (x = n ln 2 + r) and its degree-5 polynomial, within 2 ulp; below -87 it is 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: __m256) -> __m256 {
    let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0), _CMP_LT_OQ);
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_andnot_ps(tiny, _mm256_mul_ps(p, pow2))
}

/// Softmax of `x` in place: the maximum taken off, [`exp8`] of each, then times one over the
/// sum. A tail of fewer than eight is padded with the maximum's lane value and dropped.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let m = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
        _mm256_storeu_ps(c.as_mut_ptr(), e);
        sum = _mm256_add_ps(sum, e);
    }
    let tail = chunks.into_remainder();
    let mut lanes = [f32::NEG_INFINITY; 8];
    lanes[..tail.len()].copy_from_slice(tail);
    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(lanes.as_ptr()), m));
    _mm256_storeu_ps(lanes.as_mut_ptr(), e);
    tail.copy_from_slice(&lanes[..tail.len()]);
    sum = _mm256_add_ps(sum, e);
    let mut s = [0f32; 8];
    _mm256_storeu_ps(s.as_mut_ptr(), sum);
    let total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    let inv = _mm256_set1_ps(1.0 / total);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        _mm256_storeu_ps(
            c.as_mut_ptr(),
            _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), inv),
        );
    }
    for v in chunks.into_remainder() {
        *v *= 1.0 / total;
    }
}

/// `sum(e^(x - max))` over `xs` (every `x <= max`), eight lanes of [`exp8`] summed in f32 over
/// blocks of 256 and the blocks in f64, in order; a tail of fewer than eight is summed alone.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_exp(xs: &[f32], max: f32) -> f64 {
    let m = _mm256_set1_ps(max);
    let mut total = 0f64;
    let mut blocks = xs.chunks_exact(256);
    let lanes = |v: __m256| {
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), v);
        (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))) as f64
    };
    let block_sum = |block: &[f32]| {
        let mut acc = _mm256_setzero_ps();
        for c in block.chunks_exact(8) {
            acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m)));
        }
        acc
    };
    for block in &mut blocks {
        total += lanes(block_sum(block));
    }
    let rest = blocks.remainder();
    let whole = rest.len() / 8 * 8;
    total += lanes(block_sum(&rest[..whole]));
    let mut tail = [f32::NEG_INFINITY; 8];
    tail[..rest.len() - whole].copy_from_slice(&rest[whole..]);
    total + lanes(exp8(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), m)))
}

/// The largest of `xs` (`NEG_INFINITY` when empty; NaNs are passed over).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn max(xs: &[f32]) -> f32 {
    let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        // `max_ps(x, acc)` returns `acc` where `x` is NaN.
        acc = _mm256_max_ps(_mm256_loadu_ps(c.as_ptr()), acc);
    }
    let mut l = [0f32; 8];
    _mm256_storeu_ps(l.as_mut_ptr(), acc);
    l.iter()
        .chain(chunks.remainder())
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `out = sum_j p[j] * v[j]` over the value rows at `v` (each `head` floats apart, `head` a
/// multiple of 8), 64 columns at a time with the sums in registers.
///
/// # Safety
/// The CPU has AVX2 and FMA; `v` holds `p.len() * head` floats, `out` `head`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn weighted_sum(p: &[f32], v: *const f32, head: usize, out: &mut [f32]) {
    let mut col = 0;
    while col < head {
        match (head - col).min(64) / 8 {
            8 => columns::<8>(p, v.add(col), head, &mut out[col..]),
            7 => columns::<7>(p, v.add(col), head, &mut out[col..]),
            6 => columns::<6>(p, v.add(col), head, &mut out[col..]),
            5 => columns::<5>(p, v.add(col), head, &mut out[col..]),
            4 => columns::<4>(p, v.add(col), head, &mut out[col..]),
            3 => columns::<3>(p, v.add(col), head, &mut out[col..]),
            2 => columns::<2>(p, v.add(col), head, &mut out[col..]),
            _ => columns::<1>(p, v.add(col), head, &mut out[col..]),
        }
        col += 64;
    }
}

/// [`weighted_sum`] over `8 * N` columns starting at `v`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns<const N: usize>(p: &[f32], v: *const f32, head: usize, out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); N];
    for (j, &w) in p.iter().enumerate() {
        let w = _mm256_set1_ps(w);
        let row = v.add(j * head);
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(8 * i)), *a);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *a);
    }
}

// Elsewhere [`supported`] is false, so nothing calls these; they keep the kernel compiling.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn scores(_: &[f32], _: *const f32, _: usize, _: usize, _: f32, _: &mut [f32]) {
    unreachable!("the attention kernel runs only where `supported()` says so")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn softmax(_: &mut [f32]) {
    unreachable!("the attention kernel runs only where `supported()` says so")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn sum_exp(_: &[f32], _: f32) -> f64 {
    unreachable!("the vector code runs only where `supported()` says so")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn max(_: &[f32]) -> f32 {
    unreachable!("the vector code runs only where `supported()` says so")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn weighted_sum(_: &[f32], _: *const f32, _: usize, _: &mut [f32]) {
    unreachable!("the attention kernel runs only where `supported()` says so")
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_and_zero_far_below() {
        if !supported() {
            return;
        }
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let lanes = [
                x,
                x * 0.5,
                x * 0.25,
                x * 0.125,
                x * 1e-3,
                x * 1e-6,
                0.0,
                x * 0.9,
            ];
            let mut got = [0f32; 8];
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(lanes.as_ptr()))) };
            for (l, g) in lanes.iter().zip(got) {
                let want = (*l as f64).exp();
                worst = worst.max(((g as f64) - want).abs() / want);
            }
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "largest relative error {worst}");
        let mut got = [1f32; 8];
        let far = [
            -88.0,
            -100.0,
            f32::NEG_INFINITY,
            -1e30,
            -87.5,
            -200.0,
            -90.0,
            -1e9,
        ];
        unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(far.as_ptr()))) };
        assert_eq!(got, [0.0; 8]);
    }

    #[test]
    fn sum_exp_and_max_match_their_definitions_at_every_length() {
        if !supported() {
            return;
        }
        for n in [0, 1, 7, 8, 9, 255, 256, 257, 600, 151_936] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 2_654_435_761usize) % 10_007) as f32 / 300.0 - 30.0)
                .collect();
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(unsafe { max(&xs) }, want_max, "n = {n}");
            let m = if n == 0 { 0.0 } else { want_max };
            let want: f64 = xs.iter().map(|x| ((*x - m) as f64).exp()).sum();
            let got = unsafe { sum_exp(&xs, m) };
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1e-30),
                "n = {n}: {got} vs {want}"
            );
        }
        let nan = [1.0, f32::NAN, 3.0, 2.0, f32::NAN, 0.0, -1.0, 2.5, 9.0];
        assert_eq!(unsafe { max(&nan) }, 9.0);
    }

    #[test]
    fn softmax_matches_its_definition_at_every_tail_length() {
        if !supported() {
            return;
        }
        for n in 1..=19 {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 1.7).collect();
            let mut got = x.clone();
            unsafe { softmax(&mut got) };
            let max = x.iter().copied().fold(f32::MIN, f32::max) as f64;
            let sum: f64 = x.iter().map(|v| (*v as f64 - max).exp()).sum();
            for (g, v) in got.iter().zip(&x) {
                let want = (*v as f64 - max).exp() / sum;
                assert!((*g as f64 - want).abs() < 1e-6, "n = {n}: {g} vs {want}");
            }
        }
    }
}
