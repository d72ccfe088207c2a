//! `codegen bench sessions`: suite throughput with one session against several (data
//! parallelism over GPUs, `device = "cuda:0,1"`), on the same model folder, prompts and
//! settings, printed side by side.
//!
//! Each GPU list opens the model afresh with the generation cache off and runs the suite as the
//! harness does (`prepare` every request, then `complete` each), so what is measured is the
//! scheduler spreading batches over its sessions. The first list is the baseline the others'
//! speed-ups are computed against. On a machine with one GPU, `--gpus 0 --gpus 0,0` runs two
//! sessions on that GPU: the code path of two GPUs, not their speed.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use codegen_harness::device::{DeviceSpec, Gpus, Provider};
use codegen_harness::engine::onnx::{self, OnnxOptions};
use codegen_harness::engine::{
    BatchSize, Completion, CompletionSource, DeviceUsage, GenerationSettings, Request,
};
use codegen_harness::env::Env;
use codegen_harness::prompt::Prompt;
use codegen_harness::runtime::RuntimeSpec;

use crate::bench_engine::{BenchError, BenchOptions, cases};

/// What to measure.
#[derive(Debug, Clone)]
pub struct SessionsOptions {
    pub model: PathBuf,
    pub cases_dir: Option<PathBuf>,
    pub cases: usize,
    pub max_new_tokens: usize,
    pub batch_size: BatchSize,
    /// Completions per case (sampled when `temperature` > 0).
    pub samples: usize,
    pub temperature: f32,
    /// One run per entry, e.g. `cuda:0` then `cuda:0,1`.
    pub runs: Vec<DeviceSpec>,
}

/// One run's figures.
struct RunFigures {
    label: String,
    sessions: usize,
    seconds: f64,
    tokens: usize,
    outputs: Vec<Vec<u32>>,
    devices: Vec<DeviceUsage>,
}

fn run_one(
    opts: &SessionsOptions,
    env: &Env,
    spec: &DeviceSpec,
    cases: &[codegen_harness::case::Case],
    prompts: &[Prompt],
) -> Result<RunFigures, BenchError> {
    let ids = spec
        .gpus
        .resolve(codegen_harness::machine::gpu_count())
        .map_err(|e| BenchError::Cases(e.to_string()))?;
    let settings = GenerationSettings {
        max_new_tokens: opts.max_new_tokens,
        batch_size: opts.batch_size,
        temperature: opts.temperature,
        samples: opts.samples,
        ..GenerationSettings::default()
    };
    let runtime = RuntimeSpec::from_env(Provider::Cuda, env);
    let mut options = OnnxOptions::new(runtime, env.cache.clone(), settings);
    options.apply_env(&env.engine);
    options.no_cache = true;
    options.progress = false;
    options.device_ids = ids.clone();
    let src = onnx::open_with(&opts.model, options)?;
    let requests: Vec<Request<'_>> = cases
        .iter()
        .zip(prompts)
        .map(|(case, prompt)| Request::new(case, prompt, opts.samples.max(1), None))
        .collect();
    let t = Instant::now();
    src.prepare(&requests)?;
    let outs: Vec<Completion> = requests
        .iter()
        .map(|r| src.complete(r))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let seconds = t.elapsed().as_secs_f64();
    let outputs: Vec<Vec<u32>> = outs
        .iter()
        .map(|c| c.tokens.as_ref().map(|t| t.ids.clone()).unwrap_or_default())
        .collect();
    Ok(RunFigures {
        label: spec.to_string(),
        sessions: ids.len(),
        seconds,
        tokens: outputs.iter().map(Vec::len).sum(),
        outputs,
        devices: src.devices(),
    })
}

/// Run every GPU list and return the printed report.
pub fn run(opts: &SessionsOptions, env: &Env) -> Result<String, BenchError> {
    let cases = cases(&BenchOptions {
        model: opts.model.clone(),
        provider: Provider::Cuda,
        cases: opts.cases,
        max_new_tokens: opts.max_new_tokens,
        batch_size: opts.batch_size,
        batch1_prompts: 1,
        cases_dir: opts.cases_dir.clone(),
        threads: 0,
        skip_genai: true,
        rounds: 1,
        top_logprobs: 5,
        genai_batch_sizes: String::new(),
        llama_cpp: None,
        gguf: None,
    })?;
    let prompts: Vec<Prompt> = cases.iter().map(Prompt::for_case).collect();
    let runs: Vec<RunFigures> = opts
        .runs
        .iter()
        .map(|spec| run_one(opts, env, spec, &cases, &prompts))
        .collect::<Result<_, _>>()?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "sessions benchmark: {}, {} cases x {} sample(s), max {} new tokens, temperature {}, batch size {}, generation cache off",
        opts.model.display(),
        cases.len(),
        opts.samples.max(1),
        opts.max_new_tokens,
        opts.temperature,
        opts.batch_size
    );
    let _ = writeln!(
        s,
        "{:<14} {:>8} {:>9} {:>10} {:>10} {:>8} {:>10}",
        "devices", "sessions", "seconds", "tokens", "tok/s", "speed-up", "same ids"
    );
    let base = &runs[0];
    let base_rate = base.tokens as f64 / base.seconds.max(1e-9);
    for r in &runs {
        let rate = r.tokens as f64 / r.seconds.max(1e-9);
        let same = r
            .outputs
            .iter()
            .zip(&base.outputs)
            .filter(|(a, b)| a == b)
            .count();
        let _ = writeln!(
            s,
            "{:<14} {:>8} {:>9.2} {:>10} {:>10.1} {:>7.2}x {:>6}/{}",
            r.label,
            r.sessions,
            r.seconds,
            r.tokens,
            rate,
            rate / base_rate.max(1e-9),
            same,
            base.outputs.len()
        );
    }
    for r in &runs {
        for d in &r.devices {
            let _ = writeln!(s, "  {}: session {d}", r.label);
        }
    }
    let _ = writeln!(
        s,
        "tok/s: generated tokens over the wall time from handing every request to the last completion; speed-up against the first row; same ids: completions token-identical to the first row's"
    );
    Ok(s)
}

/// `0,1` or `all` (the part after `cuda:`) as a CUDA device spec.
pub fn parse_gpus(text: &str) -> Result<DeviceSpec, String> {
    let spec: DeviceSpec = format!("cuda:{text}")
        .parse()
        .map_err(|e: codegen_harness::device::ParseError| e.to_string())?;
    debug_assert!(!matches!(spec.gpus, Gpus::First));
    Ok(spec)
}
