//! `codegen merge`: combine the results of the N shards of a run into what one unsharded run
//! writes (results in case order, summary, Markdown, JUnit, the HTML report) and apply the gate
//! once, over the whole suite. Shards that do not belong together are refused first
//! ([`check`]): different N, harness versions, settings, models, model files, isolation or case
//! sets, a shard missing or given twice, a case run twice or by none.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::evaluate::CaseOutcome;
use crate::gate::{self, Baseline, Verdict};
use crate::report::{self, Journal};
use crate::run::shard::manifest::{self, Manifest, ManifestError};
use crate::score::Summary;

pub mod check;

/// Why shards could not be merged.
#[derive(Debug, Error)]
pub enum MergeError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "failed to merge: {0} holds no {file} and no shard-K-of-N folder",
        file = manifest::FILE
    )]
    NotAShard(PathBuf),
    #[error("failed to merge: these shards do not belong together:\n  - {}", .0.join("\n  - "))]
    Refused(Vec<String>),
    #[error("failed to merge: {path}:{line}: {message}")]
    Results {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("failed to merge: {path}: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error("failed to write the merged results to {dir}: {message}")]
    Write { dir: PathBuf, message: String },
}

/// A shard's folder, its manifest, and its outcomes per model.
#[derive(Debug)]
pub struct ShardRun {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub outcomes: BTreeMap<String, Vec<CaseOutcome>>,
}

/// The folders to merge: each given folder that holds a manifest, or else its `shard-K-of-N`
/// subfolders (so `codegen merge target/codegen` finds the shards a run wrote there).
pub fn shard_dirs(given: &[PathBuf]) -> Result<Vec<PathBuf>, MergeError> {
    let mut dirs = Vec::new();
    for dir in given {
        if dir.join(manifest::FILE).is_file() {
            dirs.push(dir.clone());
            continue;
        }
        let found = crate::report::entries_where(dir, |p, n| {
            n.starts_with("shard-") && n.contains("-of-") && p.join(manifest::FILE).is_file()
        });
        if found.is_empty() {
            return Err(MergeError::NotAShard(dir.clone()));
        }
        dirs.extend(found);
    }
    Ok(dirs)
}

/// Read one model's results of a shard, checking that each line reads back as written (so
/// the merged file is the shards' lines, whatever a field's form).
fn read_results(path: &Path) -> Result<Vec<CaseOutcome>, MergeError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(MergeError::Results {
                path: path.into(),
                line: 0,
                message: e.to_string(),
            });
        }
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let err = |message: String| MergeError::Results {
            path: path.into(),
            line: i + 1,
            message,
        };
        let outcome: CaseOutcome = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        if serde_json::to_string(&outcome).map_err(|e| err(e.to_string()))? != line {
            return Err(err(
                "the outcome does not read back as written (results of another harness version?)"
                    .into(),
            ));
        }
        out.push(outcome);
    }
    Ok(out)
}

/// Read the shards in `dirs`: manifests, then (once they are known to belong together) each
/// model's results, which must hold exactly the cases the manifest says the shard ran.
pub fn load(dirs: &[PathBuf]) -> Result<Vec<ShardRun>, MergeError> {
    let mut manifests = Vec::new();
    for dir in dirs {
        manifests.push((dir.clone(), Manifest::read(dir)?));
    }
    manifests.sort_by_key(|(dir, m)| (m.shard, dir.clone()));
    let pairs: Vec<(&Path, &Manifest)> = manifests.iter().map(|(d, m)| (d.as_path(), m)).collect();
    let problems = check::problems(&pairs);
    if !problems.is_empty() {
        return Err(MergeError::Refused(problems));
    }
    let mut shards = Vec::new();
    for (dir, manifest) in manifests {
        let mut outcomes = BTreeMap::new();
        for model in &manifest.models {
            let path = crate::report::results_path(&dir, &model.name);
            let mine = read_results(&path)?;
            let mut keys: Vec<&str> = mine.iter().map(|o| o.key.as_str()).collect();
            keys.sort_unstable();
            if keys != manifest.ran.iter().map(String::as_str).collect::<Vec<_>>()
                || mine.iter().any(|o| o.model != model.name)
            {
                return Err(MergeError::Mismatch {
                    path,
                    message: format!(
                        "holds {} outcomes of model `{}`, but the shard ran {} cases (a libtest filter that left out some trials?)",
                        mine.len(),
                        model.name,
                        manifest.ran.len()
                    ),
                });
            }
            outcomes.insert(model.name.clone(), mine);
        }
        shards.push(ShardRun {
            dir,
            manifest,
            outcomes,
        });
    }
    Ok(shards)
}

/// One model's merged run.
#[derive(Debug)]
pub struct MergedModel {
    pub summary: Summary,
    /// Every case's outcome, in case order (as an unsharded run writes them).
    pub outcomes: Vec<CaseOutcome>,
    pub baseline: Option<Baseline>,
    pub verdict: Verdict,
    pub source_warnings: Vec<String>,
}

/// The shards merged.
#[derive(Debug)]
pub struct Merged {
    pub models: Vec<MergedModel>,
    pub isolation: String,
    /// Shards in which trials failed (snapshot mismatches or errors): folder and count.
    pub failed_trials: Vec<(PathBuf, usize)>,
}

/// Merge shards that [`load`] accepted: outcomes in case order, the summary over all of them,
/// the shards' baseline counts added up, and the gate judged once.
pub fn merge(shards: &[ShardRun]) -> Merged {
    let Some(first) = shards.first() else {
        return Merged {
            models: Vec::new(),
            isolation: String::new(),
            failed_trials: Vec::new(),
        };
    };
    let models = first
        .manifest
        .models
        .iter()
        .enumerate()
        .map(|(m, run)| {
            let mut outcomes: Vec<CaseOutcome> = shards
                .iter()
                .flat_map(|s| s.outcomes.get(&run.name).into_iter().flatten().cloned())
                .collect();
            outcomes.sort_by(|a, b| a.key.cmp(&b.key));
            let mut summary = Summary::of(&run.name, &outcomes);
            summary.config_order = Some(m);
            // The profile as the first shard ran it (a load time is one shard's), and each
            // device's work added up over the shards.
            summary.profile = shards
                .iter()
                .find_map(|s| s.manifest.models[m].profile.clone());
            summary.devices = merged_devices(shards.iter().map(|s| &s.manifest.models[m].devices));
            let parts: Vec<Baseline> = shards
                .iter()
                .filter_map(|s| s.manifest.models[m].baseline)
                .collect();
            let total = parts.iter().fold(Baseline::default(), |t, b| Baseline {
                cases: t.cases + b.cases,
                passed: t.passed + b.passed,
                lost: t.lost + b.lost,
                gained: t.gained + b.gained,
            });
            let baseline = (total.cases > 0).then_some(total);
            let verdict = gate::judge(&summary, &run.gate, baseline);
            let mut source_warnings: Vec<String> = Vec::new();
            for s in shards {
                for w in &s.manifest.models[m].source_warnings {
                    if !source_warnings.contains(w) {
                        source_warnings.push(w.clone());
                    }
                }
            }
            MergedModel {
                summary,
                outcomes,
                baseline,
                verdict,
                source_warnings,
            }
        })
        .collect();
    Merged {
        models,
        isolation: shards
            .iter()
            .map(|s| s.manifest.isolation.clone())
            .find(|i| !i.is_empty())
            .unwrap_or_default(),
        failed_trials: shards
            .iter()
            .filter(|s| s.manifest.failed_trials > 0)
            .map(|s| (s.dir.clone(), s.manifest.failed_trials))
            .collect(),
    }
}

/// Per device label, the shards' batches, sequences, tokens and busy time added up and the
/// largest memory reading, in the order devices first appear.
fn merged_devices<'a>(
    shards: impl Iterator<Item = &'a Vec<crate::outcome::DeviceUsage>>,
) -> Vec<crate::outcome::DeviceUsage> {
    let mut out: Vec<crate::outcome::DeviceUsage> = Vec::new();
    for d in shards.flatten() {
        match out.iter_mut().find(|o| o.device == d.device) {
            Some(o) => {
                o.batches += d.batches;
                o.sequences += d.sequences;
                o.generated_tokens += d.generated_tokens;
                o.busy_s += d.busy_s;
                o.tokens_per_s = o.generated_tokens as f64 / o.busy_s.max(1e-9);
                o.peak_device_bytes = o.peak_device_bytes.max(d.peak_device_bytes);
            }
            None => out.push(d.clone()),
        }
    }
    out
}

impl Merged {
    /// Did the merged run pass: every gate, and no trial failed in any shard (as one unsharded
    /// run's exit status would say)?
    pub fn passed(&self) -> bool {
        self.failed_trials.is_empty() && self.models.iter().all(|m| m.verdict.failures.is_empty())
    }

    /// Write into `out` what one unsharded run writes there (`results-<model>.jsonl`,
    /// `summary-<model>.json`, `summary-<model>.md`, `junit-<model>.xml`), then `report.html`.
    /// Returns each model's summary path.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>, MergeError> {
        let err = |message: String| MergeError::Write {
            dir: out.to_path_buf(),
            message,
        };
        let journal = Journal::new(out);
        let mut written = Vec::new();
        for m in &self.models {
            written.push(
                journal
                    .complete(
                        &m.summary,
                        &m.outcomes,
                        &self.isolation,
                        m.baseline,
                        &m.verdict,
                        &m.source_warnings,
                    )
                    .map_err(|e| err(e.to_string()))?,
            );
        }
        if self.models.len() >= 2 {
            let (summaries, outcomes) = self.side_by_side();
            journal
                .complete_comparison(&summaries, &outcomes)
                .map_err(|e| err(e.to_string()))?;
        }
        report::html::write(out, &out.join("report.html")).map_err(|e| err(e.to_string()))?;
        Ok(written)
    }

    /// Every model's summary and every outcome, for the profiles-side-by-side tables.
    pub fn side_by_side(&self) -> (Vec<Summary>, Vec<CaseOutcome>) {
        let summaries = self.models.iter().map(|m| m.summary.clone()).collect();
        let mut outcomes: Vec<CaseOutcome> = self
            .models
            .iter()
            .flat_map(|m| m.outcomes.iter().cloned())
            .collect();
        outcomes.sort_by(|a, b| (&a.model, &a.key).cmp(&(&b.model, &b.key)));
        (summaries, outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_read_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = crate::snapshot::tests::outcome(false);
        // A float whose shortest form serde_json's fast parser reads one ulp off without
        // `float_roundtrip` (seen in a real run's confidence).
        o.samples[0].confidence = Some(crate::evaluate::Confidence {
            tokens: 291,
            mean_nll: 0.14862696866697728,
            mean_prob: 0.8834024495843664,
            min_prob: 0.3734256662848968,
            low_confidence_tokens: 16,
            sum_nll: 43.25044788209039,
            low_confidence_spans: vec![crate::evaluate::confidence::Span {
                line: Some(3),
                text: " x".into(),
                min_prob: 0.3734256662848968,
            }],
        });
        o.protocol.system = crate::prompt::SystemMessage::None;
        let line = serde_json::to_string(&o).unwrap();
        let path = dir.path().join("results-m.jsonl");
        fs::write(&path, format!("{line}\n")).unwrap();
        assert_eq!(read_results(&path).unwrap(), vec![o]);
        fs::write(&path, line.replace("\"tokens\":291", "\"tokens\":291.0")).unwrap();
        let err = read_results(&path).unwrap_err().to_string();
        assert!(err.contains("results-m.jsonl:1:"), "{err}");
    }
}
