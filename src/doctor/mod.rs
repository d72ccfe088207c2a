//! `codegen doctor`: whether a model will work here, and if not, why.
//!
//! A model (a default model's name, a model folder or a `.gguf` file) goes through a pipeline
//! of checks, each a small function returning one [`Verdict`] (ok, warn, fail or skip, with a
//! remedy): the GGUF header and the export ([`gguf`]), the folder's files, `config.json`, the
//! tokenizer, the special tokens and the chat template ([`checks`], pure functions over a
//! [`snapshot::Snapshot`] read once), then ONNX Runtime: the graph's contract, a short greedy
//! generation on each provider with its logits and repeatability, and whether the model fits
//! this machine's memory and GPU ([`probe`], [`machine`], [`fit`]). The folder rules are the engine's
//! own (`engine::onnx::folder`), and generation goes through the engine itself, so the doctor
//! and the engine cannot disagree. [`render`] turns reports into a table or JSON.

pub mod checks;
pub mod fit;
pub mod gguf;
mod probe;
pub mod render;
pub mod snapshot;
pub mod template;

use crate::machine;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::device::{Precision, Provider, Target};
use crate::provision::Provisioner;
use crate::provision::models::{self, ModelError};
use crate::provision::runtime::RuntimeSpec;

/// The names of the checks, in pipeline order.
pub mod check {
    pub const MODEL: &str = "model";
    pub const GGUF: &str = "gguf";
    /// The exporter's own check of a GGUF: every tensor and metadata key understood.
    pub const CONTRACT: &str = "gguf-contract";
    pub const EXPORT: &str = "export";
    pub const FILES: &str = "files";
    pub const CONFIG: &str = "config";
    pub const TOKENIZER: &str = "tokenizer";
    pub const SPECIAL_TOKENS: &str = "special-tokens";
    pub const CHAT_TEMPLATE: &str = "chat-template";
    pub const ONNX_LOAD: &str = "onnx-load";
    pub const GRAPH: &str = "graph";
    pub const HOST_MEMORY: &str = "host-memory";
    pub const GPU_MEMORY: &str = "gpu-memory";

    /// `generate:cpu`: a short greedy generation through the engine.
    pub fn generate(provider: crate::device::Provider) -> String {
        format!("generate:{provider}")
    }
    /// `logits:cpu`: every generated step's logits free of NaN and +Inf.
    pub fn logits(provider: crate::device::Provider) -> String {
        format!("logits:{provider}")
    }
    /// `repeatable:cpu`: a second load and greedy run gives the same tokens.
    pub fn repeatable(provider: crate::device::Provider) -> String {
        format!("repeatable:{provider}")
    }
}

/// How a check went. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Not run: a check it depends on failed (the detail names it).
    Skip,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's verdict: what was found and, when it is not ok, what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl Verdict {
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Verdict {
        Verdict {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            remedy: None,
        }
    }

    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Verdict {
        Verdict::with_remedy(Status::Warn, check.into(), detail.into(), remedy.into())
    }

    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Verdict {
        Verdict::with_remedy(Status::Fail, check.into(), detail.into(), remedy.into())
    }

    fn with_remedy(status: Status, check: String, detail: String, remedy: String) -> Verdict {
        Verdict {
            check,
            status,
            detail,
            remedy: Some(remedy),
        }
    }

    pub fn skip(check: impl Into<String>, because: &str) -> Verdict {
        Verdict {
            check: check.into(),
            status: Status::Skip,
            detail: format!("not run: {because} did not pass"),
            remedy: None,
        }
    }
}

/// Everything the doctor found about one model.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelReport {
    /// The model as it was named (name, folder or GGUF path).
    pub model: String,
    pub folder: Option<PathBuf>,
    /// The architecture (GGUF `general.architecture`, else `config.json`'s `model_type`).
    pub architecture: Option<String>,
    /// Decoder layers and hidden size (GGUF `{arch}.block_count`/`embedding_length`, else
    /// `config.json`).
    pub layers: Option<u64>,
    pub hidden: Option<u64>,
    /// Bytes of the model folder's files, as the run's summary, the report and `codegen models
    /// list` count them (else of the graph and its weights when the folder cannot be read).
    pub size_bytes: Option<u64>,
    /// Weight precision (`config.json` `codegen_export.precision`, else `unknown`).
    pub precision: Option<String>,
    /// Time to open the model with the engine, on the first provider tried.
    pub load_ms: Option<f64>,
    /// Decode time per generated token, on the first provider tried.
    pub ms_per_token: Option<f64>,
    /// Peak resident memory of the process while the model was loaded and generating.
    pub peak_host_bytes: Option<u64>,
    pub verdicts: Vec<Verdict>,
}

impl ModelReport {
    fn new(model: &str) -> ModelReport {
        ModelReport {
            model: model.to_string(),
            ..ModelReport::default()
        }
    }

    /// The worst status of any check (skips count as ok: their cause is reported).
    pub fn verdict(&self) -> Status {
        self.verdicts
            .iter()
            .map(|v| v.status)
            .filter(|s| *s != Status::Skip)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// The first check that failed.
    pub fn first_failure(&self) -> Option<&Verdict> {
        self.verdicts.iter().find(|v| v.status == Status::Fail)
    }

    /// Whether `check` passed (ok or warn).
    pub fn passed(&self, check: &str) -> bool {
        self.verdicts
            .iter()
            .any(|v| v.check == check && matches!(v.status, Status::Ok | Status::Warn))
    }

    fn push(&mut self, verdict: Verdict) {
        self.verdicts.push(verdict);
    }
}

/// What the doctor needs, decided at the edge (the library reads no environment).
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// Where default models and GGUF exports are cached, and the exporter's Python.
    pub provisioner: Provisioner,
    /// ONNX Runtime's library: its provider decides the wheel (the GPU wheel runs CPU too), and
    /// it is loaded once per process, so it must serve every provider in `providers`.
    pub runtime: RuntimeSpec,
    /// The providers to generate on (CPU; CUDA too where there is a GPU).
    pub providers: Vec<Provider>,
    /// The export a default model name or a GGUF gets.
    pub target: Target,
    pub precision: Precision,
    /// Tokens generated by each run of the generation check.
    pub max_new_tokens: usize,
    /// Intra-op threads on CPU (0: one per core).
    pub threads: usize,
    /// Skip ONNX Runtime (files, configs, tokenizer and template only).
    pub static_only: bool,
}

/// Run every check on one model.
pub fn diagnose(model: &str, options: &DoctorOptions) -> ModelReport {
    let mut report = ModelReport::new(model);
    let Some(folder) = resolve(model, options, &mut report) else {
        return report;
    };
    diagnose_folder(&folder, options, &mut report);
    report.folder = Some(folder);
    report
}

/// Turn the model argument into a folder: a folder as it is, a GGUF through its header and
/// the exporter, a default model name through [`models::ensure_model`].
fn resolve(model: &str, options: &DoctorOptions, report: &mut ModelReport) -> Option<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Some(path.to_path_buf());
    }
    if model.ends_with(".gguf") && path.is_file() && !check_gguf(path, options, report) {
        return None;
    }
    match models::ensure_model(
        &options.provisioner,
        model,
        options.target,
        options.precision,
    ) {
        Ok(folder) => {
            report.push(Verdict::ok(
                if model.ends_with(".gguf") {
                    check::EXPORT
                } else {
                    check::MODEL
                },
                format!("model folder {}", folder.display()),
            ));
            Some(folder)
        }
        Err(e) => {
            let (name, remedy) = match &e {
                ModelError::UnknownModel { .. } => (
                    check::MODEL,
                    "name a model folder, a .gguf file or one of the default models",
                ),
                ModelError::HashMismatch { .. } => (
                    check::MODEL,
                    "the download is damaged: remove the cached GGUF under the cache's gguf/ folder and run again",
                ),
                _ => (
                    check::EXPORT,
                    "see the exporter's message above; `codegen models export FILE.gguf` shows its full output",
                ),
            };
            report.push(Verdict::fail(name, e.to_string(), remedy));
            None
        }
    }
}

/// A GGUF's header and the exporter's contract for it; false when it cannot be exported.
fn check_gguf(path: &Path, options: &DoctorOptions, report: &mut ModelReport) -> bool {
    let header = match gguf::read_header(path) {
        Ok(h) => h,
        Err(e) => {
            report.push(Verdict::fail(
                check::GGUF,
                e.to_string(),
                "download the GGUF again (a truncated or damaged file), or check that it is a GGUF at all",
            ));
            return false;
        }
    };
    let arch = header.architecture().map(str::to_string);
    if let Some(arch) = &arch {
        let num = |key: &str| {
            header
                .metadata
                .get(&format!("{arch}.{key}"))
                .and_then(gguf::GgufValue::as_u64)
        };
        report.layers = num("block_count");
        report.hidden = num("embedding_length");
    }
    report.architecture = arch.clone();
    let mut verdict = checks::gguf_verdict(&header);
    let supported = verdict.status == Status::Ok;
    // The exporter's own check (`python -m exporter check`): before exporting, every
    // tensor and metadata key is one it reads or knows not to matter; for an architecture
    // it lacks, it says what is missing.
    let contract = arch.as_ref().map(|_| exporter_check(path, options));
    if !supported {
        if let Some(Err(msg)) = &contract {
            verdict.detail = format!("{}; the exporter: {msg}", verdict.detail);
        }
        report.push(verdict);
        return false;
    }
    report.push(verdict);
    match contract {
        Some(Ok(summary)) => report.push(Verdict::ok(
            check::CONTRACT,
            format!(
                "every tensor ({}) and metadata key ({}) is read by the {} graph or known not to matter",
                summary["tensors"], summary["metadata_keys"], summary["architecture"].as_str().unwrap_or("?")
            ),
        )),
        Some(Err(msg)) => {
            report.push(Verdict::fail(
                check::CONTRACT,
                msg,
                "the export would drop or misread what is named: use a GGUF of a supported layout, or teach harness/python/exporter what it means",
            ));
            return false;
        }
        None => {}
    }
    true
}

/// `python -m exporter check FILE.gguf`: its JSON summary, or the exporter's error message.
fn exporter_check(path: &Path, options: &DoctorOptions) -> Result<serde_json::Value, String> {
    let env = models::python::PythonEnv::ensure(&options.provisioner, &|_| {})
        .map_err(|e| format!("the exporter's Python environment: {e}"))?;
    let out = env
        .command()
        .args(["-m", "exporter", "check"])
        .arg(path)
        .output()
        .map_err(|e| format!("failed to run the exporter's check: {e}"))?;
    if out.status.success() {
        return serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("the exporter's check printed no JSON: {e}"));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map_or_else(|| err.trim().to_string(), str::to_string))
}

fn diagnose_folder(folder: &Path, options: &DoctorOptions, report: &mut ModelReport) {
    let snap = snapshot::Snapshot::read(folder);
    if report.architecture.is_none() {
        let config = snap.config_or_null();
        report.architecture = config["model_type"].as_str().map(str::to_string);
        report.layers = config["num_hidden_layers"].as_u64();
        report.hidden = config["hidden_size"].as_u64();
    }
    report.size_bytes = crate::engine::folder_size(folder).or_else(|| snap.weights_bytes());
    report.precision = Some(snap.precision());
    for check in checks::STATIC_CHECKS {
        report.push(check(&snap));
    }
    let host = machine::host_memory();
    let gpu = machine::gpu_memory();
    if options.static_only {
        report.push(fit::host_fit(&snap, report.peak_host_bytes, host));
        return;
    }
    probe::run(&snap, options, report);
    report.push(fit::host_fit(&snap, report.peak_host_bytes, host));
    report.push(fit::gpu_fit(&snap, gpu.as_ref()));
}
