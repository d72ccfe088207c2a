//! `codegen pack` / `unpack` round trip on CPU: a small project (the `reference` source, two
//! cases, no ONNX model, so no GGUF and no wheels travel) is packed into several parts; the
//! generated unpack.sh, run in a fresh folder holding only the parts, rebuilds the same files,
//! verifies them, and the suite runs from the unpacked folder. A damaged part is named.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::GOOD_CASE;

const CONFIG: &str = "[suite]\ncases = \"cases/imported\"\nsnapshot = false\nresults = \"target/packed\"\n\n[[models]]\nname = \"ref\"\nsource = \"reference\"\n";

const MARKER: &str = "UNIQUE-MARKER-8d1f";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A project with the config under harness/ and cases in a (would-be git-ignored) folder.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = |rel: &str, body: &str| {
        let p = dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    };
    w("harness/packed.toml", CONFIG);
    w("cases/imported/math/add.toml", GOOD_CASE);
    w(
        "cases/imported/math/add_again.toml",
        &format!("# {MARKER}\n{GOOD_CASE}"),
    );
    dir
}

fn pack(project: &Path, cache: &Path) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_codegen"))
        .current_dir(project)
        .args(["pack", "--config", "harness/packed.toml", "--out", "out"])
        .args(["--part-size", "4M", "--gpu-runtime", "none"])
        .env("CODEGEN_CACHE", cache)
        .env_remove("CODEGEN_MODELS")
        // Under cargo-nextest this test's own process-per-test variables must not reach it.
        .env_remove("NEXTEST_EXECUTION_MODE")
        .output()
        .unwrap();
    let t = text(&out);
    (out, t)
}

/// A fresh folder with only the parts and the script, as the device receives them.
fn receive(out: &Path) -> tempfile::TempDir {
    let dev = tempfile::tempdir().unwrap();
    for e in fs::read_dir(out).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dev.path().join(e.file_name())).unwrap();
    }
    dev
}

fn unpack_sh(dev: &Path, cache: &Path) -> (Output, String) {
    let out = Command::new("sh")
        .arg(dev.join("unpack.sh"))
        .current_dir("/")
        .env("CODEGEN_CACHE", cache)
        .output()
        .unwrap();
    let t = text(&out);
    (out, t)
}

#[test]
fn pack_then_unpack_runs_the_suite_from_the_parts() {
    let p = project();
    let cache = tempfile::tempdir().unwrap();
    let (out, t) = pack(p.path(), cache.path());
    assert!(out.status.success(), "{t}");
    let parts: Vec<_> = fs::read_dir(p.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part."))
        .collect();
    assert!(parts.len() >= 2, "{parts:?}");
    for n in &parts {
        let len = fs::metadata(p.path().join("out").join(n)).unwrap().len();
        assert!(len <= 4 << 20, "{n}: {len}");
    }
    // one command per part, the last one runs the script
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), parts.len(), "{stdout}");
    assert!(lines[0].starts_with("mkdir -p /tmp/codegen-bundle && cp out/part.000 "));
    assert!(
        lines.last().unwrap().ends_with(
            "cp out/unpack.sh /tmp/codegen-bundle/ && sh /tmp/codegen-bundle/unpack.sh --run"
        ),
        "{stdout}"
    );

    let dev = receive(&p.path().join("out"));
    let dev_cache = tempfile::tempdir().unwrap();
    let (out, t) = unpack_sh(dev.path(), dev_cache.path());
    assert!(out.status.success(), "{t}");
    assert!(t.contains("verified 4 files"), "{t}");
    let bundle = dev.path().join("bundle");
    for rel in [
        "harness/packed.toml",
        "cases/imported/math/add.toml",
        "cases/imported/math/add_again.toml",
    ] {
        assert_eq!(
            fs::read(bundle.join(rel)).unwrap(),
            fs::read(p.path().join(rel)).unwrap(),
            "{rel}"
        );
    }
    let run = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        run.ends_with("./codegen run --config harness/packed.toml"),
        "{run}"
    );
    assert!(
        run.contains(&format!("CODEGEN_CACHE={}", dev_cache.path().display())),
        "{run}"
    );

    // the printed command runs the suite from the unpacked folder
    let out = Command::new("sh")
        .args(["-c", &run])
        .env("CI", "true")
        .env("CODEGEN_ALLOW_HOST_ROOT", "1")
        .env_remove("CODEGEN_CONFIG")
        .env_remove("CODEGEN_MODELS")
        // Under cargo-nextest this test's own process-per-test variables must not reach it.
        .env_remove("NEXTEST_EXECUTION_MODE")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(common::shows(&t, "ref::math::add", "ok"), "{t}");
    assert!(bundle.join("target/packed").is_dir(), "{t}");
}

#[test]
fn a_damaged_part_is_named_with_the_file_and_both_hashes() {
    let p = project();
    let cache = tempfile::tempdir().unwrap();
    let (out, t) = pack(p.path(), cache.path());
    assert!(out.status.success(), "{t}");
    let dev = receive(&p.path().join("out"));
    // flip a byte of the marked case file's contents, wherever its part is
    let mut damaged = false;
    for e in fs::read_dir(dev.path()).unwrap() {
        let path = e.unwrap().path();
        let mut bytes = fs::read(&path).unwrap();
        if let Some(i) = bytes
            .windows(MARKER.len())
            .position(|w| w == MARKER.as_bytes())
        {
            bytes[i] = b'X';
            fs::write(&path, bytes).unwrap();
            damaged = true;
        }
    }
    assert!(damaged);
    let dev_cache = tempfile::tempdir().unwrap();
    let (out, t) = unpack_sh(dev.path(), dev_cache.path());
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("failed to verify cases/imported/math/add_again.toml: sha256 is "),
        "{t}"
    );
    let manifest = fs::read_to_string(dev.path().join("bundle/manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let expected = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "cases/imported/math/add_again.toml")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(t.contains(&format!("expected {expected}")), "{t}");

    // a missing part is caught before anything is extracted
    fs::remove_file(dev.path().join("part.000")).unwrap();
    let (out, t) = unpack_sh(dev.path(), dev_cache.path());
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("send the missing ones"), "{t}");
}
