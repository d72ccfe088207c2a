//! codegen-harness as a framework in someone else's crate: `codegen init` sets up a new crate
//! (tests/codegen.rs, the `[[test]]` entry, the dev-dependency on this crate by path, the dev
//! profile, a starter config and case), its suite runs with `cargo test --test codegen`
//! (reference profile only: no model), its snapshots are accepted and then hold, and the
//! `codegen` CLI works from that crate (`codegen report`). Offline, and sharing this build's
//! target folder so that nothing is compiled twice but the new crate and this one as its
//! dependency.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The target folder this test was built in (`<target>/debug/codegen` is its binary).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_codegen"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

fn cargo_test(dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(dir)
        .args(["test", "--offline", "--test", "codegen"])
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("CODEGEN_CONFIG")
        .env_remove("CODEGEN_MODELS")
        .env_remove("NEXTEST_EXECUTION_MODE")
        .env_remove("CODEGEN_SHARD")
        .env_remove("INSTA_UPDATE")
        .env_remove("CI")
        .env("CODEGEN_ALLOW_HOST_ROOT", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_new_crate_set_up_by_init_runs_its_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"scratch\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
    )
    .unwrap();
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("src/lib.rs"), "").unwrap();
    // The same versions as this build (offline, and the dependencies' builds are reused).
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_codegen"))
        .args(["init", ".", "--path", env!("CARGO_MANIFEST_DIR")])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("harness = false"), "{manifest}");

    // First run: no accepted snapshot, accepted here as a user would.
    let out = cargo_test(dir, &[("INSTA_UPDATE", "always")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.join("snapshots/reference/basics__add.snap").is_file());
    // Then it holds, on CI as well.
    let out = cargo_test(dir, &[("CI", "true")]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("reference::basics::add ... ok"), "{t}");
    assert!(t.contains("\n  overall: passed; "), "{t}");

    // The CLI from the user's crate: the report of its results.
    let report = Command::new(env!("CARGO_BIN_EXE_codegen"))
        .arg("report")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", text(&report));
    assert!(dir.join("target/codegen/report.html").is_file());
}
