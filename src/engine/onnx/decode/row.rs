//! One row of a batch being decoded: its state (trace, text, stop and finish), the step
//! tensors, and the bookkeeping that records each step's picks, on several threads when the
//! batch is wide.

use crate::engine::onnx::detok::Detokenizer;
use crate::engine::onnx::error::EngineError;
use crate::engine::onnx::folder::Layout;
use crate::engine::onnx::follow::{Gap, Mark, follow_step};
use crate::engine::onnx::sampling::{self, Rng};
use crate::engine::{FinishReason, Followed, KeptStep, TokenTrace};
use tokenizers::Tokenizer;

use super::SeqJob;

/// The state of one row of a batch.
pub(super) struct Row {
    pub(super) rng: Rng,
    pub(super) detok: Detokenizer,
    pub(super) trace: TokenTrace,
    pub(super) text: String,
    pub(super) finish: Option<FinishReason>,
    /// When the row's sequence started (its prefill), its first token and its last, in
    /// seconds since the batch started.
    pub(super) started_at: f64,
    pub(super) first_at: Option<f64>,
    pub(super) last_at: f64,
    pub(super) accept_key: Option<String>,
    pub(super) followed: Option<Followed>,
}

impl Row {
    pub(super) fn new(job: &SeqJob) -> Row {
        Row {
            rng: Rng::new(job.seed),
            detok: Detokenizer::default(),
            trace: TokenTrace::default(),
            text: String::new(),
            finish: (job.max_new == 0).then_some(FinishReason::MaxNewTokens),
            started_at: 0.0,
            first_at: None,
            last_at: 0.0,
            accept_key: job.accept_key.clone(),
            followed: job.guide.as_ref().map(|g| Followed::Kept {
                tolerance: g.tolerance,
            }),
        }
    }

    /// Take a picked token: its trace entry, its text, whether the row finished; and what the
    /// accepted output's rule decided at this step, if the row is guided.
    pub(super) fn record(
        &mut self,
        (pick, mark): Choice,
        job: &SeqJob,
        shared: &StepShared<'_>,
    ) -> Result<(), EngineError> {
        let step = self.trace.ids.len();
        match (mark, self.followed) {
            (Some(Mark::Kept { gap }), _) => self.trace.kept.push(KeptStep { step, gap }),
            (Some(Mark::Left { gap }), Some(Followed::Kept { tolerance })) => {
                self.followed = Some(Followed::Left {
                    step,
                    gap,
                    tolerance,
                })
            }
            _ => {}
        }
        let tok = pick.token as u32;
        let piece = |id: u32| shared.pieces.get(&id).cloned().unwrap_or_default();
        let top: Vec<(u32, String, f32)> = pick
            .top
            .into_iter()
            .map(|(i, l)| (i as u32, piece(i as u32), l))
            .collect();
        self.trace.ids.push(tok);
        self.trace.pieces.push(piece(tok));
        self.trace.logprobs.push(pick.logprob);
        self.trace.top.push(top);
        self.first_at.get_or_insert(shared.now);
        self.last_at = shared.now;
        self.accept(tok, job, shared.eos, shared.tokenizer, shared.max_stop)
    }

    pub(super) fn done(&self) -> bool {
        self.finish.is_some()
    }

    /// Take token `tok` and its text; decide whether the row has finished. `max_stop` is the
    /// longest stop string of the batch: only the text it can reach back into is searched.
    pub(super) fn accept(
        &mut self,
        tok: u32,
        job: &SeqJob,
        eos: &[u32],
        tokenizer: &Tokenizer,
        max_stop: usize,
    ) -> Result<(), EngineError> {
        if eos.contains(&tok) {
            self.finish = Some(FinishReason::Eos);
            return Ok(());
        }
        let before = self.text.len();
        let piece = self
            .detok
            .push(tokenizer, tok)
            .map_err(EngineError::Generate)?;
        self.text.push_str(&piece);
        if !piece.is_empty() && max_stop > 0 {
            let from = before.saturating_sub(max_stop);
            let from = (0..=from)
                .rev()
                .find(|&i| self.text.is_char_boundary(i))
                .unwrap_or(0);
            let hit = job
                .stop
                .iter()
                .filter(|st| !st.is_empty())
                .filter_map(|st| self.text[from..].find(st.as_str()).map(|p| (from + p, st)))
                .min_by_key(|(p, _)| *p);
            if let Some((p, st)) = hit {
                self.text.truncate(p);
                self.finish = Some(FinishReason::Stop(st.clone()));
                return Ok(());
            }
        }
        if let Some(answer) = &job.answer
            && piece.contains('\n')
            && answer.reached(&self.text)
        {
            self.finish = Some(FinishReason::Answer);
            return Ok(());
        }
        if self.trace.ids.len() >= job.max_new {
            self.finish = Some(FinishReason::MaxNewTokens);
        }
        Ok(())
    }
}

/// Token ids, attention mask and positions of step `step` (0: the right-padded prompts; k >= 1:
/// generated token k-1), for prompts of `lens` tokens padded to the longest, with a mask
/// `width` wide. (Batches that recycle rows build their decode steps per row instead.)
pub(crate) fn step_tensors(
    layout: Layout,
    step: usize,
    jobs: &[SeqJob],
    lens: &[usize],
    last_tokens: &[u32],
    pad: u32,
    width: usize,
) -> (Vec<i64>, Vec<i64>, Vec<i64>, usize) {
    let b = jobs.len();
    let s = *lens.iter().max().expect("non-empty batch");
    let (q, total) = if step == 0 { (s, s) } else { (1, s + step) };
    let mut ids = vec![pad as i64; b * q];
    let mut mask = vec![0i64; b * width];
    let mut pos = vec![0i64; b * q];
    for r in 0..b {
        if step == 0 {
            for (j, &t) in jobs[r].prompt_ids.iter().enumerate() {
                ids[r * q + j] = t as i64;
            }
            for j in 0..s {
                pos[r * q + j] = j as i64;
            }
            for j in 0..lens[r] {
                mask[r * width + j] = 1;
            }
        } else {
            ids[r] = last_tokens[r] as i64;
            pos[r] = (lens[r] + step - 1) as i64;
            match layout {
                Layout::Genai => {
                    for j in 0..lens[r] + step {
                        mask[r * width + j] = 1;
                    }
                }
                Layout::Optimum => {
                    for j in 0..total {
                        mask[r * width + j] = i64::from(j < lens[r] || j >= s);
                    }
                }
            }
        }
    }
    (ids, mask, pos, q)
}

/// Alternatives the device head returns for a guided row: an accepted token within any
/// sensible tolerance of the top choice is among them.
pub(super) const GUIDED_HEAD_K: usize = 8;

/// `pick` for a row, or the accepted token in its place where the rule keeps it. `guided`: the
/// row's place in its accepted tokens, `None` once it decodes freely; `gap(accepted)`: how far
/// below the pick the accepted token is on this machine.
pub(super) fn guide_pick(
    guided: &mut Option<usize>,
    job: &SeqJob,
    pick: sampling::Pick,
    gap: impl Fn(usize) -> Gap,
) -> Choice {
    let (Some(next), Some(guide)) = (*guided, job.guide.as_ref()) else {
        return (pick, None);
    };
    let Some(&accepted) = guide.tokens.get(next) else {
        // Past the accepted output's end (it cannot be, under the same key): decode freely.
        *guided = None;
        return (pick, None);
    };
    let (pick, mark) = follow_step(pick, accepted, gap(accepted as usize), guide.tolerance);
    *guided = match mark {
        Some(Mark::Left { .. }) => None,
        _ => Some(next + 1),
    };
    (pick, mark)
}

/// Rows per bookkeeping thread (and the narrowest batch that is pipelined).
pub(super) const ROWS_PER_THREAD: usize = 16;

/// What a finished row's timing says beyond its own tokens.
pub(super) struct Usage {
    pub(super) prompt_tokens: usize,
    /// Since the row's sequence started, until it finished.
    pub(super) total_ms: f64,
    pub(super) peak_host_bytes: Option<u64>,
    pub(super) peak_device_bytes: Option<u64>,
    /// Draft tokens proposed and accepted.
    pub(super) drafted: (usize, usize),
}

/// What every row's bookkeeping reads during a step.
pub(super) struct StepShared<'a> {
    pub(super) pieces: &'a std::collections::HashMap<u32, String>,
    pub(super) tokenizer: &'a Tokenizer,
    pub(super) eos: &'a [u32],
    pub(super) max_stop: usize,
    pub(super) now: f64,
}

/// A row's pick for one step, and what the accepted output's rule decided there.
pub(super) type Choice = (sampling::Pick, Option<Mark>);

/// Each row with its pick and its job, for [`record_rows`].
pub(super) fn rows_with<'a>(
    rows: &'a mut [Row],
    picks: Vec<Option<Choice>>,
    jobs: &'a [SeqJob],
) -> Vec<(&'a mut Row, Option<Choice>, &'a SeqJob)> {
    rows.iter_mut()
        .zip(picks)
        .zip(jobs)
        .map(|((row, pick), job)| (row, pick, job))
        .collect()
}

/// The text of one token, decoded once and remembered in `pieces`.
pub(super) fn piece(
    pieces: &mut std::collections::HashMap<u32, String>,
    tokenizer: &Tokenizer,
    id: u32,
) {
    pieces
        .entry(id)
        .or_insert_with(|| tokenizer.decode(&[id], false).unwrap_or_default());
}

/// Record each row's pick (its trace, its text, whether it finished), on up to `threads`
/// threads when the batch is wide enough to pay for them.
pub(super) fn record_rows(
    work: Vec<(&mut Row, Option<Choice>, &SeqJob)>,
    shared: &StepShared<'_>,
    threads: usize,
) -> Result<(), EngineError> {
    let record = |(row, pick, job): (&mut Row, Option<Choice>, &SeqJob)| match pick {
        Some(pick) => row.record(pick, job, shared),
        None => Ok(()),
    };
    let threads = threads.min(work.len() / ROWS_PER_THREAD).max(1);
    if threads == 1 {
        return work.into_iter().try_for_each(record);
    }
    let per = work.len().div_ceil(threads);
    let mut chunks: Vec<Vec<_>> = Vec::new();
    let mut work = work.into_iter().peekable();
    while work.peek().is_some() {
        chunks.push(work.by_ref().take(per).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(|| chunk.into_iter().try_for_each(&record)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("row bookkeeping thread"))
    })
}
