//! codegen-harness: measure how well language models write code, inside `cargo test`.
//!
//! The library is a one-way pipeline, one folder per stage; a stage uses the stages above it
//! and the small shared modules, never one below it, and no two modules import each other
//! (`tests/architecture.rs` checks that no cycle comes back):
//!
//! | stage | module | what it does |
//! | --- | --- | --- |
//! | cases | [`case`] | discover and parse case files (file:line:field errors) |
//! | prompt | [`prompt`] | chat messages (the model's own template) or a completion prefix |
//! | generate | [`engine`] | completion sources: the ONNX Runtime engine, replay files, reference solutions |
//! | per case | `evaluate` | one case for one model: extract the program (and sanitize a cut-off tail), check its syntax, run it in the [`sandbox`], judge the raw facts (verdict, value), calibrate timeouts ([`calibrate`]), classify failures, token confidence; its [`CaseOutcome`] |
//! | aggregate | `score` | pass@1, pass@k, pass^k, per-category rates ([`Summary`]); stats, uncertainty (AUROC with CIs), footprint, diversity, following |
//! | review | [`snapshot`] | deterministic outcome text asserted with insta; the accepted baseline (`snapshot_origin`: the case file, profile and what changed, in each snapshot's header; `trial`: how each trial ended) |
//! | tell | [`report`] | terminal table, results JSON, Markdown, JUnit, HTML |
//! | decide | `gate` | thresholds (and unmeasured cases) into a CI verdict ([`GateFailure`]) |
//! | run | `run` | the libtest-mimic [`harness`] `tests/codegen.rs` calls, its cargo-nextest mode ([`nextest`]), one [`shard`] of N and [`merge`], profiles into sources, the timeline, and the environment ([`env`], read once at the entry points) |
//!
//! Shared below the stages: `outcome` (the facts stages record for later ones: device usage,
//! load facts, where extracted code came from), [`device`] (devices, providers, precisions),
//! [`machine`], `syntax` (tree-sitter-python). Settings come typed from [`config`]
//! (`harness/codegen.toml`) and [`env`]; a stage reads no environment.
//! [`provision`] is what comes from PyPI and the per-user cache ([`cache`], [`runtime`], CUDA,
//! [`models`]). Beside the pipeline: [`import`] (HumanEval as case files), [`init`] (a suite set up in the user's own crate), [`doctor`] (whether
//! a model will work here, and why not) and [`pack`] (models and wheels for an offline machine).
//! The `codegen` binary (`src/bin/codegen/`) adds the CLI and the benchmarks.

pub mod case;
pub mod config;
pub mod device;
pub mod doctor;
pub mod engine;
mod evaluate;
mod gate;
pub mod import;
pub mod init;
pub mod machine;
mod outcome;
pub mod pack;
pub mod prompt;
pub mod provision;
pub mod report;
mod run;
mod score;
pub mod snapshot;
mod snapshot_origin;
mod syntax;
mod toml_error;
mod trial;

pub use evaluate::{calibrate, sandbox};
pub use provision::{cache, models, runtime};
pub use run::{env, merge, nextest, shard};

/// What a project's `tests/codegen.rs` calls (and `codegen run`).
pub mod harness {
    pub use crate::run::harness::{Harness, LoadError, RunOptions};
    pub use crate::run::{main, run};
}

pub use case::{Case, CaseError, LoadedCase};
pub use config::{Config, ConfigError, ModelProfile, SourceConfig};
pub use device::{Device, Precision, Provider};
pub use engine::{Completion, CompletionSource, GenerationSettings, Request, SourceError};
pub use evaluate::sandbox::{Sandbox, SandboxConfig, WorkerSandbox};
pub use evaluate::{CaseOutcome, Evaluator};
pub use gate::GateFailure;
pub use run::env::{Env, EnvError};
pub use run::harness::RunOptions;
pub use run::run;
pub use score::Summary;
