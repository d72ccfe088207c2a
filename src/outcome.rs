//! The facts stages record for the stages after them: what the engine's sessions did
//! ([`DeviceUsage`]) and what loading a model cost ([`LoadFacts`]), where extracted code came
//! from ([`Origin`]) and what was left out ([`Dropped`]), how a generation followed its
//! accepted output ([`Followed`]), and the accepted output a snapshot hands the next run's
//! engine ([`AcceptedOutput`]). Later stages (score, snapshot, report, run) read them here, not
//! in the stage that made them.

use serde::{Deserialize, Serialize};

/// What one device's session did over a run (data parallelism: one per GPU of the profile).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceUsage {
    /// `cuda:0`, `cpu`.
    pub device: String,
    pub batches: usize,
    pub sequences: usize,
    pub generated_tokens: u64,
    /// Wall time this session spent in its batches.
    pub busy_s: f64,
    /// Generated tokens per busy second.
    pub tokens_per_s: f64,
    /// The process's memory on this GPU (several sessions on one GPU share the reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_device_bytes: Option<u64>,
}

impl std::fmt::Display for DeviceUsage {
    /// `cuda:1: 3 batches, 82 sequences, 12,345 tokens in 3.1 s (3,982 tok/s), peak 5,120 MiB`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} batches, {} sequences, {} tokens in {:.1} s ({:.0} tok/s)",
            self.device,
            self.batches,
            self.sequences,
            self.generated_tokens,
            self.busy_s,
            self.tokens_per_s
        )?;
        if let Some(b) = self.peak_device_bytes {
            write!(f, ", peak {} MiB", b >> 20)?;
        }
        Ok(())
    }
}

/// What loading a model cost, measured by sources that load one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadFacts {
    /// Wall time to load the model into the engine (sessions, tokenizer), in milliseconds.
    pub load_ms: f64,
    /// Total size of the files in the model folder (recursively), when it could be read.
    pub size_on_disk_bytes: Option<u64>,
}

/// Which part of the text a line range refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Lines of the model's reply.
    Reply,
    /// Lines of the code chosen from the reply (before pruning).
    Code,
}

/// Something the extractor left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub scope: Scope,
    pub first_line: usize,
    pub last_line: usize,
    pub what: String,
    pub reason: String,
}

/// Where the code came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Block `index` (1-based) of `count` fenced code blocks.
    FencedBlock { index: usize, count: usize },
    /// The whole reply (no fences).
    WholeReply,
    /// The case's prefix followed by the generated body.
    PrefixAndBody,
}

/// A greedy generation checked against its accepted output: every accepted token was within
/// the tolerance of this machine's top choice (the output is the accepted one), or the first
/// that was not, from which it decoded freely.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Followed {
    /// Every accepted token was kept.
    Kept { tolerance: f32 },
    /// At `step` (0-based) this machine's top choice was `gap` nats above the accepted token,
    /// more than `tolerance`: the output is this machine's own from there.
    Left {
        step: usize,
        gap: f32,
        tolerance: f32,
    },
}

/// The output a case's accepted snapshot holds, for near-tie resolution: where this machine's
/// top choice differs from the accepted token by no more than the tolerance, the accepted
/// token is kept (see docs/reproducibility.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedOutput {
    /// The `Completion::accept_key` it was accepted under: it is followed only under the
    /// same key.
    pub key: String,
    /// Each sample's token ids, in order.
    pub samples: Vec<Vec<u32>>,
}
