//! `codegen generate` and `codegen finish`: the steps around `cargo nextest run --test codegen`.
//! `generate` fills the generation cache for the selected trials in batches (so that each of
//! nextest's test processes answers from the cache without loading a model); `finish` writes
//! the summary, results and verdict of a nextest run (or of all its partitions) from the
//! trials its processes recorded, and exits 101 when the gate fails or a trial failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use codegen_harness::env::Env;
use codegen_harness::harness::RunOptions;
use codegen_harness::nextest;

/// What both steps take to find the suite.
#[derive(Args)]
pub struct SuiteArgs {
    /// Config file (default harness/codegen.toml under the current directory).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model profiles, comma-separated (default: the enabled ones).
    #[arg(long)]
    models: Option<String>,
}

impl SuiteArgs {
    fn options(self, env: Env) -> anyhow::Result<RunOptions> {
        let root = std::env::current_dir().context("failed to read the current directory")?;
        let mut options = RunOptions::from_env(&root, env);
        if let Some(config) = self.config {
            options.config = Some(config);
        }
        if let Some(models) = self.models {
            options.models = Some(models.split(',').map(|s| s.trim().to_string()).collect());
        }
        Ok(options)
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    suite: SuiteArgs,
    /// Only the trials named in this file, one a line (`cargo nextest list --test codegen
    /// --partition hash:K/N --message-format oneline` output works as it is).
    #[arg(long, value_name = "FILE")]
    trials: Option<PathBuf>,
    /// libtest's filter arguments, as `codegen run` takes them.
    #[arg(last = true)]
    libtest_args: Vec<String>,
}

#[derive(Args)]
pub struct FinishArgs {
    #[command(flatten)]
    suite: SuiteArgs,
    /// nextest run folders (`<results>/nextest-<run id>`; one per partition), or a results
    /// folder to take its newest run (default: the config's results folder).
    dirs: Vec<PathBuf>,
}

pub fn generate(args: GenerateArgs, env: Env) -> anyhow::Result<ExitCode> {
    let options = args.suite.options(env)?;
    let trials = args
        .trials
        .as_deref()
        .map(nextest::read_trial_list)
        .transpose()?;
    let libtest = libtest_mimic::Arguments::from_iter(
        std::iter::once("codegen generate".to_string()).chain(args.libtest_args),
    );
    let started = std::time::Instant::now();
    let generated = nextest::generate(&options, &libtest, trials.as_deref())?;
    println!(
        "codegen: {} model requests in the generation cache ({:.1} s)",
        generated.requests - generated.failed.len(),
        started.elapsed().as_secs_f64()
    );
    for f in &generated.failed {
        println!("  failed: {f}");
    }
    // A request that failed fails its trial in the test run, which says why.
    Ok(ExitCode::SUCCESS)
}

pub fn finish(args: FinishArgs, env: Env) -> anyhow::Result<ExitCode> {
    let options = args.suite.options(env)?;
    let dirs = match args.dirs.is_empty() {
        false => args.dirs,
        true => vec![
            codegen_harness::Config::load(&options.config_path(), &options.root)?.results_dir(),
        ],
    };
    let dirs = nextest::run_dirs(&dirs)?;
    for d in &dirs {
        println!("codegen: finishing {}", d.display());
    }
    let finished = nextest::finish(&options, &dirs)?;
    println!(
        "\ncodegen: {} of the suite's {} trials recorded{}",
        finished.recorded,
        finished.trials,
        match finished.failed_trials {
            0 => String::new(),
            n => format!("; {n} failed (snapshot mismatches or errors: see nextest's output)"),
        }
    );
    let removed = nextest::prune_older_runs(&dirs);
    if !removed.is_empty() {
        println!(
            "codegen: removed {} older nextest run folder(s) beside the finished one(s)",
            removed.len()
        );
    }
    Ok(match finished.passed {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(101),
    })
}
