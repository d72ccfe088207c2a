//! codegen-harness: measure how well language models write code, inside `cargo test`.
//!
//! The library is a one-way pipeline, one module per stage; nothing points back up:
//!
//! | stage | module | what it does |
//! | --- | --- | --- |
//! | cases | [`case`] | discover and parse case files (file:line:field errors) |
//! | prompt | [`prompt`] | chat messages (the model's own template) or a completion prefix |
//! | generate | [`engine`] | completion sources: the ONNX Runtime engine, replay files, reference solutions |
//! | extract | [`extract`] | the program out of a reply (fenced blocks, prefix + body, tree-sitter pruning; [`sanitize`]: a cut-off tail) |
//! | syntax | [`syntax`] | tree-sitter-python diagnostics |
//! | run | [`sandbox`] | the program against the case's tests in an isolated Python; raw facts |
//! | judge | [`verdict`] | raw facts against expectations ([`value`]: Python values compared in Rust) |
//! | per case | [`evaluate`] | the flow above for one case and model, producing its [`CaseOutcome`] ([`confidence`]: token NLL, low-confidence spans and their lines) |
//! | aggregate | [`score`] | pass@1, pass@k, pass^k, per-category rates; [`uncertainty`] (AUROC with CIs, the low-probability line test), [`footprint`] (profile facts, timing), [`failure`] classes, [`diversity`], [`following`] (near ties kept toward the accepted output) |
//! | review | [`snapshot`] | deterministic outcome text asserted with insta; the accepted baseline ([`snapshot_origin`]: the case file, profile and what changed, in each snapshot's header; [`trial`]: how each trial ended) |
//! | tell | [`report`] | terminal table, results JSON, Markdown, JUnit, HTML |
//! | decide | [`gate`] | thresholds (and unmeasured cases) into a CI verdict |
//!
//! A run may be one [`shard`] of N (its cases by a stable hash of their ids, with a manifest);
//! [`merge`] checks that shards belong together and turns them into one run's files and verdict.
//!
//! Around the pipeline: [`config`] (`harness/codegen.toml`, typed once), [`mod@env`] (the
//! environment, read once at the entry points), [`device`] (devices, providers, precisions),
//! [`profile`] (a configured profile turned into a completion source), [`provision`] (what
//! comes from PyPI: pinned wheels and venvs) with [`cache`] (locks and hashes of the per-user
//! cache), [`models`] and [`runtime`] (default models and ONNX Runtime's library), [`import`]
//! (HumanEval as case files), [`init`] (a suite set up in the user's own crate), [`doctor`] (whether a model will work here, and why not), and [`harness`], the libtest-mimic glue that `tests/codegen.rs`
//! calls. The `codegen` binary (`src/bin/codegen/`) adds the CLI and the benchmarks.

pub mod cache;
pub mod case;
pub mod confidence;
pub mod config;
pub mod cuda;
pub mod device;
pub mod diversity;
pub mod doctor;
pub mod engine;
pub mod env;
pub mod evaluate;
pub mod extract;
pub mod failure;
pub mod following;
pub mod footprint;
pub mod gate;
pub mod harness;
pub mod import;
pub mod init;
pub mod machine;
pub mod merge;
pub mod models;
pub mod nextest;
pub mod pack;
pub mod profile;
pub mod prompt;
pub mod provision;
pub mod report;
pub mod runtime;
pub mod sandbox;
pub mod sanitize;
pub mod score;
pub mod shard;
pub mod snapshot;
pub mod snapshot_origin;
pub mod stats;
pub mod syntax;
pub mod timeline;
mod toml_error;
pub mod trial;
pub mod uncertainty;
pub mod value;
pub mod verdict;

pub use case::{Case, CaseError, LoadedCase};
pub use config::{Config, ConfigError, ModelProfile, SourceConfig};
pub use device::{Device, Precision, Provider};
pub use engine::{Completion, CompletionSource, GenerationSettings, Request, SourceError};
pub use env::{Env, EnvError};
pub use evaluate::{CaseOutcome, Evaluator};
pub use gate::GateFailure;
pub use harness::{RunOptions, run};
pub use sandbox::{Sandbox, SandboxConfig, WorkerSandbox};
pub use score::Summary;
