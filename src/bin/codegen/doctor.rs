//! `codegen doctor [MODEL...]`: whether each model will work here, and if not, why. The edge
//! decides what the library's doctor needs (providers from this machine's driver, ONNX
//! Runtime's library, the cache) and prints its reports; the exit status is non-zero when any
//! check failed.

use std::process::ExitCode;

use clap::Args;
use codegen_harness::device::{Device, Precision, Provider, Target};
use codegen_harness::doctor::{self, DoctorOptions, Status, render};
use codegen_harness::env::Env;
use codegen_harness::models;
use codegen_harness::provision::Provisioner;
use codegen_harness::runtime::{self, RuntimeSpec};

#[derive(Args)]
pub struct DoctorArgs {
    /// Default model names, model folders or .gguf files (default: every default model).
    pub models: Vec<String>,
    /// Print the reports as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where to generate: auto (CPU, and CUDA too when this machine has an NVIDIA driver),
    /// cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Weight precision of exports (default models and GGUFs): native, int4, int8, fp16 or fp32.
    #[arg(long, default_value = "native")]
    pub precision: Precision,
    /// Tokens each generation check generates.
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// Intra-op threads on CPU (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Check files, configs, tokenizer and template only (no ONNX Runtime).
    #[arg(long)]
    pub no_run: bool,
}

pub fn run(args: DoctorArgs, env: &Env) -> ExitCode {
    let driver = runtime::nvidia_driver_present();
    let providers = match args.device {
        Device::Cpu => vec![Provider::Cpu],
        Device::Cuda => vec![Provider::Cuda],
        Device::Auto if driver => vec![Provider::Cpu, Provider::Cuda],
        Device::Auto => vec![Provider::Cpu],
    };
    // ONNX Runtime is loaded once per process: the GPU wheel when CUDA is among the providers
    // (it runs CPU sessions too).
    let library = if providers.contains(&Provider::Cuda) {
        Provider::Cuda
    } else {
        Provider::Cpu
    };
    // Exports for a GPU-only check are built for CUDA (fp16 activations); otherwise for CPU.
    let target = if providers == [Provider::Cuda] {
        Target::Cuda
    } else {
        Target::Cpu
    };
    let options = DoctorOptions {
        provisioner: Provisioner::from_env(env),
        runtime: RuntimeSpec::from_env(library, env),
        providers,
        target,
        precision: args.precision,
        max_new_tokens: args.tokens.max(1),
        threads: args.threads,
        static_only: args.no_run,
    };
    let names: Vec<String> = if args.models.is_empty() {
        models::DEFAULT_MODELS
            .iter()
            .map(|m| m.name.to_string())
            .collect()
    } else {
        args.models
    };
    let mut reports = Vec::new();
    for name in &names {
        if !args.json {
            eprintln!("codegen doctor: checking {name}");
        }
        let report = doctor::diagnose(name, &options);
        if !args.json {
            println!("{}", render::details(&report));
        }
        reports.push(report);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&render::json(&reports)).unwrap_or_default()
        );
    } else {
        print!("{}", render::table(&reports));
    }
    match render::overall(&reports) {
        Status::Fail => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}
