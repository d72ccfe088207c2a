//! The batched decode loop: prefill the right-padded prompts, then one token per row per step
//! until every row has finished. Each row keeps its own state ([`Row`]: sampler stream,
//! incremental detokenizer, token trace, text) and ends for a [`FinishReason`]. The KV cache
//! strategy ([`KvCache`]) runs the steps; this module builds their inputs and reads the tokens.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ort::value::{DynValue, Tensor};
use tokenizers::Tokenizer;

use super::answer::AnswerStop;
use super::error::EngineError;
use super::follow::{Gap, Guide};
use super::gate::Turn;
use super::kv::{FixedKv, GrowingKv, KvCache, Logits, SharedKv, StepInputs};
use super::model::{Drafting, Model};
use super::sampling::{self, Sampler};
use super::tensor::Float;
use crate::device::Provider;
use crate::engine::{Completion, FinishReason, Timing};
use crate::machine;

mod draft;
mod recycle;
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
    /// End the row once its reply's answer is complete (`stop_at_answer`).
    pub answer: Option<AnswerStop>,
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
            answer: None,
        }
    }
}

impl Model {
    /// Generate every job of `jobs` in one batch of at most `rows` rows: the first `rows`
    /// together, and (where the KV cache recycles rows) each of the others in the row of one
    /// that has finished, prefilled alone while the others wait; once none waits, finished
    /// rows are dropped. `on_token` is called once per token generated (any row);
    /// `on_done(j, completion)` once per job, as soon as job `j` finishes (mid-batch, so its
    /// caller can score it while the batch runs on). An error is the batch's: jobs not yet
    /// handed over have no completion.
    pub(crate) fn generate_batch(
        &mut self,
        jobs: &[SeqJob],
        rows: usize,
        on_token: &mut dyn FnMut(),
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<(), EngineError> {
        if jobs.is_empty() {
            return Ok(());
        }
        if jobs.iter().any(|j| j.prompt_ids.is_empty()) {
            return Err(EngineError::Generate(
                "the prompt is empty after tokenization".into(),
            ));
        }
        let b = jobs.len().min(rows.max(1));
        let mut batch = Batch::new(self, jobs, b);
        batch.drafting = self.drafting;
        // The first rows are prefilled right-padded to the longest of them; a row started
        // later holds its own sequence from position 0.
        let first = batch.longest + batch.jobs.iter().map(|j| j.max_new).max().unwrap_or(0);
        let later = jobs[b..].iter().map(|j| j.prompt_ids.len() + j.max_new);
        let max_len = later.fold(first, usize::max) + 1;
        // Other sessions of this process may decode at once: GPU work happens under a turn,
        // exclusive for the steps that may capture a CUDA graph (see `gate`). Declared before
        // the KV cache, so the buffers are released while the turn is still held.
        let gate = self.gate.clone();
        let captured = batch.use_head && self.cuda_graph() && self.uncaptured.is_some();
        let mut turn = gate.shared();
        let kv = self.kv_cache(batch.use_head, b, max_len).and_then(|kv| {
            match b < jobs.len() && !kv.recycles() {
                true => Err(EngineError::Generate(format!(
                    "{} sequences for {b} rows on a KV cache that cannot start a row alone",
                    jobs.len()
                ))),
                false => Ok(kv),
            }
        });
        let mut kv = match kv {
            Ok(kv) => {
                batch.recycling = kv.recycles();
                kv
            }
            Err(e) => {
                // The model keeps its pieces when no step ran, as before the batch took them.
                self.pieces = std::mem::take(&mut batch.pieces);
                return Err(e);
            }
        };
        loop {
            drop(std::mem::replace(&mut turn, Turn::Free));
            let waited = Instant::now();
            turn = gate.step(batch.step, captured);
            batch.secs.wait += waited.elapsed().as_secs_f64();
            if !batch.advance(self, &mut *kv, on_token, on_done)? {
                break;
            }
            batch.step += 1;
        }
        batch.finish(self);
        Ok(())
    }

    /// The KV cache strategy for a batch of `batch` rows up to `max_len` positions.
    fn kv_cache(
        &mut self,
        use_head: bool,
        batch: usize,
        max_len: usize,
    ) -> Result<Box<dyn KvCache>, EngineError> {
        Ok(if use_head && self.cuda_graph() {
            Box::new(FixedKv::new(self.fixed_decode(batch, max_len)?))
        } else if self.shares_kv() {
            Box::new(SharedKv::new(self, batch, max_len)?)
        } else {
            Box::new(GrowingKv::new(self, batch)?)
        })
    }
}

/// Where a batch's time went (the profile line), in seconds.
#[derive(Default)]
struct Secs {
    /// In ONNX Runtime (and the device head).
    run: f64,
    /// Choosing tokens' text, detokenizing and checking stop strings, row by row.
    host: f64,
    /// Waiting for other sessions' turns.
    wait: f64,
    /// Building each step's inputs.
    inputs: f64,
}

/// A batch between its steps: the rows, where the guided ones are, and what each step reads.
struct Batch<'j> {
    /// Every job of the batch; `next` is the first no row has taken yet.
    all: &'j [SeqJob],
    next: usize,
    /// Each row's job, and its index in `all`.
    jobs: Vec<SeqJob>,
    job_of: Vec<usize>,
    /// Positions each row's KV cache holds (after the prefill: its prompt); the next input
    /// goes at this position.
    past: Vec<usize>,
    /// The KV cache recycles rows: decode steps are built per row ([`Batch::decode_inputs`]),
    /// with draft tokens where `drafting` allows.
    recycling: bool,
    drafting: Option<Drafting>,
    /// This step's draft tokens per row, and how many each row may propose next.
    drafts: Vec<Vec<u32>>,
    draft_len: Vec<usize>,
    /// Per row: draft tokens proposed and accepted so far.
    drafted: Vec<(usize, usize)>,
    /// Each row's prompt length, and the longest of the rows prefilled together.
    lens: Vec<usize>,
    longest: usize,
    start: Instant,
    max_stop: usize,
    rows: Vec<Row>,
    /// Where each guided row is in its accepted tokens (`None`: decoding freely).
    guided: Vec<Option<usize>>,
    /// Greedy batches on the shared-KV path leave the logits on the device for the head;
    /// sampling needs the whole distribution on the host.
    use_head: bool,
    /// How many alternatives the device head returns per row.
    head_k: usize,
    /// Wide greedy batches on the device head record each step while the next one runs; a
    /// narrow batch's bookkeeping is shorter than starting a thread for it.
    pipelined: bool,
    step: usize,
    /// Rows whose job is handed to `on_done`, and the device memory reading they carry.
    published: Vec<bool>,
    /// The last reading (earlier batches': the arena only grows); this batch's is taken on
    /// another thread after its first decode step, as `nvidia-smi` takes tens of ms that
    /// must not land inside a sequence's decode time.
    device_peak: Option<u64>,
    reading: Option<std::thread::JoinHandle<Option<u64>>>,
    last_tokens: Vec<u32>,
    /// The previous step's picks, recorded while the next step runs (device-head path).
    pending: Option<(Vec<Option<Choice>>, f64)>,
    /// Taken out of the model for the batch: the bookkeeping thread reads them while the
    /// model runs.
    pieces: HashMap<u32, String>,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    /// The logits' vocabulary size, known after the first run.
    vocab: usize,
    secs: Secs,
}

impl<'j> Batch<'j> {
    /// A batch of `all`, whose first `b` jobs take the rows.
    fn new(model: &mut Model, all: &'j [SeqJob], b: usize) -> Batch<'j> {
        let jobs = all[..b].to_vec();
        let lens: Vec<usize> = jobs.iter().map(|j| j.prompt_ids.len()).collect();
        let longest = *lens.iter().max().expect("non-empty");
        let start = Instant::now();
        let max_stop = all
            .iter()
            .flat_map(|j| j.stop.iter().map(|s| s.len()))
            .max()
            .unwrap_or(0);
        let rows: Vec<Row> = jobs.iter().map(Row::new).collect();
        let guided = jobs.iter().map(|j| j.guide.as_ref().map(|_| 0)).collect();
        let use_head =
            model.head.is_some() && model.shares_kv() && all.iter().all(|j| j.sampler.is_greedy());
        // Guided rows need the accepted token among the alternatives to measure its gap.
        let head_k = all
            .iter()
            .map(|j| match j.guide {
                Some(_) => j.top_logprobs.max(GUIDED_HEAD_K),
                None => j.top_logprobs,
            })
            .max()
            .unwrap_or(0)
            .max(1);
        Batch {
            all,
            next: b,
            jobs,
            job_of: (0..b).collect(),
            past: vec![0; b],
            recycling: false,
            drafting: None,
            drafts: vec![Vec::new(); b],
            draft_len: vec![draft::FIRST_DRAFT; b],
            drafted: vec![(0, 0); b],
            lens,
            longest,
            start,
            max_stop,
            rows,
            guided,
            use_head,
            head_k,
            pipelined: use_head && b >= ROWS_PER_THREAD,
            step: 0,
            published: vec![false; b],
            device_peak: model.device_peak,
            reading: None,
            last_tokens: vec![model.tokens.pad; b],
            pending: None,
            pieces: std::mem::take(&mut model.pieces),
            tokenizer: Arc::clone(&model.tokenizer),
            eos: model.tokens.eos.clone(),
            vocab: 0,
            secs: Secs::default(),
        }
    }

    /// Run step `self.step` (the prefill at 0) and record its tokens; false once every row has
    /// finished.
    fn advance(
        &mut self,
        model: &mut Model,
        kv: &mut dyn KvCache,
        on_token: &mut dyn FnMut(),
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<bool, EngineError> {
        if self.recycling && self.step == 0 {
            return self.start_rows(model, kv, on_token, on_done);
        }
        let inputs_started = Instant::now();
        let inputs = self.inputs(model, kv)?;
        let q = inputs.shape[1];
        self.secs.inputs += inputs_started.elapsed().as_secs_f64();
        let run_started = Instant::now();
        let logits = self.run(model, kv, inputs, on_done)?;
        let decoding = self.recycling && self.step > 0;
        // Positions asked for: every input of a recycling batch's decode step, else the one
        // each row continues from where the graph takes `logits_positions`.
        let want = if decoding || !model.graph.logits_positions {
            q
        } else {
            1
        };
        let lq = self.check_logits(&logits, q, self.rows.len(), want)?;
        if decoding {
            self.verify(model, &logits, lq, run_started, on_token, on_done)?;
            drop(logits);
            return self.recycle(model, kv, on_token, on_done);
        }
        debug_assert!(!model.graph.logits_positions || lq == 1);
        let picks = match (&mut model.head, self.use_head) {
            (Some(head), true) => {
                let index: Vec<i64> = (0..self.rows.len())
                    .map(|r| self.continue_at(r, lq) as i64)
                    .collect();
                let tops = head.top(&logits, &index, lq, self.head_k)?;
                self.secs.run += run_started.elapsed().as_secs_f64();
                self.pick_on_head(tops)
            }
            _ => {
                let at: Vec<Option<(usize, usize)>> = (0..self.rows.len())
                    .map(|r| {
                        let from = r * lq + self.continue_at(r, lq);
                        (!self.rows[r].done()).then(|| (from, self.position(r)))
                    })
                    .collect();
                self.pick_on_host(model, &logits, &at, run_started)?
            }
        };
        drop(logits);
        let more = self.record(model, picks, on_token, on_done)?;
        // The prefill (step 0) put each prompt in place; every decode step one token more.
        for r in 0..self.rows.len() {
            self.past[r] = if self.step == 0 {
                self.lens[r]
            } else {
                self.past[r] + 1
            };
        }
        match self.recycling {
            true => self.recycle(model, kv, on_token, on_done),
            false => Ok(more),
        }
    }

    /// The position of row `r`'s input whose logits are read at this step (its last prompt
    /// token at the prefill).
    fn position(&self, r: usize) -> usize {
        match self.step {
            0 => self.lens[r] - 1,
            _ => self.past[r],
        }
    }

    /// Step `self.step`'s inputs: the right-padded prompts at prefill, each row's last token
    /// after.
    fn inputs(&mut self, model: &Model, kv: &dyn KvCache) -> Result<StepInputs, EngineError> {
        let (b, step) = (self.rows.len(), self.step);
        if self.recycling && step > 0 {
            return self.decode_inputs(model);
        }
        let total = if step == 0 {
            self.longest
        } else {
            self.longest + step
        };
        let width = kv.mask_width(step, total);
        let (ids, mask, positions, q) = step_tensors(
            model.graph.layout,
            step,
            &self.jobs,
            &self.lens,
            &self.last_tokens,
            model.tokens.pad,
            width,
        );
        // Only the position each row continues from: its last prompt token at prefill, the
        // one new token after.
        let logits_positions = match model.graph.logits_positions {
            true => {
                let at: Vec<i64> = (0..b)
                    .map(|r| {
                        if step == 0 {
                            self.lens[r] as i64 - 1
                        } else {
                            0
                        }
                    })
                    .collect();
                Some(Tensor::<i64>::from_array(([b, 1], at)).map_err(EngineError::run)?)
            }
            false => None,
        };
        Ok(StepInputs {
            step,
            ids: Tensor::<i64>::from_array(([b, q], ids)).map_err(EngineError::run)?,
            mask: Tensor::<i64>::from_array(([b, width], mask)).map_err(EngineError::run)?,
            positions,
            shape: [b, q],
            vocab: self.vocab,
            logits_on_device: self.use_head,
            logits_positions,
        })
    }

    /// Run the model on `inputs`. Pipelined (greedy on the device head): the previous step's
    /// bookkeeping runs on another thread while the GPU runs this step; rows it finishes are
    /// published now.
    fn run<'k>(
        &mut self,
        model: &mut Model,
        kv: &'k mut dyn KvCache,
        inputs: StepInputs,
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<Logits<'k>, EngineError> {
        let threads = model.sampling_threads;
        let Batch {
            jobs,
            rows,
            pending,
            pieces,
            tokenizer,
            eos,
            max_stop,
            ..
        } = self;
        let (logits, recorded) = std::thread::scope(|scope| {
            let record = pending.take().map(|(picks, now): (Vec<_>, f64)| {
                let (pieces, tokenizer, eos) = (&*pieces, &**tokenizer, &eos[..]);
                let max_stop = *max_stop;
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
            let logits = kv.run(model, inputs);
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
        self.publish_done(model, on_done)?;
        Ok(logits)
    }

    /// Check the logits' shape for `q` inputs per row of `rows`, `want` positions asked for;
    /// returns how many positions they hold (and learns the vocabulary size).
    fn check_logits(
        &mut self,
        logits: &DynValue,
        q: usize,
        rows: usize,
        want: usize,
    ) -> Result<usize, EngineError> {
        let shape: Vec<i64> = logits.shape().to_vec();
        if shape.len() != 3 || shape[0] as usize != rows {
            return Err(EngineError::Run(format!(
                "logits have shape {shape:?}, expected [batch, seq, vocab]"
            )));
        }
        let lq = shape[1] as usize;
        self.vocab = shape[2] as usize;
        if lq != want && !(lq == 1 && (rows == 1 || self.lens.iter().all(|&l| l == self.longest))) {
            return Err(EngineError::Run(format!(
                "the graph returns {lq} positions for {q} inputs; batched prompts of different lengths need logits for every position"
            )));
        }
        Ok(lq)
    }

    /// The position row `r` continues from among `lq` logits positions: its last prompt token
    /// at prefill.
    fn continue_at(&self, r: usize, lq: usize) -> usize {
        continue_at(&self.lens, self.step, r, lq)
    }

    /// Each unfinished row's pick from the device head's top alternatives.
    fn pick_on_head(&mut self, tops: Vec<Vec<(usize, f32)>>) -> Vec<Option<Choice>> {
        let mut picks: Vec<Option<Choice>> = vec![None; self.rows.len()];
        for (r, mut top) in tops.into_iter().enumerate() {
            if self.rows[r].done() {
                continue;
            }
            let (token, logprob) = top[0];
            // Only a guided row needs the alternatives beyond those it records.
            let all = self.guided[r].map(|_| top.clone());
            top.truncate(self.jobs[r].top_logprobs);
            let pick = sampling::Pick {
                token,
                logprob,
                top,
            };
            let gap = |accepted| match &all {
                Some(all) => Gap::from_top(all, accepted),
                None => Gap::AtLeast(f32::INFINITY),
            };
            picks[r] = Some(guide_pick(&mut self.guided[r], &self.jobs[r], pick, gap));
        }
        picks
    }

    /// The pick of each row `r` with logits at `at[r]` (an index into the logits' rows x
    /// positions, and the position in the row's sequence they are for), on the host (sampled,
    /// or greedy).
    fn pick_on_host(
        &mut self,
        model: &Model,
        logits: &DynValue,
        at: &[Option<(usize, usize)>],
        run_started: Instant,
    ) -> Result<Vec<Option<Choice>>, EngineError> {
        let vocab = self.vocab;
        let data: Cow<'_, [f32]> = match model.graph.logits_type {
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
        self.secs.run += run_started.elapsed().as_secs_f64();
        let data = match model.logit_noise {
            Some(noise) => {
                let mut owned = data.into_owned();
                for &(at, position) in at.iter().flatten() {
                    let off = at * vocab;
                    noise.apply(&mut owned[off..off + vocab], position);
                }
                Cow::Owned(owned)
            }
            None => data,
        };
        let row_at = |r: usize| -> &[f32] {
            let off = at[r].map_or(0, |(at, _)| at) * vocab;
            &data[off..off + vocab]
        };
        let jobs = &self.jobs;
        let mut active: Vec<sampling::RowChoice<'_>> = self
            .rows
            .iter_mut()
            .enumerate()
            .filter(|(r, _)| at[*r].is_some())
            .map(|(r, row)| sampling::RowChoice {
                row: r,
                rng: &mut row.rng,
                sampler: &jobs[r].sampler,
                top_logprobs: jobs[r].top_logprobs,
            })
            .collect();
        let mut picks: Vec<Option<Choice>> = vec![None; jobs.len()];
        for (r, p) in sampling::pick_rows(&row_at, &mut active, model.sampling_threads) {
            let top = p.token;
            let gap = |accepted| Gap::from_logits(row_at(r), top, accepted);
            picks[r] = Some(guide_pick(&mut self.guided[r], &jobs[r], p, gap));
        }
        Ok(picks)
    }

    /// Take this step's picks: decode their pieces, count their tokens, then record them into
    /// the rows now or (pipelined) during the next step. False once every row has finished.
    fn record(
        &mut self,
        model: &Model,
        picks: Vec<Option<Choice>>,
        on_token: &mut dyn FnMut(),
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<bool, EngineError> {
        let host_started = Instant::now();
        let now = self.start.elapsed().as_secs_f64();
        // Every piece this step needs, decoded once (serially: the cache is shared), then
        // the rows in parallel: detokenizing and searching stop strings is per-row work
        // that at a batch of 100+ rows takes as long as the GPU's step.
        for (pick, _) in picks.iter().flatten() {
            piece(&mut self.pieces, &self.tokenizer, pick.token as u32);
            for &(i, _) in &pick.top {
                piece(&mut self.pieces, &self.tokenizer, i as u32);
            }
        }
        let chosen = picks.iter().flatten().count();
        for (r, pick) in picks.iter().enumerate() {
            if let Some((pick, _)) = pick {
                self.last_tokens[r] = pick.token as u32;
            }
        }
        for _ in 0..chosen {
            on_token();
        }
        self.read_device_memory(model);
        if self.pipelined {
            self.secs.host += host_started.elapsed().as_secs_f64();
            if chosen == 0 {
                return Ok(false); // every row finished by the previous step
            }
            self.pending = Some((picks, now));
            return Ok(true);
        }
        let shared = StepShared {
            pieces: &self.pieces,
            tokenizer: &self.tokenizer,
            eos: &self.eos,
            max_stop: self.max_stop,
            now,
        };
        record_rows(
            rows_with(&mut self.rows, picks, &self.jobs),
            &shared,
            model.sampling_threads,
        )?;
        self.publish_done(model, on_done)?;
        self.secs.host += host_started.elapsed().as_secs_f64();
        Ok(!self.rows.iter().all(Row::done))
    }

    /// The arena reaches its high-water mark with the prefill and the first decode step (the
    /// graph's capture); later steps reuse it: read it once, on another thread.
    fn read_device_memory(&mut self, model: &Model) {
        if self.step == 1 && model.provider == Provider::Cuda {
            let device_id = model.device_id;
            self.reading = std::thread::Builder::new()
                .name("codegen-device-memory".into())
                .spawn(move || machine::process_gpu_bytes_on(device_id))
                .ok();
        }
        if self.reading.as_ref().is_some_and(|h| h.is_finished()) {
            let read = self.reading.take().and_then(|h| h.join().ok()).flatten();
            self.device_peak = self.device_peak.max(read);
        }
    }

    /// Hand every newly finished row to `on_done`.
    fn publish_done(
        &mut self,
        model: &Model,
        on_done: &mut dyn FnMut(usize, Completion),
    ) -> Result<(), EngineError> {
        for r in 0..self.rows.len() {
            if self.rows[r].done() && !self.published[r] {
                self.published[r] = true;
                let usage = Usage {
                    prompt_tokens: self.lens[r],
                    total_ms: (self.start.elapsed().as_secs_f64() - self.rows[r].started_at)
                        * 1000.0,
                    peak_host_bytes: machine::peak_host_bytes(),
                    peak_device_bytes: self.device_peak,
                    drafted: self.drafted[r],
                };
                on_done(self.job_of[r], model.finish_row(&mut self.rows[r], usage)?);
            }
        }
        Ok(())
    }

    /// Give the model back its pieces and the device reading, and print the profile line.
    fn finish(self, model: &mut Model) {
        model.pieces = self.pieces;
        let mut device_peak = self.device_peak;
        if let Some(h) = self.reading {
            device_peak = device_peak.max(h.join().ok().flatten());
        }
        model.device_peak = device_peak;
        let total_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if model.profile {
            eprintln!(
                "codegen: batch of {} sequences: {} steps, {:.0} ms total, {:.0} ms in ONNX Runtime, {:.0} ms detokenizing, {:.0} ms waiting for other sessions, {:.0} ms building inputs, prompts up to {} tokens, device memory {} MiB",
                self.all.len(),
                self.step + 1,
                total_ms,
                self.secs.run * 1000.0,
                self.secs.host * 1000.0,
                self.secs.wait * 1000.0,
                self.secs.inputs * 1000.0,
                self.longest,
                match model.provider {
                    Provider::Cuda =>
                        machine::process_gpu_bytes_on(model.device_id).map_or(0, |b| b >> 20),
                    Provider::Cpu => 0,
                }
            );
        }
    }
}

/// The position row `r` continues from among `lq` logits positions at step `step`: its last
/// prompt token at prefill (when the graph returns every position), else the only one.
fn continue_at(lens: &[usize], step: usize, r: usize, lq: usize) -> usize {
    if lq == 1 || step > 0 { 0 } else { lens[r] - 1 }
}

impl Model {
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
        let first_at = row.first_at.unwrap_or(row.started_at);
        let first = first_at - row.started_at;
        let decode_s = row.last_at - first_at;
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
                draft_tokens: usage.drafted.0,
                accepted_draft_tokens: usage.drafted.1,
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
