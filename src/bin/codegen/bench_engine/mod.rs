//! `codegen bench engine`: our engine against onnxruntime-genai on the same model folder, the
//! same prompt token ids, greedy decoding; printed side by side.
//!
//! Figures: decode tokens/s at batch 1 (mean over the first prompts, after a warm-up), time to
//! first token, and suite throughput (cases/min, tokens/s) with our batching versus
//! onnxruntime-genai one sequence at a time. Our engine is driven exactly as the suite drives
//! it: through `CompletionSource` (`prepare` every request, then `complete` each), so what is
//! measured is the scheduler's own batching. Each measurement opens the model afresh (the
//! generation cache off), so no result is reused between measurements.

use std::path::{Path, PathBuf};
use std::time::Instant;

use thiserror::Error;

use codegen_harness::case::{self, Case};
use codegen_harness::device::Provider;
use codegen_harness::engine::onnx::{self, EngineError, OnnxOptions, OnnxSource};
use codegen_harness::engine::{
    Completion, CompletionSource, GenerationSettings, Request, SourceError,
};
use codegen_harness::env::Env;
use codegen_harness::prompt::Prompt;
use codegen_harness::runtime::RuntimeSpec;

use crate::bench_genai::{self, run_genai};
use crate::bench_llama::ToolsArg;
use crate::bench_vs_llama::{self as vs, Ceilings, Llama, LlamaRound, Workloads};

mod report;
use report::Report;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: PathBuf,
    pub provider: Provider,
    pub cases: usize,
    pub max_new_tokens: usize,
    pub batch_size: codegen_harness::engine::BatchSize,
    /// Prompts measured one at a time for the batch-1 figures.
    pub batch1_prompts: usize,
    /// Case files to take prompts from; built-in coding prompts when absent or empty.
    pub cases_dir: Option<PathBuf>,
    pub threads: usize,
    pub skip_genai: bool,
    /// Batch-1 measurements alternate between the two engines this many times (medians are
    /// reported), so that load from other processes hits both alike.
    pub rounds: usize,
    /// Top alternatives (with log-probabilities) recorded per generated token by our engine,
    /// as the suite records them; onnxruntime-genai records none.
    pub top_logprobs: usize,
    /// onnxruntime-genai's suite runs once per size here (comma-separated; `all`: every prompt
    /// in one batch); its best is compared.
    pub genai_batch_sizes: String,
    /// llama.cpp's tools: a folder holding them, or `build` (see `bench_llama`); without it, an
    /// earlier build or PATH, else the llama.cpp rows are skipped.
    pub llama_cpp: Option<ToolsArg>,
    /// The GGUF for llama.cpp (default: the one the folder was exported from, in the cache).
    pub gguf: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("failed to run onnxruntime-genai: {0}")]
    Genai(String),
    #[error("failed to read cases: {0}")]
    Cases(String),
}

/// One side of the comparison.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub batch1_decode_tok_s: f64,
    /// Batch-1 decode with prompt-lookup drafts (ours, on CPU): tok/s, draft tokens fed and
    /// kept.
    pub batch1_drafting: Option<(f64, usize, usize)>,
    pub batch1_ttft_ms: f64,
    pub suite_seconds: f64,
    pub suite_tokens: usize,
    pub suite_batch: usize,
    pub outputs: Vec<Vec<u32>>,
}

impl Figures {
    pub fn cases_per_min(&self, cases: usize) -> f64 {
        cases as f64 * 60.0 / self.suite_seconds.max(1e-9)
    }
    pub fn suite_tok_s(&self) -> f64 {
        self.suite_tokens as f64 / self.suite_seconds.max(1e-9)
    }
}

const BUILTIN: &[&str] = &[
    "Write a Python function `is_palindrome(s: str) -> bool` that ignores case and non-alphanumeric characters.",
    "Write a Python function `fib(n: int) -> int` returning the n-th Fibonacci number iteratively.",
    "Write a Python function `flatten(xs: list) -> list` that flattens arbitrarily nested lists.",
    "Write a Python function `word_count(text: str) -> dict` mapping each lowercase word to its count.",
    "Write a Python function `merge_intervals(xs: list[tuple[int, int]]) -> list[tuple[int, int]]`.",
    "Write a Python function `is_prime(n: int) -> bool`.",
    "Write a Python function `rotate(matrix: list[list[int]]) -> list[list[int]]` rotating 90 degrees clockwise.",
    "Write a Python function `roman(n: int) -> str` converting an integer to a Roman numeral.",
];

/// A case asking `prompt` (chat mode), with no stop strings and no token limit of its own.
fn chat_case(index: usize, prompt: &str) -> Result<Case, BenchError> {
    let text = format!(
        "prompt = {}\nentry_point = \"f\"\ncheck = \"def check(candidate):\\n    pass\\n\"\n",
        toml::Value::String(prompt.to_string())
    );
    let path = PathBuf::from(format!("bench/prompt_{index}.toml"));
    case::parse(Path::new("bench"), &path, &text).map_err(|e| BenchError::Cases(e.to_string()))
}

/// The benchmark's cases: from `--cases-dir` (every case that loads), else the built-in
/// coding prompts; the first `opts.cases` of them. Their own stop strings and token limits are
/// cleared: every sequence generates up to `--max-new-tokens` and stops at EOS, as genai's do.
/// A `--cases-dir` that is missing or holds no loadable case is an error, never a silent switch
/// to the built-in prompts.
pub(crate) fn cases(opts: &BenchOptions) -> Result<Vec<Case>, BenchError> {
    let mut out = Vec::new();
    if let Some(dir) = &opts.cases_dir {
        if !dir.is_dir() {
            return Err(BenchError::Cases(format!(
                "--cases-dir {}: not a directory",
                dir.display()
            )));
        }
        let loaded = case::load_all(dir).map_err(|e| BenchError::Cases(e.to_string()))?;
        out.extend(loaded.into_iter().filter_map(|l| l.case.ok()));
        if out.is_empty() {
            return Err(BenchError::Cases(format!(
                "--cases-dir {}: no case file loads",
                dir.display()
            )));
        }
    } else {
        for (i, p) in BUILTIN.iter().enumerate() {
            out.push(chat_case(i, p)?);
        }
    }
    // The engine generates identical greedy requests once (as the suite does), so a repeated
    // prompt would be counted twice and generated once: every case must be distinct.
    let n = opts.cases.max(1);
    if n > out.len() {
        return Err(BenchError::Cases(format!(
            "--cases {n} needs {n} distinct prompts, and {} has {}",
            opts.cases_dir.as_ref().map_or_else(
                || "the built-in set".to_string(),
                |d| d.display().to_string()
            ),
            out.len()
        )));
    }
    Ok(out
        .into_iter()
        .take(n)
        .map(|mut c| {
            c.stop.clear();
            c.max_new_tokens = None;
            c
        })
        .collect())
}

/// Open the model for one measurement: the generation cache off, `batch_size` sequences at a
/// time, no progress bar.
/// Open the model as the harness would; `drafts` overrides prompt-lookup drafting.
fn open(
    opts: &BenchOptions,
    env: &Env,
    batch_size: codegen_harness::engine::BatchSize,
    drafts: Option<bool>,
) -> Result<OnnxSource, BenchError> {
    let settings = GenerationSettings {
        max_new_tokens: opts.max_new_tokens,
        batch_size,
        top_logprobs: opts.top_logprobs,
        ..GenerationSettings::default()
    };
    let runtime = RuntimeSpec::from_env(opts.provider, env);
    let mut options = OnnxOptions::new(runtime, env.cache.clone(), settings);
    options.apply_env(&env.engine);
    options.no_cache = true;
    options.progress = false;
    options.threads = opts.threads;
    options.drafts = drafts.unwrap_or(options.drafts);
    Ok(onnx::open_with(&opts.model, options)?)
}

fn request<'a>(case: &'a Case, prompt: &'a Prompt) -> Request<'a> {
    Request::new(case, prompt, 1, None)
}

/// One round of our batch-1 figures: decode tok/s, time to first token (ms), and prefill
/// tok/s of the long prompt when one is given.
#[derive(Debug, Clone, Copy, Default)]
struct Batch1 {
    decode_tok_s: f64,
    ttft_ms: f64,
    prefill_tok_s: f64,
}

/// Batch-1 figures on a freshly opened model, plain decode (no drafts: the workload of
/// llama-bench and onnxruntime-genai): one warm-up request, then each of the first `k` cases
/// alone, then `long` (one token: its time to first token is the prefill).
fn batch1(
    opts: &BenchOptions,
    env: &Env,
    cases: &[Case],
    prompts: &[Prompt],
    k: usize,
    long: Option<&(Case, Prompt)>,
) -> Result<Batch1, BenchError> {
    let src = open(
        opts,
        env,
        codegen_harness::engine::BatchSize::Rows(1),
        Some(false),
    )?;
    let decode = decode_alone(&src, cases, prompts, k)?;
    let (n, secs, ttft) = (decode.tokens, decode.seconds, decode.ttft_ms);
    let mut prefill_tok_s = 0.0;
    if let Some((case, prompt)) = long {
        let tm = src
            .complete(&request(case, prompt))?
            .remove(0)
            .timing
            .unwrap_or_default();
        prefill_tok_s = tm.prompt_tokens as f64 * 1e3 / tm.time_to_first_token_ms.max(1e-9);
    }
    Ok(Batch1 {
        decode_tok_s: if secs > 0.0 { n as f64 / secs } else { 0.0 },
        ttft_ms: ttft / k as f64,
        prefill_tok_s,
    })
}

/// What the first `k` cases decoded alone gave, after one warm-up request: tokens after the
/// first and their seconds, the summed time to first token, and the draft tokens fed and kept.
#[derive(Debug, Clone, Copy, Default)]
struct Alone {
    tokens: usize,
    seconds: f64,
    ttft_ms: f64,
    drafted: usize,
    kept: usize,
}

fn decode_alone(
    src: &OnnxSource,
    cases: &[Case],
    prompts: &[Prompt],
    k: usize,
) -> Result<Alone, BenchError> {
    let mut warm = cases[0].clone();
    warm.key = "warm-up".into();
    warm.max_new_tokens = Some(4);
    src.complete(&request(&warm, &prompts[0]))?;
    let mut alone = Alone::default();
    for (case, prompt) in cases.iter().zip(prompts).take(k) {
        let c = src.complete(&request(case, prompt))?.remove(0);
        let tm = c.timing.unwrap_or_default();
        if tm.generated_tokens > 1 && tm.decode_tokens_per_s > 0.0 {
            alone.tokens += tm.generated_tokens - 1;
            alone.seconds += (tm.generated_tokens - 1) as f64 / tm.decode_tokens_per_s;
        }
        alone.ttft_ms += tm.time_to_first_token_ms;
        alone.drafted += tm.draft_tokens;
        alone.kept += tm.accepted_draft_tokens;
    }
    Ok(alone)
}

/// Batch-1 decode with prompt-lookup drafts (CPU): tok/s, draft tokens fed and kept.
fn batch1_drafting(
    opts: &BenchOptions,
    env: &Env,
    cases: &[Case],
    prompts: &[Prompt],
    k: usize,
) -> Result<(f64, usize, usize), BenchError> {
    let src = open(
        opts,
        env,
        codegen_harness::engine::BatchSize::Rows(1),
        Some(true),
    )?;
    let a = decode_alone(&src, cases, prompts, k)?;
    let tok_s = if a.seconds > 0.0 {
        a.tokens as f64 / a.seconds
    } else {
        0.0
    };
    Ok((tok_s, a.drafted, a.kept))
}

/// The long prompt of the prefill figure: every built-in prompt in one chat message, asking
/// for one token.
fn long_prompt() -> Result<(Case, Prompt), BenchError> {
    let mut case = chat_case(BUILTIN.len(), &BUILTIN.join("\n\n"))?;
    case.key = "prefill".into();
    case.max_new_tokens = Some(1);
    let prompt = Prompt::for_case(&case);
    Ok((case, prompt))
}

/// The comparison with llama.cpp and the ceilings (CPU runs): llama.cpp when it is ready (else
/// why not), the workloads, the long prompt, and the ceilings measured so far.
struct VsLlama {
    llama: Result<Llama, String>,
    workloads: Workloads,
    long: (Case, Prompt),
    ceilings: Ceilings,
}

/// Measure the ceilings and get llama.cpp ready (CPU only; none under CUDA).
fn vs_llama(
    opts: &BenchOptions,
    env: &Env,
    src: &OnnxSource,
    ids: &[Vec<u32>],
    k: usize,
) -> Result<Option<VsLlama>, BenchError> {
    if opts.provider != Provider::Cpu {
        return Ok(None);
    }
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let long = long_prompt()?;
    let mean = |v: &[Vec<u32>]| v.iter().map(Vec::len).sum::<usize>() / v.len().max(1);
    let rows = opts.batch_size.rows(opts.provider).min(ids.len());
    let workloads = Workloads {
        threads,
        depth: mean(&ids[..k]),
        new_tokens: opts.max_new_tokens,
        reps: k,
        prefill: src.prompt_ids(&long.1)?.len(),
        batch: (mean(ids), opts.max_new_tokens, rows),
    };
    let provisioner = codegen_harness::provision::Provisioner::from_env(env);
    let llama = vs::prepare(
        opts.llama_cpp.as_ref(),
        &provisioner,
        &opts.model,
        opts.gguf.as_deref(),
    );
    let mut ceilings = vs::before_rounds(threads);
    let runtime = codegen_harness::runtime::init(&RuntimeSpec::from_env(opts.provider, env)).ok();
    let gguf = llama.as_ref().ok().map(|l| l.gguf.clone()).or_else(|| {
        let dir = codegen_harness::models::gguf_dir(&env.cache);
        crate::bench_llama::gguf_for(&opts.model, &dir, opts.gguf.as_deref()).ok()
    });
    vs::weights(&mut ceilings, &opts.model, gguf.as_deref());
    if let Some(rt) = &runtime {
        vs::time_kernels(&mut ceilings, &rt.environment, (threads, env.engine.spin));
    }
    Ok(Some(VsLlama {
        llama,
        workloads,
        long,
        ceilings,
    }))
}

/// Run `opts.rounds` rounds and return the printed report.
pub fn run(opts: &BenchOptions, env: &Env) -> Result<String, BenchError> {
    // Read the cases before loading the model: a wrong --cases-dir fails at once.
    let cases = cases(opts)?;
    if !opts.skip_genai {
        bench_genai::check_batch_sizes(&opts.genai_batch_sizes)?;
    }
    let prompts: Vec<Prompt> = cases.iter().map(Prompt::for_case).collect();
    let t = Instant::now();
    let src = open(opts, env, opts.batch_size, None)?;
    let load_s = t.elapsed().as_secs_f64();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| src.prompt_ids(p))
        .collect::<Result<_, _>>()?;
    let info = src.describe();
    let k = opts.batch1_prompts.clamp(1, ids.len());
    let mut vs = vs_llama(opts, env, &src, &ids, k)?;
    let inputs = Inputs {
        cases: &cases,
        prompts: &prompts,
        ids: &ids,
        k,
    };
    let mut rounds = rounds(opts, env, &inputs, vs.as_ref())?;
    if let Some(v) = vs.as_mut() {
        let runtime = codegen_harness::runtime::init(&RuntimeSpec::from_env(opts.provider, env));
        let env_rt = runtime.as_ref().ok().map(|r| &r.environment);
        vs::after_rounds(
            &mut v.ceilings,
            env_rt,
            (v.workloads.threads, env.engine.spin),
        );
    }
    let mut ours = Figures {
        batch1_decode_tok_s: median(&rounds.ours, false),
        batch1_ttft_ms: median(&rounds.ours, true),
        batch1_drafting: rounds.drafting.first().map(|&(_, drafted, kept)| {
            let tok_s = vs::median(rounds.drafting.iter().map(|d| d.0));
            (tok_s, drafted, kept)
        }),
        ..Figures::default()
    };
    let suite = suite(&src, opts, &cases, &prompts, &mut ours)?;
    let genai = if opts.skip_genai {
        Err(BenchError::Genai("skipped (--skip-genai)".into()))
    } else if let Some(e) = rounds.genai_err.take() {
        Err(e)
    } else {
        run_genai(opts, env, &ids, false).map(|(mut f, suite)| {
            f.batch1_decode_tok_s = median(&rounds.genai, false);
            f.batch1_ttft_ms = median(&rounds.genai, true);
            (f, suite)
        })
    };
    let report = Report {
        opts,
        info: &info,
        ids: &ids,
        k,
        load_s,
        ours: &ours,
        genai: &genai,
        rounds: &rounds,
        suite: &suite,
        vs: vs.as_ref(),
    };
    let mut s = String::new();
    report.header(&mut s);
    report.table(&mut s);
    report.vs_llama(&mut s);
    report.tail(&mut s);
    Ok(s)
}

/// The prompts the rounds measure: cases, their prompts and token ids, and how many of them the
/// batch-1 figures take.
struct Inputs<'a> {
    cases: &'a [Case],
    prompts: &'a [Prompt],
    ids: &'a [Vec<u32>],
    k: usize,
}

/// Every round's figures: our batch-1 figures (decode tok/s, time to first token ms, prefill
/// tok/s), onnxruntime-genai's until it fails, and with llama.cpp our batch tok/s and
/// llama.cpp's figures until they fail.
struct Rounds {
    ours: Vec<(f64, f64)>,
    /// Batch-1 decode with drafts (CPU): tok/s, draft tokens fed and kept.
    drafting: Vec<(f64, usize, usize)>,
    ours_prefill: Vec<f64>,
    ours_batch: Vec<f64>,
    genai: Vec<(f64, f64)>,
    genai_err: Option<BenchError>,
    llama: Vec<LlamaRound>,
    llama_err: Option<String>,
}

/// Measure `opts.rounds` rounds, each engine in turn.
fn rounds(
    opts: &BenchOptions,
    env: &Env,
    inputs: &Inputs<'_>,
    vs: Option<&VsLlama>,
) -> Result<Rounds, BenchError> {
    let mut rounds = Rounds {
        ours: Vec::new(),
        drafting: Vec::new(),
        ours_prefill: Vec::new(),
        ours_batch: Vec::new(),
        genai: Vec::new(),
        genai_err: None,
        llama: Vec::new(),
        llama_err: None,
    };
    let (cases, prompts) = (inputs.cases, inputs.prompts);
    let long = vs.map(|v| &v.long);
    for _ in 0..opts.rounds.max(1) {
        let b = batch1(opts, env, cases, prompts, inputs.k, long)?;
        rounds.ours.push((b.decode_tok_s, b.ttft_ms));
        rounds.ours_prefill.push(b.prefill_tok_s);
        if opts.provider == Provider::Cpu {
            rounds
                .drafting
                .push(batch1_drafting(opts, env, cases, prompts, inputs.k)?);
        }
        if !opts.skip_genai && rounds.genai_err.is_none() {
            match run_genai(opts, env, inputs.ids, true) {
                Ok((f, _)) => rounds.genai.push((f.batch1_decode_tok_s, f.batch1_ttft_ms)),
                Err(e) => rounds.genai_err = Some(e),
            }
        }
        let Some((v, Ok(llama))) = vs.map(|v| (v, &v.llama)) else {
            continue;
        };
        if rounds.llama_err.is_none() {
            let src = open(opts, env, opts.batch_size, None)?;
            let mut f = Figures::default();
            suite(&src, opts, cases, prompts, &mut f)?;
            rounds.ours_batch.push(f.suite_tok_s());
            match vs::llama_round(llama, &v.workloads) {
                Ok(r) => rounds.llama.push(r),
                Err(e) => rounds.llama_err = Some(format!("llama.cpp: {e}")),
            }
        }
    }
    Ok(rounds)
}

/// The median of the rounds' first (or `second`) figure; 0 with none.
fn median(v: &[(f64, f64)], second: bool) -> f64 {
    vs::median(v.iter().map(|p| if second { p.1 } else { p.0 }))
}

/// What our suite run showed beyond its figures.
struct Suite {
    first_text: String,
    /// Peak host bytes, and the GPU memory the process held.
    peak: u64,
    device_peak: Option<u64>,
}

/// The suite as the harness runs it: every request handed to the scheduler, then each
/// completed; the scheduler sorts and batches them. Fills `ours`' suite figures.
fn suite(
    src: &OnnxSource,
    opts: &BenchOptions,
    cases: &[Case],
    prompts: &[Prompt],
    ours: &mut Figures,
) -> Result<Suite, BenchError> {
    let requests: Vec<Request<'_>> = cases
        .iter()
        .zip(prompts)
        .map(|(c, p)| request(c, p))
        .collect();
    let t = Instant::now();
    src.prepare(&requests)?;
    let outs: Vec<Completion> = requests
        .iter()
        .map(|r| src.complete(r).map(|mut c| c.remove(0)))
        .collect::<Result<_, _>>()?;
    ours.suite_seconds = t.elapsed().as_secs_f64();
    // `auto` shows as the widest batch the scheduler may cut (memory cuts it further).
    ours.suite_batch = opts.batch_size.rows(opts.provider).min(requests.len());
    ours.outputs = outs
        .iter()
        .map(|c| c.tokens.as_ref().map(|t| t.ids.clone()).unwrap_or_default())
        .collect();
    ours.suite_tokens = ours.outputs.iter().map(Vec::len).sum();
    let first_text = outs.first().map(|c| c.text.clone()).unwrap_or_default();
    let timing = outs.iter().filter_map(|c| c.timing.as_ref());
    let peak = timing
        .clone()
        .filter_map(|t| t.peak_host_bytes)
        .max()
        .unwrap_or(0);
    let device_peak = timing.filter_map(|t| t.peak_device_bytes).max();
    Ok(Suite {
        first_text,
        peak,
        device_peak,
    })
}
