//! The results journal: each finished case appended as the run goes (an interrupted run keeps
//! what it measured), then the complete run's files written by rename (results, summary JSON,
//! Markdown, JUnit, the profiles side by side).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::{junit, markdown, models};
use crate::evaluate::CaseOutcome;
use crate::gate::{Baseline, GateFailure, Verdict};
use crate::provision::cache::{DirLock, FileError};
use crate::score::Summary;

/// Results of a run on disk. While the run goes, each finished case is appended to
/// `results-<model>.partial.jsonl`, so an interrupted run keeps what it measured without
/// touching the last complete run's files. When the run completes, [`Journal::complete`]
/// writes `results-<model>.jsonl` (sorted by case), the summary, Markdown and JUnit, each by
/// rename so no reader sees half a file, and only then removes the partial journal.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    files: Mutex<std::collections::HashMap<String, File>>,
}

#[derive(Serialize)]
struct SummaryFile<'a> {
    summary: &'a Summary,
    isolation: &'a str,
    baseline: Option<Baseline>,
    gate_failures: &'a [GateFailure],
    /// Which rule let a drop larger than `max_drop` pass (`significance`), if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    gate_note: Option<&'a str>,
    /// What the completion source holds that no trial reported (unreadable replay rows, rows
    /// for tasks that match no case).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    source_warnings: &'a [String],
    /// A shard's summary: which shard, how many of the suite's cases, and that the gate was
    /// not applied to it (`codegen merge` gates the merged results).
    #[serde(skip_serializing_if = "Option::is_none")]
    partial: Option<&'a str>,
}

/// `results-<model>.jsonl` in `dir`: the outcomes of a finished run of `model`.
pub fn results_path(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("results-{model}.jsonl"))
}

/// The entries of `dir` whose path `keep` accepts, sorted (none when `dir` cannot be read).
pub fn entries_where(dir: &Path, keep: impl Fn(&Path, &str) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| keep(p, n))
        })
        .collect();
    found.sort();
    found
}

/// The journal of an unfinished run of `model` in `dir`.
pub fn partial_results_path(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("results-{model}.partial.jsonl"))
}

/// The partial journals in `dir`: runs that were interrupted (or are still going), whose
/// results are not the ones the summary files describe.
pub fn unfinished_runs(dir: &Path) -> Vec<PathBuf> {
    entries_where(dir, |_, n| {
        n.starts_with("results-") && n.ends_with(".partial.jsonl")
    })
}

/// Write `body` to `path` through a temporary file in the same folder and a rename.
fn replace_file(path: &Path, body: &[u8]) -> Result<(), FileError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, body).map_err(|e| FileError::new("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| FileError::new("write", path, e))
}

/// Create the results folder `dir` (and its parents).
fn create_dir(dir: &Path) -> Result<(), FileError> {
    fs::create_dir_all(dir).map_err(|e| FileError::new("create the results folder", dir, e))
}

/// A value as JSON (the outcomes and summaries are plain data, so this does not fail in
/// practice; when it does, the file it was meant for is named).
fn to_json<T: Serialize>(value: &T, path: &Path, pretty: bool) -> Result<String, FileError> {
    let json = match pretty {
        true => serde_json::to_string_pretty(value),
        false => serde_json::to_string(value),
    };
    json.map_err(|e| FileError::new("serialize the results for", path, io::Error::other(e)))
}

impl Journal {
    /// Results go to `<dir>/results-<model>.jsonl` and `<dir>/summary-<model>.json`.
    pub fn new(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            files: Mutex::new(Default::default()),
        }
    }

    /// Take the results folder for this run: create it and lock it (`<dir>/.lock`), so that a
    /// second run on the same folder waits instead of mixing its journal into this one's.
    /// `waiting` is called once when another run holds the lock. Fails, naming the folder,
    /// when it cannot be created or written (a regular file in its place, no permission).
    pub fn lock(&self, waiting: impl FnOnce(&Path)) -> Result<DirLock, FileError> {
        create_dir(&self.dir)?;
        DirLock::acquire_or_wait(&self.dir, waiting)
            .map_err(|e| FileError::new("lock the results folder", &self.dir, e))
    }

    /// Append a case's outcome to its model's partial journal (created fresh on first use).
    pub fn record(&self, outcome: &CaseOutcome) -> Result<(), FileError> {
        let path = partial_results_path(&self.dir, &outcome.model);
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if !files.contains_key(&outcome.model) {
            create_dir(&self.dir)?;
            let f = File::create(&path).map_err(|e| FileError::new("create", &path, e))?;
            files.insert(outcome.model.clone(), f);
        }
        let f = files.get_mut(&outcome.model).expect("just inserted");
        let mut line = to_json(outcome, &path, false)?;
        line.push('\n');
        f.write_all(line.as_bytes())
            .map_err(|e| FileError::new("append to", &path, e))
    }

    /// The folder the journal writes to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `results-<model>.jsonl`: the outcomes of `model`, in the order given.
    fn write_results(&self, model: &str, outcomes: &[CaseOutcome]) -> Result<(), FileError> {
        create_dir(&self.dir)?;
        let path = results_path(&self.dir, model);
        let mut results = String::new();
        for o in outcomes.iter().filter(|o| o.model == *model) {
            results.push_str(&to_json(o, &path, false)?);
            results.push('\n');
        }
        replace_file(&path, results.as_bytes())
    }

    /// The run of `model` is written: drop its partial journal.
    fn close(&self, model: &str) -> Result<(), FileError> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(model);
        let path = partial_results_path(&self.dir, model);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(FileError::new("remove", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// The run of `summary.model` completed: write its results (the outcomes of that model, in
    /// the order given: the harness passes case order), summary, Markdown and JUnit, then drop
    /// the partial journal. Returns the summary's path.
    pub fn complete(
        &self,
        summary: &Summary,
        outcomes: &[CaseOutcome],
        isolation: &str,
        baseline: Option<Baseline>,
        verdict: &Verdict,
        source_warnings: &[String],
    ) -> Result<PathBuf, FileError> {
        let model = &summary.model;
        self.write_results(model, outcomes)?;
        replace_file(
            &self.dir.join(format!("summary-{model}.md")),
            markdown(
                summary,
                outcomes,
                baseline,
                &verdict.failures,
                verdict.note.as_deref(),
            )
            .as_bytes(),
        )?;
        replace_file(
            &self.dir.join(format!("junit-{model}.xml")),
            junit(model, outcomes).as_bytes(),
        )?;
        let path = self.dir.join(format!("summary-{model}.json"));
        let file = SummaryFile {
            summary,
            isolation,
            baseline,
            gate_failures: &verdict.failures,
            gate_note: verdict.note.as_deref(),
            source_warnings,
            partial: None,
        };
        let body = to_json(&file, &path, true)?;
        replace_file(&path, body.as_bytes())?;
        self.close(model)?;
        Ok(path)
    }

    /// A shard of the run of `summary.model` completed: write its results, JUnit and a summary
    /// marked `partial` (no Markdown, no gate: the shard holds part of the suite), then drop
    /// the partial journal. Returns the summary's path.
    pub fn complete_shard(
        &self,
        summary: &Summary,
        outcomes: &[CaseOutcome],
        isolation: &str,
        baseline: Option<Baseline>,
        source_warnings: &[String],
        partial: &str,
    ) -> Result<PathBuf, FileError> {
        let model = &summary.model;
        self.write_results(model, outcomes)?;
        replace_file(
            &self.dir.join(format!("junit-{model}.xml")),
            junit(model, outcomes).as_bytes(),
        )?;
        let path = self.dir.join(format!("summary-{model}.json"));
        let file = SummaryFile {
            summary,
            isolation,
            baseline,
            gate_failures: &[],
            gate_note: None,
            source_warnings,
            partial: Some(partial),
        };
        let body = to_json(&file, &path, true)?;
        replace_file(&path, body.as_bytes())?;
        self.close(model)?;
        Ok(path)
    }
}

impl Journal {
    /// A run of two profiles or more completed: write the profiles side by side
    /// ([`models::markdown`]) to `<dir>/comparison.md`. Returns its path.
    pub fn complete_comparison(
        &self,
        summaries: &[Summary],
        outcomes: &[CaseOutcome],
    ) -> Result<PathBuf, FileError> {
        create_dir(&self.dir)?;
        let path = self.dir.join("comparison.md");
        replace_file(&path, models::markdown(summaries, outcomes).as_bytes())?;
        Ok(path)
    }
}
