//! Batches whose KV cache recycles rows (the shared cache in host memory): a row whose
//! sequence has ended takes the next waiting prompt, prefilled alone into its slot; once none
//! waits, ended rows are dropped; and each decode step is built per row, with the row's own
//! position and (where [`Drafting`] allows) draft tokens that one forward pass verifies.

use std::time::Instant;

use ort::value::{DynValue, Tensor};

use super::draft;
use super::row::{Row, step_tensors};
use super::{Batch, KvCache, Model, StepInputs};
use crate::engine::Completion;
use crate::engine::onnx::error::EngineError;

impl Batch<'_> {
    /// Give each finished row the next job waiting; once none waits, drop the finished rows.
    /// False once every row has finished and no job waits.
    pub(super) fn recycle(
        &mut self,
        model: &mut Model,
        kv: &mut dyn KvCache,
        on_token: &mut dyn FnMut(),
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<bool, EngineError> {
        for r in 0..self.rows.len() {
            // A job can end at its first token: its row takes the next one at once.
            while self.rows[r].done() && self.next < self.all.len() {
                self.next += 1;
                self.start_job(model, kv, r, self.next - 1, on_token, on_done)?;
            }
        }
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&r| !self.rows[r].done())
            .collect();
        if keep.is_empty() {
            return Ok(false);
        }
        if keep.len() < self.rows.len() {
            kv.keep_rows(model, &keep)?;
            self.keep_rows(&keep);
        }
        Ok(true)
    }

    /// The first step of a recycling batch: each row's prompt prefilled alone into its slot, as
    /// later rows are. A batched prefill computes every row up to the longest prompt (15% of
    /// the default suite's first step is padding), and a prompt alone gives the same logits as
    /// in a batch. False when every job has ended.
    pub(super) fn start_rows(
        &mut self,
        model: &mut Model,
        kv: &mut dyn KvCache,
        on_token: &mut dyn FnMut(),
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<bool, EngineError> {
        for r in 0..self.rows.len() {
            let j = self.job_of[r];
            self.start_job(model, kv, r, j, on_token, on_done)?;
        }
        self.recycle(model, kv, on_token, on_done)
    }

    /// Put job `j` in row `r` (whose job has been handed over): prefill its prompt alone into
    /// the row's KV cache and take its first token. Its decode steps continue from there.
    fn start_job(
        &mut self,
        model: &mut Model,
        kv: &mut dyn KvCache,
        r: usize,
        j: usize,
        on_token: &mut dyn FnMut(),
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<(), EngineError> {
        let job = self.all[j].clone();
        self.rows[r] = Row::new(&job);
        self.rows[r].started_at = self.start.elapsed().as_secs_f64();
        self.lens[r] = job.prompt_ids.len();
        self.guided[r] = job.guide.as_ref().map(|_| 0);
        self.drafts[r].clear();
        self.draft_len[r] = draft::FIRST_DRAFT;
        self.drafted[r] = (0, 0);
        self.published[r] = false;
        self.job_of[r] = j;
        self.jobs[r] = job;
        if self.rows[r].done() {
            return self.publish_done(model, on_done); // nothing to generate
        }
        let inputs = self.prompt_inputs(model, r)?;
        let q = inputs.shape[1];
        let run_started = Instant::now();
        let logits = kv.start_row(model, r, inputs)?;
        let want = if model.graph.logits_positions { 1 } else { q };
        let lq = self.check_logits(&logits, q, 1, want)?;
        let mut at = vec![None; self.rows.len()];
        at[r] = Some((lq - 1, self.lens[r] - 1));
        let picks = self.pick_on_host(model, &logits, &at, run_started)?;
        drop(logits);
        self.past[r] = self.lens[r];
        self.record(model, picks, on_token, on_done).map(|_| ())
    }

    /// The inputs of row `r`'s prompt alone (batch 1): the prefill step of a batch of one.
    fn prompt_inputs(&self, model: &Model, r: usize) -> Result<StepInputs, EngineError> {
        let len = self.lens[r];
        let (ids, mask, positions, _) = step_tensors(
            model.graph.layout,
            0,
            std::slice::from_ref(&self.jobs[r]),
            &[len],
            &[],
            model.tokens.pad,
            len,
        );
        let logits_positions = match model.graph.logits_positions {
            true => Some(
                Tensor::<i64>::from_array(([1, 1], vec![len as i64 - 1]))
                    .map_err(EngineError::run)?,
            ),
            false => None,
        };
        Ok(StepInputs {
            step: 0,
            ids: Tensor::<i64>::from_array(([1, len], ids)).map_err(EngineError::run)?,
            mask: Tensor::<i64>::from_array(([1, len], mask)).map_err(EngineError::run)?,
            positions,
            shape: [1, len],
            vocab: self.vocab,
            logits_on_device: false,
            logits_positions,
        })
    }

    /// Keep rows `keep` (ascending) and drop the others.
    fn keep_rows(&mut self, keep: &[usize]) {
        fn retain<T>(v: &mut Vec<T>, keep: &[usize]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep.binary_search(&(i - 1)).is_ok()
            });
        }
        retain(&mut self.rows, keep);
        retain(&mut self.jobs, keep);
        retain(&mut self.job_of, keep);
        retain(&mut self.past, keep);
        retain(&mut self.drafts, keep);
        retain(&mut self.draft_len, keep);
        retain(&mut self.drafted, keep);
        retain(&mut self.lens, keep);
        retain(&mut self.guided, keep);
        retain(&mut self.published, keep);
        retain(&mut self.last_tokens, keep);
    }

    /// A decode step's inputs: each row's last token at its own position, then (a row alone
    /// in its batch) its draft tokens. Drafts wait for a lone row: ONNX Runtime's
    /// GroupQueryAttention on CPU takes several new tokens after a cache for one row only, and
    /// a lone row leaves the batch's width idle anyway (the tail of a run, one case alone).
    pub(super) fn decode_inputs(&mut self, model: &Model) -> Result<StepInputs, EngineError> {
        let b = self.rows.len();
        for r in 0..b {
            self.drafts[r] = match self.drafting {
                Some(d) if b == 1 && !self.rows[r].done() => {
                    let generated = &self.rows[r].trace.ids;
                    let left = self.jobs[r].max_new.saturating_sub(generated.len());
                    let max = self.draft_len[r].min(left.saturating_sub(1));
                    draft::propose(&self.jobs[r].prompt_ids, generated, max, d.min_ngram)
                }
                _ => Vec::new(),
            };
        }
        let q = 1 + self.drafts.iter().map(Vec::len).max().unwrap_or(0);
        let width = (0..b).map(|r| self.past[r] + q).max().unwrap_or(q);
        let mut ids = vec![model.tokens.pad as i64; b * q];
        let mut mask = vec![0i64; b * width];
        let mut positions = vec![0i64; b * q];
        for r in 0..b {
            ids[r * q] = self.last_tokens[r] as i64;
            for (j, &t) in self.drafts[r].iter().enumerate() {
                ids[r * q + 1 + j] = t as i64;
            }
            for j in 0..q {
                positions[r * q + j] = (self.past[r] + j) as i64;
            }
            mask[r * width..r * width + self.past[r] + q].fill(1);
        }
        let logits_positions = match model.graph.logits_positions {
            true => {
                let every: Vec<i64> = (0..b).flat_map(|_| 0..q as i64).collect();
                Some(Tensor::<i64>::from_array(([b, q], every)).map_err(EngineError::run)?)
            }
            false => None,
        };
        Ok(StepInputs {
            step: self.step,
            ids: Tensor::<i64>::from_array(([b, q], ids)).map_err(EngineError::run)?,
            mask: Tensor::<i64>::from_array(([b, width], mask)).map_err(EngineError::run)?,
            positions,
            shape: [b, q],
            vocab: self.vocab,
            logits_on_device: false,
            logits_positions,
        })
    }

    /// Take a decode step's choices: each row's after its last token, then after each of its
    /// draft tokens for as long as every draft so far was the row's own choice (a row's
    /// choice after a draft it would not have chosen is never read). Recorded in order, so a
    /// row ends where it would have ended decoding one token at a time.
    pub(super) fn verify(
        &mut self,
        model: &Model,
        logits: &DynValue,
        lq: usize,
        run_started: Instant,
        on_token: &mut dyn FnMut(),
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<(), EngineError> {
        let b = self.rows.len();
        let mut reading: Vec<bool> = vec![true; b];
        let mut kept = vec![0usize; b];
        for p in 0..lq {
            let at: Vec<Option<(usize, usize)>> = (0..b)
                .map(|r| {
                    let read = reading[r] && !self.rows[r].done();
                    read.then(|| (r * lq + p, self.past[r] + p))
                })
                .collect();
            if at.iter().all(Option::is_none) {
                break;
            }
            let started = if p == 0 { run_started } else { Instant::now() };
            let picks = self.pick_on_host(model, logits, &at, started)?;
            for (r, pick) in picks.iter().enumerate() {
                if let Some((pick, _)) = pick {
                    match self.drafts[r].get(p) == Some(&(pick.token as u32)) {
                        true => kept[r] += 1,
                        false => reading[r] = false,
                    }
                }
            }
            self.record(model, picks, on_token, on_done)?;
        }
        for (r, kept) in kept.into_iter().enumerate() {
            let proposed = self.drafts[r].len();
            self.past[r] += 1 + kept;
            self.drafted[r].0 += proposed;
            self.drafted[r].1 += kept;
            self.draft_len[r] = draft::next_len(self.draft_len[r], proposed, kept);
        }
        Ok(())
    }
}
