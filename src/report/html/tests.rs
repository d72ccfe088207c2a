//! Tests of the HTML report: what a small results folder renders, case ids, and the size a
//! HumanEval-sized report of six models costs.

use super::*;
use crate::report::page::{case_id, failure_line};
use serde_json::{Value as Json, json};

#[test]
fn renders_sections_cases_and_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("summary-m.json"),
        r#"{"summary":{"model":"m","overall":{"cases":1,"passed":0,"pass_rate":0.0,"syntax_valid_rate":1.0},"categories":{"a":{"cases":1,"passed":0,"pass_rate":0.0,"syntax_valid_rate":1.0}}},"gate_failures":[]}"#,
    )
    .unwrap();
    fs::write(
        dir.path().join("results-m.jsonl"),
        r#"{"key":"a/x","samples":[{"passed":false,"tests":[{"label":"f(1)","verdict":"wrong_answer","got":"1","expected":"2"}],"extraction":{"code":"def f(x): return x"},"tokens":{"ids":[1,2],"pieces":["def"," f"],"logprobs":[-0.01,-2.0],"top":[[],[[2," f",-2.0],[3," g",-0.5]]]},"timing":{"total_ms":10.0,"time_to_first_token_ms":2.0,"decode_tokens_per_s":50.0}}],"error":null}"#,
    )
    .unwrap();
    let html = render(dir.path()).unwrap();
    assert!(html.contains("got 1, expected 2"));
    assert_eq!(
        failure_line(&json!({"class": {"class": "exception", "type": "ValueError"}, "test": "f(1)", "source": "  raise ValueError"})).as_deref(),
        Some("exception ValueError; first failing test: f(1); at: raise ValueError")
    );
    assert_eq!(
        failure_line(&json!({"class": "wrong_answer"})).as_deref(),
        Some("wrong_answer")
    );
    assert_eq!(failure_line(&Json::Null), None);
    // The sure token is plain, the unsure one coloured with its alternative (not itself).
    assert!(
        html.contains("def<i class=c1 title=\"14%\n` g` 61%\"> f</i>"),
        "{html}"
    );
    assert!(html.contains("id=\"models\""));
    assert!(html.contains("id=\"pairwise\""));
    assert!(
        html.contains("10 ms"),
        "time per case from the sample timings"
    );
    assert!(render(Path::new("/nonexistent")).is_err());
}

#[test]
fn case_ids_are_distinct_and_plain() {
    let a = case_id("m0", "humaneval/HumanEval_0");
    let b = case_id("m0", "humaneval_HumanEval_0");
    assert_ne!(a, b);
    assert!(
        a.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{a}"
    );
    assert_ne!(case_id("m0", "a"), case_id("m1", "a"));
}

/// A deterministic stand-in for a model's run over HumanEval: `cases` cases of `tokens`
/// tokens, each with five alternatives. 35% of tokens are under 0.95 probability, spread over
/// every bucket (the 0.5B default model measured 30% on the repository's cases).
fn synthetic_model(name: &str, cases: usize, tokens: usize) -> ModelResults {
    const PIECES: [&str; 8] = ["def", " return", " x", "(", "):\n", "    ", " <", " result"];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ name.len() as u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let cases: Vec<Json> = (0..cases)
        .map(|ci| {
            let mut pieces = Vec::new();
            let mut logprobs = Vec::new();
            let mut top = Vec::new();
            for t in 0..tokens {
                let piece = PIECES[(t + ci) % PIECES.len()];
                let h = next() % 100;
                let p: f64 = if h < 35 { (h as f64 + 1.0) / 36.0 * 0.94 } else { 0.99 };
                pieces.push(json!(piece));
                logprobs.push(json!(p.ln()));
                let mut alts = vec![json!([t, piece, p.ln()])];
                for a in 0..4 {
                    alts.push(json!([
                        1000 + a,
                        PIECES[(t + a + 1) % PIECES.len()],
                        ((1.0 - p) / (a as f64 + 1.5)).max(1e-9).ln()
                    ]));
                }
                top.push(json!(alts));
            }
            let passed = next() % 2 == 0;
            let tests: Vec<Json> = (0..8)
                .map(|i| json!({"label": format!("candidate([1, 2, {i}], 'abc')"), "verdict": if passed { "passed" } else { "wrong_answer" }, "got": "[1, 2]", "expected": "[2, 1]"}))
                .collect();
            json!({"key": format!("humaneval/HumanEval_{ci}"), "error": null, "samples": [{
                "passed": passed, "tests": tests,
                "extraction": {"code": pieces.iter().map(|p| p.as_str().unwrap()).collect::<String>()},
                "confidence": {"mean_nll": (next() % 100) as f64 / 100.0, "min_prob": (next() % 100) as f64 / 100.0},
                "tokens": {"ids": (0..tokens).collect::<Vec<_>>(), "pieces": pieces, "logprobs": logprobs, "top": top}
            }]})
        })
        .collect();
    ModelResults {
        name: name.into(),
        summary: json!({"summary": {"overall": {"cases": cases.len(), "pass_rate": 0.5}}, "gate_failures": []}),
        cases,
    }
}

#[test]
fn six_models_of_humaneval_stay_under_ten_megabytes() {
    let models: Vec<ModelResults> = (0..6)
        .map(|i| synthetic_model(&format!("model-{i}-with-a-long-profile-name"), 164, 300))
        .collect();
    let html = render_models(&models, &[]);
    let per_token = html.len() as f64 / (6.0 * 164.0 * 300.0);
    eprintln!(
        "6 x 164 x 300 tokens: {} bytes, {per_token:.1} per token",
        html.len()
    );
    assert!(
        html.len() < 10_000_000,
        "{} bytes ({per_token:.1} per token)",
        html.len()
    );
    // Every case of every model is there, with its heatmap.
    assert_eq!(html.matches("<pre class=\"heat\">").count(), 6 * 164);
    assert_eq!(html.matches("<svg class=\"roc\"").count(), 6);
}

#[test]
fn profiles_in_config_order_with_their_verdicts_first_and_only_models_paired() {
    let dir = tempfile::tempdir().unwrap();
    // (name, source, config order): alphabetical order would put `b-model` before `mutants`.
    for (name, source, order) in [
        ("reference", "reference", 0),
        ("mutants", "replay", 1),
        ("z-model", "onnx", 2),
        ("b-model", "onnx", 3),
    ] {
        let summary = json!({"summary": {"model": name, "config_order": order,
            "profile": {"name": name, "source": source},
            "trials": {"passed": 2, "failed": 0},
            "overall": {"cases": 2, "passed": 1, "pass_rate": 0.5, "syntax_valid_rate": 1.0},
            "categories": {}}, "gate_failures": []});
        fs::write(
            dir.path().join(format!("summary-{name}.json")),
            summary.to_string(),
        )
        .unwrap();
        let cases = format!(
            "{}\n{}\n",
            json!({"key": "a/1", "samples": [{"passed": true, "tests": []}], "error": null}),
            json!({"key": "a/2", "samples": [{"passed": name == "z-model", "tests": []}], "error": null})
        );
        fs::write(dir.path().join(format!("results-{name}.jsonl")), cases).unwrap();
    }
    let html = render(dir.path()).unwrap();
    let at = |s: &str| html.find(s).unwrap_or_else(|| panic!("{s}"));
    // The verdicts come before the tables.
    assert!(at("<ul id=\"verdict\">") < at("<table id=\"models\""));
    assert!(html.contains("<li><b>mutants</b>: trials <span class=\"pass\">2 passed, 0 failed</span>; gate <span class=\"pass\">passed</span></li>"), "{html}");
    // Columns in the config's order.
    let header = &html[at("<table id=\"models\"")..];
    let col = |n: &str| header.find(&format!(">{n}</th>")).unwrap();
    assert!(
        col("reference") < col("mutants")
            && col("mutants") < col("z-model")
            && col("z-model") < col("b-model")
    );
    // Model pairs: the two models only, not the fixtures.
    assert_eq!(html.matches("<div class=\"pair\">").count(), 1, "{html}");
    assert!(html.contains("<h3>z-model vs b-model</h3>"), "{html}");
}
