//! The onnxruntime-genai side of `codegen bench engine`: runs harness/python/bench_genai.py in
//! the pinned genai venv (or `CODEGEN_GENAI_PYTHON`), parses its JSON, and renders the suite
//! table: our suite beside genai at every `--genai-batch-sizes` setting (genai's own batching,
//! `og.Engine`: continuous batching where the folder allows it, else its static batches), genai's
//! best setting, and the ratios ours/genai of suite generated tok/s and of batch-1 decode.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use codegen_harness::device::Provider;
use codegen_harness::env::Env;
use codegen_harness::provision::{GENAI_CPU_VENV, GENAI_CUDA_VENV, Provisioner};

use crate::bench_engine::{BenchError, BenchOptions, Figures};

/// The onnxruntime-genai version compared against.
pub const GENAI_VERSION: &str = "0.18.0";

/// One genai suite run at one batch size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Setting {
    pub batch: usize,
    /// `dynamic_batching` (continuous) or `static_batching`.
    pub mode: String,
    pub seconds: f64,
    pub tokens: usize,
    pub peak_device_bytes: Option<u64>,
    /// Why the run failed (out of memory and the like); the other fields are then empty.
    pub error: Option<String>,
}

impl Setting {
    pub fn tok_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// genai's suite: every setting tried, and whether continuous batching was used.
#[derive(Debug, Clone, Default)]
pub struct GenaiSuite {
    pub settings: Vec<Setting>,
    pub continuous: String,
}

/// Check `--genai-batch-sizes`: comma-separated positive sizes or `all`.
pub fn check_batch_sizes(text: &str) -> Result<(), BenchError> {
    let parts: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(BenchError::Genai("--genai-batch-sizes is empty".into()));
    }
    for p in parts {
        if p != "all" && !p.parse::<usize>().is_ok_and(|n| n > 0) {
            return Err(BenchError::Genai(format!(
                "--genai-batch-sizes: {p:?} is neither a positive size nor `all`"
            )));
        }
    }
    Ok(())
}

fn genai_python(opts: &BenchOptions, env: &Env) -> Result<PathBuf, BenchError> {
    if let Some(p) = &env.genai_python {
        return Ok(p.clone());
    }
    let spec = match opts.provider {
        Provider::Cuda => &GENAI_CUDA_VENV,
        Provider::Cpu => &GENAI_CPU_VENV,
    };
    Provisioner::from_env(env)
        .venv(spec, &|msg| eprintln!("codegen: {msg}"))
        .map(|v| v.python)
        .map_err(|e| BenchError::Genai(e.to_string()))
}

fn script(env: &Env) -> PathBuf {
    env.genai_script.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/python/bench_genai.py")
    })
}

/// Run bench_genai.py on the prompt ids; `skip_suite`: the batch-1 figures only.
pub fn run_genai(
    opts: &BenchOptions,
    env: &Env,
    ids: &[Vec<u32>],
    skip_suite: bool,
) -> Result<(Figures, GenaiSuite), BenchError> {
    if !opts.model.join("genai_config.json").is_file() {
        return Err(BenchError::Genai(format!(
            "{} has no genai_config.json",
            opts.model.display()
        )));
    }
    let py = genai_python(opts, env)?;
    let tmp = tempfile::NamedTempFile::new().map_err(|e| BenchError::Genai(e.to_string()))?;
    std::fs::write(
        tmp.path(),
        serde_json::json!({ "prompts": ids }).to_string(),
    )
    .map_err(|e| BenchError::Genai(e.to_string()))?;
    let out = Command::new(py)
        .arg(script(env))
        .arg("--model")
        .arg(&opts.model)
        .arg("--prompts")
        .arg(tmp.path())
        .arg("--max-new")
        .arg(opts.max_new_tokens.to_string())
        .arg("--batch1")
        .arg(opts.batch1_prompts.to_string())
        .arg("--batch-sizes")
        .arg(&opts.genai_batch_sizes)
        .args(skip_suite.then_some("--skip-suite"))
        .arg("--device")
        .arg(opts.provider.as_str())
        .output()
        .map_err(|e| BenchError::Genai(e.to_string()))?;
    if !out.status.success() {
        return Err(BenchError::Genai(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | "),
        ));
    }
    parse(&out.stdout)
}

/// bench_genai.py's JSON: the figures of its best setting, and every setting.
pub fn parse(json: &[u8]) -> Result<(Figures, GenaiSuite), BenchError> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| BenchError::Genai(format!("bad JSON from bench_genai.py: {e}")))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let ids = |o: &serde_json::Value| -> Vec<u32> {
        o.as_array()
            .map(|x| {
                x.iter()
                    .filter_map(|t| t.as_u64())
                    .map(|t| t as u32)
                    .collect()
            })
            .unwrap_or_default()
    };
    let figures = Figures {
        batch1_decode_tok_s: f("batch1_decode_tok_s"),
        batch1_ttft_ms: f("batch1_ttft_ms"),
        batch1_drafting: None,
        suite_seconds: f("suite_seconds"),
        suite_tokens: f("suite_tokens") as usize,
        suite_batch: f("suite_batch") as usize,
        outputs: v["outputs"]
            .as_array()
            .map(|a| a.iter().map(ids).collect())
            .unwrap_or_default(),
    };
    let settings = v["settings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| Setting {
                    batch: s["batch"].as_u64().unwrap_or(0) as usize,
                    mode: s["mode"].as_str().unwrap_or("?").to_string(),
                    seconds: s["seconds"].as_f64().unwrap_or(0.0),
                    tokens: s["tokens"].as_u64().unwrap_or(0) as usize,
                    peak_device_bytes: s["peak_gpu_bytes"].as_u64(),
                    error: s["error"].as_str().map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default();
    let continuous = v["continuous_batching"].as_str().unwrap_or("-").to_string();
    Ok((
        figures,
        GenaiSuite {
            settings,
            continuous,
        },
    ))
}

/// The setting with the highest generated tokens/s among those that ran.
pub fn best(settings: &[Setting]) -> Option<&Setting> {
    settings
        .iter()
        .filter(|s| s.error.is_none())
        .max_by(|a, b| a.tok_s().total_cmp(&b.tok_s()))
}

/// `ours / theirs`, none when theirs is zero.
pub fn ratio(ours: f64, theirs: f64) -> Option<f64> {
    (theirs > 0.0).then(|| ours / theirs)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".into(),
        |b| format!("{:.0}", b as f64 / (1024.0 * 1024.0)),
    )
}

/// The suite by batch size: ours, genai at each setting, genai's best, and the two ratios
/// (suite generated tok/s against genai's best; batch-1 decode).
pub fn suite_table(
    ours: &Figures,
    ours_peak: Option<u64>,
    genai: &(Figures, GenaiSuite),
) -> String {
    let (g, suite) = genai;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "suite by batch size (genai: og.Engine; continuous batching {}):",
        suite.continuous
    );
    let _ = writeln!(
        s,
        "  {:<40} {:>8} {:>14} {:>10} {:>16}",
        "", "batch", "gen tok/s", "wall s", "peak device MiB"
    );
    let _ = writeln!(
        s,
        "  {:<40} {:>8} {:>14.1} {:>10.1} {:>16}",
        "codegen (ort)",
        ours.suite_batch,
        ours.suite_tok_s(),
        ours.suite_seconds,
        mib(ours_peak)
    );
    for st in &suite.settings {
        let name = format!("onnxruntime-genai {GENAI_VERSION} {}", st.mode);
        match &st.error {
            Some(e) => {
                let _ = writeln!(s, "  {name:<40} {:>8} failed: {e}", st.batch);
            }
            None => {
                let _ = writeln!(
                    s,
                    "  {name:<40} {:>8} {:>14.1} {:>10.1} {:>16}",
                    st.batch,
                    st.tok_s(),
                    st.seconds,
                    mib(st.peak_device_bytes)
                );
            }
        }
    }
    let show = |r: Option<f64>| r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"));
    match best(&suite.settings) {
        Some(b) => {
            let _ = writeln!(
                s,
                "  genai best: batch {} ({:.1} tok/s); suite tok/s ours/genai-best {} (target >= 3x)",
                b.batch,
                b.tok_s(),
                show(ratio(ours.suite_tok_s(), b.tok_s()))
            );
        }
        None => {
            let _ = writeln!(s, "  genai best: none (every setting failed)");
        }
    }
    let _ = writeln!(
        s,
        "  batch-1 decode tok/s ours/genai {} (target >= 1.4x)",
        show(ratio(ours.batch1_decode_tok_s, g.batch1_decode_tok_s))
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"version": "0.18.0", "load_s": 1.0, "batch1_decode_tok_s": 50.0,
        "batch1_ttft_ms": 20.0, "suite_seconds": 2.0, "suite_tokens": 400, "suite_batch": 16,
        "outputs": [[1, 2, 3], [4]], "continuous_batching": "unavailable: no paged KV",
        "settings": [
          {"batch": 1, "mode": "static_batching", "seconds": 10.0, "tokens": 400, "peak_gpu_bytes": null},
          {"batch": 16, "mode": "static_batching", "seconds": 2.0, "tokens": 400, "peak_gpu_bytes": 1048576000},
          {"batch": 64, "mode": "static_batching", "error": "CUDA out of memory", "peak_gpu_bytes": null}]}"#;

    #[test]
    fn parses_settings_and_picks_the_fastest() {
        let (f, suite) = parse(JSON.as_bytes()).unwrap();
        assert_eq!(f.suite_batch, 16);
        assert_eq!(f.outputs, vec![vec![1, 2, 3], vec![4]]);
        assert_eq!(suite.settings.len(), 3);
        assert_eq!(suite.settings[1].peak_device_bytes, Some(1_048_576_000));
        assert_eq!(
            suite.settings[2].error.as_deref(),
            Some("CUDA out of memory")
        );
        assert_eq!(best(&suite.settings).unwrap().batch, 16);
        assert_eq!(ratio(600.0, 200.0), Some(3.0));
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn old_json_without_settings_still_parses() {
        let (f, suite) =
            parse(br#"{"batch1_decode_tok_s": 5.0, "suite_seconds": 1.0, "suite_tokens": 3, "suite_batch": 1, "outputs": [[7]]}"#)
                .unwrap();
        assert_eq!(f.outputs, vec![vec![7]]);
        assert!(suite.settings.is_empty());
        assert!(best(&suite.settings).is_none());
    }

    #[test]
    fn table_shows_every_setting_the_best_and_both_ratios() {
        let genai = parse(JSON.as_bytes()).unwrap();
        let ours = Figures {
            batch1_decode_tok_s: 75.0,
            suite_seconds: 1.0,
            suite_tokens: 600,
            suite_batch: 32,
            ..Figures::default()
        };
        let t = suite_table(&ours, Some(2 * 1024 * 1024 * 1024), &genai);
        assert!(
            t.contains("continuous batching unavailable: no paged KV"),
            "{t}"
        );
        assert!(t.contains("2048"), "{t}");
        assert!(t.contains("failed: CUDA out of memory"), "{t}");
        assert!(t.contains("1000"), "{t}");
        assert!(t.contains("genai best: batch 16 (200.0 tok/s)"), "{t}");
        assert!(t.contains("ours/genai-best 3.00x"), "{t}");
        assert!(t.contains("ours/genai 1.50x"), "{t}");
    }

    #[test]
    fn batch_sizes_are_checked() {
        assert!(check_batch_sizes("1,16,64,all").is_ok());
        assert!(check_batch_sizes(" 8 , all").is_ok());
        assert!(check_batch_sizes("").is_err());
        assert!(check_batch_sizes("0").is_err());
        assert!(check_batch_sizes("1,x").is_err());
    }
}
