//! The `codegen` command line: import case suites, and (later) fetch models and run benchmarks.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use codegen_harness::bench::{self, BenchOptions};
use codegen_harness::runtime::Device;

#[derive(Debug, Parser)]
#[command(
    name = "codegen",
    version,
    about = "Measure how well language models write code"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Benchmarks (not timed tests).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Our engine against onnxruntime-genai on the same model folder: decode tokens/s at
    /// batch 1 and suite throughput with batching, greedy.
    Engine {
        /// Model folder (model.onnx, tokenizer.json, tokenizer_config.json, ...).
        #[arg(long)]
        model: PathBuf,
        /// auto, cpu or cuda.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Number of prompts in the suite run.
        #[arg(long, default_value_t = 16)]
        cases: usize,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
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
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => Ok(()),
        Some(Cmd::Bench {
            what:
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
                },
        }) => {
            let device: Device = device.parse()?;
            let report = bench::run(&BenchOptions {
                model: model.clone(),
                device,
                cases,
                max_new_tokens,
                batch_size,
                batch1_prompts,
                cases_dir,
                threads,
                skip_genai,
                rounds,
            })
            .with_context(|| format!("failed to benchmark {}", model.display()))?;
            print!("{report}");
            Ok(())
        }
    }
}
