//! Accepted outputs for suites that keep no snapshots (HumanEval on a GPU): the greedy outputs
//! of an earlier run's results folder (`[suite] accepted_outputs`), which later runs follow
//! through near ties exactly as they follow an accepted snapshot's `--- generated tokens ---`.
//!
//! A results line carries each sample's token ids and the key they were generated under, so a
//! copied results folder (or one committed per kind of GPU) is a complete reference.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::engine::AcceptedOutput;

/// Per profile, the accepted outputs of an earlier run, read on first use.
pub(crate) struct AcceptedRuns {
    folder: Option<PathBuf>,
    by_profile: Vec<OnceLock<HashMap<String, AcceptedOutput>>>,
}

/// The part of a results line this reads (the rest of the outcome is not needed).
#[derive(Deserialize)]
struct ResultsLine {
    key: String,
    #[serde(default)]
    samples: Vec<ResultsSample>,
}

#[derive(Deserialize)]
struct ResultsSample {
    #[serde(default)]
    accept_key: Option<String>,
    #[serde(default)]
    tokens: Option<ResultsTokens>,
}

#[derive(Deserialize)]
struct ResultsTokens {
    ids: Vec<u32>,
}

impl AcceptedRuns {
    /// `folder`: the results folder of the accepted run, `None` when the suite names none.
    pub(crate) fn new(folder: Option<PathBuf>, profiles: usize) -> AcceptedRuns {
        AcceptedRuns {
            folder,
            by_profile: (0..profiles).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The accepted output of `case_key` for profile `m` (named `profile`), if the accepted
    /// run has one. A results file that does not read back is said (file and line) once and
    /// not followed: the run then decodes freely, as without a reference.
    pub(crate) fn get(&self, m: usize, profile: &str, case_key: &str) -> Option<AcceptedOutput> {
        let folder = self.folder.as_ref()?;
        self.by_profile[m]
            .get_or_init(|| {
                let path = crate::report::results_path(folder, profile);
                read_accepted(&path).unwrap_or_else(|e| {
                    eprintln!(
                        "warning: failed to read the accepted outputs, not following them: {e}"
                    );
                    HashMap::new()
                })
            })
            .get(case_key)
            .cloned()
    }
}

/// Every greedy case of a results file, by case key. A missing file is an error: the user
/// named it as the reference.
fn read_accepted(path: &Path) -> Result<HashMap<String, AcceptedOutput>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_accepted(&text).map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))
}

/// [`read_accepted`] of a results file's text; errors carry the 1-based line.
fn parse_accepted(text: &str) -> Result<HashMap<String, AcceptedOutput>, (usize, String)> {
    let mut accepted = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: ResultsLine = serde_json::from_str(line).map_err(|e| (i + 1, e.to_string()))?;
        // Only greedy generations carry a key; a sample without tokens cannot be followed.
        let Some(key) = row.samples.first().and_then(|s| s.accept_key.clone()) else {
            continue;
        };
        let samples: Option<Vec<Vec<u32>>> = row
            .samples
            .into_iter()
            .map(|s| s.tokens.map(|t| t.ids))
            .collect();
        if let Some(samples) = samples {
            accepted.insert(row.key, AcceptedOutput { key, samples });
        }
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_rows_are_read_with_their_key_and_ids() {
        let text = concat!(
            r#"{"key":"a/x","samples":[{"accept_key":"model m, prompt p (3 tokens), settings s","tokens":{"ids":[1,2,3],"pieces":[]}}]}"#,
            "\n",
            r#"{"key":"a/y","samples":[{"tokens":{"ids":[4]}}]}"#,
            "\n\n",
            r#"{"key":"a/z","samples":[{"accept_key":"k"}]}"#,
            "\n",
        );
        let accepted = parse_accepted(text).unwrap();
        assert_eq!(accepted.len(), 1, "only greedy rows with tokens are kept");
        let x = &accepted["a/x"];
        assert_eq!(x.key, "model m, prompt p (3 tokens), settings s");
        assert_eq!(x.samples, vec![vec![1, 2, 3]]);
    }

    #[test]
    fn a_line_that_does_not_parse_is_named() {
        let err = parse_accepted("{\"key\":\"a\",\"samples\":[]}\n{oops\n").unwrap_err();
        assert_eq!(err.0, 2);
    }

    #[test]
    fn a_missing_results_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_accepted(&dir.path().join("results-m.jsonl")).unwrap_err();
        assert!(err.contains("results-m.jsonl"), "{err}");
    }

    #[test]
    fn a_suite_without_a_reference_follows_nothing() {
        let runs = AcceptedRuns::new(None, 1);
        assert!(runs.get(0, "m", "a/x").is_none());
    }
}
