//! One loaded model folder: the ONNX Runtime session with its contract checked ([`folder`]),
//! the tokenizer and its special tokens, the optional device head, and the buffers decoding
//! binds (KV caches, fixed decode inputs, logits). Decoding itself is in [`super::decode`].
//!
//! [`folder`]: super::folder

use std::fs;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::error::EngineError;
use super::folder::{self, Element, GraphSpec, GraphValue, Layout, TokenSpec};
use super::gate::StepGate;
use super::head::DeviceHead;
use super::session::{self, Opened, SessionSpec};
use super::tensor::{Float, memory_info, zeroed_buffers};
use super::{AttentionKernel, OnnxOptions};
use crate::device::Provider;
use crate::provision::runtime::{self, Runtime, RuntimeSpec};

/// Fixed-decode batches (each with a captured CUDA graph) per session, by default. ONNX Runtime
/// keeps every captured graph until the session is dropped, about 2 MiB of host memory each
/// (measured on an H100: 2.3 GiB peak after 340 graphs, 1.5 GiB without graphs); loading the
/// session again takes about a second.
pub(crate) const GRAPHS_PER_SESSION: usize = 64;

/// What a sequence costs in memory besides its KV cache: the activations its prefill holds
/// per prompt token, and what it holds once per step (its logits row), in bytes. An estimate
/// from `config.json`'s sizes, for cutting batches to the device's free memory before anything is
/// allocated; the KV cache, which dominates long generations, is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Footprint {
    pub prefill_bytes_per_token: u64,
    pub bytes_per_sequence: u64,
}

impl Footprint {
    pub fn of(sizes: &folder::ConfigSizes, graph: &folder::GraphSpec) -> Footprint {
        let element: u64 = match graph.kv_type {
            Float::F32 => 4,
            Float::F16 => 2,
        };
        let hidden = sizes.hidden.unwrap_or(graph.kv_heads * graph.head_dim * 4) as u64;
        let intermediate = sizes.intermediate.map_or(4 * hidden, |i| i as u64);
        let heads = sizes.heads.unwrap_or(graph.kv_heads) as u64;
        let qkv = (heads + 2 * graph.kv_heads as u64) * graph.head_dim as u64;
        // Live at once in a layer: the residual stream and its norm (float32 where the graph
        // keeps it so), the packed QKV and attention output, and the MLP's gate, up and product.
        let per_token = element * (qkv + 2 * hidden + 3 * intermediate) + 4 * 2 * hidden;
        // float32 logits plus the activation-typed copy before the cast.
        let vocab_row = sizes.vocab.unwrap_or(0) as u64 * (4 + element);
        Footprint {
            prefill_bytes_per_token: per_token + if graph.logits_positions { 0 } else { vocab_row },
            bytes_per_sequence: vocab_row,
        }
    }
}

/// A loaded model folder.
pub(crate) struct Model {
    pub dir: PathBuf,
    /// Attention runs on our kernel (`attention/`).
    pub own_attention: bool,
    pub session: Session,
    /// Shared with the decode loop's bookkeeping thread.
    pub tokenizer: std::sync::Arc<Tokenizer>,
    pub graph: folder::GraphSpec,
    pub tokens: TokenSpec,
    /// Positions the model was trained for, when `config.json` says.
    pub context_length: Option<usize>,
    /// What one sequence of a batch costs in memory beyond its KV cache.
    pub footprint: Footprint,
    pub provider: Provider,
    pub threads: usize,
    pub library: PathBuf,
    /// Share one KV buffer between past and present (genai layout only).
    pub shared_kv: bool,
    /// Threads used to choose tokens (rows in parallel; one row's vocabulary split in chunks).
    pub sampling_threads: usize,
    /// Print where each batch spent its time.
    pub profile: bool,
    /// Decoded text of single tokens, filled as they are needed.
    pub pieces: std::collections::HashMap<u32, String>,
    /// Greedy token choice on the model's device (see [`DeviceHead`]).
    pub head: Option<DeviceHead>,
    /// The last reading of the GPU memory this process holds (ONNX Runtime's arena only grows).
    pub device_peak: Option<u64>,
    /// Zero KV buffers in device memory (off only to reproduce what uninitialised buffers do).
    zero_kv: bool,
    /// How batches that recycle rows draft tokens (`None`: they do not).
    pub drafting: Option<Drafting>,
    /// Greedy batches decode on fixed buffers ([`FixedBuffers`]).
    fixed_decode: bool,
    /// The session was created for CUDA graph capture: every run names its graph, and runs that
    /// must not be captured (prefill, growing caches) carry these options.
    pub uncaptured: Option<ort::session::RunOptions>,
    /// The graph id the next captured batch gets.
    next_graph_id: u32,
    /// Fixed-decode batches the session has run since it was created.
    fixed_batches: usize,
    /// After this many fixed-decode batches the session is created again.
    graphs_per_session: usize,
    /// How the session was opened (what a new session asks for again).
    session_spec: SessionSpec,
    runtime: RuntimeSpec,
    /// The CUDA device this model's session runs on (0 on CPU).
    pub device_id: u32,
    /// Turns between this process's sessions when several decode at once.
    pub gate: StepGate,
    /// Noise added to every logit read on the host (tests of the accepted-output tolerance).
    pub logit_noise: Option<super::follow::LogitNoise>,
}

fn read_json(path: &Path) -> Result<Json, EngineError> {
    let dir = path.parent().unwrap_or(path);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let text = fs::read_to_string(path)
        .map_err(|e| EngineError::folder(dir, format!("failed to read {name}: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::folder(dir, format!("failed to parse {name}: {e}")))
}

/// How batches that recycle rows draft tokens: looked up by n-grams of `min_ngram` tokens or
/// more (see `decode/draft.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drafting {
    pub min_ngram: usize,
}

/// A graph input or output as [`folder`] checks it (the doctor reads graphs the same way).
pub(crate) fn graph_value(name: &str, ty: &ValueType) -> GraphValue {
    GraphValue {
        name: name.to_string(),
        element: match ty.tensor_type() {
            Some(TensorElementType::Float32) => Element::F32,
            Some(TensorElementType::Float16) => Element::F16,
            Some(other) => Element::Other(format!("{other:?}")),
            None => Element::Other("none (not a tensor)".into()),
        },
        shape: ty.tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
    }
}

/// The folder holds what a model needs, and (CUDA without a CPU fallback) a driver is there.
fn check_folder(dir: &Path, options: &OnnxOptions) -> Result<(), EngineError> {
    if !dir.is_dir() {
        return Err(EngineError::folder(dir, "not a directory"));
    }
    let missing: Vec<&str> = ["model.onnx", "tokenizer.json", "tokenizer_config.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(EngineError::folder(
            dir,
            format!("missing {}", missing.join(", ")),
        ));
    }
    if options.provider == Provider::Cuda
        && !options.cpu_fallback
        && !runtime::nvidia_driver_present()
        && options.runtime.dylib.is_none()
    {
        return Err(EngineError::Cuda("no NVIDIA driver found (/proc/driver/nvidia/version is missing); run with --device cpu, or on a machine with an NVIDIA GPU, driver, CUDA 13 and cuDNN 9".into()));
    }
    Ok(())
}

/// Open the model's session as `options` say; returns it with the spec it was asked with.
/// CUDA graphs are asked for at session creation. A graph ONNX Runtime cannot capture
/// (control flow, kernels outside the CUDA provider) fails there: load it again without.
fn open_session(
    rt: &Runtime,
    dir: &Path,
    options: &OnnxOptions,
    device_id: u32,
) -> Result<(Opened, SessionSpec), EngineError> {
    let mut spec = SessionSpec {
        provider: options.provider,
        cpu_fallback: options.cpu_fallback,
        threads: options.threads,
        graph: options.provider == Provider::Cuda && options.cuda_graph != Some(false),
        deterministic: !options.nondeterministic,
        spin: options.spin,
        device_id,
        own_attention: options.attention == AttentionKernel::Own,
    };
    let opened = match session::open(rt, dir, spec) {
        // Graph capture was only wanted, not demanded: when the session with capture fails
        // and the same session without it loads, capture was the reason (ONNX Runtime
        // refuses graphs with control flow or kernels outside the CUDA provider).
        Err(with_capture) if spec.graph && options.cuda_graph.is_none() => {
            spec.graph = false;
            let opened = session::open(rt, dir, spec)?;
            eprintln!(
                "codegen: {}; decoding without CUDA graphs",
                EngineError::GraphCaptureRefused {
                    folder: dir.to_path_buf(),
                    message: with_capture.to_string(),
                }
            );
            opened
        }
        other => other?,
    };
    Ok((opened, spec))
}

/// The graph's inputs and outputs, read as a [`GraphSpec`] with the folder's `config.json`.
fn read_graph(session: &Session, dir: &Path, config: &Json) -> Result<GraphSpec, EngineError> {
    let inputs: Vec<GraphValue> = session
        .inputs()
        .iter()
        .map(|o| graph_value(o.name(), o.dtype()))
        .collect();
    let outputs: Vec<GraphValue> = session
        .outputs()
        .iter()
        .map(|o| graph_value(o.name(), o.dtype()))
        .collect();
    folder::graph_spec(dir, &inputs, &outputs, config)
}

/// The tokenizer, and the special tokens its configuration files name.
fn read_tokens(dir: &Path, config: &Json) -> Result<(Tokenizer, TokenSpec), EngineError> {
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| EngineError::folder(dir, format!("failed to load tokenizer.json: {e}")))?;
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
    let generation_config = read_json(&dir.join("generation_config.json")).unwrap_or(Json::Null);
    let tokens = folder::token_spec(dir, &tokenizer_config, &generation_config, config, |t| {
        tokenizer.token_to_id(t)
    })?;
    Ok((tokenizer, tokens))
}

impl Model {
    /// Load `dir` as `options` say, on CUDA device `device_id` (ignored on CPU); `gate` is
    /// shared with the other sessions of the same engine.
    pub fn load(
        dir: &Path,
        options: &OnnxOptions,
        device_id: u32,
        gate: StepGate,
    ) -> Result<Model, EngineError> {
        check_folder(dir, options)?;
        let rt =
            runtime::init(&options.runtime).map_err(|e| EngineError::Runtime(e.to_string()))?;
        let (opened, spec) = open_session(&rt, dir, options, device_id)?;
        let session = opened.session;
        let provider = opened.provider;
        let config = read_json(&dir.join("config.json")).unwrap_or(Json::Null);
        let graph = read_graph(&session, dir, &config)?;
        let (tokenizer, tokens) = read_tokens(dir, &config)?;
        let head = if options.device_head.unwrap_or(provider == Provider::Cuda) {
            Some(DeviceHead::load(
                &rt.environment,
                provider,
                device_id,
                graph.logits_type,
            )?)
        } else {
            None
        };
        Ok(Model {
            own_attention: opened.own_attention,
            dir: dir.to_path_buf(),
            session,
            tokenizer: std::sync::Arc::new(tokenizer),
            device_peak: None,
            context_length: folder::context_length(&config),
            footprint: Footprint::of(&folder::config_sizes(&config), &graph),
            graph,
            tokens,
            provider,
            threads: opened.threads,
            library: rt.library,
            shared_kv: options.shared_kv,
            // On CPU the cores belong to ONNX Runtime's intra-op pool; on CUDA they are free.
            sampling_threads: match provider {
                Provider::Cuda => std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .min(16),
                Provider::Cpu => 1,
            },
            profile: options.profile,
            logit_noise: options.logit_noise,
            drafting: options.drafts.then_some(Drafting {
                min_ngram: options.draft_min_ngram,
            }),
            pieces: std::collections::HashMap::new(),
            zero_kv: options.zero_kv,
            fixed_decode: options.cuda_graph.unwrap_or(opened.graph_capture),
            uncaptured: if opened.graph_capture {
                Some(session::graph_run_options(-1)?)
            } else {
                None
            },
            next_graph_id: 1,
            fixed_batches: 0,
            graphs_per_session: options
                .graphs_per_session
                .unwrap_or(GRAPHS_PER_SESSION)
                .max(1),
            session_spec: SessionSpec {
                provider,
                graph: opened.graph_capture,
                threads: opened.threads,
                ..spec
            },
            head,
            runtime: options.runtime.clone(),
            device_id,
            gate,
        })
    }

    /// Whether greedy tokens are chosen on the model's device.
    pub fn has_device_head(&self) -> bool {
        self.head.is_some()
    }

    /// Bytes of KV cache one position of one sequence takes (keys and values, every layer).
    pub fn kv_bytes_per_position(&self) -> u64 {
        let element = match self.graph.kv_type {
            Float::F32 => 4,
            Float::F16 => 2,
        };
        (2 * self.graph.layers * self.graph.kv_heads * self.graph.head_dim * element) as u64
    }

    /// Whether the shared past/present KV buffers are in use (genai layout only).
    pub fn shares_kv(&self) -> bool {
        self.shared_kv && self.graph.layout == Layout::Genai
    }

    /// Whether a batch's rows take new sequences as theirs end: the shared KV cache in host
    /// memory (see [`super::kv::SharedKv`]), tokens chosen on the host.
    pub fn recycles_rows(&self) -> bool {
        self.provider == Provider::Cpu && self.shares_kv() && self.head.is_none()
    }

    /// Whether greedy batches decode on fixed buffers (replaying a CUDA graph under CUDA):
    /// asked for, the genai layout with shared KV buffers, and tokens chosen on the device.
    pub fn cuda_graph(&self) -> bool {
        self.fixed_decode && self.head.is_some() && self.shares_kv()
    }

    /// Run `f` with the allocator for buffers the model reads in place: the session's CUDA
    /// allocator under CUDA, its CPU allocator otherwise.
    fn with_buffer_allocator<R>(
        &self,
        f: impl FnOnce(&ort::memory::Allocator) -> Result<R, ort::Error>,
    ) -> Result<R, ort::Error> {
        match self.provider {
            Provider::Cuda => {
                let device = ort::memory::Allocator::new(
                    &self.session,
                    memory_info(ort::memory::AllocationDevice::CUDA, self.device_id)?,
                )?;
                f(&device)
            }
            Provider::Cpu => f(self.session.allocator()),
        }
    }

    /// `count` zeroed KV buffers of `max_len` positions for the shared past/present binding.
    fn kv_buffers(
        &self,
        batch: usize,
        max_len: usize,
        count: usize,
    ) -> Result<Vec<DynValue>, EngineError> {
        let shape = [batch, self.graph.kv_heads, max_len, self.graph.head_dim];
        let on_device = self.provider == Provider::Cuda;
        let zero_device = self.zero_kv;
        self.with_buffer_allocator(|alloc| match self.graph.kv_type {
            Float::F32 => zeroed_buffers(alloc, shape, count, 0.0f32, on_device, zero_device),
            Float::F16 => {
                zeroed_buffers(alloc, shape, count, half::f16::ZERO, on_device, zero_device)
            }
        })
        .map_err(|e| EngineError::Allocate {
            what: "the KV cache",
            message: e.to_string(),
        })
    }

    /// The KV buffers bound for a batch of `batch` rows and `max_len` positions, and the
    /// binding of past and present to them.
    pub fn shared_kv_binding(
        &mut self,
        batch: usize,
        max_len: usize,
    ) -> Result<(ort::session::IoBinding, Vec<DynValue>), EngineError> {
        let err = |e: ort::Error| EngineError::Allocate {
            what: "the KV cache binding",
            message: e.to_string(),
        };
        let mut binding = self.session.create_binding().map_err(err)?;
        let mut buffers = self.kv_buffers(batch, max_len, 2 * self.graph.layers)?;
        for (i, buf) in buffers.iter_mut().enumerate() {
            let kind = if i % 2 == 0 { "key" } else { "value" };
            let layer = i / 2;
            binding
                .bind_input(format!("past_key_values.{layer}.{kind}"), &*buf)
                .map_err(err)?;
            binding
                .bind_output(format!("present.{layer}.{kind}"), &mut *buf)
                .map_err(err)?;
        }
        Ok((binding, buffers))
    }

    /// Fixed decode buffers for `batch` rows and `max_len` positions, with a graph of its own
    /// under CUDA.
    pub fn fixed_decode(
        &mut self,
        batch: usize,
        max_len: usize,
    ) -> Result<FixedBuffers, EngineError> {
        if self.fixed_batches >= self.graphs_per_session {
            // Captured graphs live as long as the session: a new session frees them. (The
            // runtime is loaded once per process; `init` returns the loaded one.)
            let rt =
                runtime::init(&self.runtime).map_err(|e| EngineError::Runtime(e.to_string()))?;
            self.session = session::open(&rt, &self.dir, self.session_spec)?.session;
            self.fixed_batches = 0;
        }
        self.fixed_batches += 1;
        let (binding, kv) = self.shared_kv_binding(batch, max_len)?;
        let err = |e: ort::Error| EngineError::Allocate {
            what: "the decode buffers",
            message: e.to_string(),
        };
        let with_positions = self.graph.logits_positions;
        let (ids, mask, positions) = self
            .with_buffer_allocator(|alloc| {
                Ok((
                    Tensor::<i64>::new(alloc, [batch, 1])?,
                    Tensor::<i64>::new(alloc, [batch, max_len])?,
                    match with_positions {
                        true => Some(Tensor::<i64>::new(alloc, [batch, 1])?),
                        false => None,
                    },
                ))
            })
            .map_err(err)?;
        let graph = if self.uncaptured.is_some() {
            let id = self.next_graph_id;
            self.next_graph_id += 1;
            Some(session::graph_run_options(i64::from(id))?)
        } else {
            None
        };
        Ok(FixedBuffers {
            binding,
            kv,
            ids,
            mask,
            positions,
            len: max_len,
            graph,
        })
    }

    /// The logits buffer [batch, 1, vocab] for fixed decode steps.
    pub fn fixed_logits(&self, batch: usize, vocab: usize) -> Result<DynValue, EngineError> {
        let shape = [batch, 1, vocab];
        self.with_buffer_allocator(|alloc| match self.graph.logits_type {
            Float::F32 => Tensor::<f32>::new(alloc, shape).map(|t| t.into_dyn()),
            Float::F16 => Tensor::<half::f16>::new(alloc, shape).map(|t| t.into_dyn()),
        })
        .map_err(|e| EngineError::Allocate {
            what: "the logits buffer",
            message: e.to_string(),
        })
    }

    /// An empty KV tensor [batch, kv_heads, 0, head_dim] (the growing cache's start).
    pub fn empty_kv(&self, batch: usize) -> Result<DynValue, EngineError> {
        let shape = [batch, self.graph.kv_heads, 0, self.graph.head_dim];
        let v = match self.graph.kv_type {
            Float::F32 => {
                Tensor::<f32>::from_array((shape, Vec::<f32>::new())).map(|t| t.into_dyn())
            }
            Float::F16 => Tensor::<half::f16>::from_array((shape, Vec::<half::f16>::new()))
                .map(|t| t.into_dyn()),
        };
        v.map_err(|e| EngineError::Allocate {
            what: "the KV cache",
            message: e.to_string(),
        })
    }
}

/// What a batch that decodes on fixed buffers binds ([`Model::fixed_decode`]; the KV cache
/// over them is `kv::FixedKv`).
pub(crate) struct FixedBuffers {
    pub binding: ort::session::IoBinding,
    pub kv: Vec<DynValue>,
    pub ids: Tensor<i64>,
    pub mask: Tensor<i64>,
    /// [batch, 1], for graphs that take `logits_positions`.
    pub positions: Option<Tensor<i64>>,
    /// Width of the mask: the KV buffers' length.
    pub len: usize,
    /// Run options naming this batch's graph under CUDA; `None`: no graph.
    pub graph: Option<ort::session::RunOptions>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onnx::folder::{ConfigSizes, GraphSpec, Layout};

    fn graph(logits_positions: bool) -> GraphSpec {
        GraphSpec {
            layout: Layout::Genai,
            layers: 24,
            kv_type: Float::F16,
            logits_type: Float::F32,
            kv_heads: 2,
            head_dim: 64,
            logits_positions,
        }
    }

    #[test]
    fn a_prefill_costs_its_activations_and_logits_only_where_the_graph_computes_them() {
        // Qwen2.5-Coder-0.5B's sizes.
        let sizes = ConfigSizes {
            layers: Some(24),
            heads: Some(14),
            kv_heads: Some(2),
            hidden: Some(896),
            head_dim: Some(64),
            vocab: Some(151_936),
            intermediate: Some(4864),
        };
        let with = Footprint::of(&sizes, &graph(true));
        // (QKV 18 heads x 64 + 2 x 896 + 3 x 4864) fp16 + 2 x 896 float32.
        assert_eq!(
            with.prefill_bytes_per_token,
            2 * (1152 + 1792 + 14_592) + 8 * 896
        );
        // One logits row per sequence: float32 and the fp16 copy before the cast.
        assert_eq!(with.bytes_per_sequence, 151_936 * 6);
        // A graph without logits_positions computes a logits row for every prompt token.
        let without = Footprint::of(&sizes, &graph(false));
        assert_eq!(
            without.prefill_bytes_per_token,
            with.prefill_bytes_per_token + 151_936 * 6
        );
    }
}
