//! Every architecture the exporter supports, against llama.cpp, on every run without building
//! llama.cpp: `harness/python/tiny_archs.py` writes a tiny GGUF of the architecture from a seed
//! (real tensor layout, metadata and quantization types, random weights), and
//! `harness/python/goldens.py check` exports it, runs it in ONNX Runtime and compares with
//! llama.cpp's numbers kept in `harness/python/goldens/NAME.json` (top-k logits and logits at
//! seeded indices at every position of 3 prompts, and 32 greedy tokens). `goldens.py make`
//! regenerates the goldens with llama.cpp (see harness/python/VALIDATION.md).
//!
//! fp32 and native with float activations (`native0`) must match: logits within 1e-3 of their
//! scale at every position, the same top-1 everywhere, the 32 greedy tokens identical.

use std::path::Path;
use std::process::Command;

use codegen_harness::env::Env;
use codegen_harness::models::python::PythonEnv;
use codegen_harness::provision::Provisioner;

fn python() -> Command {
    let env = Env::from_process().expect("a valid environment");
    let provisioner = Provisioner::from_env(&env);
    let env = PythonEnv::ensure(&provisioner, &|msg| eprintln!("{msg}")).expect("Python env");
    let harness_python = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/python");
    let mut cmd = env.command_with_path(&harness_python);
    cmd.current_dir(&harness_python);
    cmd
}

/// `goldens.py check NAME --precision P` passes; its JSON summary is printed either way.
fn check(name: &str, precision: &str) {
    let work = tempfile::tempdir().unwrap();
    let output = python()
        .args(["goldens.py", "check", name, "--precision", precision, "--work"])
        .arg(work.path())
        .output()
        .expect("run goldens.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{name} ({precision}) differs from llama.cpp's golden:\n{text}"
    );
    eprintln!("{text}");
}

macro_rules! architecture {
    ($test:ident, $name:literal) => {
        #[test]
        fn $test() {
            check($name, "fp32");
            check($name, "native0");
        }
    };
}

architecture!(llama3_rope_freqs_matches_llama_cpp, "llama3");
architecture!(qwen3_matches_llama_cpp, "qwen3");
architecture!(smollm3_matches_llama_cpp, "smollm3");
architecture!(smollm3_tq1_0_matches_llama_cpp, "smollm3-tq1_0");
architecture!(smollm3_tq2_0_matches_llama_cpp, "smollm3-tq2_0");
architecture!(olmo2_matches_llama_cpp, "olmo2");
architecture!(gpt2_matches_llama_cpp, "gpt2");
architecture!(phi2_matches_llama_cpp, "phi2");
architecture!(mistral_window_matches_llama_cpp_within_it, "mistral");
architecture!(phi3_long_rope_factors_match_llama_cpp, "phi3");
architecture!(phi4_mini_short_rope_factors_match_llama_cpp, "phi4-mini");

/// Every golden file has its test above (adding a golden without a test fails here).
#[test]
fn every_golden_has_a_test() {
    let source = include_str!("architectures.rs");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/python/goldens");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        assert!(
            source.contains(&format!("\"{stem}\")")),
            "goldens/{name} has no architecture!(..) test in tests/architectures.rs"
        );
    }
}
