//! Grouped-query attention over a KV cache, as ONNX Runtime's `GroupQueryAttention` defines it
//! (com.microsoft, float32, CPU): rotary embedding of the new queries and keys, the new keys
//! and values written into the cache after each row's past, and causal (optionally windowed)
//! softmax attention of every query head over its group's cache. Each group of query heads
//! reads its key and value rows once per query, from cache-friendly chunks, where ONNX
//! Runtime's kernel runs one packed matrix product per head.

// Each `unsafe fn` here is unsafe for its pointer contract alone, stated in its `# Safety`;
// its body is one unsafe region.
#![allow(unsafe_op_in_unsafe_fn)]

use super::super::simd;

/// The fixed shape of one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shape {
    pub batch: usize,
    /// New tokens per row (S).
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Floats per head (a multiple of 8).
    pub head: usize,
    /// Positions the past buffer holds (its dimension 2; 0 without one).
    pub past_capacity: usize,
    /// Positions the present buffer holds.
    pub present_capacity: usize,
    /// `total_sequence_length == seq`: every row starts at position 0.
    pub first_prompt: bool,
    /// Softmax scale of the dot products.
    pub scale: f32,
    /// Keep only the last `window + 1` positions of each query's causal range.
    pub window: Option<usize>,
    pub rotary: Option<Rotary>,
}

/// Rotary position embedding of the first `dim` floats of each query and key head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rotary {
    pub dim: usize,
    /// Rotate pairs (2i, 2i+1) instead of (i, i + dim/2).
    pub interleaved: bool,
}

/// Where one of q, k, v lives in its input: token (b, s) starts at `(b * seq + s) * stride`,
/// head `h` at `offset + h * head` after that.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source {
    pub data: *const f32,
    pub stride: usize,
    pub offset: usize,
}

/// One call's buffers. `present_*` may be the same memory as `past_*` (ONNX Runtime's shared
/// buffer); otherwise each row's past is copied over first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buffers {
    pub q: Source,
    pub k: Source,
    pub v: Source,
    pub past_key: *const f32,
    pub past_value: *const f32,
    pub present_key: *mut f32,
    pub present_value: *mut f32,
    pub output: *mut f32,
    /// [max positions, rotary dim / 2] each (null without rotary).
    pub cos: *const f32,
    pub sin: *const f32,
}

// SAFETY: the pointers are only dereferenced inside `Attention`'s methods, whose callers
// guarantee the buffers outlive the call and that parallel items touch disjoint outputs.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

/// A call's inputs that are not buffers: per row, the index of its last valid position.
pub(crate) struct Attention<'a> {
    pub shape: Shape,
    pub buffers: Buffers,
    pub seqlens_k: &'a [i32],
    /// Rows of the rotary tables.
    pub rotary_positions: usize,
}

/// What the inputs say that the kernel cannot do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ShapeError {
    #[error("row {row} has {total} positions, fewer than the {seq} new tokens of this call")]
    ShortRow {
        row: usize,
        total: usize,
        seq: usize,
    },
    #[error("row {row} needs {needed} positions, more than the {capacity} its cache holds")]
    CacheFull {
        row: usize,
        needed: usize,
        capacity: usize,
    },
    #[error("position {position} is past the rotary tables' {rows} rows")]
    RotaryTable { position: usize, rows: usize },
}

/// Queries per parallel work item of [`Attention::attend`].
pub(crate) const QUERIES_PER_ITEM: usize = 16;

impl Attention<'_> {
    /// Row `b`'s past positions before this call's tokens.
    fn past(&self, b: usize) -> usize {
        if self.shape.first_prompt {
            0
        } else {
            (self.seqlens_k[b] as usize + 1).saturating_sub(self.shape.seq)
        }
    }

    /// Check every row against the buffers before anything is written.
    pub fn check(&self) -> Result<(), ShapeError> {
        let s = &self.shape;
        for b in 0..s.batch {
            let total = self.seqlens_k[b].max(-1) as i64 + 1;
            let total = total as usize;
            if !s.first_prompt && total < s.seq {
                return Err(ShapeError::ShortRow {
                    row: b,
                    total,
                    seq: s.seq,
                });
            }
            let needed = self.past(b) + s.seq;
            if needed > s.present_capacity || (self.past(b) > s.past_capacity && !self.shared()) {
                return Err(ShapeError::CacheFull {
                    row: b,
                    needed,
                    capacity: s.present_capacity,
                });
            }
            if s.rotary.is_some() && needed > self.rotary_positions {
                return Err(ShapeError::RotaryTable {
                    position: needed - 1,
                    rows: self.rotary_positions,
                });
            }
        }
        Ok(())
    }

    /// Whether present and past are one buffer.
    fn shared(&self) -> bool {
        std::ptr::eq(self.buffers.past_key, self.buffers.present_key.cast_const())
    }

    /// The parallel items of [`Attention::write_cache`]: one per (row, KV head).
    pub fn cache_items(&self) -> usize {
        self.shape.batch * self.shape.kv_heads
    }

    /// Item `item` of the cache update: row `b`, KV head `g`: the past copied over (when
    /// present is its own buffer, the rest zeroed as ONNX Runtime leaves it), then the new
    /// keys rotated and the new values written after the past.
    ///
    /// # Safety
    /// [`Attention::check`] passed and the buffers are as [`Buffers`] says; items may run in
    /// parallel (each writes its own row and head).
    pub unsafe fn write_cache(&self, item: usize) {
        let s = &self.shape;
        let (b, g) = (item / s.kv_heads, item % s.kv_heads);
        let past = self.past(b);
        let chunk = s.present_capacity * s.head;
        let key = self.buffers.present_key.add((b * s.kv_heads + g) * chunk);
        let value = self.buffers.present_value.add((b * s.kv_heads + g) * chunk);
        if !self.shared() {
            std::ptr::write_bytes(key, 0, chunk);
            std::ptr::write_bytes(value, 0, chunk);
            if !self.buffers.past_key.is_null() {
                let from = (b * s.kv_heads + g) * s.past_capacity * s.head;
                std::ptr::copy_nonoverlapping(self.buffers.past_key.add(from), key, past * s.head);
                std::ptr::copy_nonoverlapping(
                    self.buffers.past_value.add(from),
                    value,
                    past * s.head,
                );
            }
        }
        for t in 0..s.seq {
            let at = (past + t) * s.head;
            let k = self.token(self.buffers.k, b, t, g);
            let v = self.token(self.buffers.v, b, t, g);
            let key_row = std::slice::from_raw_parts_mut(key.add(at), s.head);
            self.rotate(k, past + t, key_row);
            std::ptr::copy_nonoverlapping(v.as_ptr(), value.add(at), s.head);
        }
    }

    /// The `head` floats of head `h` of token (b, t) in `src`.
    unsafe fn token(&self, src: Source, b: usize, t: usize, h: usize) -> &[f32] {
        let at = (b * self.shape.seq + t) * src.stride + src.offset + h * self.shape.head;
        std::slice::from_raw_parts(src.data.add(at), self.shape.head)
    }

    /// `x` rotated to `position` (copied when there is no rotary embedding) into `out`.
    unsafe fn rotate(&self, x: &[f32], position: usize, out: &mut [f32]) {
        out.copy_from_slice(x);
        let Some(r) = self.shape.rotary else { return };
        let half = r.dim / 2;
        let cos = std::slice::from_raw_parts(self.buffers.cos.add(position * half), half);
        let sin = std::slice::from_raw_parts(self.buffers.sin.add(position * half), half);
        for i in 0..half {
            let (a, b) = if r.interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            out[a] = x[a] * cos[i] - x[b] * sin[i];
            out[b] = x[b] * cos[i] + x[a] * sin[i];
        }
    }

    /// The parallel items of [`Attention::attend`]: (row, KV head, block of queries).
    pub fn attend_items(&self) -> usize {
        self.cache_items() * self.shape.seq.div_ceil(QUERIES_PER_ITEM)
    }

    /// Item `item` of the attention: every query head of one KV group, for one block of one
    /// row's new tokens, over the cache [`Attention::write_cache`] filled.
    ///
    /// # Safety
    /// Every cache item has run; [`simd::supported`]; items may run in parallel (each writes
    /// its own output heads).
    pub unsafe fn attend(&self, item: usize) {
        let s = &self.shape;
        let blocks = s.seq.div_ceil(QUERIES_PER_ITEM);
        let (b, g, block) = (
            item / (s.kv_heads * blocks),
            item / blocks % s.kv_heads,
            item % blocks,
        );
        let past = self.past(b);
        let chunk = (b * s.kv_heads + g) * s.present_capacity * s.head;
        let (key, value) = (
            self.buffers.present_key.add(chunk),
            self.buffers.present_value.add(chunk),
        );
        let group = s.heads / s.kv_heads;
        let mut q = vec![0f32; s.head];
        let mut probs = vec![0f32; past + s.seq];
        let last = ((block + 1) * QUERIES_PER_ITEM).min(s.seq);
        for t in block * QUERIES_PER_ITEM..last {
            let end = past + t + 1;
            let start = match s.window {
                Some(w) if end > w + 1 => end - w - 1,
                _ => 0,
            };
            for h in g * group..(g + 1) * group {
                self.rotate(self.token(self.buffers.q, b, t, h), past + t, &mut q);
                let p = &mut probs[..end - start];
                simd::scores(&q, key.add(start * s.head), end - start, s.head, s.scale, p);
                simd::softmax(p);
                let out = (b * s.seq + t) * s.heads * s.head + h * s.head;
                let out = std::slice::from_raw_parts_mut(self.buffers.output.add(out), s.head);
                simd::weighted_sum(p, value.add(start * s.head), s.head, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), values in [-1, 1).
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// One case: the shape, each row's positions after the call (`seqlens_k + 1`).
    struct Case {
        shape: Shape,
        totals: Vec<usize>,
        packed: bool,
        shared: bool,
    }

    /// The same computation, written plainly in f64 from the operator's definition.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        c: &Case,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        past_k: &[f32],
        past_v: &[f32],
        cos: &[f32],
        sin: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = &c.shape;
        let (hd, cap) = (s.head, s.present_capacity);
        let mut key = vec![0f64; s.batch * s.kv_heads * cap * hd];
        let mut value = key.clone();
        let rot = |x: &[f32], pos: usize| -> Vec<f64> {
            let mut out: Vec<f64> = x.iter().map(|v| *v as f64).collect();
            if let Some(r) = s.rotary {
                let half = r.dim / 2;
                for i in 0..half {
                    let (a, b) = if r.interleaved {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + half)
                    };
                    let (cs, sn) = (cos[pos * half + i] as f64, sin[pos * half + i] as f64);
                    out[a] = x[a] as f64 * cs - x[b] as f64 * sn;
                    out[b] = x[b] as f64 * cs + x[a] as f64 * sn;
                }
            }
            out
        };
        let (qw, kw) = if c.packed {
            (
                (s.heads + 2 * s.kv_heads) * hd,
                (s.heads + 2 * s.kv_heads) * hd,
            )
        } else {
            (s.heads * hd, s.kv_heads * hd)
        };
        let (ko, vo) = if c.packed {
            (s.heads * hd, (s.heads + s.kv_heads) * hd)
        } else {
            (0, 0)
        };
        let mut out = vec![0f64; s.batch * s.seq * s.heads * hd];
        for b in 0..s.batch {
            let past = if s.first_prompt {
                0
            } else {
                c.totals[b] - s.seq
            };
            for g in 0..s.kv_heads {
                let base = (b * s.kv_heads + g) * cap * hd;
                let pbase = (b * s.kv_heads + g) * s.past_capacity * hd;
                for i in 0..past * hd {
                    key[base + i] = past_k[pbase + i] as f64;
                    value[base + i] = past_v[pbase + i] as f64;
                }
                for t in 0..s.seq {
                    let at = (b * s.seq + t) * kw;
                    let kk = if c.packed {
                        &q[at + ko + g * hd..][..hd]
                    } else {
                        &k[at + g * hd..][..hd]
                    };
                    let vv = if c.packed {
                        &q[at + vo + g * hd..][..hd]
                    } else {
                        &v[at + g * hd..][..hd]
                    };
                    let r = rot(kk, past + t);
                    for d in 0..hd {
                        key[base + (past + t) * hd + d] = r[d];
                        value[base + (past + t) * hd + d] = vv[d] as f64;
                    }
                }
            }
            for t in 0..s.seq {
                if s.first_prompt && t >= c.totals[b] {
                    continue;
                }
                let end = past + t + 1;
                let start = match s.window {
                    Some(w) if end > w + 1 => end - w - 1,
                    _ => 0,
                };
                for h in 0..s.heads {
                    let g = h / (s.heads / s.kv_heads);
                    let base = (b * s.kv_heads + g) * cap * hd;
                    let qq = rot(&q[(b * s.seq + t) * qw + h * hd..][..hd], past + t);
                    let scores: Vec<f64> = (start..end)
                        .map(|j| {
                            (0..hd).map(|d| qq[d] * key[base + j * hd + d]).sum::<f64>()
                                * s.scale as f64
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        out[((b * s.seq + t) * s.heads + h) * hd + d] = (start..end)
                            .zip(&e)
                            .map(|(j, p)| p / sum * value[base + j * hd + d])
                            .sum();
                    }
                }
            }
        }
        (out, key, value)
    }

    fn run(c: Case) {
        if !simd::supported() {
            eprintln!("skipped: this CPU lacks AVX2/FMA");
            return;
        }
        let s = c.shape;
        let mut noise = Noise(0x9e3779b97f4a7c15 ^ (s.batch * 131 + s.seq * 17 + s.head) as u64);
        let hd = s.head;
        let (qw, kvw) = if c.packed {
            ((s.heads + 2 * s.kv_heads) * hd, 0)
        } else {
            (s.heads * hd, s.kv_heads * hd)
        };
        let q = noise.vec(s.batch * s.seq * qw);
        let k = noise.vec(s.batch * s.seq * kvw.max(1));
        let v = noise.vec(s.batch * s.seq * kvw.max(1));
        let positions = 64;
        let half = s.rotary.map_or(1, |r| r.dim / 2);
        let cos = noise.vec(positions * half);
        let sin = noise.vec(positions * half);
        let mut past_k = noise.vec(s.batch * s.kv_heads * s.past_capacity * hd);
        let mut past_v = noise.vec(s.batch * s.kv_heads * s.past_capacity * hd);
        let present_len = s.batch * s.kv_heads * s.present_capacity * hd;
        let (mut own_k, mut own_v) = (vec![7.0f32; present_len], vec![7.0f32; present_len]);
        let mut out = vec![0f32; s.batch * s.seq * s.heads * hd];
        let (want, want_k, want_v) = reference(&c, &q, &k, &v, &past_k, &past_v, &cos, &sin);
        let (present_key, present_value) = if c.shared {
            (past_k.as_mut_ptr(), past_v.as_mut_ptr())
        } else {
            (own_k.as_mut_ptr(), own_v.as_mut_ptr())
        };
        let src = |data: *const f32, stride, offset| Source {
            data,
            stride,
            offset,
        };
        let (qs, ks, vs) = if c.packed {
            (
                src(q.as_ptr(), qw, 0),
                src(q.as_ptr(), qw, s.heads * hd),
                src(q.as_ptr(), qw, (s.heads + s.kv_heads) * hd),
            )
        } else {
            (
                src(q.as_ptr(), qw, 0),
                src(k.as_ptr(), kvw, 0),
                src(v.as_ptr(), kvw, 0),
            )
        };
        let seqlens: Vec<i32> = c.totals.iter().map(|t| *t as i32 - 1).collect();
        let attention = Attention {
            shape: s,
            buffers: Buffers {
                q: qs,
                k: ks,
                v: vs,
                past_key: past_k.as_ptr(),
                past_value: past_v.as_ptr(),
                present_key,
                present_value,
                output: out.as_mut_ptr(),
                cos: cos.as_ptr(),
                sin: sin.as_ptr(),
            },
            seqlens_k: &seqlens,
            rotary_positions: positions,
        };
        attention.check().unwrap();
        unsafe {
            for i in 0..attention.cache_items() {
                attention.write_cache(i);
            }
            for i in 0..attention.attend_items() {
                attention.attend(i);
            }
        }
        let (got_k, got_v) = if c.shared {
            (&past_k, &past_v)
        } else {
            (&own_k, &own_v)
        };
        for b in 0..s.batch {
            let past = if s.first_prompt {
                0
            } else {
                c.totals[b] - s.seq
            };
            for g in 0..s.kv_heads {
                let base = (b * s.kv_heads + g) * s.present_capacity * hd;
                for i in base..base + (past + s.seq) * hd {
                    assert!((got_k[i] as f64 - want_k[i]).abs() < 1e-5, "key {i}");
                    assert!((got_v[i] as f64 - want_v[i]).abs() < 1e-6, "value {i}");
                }
            }
            for t in 0..s.seq {
                if s.first_prompt && t >= c.totals[b] {
                    continue;
                }
                for i in 0..s.heads * hd {
                    let at = (b * s.seq + t) * s.heads * hd + i;
                    assert!(
                        (out[at] as f64 - want[at]).abs() < 2e-5,
                        "row {b} token {t} output {i}: {} vs {}",
                        out[at],
                        want[at]
                    );
                }
            }
        }
    }

    fn shape(
        batch: usize,
        seq: usize,
        head: usize,
        past_capacity: usize,
        present_capacity: usize,
        first_prompt: bool,
    ) -> Shape {
        Shape {
            batch,
            seq,
            heads: 6,
            kv_heads: 2,
            head,
            past_capacity,
            present_capacity,
            first_prompt,
            scale: 1.0 / (head as f32).sqrt(),
            window: None,
            rotary: Some(Rotary {
                dim: head,
                interleaved: false,
            }),
        }
    }

    #[test]
    fn decode_rows_of_different_lengths_on_a_shared_buffer() {
        let totals = vec![1, 13, 37];
        run(Case {
            shape: shape(3, 1, 64, 40, 40, false),
            totals,
            packed: true,
            shared: true,
        });
    }

    #[test]
    fn a_first_prompt_with_padded_rows() {
        run(Case {
            shape: shape(2, 11, 64, 16, 16, true),
            totals: vec![11, 5],
            packed: true,
            shared: true,
        });
    }

    #[test]
    fn several_new_tokens_after_a_past_at_a_batch_of_two() {
        run(Case {
            shape: shape(2, 5, 32, 30, 30, false),
            totals: vec![9, 30],
            packed: true,
            shared: true,
        });
    }

    #[test]
    fn a_long_prompt_spans_several_work_items() {
        run(Case {
            shape: shape(1, 45, 64, 0, 45, true),
            totals: vec![45],
            packed: true,
            shared: false,
        });
    }

    #[test]
    fn separate_key_and_value_inputs_and_a_present_of_its_own() {
        run(Case {
            shape: shape(2, 1, 128, 20, 21, false),
            totals: vec![21, 4],
            packed: false,
            shared: false,
        });
    }

    #[test]
    fn a_sliding_window_interleaved_and_partial_rotary_and_a_head_of_80() {
        let mut s = shape(2, 3, 80, 50, 50, false);
        s.window = Some(7);
        s.rotary = Some(Rotary {
            dim: 32,
            interleaved: true,
        });
        run(Case {
            shape: s,
            totals: vec![50, 12],
            packed: true,
            shared: true,
        });
        let mut s = shape(1, 1, 64, 30, 30, false);
        s.rotary = None;
        s.scale = 0.3;
        run(Case {
            shape: s,
            totals: vec![30],
            packed: true,
            shared: true,
        });
    }

    #[test]
    fn a_row_that_would_overflow_its_cache_is_refused() {
        let s = shape(1, 2, 64, 8, 8, false);
        let attention = Attention {
            shape: s,
            buffers: Buffers {
                q: Source {
                    data: std::ptr::null(),
                    stride: 0,
                    offset: 0,
                },
                k: Source {
                    data: std::ptr::null(),
                    stride: 0,
                    offset: 0,
                },
                v: Source {
                    data: std::ptr::null(),
                    stride: 0,
                    offset: 0,
                },
                past_key: std::ptr::null(),
                past_value: std::ptr::null(),
                present_key: std::ptr::null_mut(),
                present_value: std::ptr::null_mut(),
                output: std::ptr::null_mut(),
                cos: std::ptr::null(),
                sin: std::ptr::null(),
            },
            seqlens_k: &[9],
            rotary_positions: 64,
        };
        assert_eq!(
            attention.check(),
            Err(ShapeError::CacheFull {
                row: 0,
                needed: 10,
                capacity: 8
            })
        );
        let short = Attention {
            seqlens_k: &[0],
            ..attention
        };
        assert_eq!(
            short.check(),
            Err(ShapeError::ShortRow {
                row: 0,
                total: 1,
                seq: 2
            })
        );
    }
}
