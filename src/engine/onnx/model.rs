//! One loaded model folder: the ONNX Runtime session, the tokenizer, the chat template, and the
//! batched KV-cached decode loop.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::ep::ExecutionProvider;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::detok::Detokenizer;
use super::head::DeviceHead;
use super::sampling::{self, Rng, Sampler};
use crate::engine::{Completion, Timing, TokenTrace};
use crate::prompt::TemplateTokens;
use crate::runtime::{self, Device};

/// How the graph expects its cache and positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// onnxruntime-genai: no `position_ids`; GroupQueryAttention derives positions and lengths
    /// from `attention_mask` and keeps each sequence's cache packed from position 0. Batches are
    /// right-padded and the mask marks each row's valid length.
    Genai,
    /// Hugging Face Optimum: explicit `position_ids`, the cache grows by concatenation and the
    /// mask covers every cached position (padding holes included).
    Optimum,
}

/// Element type of the KV cache or logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
}

/// One sequence to generate.
#[derive(Debug, Clone)]
pub struct SeqJob {
    pub prompt_ids: Vec<u32>,
    pub max_new: usize,
    pub stop: Vec<String>,
    pub sampler: Sampler,
    pub seed: u64,
    pub top_logprobs: usize,
}

enum Kv {
    /// Grows by concatenation: presents of one step are the pasts of the next.
    Owned(Vec<DynValue>),
    /// Shared buffers, and every decode input and output at a fixed place.
    Fixed(Box<FixedDecode>),
    /// One buffer per layer bound to both `past_key_values.*` and `present.*`.
    Shared {
        binding: Box<ort::session::IoBinding>,
        cpu: Box<ort::memory::MemoryInfo<'static>>,
        _buffers: Vec<DynValue>,
    },
}

/// Greedy decode steps on buffers that stay put: the KV buffers, the token ids [batch, 1], an
/// attention mask as wide as the KV buffers [batch, len] (ones over each row's valid positions,
/// zeros after) and the logits [batch, 1, vocab], bound once. That is what CUDA graph capture
/// needs: every decode step then has the same shapes and addresses, so ONNX Runtime records the
/// step's few hundred kernel launches once and replays them with one. At batch 1 those launches,
/// not the GPU, bound the decode speed of a small model. Graphs built by onnxruntime-genai's
/// model builder take a mask wider than the valid length (GroupQueryAttention reads each row's
/// length from the mask's sum); onnxruntime-genai decodes its own CUDA graphs the same way.
///
/// Each batch captures its own graph and never replays another's: a graph replays the
/// addresses it was recorded with, and this batch's buffers are freed when it ends.
struct FixedDecode {
    binding: ort::session::IoBinding,
    _kv: Vec<DynValue>,
    ids: Tensor<i64>,
    mask: Tensor<i64>,
    /// Made at the first decode step, when the vocabulary size is known.
    logits: Option<DynValue>,
    /// Width of the mask: the KV buffers' length.
    len: usize,
    /// Run options naming this batch's graph under CUDA; `None`: fixed buffers, no graph.
    graph: Option<ort::session::RunOptions>,
}

/// Run options that name CUDA graph `id` (-1: run without capturing).
fn graph_run_options(id: i64) -> Result<ort::session::RunOptions, ort::Error> {
    let mut options = ort::session::RunOptions::new()?;
    options.set("gpu_graph_id", id.to_string())?;
    Ok(options)
}

/// Run `binding` with these token ids and attention mask, the logits left in `logits_at`, and
/// return the logits. `sync`: wait until the bound outputs are written (the device head reads
/// them from another session, on its own CUDA stream).
fn run_bound(
    session: &mut Session,
    binding: &mut ort::session::IoBinding,
    logits_at: &ort::memory::MemoryInfo<'static>,
    (ids, mask): (&Tensor<i64>, &Tensor<i64>),
    options: Option<&ort::session::RunOptions>,
    sync: bool,
) -> Result<DynValue, String> {
    let run_err = |e: ort::Error| format!("failed to run the model: {e}");
    binding
        .bind_output_to_device("logits", logits_at)
        .map_err(run_err)?;
    binding.bind_input("input_ids", ids).map_err(run_err)?;
    binding
        .bind_input("attention_mask", mask)
        .map_err(run_err)?;
    let mut out = match options {
        Some(options) => session.run_binding_with_options(binding, options),
        None => session.run_binding(binding),
    }
    .map_err(run_err)?;
    if sync {
        binding.synchronize_outputs().map_err(run_err)?;
    }
    out.remove("logits")
        .ok_or_else(|| "failed to run the model: no output `logits`".to_string())
}

/// How [`Model::load`] sets the model up.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Intra-op threads on CPU (0: one per core).
    pub threads: usize,
    /// Choose greedy tokens on the device (`None`: only under CUDA).
    pub device_head: Option<bool>,
    /// Decode greedy batches on fixed buffers, replaying a CUDA graph under CUDA (`None`: only
    /// under CUDA). Forced on CPU, the fixed buffers are used without a graph; the tests use
    /// that to check that the fixed-width attention mask changes no token.
    pub cuda_graph: Option<bool>,
    /// Fixed-decode batches per session (`None`: [`GRAPHS_PER_SESSION`]).
    pub graphs_per_session: Option<usize>,
}

/// A loaded model folder.
pub struct Model {
    pub dir: PathBuf,
    session: Session,
    pub tokenizer: Tokenizer,
    pub layout: Layout,
    pub kv_type: Float,
    pub logits_type: Float,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eos: Vec<u32>,
    pub pad: u32,
    pub chat_template: Option<String>,
    pub template_tokens: TemplateTokens,
    pub provider: &'static str,
    pub threads: usize,
    pub library: PathBuf,
    /// Share one KV buffer between past and present (genai layout only).
    pub shared_kv: bool,
    /// Threads used to choose tokens (rows in parallel; one row's vocabulary split in chunks).
    pub sampling_threads: usize,
    /// Decoded text of single tokens, filled as they are needed.
    pieces: std::collections::HashMap<u32, String>,
    /// Greedy token choice on the model's device (see [`DeviceHead`]).
    head: Option<DeviceHead>,
    /// Zero KV buffers in device memory (`CODEGEN_ZERO_KV=0` turns it off, only to reproduce
    /// what uninitialised buffers do).
    zero_kv: bool,
    /// Greedy batches decode on fixed buffers ([`FixedDecode`]).
    fixed_decode: bool,
    /// The session was created for CUDA graph capture: every run names its graph, and runs that
    /// must not be captured (prefill, growing caches) carry these options.
    uncaptured: Option<ort::session::RunOptions>,
    /// The graph id the next captured batch gets.
    next_graph_id: u32,
    /// Fixed-decode batches the session has run since it was created.
    fixed_batches: usize,
    /// After this many fixed-decode batches the session is created again (see
    /// [`GRAPHS_PER_SESSION`]).
    graphs_per_session: usize,
    /// Whether the session was created for graph capture (what a new session asks for).
    graph_capture: bool,
}

/// Fixed-decode batches (each with a captured CUDA graph) per session, by default. ONNX Runtime
/// keeps every captured graph until the session is dropped, about 2 MiB of host memory each
/// (measured on an H100: 2.3 GiB peak after 340 graphs, 1.5 GiB without graphs); loading the
/// session again takes about a second.
pub const GRAPHS_PER_SESSION: usize = 64;

fn read_json(path: &Path) -> Result<Json, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("failed to read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("failed to parse {}: {e}", path.display()))
}

/// A token given as a string or as `{"content": ...}` (tokenizer_config.json style).
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn float_of(ty: &ValueType, what: &str) -> Result<Float, String> {
    match ty.tensor_type() {
        Some(TensorElementType::Float32) => Ok(Float::F32),
        Some(TensorElementType::Float16) => Ok(Float::F16),
        other => Err(format!(
            "{what} has element type {other:?}; the engine runs float32 or float16"
        )),
    }
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_host_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// GPU memory held by this process (MiB from `nvidia-smi`, which ONNX Runtime's arena keeps at
/// its high-water mark), in bytes.
pub fn device_bytes() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut parts = l.split(',').map(str::trim);
        (parts.next()? == me).then_some(())?;
        parts
            .next()?
            .parse::<u64>()
            .ok()
            .map(|mib| mib * 1024 * 1024)
    })
}

/// Where ONNX Runtime should put (or finds) a value: CPU or device memory, device 0.
pub(super) fn memory_info(
    device: ort::memory::AllocationDevice,
) -> Result<ort::memory::MemoryInfo<'static>, ort::Error> {
    ort::memory::MemoryInfo::new(
        device,
        0,
        ort::memory::AllocatorType::Device,
        ort::memory::MemoryType::Default,
    )
}

/// `count` tensors of `shape` from `alloc`, all zero. Host memory is filled in place; device
/// memory is copied from one host tensor of zeros (made once, not per buffer), unless
/// `zero_device` is off. Device memory comes from ONNX Runtime's arena uninitialised, possibly
/// holding NaNs of earlier tensors; attention kernels may multiply masked positions by zero,
/// and 0 x NaN poisons a row.
fn zeroed_buffers<T>(
    alloc: &ort::memory::Allocator,
    shape: [usize; 4],
    count: usize,
    zero: T,
    on_device: bool,
    zero_device: bool,
) -> Result<Vec<DynValue>, ort::Error>
where
    T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static,
{
    let host_zeros = if on_device && zero_device {
        let n = shape.iter().product::<usize>();
        Some(Tensor::<T>::from_array((shape, vec![zero; n]))?)
    } else {
        None
    };
    (0..count)
        .map(|_| {
            let mut t = Tensor::<T>::new(alloc, shape)?;
            match &host_zeros {
                Some(zeros) => zeros.copy_into(&mut t)?,
                None if !on_device => t.try_extract_tensor_mut::<T>()?.1.fill(zero),
                None => {}
            }
            Ok(t.into_dyn())
        })
        .collect()
}

/// Create the session for `dir` on CPU or CUDA (`want_cuda`), with `threads` intra-op threads
/// (0: the provider's default), asking CUDA for graph capture when `graph` is set. Returns the
/// session, the provider in use, the thread count and whether graphs can be captured.
fn open_session(
    rt: &runtime::Runtime,
    dir: &Path,
    device: Device,
    want_cuda: bool,
    threads: usize,
    graph: bool,
) -> Result<(Session, &'static str, usize, bool), String> {
    let folder = dir.display();
    let setup = |e: ort::Error| format!("failed to create the ONNX Runtime session: {e}");
    let builder_err = |e: ort::Error<ort::session::builder::SessionBuilder>| {
        format!("failed to configure the ONNX Runtime session: {e}")
    };
    let mut builder = Session::builder(&rt.environment)
        .map_err(setup)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(builder_err)?
        .with_inter_threads(1)
        .map_err(builder_err)?
        .with_deterministic_compute(std::env::var_os("CODEGEN_ORT_NONDETERMINISTIC").is_none())
        .map_err(builder_err)?;
    let mut provider = "cpu";
    if want_cuda {
        let cuda = ort::ep::CUDA::default().with_cuda_graph(graph);
        match cuda.register(&mut builder) {
            Ok(()) => provider = "cuda",
            Err(e) if device == Device::Cuda => {
                return Err(format!(
                    "failed to use CUDA: {}",
                    runtime::explain_cuda_failure(&e.to_string())
                ));
            }
            Err(e) => eprintln!(
                "codegen: CUDA execution provider did not load ({}); running on CPU",
                runtime::explain_cuda_failure(&e.to_string())
            ),
        }
    }
    // CPU: one intra-op thread per core (fixed, for reproducible results). CUDA: the graph
    // runs on the GPU, and a spinning pool of CPU threads only gets in the way.
    let threads = match (threads, provider) {
        (0, "cuda") => 1,
        (0, _) => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        (n, _) => n,
    };
    // Spinning pool threads gain ~15% on an idle machine but halve decode speed on a busy one
    // (sandboxes run beside the engine), so they are off unless `CODEGEN_ORT_SPIN=1`.
    let spin = std::env::var("CODEGEN_ORT_SPIN").is_ok_and(|v| v == "1");
    builder = builder
        .with_intra_threads(threads)
        .map_err(builder_err)?
        .with_intra_op_spinning(spin)
        .map_err(builder_err)?;
    let session = builder
        .commit_from_file(dir.join("model.onnx"))
        .map_err(|e| {
            if provider == "cuda" {
                format!(
                    "failed to load {folder}/model.onnx with CUDA: {}",
                    runtime::explain_cuda_failure(&e.to_string())
                )
            } else {
                format!("failed to load {folder}/model.onnx: {e}")
            }
        })?;
    Ok((session, provider, threads, graph && provider == "cuda"))
}

/// INTERIM (replaced when the engine takes a resolved provider and a spec from the edge).
fn interim_runtime_spec(device: Device) -> runtime::RuntimeSpec {
    runtime::RuntimeSpec {
        provider: device.resolve(runtime::nvidia_driver_present()).provider,
        dylib: std::env::var_os("ORT_DYLIB_PATH")
            .filter(|v| !v.is_empty())
            .map(Into::into),
        cache: crate::cache::cache_dir(),
        python: "python3".into(),
    }
}

impl Model {
    /// Load `dir` for `device` (see [`LoadOptions`]).
    pub fn load(dir: &Path, device: Device, options: LoadOptions) -> Result<Model, String> {
        let LoadOptions {
            threads,
            device_head,
            cuda_graph,
            graphs_per_session,
        } = options;
        let folder = dir.display();
        if !dir.is_dir() {
            return Err(format!(
                "failed to open model folder {folder}: not a directory"
            ));
        }
        let missing: Vec<&str> = ["model.onnx", "tokenizer.json", "tokenizer_config.json"]
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "failed to load model folder {folder}: missing {}",
                missing.join(", ")
            ));
        }
        if device == Device::Cuda
            && !runtime::nvidia_driver_present()
            && std::env::var_os("ORT_DYLIB_PATH").is_none()
        {
            return Err("failed to use CUDA: no NVIDIA driver found (/proc/driver/nvidia/version is missing); run with --device cpu, or on a machine with an NVIDIA GPU, driver, CUDA 13 and cuDNN 9".into());
        }
        let rt = runtime::init(&interim_runtime_spec(device)).map_err(|e| e.to_string())?;
        let want_cuda = match device {
            Device::Cpu => false,
            Device::Cuda => true,
            Device::Auto => ort::ep::CUDA::is_available().unwrap_or(false),
        };
        // CUDA graphs are asked for at session creation. A graph ONNX Runtime cannot capture
        // (control flow, kernels outside the CUDA provider) fails there: load it again without.
        let graph_wanted = want_cuda && cuda_graph != Some(false);
        let (session, provider, threads, graph_capture) = match open_session(
            &rt,
            dir,
            device,
            want_cuda,
            threads,
            graph_wanted,
        ) {
            // ONNX Runtime: "This session cannot use the graph capture feature as requested...".
            Err(e) if graph_wanted && cuda_graph.is_none() && e.contains("capture") => {
                eprintln!(
                    "codegen: CUDA graph capture is not possible for {folder}/model.onnx ({e}); decoding without it"
                );
                open_session(&rt, dir, device, want_cuda, threads, false)?
            }
            other => other?,
        };
        if device == Device::Auto {
            eprintln!("codegen: device auto -> {provider}");
        }

        // Graph I/O.
        let inputs: Vec<(String, ValueType)> = session
            .inputs()
            .iter()
            .map(|o| (o.name().to_string(), o.dtype().clone()))
            .collect();
        let outputs: Vec<(String, ValueType)> = session
            .outputs()
            .iter()
            .map(|o| (o.name().to_string(), o.dtype().clone()))
            .collect();
        let has = |n: &str| inputs.iter().any(|(k, _)| k == n);
        for req in ["input_ids", "attention_mask"] {
            if !has(req) {
                return Err(format!(
                    "failed to use {folder}/model.onnx: graph input `{req}` is missing (inputs: {})",
                    inputs
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let layers = (0..)
            .take_while(|i| has(&format!("past_key_values.{i}.key")))
            .count();
        if layers == 0 {
            return Err(format!(
                "failed to use {folder}/model.onnx: no `past_key_values.0.key` input (a KV-cached decoder is required)"
            ));
        }
        for i in 0..layers {
            for kind in ["key", "value"] {
                if !has(&format!("past_key_values.{i}.{kind}")) {
                    return Err(format!(
                        "failed to use {folder}/model.onnx: graph input `past_key_values.{i}.{kind}` is missing"
                    ));
                }
                if !outputs
                    .iter()
                    .any(|(k, _)| *k == format!("present.{i}.{kind}"))
                {
                    return Err(format!(
                        "failed to use {folder}/model.onnx: graph output `present.{i}.{kind}` is missing"
                    ));
                }
            }
        }
        let logits = outputs.iter().find(|(k, _)| k == "logits").ok_or_else(|| {
            format!("failed to use {folder}/model.onnx: graph output `logits` is missing")
        })?;
        let logits_type = float_of(&logits.1, "output `logits`")?;
        let past0 = &inputs
            .iter()
            .find(|(k, _)| k == "past_key_values.0.key")
            .expect("checked above")
            .1;
        let kv_type = float_of(past0, "input `past_key_values.0.key`")?;
        let config = read_json(&dir.join("config.json")).unwrap_or(Json::Null);
        let shape: Vec<i64> = past0.tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        if shape.len() != 4 {
            return Err(format!(
                "failed to use {folder}/model.onnx: `past_key_values.0.key` has rank {}, expected 4 [batch, kv_heads, past, head_dim]",
                shape.len()
            ));
        }
        let cfg = |k: &str| config.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let kv_heads = if shape[1] > 0 {
            shape[1] as usize
        } else {
            cfg("num_key_value_heads")
                .or(cfg("num_attention_heads"))
                .ok_or_else(|| format!("failed to use {folder}: kv_heads is dynamic in the graph and config.json has no num_key_value_heads"))?
        };
        let head_dim = if shape[3] > 0 {
            shape[3] as usize
        } else {
            cfg("head_dim")
                .or_else(|| Some(cfg("hidden_size")? / cfg("num_attention_heads")?))
                .ok_or_else(|| format!("failed to use {folder}: head_dim is dynamic in the graph and config.json has no head_dim"))?
        };
        let layout = if has("position_ids") {
            Layout::Optimum
        } else {
            Layout::Genai
        };
        for (name, _) in &inputs {
            let known = name == "input_ids"
                || name == "attention_mask"
                || name == "position_ids"
                || name.starts_with("past_key_values.");
            if !known {
                return Err(format!(
                    "failed to use {folder}/model.onnx: unexpected graph input `{name}` (the engine feeds input_ids, attention_mask, position_ids, past_key_values.*)"
                ));
            }
        }

        // Tokenizer and special tokens.
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| format!("failed to load {folder}/tokenizer.json: {e}"))?;
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
        let gen_cfg = read_json(&dir.join("generation_config.json")).unwrap_or(Json::Null);
        let chat_template = match tok_cfg.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        let bos_token = token_text(tok_cfg.get("bos_token")).unwrap_or_default();
        let eos_token = token_text(tok_cfg.get("eos_token")).unwrap_or_default();
        let mut eos = ids_of(gen_cfg.get("eos_token_id"));
        for id in ids_of(config.get("eos_token_id")) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        if let Some(id) = tokenizer.token_to_id(&eos_token)
            && !eos.contains(&id)
        {
            eos.push(id);
        }
        if eos.is_empty() {
            return Err(format!(
                "failed to load {folder}: no end-of-sequence token (generation_config.json `eos_token_id`, config.json `eos_token_id` or tokenizer_config.json `eos_token`)"
            ));
        }
        let pad = ids_of(gen_cfg.get("pad_token_id"))
            .first()
            .copied()
            .unwrap_or(eos[0]);
        Ok(Model {
            dir: dir.to_path_buf(),
            session,
            tokenizer,
            layout,
            kv_type,
            logits_type,
            layers,
            kv_heads,
            head_dim,
            eos,
            pad,
            chat_template,
            template_tokens: TemplateTokens {
                bos_token,
                eos_token,
            },
            provider,
            threads,
            library: rt.library,
            shared_kv: std::env::var("CODEGEN_SHARED_KV").map_or(true, |v| v != "0"),
            // On CPU the cores belong to ONNX Runtime's intra-op pool; on CUDA they are free.
            sampling_threads: if provider == "cuda" {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .min(16)
            } else {
                1
            },
            pieces: std::collections::HashMap::new(),
            zero_kv: std::env::var("CODEGEN_ZERO_KV").map_or(true, |v| v != "0"),
            fixed_decode: cuda_graph.unwrap_or(graph_capture),
            uncaptured: if graph_capture {
                Some(
                    graph_run_options(-1)
                        .map_err(|e| format!("failed to set up CUDA graph run options: {e}"))?,
                )
            } else {
                None
            },
            next_graph_id: 1,
            fixed_batches: 0,
            graphs_per_session: graphs_per_session.unwrap_or(GRAPHS_PER_SESSION).max(1),
            graph_capture,
            head: if device_head.unwrap_or(provider == "cuda") {
                Some(DeviceHead::load(&rt.environment, provider, logits_type)?)
            } else {
                None
            },
        })
    }

    /// Whether greedy tokens are chosen on the model's device.
    pub fn has_device_head(&self) -> bool {
        self.head.is_some()
    }

    /// Run `f` with the allocator for buffers the model reads in place: the session's CUDA
    /// allocator under CUDA, its CPU allocator otherwise.
    fn with_buffer_allocator<R>(
        &self,
        f: impl FnOnce(&ort::memory::Allocator) -> Result<R, ort::Error>,
    ) -> Result<R, ort::Error> {
        if self.provider == "cuda" {
            let device = ort::memory::Allocator::new(
                &self.session,
                memory_info(ort::memory::AllocationDevice::CUDA)?,
            )?;
            f(&device)
        } else {
            f(self.session.allocator())
        }
    }

    /// `count` zeroed KV buffers of `max_len` positions for the shared past/present binding.
    fn kv_buffers(
        &self,
        batch: usize,
        max_len: usize,
        count: usize,
    ) -> Result<Vec<DynValue>, String> {
        let shape = [batch, self.kv_heads, max_len, self.head_dim];
        let on_device = self.provider == "cuda";
        let zero_device = self.zero_kv;
        self.with_buffer_allocator(|alloc| match self.kv_type {
            Float::F32 => zeroed_buffers(alloc, shape, count, 0.0f32, on_device, zero_device),
            Float::F16 => {
                zeroed_buffers(alloc, shape, count, half::f16::ZERO, on_device, zero_device)
            }
        })
        .map_err(|e| format!("failed to allocate the KV cache: {e}"))
    }

    /// The KV buffers bound for a batch of `batch` rows and `max_len` positions, and the
    /// binding of past and present to them.
    fn shared_kv_binding(
        &mut self,
        batch: usize,
        max_len: usize,
    ) -> Result<(ort::session::IoBinding, Vec<DynValue>), String> {
        let err = |e: ort::Error| format!("failed to bind the KV cache: {e}");
        let mut binding = self.session.create_binding().map_err(err)?;
        let mut buffers = self.kv_buffers(batch, max_len, 2 * self.layers)?;
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
    fn fixed_decode(&mut self, batch: usize, max_len: usize) -> Result<FixedDecode, String> {
        if self.fixed_batches >= self.graphs_per_session {
            // Captured graphs live as long as the session: a new session frees them. (The
            // runtime is loaded once per process; `init` returns the loaded one.)
            let rt =
                runtime::init(&interim_runtime_spec(Device::Auto)).map_err(|e| e.to_string())?;
            let cuda = self.provider == "cuda";
            let device = if cuda { Device::Cuda } else { Device::Cpu };
            let (session, _, _, _) = open_session(
                &rt,
                &self.dir,
                device,
                cuda,
                self.threads,
                self.graph_capture,
            )?;
            self.session = session;
            self.fixed_batches = 0;
        }
        self.fixed_batches += 1;
        let (binding, kv) = self.shared_kv_binding(batch, max_len)?;
        let err = |e: ort::Error| format!("failed to allocate the decode buffers: {e}");
        let (ids, mask) = self
            .with_buffer_allocator(|alloc| {
                Ok((
                    Tensor::<i64>::new(alloc, [batch, 1])?,
                    Tensor::<i64>::new(alloc, [batch, max_len])?,
                ))
            })
            .map_err(err)?;
        let graph = if self.uncaptured.is_some() {
            let id = self.next_graph_id;
            self.next_graph_id += 1;
            Some(graph_run_options(i64::from(id)).map_err(err)?)
        } else {
            None
        };
        Ok(FixedDecode {
            binding,
            _kv: kv,
            ids,
            mask,
            logits: None,
            len: max_len,
            graph,
        })
    }

    /// The logits buffer [batch, 1, vocab] for fixed decode steps.
    fn fixed_logits(&self, batch: usize, vocab: usize) -> Result<DynValue, String> {
        let shape = [batch, 1, vocab];
        self.with_buffer_allocator(|alloc| match self.logits_type {
            Float::F32 => Tensor::<f32>::new(alloc, shape).map(|t| t.into_dyn()),
            Float::F16 => Tensor::<half::f16>::new(alloc, shape).map(|t| t.into_dyn()),
        })
        .map_err(|e| format!("failed to allocate the logits buffer: {e}"))
    }

    /// Whether greedy batches decode on fixed buffers (replaying a CUDA graph under CUDA):
    /// asked for, the genai layout with shared KV buffers, and tokens chosen on the device.
    pub fn cuda_graph(&self) -> bool {
        self.fixed_decode && self.head.is_some() && self.layout == Layout::Genai && self.shared_kv
    }

    fn empty_kv(&self, batch: usize) -> Result<DynValue, String> {
        let shape = [batch, self.kv_heads, 0, self.head_dim];
        let v = match self.kv_type {
            Float::F32 => {
                Tensor::<f32>::from_array((shape, Vec::<f32>::new())).map(|t| t.into_dyn())
            }
            Float::F16 => Tensor::<half::f16>::from_array((shape, Vec::<half::f16>::new()))
                .map(|t| t.into_dyn()),
        };
        v.map_err(|e| format!("failed to create the KV cache: {e}"))
    }

    /// Generate every job of `jobs` together (one batch). `on_token` is called once per token
    /// generated (any row).
    pub fn generate_batch(
        &mut self,
        jobs: &[SeqJob],
        on_token: &mut dyn FnMut(),
    ) -> Result<Vec<Completion>, String> {
        let b = jobs.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let lens: Vec<usize> = jobs.iter().map(|j| j.prompt_ids.len()).collect();
        if lens.contains(&0) {
            return Err("failed to generate: the prompt is empty after tokenization".into());
        }
        let s = *lens.iter().max().expect("non-empty");
        let start = Instant::now();

        struct Row {
            rng: Rng,
            detok: Detokenizer,
            trace: TokenTrace,
            text: String,
            done: bool,
            finish: Option<String>,
            first_at: Option<f64>,
            last_at: f64,
        }
        let mut rows: Vec<Row> = jobs
            .iter()
            .map(|j| Row {
                rng: Rng::new(j.seed),
                detok: Detokenizer::default(),
                trace: TokenTrace::default(),
                text: String::new(),
                done: j.max_new == 0,
                finish: (j.max_new == 0).then(|| "max_new_tokens".to_string()),
                first_at: None,
                last_at: 0.0,
            })
            .collect();
        let max_stop = jobs
            .iter()
            .flat_map(|j| j.stop.iter().map(|s| s.len()))
            .max()
            .unwrap_or(0);

        // Greedy batches on the shared-KV path leave the logits on the device for the head;
        // sampling needs the whole distribution on the host.
        let use_head = self.head.is_some()
            && self.layout == Layout::Genai
            && self.shared_kv
            && jobs.iter().all(|j| j.sampler.is_greedy());
        let head_k = jobs
            .iter()
            .map(|j| j.top_logprobs)
            .max()
            .unwrap_or(0)
            .max(1);
        let run_err = |e: ort::Error| format!("failed to run the model: {e}");

        // The KV cache: one buffer per layer bound to both past and present (GroupQueryAttention
        // appends in place), or tensors that grow by one position per step.
        let max_len = s + jobs.iter().map(|j| j.max_new).max().unwrap_or(0) + 1;
        let mut kv = if use_head && self.cuda_graph() {
            Kv::Fixed(Box::new(self.fixed_decode(b, max_len)?))
        } else if self.layout == Layout::Genai && self.shared_kv {
            let (binding, buffers) = self.shared_kv_binding(b, max_len)?;
            let cpu = memory_info(ort::memory::AllocationDevice::CPU).map_err(run_err)?;
            Kv::Shared {
                binding: Box::new(binding),
                cpu: Box::new(cpu),
                _buffers: buffers,
            }
        } else {
            let mut past: Vec<DynValue> = Vec::with_capacity(2 * self.layers);
            for _ in 0..2 * self.layers {
                past.push(self.empty_kv(b)?);
            }
            Kv::Owned(past)
        };
        let input_names: Vec<String> = (0..self.layers)
            .flat_map(|i| {
                [
                    format!("past_key_values.{i}.key"),
                    format!("past_key_values.{i}.value"),
                ]
            })
            .collect();
        let output_names: Vec<String> = (0..self.layers)
            .flat_map(|i| [format!("present.{i}.key"), format!("present.{i}.value")])
            .collect();

        // Step 0 feeds the right-padded prompts; step k >= 1 feeds generated token k-1.
        let mut step = 0usize;
        let mut run_secs = 0.0f64;
        let mut last_tokens: Vec<u32> = vec![self.pad; b];
        // The logits' vocabulary size, known after the first run.
        let mut vocab_seen = 0usize;
        loop {
            let (q, total) = if step == 0 { (s, s) } else { (1, s + step) };
            // Fixed decode steps take a mask as wide as the KV buffers, zeros past each row.
            let width = match &kv {
                Kv::Fixed(fixed) if step > 0 => fixed.len,
                _ => total,
            };
            let mut ids = vec![self.pad as i64; b * q];
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
                    match self.layout {
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
            let t_ids = Tensor::<i64>::from_array(([b, q], ids)).map_err(run_err)?;
            let t_mask = Tensor::<i64>::from_array(([b, width], mask)).map_err(run_err)?;
            let run_started = Instant::now();
            // Runs that must not be captured say so when the session captures graphs.
            let uncaptured = self.uncaptured.as_ref();
            let mut owned_logits: Option<DynValue> = None;
            match &mut kv {
                Kv::Shared { binding, cpu, .. } => {
                    // Rebound each step: its shape changes between prefill and decode.
                    let at = match (&self.head, use_head) {
                        (Some(head), true) => &head.logits_memory,
                        _ => &**cpu,
                    };
                    owned_logits = Some(run_bound(
                        &mut self.session,
                        binding,
                        at,
                        (&t_ids, &t_mask),
                        uncaptured,
                        use_head,
                    )?);
                }
                Kv::Fixed(fixed) if step == 0 => {
                    // The prefill has its own shapes: run as usual, not captured.
                    let head = self
                        .head
                        .as_ref()
                        .ok_or("fixed decode needs the device head")?;
                    owned_logits = Some(run_bound(
                        &mut self.session,
                        &mut fixed.binding,
                        &head.logits_memory,
                        (&t_ids, &t_mask),
                        uncaptured,
                        true,
                    )?);
                }
                Kv::Fixed(fixed) => {
                    if fixed.logits.is_none() {
                        // First decode step: bind the fixed inputs and outputs once.
                        let mut logits = self.fixed_logits(b, vocab_seen)?;
                        let binding = &mut fixed.binding;
                        binding
                            .bind_input("input_ids", &fixed.ids)
                            .map_err(run_err)?;
                        binding
                            .bind_input("attention_mask", &fixed.mask)
                            .map_err(run_err)?;
                        binding
                            .bind_output("logits", &mut logits)
                            .map_err(run_err)?;
                        fixed.logits = Some(logits);
                    }
                    t_ids.copy_into(&mut fixed.ids).map_err(run_err)?;
                    t_mask.copy_into(&mut fixed.mask).map_err(run_err)?;
                    let out = match &fixed.graph {
                        Some(options) => self
                            .session
                            .run_binding_with_options(&fixed.binding, options),
                        None => self.session.run_binding(&fixed.binding),
                    }
                    .map_err(run_err)?;
                    drop(out);
                    fixed.binding.synchronize_outputs().map_err(run_err)?;
                }
                Kv::Owned(past) => {
                    let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
                    feed.push(("input_ids".into(), t_ids.into_dyn().into()));
                    feed.push(("attention_mask".into(), t_mask.into_dyn().into()));
                    if self.layout == Layout::Optimum {
                        let t_pos = Tensor::<i64>::from_array(([b, q], pos)).map_err(run_err)?;
                        feed.push(("position_ids".into(), t_pos.into_dyn().into()));
                    }
                    for (name, value) in input_names.iter().zip(past.drain(..)) {
                        feed.push((Cow::Owned(name.clone()), value.into()));
                    }
                    let mut out = match uncaptured {
                        Some(options) => self.session.run_with_options(feed, options),
                        None => self.session.run(feed),
                    }
                    .map_err(run_err)?;
                    for name in &output_names {
                        past.push(out.remove(name).ok_or_else(|| {
                            format!("failed to run the model: no output `{name}`")
                        })?);
                    }
                    owned_logits = Some(
                        out.remove("logits")
                            .ok_or("failed to run the model: no output `logits`")?,
                    );
                }
            }
            let logits: &DynValue = match (&owned_logits, &kv) {
                (Some(logits), _) => logits,
                (None, Kv::Fixed(fixed)) => fixed.logits.as_ref().ok_or("no logits buffer")?,
                (None, _) => return Err("failed to run the model: no logits".into()),
            };
            let shape: Vec<i64> = logits.shape().to_vec();
            if shape.len() != 3 || shape[0] as usize != b {
                return Err(format!(
                    "failed to read logits: shape {shape:?}, expected [batch, seq, vocab]"
                ));
            }
            let (lq, vocab) = (shape[1] as usize, shape[2] as usize);
            vocab_seen = vocab;
            if lq != q && !(lq == 1 && lens.iter().all(|&l| l == s)) {
                return Err(format!(
                    "failed to read logits: the graph returns {lq} positions for {q} inputs; batched prompts of different lengths need logits for every position"
                ));
            }
            // The position each row continues from: its last prompt token at prefill.
            let at_of = |r: usize| if lq == 1 || step > 0 { 0 } else { lens[r] - 1 };
            let mut picks: Vec<Option<sampling::Pick>> = vec![None; b];
            match (&mut self.head, use_head) {
                (Some(head), true) => {
                    let index: Vec<i64> = (0..b).map(|r| at_of(r) as i64).collect();
                    let tops = head.top(logits, &index, lq, head_k)?;
                    run_secs += run_started.elapsed().as_secs_f64();
                    for (r, mut top) in tops.into_iter().enumerate() {
                        if rows[r].done {
                            continue;
                        }
                        let (token, logprob) = top[0];
                        top.truncate(jobs[r].top_logprobs);
                        picks[r] = Some(sampling::Pick {
                            token,
                            logprob,
                            top,
                        });
                    }
                }
                _ => {
                    let data: Cow<'_, [f32]> = match self.logits_type {
                        Float::F32 => {
                            Cow::Borrowed(logits.try_extract_tensor::<f32>().map_err(run_err)?.1)
                        }
                        Float::F16 => Cow::Owned(
                            logits
                                .try_extract_tensor::<half::f16>()
                                .map_err(run_err)?
                                .1
                                .iter()
                                .map(|x| x.to_f32())
                                .collect(),
                        ),
                    };
                    run_secs += run_started.elapsed().as_secs_f64();
                    let row_at = |r: usize| -> &[f32] {
                        let off = (r * lq + at_of(r)) * vocab;
                        &data[off..off + vocab]
                    };
                    let mut active: Vec<sampling::RowChoice<'_>> = rows
                        .iter_mut()
                        .enumerate()
                        .filter(|(_, row)| !row.done)
                        .map(|(r, row)| sampling::RowChoice {
                            row: r,
                            rng: &mut row.rng,
                            sampler: &jobs[r].sampler,
                            top_logprobs: jobs[r].top_logprobs,
                        })
                        .collect();
                    for (r, p) in sampling::pick_rows(&row_at, &mut active, self.sampling_threads) {
                        picks[r] = Some(p);
                    }
                }
            }
            let now = start.elapsed().as_secs_f64();
            for r in 0..b {
                let Some(pick) = picks[r].take() else {
                    continue;
                };
                let job = &jobs[r];
                let row = &mut rows[r];
                let tok = pick.token as u32;
                let tokenizer = &self.tokenizer;
                let mut piece_of = |id: u32| -> String {
                    self.pieces
                        .entry(id)
                        .or_insert_with(|| tokenizer.decode(&[id], false).unwrap_or_default())
                        .clone()
                };
                let top: Vec<(u32, String, f32)> = pick
                    .top
                    .into_iter()
                    .map(|(i, l)| (i as u32, piece_of(i as u32), l))
                    .collect();
                row.trace.ids.push(tok);
                row.trace.pieces.push(piece_of(tok));
                row.trace.logprobs.push(pick.logprob);
                row.trace.top.push(top);
                row.first_at.get_or_insert(now);
                row.last_at = now;
                last_tokens[r] = tok;
                on_token();
                if self.eos.contains(&tok) {
                    row.done = true;
                    row.finish = Some("eos".into());
                    continue;
                }
                let before = row.text.len();
                let piece = row.detok.push(&self.tokenizer, tok)?;
                row.text.push_str(&piece);
                if !piece.is_empty() && max_stop > 0 {
                    let from = before.saturating_sub(max_stop);
                    let from = (0..=from)
                        .rev()
                        .find(|&i| row.text.is_char_boundary(i))
                        .unwrap_or(0);
                    let hit = job
                        .stop
                        .iter()
                        .filter(|st| !st.is_empty())
                        .filter_map(|st| row.text[from..].find(st.as_str()).map(|p| (from + p, st)))
                        .min_by_key(|(p, _)| *p);
                    if let Some((p, st)) = hit {
                        row.text.truncate(p);
                        row.done = true;
                        row.finish = Some(format!("stop string {st:?}"));
                        continue;
                    }
                }
                if row.trace.ids.len() >= job.max_new {
                    row.done = true;
                    row.finish = Some("max_new_tokens".into());
                }
            }
            if rows.iter().all(|r| r.done) {
                break;
            }
            step += 1;
        }
        let total_ms = start.elapsed().as_secs_f64() * 1000.0;
        if std::env::var_os("CODEGEN_PROFILE").is_some() {
            eprintln!(
                "codegen: batch of {b}: {} steps, {:.0} ms total, {:.0} ms in ONNX Runtime",
                step + 1,
                total_ms,
                run_secs * 1000.0
            );
        }
        let peak = peak_host_bytes();
        let device_peak = if self.provider == "cuda" {
            device_bytes()
        } else {
            None
        };
        let mut outs = Vec::with_capacity(b);
        for (r, mut row) in rows.into_iter().enumerate() {
            if !row.finish.as_deref().unwrap_or("").starts_with("stop") {
                let rest = row.detok.flush(&self.tokenizer)?;
                row.text.push_str(&rest);
            }
            let n = row.trace.ids.len();
            let first = row.first_at.unwrap_or(0.0);
            let decode_s = row.last_at - first;
            outs.push(Completion {
                text: row.text,
                timing: Some(Timing {
                    prompt_tokens: lens[r],
                    generated_tokens: n,
                    time_to_first_token_ms: first * 1000.0,
                    decode_tokens_per_s: if n > 1 && decode_s > 0.0 {
                        (n - 1) as f64 / decode_s
                    } else {
                        0.0
                    },
                    total_ms,
                    peak_host_bytes: peak,
                    peak_device_bytes: device_peak,
                }),
                tokens: Some(row.trace),
                finish_reason: row.finish,
            });
        }
        Ok(outs)
    }
}
