//! Bundles for offline GPU machines: `codegen pack` gathers what a run needs into one tar,
//! split into parts under a size that one transfer takes; `codegen unpack` verifies every file
//! against the bundle's manifest and puts GGUFs and wheels where the harness looks for them.
//!
//! The plan is a list of [`Entry`]s (a local file, its path in the bundle, where it goes on the
//! device); [`project_entries`] derives the project's part from a [`Config`] alone, so the
//! collection is testable without models or a registry. Paths in the bundle mirror the project
//! root, so a config's relative paths (cases, replay files, snapshots) resolve the same there.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, ModelProfile, SourceConfig};
use crate::provision::cache::sha256_file;

/// The manifest's name at the bundle's root.
pub const MANIFEST: &str = "manifest.json";
/// The script written beside the parts.
pub const UNPACK_SCRIPT: &str = "unpack.sh";
/// The folder, beside the parts on the device, the bundle is extracted into.
pub const BUNDLE_DIR: &str = "bundle";

/// A failure to pack or unpack a bundle.
#[derive(Debug, Error)]
pub enum PackError {
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "failed to pack {}: it is outside the project root {} (a bundle keeps paths relative to the root, as the config names them)",
        path.display(), root.display()
    )]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error(
        "failed to verify {file}: sha256 is {actual}, expected {expected} (the bundle is damaged: send its parts again)"
    )]
    Mismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("failed to verify {file}: it is not in the bundle (nor already placed at {})", placed.display())]
    Missing { file: String, placed: PathBuf },
    #[error("failed to read the manifest {}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    #[error(
        "failed to read part size {0:?}: expected a number of bytes with an optional K, M or G suffix (e.g. 60M)"
    )]
    PartSize(String),
    #[error("failed to split the bundle: {0}")]
    Split(String),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PackError + 'a {
    move |source| PackError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a file of the bundle goes on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Place {
    /// It stays in the bundle, at its path (the binary, the config, cases).
    Bundle,
    /// A default model's GGUF: `<cache>/gguf/<model>.gguf`, marked verified.
    Gguf { model: String },
    /// A wheel the harness fetches itself: `<cache>/wheels/<package>/<file>`.
    Wheel { package: String },
    /// A wheel of the exporter's venv: `<cache>/wheelhouse/<file>` (`CODEGEN_WHEELHOUSE`).
    Wheelhouse,
}

impl Place {
    /// Where a file named `file` with this place goes under `cache` (`None`: it stays).
    pub fn destination(&self, cache: &Path, file: &str) -> Option<PathBuf> {
        match self {
            Place::Bundle => None,
            Place::Gguf { model } => Some(cache.join("gguf").join(format!("{model}.gguf"))),
            Place::Wheel { package } => Some(cache.join("wheels").join(package).join(file)),
            Place::Wheelhouse => Some(wheelhouse(cache).join(file)),
        }
    }
}

/// `<cache>/wheelhouse`: where unpacked exporter wheels go.
pub fn wheelhouse(cache: &Path) -> PathBuf {
    cache.join("wheelhouse")
}

/// One file to pack: where it is here, its path in the bundle, where it goes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub source: PathBuf,
    /// Relative, `/`-separated.
    pub path: String,
    pub place: Place,
}

/// One file as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub place: Place,
}

/// The bundle's table of contents: the config to run and every file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The config, relative to the bundle's root.
    pub config: String,
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// Hash every entry's file.
    pub fn build(config: &str, entries: &[Entry]) -> Result<Manifest, PackError> {
        let files = entries
            .iter()
            .map(|e| {
                let meta = fs::metadata(&e.source).map_err(io_err("read", &e.source))?;
                Ok(ManifestFile {
                    path: e.path.clone(),
                    size: meta.len(),
                    sha256: sha256_file(&e.source).map_err(io_err("read", &e.source))?,
                    place: e.place.clone(),
                })
            })
            .collect::<Result<_, PackError>>()?;
        Ok(Manifest {
            format: 1,
            config: config.to_string(),
            files,
        })
    }

    /// Read `<bundle>/manifest.json`.
    pub fn read(bundle: &Path) -> Result<Manifest, PackError> {
        let path = bundle.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
        serde_json::from_str(&text).map_err(|e| PackError::Manifest {
            path,
            message: e.to_string(),
        })
    }

    /// Whether the exporter's wheels travel in this bundle.
    pub fn has_wheelhouse(&self) -> bool {
        self.files.iter().any(|f| f.place == Place::Wheelhouse)
    }
}

/// `60M`, `64K`, `1G` or a number of bytes.
pub fn parse_size(text: &str) -> Result<u64, PackError> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(PackError::PartSize(text.to_string())),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| PackError::PartSize(text.to_string()))
}

/// `path` relative to `root`, `/`-separated, or [`PackError::OutsideRoot`].
fn relative(path: &Path, root: &Path) -> Result<String, PackError> {
    let outside = || PackError::OutsideRoot {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    };
    let abs = fs::canonicalize(path).map_err(io_err("read", path))?;
    let root = fs::canonicalize(root).map_err(io_err("read", root))?;
    let rel = abs.strip_prefix(&root).map_err(|_| outside())?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Ok(parts.join("/"))
}

/// Every file below `dir` (sorted), or `dir` itself when it is a file.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, PackError> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err("read", &d))? {
            let p = e.map_err(io_err("read", &d))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What a project contributes to a bundle for `models`: the project's files (config, cases,
/// replay files, accepted snapshots when the suite compares them or else the accepted run it
/// follows, model files named by path)
/// and the default models whose GGUFs must travel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectPlan {
    pub entries: Vec<Entry>,
    /// The config, relative to the root.
    pub config: String,
    /// Default model names of the ONNX profiles (their GGUFs come from the cache).
    pub default_models: Vec<String>,
    /// Whether any profile runs ONNX (then the exporter's wheels and a runtime travel).
    pub onnx: bool,
}

/// Collect the project's part of a bundle (pure over the config and the files it names).
pub fn project_entries(
    config: &Config,
    models: &[&ModelProfile],
) -> Result<ProjectPlan, PackError> {
    let root = &config.root;
    let mut plan = ProjectPlan {
        config: relative(&config.path, root)?,
        ..ProjectPlan::default()
    };
    let mut add = |path: &Path| -> Result<(), PackError> {
        relative(path, root)?;
        for file in files_under(path)? {
            let rel = relative(&file, root)?;
            if !plan.entries.iter().any(|e| e.path == rel) {
                plan.entries.push(Entry {
                    source: file,
                    path: rel,
                    place: Place::Bundle,
                });
            }
        }
        Ok(())
    };
    add(&config.path)?;
    add(&config.resolve(&config.suite.cases))?;
    // The run the suite follows instead of snapshots travels with it, or the device would
    // decode freely (it says so, and the results would not be the accepted ones).
    if let Some(accepted) = config.suite.accepted_outputs.as_ref()
        && !config.suite.snapshot
    {
        add(&config.resolve(accepted))?;
    }
    for m in models {
        match &m.source {
            SourceConfig::Reference => {}
            SourceConfig::Replay { path } => add(&config.resolve(path))?,
            SourceConfig::Onnx { model, .. } => {
                plan.onnx = true;
                let path = config.resolve(Path::new(model));
                if path.exists() {
                    add(&path)?;
                } else if !plan.default_models.contains(model) {
                    plan.default_models.push(model.clone());
                }
            }
        }
        let snapshots = config.resolve(&config.suite.snapshots).join(&m.name);
        if config.suite.snapshot && snapshots.is_dir() {
            add(&snapshots)?;
        }
    }
    Ok(plan)
}

/// A writer that fills `part.000`, `part.001`, ... in `dir`, each at most `size` bytes.
struct PartWriter {
    dir: PathBuf,
    size: u64,
    parts: Vec<PathBuf>,
    current: Option<(BufWriter<File>, u64)>,
}

impl PartWriter {
    fn open_next(&mut self) -> io::Result<()> {
        if let Some((mut f, _)) = self.current.take() {
            f.flush()?;
        }
        if self.parts.len() >= 1000 {
            return Err(io::Error::other("more than 1000 parts: raise --part-size"));
        }
        let path = self.dir.join(format!("part.{:03}", self.parts.len()));
        self.current = Some((BufWriter::new(File::create(&path)?), 0));
        self.parts.push(path);
        Ok(())
    }
}

impl Write for PartWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.current.as_ref().is_none_or(|(_, n)| *n >= self.size) {
            self.open_next()?;
        }
        let (f, n) = self.current.as_mut().expect("a part is open");
        let take = buf.len().min((self.size - *n) as usize);
        f.write_all(&buf[..take])?;
        *n += take as u64;
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((f, _)) => f.flush(),
            None => Ok(()),
        }
    }
}

/// Tar the manifest and every entry into `dir/part.NNN`, each at most `part_size` bytes
/// (earlier parts in `dir` are removed first). Returns the parts in order.
pub fn write_parts(
    dir: &Path,
    manifest: &Manifest,
    entries: &[Entry],
    part_size: u64,
) -> Result<Vec<PathBuf>, PackError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    for e in fs::read_dir(dir).map_err(io_err("read", dir))?.flatten() {
        if e.file_name().to_string_lossy().starts_with("part.") {
            fs::remove_file(e.path()).map_err(io_err("remove", &e.path()))?;
        }
    }
    let mut writer = PartWriter {
        dir: dir.to_path_buf(),
        size: part_size,
        parts: Vec::new(),
        current: None,
    };
    let split = |e: io::Error| PackError::Split(format!("{} ({})", e, dir.display()));
    let mut tar = tar::Builder::new(&mut writer);
    tar.mode(tar::HeaderMode::Deterministic);
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, json.as_slice())
        .map_err(split)?;
    for e in entries {
        tar.append_path_with_name(&e.source, &e.path)
            .map_err(|err| PackError::Split(format!("{err} (adding {})", e.source.display())))?;
    }
    tar.finish().map_err(split)?;
    drop(tar);
    writer.flush().map_err(split)?;
    writer.current = None;
    Ok(writer.parts)
}

/// The on-device script: joins the `parts` parts beside it, extracts them into `bundle/` and
/// hands over to `./codegen unpack` there (its arguments passed on, e.g. `--run`).
pub fn unpack_script(parts: usize) -> String {
    format!(
        r#"#!/bin/sh
# Written by `codegen pack`. Run it where the {parts} part(s) were copied: it joins them, extracts
# the bundle into ./{BUNDLE_DIR} and runs `codegen unpack` there (arguments are passed on: --run).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
n=$(ls "$here" | grep -c '^part\.[0-9]*$' || true)
if [ "$n" -ne {parts} ]; then
  echo "unpack.sh: $n of {parts} parts in $here; send the missing ones" >&2
  exit 1
fi
rm -rf "$here/{BUNDLE_DIR}" && mkdir -p "$here/{BUNDLE_DIR}"
cat "$here"/part.* | tar -x -C "$here/{BUNDLE_DIR}" -f -
cd "$here/{BUNDLE_DIR}"
exec ./codegen unpack . "$@"
"#
    )
}

/// Quote `text` for a POSIX shell when it needs it.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// One command per part: copy it into `stage` on the device; the last also copies the script
/// and runs it with `--run`. `parts` and `script` are paths as the device sees them.
pub fn send_commands(parts: &[String], script: &str, stage: &str) -> Vec<String> {
    let stage = shell_quote(stage);
    let n = parts.len();
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let copy = format!("mkdir -p {stage} && cp {} {stage}/", shell_quote(p));
            if i + 1 < n {
                copy
            } else {
                format!(
                    "{copy} && cp {} {stage}/ && sh {stage}/{UNPACK_SCRIPT} --run",
                    shell_quote(script)
                )
            }
        })
        .collect()
}

/// Check every file of `manifest` in `bundle` (or, already placed, under `cache`).
pub fn verify(bundle: &Path, manifest: &Manifest, cache: &Path) -> Result<(), PackError> {
    for f in &manifest.files {
        let here = bundle.join(&f.path);
        let placed = f.place.destination(cache, file_name(&f.path));
        let at = if here.is_file() {
            here
        } else {
            match placed {
                Some(p) if p.is_file() => p,
                other => {
                    return Err(PackError::Missing {
                        file: f.path.clone(),
                        placed: other.unwrap_or(here),
                    });
                }
            }
        };
        let actual = sha256_file(&at).map_err(io_err("read", &at))?;
        if actual != f.sha256 {
            return Err(PackError::Mismatch {
                file: f.path.clone(),
                expected: f.sha256.clone(),
                actual,
            });
        }
    }
    Ok(())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Move every GGUF and wheel of a verified bundle into `cache` where the harness looks for
/// them; returns how many files moved.
pub fn place(bundle: &Path, manifest: &Manifest, cache: &Path) -> Result<usize, PackError> {
    let mut moved = 0;
    for f in &manifest.files {
        let Some(dest) = f.place.destination(cache, file_name(&f.path)) else {
            continue;
        };
        let here = bundle.join(&f.path);
        if here.is_file() {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            if fs::rename(&here, &dest).is_err() {
                fs::copy(&here, &dest).map_err(io_err("copy", &here))?;
                fs::remove_file(&here).map_err(io_err("remove", &here))?;
            }
            moved += 1;
        }
        if let Place::Gguf { model } = &f.place {
            let marker = dest.with_file_name(format!("{model}.gguf.verified"));
            fs::write(&marker, &f.sha256).map_err(io_err("write", &marker))?;
        }
    }
    Ok(moved)
}

/// The command that runs the bundle's suite from its root.
pub fn run_command(bundle: &Path, manifest: &Manifest, cache: &Path) -> String {
    let mut env = format!(
        "CODEGEN_CACHE={}",
        shell_quote(&cache.display().to_string())
    );
    if manifest.has_wheelhouse() {
        env.push_str(&format!(
            " CODEGEN_WHEELHOUSE={}",
            shell_quote(&wheelhouse(cache).display().to_string())
        ));
    }
    format!(
        "cd {} && {env} ./codegen run --config {}",
        shell_quote(&bundle.display().to_string()),
        shell_quote(&manifest.config)
    )
}

#[cfg(test)]
mod tests;
