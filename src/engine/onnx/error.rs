//! What can go wrong in the engine, as types: the rest of the engine decides on the variant,
//! never on message text. Messages read "failed to ...".

use std::path::PathBuf;

use thiserror::Error;

/// A failure to load a model or to generate with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// The folder does not hold what the engine needs (files, graph inputs and outputs,
    /// config fields, special tokens).
    #[error("failed to use model folder {folder}: {problem}")]
    Folder { folder: PathBuf, problem: String },
    #[error("failed to load ONNX Runtime: {0}")]
    Runtime(String),
    /// The CUDA execution provider is needed and cannot be had (with what to do about it).
    #[error("failed to use CUDA: {0}")]
    Cuda(String),
    /// ONNX Runtime cannot capture this graph into CUDA graphs (control flow, kernels outside
    /// the CUDA provider). The model still runs without capture.
    #[error("failed to capture CUDA graphs for {folder}/model.onnx: {message}")]
    GraphCaptureRefused { folder: PathBuf, message: String },
    #[error("failed to create the ONNX Runtime session: {0}")]
    Session(String),
    #[error("failed to build a chat prompt: {0}")]
    ChatPrompt(String),
    #[error("failed to tokenize the prompt: {0}")]
    Tokenize(String),
    #[error("failed to allocate {what}: {message}")]
    Allocate { what: &'static str, message: String },
    #[error("failed to run the model: {0}")]
    Run(String),
    #[error("failed to generate: {0}")]
    Generate(String),
    /// A prompt that cannot fit: it fails its own case, before anything is allocated.
    #[error(
        "failed to generate: the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, {} in all, more than the model's context length of {context} tokens (config.json max_position_embeddings); shorten the prompt or lower max_new_tokens",
        prompt_tokens + max_new_tokens
    )]
    TooLong {
        prompt_tokens: usize,
        max_new_tokens: usize,
        context: usize,
    },
    /// One sequence whose KV cache alone is over the memory budget of a batch.
    #[error(
        "failed to generate: the sequence needs {} of memory (KV cache of {positions} positions and its prefill), more than the budget of {} for a batch (free device memory under CUDA, half of this machine's memory on a CPU; OnnxOptions::memory_budget_bytes)",
        size(*needed_bytes),
        size(*budget_bytes)
    )]
    OverBudget {
        positions: usize,
        needed_bytes: u64,
        budget_bytes: u64,
    },
    #[error("failed to hash model folder {folder}: {message}")]
    Hash { folder: PathBuf, message: String },
}

/// Bytes as people read them: MiB with one decimal, or KiB below one MiB.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

impl EngineError {
    /// An error of ONNX Runtime while running the graph.
    pub(crate) fn run(e: impl std::fmt::Display) -> EngineError {
        EngineError::Run(e.to_string())
    }

    /// A folder-contract problem.
    pub(crate) fn folder(folder: &std::path::Path, problem: impl Into<String>) -> EngineError {
        EngineError::Folder {
            folder: folder.to_path_buf(),
            problem: problem.into(),
        }
    }
}
