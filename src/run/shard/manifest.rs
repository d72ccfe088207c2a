//! `manifest.json`: what a shard writes beside its results so that `codegen merge` can tell
//! whether shards belong together. It names the shard, the harness version, the settings that
//! decide outcomes (generation, sandbox, gates, each profile's source, device, precision and
//! prompt protocol), a content hash of each profile's model files, the whole suite's case ids
//! with the sha256 of each case file, the cases this shard ran, and what the merged summary
//! needs from the shard that its results do not hold: each profile's accepted-baseline counts
//! over the shard's cases, its source's warnings, the sandbox isolation, and failed trials.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use thiserror::Error;

use crate::case::LoadedCase;
use crate::config::{Config, GateConfig, ModelProfile, SourceConfig};
use crate::gate::Baseline;
use crate::provision::cache::sha256_file;
use crate::run::shard::Shard;

/// The manifest's file name in a shard's folder.
pub const FILE: &str = "manifest.json";

/// The manifest layout this harness writes and reads.
pub const FORMAT: u32 = 1;

/// The harness's version, as manifests record it.
pub const HARNESS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A shard's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub shard: Shard,
    pub harness_version: String,
    /// The config's settings that decide outcomes ([`settings`]); equal in every shard of a merge.
    pub settings: Json,
    /// The selected profiles, in the config's order.
    pub models: Vec<ModelRun>,
    /// Every case of the suite (not only this shard's), sorted by id.
    pub cases: Vec<CaseEntry>,
    /// The ids of the cases this shard ran, sorted.
    pub ran: Vec<String>,
    /// The sandbox's isolation line (empty when no case ran).
    pub isolation: String,
    /// Trials that failed in this shard (with snapshots on: a mismatch or an error).
    pub failed_trials: usize,
}

/// One profile's part of a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRun {
    pub name: String,
    /// The sha256 of what the profile's completions come from: the model folder's files (as the
    /// generation cache keys them) or the replay file; none for reference solutions, and none
    /// when the source did not open (its cases are errors then).
    pub files_sha256: Option<String>,
    /// The gate the merge applies.
    pub gate: GateConfig,
    /// Accepted-snapshot verdicts over this shard's cases (the merge adds the shards' counts).
    pub baseline: Option<Baseline>,
    /// What the source holds that no trial reports (the same in every shard).
    pub source_warnings: Vec<String>,
    /// The profile as this shard ran it (its load time is this shard's).
    #[serde(default)]
    pub profile: Option<crate::score::footprint::Profile>,
    /// What each device's session generated in this shard (several GPUs).
    #[serde(default)]
    pub devices: Vec<crate::outcome::DeviceUsage>,
}

/// A case of the suite and the sha256 of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseEntry {
    pub id: String,
    pub sha256: String,
}

/// Why a manifest could not be read or written.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The settings of `config` that decide the outcomes of `models`' cases.
pub fn settings(config: &Config, models: &[ModelProfile]) -> Json {
    let profiles: Vec<Json> = models
        .iter()
        .map(|m| {
            let source = match &m.source {
                SourceConfig::Reference => json!({"kind": "reference"}),
                SourceConfig::Replay { path } => json!({"kind": "replay", "path": path}),
                // Which GPUs (`cuda:0,1`) does not change what is generated: shards on runners
                // with different GPU counts merge.
                SourceConfig::Onnx {
                    model,
                    device,
                    precision,
                    ..
                } => json!({"kind": "onnx", "model": model, "device": device, "precision": precision}),
            };
            json!({
                "name": m.name,
                "source": source,
                "generation": config.generation_for(m),
                "prompt": m.prompt,
                "gate": config.gate_for(m),
            })
        })
        .collect();
    json!({
        "suite": {
            "cases": config.suite.cases,
            "exclude": config.suite.exclude,
            "snapshots": config.suite.snapshots,
            "snapshot": config.suite.snapshot,
        },
        "sandbox": config.sandbox,
        "models": profiles,
    })
}

/// The suite's cases with the sha256 of each file, sorted by id.
pub fn case_entries(cases: &[LoadedCase]) -> Vec<CaseEntry> {
    let mut entries: Vec<CaseEntry> = cases
        .iter()
        .map(|c| CaseEntry {
            id: c.key.clone(),
            sha256: sha256_file(&c.path).unwrap_or_else(|e| format!("unreadable: {e}")),
        })
        .collect();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    entries
}

/// The sha256 of a profile's model files: the folder's (from the opened source's description,
/// `model_sha256`) or the replay file's.
pub fn files_sha256(
    config: &Config,
    profile: &ModelProfile,
    described: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<String> {
    match &profile.source {
        SourceConfig::Reference => None,
        SourceConfig::Replay { path } => sha256_file(&config.resolve(path)).ok(),
        SourceConfig::Onnx { .. } => described?.get("model_sha256").cloned(),
    }
}

impl Manifest {
    /// The manifest in a shard's folder.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(FILE);
        let text = fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        // The format first, so that another layout is named as such rather than as a field.
        let format = serde_json::from_str::<Json>(&text)
            .ok()
            .and_then(|j| j.get("format")?.as_u64());
        if let Some(format) = format.filter(|&f| f != u64::from(FORMAT)) {
            return Err(ManifestError::Parse {
                path,
                message: format!(
                    "manifest format {format}, but this harness ({HARNESS_VERSION}) reads format {FORMAT}: merge with the harness version that ran the shards"
                ),
            });
        }
        serde_json::from_str(&text).map_err(|e| ManifestError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// Write the manifest into a shard's folder (through a temporary file and a rename).
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ManifestError> {
        let path = dir.join(FILE);
        let err = |source| ManifestError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let body = serde_json::to_string_pretty(self).map_err(|e| err(io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, body).map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_what_decides_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codegen.toml");
        fs::write(
            &path,
            "[generation]\nmax_new_tokens = 64\n[[models]]\nname = \"m\"\nsource = \"onnx\"\nmodel = \"x\"\ndevice = \"cpu\"\nprecision = \"int4\"\n[models.gate]\nmin_pass_rate = 0.5\n",
        )
        .unwrap();
        let config = Config::load(&path, dir.path()).unwrap();
        let s = settings(&config, &config.models);
        assert_eq!(s["models"][0]["source"]["precision"], "int4");
        assert_eq!(s["models"][0]["source"]["device"], "cpu");
        assert_eq!(s["models"][0]["generation"]["max_new_tokens"], 64);
        assert_eq!(s["models"][0]["gate"]["min_pass_rate"], 0.5);
        assert_eq!(s["sandbox"]["level"], "strict");
    }

    #[test]
    fn round_trips_and_names_another_format() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest {
            format: FORMAT,
            shard: Shard::new(1, 2).unwrap(),
            harness_version: HARNESS_VERSION.into(),
            settings: json!({"a": 1}),
            models: vec![ModelRun {
                name: "m".into(),
                files_sha256: Some("ab".into()),
                gate: GateConfig::default(),
                baseline: Some(Baseline {
                    cases: 2,
                    passed: 1,
                    lost: 0,
                    gained: 1,
                }),
                source_warnings: vec!["w".into()],
                profile: None,
                devices: Vec::new(),
            }],
            cases: vec![CaseEntry {
                id: "c/x".into(),
                sha256: "00".into(),
            }],
            ran: vec!["c/x".into()],
            isolation: "strict".into(),
            failed_trials: 0,
        };
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        fs::write(
            dir.path().join(FILE),
            text.replace("\"format\": 1", "\"format\": 9"),
        )
        .unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest format 9, but this harness"), "{err}");
    }
}
