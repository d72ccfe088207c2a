//! One scheduler per loaded model: requests become keyed sequence jobs (one per distinct
//! sample, the key being what determines the output), jobs the generation cache or an earlier
//! request already answers are not generated again, and the rest are generated in batches
//! (sorted by prompt length, `batch_size` at a time), publishing each batch's results as it
//! finishes. Callers wait for their own keys. With several sessions (one per GPU of
//! `device = "cuda:0,1"`) each takes the next batch as it finishes its last, and the batches
//! are cut so that every session gets the same number of rounds.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::ENGINE_VERSION;
use super::answer::AnswerStop;
use super::decode::SeqJob;
use super::error::EngineError;
use super::follow::Guide;
use super::gencache::GenerationCache;
use super::model::{Footprint, Model};
use super::progress::Progress;
use super::sampling::Sampler;
use crate::device::Provider;
use crate::engine::{Completion, DeviceUsage, GenerationSettings, Request};
use crate::prompt::{Prompt, TemplateTokens, render_chat_prompt};
use crate::provision::cache::hex;

/// Prompt rendering and tokenization, usable while the model is busy.
#[derive(Clone)]
pub(crate) struct Encoder {
    pub dir: PathBuf,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub template_tokens: TemplateTokens,
}

impl Encoder {
    /// The token ids of a prompt, exactly as the engine feeds them (a chat prompt's prefill
    /// after the template's generation prompt).
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let (text, special) = prompt_text(
            &self.dir,
            self.chat_template.as_deref(),
            &self.template_tokens,
            prompt,
        )?;
        let enc = self
            .tokenizer
            .encode(text.as_str(), special)
            .map_err(|e| EngineError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// The text a prompt is tokenized from (the chat template rendered, with the prefill after the
/// generation prompt), and whether the tokenizer adds its special tokens (completion prompts).
pub(crate) fn prompt_text(
    dir: &std::path::Path,
    chat_template: Option<&str>,
    template_tokens: &TemplateTokens,
    prompt: &Prompt,
) -> Result<(String, bool), EngineError> {
    Ok(match prompt {
        Prompt::Chat { messages, prefill } => {
            let template = chat_template.ok_or_else(|| {
                EngineError::ChatPrompt(format!(
                    "{}/tokenizer_config.json has no `chat_template`",
                    dir.display()
                ))
            })?;
            let text = render_chat_prompt(template, messages, prefill.as_deref(), template_tokens)
                .map_err(|e| EngineError::ChatPrompt(e.to_string()))?;
            (text, false)
        }
        Prompt::Complete { prefix } => (prefix.clone(), true),
    })
}

/// What decides a generation beyond the prompt and the settings: part of every cache key.
#[derive(Debug, Clone)]
pub(crate) struct KeyFacts {
    pub model_hash: String,
    pub provider: Provider,
    pub device_head: bool,
    pub cuda_graph: bool,
    /// Attention on our kernel (`attention/`): the same function, other rounding.
    pub own_attention: bool,
}

/// What a batch may hold: the model's context length and the memory budget, which the KV
/// cache of every row and its prefill's activations ([`Footprint`]) must fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub context: Option<usize>,
    pub kv_bytes_per_position: u64,
    pub footprint: Footprint,
    pub budget_bytes: u64,
}

impl Limits {
    /// Positions a sequence's KV cache holds: the prompt, the new tokens and one spare.
    fn positions(job: &SeqJob) -> usize {
        job.prompt_ids.len() + job.max_new + 1
    }

    /// Bytes of a batch of `rows` sequences whose KV caches are padded to `positions` and whose
    /// prompts are padded to `prompt` tokens.
    fn batch_bytes(&self, rows: usize, positions: usize, prompt: usize) -> u64 {
        rows as u64
            * (positions as u64 * self.kv_bytes_per_position
                + prompt as u64 * self.footprint.prefill_bytes_per_token
                + self.footprint.bytes_per_sequence)
    }

    /// Whether one sequence can be generated at all.
    fn check(&self, job: &SeqJob) -> Result<(), EngineError> {
        if let Some(context) = self.context
            && job.prompt_ids.len() + job.max_new > context
        {
            return Err(EngineError::TooLong {
                prompt_tokens: job.prompt_ids.len(),
                max_new_tokens: job.max_new,
                context,
            });
        }
        let positions = Self::positions(job);
        let needed = self.batch_bytes(1, positions, job.prompt_ids.len());
        if needed > self.budget_bytes {
            return Err(EngineError::OverBudget {
                positions,
                needed_bytes: needed,
                budget_bytes: self.budget_bytes,
            });
        }
        Ok(())
    }

    /// Cut `jobs` (sorted by prompt length) into batches of at most `batch_size` rows whose KV
    /// cache fits the budget. With `recycle`, a batch holds any number of jobs, `batch_size`
    /// at a time (a row takes the next job when its own ends). Every job passed
    /// [`Limits::check`], so each fits alone.
    fn batches<T>(
        &self,
        jobs: &[(T, SeqJob)],
        batch_size: usize,
        recycle: bool,
    ) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut longest, mut prompt) = (0, 0, 0);
        for (i, (_, job)) in jobs.iter().enumerate() {
            let positions = longest.max(Self::positions(job));
            let prompt_len = prompt.max(job.prompt_ids.len());
            let jobs_in = i - start + 1;
            let rows = jobs_in.min(batch_size);
            if i > start
                && ((jobs_in > batch_size && !recycle)
                    || self.batch_bytes(rows, positions, prompt_len) > self.budget_bytes)
            {
                out.push(start..i);
                start = i;
                longest = Self::positions(job);
                prompt = job.prompt_ids.len();
            } else {
                longest = positions;
                prompt = prompt_len;
            }
        }
        if start < jobs.len() {
            out.push(start..jobs.len());
        }
        out
    }
}

#[derive(Default)]
struct Results {
    done: HashMap<String, Result<Completion, EngineError>>,
    pending: HashSet<String>,
}

/// A request turned into keyed sequence jobs (one per distinct sample).
pub(crate) struct Planned {
    pub keys: Vec<String>,
    pub jobs: Vec<(String, SeqJob)>,
}

/// Rows per batch when `sessions` sessions share `jobs` sequences, at most `cap` per batch: as
/// many rounds as the cap needs, and every session the same number of batches in each (the
/// time of a batch is its longest row's, so equal rounds finish together).
pub(crate) fn balanced_rows(jobs: usize, cap: usize, sessions: usize) -> usize {
    let cap = cap.max(1);
    if sessions <= 1 || jobs == 0 {
        return cap;
    }
    let rounds = jobs.div_ceil(cap * sessions);
    jobs.div_ceil(sessions * rounds).clamp(1, cap)
}

/// A call of [`Scheduler::run`] under way, counted until it returns (or unwinds).
struct Running<'a>(&'a Scheduler);

impl<'a> Running<'a> {
    fn start(s: &'a Scheduler) -> Running<'a> {
        *s.running.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Running(s)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.idle.notify_all();
    }
}

/// A request's cache keys (one per sample) and the jobs of its distinct keys, its prompt
/// being `prompt_ids`. With `limits`,
/// a sequence that cannot fit is an error; without (the lazy source, which only looks keys up
/// in the cache), nothing is checked.
pub(crate) fn plan(
    prompt_ids: Vec<u32>,
    facts: &KeyFacts,
    settings: &GenerationSettings,
    limits: Option<&Limits>,
    request: &Request<'_>,
) -> Result<Planned, EngineError> {
    let s = settings;
    let max_new = request.max_new_tokens.unwrap_or(s.max_new_tokens);
    let mut stop = s.stop.clone();
    for st in request.stop {
        if !stop.contains(st) {
            stop.push(st.clone());
        }
    }
    let sampler = Sampler {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
    };
    let samples = request.samples.max(1);
    let answer = match request.prompt {
        Prompt::Chat { prefill, .. } if request.stop_at_answer.unwrap_or(s.stop_at_answer) => {
            Some(AnswerStop {
                entry_point: request.entry_point.to_string(),
                prefill: prefill.clone().unwrap_or_default(),
            })
        }
        _ => None,
    };
    let accept_key = sampler
        .is_greedy()
        .then(|| accept_key(&facts.model_hash, &prompt_ids, max_new, &stop));
    // The accepted output is followed only where it was made: same model files, prompt ids
    // and settings (so a new model or prompt is never steered).
    let guide = match (&accept_key, request.accepted) {
        (Some(key), Some(accepted)) if s.follow_accepted.enabled && accepted.key == *key => {
            accepted.samples.first().map(|tokens| Guide {
                tokens: tokens.clone(),
                tolerance: s.follow_accepted.tolerance,
            })
        }
        _ => None,
    };
    let mut keys = Vec::with_capacity(samples);
    let mut jobs = Vec::new();
    for i in 0..samples {
        // Greedy decoding gives one answer whatever the sample index: compute it once.
        let index = if sampler.is_greedy() { 0 } else { i };
        let mut desc = serde_json::json!({
            "engine": ENGINE_VERSION,
            "model": facts.model_hash,
            "provider": facts.provider.as_str(),
            "device_head": facts.device_head.to_string(),
            "prompt_ids": prompt_ids,
            "max_new_tokens": max_new,
            "stop": stop,
            "temperature": s.temperature,
            "top_p": if sampler.is_greedy() { 1.0 } else { s.top_p },
            "top_k": if sampler.is_greedy() { 0 } else { s.top_k },
            "top_logprobs": s.top_logprobs,
            "seed": if sampler.is_greedy() { 0 } else { s.seed },
            "sample": index,
        });
        if facts.cuda_graph {
            // Replayed graphs decode with a fixed-width attention mask: kernels may pick
            // other tiles and differ in the last bit. Other keys stay as they were.
            desc["cuda_graph"] = serde_json::Value::Bool(true);
        }
        if facts.own_attention {
            // Other rounding than ONNX Runtime's kernel, whose runs keep their keys.
            desc["attention"] = serde_json::Value::from("own");
        }
        if let Some(answer) = &answer {
            // Keys without the option stay as they were.
            desc["stop_at_answer"] = serde_json::Value::String(answer.entry_point.clone());
        }
        if let Some(guide) = &guide {
            desc["follow"] = serde_json::json!({
                "accepted": hex(&Sha256::digest(format!("{:?}", guide.tokens).as_bytes())),
                "tolerance": guide.tolerance,
            });
        }
        let key = hex(&Sha256::digest(desc.to_string().as_bytes()));
        if !keys.contains(&key) {
            // The stream of sample i depends on (seed, prompt, i) only.
            let seed_hash =
                Sha256::digest(format!("{}:{}:{:?}", s.seed, index, prompt_ids).as_bytes());
            let seed = u64::from_le_bytes(seed_hash[..8].try_into().expect("8 bytes"));
            let job = SeqJob {
                prompt_ids: prompt_ids.clone(),
                max_new,
                stop: stop.clone(),
                sampler,
                seed,
                top_logprobs: s.top_logprobs,
                guide: guide.clone(),
                accept_key: accept_key.clone(),
                answer: answer.clone(),
            };
            // Checked before any batch holds it: a prompt that cannot fit fails alone.
            if let Some(limits) = limits {
                limits.check(&job)?;
            }
            jobs.push((key.clone(), job));
        }
        keys.push(key);
    }
    Ok(Planned { keys, jobs })
}

/// What a greedy generation is accepted under: the model files, the prompt's token ids and the
/// settings that decide it, as `model <12 hex>, prompt <12 hex> (<n> tokens), settings <12
/// hex>`, so that a reviewer sees which of them changed.
pub(crate) fn accept_key(
    model_hash: &str,
    prompt_ids: &[u32],
    max_new: usize,
    stop: &[String],
) -> String {
    let short = |bytes: &[u8]| hex(&Sha256::digest(bytes))[..12].to_string();
    let settings = serde_json::json!({"greedy": true, "max_new_tokens": max_new, "stop": stop});
    format!(
        "model {}, prompt {} ({} tokens), settings {}",
        &model_hash[..model_hash.len().min(12)],
        short(format!("{prompt_ids:?}").as_bytes()),
        prompt_ids.len(),
        short(settings.to_string().as_bytes()),
    )
}

/// The model (one session per device), its cache and what is being generated.
pub(crate) struct Scheduler {
    pub models: Vec<Mutex<Model>>,
    /// Per session, what it generated (same order as `models`).
    usage: Mutex<Vec<DeviceUsage>>,
    /// The GPUs whose free memory is read again when a run starts (other engines of the
    /// process may have taken some since this one was loaded); `None` when the budget is fixed.
    pub free_memory_budget: Option<Vec<u32>>,
    /// Calls of `run` under way: rows are published before their batch's figures are added.
    running: Mutex<usize>,
    /// One session whose batches recycle rows ([`Model::recycles_rows`]).
    recycles: bool,
    idle: Condvar,
    pub encoder: Encoder,
    pub facts: KeyFacts,
    limits: Limits,
    pub cache: GenerationCache,
    pub settings: GenerationSettings,
    pub progress: bool,
    results: Mutex<Results>,
    finished: Condvar,
    generated: Mutex<u64>,
}

impl Scheduler {
    pub fn new(
        models: Vec<Model>,
        encoder: Encoder,
        facts: KeyFacts,
        limits: Limits,
        cache: GenerationCache,
        settings: GenerationSettings,
        progress: bool,
    ) -> Scheduler {
        let several = models.len() > 1;
        let recycles = models.len() == 1 && models[0].recycles_rows();
        let usage = models
            .iter()
            .enumerate()
            .map(|(i, m)| DeviceUsage {
                device: match m.provider {
                    Provider::Cuda => format!("cuda:{}", m.device_id),
                    Provider::Cpu if several => format!("cpu#{i}"),
                    Provider::Cpu => "cpu".to_string(),
                },
                ..DeviceUsage::default()
            })
            .collect();
        Scheduler {
            models: models.into_iter().map(Mutex::new).collect(),
            usage: Mutex::new(usage),
            running: Mutex::new(0),
            recycles,
            idle: Condvar::new(),
            free_memory_budget: None,
            encoder,
            facts,
            limits,
            cache,
            settings,
            progress,
            results: Mutex::new(Results::default()),
            finished: Condvar::new(),
            generated: Mutex::new(0),
        }
    }

    /// What each session generated, once no generation is under way (every row is published
    /// a moment before its batch's figures are counted).
    pub fn usage(&self) -> Vec<DeviceUsage> {
        let mut running = self.running.lock().expect("running lock");
        while *running > 0 {
            running = self.idle.wait(running).expect("running lock");
        }
        self.usage.lock().expect("usage lock").clone()
    }

    /// How many sequences were generated (cache hits excluded).
    pub fn generated(&self) -> u64 {
        *self.generated.lock().expect("counter lock")
    }

    pub fn plan(&self, request: &Request<'_>) -> Result<Planned, EngineError> {
        plan(
            self.encoder.encode(request.prompt)?,
            &self.facts,
            &self.settings,
            Some(&self.limits),
            request,
        )
    }

    /// Take the jobs nobody has started and that the cache does not answer.
    pub fn claim(&self, jobs: Vec<(String, SeqJob)>) -> Vec<(String, SeqJob)> {
        let mut st = self.results.lock().expect("scheduler lock");
        let mut todo = Vec::new();
        for (key, job) in jobs {
            if st.done.contains_key(&key) || st.pending.contains(&key) {
                continue;
            }
            if let Some(hit) = self.cache.get(&key) {
                st.done.insert(key, Ok(hit));
                continue;
            }
            st.pending.insert(key.clone());
            todo.push((key, job));
        }
        todo
    }

    /// Wait until every key has a result, then return them in order.
    pub fn wait(&self, keys: &[String]) -> Vec<Result<Completion, EngineError>> {
        let mut st = self.results.lock().expect("scheduler lock");
        while !keys.iter().all(|k| st.done.contains_key(k)) {
            st = self.finished.wait(st).expect("scheduler lock");
        }
        keys.iter().map(|k| st.done[k].clone()).collect()
    }

    /// Generate `todo` in batches, publishing results as each batch finishes. With several
    /// sessions, each takes the next batch when its last one ends.
    pub fn run(&self, mut todo: Vec<(String, SeqJob)>) {
        if todo.is_empty() {
            return;
        }
        let _running = Running::start(self);
        // One engine at a time on the GPUs: the profiles of a run take turns, each with the
        // free memory its turn starts with.
        let _turn = (self.facts.provider == Provider::Cuda).then(super::gate::engine_turn);
        let mut limits = self.limits;
        if let Some(now) = self
            .free_memory_budget
            .as_deref()
            .and_then(super::cuda_budget)
        {
            limits.budget_bytes = limits.budget_bytes.min(now);
        }
        let budgets: Vec<usize> = todo.iter().map(|(_, j)| j.max_new).collect();
        let progress = Progress::new(&budgets, self.progress);
        let generated = todo.len() as u64;
        todo.sort_by(|a, b| {
            a.1.prompt_ids
                .len()
                .cmp(&b.1.prompt_ids.len())
                .then(a.0.cmp(&b.0))
        });
        let sessions = self.models.len();
        let cap = self.settings.batch_size.rows(self.facts.provider);
        let rows = balanced_rows(todo.len(), cap, sessions);
        // One session that recycles rows keeps them all busy until no job waits; several
        // sessions share out whole batches.
        let batches = limits.batches(&todo, rows, self.recycles);
        if sessions == 1 {
            for range in batches {
                self.run_batch(0, &todo[range], rows, &progress);
            }
        } else {
            let next = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for session in 0..sessions {
                    let (next, batches, todo, progress) = (&next, &batches, &todo, &progress);
                    let spawned = std::thread::Builder::new()
                        .name(format!("codegen-session-{session}"))
                        .spawn_scoped(scope, move || {
                            loop {
                                let i = next.fetch_add(1, Ordering::SeqCst);
                                let Some(range) = batches.get(i) else { break };
                                let chunk = &todo[range.clone()];
                                self.run_batch(session, chunk, chunk.len(), progress);
                            }
                        });
                    if let Err(e) = spawned {
                        // The other sessions take its batches.
                        eprintln!("codegen: failed to start session {session}'s thread: {e}");
                    }
                }
            });
            // A batch no thread could take (every spawn failed) is generated here.
            let i = next.load(Ordering::SeqCst);
            for range in batches.iter().skip(i) {
                let chunk = &todo[range.clone()];
                self.run_batch(0, chunk, chunk.len(), &progress);
            }
        }
        *self.generated.lock().expect("counter lock") += generated;
        progress.finish();
    }

    /// Hand one sequence's result to its waiting callers (and the cache, when it is one).
    fn publish(&self, key: &str, result: Result<Completion, EngineError>) {
        if let Ok(done) = &result {
            self.cache.put(key, done);
        }
        {
            let mut st = self.results.lock().expect("scheduler lock");
            st.pending.remove(key);
            st.done.insert(key.to_string(), result);
        }
        self.finished.notify_all();
    }

    /// Generate one batch on session `session`, at most `rows` sequences at a time,
    /// publishing each sequence as it finishes.
    fn run_batch(
        &self,
        session: usize,
        chunk: &[(String, SeqJob)],
        rows: usize,
        progress: &Progress,
    ) {
        let jobs: Vec<SeqJob> = chunk.iter().map(|(_, j)| j.clone()).collect();
        let mut handed = vec![false; chunk.len()];
        let mut tokens = 0u64;
        let batch_started = Instant::now();
        let (result, device_peak) = {
            let mut model = self.models[session].lock().expect("model lock");
            // Each row is published the moment it finishes: its caller scores it while
            // the batch's longer rows are still generating.
            let mut on_done = |r: usize, out: Completion| {
                handed[r] = true;
                let generated = out.timing.as_ref().map_or(0, |t| t.generated_tokens);
                progress.row_done(generated, chunk[r].1.max_new);
                self.publish(&chunk[r].0, Ok(out));
            };
            let mut on_token = || {
                tokens += 1;
                progress.token();
            };
            // A panic must not leave `complete` callers waiting forever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                model.generate_batch(&jobs, rows, &mut on_token, &mut on_done)
            }))
            .unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(EngineError::Generate(format!(
                    "the engine panicked: {what}"
                )))
            });
            (result, model.device_peak)
        };
        {
            let mut usage = self.usage.lock().expect("usage lock");
            let u = &mut usage[session];
            u.batches += 1;
            u.sequences += chunk.len();
            u.generated_tokens += tokens;
            u.busy_s += batch_started.elapsed().as_secs_f64();
            u.tokens_per_s = u.generated_tokens as f64 / u.busy_s.max(1e-9);
            u.peak_device_bytes = u.peak_device_bytes.max(device_peak);
        }
        // Rows the batch did not hand over share its error.
        let failed: Vec<&String> = chunk
            .iter()
            .zip(&handed)
            .filter(|(_, handed)| !**handed)
            .map(|((key, _), _)| key)
            .collect();
        if !failed.is_empty() {
            let e = result.err().unwrap_or_else(|| {
                EngineError::Generate("the batch ended without this sequence".into())
            });
            for key in &failed {
                let max_new = chunk
                    .iter()
                    .find(|(k, _)| k == *key)
                    .map_or(0, |(_, j)| j.max_new);
                progress.row_done(0, max_new);
            }
            let mut st = self.results.lock().expect("scheduler lock");
            for key in &failed {
                st.pending.remove(*key);
                st.done.insert((*key).clone(), Err(e.clone()));
            }
            drop(st);
            self.finished.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(prompt: usize, max_new: usize) -> ((), SeqJob) {
        ((), SeqJob::greedy(vec![1; prompt], max_new))
    }

    const LIMITS: Limits = Limits {
        context: Some(100),
        kv_bytes_per_position: 10,
        footprint: Footprint {
            prefill_bytes_per_token: 0,
            bytes_per_sequence: 0,
        },
        budget_bytes: 2_000,
    };

    #[test]
    fn a_prompt_longer_than_the_context_fails_with_both_numbers() {
        assert!(LIMITS.check(&job(80, 20).1).is_ok());
        let err = LIMITS.check(&job(90, 20).1).unwrap_err().to_string();
        assert!(
            err.contains("the prompt is 90 tokens and max_new_tokens is 20, 110 in all, more than the model's context length of 100 tokens"),
            "{err}"
        );
        let small = Limits {
            context: None,
            budget_bytes: 500,
            ..LIMITS
        };
        assert!(matches!(
            small.check(&job(60, 10).1),
            Err(EngineError::OverBudget { positions: 71, .. })
        ));
    }

    #[test]
    fn sessions_get_equal_rounds() {
        // One GPU: the cap. Two: 164 greedy rows are one round of 82 each; 1640 rows at a cap of
        // 256 are four rounds of 205 each (not seven of 256 shared four and three).
        assert_eq!(balanced_rows(164, 256, 1), 256);
        assert_eq!(balanced_rows(164, 256, 2), 82);
        assert_eq!(balanced_rows(1640, 256, 2), 205);
        assert_eq!(balanced_rows(3, 8, 4), 1);
        assert_eq!(balanced_rows(0, 8, 2), 8);
        assert_eq!(balanced_rows(10, 0, 2), 1);
    }

    #[test]
    fn batches_are_cut_to_the_budget_and_the_batch_size() {
        // 10 bytes per position, 2000 per batch: rows x positions <= 200.
        let jobs = [
            job(10, 9),
            job(10, 9),
            job(30, 9),
            job(30, 9),
            job(30, 9),
            job(60, 9),
        ];
        // Positions 20, 20, 40, 40, 40, 70: five rows of 40 are 200 (fits); a sixth of 70 is not.
        assert_eq!(LIMITS.batches(&jobs, 8, false), vec![0..5, 5..6]);
        assert_eq!(LIMITS.batches(&jobs, 2, false), vec![0..2, 2..4, 4..6]);
        let tight = Limits {
            budget_bytes: 800,
            ..LIMITS
        };
        assert_eq!(tight.batches(&jobs, 8, false), vec![0..2, 2..4, 4..5, 5..6]);
        // The prefill's activations count per padded prompt token, and each row's logits once:
        // 1 byte per prompt token and 60 per row make rows of 40 positions and 30 prompt tokens
        // cost 400 + 30 + 60 = 490, so four fit in 2000, not five; the last two rows pad to 70
        // positions and 60 prompt tokens: 2 x (700 + 60 + 60) = 1640.
        let prefill = Limits {
            footprint: Footprint {
                prefill_bytes_per_token: 1,
                bytes_per_sequence: 60,
            },
            ..LIMITS
        };
        assert_eq!(prefill.batches(&jobs, 8, false), vec![0..4, 4..6]);
        // Recycling rows, a batch holds every job whose rows' KV cache fits.
        assert_eq!(LIMITS.batches(&jobs, 2, true), vec![0..6]);
        assert_eq!(tight.batches(&jobs, 8, true), vec![0..2, 2..4, 4..5, 5..6]);
    }

    /// A SentencePiece-style tokenizer.json as the exporter writes it for gemma3: "▁" for
    /// spaces, byte fallback, and `<bos>` added by the post-processor.
    const SPM_TOKENIZER: &str = r#"{
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<bos>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "\n", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": false}],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [0], "tokens": ["<bos>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false,
            "vocab": {"<bos>": 0, "\n": 1, "d": 2, "e": 3, "f": 4, "▁": 5, "x": 6, "de": 7,
                      "def": 8, "▁x": 9},
            "merges": [["d", "e"], ["de", "f"], ["▁", "x"]]}
    }"#;

    #[test]
    fn completion_prompts_get_the_post_processors_bos() {
        let encoder = Encoder {
            dir: PathBuf::from("gemma"),
            tokenizer: SPM_TOKENIZER.parse().unwrap(),
            chat_template: None,
            template_tokens: TemplateTokens {
                bos_token: "<bos>".into(),
                eos_token: String::new(),
            },
        };
        let prompt = Prompt::Complete {
            prefix: "def x\n".into(),
        };
        assert_eq!(encoder.encode(&prompt).unwrap(), vec![0, 8, 9, 1]);
        let text = encoder.tokenizer.decode(&[8, 9, 1], false).unwrap();
        assert_eq!(text, "def x\n");
    }
}
