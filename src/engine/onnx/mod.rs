//! The ONNX Runtime engine: a [`CompletionSource`] that generates with a model folder.
//!
//! ```no_run
//! # use codegen_harness::{device::Provider, engine::{GenerationSettings, onnx}, env::Env, runtime::RuntimeSpec};
//! let env = Env::from_process()?;
//! let runtime = RuntimeSpec::from_env(Provider::Cpu, &env);
//! let options = onnx::OnnxOptions::new(runtime, env.cache.clone(), GenerationSettings::default());
//! let source = onnx::open_with("models/qwen".as_ref(), options)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`CompletionSource::prepare`] hands every selected request to one background scheduler that
//! generates them in batches (sorted by prompt length, `batch_size` sequences at a time),
//! independently of how many test threads run; [`CompletionSource::complete`] waits for its own
//! request. Finished completions are stored in a generation cache keyed by what determines them
//! (model files' hash, execution provider, prompt token ids, decoding settings, and for sampling
//! the seed and sample index), so rerunning after editing a case's tests does not regenerate.
//!
//! Inside: `folder` checks a folder's contract as plain data, `session` opens ONNX Runtime,
//! `model` holds what was loaded, `kv` the three KV-cache strategies, `decode` the batched
//! loop, `head` the on-device token choice, `scheduler` the batching and the cache keys.

mod answer;
mod attention;
mod decode;
mod detok;
mod error;
pub(crate) mod folder;
mod follow;
mod gate;
mod gencache;
mod head;
mod kv;
mod lazy;
pub(crate) mod model;
mod progress;
pub mod proto;
mod sampling;
mod scheduler;
pub(crate) mod session;
mod simd;
pub(crate) mod tensor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::EngineError;
pub use follow::LogitNoise;
pub use head::{HEAD_F16, HEAD_F32};
pub use lazy::{LazyOnnxSource, open_lazy};

use super::{Completion, CompletionSource, GenerationSettings, LoadFacts, Request, SourceError};
use crate::device::Provider;
use crate::machine;
use crate::prompt::Prompt;
use crate::provision::runtime::RuntimeSpec;
use model::Model;
use scheduler::{Encoder, KeyFacts, Limits, Scheduler};

/// Bumped when a change to the engine changes what it generates (part of every cache key).
/// 2: KV buffers on CUDA are zeroed (generations made on CUDA before could be corrupt).
/// 3: completions carry the key they can be accepted under and how they followed it.
pub const ENGINE_VERSION: &str = "onnx-engine-3";

/// Everything [`open_with`] accepts. The environment's overrides are applied with
/// [`OnnxOptions::apply_env`] at the edge; the engine reads no environment variable.
#[derive(Debug, Clone)]
pub struct OnnxOptions {
    /// The execution provider (`device = "auto"` resolved at the edge).
    pub provider: Provider,
    /// A CUDA provider that fails to load falls back to CPU, saying so (the user asked for
    /// `auto`). Off: it is an error.
    pub cpu_fallback: bool,
    /// Where ONNX Runtime's library comes from.
    pub runtime: RuntimeSpec,
    pub settings: GenerationSettings,
    /// The per-user cache: generations under `generations/`, folder hashes under
    /// `model-hashes/`.
    pub cache: PathBuf,
    /// Bypass the generation cache.
    pub no_cache: bool,
    /// Intra-op threads on CPU; 0 means one per core. The count is fixed for the session, so
    /// results are reproducible on the same machine.
    pub threads: usize,
    /// Let ONNX Runtime's worker threads spin between runs.
    pub spin: bool,
    /// Allow kernels that are not deterministic.
    pub nondeterministic: bool,
    /// Show a progress bar (on a terminal) while the scheduler works.
    pub progress: bool,
    /// genai layout: bind one KV buffer per layer to both past and present (no copies per
    /// step).
    pub shared_kv: bool,
    /// Zero KV buffers in device memory (off only to reproduce uninitialised buffers).
    pub zero_kv: bool,
    /// Choose greedy tokens on the model's device (`head`): `None` on CUDA only, `Some` to
    /// force it on or off.
    pub device_head: Option<bool>,
    /// Decode greedy batches on fixed buffers with a captured CUDA graph: `None` on CUDA only,
    /// `Some` to force it on or off. Forced on CPU, the fixed buffers are used without a graph.
    pub cuda_graph: Option<bool>,
    /// Batches decoded with captured graphs before the session is created again, which frees
    /// them (`None`: 64).
    pub graphs_per_session: Option<usize>,
    /// Print where each batch spent its time.
    pub profile: bool,
    /// Most bytes one batch may take: its KV cache and its prefill's activations (`None`: under
    /// CUDA, 85% of the device's free memory once the weights are loaded, less 1 GiB for
    /// ONNX Runtime's workspaces and captured graphs; on a CPU, half of this machine's memory).
    /// Batches are cut to fit before anything is allocated; a sequence that alone does not fit
    /// fails its own case.
    pub memory_budget_bytes: Option<u64>,
    /// CUDA devices to open one session on each (`device = "cuda:0,1"`), batches spread across
    /// them; an index may repeat. On CPU only their count matters (several CPU sessions exist
    /// for tests of the multi-session path; config files cannot ask for them).
    pub device_ids: Vec<u32>,
    /// Seeded noise on every logit read on the host: tests only, to show which perturbations
    /// the accepted-output tolerance absorbs.
    pub logit_noise: Option<LogitNoise>,
    /// Batches that recycle rows (CPU) feed prompt-lookup draft tokens where rows have ended
    /// and left the batch's width idle (exact for greedy: see `decode/draft.rs`).
    pub drafts: bool,
    /// The shortest n-gram a draft is looked up by (2; tests take 1 to draft at every step).
    pub draft_min_ngram: usize,
    /// Which kernel runs attention on CPU.
    pub attention: AttentionKernel,
}

/// Which kernel runs a CPU model's grouped-query attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// The harness's own (`attention/`), where the CPU has AVX2 and FMA and the node's
    /// attributes are ones it implements; ONNX Runtime's elsewhere.
    #[default]
    Own,
    /// ONNX Runtime's `GroupQueryAttention` everywhere.
    OnnxRuntime,
}

impl OnnxOptions {
    /// Options for `runtime.provider` with everything else at its default (cache on, all
    /// cores, progress bar, no CPU fallback).
    pub fn new(runtime: RuntimeSpec, cache: PathBuf, settings: GenerationSettings) -> OnnxOptions {
        OnnxOptions {
            provider: runtime.provider,
            cpu_fallback: false,
            runtime,
            settings,
            cache,
            no_cache: false,
            threads: 0,
            spin: false,
            nondeterministic: false,
            progress: true,
            shared_kv: true,
            zero_kv: true,
            device_head: None,
            cuda_graph: None,
            graphs_per_session: None,
            profile: false,
            memory_budget_bytes: None,
            device_ids: vec![0],
            logit_noise: None,
            drafts: true,
            draft_min_ngram: 2,
            attention: AttentionKernel::Own,
        }
    }
}

/// Open a model folder: one session, or one per CUDA device of `options.device_ids`.
pub fn open_with(model_dir: &Path, options: OnnxOptions) -> Result<OnnxSource, EngineError> {
    let started = std::time::Instant::now();
    let device_ids = match options.device_ids.is_empty() {
        true => vec![0],
        false => options.device_ids.clone(),
    };
    // CUDA sessions share the process's gate (other profiles' engines may decode at once);
    // CPU sessions capture no graphs and need none.
    let gate = match options.provider {
        Provider::Cuda => gate::StepGate::cuda(),
        Provider::Cpu => gate::StepGate::default(),
    };
    // Sessions load side by side (each takes about a second, most of it on its own GPU).
    let models: Vec<Model> = std::thread::scope(|scope| {
        let handles: Vec<_> = device_ids
            .iter()
            .map(|&id| {
                let (options, gate) = (&options, gate.clone());
                scope.spawn(move || Model::load(model_dir, options, id, gate))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(EngineError::Session("loading a session panicked".into()))
                })
            })
            .collect::<Result<Vec<Model>, EngineError>>()
    })?;
    let model = &models[0];
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let model_hash =
        gencache::model_hash(model_dir, &options.cache).map_err(|e| EngineError::Hash {
            folder: model_dir.to_path_buf(),
            message: e.to_string(),
        })?;
    let encoder = Encoder {
        dir: model.dir.clone(),
        tokenizer: (*model.tokenizer).clone(),
        chat_template: model.tokens.chat_template.clone(),
        template_tokens: model.tokens.template_tokens.clone(),
    };
    let budget_bytes = options
        .memory_budget_bytes
        .or_else(|| match model.provider {
            Provider::Cuda => cuda_budget(&device_ids),
            Provider::Cpu => machine::host_memory().map(|m| m.total / 2),
        })
        .unwrap_or(4 << 30);
    let limits = Limits {
        context: model.context_length,
        kv_bytes_per_position: model.kv_bytes_per_position(),
        footprint: model.footprint,
        budget_bytes,
    };
    let facts = KeyFacts {
        model_hash: model_hash.clone(),
        provider: model.provider,
        device_head: model.has_device_head(),
        cuda_graph: model.cuda_graph(),
        own_attention: model.own_attention,
    };
    let mut describe = describe(model, &facts, &options, model_dir);
    if models.len() > 1 {
        let sessions: Vec<String> = models
            .iter()
            .map(|m| format!("{}:{}", m.provider, m.device_id))
            .collect();
        describe.insert("sessions".into(), sessions.join(","));
    }
    let mut scheduler = Scheduler::new(
        models,
        encoder,
        facts,
        limits,
        gencache::GenerationCache::new(!options.no_cache, &options.cache),
        options.settings,
        options.progress,
    );
    if options.memory_budget_bytes.is_none() && options.provider == Provider::Cuda {
        scheduler.free_memory_budget = Some(device_ids);
    }
    Ok(OnnxSource {
        scheduler: Arc::new(scheduler),
        describe,
        load: LoadFacts {
            load_ms,
            size_on_disk_bytes: super::folder_size(model_dir),
        },
    })
}

/// The bytes one session's batch may take under CUDA: 85% of its GPU's free memory shared by
/// the sessions on that GPU, less 1 GiB for ONNX Runtime's workspaces and captured graphs; the
/// smallest over `device_ids`. `None` when a GPU's memory cannot be read.
pub(crate) fn cuda_budget(device_ids: &[u32]) -> Option<u64> {
    device_ids
        .iter()
        .map(|&id| {
            let sharing = device_ids.iter().filter(|&&d| d == id).count() as u64;
            machine::gpu_memory_of(id).map(|g| {
                (g.free / 100 * 85 / sharing)
                    .saturating_sub(1 << 30)
                    .max(256 << 20)
            })
        })
        .collect::<Option<Vec<u64>>>()
        .and_then(|b| b.into_iter().min())
}

/// Facts about the loaded model for results and reports (output only: nothing reads it back).
fn describe(
    model: &Model,
    facts: &KeyFacts,
    options: &OnnxOptions,
    model_dir: &Path,
) -> BTreeMap<String, String> {
    let layout = match model.graph.layout {
        folder::Layout::Genai => "genai",
        folder::Layout::Optimum => "optimum",
    };
    let kv_type = match model.graph.kv_type {
        tensor::Float::F32 => "f32",
        tensor::Float::F16 => "f16",
    };
    [
        ("model", model_dir.display().to_string()),
        ("model_sha256", facts.model_hash.clone()),
        ("device", model.provider.to_string()),
        ("layout", layout.to_string()),
        ("kv_type", kv_type.to_string()),
        ("threads", model.threads.to_string()),
        ("shared_kv", model.shares_kv().to_string()),
        ("device_head", facts.device_head.to_string()),
        ("cuda_graph", facts.cuda_graph.to_string()),
        (
            "attention",
            match facts.own_attention {
                true => "codegen (attention/)",
                false => "onnxruntime",
            }
            .to_string(),
        ),
        ("onnxruntime", model.library.display().to_string()),
        ("batch_size", options.settings.batch_size.to_string()),
        ("temperature", options.settings.temperature.to_string()),
        ("seed", options.settings.seed.to_string()),
        (
            "context_length",
            model
                .context_length
                .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The engine as a completion source.
pub struct OnnxSource {
    scheduler: Arc<Scheduler>,
    describe: BTreeMap<String, String>,
    load: LoadFacts,
}

impl std::fmt::Debug for OnnxSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxSource")
            .field("describe", &self.describe)
            .finish()
    }
}

impl OnnxSource {
    /// How many sequences this source has generated (cache hits excluded).
    pub fn generated_sequences(&self) -> u64 {
        self.scheduler.generated()
    }

    /// The token ids of a prompt, exactly as the engine feeds them to the model (the chat
    /// template rendered, special tokens as the template writes them).
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        self.scheduler.encoder.encode(prompt)
    }
}

impl CompletionSource for OnnxSource {
    fn prepare(&self, requests: &[Request<'_>]) -> Result<(), SourceError> {
        let mut all = Vec::new();
        for r in requests {
            // A request that cannot be planned fails in `complete`, with its case named.
            if let Ok(p) = self.scheduler.plan(r) {
                all.extend(p.jobs);
            }
        }
        let todo = self.scheduler.claim(all);
        if todo.is_empty() {
            return Ok(());
        }
        let scheduler = Arc::clone(&self.scheduler);
        std::thread::Builder::new()
            .name("codegen-engine".into())
            .spawn(move || scheduler.run(todo))
            .map_err(|e| {
                SourceError::Engine(EngineError::Generate(format!(
                    "failed to start the generation thread: {e}"
                )))
            })?;
        Ok(())
    }

    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError> {
        let fail = |e: EngineError| SourceError::Generation {
            case_id: request.case_key.to_string(),
            message: e.to_string(),
        };
        let plan = self.scheduler.plan(request).map_err(fail)?;
        // Not prepared (or prepared elsewhere): generate here.
        let todo = self.scheduler.claim(plan.jobs);
        self.scheduler.run(todo);
        // The model continued the prefill: the reply is the prefill and what it generated
        // (the cache, keyed by the prompt's token ids, holds the generated text alone).
        let prefill = request.prompt.prefill().unwrap_or_default();
        self.scheduler
            .wait(&plan.keys)
            .into_iter()
            .map(|r| {
                r.map_err(fail).map(|mut c| {
                    c.text.insert_str(0, prefill);
                    c
                })
            })
            .collect()
    }

    fn describe(&self) -> BTreeMap<String, String> {
        self.describe.clone()
    }

    fn devices(&self) -> Vec<crate::engine::DeviceUsage> {
        self.scheduler.usage()
    }

    fn load_facts(&self) -> Option<LoadFacts> {
        Some(self.load)
    }
}
