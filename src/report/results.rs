//! A results folder as the HTML report reads it: each model's `summary-<model>.json` and
//! `results-<model>.jsonl`, kept as JSON values so that fields a newer run adds (or an older
//! run lacks) show up as present or "n/a" instead of failing the report. Also each model's
//! per-case verdicts, which the comparisons pair up.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use thiserror::Error;

/// Why a results folder could not be read.
#[derive(Debug, Error)]
#[error("failed to read results in {dir}: {message}")]
pub struct ReadError {
    pub dir: PathBuf,
    pub message: String,
}

/// One model's results.
#[derive(Debug, Clone)]
pub struct ModelResults {
    pub name: String,
    /// `summary-<model>.json` (the object with `summary`, `gate_failures`, ...).
    pub summary: Json,
    /// `results-<model>.jsonl`, one object per case, sorted by `key`.
    pub cases: Vec<Json>,
}

/// Whether a case was measured and every one of its samples passed: `None` when it was not
/// measured (an error, or no samples).
pub fn case_passed(case: &Json) -> Option<bool> {
    let samples = case["samples"].as_array()?;
    if !case["error"].is_null() || samples.is_empty() {
        return None;
    }
    Some(samples.iter().all(|s| s["passed"] == true))
}

/// Every category any of `models` has a pass rate for, in order.
pub fn categories(models: &[ModelResults]) -> std::collections::BTreeSet<String> {
    models
        .iter()
        .flat_map(|m| {
            m.summary_field(&["categories"])
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

/// The number at `path` under `j`, if there is one.
pub fn num(j: &Json, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(j, |v, k| v.get(*k))?.as_f64()
}

impl ModelResults {
    /// `summary.<path>` of this model's summary file.
    pub fn summary_field(&self, path: &[&str]) -> &Json {
        path.iter().fold(&self.summary["summary"], |v, k| &v[*k])
    }

    /// Each measured case's key and whether every one of its samples passed.
    pub fn verdicts(&self) -> BTreeMap<String, bool> {
        self.cases
            .iter()
            .filter_map(|c| Some((c["key"].as_str()?.to_string(), case_passed(c)?)))
            .collect()
    }

    /// Every sample of every case.
    pub fn samples(&self) -> impl Iterator<Item = &Json> {
        self.cases
            .iter()
            .flat_map(|c| c["samples"].as_array().into_iter().flatten())
    }
}

/// Read every model's summary and results in `dir`, in the config's order (by model name
/// where the summaries do not record it).
pub fn load(dir: &Path) -> Result<Vec<ModelResults>, ReadError> {
    let err = |message: String| ReadError {
        dir: dir.to_path_buf(),
        message,
    };
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| err(e.to_string()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("summary-")
                .and_then(|r| r.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(err(
            "no summary-<model>.json files: run the suite first".into()
        ));
    }
    let mut out = Vec::new();
    for name in names {
        let summary: Json = serde_json::from_str(
            &fs::read_to_string(dir.join(format!("summary-{name}.json")))
                .map_err(|e| err(format!("summary-{name}.json: {e}")))?,
        )
        .map_err(|e| err(format!("summary-{name}.json: {e}")))?;
        let mut cases = Vec::new();
        if let Ok(text) = fs::read_to_string(super::results_path(dir, &name)) {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                cases.push(
                    serde_json::from_str(line)
                        .map_err(|e| err(format!("results-{name}.jsonl:{}: {e}", i + 1)))?,
                );
            }
        }
        cases.sort_by(|a: &Json, b: &Json| a["key"].as_str().cmp(&b["key"].as_str()));
        out.push(ModelResults {
            name,
            summary,
            cases,
        });
    }
    // In the config's order where the summaries record it (stable: by name otherwise).
    out.sort_by_key(|m| {
        m.summary_field(&["config_order"])
            .as_u64()
            .unwrap_or(u64::MAX)
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verdicts_leave_out_unmeasured_cases() {
        let m = ModelResults {
            name: "m".into(),
            summary: json!({}),
            cases: vec![
                json!({"key": "a/1", "samples": [{"passed": true}, {"passed": true}], "error": null}),
                json!({"key": "a/2", "samples": [{"passed": true}, {"passed": false}], "error": null}),
                json!({"key": "a/3", "samples": [], "error": "bad case"}),
            ],
        };
        let v = m.verdicts();
        assert_eq!(v.len(), 2);
        assert!(v["a/1"]);
        assert!(!v["a/2"]);
        assert_eq!(m.samples().count(), 4);
    }

    #[test]
    fn load_reports_the_file_and_line_of_bad_json() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("summary-m.json"), "{}").unwrap();
        fs::write(dir.path().join("results-m.jsonl"), "{}\n{oops\n").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("results-m.jsonl:2"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        assert!(
            load(empty.path())
                .unwrap_err()
                .to_string()
                .contains("no summary")
        );
    }
}
