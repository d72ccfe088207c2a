//! The `codegen` command line: import case suites, fetch and export models, run benchmarks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use codegen_harness::models::{self, Precision, Target};

#[derive(Parser)]
#[command(
    name = "codegen",
    version,
    about = "Measure how well language models write code"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Commands>,
}

#[derive(Subcommand)]
enum Commands {
    /// Fetch, export and list model folders.
    #[command(subcommand)]
    Models(ModelsCommand),
}

#[derive(Args, Clone, Copy)]
struct ExportOptions {
    /// cpu: float32 activations; cuda: float16 activations.
    #[arg(long, default_value = "cpu")]
    target: Target,
    /// Weight precision of the linear layers: int4, int8, fp16 or fp32.
    #[arg(long, default_value = "int4")]
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
    /// Export your own GGUF file (architectures llama and qwen2).
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            println!("codegen: run `codegen --help` for the commands");
            Ok(())
        }
        Some(Commands::Models(cmd)) => models_command(cmd),
    }
}

fn models_command(cmd: ModelsCommand) -> Result<()> {
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
                let dir = models::ensure_model(&name, options.target, options.precision)
                    .with_context(|| format!("model {name}"))?;
                println!("{name}: {}", dir.display());
            }
            Ok(())
        }
        ModelsCommand::List => {
            let cached = models::list_cached()?;
            println!("cache: {}", models::models_dir().display());
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
                    models::models_dir().join(models::folder_name(
                        &stem,
                        options.target,
                        options.precision,
                    ))
                }
            };
            models::export_gguf(&gguf, &out, options.target, options.precision)?;
            println!("{}", out.display());
            Ok(())
        }
    }
}
