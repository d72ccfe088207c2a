//! The exporter's Python environment: a venv under
//! `cache_dir()/python/<short sha256 of requirements.txt>`, made with `python3 -m venv` and
//! `pip install -r requirements.txt` on first use, under a [`DirLock`] so parallel test processes
//! do not race, and reused (offline) afterwards. The exporter's sources are compiled into the
//! binary and written next to the venv, so an installed `codegen` does not need the checkout.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::ModelError;
use crate::cache::{DirLock, cache_dir};

/// `harness/python/requirements.txt`, as compiled in.
pub const REQUIREMENTS: &str = include_str!("../../harness/python/requirements.txt");

/// The exporter package (`harness/python/exporter`), as compiled in: (file name, contents).
pub const EXPORTER_SOURCES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../harness/python/exporter/__init__.py"),
    ),
    (
        "__main__.py",
        include_str!("../../harness/python/exporter/__main__.py"),
    ),
    (
        "export.py",
        include_str!("../../harness/python/exporter/export.py"),
    ),
    (
        "gguf_model.py",
        include_str!("../../harness/python/exporter/gguf_model.py"),
    ),
    (
        "graph.py",
        include_str!("../../harness/python/exporter/graph.py"),
    ),
    (
        "quant.py",
        include_str!("../../harness/python/exporter/quant.py"),
    ),
    (
        "reference.py",
        include_str!("../../harness/python/exporter/reference.py"),
    ),
    (
        "tokenizer.py",
        include_str!("../../harness/python/exporter/tokenizer.py"),
    ),
];

const READY: &str = ".ready";

/// Hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Short (12 hex digit) sha256 of the requirements: the venv's folder name.
pub fn requirements_key() -> String {
    sha256_hex(REQUIREMENTS.as_bytes())[..12].to_string()
}

/// Short sha256 of the exporter's sources: the folder they are written to.
pub fn sources_key() -> String {
    let mut h = Sha256::new();
    for (name, text) in EXPORTER_SOURCES {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())[..12].to_string()
}

/// The base interpreter used to create the venv: `$CODEGEN_PYTHON`, else `python3`.
pub fn base_python() -> PathBuf {
    std::env::var_os("CODEGEN_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// A ready Python environment with the exporter's requirements installed.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    root: PathBuf,
    python: PathBuf,
    sources: PathBuf,
}

impl PythonEnv {
    /// Make (first use) or reuse the environment under the per-user cache.
    pub fn ensure(status: &dyn Fn(&str)) -> Result<PythonEnv, ModelError> {
        Self::ensure_in(&cache_dir().join("python"), status)
    }

    /// Make or reuse the environment under `base/<requirements key>`.
    pub fn ensure_in(base: &Path, status: &dyn Fn(&str)) -> Result<PythonEnv, ModelError> {
        let root = base.join(requirements_key());
        let env = PythonEnv {
            python: root.join("venv").join("bin").join("python"),
            sources: root.join(format!("src-{}", sources_key())),
            root,
        };
        if env.root.join(READY).is_file() && env.sources.join(READY).is_file() {
            return Ok(env);
        }
        let _lock = DirLock::acquire(&env.root)
            .map_err(|e| ModelError::io("lock", env.root.join(".lock"), e))?;
        if !env.root.join(READY).is_file() {
            status("creating the exporter's Python environment (first use)");
            env.create_venv(status)?;
        }
        if !env.sources.join(READY).is_file() {
            env.write_sources()?;
        }
        Ok(env)
    }

    fn create_venv(&self, status: &dyn Fn(&str)) -> Result<(), ModelError> {
        let venv = self.root.join("venv");
        if venv.exists() {
            fs::remove_dir_all(&venv).map_err(|e| ModelError::io("remove", venv.clone(), e))?;
        }
        let base = base_python();
        run_logged(
            Command::new(&base).arg("-m").arg("venv").arg(&venv),
            &format!("{} -m venv", base.display()),
            &|_| {},
        )?;
        let req = self.root.join("requirements.txt");
        fs::write(&req, REQUIREMENTS).map_err(|e| ModelError::io("write", req.clone(), e))?;
        status("installing the exporter's requirements with pip");
        run_logged(
            Command::new(&self.python)
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                .args(["--no-input", "--progress-bar", "off", "-r"])
                .arg(&req),
            "pip install -r requirements.txt",
            &|line| {
                if let Some(rest) = line.strip_prefix("Collecting ") {
                    status(&format!("pip: collecting {rest}"));
                } else if line.starts_with("Installing") || line.starts_with("Successfully") {
                    status(&format!("pip: {line}"));
                }
            },
        )?;
        let ready = self.root.join(READY);
        fs::write(&ready, REQUIREMENTS).map_err(|e| ModelError::io("write", ready, e))
    }

    fn write_sources(&self) -> Result<(), ModelError> {
        let pkg = self.sources.join("exporter");
        fs::create_dir_all(&pkg).map_err(|e| ModelError::io("create", pkg.clone(), e))?;
        for (name, text) in EXPORTER_SOURCES {
            let path = pkg.join(name);
            fs::write(&path, text).map_err(|e| ModelError::io("write", path, e))?;
        }
        let ready = self.sources.join(READY);
        fs::write(&ready, "").map_err(|e| ModelError::io("write", ready, e))
    }

    /// The venv's interpreter.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// The folder holding the `exporter` package (put it on `PYTHONPATH`).
    pub fn sources(&self) -> &Path {
        &self.sources
    }

    /// `python` with the compiled-in exporter on `PYTHONPATH`.
    pub fn command(&self) -> Command {
        self.command_with_path(&self.sources)
    }

    /// `python` with `path` (for example a checkout's `harness/python`) on `PYTHONPATH`.
    pub fn command_with_path(&self, path: &Path) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.env("PYTHONPATH", path)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("PYTHONHOME");
        cmd
    }
}

/// Run a command, feeding each line of its stderr and stdout to `on_line`; on failure the error
/// carries the last lines of output.
pub(crate) fn run_logged(
    cmd: &mut Command,
    what: &str,
    on_line: &dyn Fn(&str),
) -> Result<String, ModelError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ModelError::Command {
            what: what.to_string(),
            detail: format!("could not start it: {e}"),
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let out_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut tail: Vec<String> = Vec::new();
    let stderr = child.stderr.take().expect("piped stderr");
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        on_line(&line);
        tail.push(line);
        if tail.len() > 40 {
            tail.remove(0);
        }
    }
    let status = child.wait().map_err(|e| ModelError::Command {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    let stdout = out_thread.join().unwrap_or_default();
    if !status.success() {
        let mut detail = format!("{status}");
        let out_tail: Vec<&str> = stdout.lines().rev().take(20).collect();
        for line in out_tail.into_iter().rev() {
            detail.push_str("\n  ");
            detail.push_str(line);
        }
        for line in &tail {
            detail.push_str("\n  ");
            detail.push_str(line);
        }
        return Err(ModelError::Command {
            what: what.to_string(),
            detail,
        });
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_hex() {
        assert_eq!(requirements_key().len(), 12);
        assert!(requirements_key().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(sources_key().len(), 12);
    }

    #[test]
    fn requirements_are_all_pinned() {
        for line in REQUIREMENTS.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(line.contains("=="), "unpinned requirement: {line}");
        }
    }

    #[test]
    fn failed_command_reports_its_output() {
        let err = run_logged(
            Command::new("sh").args(["-c", "echo out-line; echo err-line >&2; exit 3"]),
            "probe",
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("failed to run probe"), "{err}");
        assert!(
            err.contains("err-line") && err.contains("out-line"),
            "{err}"
        );
    }
}
