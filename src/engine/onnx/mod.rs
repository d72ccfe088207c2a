//! The ONNX Runtime engine: a [`CompletionSource`] that generates with a model folder.
//!
//! ```no_run
//! # use codegen_harness::{engine::{GenerationSettings, onnx}, runtime::Device};
//! let source = onnx::open("models/qwen".as_ref(), Device::Auto, GenerationSettings::default())?;
//! # Ok::<(), codegen_harness::engine::SourceError>(())
//! ```
//!
//! [`CompletionSource::prepare`] hands every selected request to one background scheduler that
//! generates them in batches (sorted by prompt length, `batch_size` sequences at a time),
//! independently of how many test threads run; [`CompletionSource::complete`] waits for its own
//! request. Finished completions are stored in a generation cache keyed by what determines them
//! (model files' hash, execution provider, prompt token ids, decoding settings, and for sampling
//! the seed and sample index), so rerunning after editing a case's tests does not regenerate.

pub mod detok;
pub mod gencache;
pub mod head;
pub mod model;
pub mod sampling;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::{Completion, CompletionSource, GenerationSettings, Request, SourceError};
use crate::prompt::{Prompt, TemplateTokens, render_chat_template};
use crate::runtime::{Device, hex};
use gencache::GenerationCache;
pub use model::{Float, Layout, LoadOptions, Model, SeqJob};
use sampling::Sampler;

/// Bumped when a change to the engine changes what it generates (part of every cache key).
/// 2: KV buffers on CUDA are zeroed (generations made on CUDA before could be corrupt).
pub const ENGINE_VERSION: &str = "onnx-engine-2";

/// Everything [`open_with`] accepts.
#[derive(Debug, Clone)]
pub struct OnnxOptions {
    pub device: Device,
    pub settings: GenerationSettings,
    /// Bypass the generation cache (also `CODEGEN_NO_CACHE=1`).
    pub no_cache: bool,
    /// Intra-op threads on CPU; 0 means one per core (also `CODEGEN_ORT_THREADS`). The count is
    /// fixed for the session, so results are reproducible on the same machine.
    pub threads: usize,
    /// Show a progress bar (on a terminal) while the scheduler works.
    pub progress: bool,
    /// Where generations are cached; default `cache_dir()/generations`.
    pub cache_dir: Option<PathBuf>,
    /// genai layout: bind one KV buffer per layer to both past and present (no copies per
    /// step). `CODEGEN_SHARED_KV=0` also turns it off.
    pub shared_kv: bool,
    /// Choose greedy tokens on the model's device ([`head`]): `None` on CUDA only, `Some` to
    /// force it on or off (also `CODEGEN_DEVICE_HEAD=0|1`).
    pub device_head: Option<bool>,
    /// Decode greedy batches on fixed buffers with a captured CUDA graph: `None` on CUDA only,
    /// `Some` to force it on or off (also `CODEGEN_CUDA_GRAPH=0|1`). Forced on CPU, the fixed
    /// buffers are used without a graph.
    pub cuda_graph: Option<bool>,
    /// Batches decoded with captured graphs before the session is created again, which frees
    /// them (`None`: [`model::GRAPHS_PER_SESSION`]; also `CODEGEN_GRAPHS_PER_SESSION`).
    pub graphs_per_session: Option<usize>,
}

impl OnnxOptions {
    pub fn new(device: Device, settings: GenerationSettings) -> OnnxOptions {
        OnnxOptions {
            device,
            settings,
            no_cache: false,
            threads: 0,
            progress: true,
            cache_dir: None,
            shared_kv: true,
            device_head: None,
            cuda_graph: None,
            graphs_per_session: None,
        }
    }
}

/// Open a model folder with default options (cache on, all cores, progress bar).
pub fn open(
    model_dir: &Path,
    device: Device,
    settings: GenerationSettings,
) -> Result<OnnxSource, SourceError> {
    open_with(model_dir, OnnxOptions::new(device, settings))
}

/// A switch forced by the environment: `NAME=1` on, `NAME=0` off, otherwise `None` (the
/// options decide).
fn env_switch(name: &str) -> Option<bool> {
    match std::env::var(name).as_deref() {
        Ok("0") => Some(false),
        Ok("1") => Some(true),
        _ => None,
    }
}

/// Open a model folder.
pub fn open_with(model_dir: &Path, options: OnnxOptions) -> Result<OnnxSource, SourceError> {
    let env_threads = std::env::var("CODEGEN_ORT_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let threads = env_threads.unwrap_or(options.threads);
    let no_cache = options.no_cache
        || std::env::var("CODEGEN_NO_CACHE").is_ok_and(|v| !v.is_empty() && v != "0");
    let device_head = env_switch("CODEGEN_DEVICE_HEAD").or(options.device_head);
    let cuda_graph = env_switch("CODEGEN_CUDA_GRAPH").or(options.cuda_graph);
    let graphs_per_session = std::env::var("CODEGEN_GRAPHS_PER_SESSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(options.graphs_per_session);
    let load = LoadOptions {
        threads,
        device_head,
        cuda_graph,
        graphs_per_session,
    };
    let mut model = Model::load(model_dir, options.device, load).map_err(SourceError::Setup)?;
    model.shared_kv &= options.shared_kv;
    let model_hash = gencache::model_hash(model_dir).map_err(|e| {
        SourceError::Setup(format!(
            "failed to hash model folder {}: {e}",
            model_dir.display()
        ))
    })?;
    let encoder = Encoder {
        dir: model.dir.clone(),
        tokenizer: model.tokenizer.clone(),
        chat_template: model.chat_template.clone(),
        template_tokens: model.template_tokens.clone(),
    };
    let mut describe = BTreeMap::new();
    describe.insert("model".into(), model_dir.display().to_string());
    describe.insert("model_sha256".into(), model_hash.clone());
    describe.insert("device".into(), model.provider.to_string());
    describe.insert(
        "layout".into(),
        format!("{:?}", model.layout).to_lowercase(),
    );
    describe.insert(
        "kv_type".into(),
        format!("{:?}", model.kv_type).to_lowercase(),
    );
    describe.insert("threads".into(), model.threads.to_string());
    describe.insert(
        "shared_kv".into(),
        (model.shared_kv && model.layout == Layout::Genai).to_string(),
    );
    describe.insert("device_head".into(), model.has_device_head().to_string());
    describe.insert("cuda_graph".into(), model.cuda_graph().to_string());
    describe.insert("onnxruntime".into(), model.library.display().to_string());
    describe.insert("batch_size".into(), options.settings.batch_size.to_string());
    describe.insert(
        "temperature".into(),
        options.settings.temperature.to_string(),
    );
    describe.insert("seed".into(), options.settings.seed.to_string());
    let provider = model.provider;
    Ok(OnnxSource {
        inner: Arc::new(Inner {
            model: Mutex::new(model),
            encoder,
            provider,
            model_hash,
            cache: GenerationCache::new(!no_cache, options.cache_dir.clone()),
            settings: options.settings,
            progress: options.progress,
            state: Mutex::new(Sched::default()),
            cond: Condvar::new(),
            describe,
            generated: Mutex::new(0),
        }),
    })
}

/// Prompt rendering and tokenization, usable while the model is busy.
#[derive(Clone)]
struct Encoder {
    dir: PathBuf,
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    template_tokens: TemplateTokens,
}

impl Encoder {
    fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, String> {
        let (text, special) = match prompt {
            Prompt::Chat { messages } => {
                let template = self.chat_template.as_deref().ok_or_else(|| {
                    format!(
                        "failed to build a chat prompt: {}/tokenizer_config.json has no `chat_template`",
                        self.dir.display()
                    )
                })?;
                let text = render_chat_template(template, messages, &self.template_tokens, true)
                    .map_err(|e| e.to_string())?;
                (text, false)
            }
            Prompt::Complete { prefix } => (prefix.clone(), true),
        };
        let enc = self
            .tokenizer
            .encode(text.as_str(), special)
            .map_err(|e| format!("failed to tokenize the prompt: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }
}

#[derive(Default)]
struct Sched {
    results: HashMap<String, Result<Completion, String>>,
    pending: HashSet<String>,
}

struct Inner {
    model: Mutex<Model>,
    encoder: Encoder,
    provider: &'static str,
    model_hash: String,
    cache: GenerationCache,
    settings: GenerationSettings,
    progress: bool,
    state: Mutex<Sched>,
    cond: Condvar,
    describe: BTreeMap<String, String>,
    generated: Mutex<u64>,
}

/// A request turned into keyed sequence jobs (one per distinct sample).
struct Planned {
    keys: Vec<String>,
    jobs: Vec<(String, SeqJob)>,
}

/// The engine as a completion source.
pub struct OnnxSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OnnxSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxSource")
            .field("describe", &self.inner.describe)
            .finish()
    }
}

impl Inner {
    fn plan(&self, request: &Request<'_>) -> Result<Planned, String> {
        let s = &self.settings;
        let prompt_ids = self.encoder.encode(request.prompt)?;
        let max_new = request.case.max_new_tokens.unwrap_or(s.max_new_tokens);
        let mut stop = s.stop.clone();
        for st in &request.case.stop {
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
        let mut keys = Vec::with_capacity(samples);
        let mut jobs = Vec::new();
        for i in 0..samples {
            // Greedy decoding gives one answer whatever the sample index: compute it once.
            let index = if sampler.is_greedy() { 0 } else { i };
            let mut desc = serde_json::json!({
                "engine": ENGINE_VERSION,
                "model": self.model_hash,
                "provider": self.provider,
                "device_head": self.describe.get("device_head"),
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
            if self.describe.get("cuda_graph").is_some_and(|v| v == "true") {
                // Replayed graphs decode with a fixed-width attention mask: kernels may pick
                // other tiles and differ in the last bit. Other keys stay as they were.
                desc["cuda_graph"] = serde_json::Value::Bool(true);
            }
            let key = hex(&Sha256::digest(desc.to_string().as_bytes()));
            if !keys.contains(&key) {
                // The stream of sample i depends on (seed, prompt, i) only.
                let seed_hash =
                    Sha256::digest(format!("{}:{}:{:?}", s.seed, index, prompt_ids).as_bytes());
                let seed = u64::from_le_bytes(seed_hash[..8].try_into().expect("8 bytes"));
                jobs.push((
                    key.clone(),
                    SeqJob {
                        prompt_ids: prompt_ids.clone(),
                        max_new,
                        stop: stop.clone(),
                        sampler,
                        seed,
                        top_logprobs: s.top_logprobs,
                    },
                ));
            }
            keys.push(key);
        }
        Ok(Planned { keys, jobs })
    }

    /// Take the jobs nobody has started and that the cache does not answer.
    fn claim(&self, jobs: Vec<(String, SeqJob)>) -> Vec<(String, SeqJob)> {
        let mut st = self.state.lock().expect("scheduler lock");
        let mut todo = Vec::new();
        for (key, job) in jobs {
            if st.results.contains_key(&key) || st.pending.contains(&key) {
                continue;
            }
            if let Some(hit) = self.cache.get(&key) {
                st.results.insert(key, Ok(hit));
                continue;
            }
            st.pending.insert(key.clone());
            todo.push((key, job));
        }
        todo
    }

    /// Generate `todo` in batches, publishing results as each batch finishes.
    fn run(&self, mut todo: Vec<(String, SeqJob)>) {
        if todo.is_empty() {
            return;
        }
        todo.sort_by(|a, b| {
            a.1.prompt_ids
                .len()
                .cmp(&b.1.prompt_ids.len())
                .then(a.0.cmp(&b.0))
        });
        let bar = if self.progress && todo.len() > 1 {
            let bar = indicatif::ProgressBar::new(todo.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "generating {bar:30} {pos}/{len} sequences, {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let started = Instant::now();
        let mut tokens = 0u64;
        let batch_size = self.settings.batch_size.max(1);
        for chunk in todo.chunks(batch_size) {
            let jobs: Vec<SeqJob> = chunk.iter().map(|(_, j)| j.clone()).collect();
            let result = {
                let mut model = self.model.lock().expect("model lock");
                // A panic must not leave `complete` callers waiting forever.
                let mut on_token = || {
                    tokens += 1;
                    if tokens.is_multiple_of(16) {
                        let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
                        bar.set_message(format!("{rate:.1} tok/s"));
                    }
                };
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    model.generate_batch(&jobs, &mut on_token)
                }))
                .unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(format!("failed to generate: the engine panicked: {what}"))
                })
            };
            {
                let mut st = self.state.lock().expect("scheduler lock");
                match result {
                    Ok(outs) => {
                        for ((key, _), out) in chunk.iter().zip(outs) {
                            self.cache.put(key, &out);
                            st.pending.remove(key);
                            st.results.insert(key.clone(), Ok(out));
                        }
                    }
                    Err(e) => {
                        for (key, _) in chunk {
                            st.pending.remove(key);
                            st.results.insert(key.clone(), Err(e.clone()));
                        }
                    }
                }
            }
            self.cond.notify_all();
            bar.inc(chunk.len() as u64);
        }
        *self.generated.lock().expect("counter lock") += todo.len() as u64;
        bar.finish_and_clear();
    }
}

impl OnnxSource {
    /// Facts about the loaded model (same as [`CompletionSource::describe`]).
    pub fn info(&self) -> &BTreeMap<String, String> {
        &self.inner.describe
    }

    /// How many sequences this source has generated (cache hits excluded).
    pub fn generated_sequences(&self) -> u64 {
        *self.inner.generated.lock().expect("counter lock")
    }

    /// Token ids of a prompt, exactly as the engine feeds them.
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, SourceError> {
        self.inner
            .encoder
            .encode(prompt)
            .map_err(SourceError::Setup)
    }

    /// Generate raw jobs in one batch, bypassing the scheduler and the cache (benchmarks).
    pub fn generate_batch(&self, jobs: &[SeqJob]) -> Result<Vec<Completion>, SourceError> {
        let mut model = self.inner.model.lock().expect("model lock");
        model
            .generate_batch(jobs, &mut || {})
            .map_err(SourceError::Setup)
    }
}

impl CompletionSource for OnnxSource {
    fn prepare(&self, requests: &[Request<'_>]) -> Result<(), SourceError> {
        let mut all = Vec::new();
        for r in requests {
            // A request that cannot be planned fails in `complete`, with its case named.
            if let Ok(p) = self.inner.plan(r) {
                all.extend(p.jobs);
            }
        }
        let todo = self.inner.claim(all);
        if todo.is_empty() {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        std::thread::Builder::new()
            .name("codegen-engine".into())
            .spawn(move || inner.run(todo))
            .map_err(|e| {
                SourceError::Setup(format!("failed to start the generation thread: {e}"))
            })?;
        Ok(())
    }

    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError> {
        let fail = |message: String| SourceError::Generation {
            case_id: request.case.key.clone(),
            message,
        };
        let plan = self.inner.plan(request).map_err(fail)?;
        // Not prepared (or prepared elsewhere): generate here.
        let todo = self.inner.claim(plan.jobs);
        self.inner.run(todo);
        let mut st = self.inner.state.lock().expect("scheduler lock");
        loop {
            if plan.keys.iter().all(|k| st.results.contains_key(k)) {
                break;
            }
            st = self.inner.cond.wait(st).expect("scheduler lock");
        }
        plan.keys
            .iter()
            .map(|k| st.results[k].clone().map_err(fail))
            .collect()
    }

    fn describe(&self) -> BTreeMap<String, String> {
        self.inner.describe.clone()
    }
}
