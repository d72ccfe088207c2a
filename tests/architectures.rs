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
use codegen_harness::prompt::{Message, TemplateTokens, render_chat_template};
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
fn check(name: &str, precision: &str, work: &Path) {
    let output = python()
        .args([
            "goldens.py",
            "check",
            name,
            "--precision",
            precision,
            "--work",
        ])
        .arg(work)
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

/// The exported tokenizer and chat template against llama.cpp's, as the golden recorded them:
/// each prompt's token ids (the tokenizers crate on the export's tokenizer.json, special tokens
/// added where llama.cpp added BOS), and the chat prompt rendered by llama.cpp's own template
/// code equal to the engine's rendering of the export's chat_template.
fn tokenizer_and_template_match(name: &str, folder: &Path) {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("harness/python/goldens/{name}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let tok = tokenizers::Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(folder.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    for t in golden["tokenized"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let want: Vec<u32> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let add = t["add_bos"].as_bool().unwrap_or(false);
        let got = tok.encode(text, add).unwrap().get_ids().to_vec();
        assert_eq!(
            got, want,
            "{name}: token ids of {text:?} differ from llama.cpp's"
        );
    }
    for p in golden["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let chat = p["kind"] == "chat";
        let add = !chat && p["add_bos"].as_bool().unwrap_or(false);
        let got = tok.encode(text, add).unwrap().get_ids().to_vec();
        assert_eq!(
            got, want,
            "{name}: token ids of {:?} differ from llama.cpp's",
            p["kind"]
        );
        if chat {
            let template = cfg["chat_template"].as_str().expect("a chat_template");
            let tokens = TemplateTokens {
                bos_token: cfg["bos_token"].as_str().unwrap_or_default().to_string(),
                eos_token: cfg["eos_token"].as_str().unwrap_or_default().to_string(),
            };
            let messages = [Message {
                role: "user".into(),
                content: golden_user_message().into(),
            }];
            let ours = render_chat_template(template, &messages, &tokens, true).unwrap();
            // llama.cpp's built-in templates leave BOS to the tokenizer (add_bos_token), where
            // the Jinja template writes bos_token: compare the prompts as tokenized
            let add_bos = cfg["add_bos_token"].as_bool().unwrap_or(false);
            let theirs = if add_bos && !text.starts_with(&tokens.bos_token) {
                format!("{}{text}", tokens.bos_token)
            } else {
                text.to_string()
            };
            if LLAMA_CPP_OTHER_TEMPLATE.contains(&name) {
                assert_ne!(
                    ours, theirs,
                    "{name}: llama.cpp now renders this template: test it"
                );
            } else {
                assert_eq!(
                    ours, theirs,
                    "{name}: chat prompt differs from llama.cpp's rendering"
                );
            }
        }
    }
}

/// Models whose chat template llama.cpp does not support: it detects another built-in one
/// (OLMo 2's `<|user|>\n...\n<|assistant|>\n` renders without the newlines there).
const LLAMA_CPP_OTHER_TEMPLATE: &[&str] = &["olmo2"];

/// goldens.py's USER message.
fn golden_user_message() -> &'static str {
    "Write a function that returns the sum of a list."
}

macro_rules! architecture {
    ($test:ident, $name:literal) => {
        #[test]
        fn $test() {
            let work = tempfile::tempdir().unwrap();
            check($name, "fp32", work.path());
            tokenizer_and_template_match($name, &work.path().join(concat!($name, "-fp32")));
            check($name, "native0", work.path());
        }
    };
}

architecture!(llama3_rope_freqs_matches_llama_cpp, "llama3");
architecture!(qwen2_matches_llama_cpp, "qwen2");
architecture!(qwen3_matches_llama_cpp, "qwen3");
architecture!(smollm3_matches_llama_cpp, "smollm3");
architecture!(smollm3_tq1_0_matches_llama_cpp, "smollm3-tq1_0");
architecture!(smollm3_tq2_0_matches_llama_cpp, "smollm3-tq2_0");
architecture!(olmo2_matches_llama_cpp, "olmo2");
architecture!(gemma3_local_rope_and_window_match_llama_cpp, "gemma3");
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
