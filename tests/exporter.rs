//! Runs the exporter's Python tests (tiny GGUF fixtures exported, run in ONNX Runtime and
//! compared with a numpy forward pass) in the Python environment that the harness manages.
//! The first run creates the venv from harness/python/requirements.txt (needs PyPI).

use std::path::Path;

use codegen_harness::models::python::PythonEnv;

#[test]
fn exporter_python_tests_pass() {
    let env = PythonEnv::ensure(&|msg| eprintln!("{msg}")).expect("Python environment");
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
