//! Case files: discover `cases/<category>/<name>.toml`, parse them, and validate them.
//!
//! Every problem with a case file is a [`CaseError`] that names the file, the line and the
//! field, so that one bad file fails its own test and nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::Spanned;

mod check;

pub use check::is_python_identifier;
use check::{
    check_identifier_like, check_python_expression, check_python_module, check_tolerance,
    toml_error,
};

/// How the model is prompted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptMode {
    /// An instruction in a chat conversation; the model answers with a program.
    #[default]
    Chat,
    /// The model continues `prefix` (a signature and docstring); the program is prefix + body.
    Complete,
}

/// What one test expects of one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// The call returns a value equal to this Python expression (evaluated outside the sandbox).
    Value(String),
    /// The call raises this exception type (or a subclass).
    Raises(String),
}

/// One test: a Python call expression and what it must give.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub call: String,
    pub expect: Expectation,
    /// Absolute tolerance for float comparisons, if any.
    pub tolerance: Option<f64>,
    /// 1-based line of the test's expectation (`expected` or `raises`) in the case file.
    pub line: usize,
}

/// A parsed, validated case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// `<category>/<id>`: unique across the suite.
    pub key: String,
    pub id: String,
    pub category: String,
    pub path: PathBuf,
    pub mode: PromptMode,
    pub prompt: String,
    pub prefix: Option<String>,
    pub entry_point: String,
    pub reference: Option<String>,
    /// Trusted setup code run in the sandbox before the program (e.g. files in the scratch dir).
    pub setup: Option<String>,
    /// HumanEval-style `def check(candidate): ...` block.
    pub check: Option<String>,
    pub tests: Vec<TestCase>,
    pub tags: Vec<String>,
    pub timeout_ms: Option<u64>,
    pub max_new_tokens: Option<usize>,
    /// Extra stop strings for generation.
    pub stop: Vec<String>,
    /// End a chat reply once a fenced code block defining the entry point has closed (over
    /// the profile's `stop_at_answer`).
    pub stop_at_answer: Option<bool>,
}

/// Where in a case file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// A case file that cannot be used.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum CaseError {
    #[error("failed to read case file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("failed to read cases folder {path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error("{location}: not UTF-8 text (byte offset {offset}): case files must be UTF-8")]
    NotUtf8 { location: Location, offset: usize },
    #[error("{location}: field `{field}`: {message}")]
    Invalid {
        location: Location,
        field: String,
        message: String,
    },
}

impl CaseError {
    fn invalid(location: Location, field: &str, message: impl Into<String>) -> CaseError {
        CaseError::Invalid {
            location,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    id: Option<Spanned<String>>,
    category: Option<Spanned<String>>,
    #[serde(default)]
    mode: Option<Spanned<PromptMode>>,
    prompt: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    entry_point: Spanned<String>,
    reference: Option<Spanned<String>>,
    setup: Option<Spanned<String>>,
    check: Option<Spanned<String>>,
    #[serde(default)]
    tests: Vec<Spanned<RawTest>>,
    #[serde(default)]
    tags: Vec<String>,
    tolerance: Option<Spanned<f64>>,
    timeout_ms: Option<Spanned<u64>>,
    max_new_tokens: Option<Spanned<usize>>,
    #[serde(default)]
    stop: Vec<String>,
    stop_at_answer: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    call: Spanned<String>,
    expected: Option<Spanned<String>>,
    raises: Option<Spanned<String>>,
    tolerance: Option<Spanned<f64>>,
}

/// Maps byte offsets of a file to 1-based line and column.
pub(crate) struct LineIndex<'a> {
    path: &'a Path,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(path: &'a Path, text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { path, starts }
    }

    pub(crate) fn at(&self, offset: usize) -> Location {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        Location {
            path: self.path.to_path_buf(),
            line,
            column: offset - self.starts[line - 1] + 1,
        }
    }

    fn span(&self, span: &Range<usize>) -> Location {
        self.at(span.start)
    }
}

/// The `<category>/<id>` a case file would have from its path alone.
pub fn key_from_path(root: &Path, path: &Path) -> (String, String) {
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let category = path
        .parent()
        .and_then(|p| p.strip_prefix(root).ok())
        .map(|p| p.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/"))
        .filter(|c| !c.is_empty())
        // A file directly in the cases folder takes the folder's own name as its category.
        .or_else(|| root.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "uncategorized".to_string());
    (category, id)
}

/// Every `*.toml` under `root`, sorted, so the suite's order never depends on the file system.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>, CaseError> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| CaseError::Folder {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| CaseError::Folder {
                path: dir.clone(),
                message: e.to_string(),
            })?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Read and parse one case file.
pub fn load(root: &Path, path: &Path) -> Result<Case, CaseError> {
    let bytes = fs::read(path).map_err(|e| CaseError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let valid = String::from_utf8_lossy(&e.as_bytes()[..offset]).into_owned();
        CaseError::NotUtf8 {
            location: LineIndex::new(path, &valid).at(offset),
            offset,
        }
    })?;
    parse(root, path, &text)
}

/// Parse a case from its text; `path` is used for the default id/category and in errors.
pub fn parse(root: &Path, path: &Path, text: &str) -> Result<Case, CaseError> {
    let lines = LineIndex::new(path, text);
    let raw: RawCase = toml::from_str(text).map_err(|e| toml_error(&lines, text, e))?;
    let (id, category) = id_and_category(&lines, &raw, root, path)?;
    let mode = raw.mode.as_ref().map(|m| *m.get_ref()).unwrap_or_default();

    let entry = raw.entry_point.get_ref();
    if !is_python_identifier(entry) {
        return Err(CaseError::invalid(
            lines.span(&raw.entry_point.span()),
            "entry_point",
            format!("`{entry}` is not a Python identifier"),
        ));
    }

    let prompt = prompt_text(&lines, &raw, mode)?;

    check_code(&lines, &raw)?;
    let tests = tests(&lines, &raw)?;
    check_limits(&lines, &raw)?;

    Ok(Case {
        key: format!("{category}/{id}"),
        id,
        category,
        path: path.to_path_buf(),
        mode,
        prompt,
        prefix: raw.prefix.map(Spanned::into_inner),
        entry_point: entry.clone(),
        reference: raw.reference.map(Spanned::into_inner),
        setup: raw.setup.map(Spanned::into_inner),
        check: raw.check.map(Spanned::into_inner),
        tests,
        tags: raw.tags,
        timeout_ms: raw.timeout_ms.map(Spanned::into_inner),
        max_new_tokens: raw.max_new_tokens.map(Spanned::into_inner),
        stop: raw.stop,
        stop_at_answer: raw.stop_at_answer,
    })
}

/// The case's id and category: as written (identifier-like), else from its path.
fn id_and_category(
    lines: &LineIndex,
    raw: &RawCase,
    root: &Path,
    path: &Path,
) -> Result<(String, String), CaseError> {
    let (default_category, default_id) = key_from_path(root, path);

    let id = match &raw.id {
        Some(id) => {
            check_identifier_like(lines, "id", id)?;
            id.get_ref().clone()
        }
        None => default_id,
    };
    let category = match &raw.category {
        Some(c) => {
            check_identifier_like(lines, "category", c)?;
            c.get_ref().clone()
        }
        None => default_category,
    };
    Ok((id, category))
}

/// The Python blocks parse (a prefix need not), and `check` defines `check`.
fn check_code(lines: &LineIndex, raw: &RawCase) -> Result<(), CaseError> {
    for (field, code) in [
        ("prefix", &raw.prefix),
        ("setup", &raw.setup),
        ("check", &raw.check),
    ] {
        if let Some(code) = code {
            // A prefix is incomplete by nature (a signature waiting for its body).
            if field != "prefix" {
                check_python_module(lines, field, code)?;
            }
        }
    }
    if let Some(check) = &raw.check
        && !check.get_ref().contains("def check")
    {
        return Err(CaseError::invalid(
            lines.span(&check.span()),
            "check",
            "must define `def check(candidate): ...`",
        ));
    }
    Ok(())
}

/// The `[[tests]]` entries (under the case's tolerance); a case needs some, or a `check`.
fn tests(lines: &LineIndex, raw: &RawCase) -> Result<Vec<TestCase>, CaseError> {
    let case_tolerance = match &raw.tolerance {
        Some(t) => Some(check_tolerance(lines, "tolerance", t)?),
        None => None,
    };
    let tests = raw
        .tests
        .iter()
        .enumerate()
        .map(|(i, t)| parse_test(lines, i, t, case_tolerance))
        .collect::<Result<Vec<_>, _>>()?;
    if tests.is_empty() && raw.check.is_none() {
        return Err(CaseError::invalid(
            lines.at(0),
            "tests",
            "a case needs at least one [[tests]] entry or a `check` block",
        ));
    }
    Ok(tests)
}

/// `timeout_ms` and `max_new_tokens`, where given, are above 0.
fn check_limits(lines: &LineIndex, raw: &RawCase) -> Result<(), CaseError> {
    if let Some(t) = &raw.timeout_ms
        && *t.get_ref() == 0
    {
        return Err(CaseError::invalid(
            lines.span(&t.span()),
            "timeout_ms",
            "must be greater than 0",
        ));
    }
    if let Some(t) = &raw.max_new_tokens
        && *t.get_ref() == 0
    {
        return Err(CaseError::invalid(
            lines.span(&t.span()),
            "max_new_tokens",
            "must be greater than 0",
        ));
    }
    Ok(())
}

/// The case's prompt (empty in completion mode, which needs a `prefix` instead).
fn prompt_text(lines: &LineIndex, raw: &RawCase, mode: PromptMode) -> Result<String, CaseError> {
    let prompt = match (&raw.prompt, mode) {
        (Some(p), _) if !p.get_ref().trim().is_empty() => p.get_ref().clone(),
        (Some(p), PromptMode::Chat) => {
            return Err(CaseError::invalid(
                lines.span(&p.span()),
                "prompt",
                "must not be empty",
            ));
        }
        (None, PromptMode::Chat) => {
            return Err(CaseError::invalid(
                lines.at(0),
                "prompt",
                "missing field `prompt` (required in chat mode)",
            ));
        }
        (_, PromptMode::Complete) => String::new(),
    };
    if mode == PromptMode::Complete && raw.prefix.is_none() {
        let at = raw
            .mode
            .as_ref()
            .map(|m| lines.span(&m.span()))
            .unwrap_or_else(|| lines.at(0));
        return Err(CaseError::invalid(
            at,
            "prefix",
            "missing field `prefix` (required when mode = \"complete\")",
        ));
    }
    Ok(prompt)
}

/// One `[[tests]]` entry, checked: `i` is its index (errors name `tests[i].field`); a test
/// without its own tolerance takes the case's.
fn parse_test(
    lines: &LineIndex,
    i: usize,
    t: &Spanned<RawTest>,
    case_tolerance: Option<f64>,
) -> Result<TestCase, CaseError> {
    let field = |name: &str| format!("tests[{i}].{name}");
    let test = t.get_ref();
    check_python_expression(lines, &field("call"), &test.call)?;
    let expect = match (&test.expected, &test.raises) {
        (Some(e), None) => {
            check_python_expression(lines, &field("expected"), e)?;
            Expectation::Value(e.get_ref().clone())
        }
        (None, Some(r)) => {
            let name = r.get_ref();
            if !name.split('.').all(is_python_identifier) {
                return Err(CaseError::invalid(
                    lines.span(&r.span()),
                    &field("raises"),
                    format!("`{name}` is not an exception type name"),
                ));
            }
            Expectation::Raises(name.clone())
        }
        (Some(e), Some(_)) => {
            return Err(CaseError::invalid(
                lines.span(&e.span()),
                &format!("tests[{i}]"),
                "give either `expected` or `raises`, not both",
            ));
        }
        (None, None) => {
            return Err(CaseError::invalid(
                lines.span(&t.span()),
                &format!("tests[{i}]"),
                "missing field `expected` (or `raises`)",
            ));
        }
    };
    let tolerance = match &test.tolerance {
        Some(tol) => Some(check_tolerance(lines, &field("tolerance"), tol)?),
        None => case_tolerance,
    };
    Ok(TestCase {
        call: test.call.get_ref().clone(),
        expect,
        tolerance,
        line: test
            .expected
            .as_ref()
            .or(test.raises.as_ref())
            .map_or_else(|| lines.span(&t.span()), |e| lines.span(&e.span()))
            .line,
    })
}

/// A case file, loaded or not, as the harness turns it into trials.
#[derive(Debug, Clone)]
pub struct LoadedCase {
    /// `<category>/<id>` (from the path when the file could not be parsed).
    pub key: String,
    pub category: String,
    pub path: PathBuf,
    pub case: Result<Case, CaseError>,
}

/// Load every case under `root`; duplicate keys become errors on every file after the first.
pub fn load_all(root: &Path) -> Result<Vec<LoadedCase>, CaseError> {
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    for path in discover(root)? {
        let (category, id) = key_from_path(root, &path);
        let mut case = load(root, &path);
        let (key, category) = match &case {
            Ok(c) => (c.key.clone(), c.category.clone()),
            Err(_) => (format!("{category}/{id}"), category),
        };
        if let Some(first) = seen.get(&key) {
            let key = format!("{category}/{id}");
            let loc = Location {
                path: path.clone(),
                line: 1,
                column: 1,
            };
            case = Err(CaseError::invalid(
                loc,
                "id",
                format!(
                    "duplicate case id `{}`: already defined by {}",
                    case.as_ref().map(|c| c.key.as_str()).unwrap_or(&key),
                    first.display()
                ),
            ));
            // The trial is named after this file, so the two do not share a name.
            out.push(LoadedCase {
                key,
                category,
                path,
                case,
            });
            continue;
        } else {
            seen.insert(key.clone(), path.clone());
        }
        out.push(LoadedCase {
            key,
            category,
            path,
            case,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Case, CaseError> {
        parse(
            Path::new("cases"),
            Path::new("cases/strings/count_words.toml"),
            text,
        )
    }

    const GOOD: &str = r#"
prompt = "Write count_words."
entry_point = "count_words"
tags = ["easy"]

[[tests]]
call = 'count_words("a b")'
expected = "2"

[[tests]]
call = 'count_words(None)'
raises = "TypeError"
"#;

    #[test]
    fn parses_a_good_case() {
        let case = parse_str(GOOD).unwrap();
        assert_eq!(case.key, "strings/count_words");
        assert_eq!(case.tests.len(), 2);
        assert_eq!(case.tests[0].line, 8, "the line of `expected`");
        assert_eq!(
            case.tests[1].expect,
            Expectation::Raises("TypeError".into())
        );
    }

    fn error_of(text: &str) -> (usize, String, String) {
        match parse_str(text).unwrap_err() {
            CaseError::Invalid {
                location,
                field,
                message,
            } => (location.line, field, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let (line, field, _) = error_of(&format!("{GOOD}\nexpectd = 3\n"));
        // The stray key lands in the last [[tests]] table, on line 14.
        assert_eq!((line, field.as_str()), (14, "expectd"));
    }

    #[test]
    fn missing_entry_point() {
        let (_, field, msg) = error_of("prompt = 'x'\n[[tests]]\ncall='f()'\nexpected='1'\n");
        assert_eq!(field, "entry_point", "{msg}");
    }

    #[test]
    fn bad_python_in_call() {
        let text = GOOD.replace("count_words(\"a b\")", "count_words(\"a b\"");
        let (line, field, msg) = error_of(&text);
        assert_eq!((line, field.as_str()), (7, "tests[0].call"), "{msg}");
    }

    #[test]
    fn bad_python_in_expected() {
        let text = GOOD.replace("expected = \"2\"", "expected = \"2 +\"");
        let (line, field, _) = error_of(&text);
        assert_eq!((line, field.as_str()), (8, "tests[0].expected"));
    }

    #[test]
    fn statement_is_not_an_expression() {
        let text = GOOD.replace("expected = \"2\"", "expected = \"x = 2\"");
        let (_, field, _) = error_of(&text);
        assert_eq!(field, "tests[0].expected");
    }

    #[test]
    fn wrong_type() {
        let text = GOOD.replace("tags = [\"easy\"]", "tags = \"easy\"");
        let (line, field, msg) = error_of(&text);
        assert_eq!(line, 4, "{field}: {msg}");
    }

    #[test]
    fn test_without_expectation() {
        let text = GOOD.replace("expected = \"2\"\n", "");
        let (line, field, _) = error_of(&text);
        assert_eq!((line, field.as_str()), (6, "tests[0]"));
    }

    #[test]
    fn invalid_toml() {
        let (line, _, _) = error_of("prompt = \"unterminated\nentry_point = 'f'\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn entry_point_must_be_identifier() {
        let text = GOOD.replace(
            "entry_point = \"count_words\"",
            "entry_point = \"count words\"",
        );
        let (line, field, _) = error_of(&text);
        assert_eq!((line, field.as_str()), (3, "entry_point"));
    }

    #[test]
    fn complete_mode_needs_prefix() {
        let (_, field, _) = error_of(
            "mode = \"complete\"\nentry_point = 'f'\n[[tests]]\ncall='f()'\nexpected='1'\n",
        );
        assert_eq!(field, "prefix");
    }

    #[test]
    fn duplicate_ids_are_reported_on_the_second_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("a/x.toml"), GOOD).unwrap();
        fs::write(root.join("a/y.toml"), format!("id = \"x\"\n{GOOD}")).unwrap();
        let all = load_all(root).unwrap();
        assert!(all[0].case.is_ok());
        let err = all[1].case.as_ref().unwrap_err().to_string();
        assert!(err.contains("duplicate case id `a/x`"), "{err}");
        assert!(err.contains("y.toml:1:1"), "{err}");
    }
}
