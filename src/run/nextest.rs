//! cargo-nextest: each test runs in its own process, so no process sees the whole run. A test
//! process ([`crate::run::env::NextestProcess`]) judges its trial as any run does (the snapshot,
//! when `[suite] snapshot = true`), records the outcome in one file under
//! `<results>/nextest-<NEXTEST_RUN_ID>/`, and prints no summary, writes no run files and
//! applies no gate. [`finish`] (`codegen finish`) then reads the records of one run, or of the
//! runs of every `--partition`, checks they belong to this suite as it is now, and writes the
//! summary, results and verdict an unpartitioned `cargo test` run would have.
//!
//! [`generate`] (`codegen generate`) fills the generation cache for the selected trials in
//! batches first, so that each test process answers from the cache without loading a model
//! ([`crate::engine::onnx::LazyOnnxSource`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::case::Case;
use crate::engine::Request;
use crate::evaluate::CaseOutcome;
use crate::prompt::Prompt;
use crate::provision::cache::{hex, sha256_file};
use crate::run::harness::{self, Harness, LoadError, RunOptions};
use crate::run::profile::Loading;
use crate::run::shard::manifest;

/// The record layout this harness writes and reads.
pub const FORMAT: u32 = 1;

/// One trial as a nextest test process ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub format: u32,
    pub harness_version: String,
    /// The nextest run that ran it.
    pub run_id: String,
    /// The trial's name (`model::category::id`).
    pub trial: String,
    /// The sha256 of the settings that decide outcomes (as shard manifests record them).
    pub settings_sha256: String,
    /// The sha256 of the case file as it was run.
    pub case_sha256: String,
    /// The sandbox's isolation line in that process.
    pub isolation: String,
    /// Whether the trial failed (a snapshot mismatch or an error).
    pub failed: bool,
    pub outcome: CaseOutcome,
}

/// Why a nextest run could not be recorded, finished or prepared.
#[derive(Debug, Error)]
pub enum NextestError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("failed to write the trial's record {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "failed to finish: {0} holds no trial records and no nextest-<run id> folder (run `cargo nextest run --test codegen` first)"
    )]
    NoRecords(PathBuf),
    #[error("failed to finish: {path}: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("failed to read the trial list {path}: {message}")]
    TrialList { path: PathBuf, message: String },
    #[error(transparent)]
    Results(#[from] crate::provision::cache::FileError),
}

/// The folder the trials of nextest run `run_id` are recorded in.
pub fn run_dir(results: &Path, run_id: &str) -> PathBuf {
    results.join(format!("nextest-{run_id}"))
}

/// A record's file name: the case id with `/` as `__`, under its model's folder.
fn record_path(dir: &Path, model: &str, key: &str) -> PathBuf {
    let name: String = key
        .replace('/', "__")
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '_',
        })
        .collect();
    dir.join(model).join(format!("{name}.json"))
}

/// The sha256 of the settings that decide the outcomes of `h`'s models.
fn settings_sha256(h: &Harness) -> String {
    hex(&Sha256::digest(
        manifest::settings(&h.config, &h.models)
            .to_string()
            .as_bytes(),
    ))
}

/// In a nextest test process, after trial (`m`, `c`) ran with `result`: write its record
/// (atomically: a temporary file renamed). A record that cannot be written fails the trial.
pub(crate) fn record_trial(
    h: &Harness,
    m: usize,
    c: usize,
    result: Result<(), Failed>,
) -> Result<(), Failed> {
    let Some(process) = &h.env.nextest else {
        return result;
    };
    let (model, case) = (&h.models[m], &h.cases[c]);
    let outcome = h
        .outcomes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .rev()
        .find(|o| o.model == model.name && o.key == case.key)
        .cloned();
    let Some(outcome) = outcome else {
        return result; // the trial panicked before recording: nextest reports it
    };
    let record = TrialRecord {
        format: FORMAT,
        harness_version: manifest::HARNESS_VERSION.into(),
        run_id: process.run_id.clone(),
        trial: Harness::trial_name(model, case),
        settings_sha256: settings_sha256(h),
        case_sha256: sha256_file(&case.path).unwrap_or_else(|e| format!("unreadable: {e}")),
        isolation: h.evaluator.isolation(),
        failed: result.is_err(),
        outcome,
    };
    let dir = run_dir(&h.config.results_dir(), &process.run_id);
    let path = record_path(&dir, &model.name, &case.key);
    let write = || -> io::Result<()> {
        fs::create_dir_all(path.parent().expect("a record has a folder"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(&record).map_err(io::Error::other)?,
        )?;
        fs::rename(&tmp, &path)
    };
    if let Err(source) = write() {
        let e = NextestError::Write { path, source };
        return Err(match result {
            Err(failed) => format!("{}; {e}", failed.message().unwrap_or_default()).into(),
            Ok(()) => e.to_string().into(),
        });
    }
    result
}

/// The run folders `given` names: each folder that holds model folders of records, or else the
/// newest `nextest-*` folder inside it (a results folder).
pub fn run_dirs(given: &[PathBuf]) -> Result<Vec<PathBuf>, NextestError> {
    let mut dirs = Vec::new();
    for dir in given {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("nextest-") && dir.is_dir() {
            dirs.push(dir.clone());
            continue;
        }
        let newest = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("nextest-"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .max();
        match newest {
            Some((_, path)) => dirs.push(path),
            None => return Err(NextestError::NoRecords(dir.clone())),
        }
    }
    Ok(dirs)
}

/// After a finish: remove the `nextest-<run id>` folders beside the finished ones that are
/// older than all of them (runs superseded by the one just finished), so they do not pile up
/// under the results folder. Returns the folders removed; one that cannot be removed is kept.
pub fn prune_older_runs(finished: &[PathBuf]) -> Vec<PathBuf> {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(oldest) = finished.iter().filter_map(|d| modified(d)).min() else {
        return Vec::new();
    };
    let parents: std::collections::BTreeSet<&Path> =
        finished.iter().filter_map(|d| d.parent()).collect();
    let mut removed = Vec::new();
    for parent in parents {
        for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
            let path = entry.path();
            let is_run = entry.file_name().to_string_lossy().starts_with("nextest-");
            if !is_run || !path.is_dir() || finished.contains(&path) {
                continue;
            }
            if modified(&path).is_some_and(|m| m < oldest) && fs::remove_dir_all(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed.sort();
    removed
}

/// Every record under the run folders `dirs`.
fn read_records(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, TrialRecord)>, NextestError> {
    let mut records = Vec::new();
    for dir in dirs {
        let read_dir = |d: &Path| {
            fs::read_dir(d).map_err(|e| NextestError::Read {
                path: d.to_path_buf(),
                message: e.to_string(),
            })
        };
        let mut paths = Vec::new();
        for model in read_dir(dir)?.filter_map(|e| e.ok()) {
            if model.path().is_dir() {
                for file in read_dir(&model.path())?.filter_map(|e| e.ok()) {
                    let path = file.path();
                    if path.extension().is_some_and(|x| x == "json") {
                        paths.push(path);
                    }
                }
            }
        }
        paths.sort();
        for path in paths {
            let text = fs::read_to_string(&path).map_err(|e| NextestError::Read {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let record: TrialRecord =
                serde_json::from_str(&text).map_err(|e| NextestError::Read {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            records.push((path, record));
        }
    }
    Ok(records)
}

/// What [`finish`] did.
#[derive(Debug)]
pub struct Finished {
    /// Trials recorded, and trials the suite has (selected profiles x cases).
    pub recorded: usize,
    pub trials: usize,
    /// Recorded trials that failed (with snapshots on: mismatches or errors).
    pub failed_trials: usize,
    /// The gate passed and, with snapshots on, no trial failed.
    pub passed: bool,
}

/// Summarise, write and gate the trials recorded in the run folders `dirs` (one nextest run,
/// or the runs of all its partitions), as one run of the suite `options` names. Records of
/// another harness version, other settings, a case file changed since, or a trial recorded
/// twice are refused, naming the record.
pub fn finish(options: &RunOptions, dirs: &[PathBuf]) -> Result<Finished, NextestError> {
    let mut options = options.clone();
    options.loading = Loading::Lazy;
    options.env.nextest = None;
    options.shard = None;
    let h = Harness::load(&options)?;
    let settings = settings_sha256(&h);
    let records = read_records(dirs)?;
    if records.is_empty() {
        return Err(NextestError::NoRecords(
            dirs.first().cloned().unwrap_or_default(),
        ));
    }
    let cases: BTreeMap<&str, &Path> = h
        .cases
        .iter()
        .map(|c| (c.key.as_str(), c.path.as_path()))
        .collect();
    let mut seen: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    let mut outcomes = Vec::new();
    let mut isolation = String::new();
    let mut failed_trials = 0;
    for (path, r) in records {
        let refuse = |message: String| NextestError::Refused {
            path: path.clone(),
            message,
        };
        if r.format != FORMAT || r.harness_version != manifest::HARNESS_VERSION {
            return Err(refuse(format!(
                "recorded by harness {} (record format {}), this is {} (format {FORMAT}); run the tests again",
                r.harness_version,
                r.format,
                manifest::HARNESS_VERSION
            )));
        }
        if r.settings_sha256 != settings {
            return Err(refuse(format!(
                "recorded with other settings than {} selects now (the config was edited, or CODEGEN_CONFIG / CODEGEN_MODELS differ); run the tests again or finish with the same settings",
                h.config.path.display()
            )));
        }
        let o = &r.outcome;
        if !h.models.iter().any(|m| m.name == o.model) {
            return Err(refuse(format!("model `{}` is not selected", o.model)));
        }
        match cases.get(o.key.as_str()) {
            None => return Err(refuse(format!("case `{}` is not in the suite", o.key))),
            Some(case_path) => {
                let now = sha256_file(case_path).unwrap_or_default();
                if now != r.case_sha256 {
                    return Err(refuse(format!(
                        "case file {} changed since its trial ran; run it again",
                        case_path.display()
                    )));
                }
            }
        }
        if let Some(first) = seen.insert((o.model.clone(), o.key.clone()), path.clone()) {
            return Err(refuse(format!(
                "trial `{}` is also recorded in {} (a partition given twice?)",
                r.trial,
                first.display()
            )));
        }
        if isolation.is_empty() {
            isolation = r.isolation.clone();
        }
        failed_trials += r.failed as usize;
        outcomes.push(r.outcome);
    }
    let recorded = outcomes.len();
    *h.outcomes.lock().unwrap_or_else(|e| e.into_inner()) = outcomes;
    let _results_lock = h.lock_results()?;
    let gate_ok = h.finish_with(failed_trials, &isolation);
    let trials_failed = h.config.suite.snapshot && failed_trials > 0;
    Ok(Finished {
        recorded,
        trials: h.models.len() * h.cases.len(),
        failed_trials,
        passed: gate_ok && !trials_failed,
    })
}

/// What [`generate`] did.
#[derive(Debug)]
pub struct Generated {
    /// Requests answered (selected trials whose case file parses, per profile with a model).
    pub requests: usize,
    /// Requests whose completion failed (their trials will report why).
    pub failed: Vec<String>,
}

/// Trial names from a file, one a line; a line's last word is taken, so `cargo nextest list
/// --message-format oneline` output (`<binary id> <test name>`) can be given as it is.
pub fn read_trial_list(path: &Path) -> Result<Vec<String>, NextestError> {
    let text = fs::read_to_string(path).map_err(|e| NextestError::TrialList {
        path: path.into(),
        message: e.to_string(),
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect())
}

/// Fill the generation cache for the trials `args` selects (and, when given, that `trials`
/// names): every request handed to its source at once, so the engine batches them, then each
/// waited for. Nothing is extracted, run or scored; reference and replay profiles generate
/// nothing.
pub fn generate(
    options: &RunOptions,
    args: &Arguments,
    trials: Option<&[String]>,
) -> Result<Generated, NextestError> {
    let mut options = options.clone();
    options.loading = Loading::Lazy;
    options.env.nextest = None;
    let h = Arc::new(Harness::load(&options)?);
    let mut requests = Vec::new();
    for (m, model) in h.models.iter().enumerate() {
        if matches!(
            model.source,
            crate::config::SourceConfig::Reference | crate::config::SourceConfig::Replay { .. }
        ) {
            continue;
        }
        for (c, case) in h.cases.iter().enumerate() {
            if options.shard.is_some_and(|s| !s.contains(&case.key)) {
                continue;
            }
            let name = Harness::trial_name(model, case);
            if harness::selected(args, &name) && trials.is_none_or(|t| t.contains(&name)) {
                requests.push((m, c));
            }
        }
    }
    harness::prepare_sources(&h, &requests);
    let mut failed = Vec::new();
    for &(m, c) in &requests {
        let Ok(case): Result<&Case, _> = h.cases[c].case.as_ref() else {
            continue;
        };
        let error = match h.source(m) {
            Err(e) => Some(e.to_string()),
            Ok(source) => {
                let prompt = Prompt::for_case_with(case, &h.models[m].prompt);
                let accepted = h.accepted(m, case);
                let request = Request::new(case, &prompt, h.samples(m), accepted.as_ref());
                source.complete(&request).err().map(|e| e.to_string())
            }
        };
        if let Some(e) = error {
            failed.push(format!(
                "{}: {e}",
                Harness::trial_name(&h.models[m], &h.cases[c])
            ));
        }
    }
    Ok(Generated {
        requests: requests.len(),
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finishing_removes_older_runs_beside_the_finished_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let run = |name: &str, age_s: u64| {
            let d = tmp.path().join(name);
            fs::create_dir_all(d.join("m")).unwrap();
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
            fs::File::open(&d).unwrap().set_modified(t).unwrap();
            d
        };
        let old = run("nextest-old", 3600);
        let a = run("nextest-a", 60);
        let b = run("nextest-b", 30);
        let newer = run("nextest-newer", 0);
        let other = tmp.path().join("shard-1-of-2");
        fs::create_dir_all(&other).unwrap();
        assert_eq!(prune_older_runs(&[a.clone(), b.clone()]), vec![old.clone()]);
        assert!(!old.exists() && a.exists() && b.exists() && newer.exists() && other.exists());
    }

    #[test]
    fn record_paths_keep_the_case_id_readable() {
        let p = record_path(Path::new("/r/nextest-x"), "m", "basics/add two");
        assert_eq!(p, PathBuf::from("/r/nextest-x/m/basics__add_two.json"));
    }

    #[test]
    fn trial_lists_take_each_line_s_last_word() {
        let dir = std::env::temp_dir().join(format!("codegen-trials-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("list.txt");
        fs::write(&file, "codegen-harness::codegen m::a::b\n\nm::c::d\n").unwrap();
        assert_eq!(read_trial_list(&file).unwrap(), vec!["m::a::b", "m::c::d"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
