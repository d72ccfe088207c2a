//! The exporter's Python environment: the [`EXPORTER_VENV`] venv built by the provisioner
//! (`harness/python/requirements.txt`, every dependency pinned), with the exporter's sources,
//! compiled into the binary, written beside it, so an installed `codegen` does not need the
//! checkout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::ModelError;
use crate::provision::cache::{DirLock, hex};
use crate::provision::{EXPORTER_VENV, Provisioner, Venv};

/// The exporter package (`harness/python/exporter`), as compiled in: (file name, contents).
pub const EXPORTER_SOURCES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../harness/python/exporter/__init__.py"),
    ),
    (
        "__main__.py",
        include_str!("../../../harness/python/exporter/__main__.py"),
    ),
    (
        "contract.py",
        include_str!("../../../harness/python/exporter/contract.py"),
    ),
    (
        "decoders.py",
        include_str!("../../../harness/python/exporter/decoders.py"),
    ),
    (
        "export.py",
        include_str!("../../../harness/python/exporter/export.py"),
    ),
    (
        "gemma3.py",
        include_str!("../../../harness/python/exporter/gemma3.py"),
    ),
    (
        "gguf_model.py",
        include_str!("../../../harness/python/exporter/gguf_model.py"),
    ),
    (
        "graph.py",
        include_str!("../../../harness/python/exporter/graph.py"),
    ),
    (
        "native.py",
        include_str!("../../../harness/python/exporter/native.py"),
    ),
    (
        "quant.py",
        include_str!("../../../harness/python/exporter/quant.py"),
    ),
    (
        "reference.py",
        include_str!("../../../harness/python/exporter/reference.py"),
    ),
    (
        "tokenizer.py",
        include_str!("../../../harness/python/exporter/tokenizer.py"),
    ),
];

const READY: &str = ".ready";

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

/// A ready Python environment with the exporter's requirements installed and its sources
/// written beside it.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    venv: Venv,
    sources: PathBuf,
}

impl PythonEnv {
    /// Make (first use) or reuse the environment under the provisioner's cache.
    pub fn ensure(
        provisioner: &Provisioner,
        status: &dyn Fn(&str),
    ) -> Result<PythonEnv, ModelError> {
        let venv = provisioner.venv(&EXPORTER_VENV, status)?;
        let env = PythonEnv {
            sources: venv.root.join(format!("src-{}", sources_key())),
            venv,
        };
        if !env.sources.join(READY).is_file() {
            let _lock = DirLock::acquire(&env.sources)
                .map_err(|e| ModelError::io("lock", env.sources.join(".lock"), e))?;
            env.write_sources()?;
        }
        Ok(env)
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
        &self.venv.python
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
        let mut cmd = self.venv.command();
        cmd.env("PYTHONPATH", path);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_key_is_short_hex() {
        assert_eq!(sources_key().len(), 12);
        assert!(sources_key().chars().all(|c| c.is_ascii_hexdigit()));
    }
}
