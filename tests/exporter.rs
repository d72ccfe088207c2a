//! Runs the exporter's Python tests (tiny GGUF fixtures exported, run in ONNX Runtime and
//! compared with a numpy forward pass) in the Python environment that the harness manages.
//! The first run creates the venv from harness/python/requirements.txt (needs PyPI).

use std::path::Path;

use codegen_harness::env::Env;
use codegen_harness::models::python::PythonEnv;
use codegen_harness::provision::Provisioner;

fn provisioner() -> Provisioner {
    let env = Env::from_process().expect("a valid environment");
    Provisioner::from_env(&env)
}

#[test]
fn exporter_python_tests_pass() {
    let env =
        PythonEnv::ensure(&provisioner(), &|msg| eprintln!("{msg}")).expect("Python environment");
    let harness_python = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/python");
    let output = env
        .command_with_path(&harness_python)
        .current_dir(&harness_python)
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .output()
        .expect("run python -m unittest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the exporter's Python tests failed:\n{text}"
    );
    assert!(text.contains("OK"), "unexpected unittest output:\n{text}");
}

#[test]
fn embedded_exporter_matches_the_checkout() {
    // The binary carries a copy of harness/python/exporter; it must be the checkout's.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/python/exporter");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".py"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = codegen_harness::models::python::EXPORTER_SOURCES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    embedded.sort();
    assert_eq!(
        on_disk, embedded,
        "update EXPORTER_SOURCES in src/models/python.rs"
    );
}

#[test]
fn ensure_model_exports_a_users_gguf_into_the_cache() {
    use codegen_harness::models::{self, Precision, Target};
    let env =
        PythonEnv::ensure(&provisioner(), &|msg| eprintln!("{msg}")).expect("Python environment");
    let harness_python = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/python");
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny-llama.gguf");
    let status = env
        .command_with_path(&harness_python.join("tests"))
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                harness_python.join("tests").display(),
                harness_python.display()
            ),
        )
        .args([
            "-c",
            "import sys, fixtures; fixtures.write_fixture(sys.argv[1], 'llama')",
        ])
        .arg(&gguf)
        .status()
        .expect("write the fixture");
    assert!(status.success());
    let root = dir.path().join("cache");
    let gguf_arg = gguf.to_str().unwrap();
    let folder = models::ensure_model_in(
        &provisioner(),
        &root,
        gguf_arg,
        Target::Cpu,
        Precision::Int4,
    )
    .unwrap();
    for file in models::MODEL_FILES {
        assert!(
            folder.join(file).is_file(),
            "{file} missing in {}",
            folder.display()
        );
    }
    assert!(folder.join(models::COMPLETE_MARKER).is_file());
    let listed = models::list_cached_in(&root.join("models")).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].complete && listed[0].bytes > 100_000);
    assert!(listed[0].name.starts_with("tiny-llama-") && listed[0].name.ends_with("-cpu-int4"));
    // the second call reuses the folder
    let again = models::ensure_model_in(
        &provisioner(),
        &root,
        gguf_arg,
        Target::Cpu,
        Precision::Int4,
    )
    .unwrap();
    assert_eq!(again, folder);
}
