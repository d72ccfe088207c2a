//! `codegen doctor` against the tiny models of harness/python/make_tiny_models.py: a valid
//! folder passes, and each kind of broken folder (made here from the valid one, or by
//! harness/python/make_doctor_fixtures.py where the graph itself must change) fails on the
//! check that names its problem, with a remedy and a non-zero exit. Also: an unsupported
//! GGUF, `--json`, and the exporter's architecture list.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use codegen_harness::cache::DirLock;
use codegen_harness::doctor::gguf::SUPPORTED_ARCHS;
use codegen_harness::env::Env;
use codegen_harness::provision::{Provisioner, TINY_MODELS_VENV};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env::from_process().expect("a valid environment"))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tiny models and the doctor's graph fixtures, built once per version of the scripts
/// under the cache (as tests/engine.rs does).
fn fixtures() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tiny = format!("{ROOT}/harness/python/make_tiny_models.py");
        let doctor = format!("{ROOT}/harness/python/make_doctor_fixtures.py");
        let mut hash = Sha256::new();
        hash.update(fs::read(&tiny).unwrap());
        hash.update(fs::read(&doctor).unwrap());
        let tag: String = hash.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = env()
            .cache
            .join("test-models")
            .join(format!("doctor-{tag}"));
        let _lock = DirLock::acquire(&dir).unwrap();
        if !dir
            .join("broken")
            .join("kv-f64")
            .join("model.onnx")
            .exists()
        {
            let python = Provisioner::from_env(env())
                .venv(&TINY_MODELS_VENV, &|msg| eprintln!("{msg}"))
                .expect("the tiny-models venv")
                .python;
            run_ok(Command::new(&python).arg(&tiny).arg("build").arg(&dir));
            run_ok(
                Command::new(&python)
                    .arg(&doctor)
                    .arg(dir.join("optimum"))
                    .arg(dir.join("broken")),
            );
        }
        dir
    })
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A copy of fixture `name` (e.g. `genai`, `broken/nan`) changed by `change`.
fn broken(name: &str, change: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    copy_dir(&fixtures().join(name), &dir);
    change(&dir);
    (tmp, dir)
}

fn edit_json(path: &Path, change: impl FnOnce(&mut serde_json::Map<String, Json>)) {
    let mut v: Json = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    change(v.as_object_mut().unwrap());
    fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// `codegen doctor --json ARGS` on CPU: exit success and the JSON document.
fn doctor(args: &[&str]) -> (bool, Json) {
    let out = Command::new(env!("CARGO_BIN_EXE_codegen"))
        .args([
            "doctor",
            "--json",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--tokens",
            "6",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json)
}

/// The verdict of `check` in the first model of a report.
fn verdict<'a>(json: &'a Json, check: &str) -> &'a Json {
    json["models"][0]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["check"] == check)
        .unwrap_or_else(|| panic!("no verdict for {check}: {json:#}"))
}

/// The doctor fails `dir` first on `check`, saying `says`, with a remedy; and exits non-zero.
fn assert_fails(dir: &Path, check: &str, says: &str) {
    let (success, json) = doctor(&[dir.to_str().unwrap()]);
    assert!(
        !success,
        "exit status 0 for a folder failing {check}: {json:#}"
    );
    let model = &json["models"][0];
    assert_eq!(model["verdict"], "fail", "{json:#}");
    assert_eq!(model["first_failing_check"], check, "{json:#}");
    let v = verdict(&json, check);
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{check}: {detail:?} lacks {says:?}");
    assert!(
        v["remedy"].as_str().is_some_and(|r| r.len() > 20),
        "{check} has no useful remedy: {v:#}"
    );
}

#[test]
fn valid_folders_pass_every_check() {
    for name in ["genai", "optimum", "genai-fp16", "broken/external"] {
        let dir = fixtures().join(name);
        let (success, json) = doctor(&[dir.to_str().unwrap()]);
        let model = &json["models"][0];
        assert!(success, "{name}: {json:#}");
        assert_eq!(model["verdict"], "ok", "{name}: {json:#}");
        for check in [
            "files",
            "config",
            "tokenizer",
            "special-tokens",
            "chat-template",
        ] {
            assert_eq!(verdict(&json, check)["status"], "ok", "{name}: {json:#}");
        }
        for check in [
            "onnx-load",
            "graph",
            "generate:cpu",
            "logits:cpu",
            "repeatable:cpu",
        ] {
            assert_eq!(verdict(&json, check)["status"], "ok", "{name}: {json:#}");
        }
        assert!(model["load_ms"].as_f64().unwrap() > 0.0, "{json:#}");
        assert!(model["peak_host_bytes"].as_u64().unwrap() > 0, "{json:#}");
    }
}

/// The default model, exported native into the user's cache (the suite's own model: in CI the
/// main job has already built it; otherwise this downloads and exports it once, under a lock).
#[test]
fn the_default_model_passes_every_check() {
    let (success, json) = doctor(&["qwen2.5-coder-0.5b-instruct"]);
    let model = &json["models"][0];
    assert!(success, "{json:#}");
    assert_eq!(model["verdict"], "ok", "{json:#}");
    assert_eq!(model["precision"], "native", "{json:#}");
    for check in ["chat-template", "graph", "generate:cpu", "repeatable:cpu"] {
        assert_eq!(verdict(&json, check)["status"], "ok", "{json:#}");
    }
}

#[test]
fn a_missing_graph_fails_files() {
    let (_t, dir) = broken("genai", |d| fs::remove_file(d.join("model.onnx")).unwrap());
    assert_fails(&dir, "files", "model.onnx is missing (the decoder graph");
}

#[test]
fn truncated_external_weights_fail_onnx_load() {
    let (_t, dir) = broken("broken/external", |d| {
        let data = d.join("model.onnx.data");
        let bytes = fs::read(&data).unwrap();
        fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_fails(&dir, "onnx-load", "model.onnx");
    let (_success, json) = doctor(&[dir.to_str().unwrap()]);
    let remedy = verdict(&json, "onnx-load")["remedy"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(remedy.contains("model.onnx.data is damaged"), "{remedy}");
}

#[test]
fn a_corrupt_graph_fails_onnx_load() {
    let (_t, dir) = broken("genai", |d| {
        fs::write(d.join("model.onnx"), b"this is not a protobuf at all").unwrap()
    });
    assert_fails(&dir, "onnx-load", "failed to load");
}

#[test]
fn a_config_that_is_not_json_fails_config() {
    let (_t, dir) = broken("genai", |d| {
        fs::write(d.join("config.json"), "{\"hidden_size\": 64,").unwrap()
    });
    assert_fails(&dir, "config", "config.json: failed to parse");
}

#[test]
fn a_config_without_layers_under_any_alias_fails_config() {
    let (_t, dir) = broken("genai", |d| {
        edit_json(&d.join("config.json"), |c| {
            c.remove("num_hidden_layers");
        })
    });
    assert_fails(&dir, "config", "no num_hidden_layers / n_layer");
}

#[test]
fn config_aliases_are_understood() {
    let (_t, dir) = broken("genai", |d| {
        edit_json(&d.join("config.json"), |c| {
            for (from, to) in [
                ("num_hidden_layers", "n_layer"),
                ("num_attention_heads", "n_head"),
                ("hidden_size", "n_embd"),
            ] {
                let v = c.remove(from).unwrap();
                c.insert(to.into(), v);
            }
        })
    });
    let (success, json) = doctor(&[dir.to_str().unwrap()]);
    assert!(success, "{json:#}");
    let detail = verdict(&json, "config")["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("2 layers, 4 heads, 2 KV heads"),
        "{detail}"
    );
}

#[test]
fn a_graph_without_a_kv_input_fails_graph() {
    let (_t, dir) = broken("broken/missing-kv", |_| {});
    assert_fails(&dir, "graph", "`past_key_values.1.value` is missing");
}

#[test]
fn a_float64_kv_cache_fails_graph() {
    let (_t, dir) = broken("broken/kv-f64", |_| {});
    assert_fails(&dir, "graph", "element type Float64");
}

#[test]
fn kv_heads_disagreeing_with_config_fail_graph() {
    let (_t, dir) = broken("genai", |d| {
        edit_json(&d.join("config.json"), |c| {
            c.insert("num_key_value_heads".into(), 4.into());
        })
    });
    assert_fails(
        &dir,
        "graph",
        "the graph has 2 KV heads, config.json num_key_value_heads says 4",
    );
}

#[test]
fn a_malformed_tokenizer_fails_tokenizer() {
    let (_t, dir) = broken("genai", |d| {
        edit_json(&d.join("tokenizer.json"), |t| {
            t.insert(
                "model".into(),
                serde_json::json!({"type": "BPE", "vocab": 7}),
            );
        })
    });
    assert_fails(&dir, "tokenizer", "tokenizer.json: failed to load");
}

#[test]
fn an_eos_id_outside_the_vocabulary_fails_special_tokens() {
    let (_t, dir) = broken("genai", |d| {
        edit_json(&d.join("generation_config.json"), |g| {
            g.insert("eos_token_id".into(), serde_json::json!([270, 99999]));
        })
    });
    assert_fails(
        &dir,
        "special-tokens",
        "generation_config.json eos_token_id 99999 is outside the vocabulary (271 tokens)",
    );
}

#[test]
fn eos_ids_disagreeing_with_tokenizer_config_fail_special_tokens() {
    let (_t, dir) = broken("genai", |d| {
        edit_json(&d.join("generation_config.json"), |g| {
            g.insert("eos_token_id".into(), serde_json::json!([268]));
        })
    });
    assert_fails(
        &dir,
        "special-tokens",
        "does not include the id of tokenizer_config.json eos_token \"<|im_end|>\" (270)",
    );
}

#[test]
fn a_chat_template_that_cannot_render_fails_chat_template() {
    let (_t, dir) = broken("genai", |d| {
        edit_json(&d.join("tokenizer_config.json"), |t| {
            t.insert(
                "chat_template".into(),
                "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}".into(),
            );
        })
    });
    assert_fails(&dir, "chat-template", "failed to");
}

#[test]
fn a_model_without_a_chat_template_is_completion_only() {
    let (_t, dir) = broken("genai", |d| {
        edit_json(&d.join("tokenizer_config.json"), |t| {
            t.remove("chat_template");
        })
    });
    let (success, json) = doctor(&[dir.to_str().unwrap()]);
    assert!(success, "a warning is not a failure: {json:#}");
    assert_eq!(json["models"][0]["verdict"], "warn");
    let v = verdict(&json, "chat-template");
    assert_eq!(v["status"], "warn");
    assert!(
        v["detail"].as_str().unwrap().contains("completion-only"),
        "{v:#}"
    );
    let g = verdict(&json, "generate:cpu");
    assert!(
        g["detail"].as_str().unwrap().starts_with("completion:"),
        "{g:#}"
    );
}

#[test]
fn nan_weights_fail_logits() {
    let (_t, dir) = broken("broken/nan", |_| {});
    assert_fails(&dir, "logits:cpu", "logits hold NaN or +Inf");
}

#[test]
fn an_unsupported_gguf_is_named_with_the_supported_list() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny-mamba.gguf");
    // A GGUF v3 header: magic, version, no tensors, two string pairs (value type 8).
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&2u64.to_le_bytes());
    for (key, value) in [
        ("general.architecture", "mamba"),
        ("general.name", "Tiny Mamba"),
    ] {
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
        bytes.extend_from_slice(value.as_bytes());
    }
    fs::write(&path, bytes).unwrap();
    let (success, json) = doctor(&[path.to_str().unwrap()]);
    assert!(!success);
    assert_eq!(json["models"][0]["first_failing_check"], "gguf");
    let v = verdict(&json, "gguf");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("architecture \"mamba\" is not supported"),
        "{detail}"
    );
    assert!(detail.contains("\"Tiny Mamba\""), "{detail}");
    let remedy = v["remedy"].as_str().unwrap();
    assert!(remedy.contains(&SUPPORTED_ARCHS.join(", ")), "{remedy}");
    // Not a GGUF at all.
    fs::write(&path, b"PK\x03\x04 a zip, not a gguf").unwrap();
    let (_, json) = doctor(&[path.to_str().unwrap()]);
    assert!(
        verdict(&json, "gguf")["detail"]
            .as_str()
            .unwrap()
            .contains("not the GGUF magic")
    );
}

#[test]
fn several_models_give_one_table_and_a_failing_exit() {
    let good = fixtures().join("genai");
    let (_t, bad) = broken("genai", |d| {
        fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_codegen"))
        .args([
            "doctor",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--tokens",
            "4",
        ])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("model "))
        .collect();
    assert_eq!(table.len(), 3, "{text}");
    assert!(table[0].contains("first failing check"), "{text}");
    assert!(table[1].contains(" ok "), "{text}");
    assert!(table[2].ends_with("fail     files"), "{text}");
    assert!(text.contains("tokenizer.json is missing"), "{text}");
}

#[test]
fn json_output_has_every_verdict_and_the_figures() {
    let dir = fixtures().join("optimum");
    let (success, json) = doctor(&[dir.to_str().unwrap()]);
    assert!(success);
    assert_eq!(json["verdict"], "ok");
    let model = &json["models"][0];
    for key in [
        "model",
        "folder",
        "size_bytes",
        "precision",
        "load_ms",
        "ms_per_token",
    ] {
        assert!(!model[key].is_null(), "{key}: {json:#}");
    }
    let checks: Vec<&str> = model["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "files",
            "config",
            "tokenizer",
            "special-tokens",
            "chat-template",
            "onnx-load",
            "graph",
            "generate:cpu",
            "logits:cpu",
            "repeatable:cpu",
            "host-memory",
            "gpu-memory"
        ]
    );
}

#[test]
fn no_run_checks_files_alone_and_estimates_memory() {
    let dir = fixtures().join("genai");
    let (success, json) = doctor(&["--no-run", dir.to_str().unwrap()]);
    assert!(success, "{json:#}");
    let checks: Vec<&str> = json["models"][0]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "files",
            "config",
            "tokenizer",
            "special-tokens",
            "chat-template",
            "host-memory"
        ]
    );
    let memory = verdict(&json, "host-memory")["detail"].as_str().unwrap();
    assert!(memory.starts_with("estimated:"), "{memory}");
}

/// The Rust list of supported architectures is the exporter's `SUPPORTED_ARCHS`, read from the
/// Python file (so adding an architecture there without here fails this test).
#[test]
fn supported_architectures_match_the_exporter() {
    let path = format!("{ROOT}/harness/python/exporter/gguf_model.py");
    let text = fs::read_to_string(&path).unwrap();
    let start = text
        .find("SUPPORTED_ARCHS = ")
        .unwrap_or_else(|| panic!("{path} has no `SUPPORTED_ARCHS = `"));
    let rest = &text[start..];
    let open = rest.find(['(', '[', '{']).unwrap();
    let close = rest[open..].find([')', ']', '}']).unwrap() + open;
    let without_comments: String = rest[open + 1..close]
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut python: Vec<String> = without_comments
        .split(',')
        .map(|s| s.trim().trim_matches(['"', '\'']).to_string())
        .filter(|s| !s.is_empty())
        .collect();
    python.sort();
    let mut rust: Vec<String> = SUPPORTED_ARCHS.iter().map(|s| s.to_string()).collect();
    rust.sort();
    assert_eq!(
        rust, python,
        "doctor::gguf::SUPPORTED_ARCHS differs from {path}'s SUPPORTED_ARCHS"
    );
}

/// Write a tiny GGUF with the exporter's Python: `code` runs with `path` bound to the file.
fn write_gguf(path: &Path, code: &str) {
    let python_env =
        codegen_harness::models::python::PythonEnv::ensure(&Provisioner::from_env(env()), &|msg| {
            eprintln!("{msg}")
        })
        .expect("the exporter's Python environment");
    let harness_python = Path::new(ROOT).join("harness/python");
    run_ok(
        python_env
            .command_with_path(&harness_python)
            .env(
                "PYTHONPATH",
                format!(
                    "{}:{}",
                    harness_python.display(),
                    harness_python.join("tests").display()
                ),
            )
            .args(["-c", &format!("import sys; path = sys.argv[1]; {code}")])
            .arg(path),
    );
}

/// A GGUF with a tensor its architecture's graph does not read fails `gguf-contract` naming the
/// tensor, before anything is exported; a mixture-of-experts llama (Mixtral) names what is
/// missing.
#[test]
fn a_gguf_with_an_unknown_tensor_or_experts_fails_the_contract_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = tmp.path().join("tiny-llama-bias.gguf");
    write_gguf(
        &extra,
        "import numpy as np, fixtures; fixtures.write_fixture(path, 'llama', hidden=64, \
         n_heads=2, n_kv=1, inter=128, layers=1, \
         extra_tensors={'blk.0.attn_output.bias': np.zeros(64, np.float32)})",
    );
    let (success, json) = doctor(&[extra.to_str().unwrap()]);
    assert!(!success);
    assert_eq!(json["models"][0]["first_failing_check"], "gguf-contract");
    let detail = verdict(&json, "gguf-contract")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("blk.0.attn_output.bias"), "{detail}");
    assert_eq!(json["models"][0]["architecture"], "llama");
    assert_eq!(json["models"][0]["layers"], 1);
    assert_eq!(json["models"][0]["hidden"], 64);
    let moe = tmp.path().join("tiny-mixtral.gguf");
    write_gguf(
        &moe,
        "import tiny_archs; tiny_archs.write_unsupported(path, 'mixtral')",
    );
    let (_, json) = doctor(&[moe.to_str().unwrap()]);
    let detail = verdict(&json, "gguf-contract")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("mixture-of-experts"), "{detail}");
}
