//! The batched decode loop: prefill the right-padded prompts, then one token per row per step
//! until every row has finished. Each row keeps its own state ([`Row`]: sampler stream,
//! incremental detokenizer, token trace, text) and ends for a [`FinishReason`]. The KV cache
//! strategy ([`KvCache`]) runs the steps; this module builds their inputs and reads the tokens.

use std::borrow::Cow;
use std::time::Instant;

use ort::value::Tensor;

use super::error::EngineError;
use super::follow::{Gap, Guide};
use super::gate::Turn;
use super::kv::{FixedKv, GrowingKv, KvCache, SharedKv, StepInputs};
use super::model::Model;
use super::sampling::{self, Sampler};
use super::tensor::Float;
use crate::device::Provider;
use crate::engine::{Completion, FinishReason, Timing};
use crate::machine;

mod row;

use row::{
    Choice, GUIDED_HEAD_K, ROWS_PER_THREAD, Row, StepShared, Usage, guide_pick, piece, record_rows,
    rows_with, step_tensors,
};

/// One sequence to generate.
#[derive(Debug, Clone)]
pub(crate) struct SeqJob {
    pub prompt_ids: Vec<u32>,
    pub max_new: usize,
    pub stop: Vec<String>,
    pub sampler: Sampler,
    pub seed: u64,
    pub top_logprobs: usize,
    /// The accepted output the row is teacher-forced through (greedy jobs whose accepted key
    /// matches), within its tolerance.
    pub guide: Option<Guide>,
    /// What the completion may be accepted under (see [`Completion::accept_key`]).
    pub accept_key: Option<String>,
}

#[cfg(test)]
impl SeqJob {
    /// A greedy job with no stop strings (tests).
    pub(crate) fn greedy(prompt_ids: Vec<u32>, max_new: usize) -> SeqJob {
        SeqJob {
            prompt_ids,
            max_new,
            stop: Vec::new(),
            sampler: Sampler {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
            },
            seed: 0,
            top_logprobs: 0,
            guide: None,
            accept_key: None,
        }
    }
}

impl Model {
    /// Generate every job of `jobs` together (one batch). `on_token` is called once per token
    /// generated (any row); `on_done(r, completion)` once per row, as soon as row `r` finishes
    /// (mid-batch for rows that stop early, so their callers can score them while the batch
    /// runs on). An error is the batch's: rows not yet handed over have no completion.
    pub(crate) fn generate_batch(
        &mut self,
        jobs: &[SeqJob],
        on_token: &mut dyn FnMut(),
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<(), EngineError> {
        let b = jobs.len();
        if b == 0 {
            return Ok(());
        }
        let lens: Vec<usize> = jobs.iter().map(|j| j.prompt_ids.len()).collect();
        if lens.contains(&0) {
            return Err(EngineError::Generate(
                "the prompt is empty after tokenization".into(),
            ));
        }
        let s = *lens.iter().max().expect("non-empty");
        let start = Instant::now();
        let max_stop = jobs
            .iter()
            .flat_map(|j| j.stop.iter().map(|s| s.len()))
            .max()
            .unwrap_or(0);
        let mut rows: Vec<Row> = jobs.iter().map(Row::new).collect();
        // Where each guided row is in its accepted tokens (`None`: decoding freely).
        let mut guided: Vec<Option<usize>> =
            jobs.iter().map(|j| j.guide.as_ref().map(|_| 0)).collect();

        // Greedy batches on the shared-KV path leave the logits on the device for the head;
        // sampling needs the whole distribution on the host.
        let use_head =
            self.head.is_some() && self.shares_kv() && jobs.iter().all(|j| j.sampler.is_greedy());
        // Guided rows need the accepted token among the alternatives to measure its gap.
        let head_k = jobs
            .iter()
            .map(|j| match j.guide {
                Some(_) => j.top_logprobs.max(GUIDED_HEAD_K),
                None => j.top_logprobs,
            })
            .max()
            .unwrap_or(0)
            .max(1);
        // Wide greedy batches on the device head record each step while the next one runs; a
        // narrow batch's bookkeeping is shorter than starting a thread for it.
        let pipelined = use_head && b >= ROWS_PER_THREAD;
        let max_len = s + jobs.iter().map(|j| j.max_new).max().unwrap_or(0) + 1;
        // Other sessions of this process may decode at once: GPU work happens under a turn,
        // exclusive for the steps that may capture a CUDA graph (see `gate`). Declared before
        // the KV cache, so the buffers are released while the turn is still held.
        let gate = self.gate.clone();
        let captured = use_head && self.cuda_graph() && self.uncaptured.is_some();
        let mut turn = gate.shared();
        let mut kv: Box<dyn KvCache> = if use_head && self.cuda_graph() {
            Box::new(FixedKv::new(self.fixed_decode(b, max_len)?))
        } else if self.shares_kv() {
            Box::new(SharedKv::new(self, b, max_len)?)
        } else {
            Box::new(GrowingKv::new(self, b)?)
        };
        let device_id = self.device_id;
        let mut step = 0usize;
        let mut run_secs = 0.0f64;
        // Rows already handed to `on_done`, and the device memory reading they carry.
        let mut published = vec![false; b];
        // The last reading (earlier batches': the arena only grows); this batch's is taken on
        // another thread after its first decode step, as `nvidia-smi` takes tens of ms that
        // must not land inside a sequence's decode time.
        let mut device_peak: Option<u64> = self.device_peak;
        let mut reading: Option<std::thread::JoinHandle<Option<u64>>> = None;
        // Choosing tokens' text, detokenizing and checking stop strings, row by row.
        let mut host_secs = 0.0f64;
        // Waiting for other sessions' turns, and building each step's inputs.
        let (mut wait_secs, mut inputs_secs) = (0.0f64, 0.0f64);
        let mut last_tokens: Vec<u32> = vec![self.tokens.pad; b];
        // The previous step's picks, recorded while the next step runs (device-head path).
        let mut pending: Option<(Vec<Option<Choice>>, f64)> = None;
        // Taken out of the model for the batch: the bookkeeping thread reads them while the
        // model runs.
        let mut pieces = std::mem::take(&mut self.pieces);
        let tokenizer = std::sync::Arc::clone(&self.tokenizer);
        let eos = self.tokens.eos.clone();
        // The logits' vocabulary size, known after the first run.
        let mut vocab = 0usize;
        loop {
            drop(std::mem::replace(&mut turn, Turn::Free));
            let waited = Instant::now();
            turn = gate.step(step, captured);
            wait_secs += waited.elapsed().as_secs_f64();
            let inputs_started = Instant::now();
            let total = if step == 0 { s } else { s + step };
            let width = kv.mask_width(step, total);
            let (ids, mask, positions, q) = step_tensors(
                self.graph.layout,
                step,
                jobs,
                &lens,
                &last_tokens,
                self.tokens.pad,
                width,
            );
            // Only the position each row continues from: its last prompt token at prefill, the
            // one new token after.
            let logits_positions = match self.graph.logits_positions {
                true => {
                    let at: Vec<i64> = (0..b)
                        .map(|r| if step == 0 { lens[r] as i64 - 1 } else { 0 })
                        .collect();
                    Some(Tensor::<i64>::from_array(([b, 1], at)).map_err(EngineError::run)?)
                }
                false => None,
            };
            let inputs = StepInputs {
                step,
                ids: Tensor::<i64>::from_array(([b, q], ids)).map_err(EngineError::run)?,
                mask: Tensor::<i64>::from_array(([b, width], mask)).map_err(EngineError::run)?,
                positions,
                shape: [b, q],
                vocab,
                logits_on_device: use_head,
                logits_positions,
            };
            inputs_secs += inputs_started.elapsed().as_secs_f64();
            let run_started = Instant::now();
            // Pipelined (greedy on the device head): the previous step's bookkeeping runs on
            // another thread while the GPU runs this step; rows it finishes are published now.
            let (logits, recorded) = std::thread::scope(|scope| {
                let record = pending.take().map(|(picks, now): (Vec<_>, f64)| {
                    let rows = &mut rows;
                    let (pieces, tokenizer, eos) = (&pieces, &*tokenizer, &eos[..]);
                    let threads = self.sampling_threads;
                    scope.spawn(move || {
                        let shared = StepShared {
                            pieces,
                            tokenizer,
                            eos,
                            max_stop,
                            now,
                        };
                        record_rows(rows_with(rows, picks, jobs), &shared, threads)
                    })
                });
                let logits = kv.run(self, inputs);
                let recorded = record.map_or(Ok(()), |h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EngineError::Generate(
                            "the bookkeeping thread panicked".into(),
                        ))
                    })
                });
                (logits, recorded)
            });
            recorded?;
            let logits = logits?;
            self.publish_done(
                &mut rows,
                &mut published,
                &lens,
                start,
                device_peak,
                on_done,
            )?;
            let shape: Vec<i64> = logits.shape().to_vec();
            if shape.len() != 3 || shape[0] as usize != b {
                return Err(EngineError::Run(format!(
                    "logits have shape {shape:?}, expected [batch, seq, vocab]"
                )));
            }
            let lq = shape[1] as usize;
            vocab = shape[2] as usize;
            let want = if self.graph.logits_positions { 1 } else { q };
            if lq != want && !(lq == 1 && lens.iter().all(|&l| l == s)) {
                return Err(EngineError::Run(format!(
                    "the graph returns {lq} positions for {q} inputs; batched prompts of different lengths need logits for every position"
                )));
            }
            // The position each row continues from: its last prompt token at prefill.
            let at_of = |r: usize| if lq == 1 || step > 0 { 0 } else { lens[r] - 1 };
            debug_assert!(!self.graph.logits_positions || lq == 1);
            let mut picks: Vec<Option<Choice>> = vec![None; b];
            match (&mut self.head, use_head) {
                (Some(head), true) => {
                    let index: Vec<i64> = (0..b).map(|r| at_of(r) as i64).collect();
                    let tops = head.top(&logits, &index, lq, head_k)?;
                    run_secs += run_started.elapsed().as_secs_f64();
                    for (r, mut top) in tops.into_iter().enumerate() {
                        if rows[r].done() {
                            continue;
                        }
                        let (token, logprob) = top[0];
                        // Only a guided row needs the alternatives beyond those it records.
                        let all = guided[r].map(|_| top.clone());
                        top.truncate(jobs[r].top_logprobs);
                        let pick = sampling::Pick {
                            token,
                            logprob,
                            top,
                        };
                        let gap = |accepted| match &all {
                            Some(all) => Gap::from_top(all, accepted),
                            None => Gap::AtLeast(f32::INFINITY),
                        };
                        picks[r] = Some(guide_pick(&mut guided[r], &jobs[r], pick, gap));
                    }
                }
                _ => {
                    let data: Cow<'_, [f32]> = match self.graph.logits_type {
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
                    run_secs += run_started.elapsed().as_secs_f64();
                    let data = match self.logit_noise {
                        Some(noise) => {
                            let mut owned = data.into_owned();
                            for (r, len) in lens.iter().enumerate() {
                                let off = (r * lq + at_of(r)) * vocab;
                                noise.apply(&mut owned[off..off + vocab], len - 1 + step);
                            }
                            Cow::Owned(owned)
                        }
                        None => data,
                    };
                    let row_at = |r: usize| -> &[f32] {
                        let off = (r * lq + at_of(r)) * vocab;
                        &data[off..off + vocab]
                    };
                    let mut active: Vec<sampling::RowChoice<'_>> = rows
                        .iter_mut()
                        .enumerate()
                        .filter(|(_, row)| !row.done())
                        .map(|(r, row)| sampling::RowChoice {
                            row: r,
                            rng: &mut row.rng,
                            sampler: &jobs[r].sampler,
                            top_logprobs: jobs[r].top_logprobs,
                        })
                        .collect();
                    for (r, p) in sampling::pick_rows(&row_at, &mut active, self.sampling_threads) {
                        let top = p.token;
                        let gap = |accepted| Gap::from_logits(row_at(r), top, accepted);
                        picks[r] = Some(guide_pick(&mut guided[r], &jobs[r], p, gap));
                    }
                }
            }
            drop(logits);
            let host_started = Instant::now();
            let now = start.elapsed().as_secs_f64();
            // Every piece this step needs, decoded once (serially: the cache is shared), then
            // the rows in parallel: detokenizing and searching stop strings is per-row work
            // that at a batch of 100+ rows takes as long as the GPU's step.
            for (pick, _) in picks.iter().flatten() {
                piece(&mut pieces, &tokenizer, pick.token as u32);
                for &(i, _) in &pick.top {
                    piece(&mut pieces, &tokenizer, i as u32);
                }
            }
            let chosen = picks.iter().flatten().count();
            for (r, pick) in picks.iter().enumerate() {
                if let Some((pick, _)) = pick {
                    last_tokens[r] = pick.token as u32;
                }
            }
            for _ in 0..chosen {
                on_token();
            }
            // The arena reaches its high-water mark with the prefill and the first decode step
            // (the graph's capture); later steps reuse it.
            if step == 1 && self.provider == Provider::Cuda {
                reading = std::thread::Builder::new()
                    .name("codegen-device-memory".into())
                    .spawn(move || machine::process_gpu_bytes_on(device_id))
                    .ok();
            }
            if reading.as_ref().is_some_and(|h| h.is_finished()) {
                let read = reading.take().and_then(|h| h.join().ok()).flatten();
                device_peak = device_peak.max(read);
            }
            if pipelined {
                host_secs += host_started.elapsed().as_secs_f64();
                if chosen == 0 {
                    break; // every row finished by the previous step
                }
                pending = Some((picks, now));
                step += 1;
                continue;
            }
            let shared = StepShared {
                pieces: &pieces,
                tokenizer: &tokenizer,
                eos: &eos,
                max_stop,
                now,
            };
            record_rows(
                rows_with(&mut rows, picks, jobs),
                &shared,
                self.sampling_threads,
            )?;
            self.publish_done(
                &mut rows,
                &mut published,
                &lens,
                start,
                device_peak,
                on_done,
            )?;
            host_secs += host_started.elapsed().as_secs_f64();
            if rows.iter().all(Row::done) {
                break;
            }
            step += 1;
        }
        self.pieces = pieces;
        if let Some(h) = reading {
            device_peak = device_peak.max(h.join().ok().flatten());
        }
        self.device_peak = device_peak;
        let total_ms = start.elapsed().as_secs_f64() * 1000.0;
        if self.profile {
            eprintln!(
                "codegen: batch of {b}: {} steps, {:.0} ms total, {:.0} ms in ONNX Runtime, {:.0} ms detokenizing, {:.0} ms waiting for other sessions, {:.0} ms building inputs, prompts up to {s} tokens, device memory {} MiB",
                step + 1,
                total_ms,
                run_secs * 1000.0,
                host_secs * 1000.0,
                wait_secs * 1000.0,
                inputs_secs * 1000.0,
                match self.provider {
                    Provider::Cuda =>
                        machine::process_gpu_bytes_on(self.device_id).map_or(0, |b| b >> 20),
                    Provider::Cpu => 0,
                }
            );
        }
        Ok(())
    }

    /// Hand every newly finished row to `on_done`.
    fn publish_done(
        &self,
        rows: &mut [Row],
        published: &mut [bool],
        lens: &[usize],
        start: Instant,
        device_peak: Option<u64>,
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<(), EngineError> {
        for r in 0..rows.len() {
            if rows[r].done() && !published[r] {
                published[r] = true;
                let usage = Usage {
                    prompt_tokens: lens[r],
                    total_ms: start.elapsed().as_secs_f64() * 1000.0,
                    peak_host_bytes: machine::peak_host_bytes(),
                    peak_device_bytes: device_peak,
                };
                on_done(r, self.finish_row(&mut rows[r], usage)?);
            }
        }
        Ok(())
    }

    /// Hand over a finished row: its text (what the detokenizer still held included), its
    /// trace and its timing. The row keeps only its finish reason.
    fn finish_row(&self, row: &mut Row, usage: Usage) -> Result<Completion, EngineError> {
        if !matches!(row.finish, Some(FinishReason::Stop(_))) {
            let rest = row
                .detok
                .flush(&self.tokenizer)
                .map_err(EngineError::Generate)?;
            row.text.push_str(&rest);
        }
        let trace = std::mem::take(&mut row.trace);
        let n = trace.ids.len();
        let first = row.first_at.unwrap_or(0.0);
        let decode_s = row.last_at - first;
        Ok(Completion {
            text: std::mem::take(&mut row.text),
            timing: Some(Timing {
                prompt_tokens: usage.prompt_tokens,
                generated_tokens: n,
                time_to_first_token_ms: first * 1000.0,
                decode_tokens_per_s: if n > 1 && decode_s > 0.0 {
                    (n - 1) as f64 / decode_s
                } else {
                    0.0
                },
                total_ms: usage.total_ms,
                peak_host_bytes: usage.peak_host_bytes,
                peak_device_bytes: usage.peak_device_bytes,
            }),
            tokens: Some(trace),
            finish_reason: row.finish.clone(),
            accept_key: row.accept_key.clone(),
            followed: row.followed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onnx::folder::Layout;

    fn job(prompt: &[u32]) -> SeqJob {
        SeqJob::greedy(prompt.to_vec(), 4)
    }

    #[test]
    fn prefill_pads_right_and_masks_each_row() {
        let jobs = [job(&[5, 6, 7]), job(&[8])];
        let (ids, mask, pos, q) = step_tensors(Layout::Genai, 0, &jobs, &[3, 1], &[0, 0], 9, 3);
        assert_eq!(q, 3);
        assert_eq!(ids, vec![5, 6, 7, 8, 9, 9]);
        assert_eq!(mask, vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(pos, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn decode_steps_mask_by_layout_and_width() {
        let jobs = [job(&[5, 6, 7]), job(&[8])];
        // genai: each row's valid length, packed from 0; a wider (fixed) mask is zero-padded.
        let (ids, mask, pos, q) = step_tensors(Layout::Genai, 1, &jobs, &[3, 1], &[11, 12], 9, 6);
        assert_eq!((q, ids), (1, vec![11, 12]));
        assert_eq!(mask, vec![1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0]);
        assert_eq!(pos, vec![3, 1]);
        // optimum: every cached position, with the padding holes of shorter prompts masked.
        let (_, mask, _, _) = step_tensors(Layout::Optimum, 1, &jobs, &[3, 1], &[11, 12], 9, 4);
        assert_eq!(mask, vec![1, 1, 1, 1, 1, 0, 0, 1]);
    }
}
