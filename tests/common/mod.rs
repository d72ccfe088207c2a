//! What the end-to-end tests share: a small generated project run through `codegen run`, and
//! reading libtest's output.

// Each test crate includes this module and uses a part of it.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A case whose reference solution passes its two tests.
pub const GOOD_CASE: &str = r#"
prompt = "Write add(a, b)."
entry_point = "add"
reference = '''
def add(a, b):
    return a + b
'''
[[tests]]
call = "add(1, 2)"
expected = "3"
[[tests]]
call = "add('a', 'b')"
expected = "'ab'"
"#;

/// A project with `codegen.toml` and `cases/`, removed when dropped.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(config: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("cases/math")).unwrap();
        fs::write(dir.path().join("codegen.toml"), config).unwrap();
        Project { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// `codegen run` on this project with `env` added (an empty value unsets a variable for the
    /// harness) and `libtest` arguments, not started.
    pub fn command(&self, env: &[(&str, &str)], libtest: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_codegen"));
        cmd.current_dir(self.dir.path())
            .args(["run", "--config", "codegen.toml", "--"])
            .args(libtest)
            .env_remove("CODEGEN_CONFIG")
            .env_remove("CODEGEN_MODELS")
            // Under cargo-nextest this test's own process-per-test variables must not reach it.
            .env_remove("NEXTEST_EXECUTION_MODE")
            .env_remove("INSTA_UPDATE")
            .env("CI", "true")
            // These tests are about the harness, run wherever `cargo test` runs: as root with a
            // Python under /root too (tests/host_root.rs unsets it to test the refusal).
            .env("CODEGEN_ALLOW_HOST_ROOT", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run `codegen run` to the end; returns its output and stdout followed by stderr.
    pub fn run(&self, env: &[(&str, &str)], libtest: &[&str]) -> (Output, String) {
        let out = self.command(env, libtest).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, text)
    }
}

/// Does libtest's output show `name` with `status` (`ok`, `FAILED`), whatever the padding?
pub fn shows(text: &str, name: &str, status: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
            .is_some_and(|(n, st)| n.trim_end() == name && st.trim() == status)
    })
}

/// The tiny ONNX test model's folder (built once into the cache, as tests/engine.rs builds it).
pub fn tiny_model() -> PathBuf {
    use codegen_harness::cache::DirLock;
    use codegen_harness::provision::{Provisioner, TINY_MODELS_VENV};
    use sha2::{Digest, Sha256};
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/harness/python/make_tiny_models.py"
    );
    let env = codegen_harness::Env::from_process().expect("a valid environment");
    let tag: String = Sha256::digest(fs::read(script).unwrap())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = env.cache.join("test-models").join(format!("tiny-{tag}"));
    let _lock = DirLock::acquire(&dir).unwrap();
    if !dir.join("genai").join("model.onnx").exists() {
        let python = Provisioner::from_env(&env)
            .venv(&TINY_MODELS_VENV, &|msg| eprintln!("{msg}"))
            .expect("the tiny-models venv")
            .python;
        let out = Command::new(python)
            .arg(script)
            .arg("build")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    dir.join("genai")
}
