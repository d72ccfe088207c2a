//! `codegen init`: set up a suite in the user's own crate. Writes `tests/codegen.rs` (the test
//! target that calls [`crate::harness::main`]), a starter `harness/codegen.toml` (a reference
//! profile, and a model profile left commented out) and one case, and adds to `Cargo.toml`
//! what the suite needs: the `[[test]]` entry (`harness = false`, `test = false`), the
//! dev-dependency on this crate, and an optimised dev profile for dependencies (the engine's
//! per-token work and the tokenizer are too slow unoptimised). Existing files are kept; a
//! section already in `Cargo.toml` is not added twice.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a crate could not be set up.
#[derive(Debug, Error)]
pub enum InitError {
    #[error("failed to set up {dir}: no Cargo.toml there (run `cargo new` or `cargo init` first)")]
    NoManifest { dir: PathBuf },
    #[error("failed to {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The test target: the whole suite, its summary and its gate.
pub const TEST_TARGET: &str = r#"//! The codegen suite: every case x every model profile of harness/codegen.toml, then the
//! summary and the gate. Run it with `cargo test --test codegen` (set up by `codegen init`).

fn main() -> std::process::ExitCode {
    codegen_harness::harness::main(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
}
"#;

/// A starter config: the cases' reference solutions, and a model profile to enable.
pub const STARTER_CONFIG: &str = r#"# codegen-harness configuration (`cargo test --test codegen`). Paths are relative to the
# crate root. Every field: codegen-harness README.md, "Configuration".

[suite]
cases = "cases"              # cases/<category>/<name>.toml
snapshots = "snapshots"      # snapshots/<model>/<category>__<id>.snap (review: cargo insta review)
snapshot = true              # a trial passes when its outcome matches the accepted snapshot
results = "target/codegen"

[generation]
max_new_tokens = 512
temperature = 0.0            # greedy

[sandbox]
level = "strict"             # "basic" or "none" where user namespaces are not allowed

[gate]
min_pass_rate = 1.0          # every reference solution must pass

# Each case's own reference solution: the cases and their tests are sound.
[[models]]
name = "reference"
source = "reference"

# A real model, run in-process by ONNX Runtime (downloaded and exported on first use):
# uncomment, then set its gate from its measured pass rate.
# [[models]]
# name = "qwen2.5-coder-0.5b-instruct"
# source = "onnx"
# model = "qwen2.5-coder-0.5b-instruct"
# device = "cpu"
# [models.gate]
# min_pass_rate = 0.3
"#;

/// One case to start from.
pub const STARTER_CASE: &str = r#"prompt = """
Write a Python function `add(a: int, b: int) -> int` that returns the sum of `a` and `b`.
"""
entry_point = "add"
reference = '''
def add(a: int, b: int) -> int:
    return a + b
'''

[[tests]]
call = "add(1, 2)"
expected = "3"

[[tests]]
call = "add(-1, 1)"
expected = "0"
"#;

/// The `[[test]]` entry for `tests/codegen.rs`.
pub const TEST_ENTRY: &str = r#"
# The codegen suite (codegen init): its own command, `cargo test --test codegen`. `test = false`
# keeps it out of a plain `cargo test`; `harness = false` lets it print its summary and gate.
[[test]]
name = "codegen"
path = "tests/codegen.rs"
harness = false
test = false
"#;

/// The dev profile the engine needs: dependencies optimised (the engine's per-token work and
/// the tokenizer), the crate's own code left as the user has it.
pub const DEV_PROFILE: &str = r#"
# codegen-harness runs models under `cargo test` (the dev profile): unoptimised, its per-token
# work and the tokenizer are many times slower. Optimise the dependencies only, without their
# debug info (they build faster, and your own code keeps its profile) (codegen init).
[profile.dev.package."*"]
opt-level = 2
debug = false
"#;

/// What [`init`] did, file by file.
#[derive(Debug, Default)]
pub struct Initialized {
    pub written: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    /// Sections added to Cargo.toml (`[[test]] codegen`, the dev-dependency, the profile).
    pub manifest: Vec<String>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InitError {
    let path = path.to_path_buf();
    move |source| InitError::Io { what, path, source }
}

/// Write `body` to `dir/rel` unless it exists.
fn write_new(dir: &Path, rel: &str, body: &str, done: &mut Initialized) -> Result<(), InitError> {
    let path = dir.join(rel);
    if path.exists() {
        done.kept.push(path);
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    fs::write(&path, body).map_err(io("write", &path))?;
    done.written.push(path);
    Ok(())
}

/// Set up the crate at `dir`; `dependency` is the dev-dependency's value (`{ path = "..." }`,
/// `{ git = "..." }`).
pub fn init(dir: &Path, dependency: &str) -> Result<Initialized, InitError> {
    let manifest_path = dir.join("Cargo.toml");
    let mut manifest = fs::read_to_string(&manifest_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => InitError::NoManifest {
            dir: dir.to_path_buf(),
        },
        _ => InitError::Io {
            what: "read",
            path: manifest_path.clone(),
            source: e,
        },
    })?;
    let mut done = Initialized::default();
    write_new(dir, "tests/codegen.rs", TEST_TARGET, &mut done)?;
    write_new(dir, "harness/codegen.toml", STARTER_CONFIG, &mut done)?;
    write_new(dir, "cases/basics/add.toml", STARTER_CASE, &mut done)?;
    write_new(dir, "snapshots/.gitkeep", "", &mut done)?;
    if !manifest.contains("name = \"codegen\"") {
        manifest.push_str(TEST_ENTRY);
        done.manifest.push("[[test]] codegen".into());
    }
    if !manifest.contains("codegen-harness") {
        manifest = add_dev_dependency(&manifest, &format!("codegen-harness = {dependency}"));
        done.manifest
            .push(format!("[dev-dependencies] codegen-harness = {dependency}"));
    }
    if !manifest.contains("[profile.dev.package.\"*\"]") {
        manifest.push_str(DEV_PROFILE);
        done.manifest
            .push("[profile.dev.package.\"*\"] opt-level = 2".into());
    }
    if !done.manifest.is_empty() {
        fs::write(&manifest_path, manifest).map_err(io("write", &manifest_path))?;
    }
    Ok(done)
}

/// `manifest` with `line` under `[dev-dependencies]` (the section added when missing).
fn add_dev_dependency(manifest: &str, line: &str) -> String {
    match manifest.find("[dev-dependencies]\n") {
        Some(at) => {
            let end = at + "[dev-dependencies]\n".len();
            format!("{}{line}\n{}", &manifest[..end], &manifest[end..])
        }
        None => format!("{}\n[dev-dependencies]\n{line}\n", manifest.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_up_a_crate_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(matches!(
            init(dir, "{ path = \"/h\" }"),
            Err(InitError::NoManifest { .. })
        ));
        fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"mine\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dev-dependencies]\nserde = \"1\"\n",
        )
        .unwrap();
        let done = init(dir, "{ path = \"/h\" }").unwrap();
        assert_eq!(done.written.len(), 4);
        assert_eq!(done.manifest.len(), 3);
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(
                "[dev-dependencies]\ncodegen-harness = { path = \"/h\" }\nserde = \"1\"\n"
            ),
            "{manifest}"
        );
        assert!(
            manifest.contains("harness = false\ntest = false\n"),
            "{manifest}"
        );
        // A second run keeps everything as it is.
        let again = init(dir, "{ path = \"/h\" }").unwrap();
        assert!(
            again.written.is_empty() && again.manifest.is_empty(),
            "{again:?}"
        );
        assert_eq!(
            fs::read_to_string(dir.join("Cargo.toml")).unwrap(),
            manifest
        );
    }
}
