//! The report's model table: every profile of the run side by side, one column per model and
//! one row per figure (what ran, its cost, how well it did, how well its uncertainty predicts
//! failure). Figures come from `summary-<model>.json` (fields per the report's data contract);
//! timings fall back to the per-sample timings in the results when the summary has none, and
//! anything else absent reads "n/a".

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::Value as Json;

use super::page::esc;
use super::results::{ModelResults, num};
use super::roc::Score;

const NA: &str = "n/a";

fn bytes(b: Option<f64>) -> String {
    // As every other place names a size (`codegen models list`, doctor, the summary).
    match b {
        Some(b) => crate::models::human_bytes(b as u64),
        None => NA.into(),
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10_000.0 => format!("{:.1} s", v / 1000.0),
        Some(v) => format!("{v:.0} ms"),
        None => NA.into(),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| NA.into())
}

/// "57.3% [49.7, 64.6] (94/164)": a pass rate with its interval and counts.
fn rate(totals: &Json) -> String {
    let Some(r) = num(totals, &["pass_rate"]) else {
        return NA.into();
    };
    let ci = match (
        num(totals, &["pass_rate_ci", "low"]),
        num(totals, &["pass_rate_ci", "high"]),
    ) {
        (Some(l), Some(h)) => format!(" [{:.1}, {:.1}]", l * 100.0, h * 100.0),
        _ => String::new(),
    };
    let counts = match (totals["passed"].as_u64(), totals["cases"].as_u64()) {
        (Some(p), Some(c)) => format!(" ({p}/{c})"),
        _ => String::new(),
    };
    format!("{:.1}%{ci}{counts}", r * 100.0)
}

fn text(j: &Json) -> String {
    match j {
        Json::String(s) => s.clone(),
        Json::Null => NA.into(),
        other => other.to_string(),
    }
}

/// Mean of a per-sample timing field over the samples that have it.
fn sample_mean(m: &ModelResults, field: &str) -> Option<f64> {
    let xs: Vec<f64> = m
        .samples()
        .filter_map(|s| num(&s["timing"], &[field]))
        .collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The summary's timing figure, else the mean over the results' per-sample timings.
fn timing(m: &ModelResults, summary_key: &str, sample_key: &str) -> Option<f64> {
    num(m.summary_field(&["timing"]), &[summary_key]).or_else(|| sample_mean(m, sample_key))
}

/// The k values of a `pass_at_k`-like object, above 1.
fn ks(models: &[ModelResults], field: &str) -> BTreeSet<u64> {
    models
        .iter()
        .flat_map(|m| {
            m.summary_field(&["overall", field])
                .as_object()
                .map(|o| {
                    o.keys()
                        .filter_map(|k| k.parse().ok())
                        .collect::<Vec<u64>>()
                })
                .unwrap_or_default()
        })
        .filter(|&k| k > 1)
        .collect()
}

fn auroc(m: &ModelResults, score: Score) -> String {
    let u = m.summary_field(&["uncertainty"]);
    if let Some(e) = u["scores"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["score"] == score.key())
    {
        let ci = match (num(e, &["ci", "low"]), num(e, &["ci", "high"])) {
            (Some(l), Some(h)) => format!(" [{l:.2}, {h:.2}]"),
            _ => String::new(),
        };
        return num(e, &["auroc"])
            .map(|a| format!("{a:.3}{ci}"))
            .unwrap_or_else(|| NA.into());
    }
    num(u, &[&format!("auroc_{}", score.key())])
        .map(|a| format!("{a:.3}"))
        .unwrap_or_else(|| NA.into())
}

fn gate(m: &ModelResults) -> String {
    match m.summary["gate_failures"].as_array().map(Vec::len) {
        Some(0) => "<span class=\"pass\">passed</span>".into(),
        Some(n) => format!("<span class=\"fail\">{n} failure(s)</span>"),
        None => NA.into(),
    }
}

/// The table as HTML (cells already escaped).
pub fn render(models: &[ModelResults]) -> String {
    let mut rows = profile_rows();
    rows.extend(quality_rows(models));
    if models.iter().any(|m| {
        m.summary_field(&["uncertainty", "low_prob_line"])
            .is_object()
    }) {
        rows.push((
            "least likely token on the failing line (hits/located, chance, p)".into(),
            Box::new(low_prob_line_cell),
        ));
    }
    // A profile spread over several GPUs: each session's share, speed and memory.
    if models
        .iter()
        .any(|m| m.summary_field(&["devices"]).is_array())
    {
        rows.push(("sessions (per device)".into(), Box::new(sessions_cell)));
    }
    rows.push(("trials".into(), Box::new(super::verdict::trials_cell)));
    rows.push(("gate".into(), Box::new(gate)));
    table(models, &rows)
}

/// A row's cell for one profile.
type Cell<'a> = Box<dyn Fn(&ModelResults) -> String + 'a>;

/// The profile's facts, speed and memory, and its overall pass rate.
fn profile_rows() -> Vec<(String, Cell<'static>)> {
    let profile = |k: &'static str| -> Cell {
        Box::new(move |m| esc(&text(m.summary_field(&["profile", k]))))
    };
    vec![
        ("source".into(), profile("source")),
        ("model".into(), profile("model")),
        ("device".into(), profile("device")),
        ("precision".into(), profile("precision")),
        (
            "size on disk".into(),
            Box::new(|m| bytes(num(m.summary_field(&["profile"]), &["size_on_disk_bytes"]))),
        ),
        (
            "load time".into(),
            Box::new(|m| ms(num(m.summary_field(&["profile"]), &["load_ms"]))),
        ),
        (
            "time to first token (mean)".into(),
            Box::new(|m| ms(timing(m, "mean_ttft_ms", "time_to_first_token_ms"))),
        ),
        (
            "decode tokens/s (mean)".into(),
            Box::new(|m| {
                timing(m, "decode_tokens_per_s", "decode_tokens_per_s")
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| NA.into())
            }),
        ),
        (
            "time per case (mean)".into(),
            Box::new(|m| ms(timing(m, "mean_case_ms", "total_ms"))),
        ),
        (
            "peak host memory".into(),
            Box::new(|m| bytes(num(m.summary_field(&["resources"]), &["peak_host_bytes"]))),
        ),
        (
            "peak device memory".into(),
            Box::new(|m| bytes(num(m.summary_field(&["resources"]), &["peak_device_bytes"]))),
        ),
        (
            "not measured".into(),
            Box::new(|m| text(m.summary_field(&["overall", "errors"]))),
        ),
        (
            "<b>pass rate</b> [95% CI] (passed/cases)".into(),
            Box::new(|m| format!("<b>{}</b>", rate(m.summary_field(&["overall"])))),
        ),
    ]
}

/// Per category, syntax validity, pass@k and pass^k, and the AUROC rows any profile has.
fn quality_rows(models: &[ModelResults]) -> Vec<(String, Cell<'static>)> {
    let mut rows: Vec<(String, Cell)> = Vec::new();
    for cat in super::results::categories(models) {
        let label = format!("&nbsp;&nbsp;{}", esc(&cat));
        rows.push((
            label,
            Box::new(move |m| rate(m.summary_field(&["categories", &cat]))),
        ));
    }
    rows.push((
        "syntax valid".into(),
        Box::new(|m| pct(num(m.summary_field(&["overall"]), &["syntax_valid_rate"]))),
    ));
    for (field, name) in [("pass_at_k", "pass@"), ("pass_hat_k", "pass^")] {
        for k in ks(models, field) {
            let key = k.to_string();
            rows.push((
                format!("{name}{k}"),
                Box::new(move |m| pct(num(m.summary_field(&["overall", field]), &[&key]))),
            ));
        }
    }
    for score in Score::ALL {
        if models.iter().any(|m| auroc(m, score) != NA) {
            rows.push((
                format!("AUROC {} [CI]", score.label()),
                Box::new(move |m| auroc(m, score)),
            ));
        }
    }
    rows
}

/// The low-probability-line test of one profile: hits of located failures, chance, p.
fn low_prob_line_cell(m: &ModelResults) -> String {
    let l = m.summary_field(&["uncertainty", "low_prob_line"]);
    match (num(l, &["hits"]), num(l, &["located"])) {
        (Some(h), Some(n)) if n > 0.0 => format!(
            "{h:.0}/{n:.0} ({:.0}%), chance {:.2}, p = {}",
            h / n * 100.0,
            num(l, &["expected_hits"]).unwrap_or(0.0),
            num(l, &["p_value"]).map_or_else(|| NA.into(), |p| format!("{p:.3}"))
        ),
        _ => NA.into(),
    }
}

/// Each device session's share, speed and memory.
fn sessions_cell(m: &ModelResults) -> String {
    let Some(devices) = m.summary_field(&["devices"]).as_array() else {
        return NA.into();
    };
    devices
        .iter()
        .map(|d| {
            format!(
                "{}: {} seq, {:.0} tok/s, {}",
                esc(&text(&d["device"])),
                text(&d["sequences"]),
                num(d, &["tokens_per_s"]).unwrap_or(0.0),
                bytes(num(d, &["peak_device_bytes"]))
            )
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

/// The rows as an HTML table, one column per profile, with its notes.
fn table(models: &[ModelResults], rows: &[(String, Cell)]) -> String {
    let mut s = String::from("<table id=\"models\" class=\"models\"><tr><th></th>");
    for m in models {
        let _ = write!(s, "<th class=\"model-name\">{}</th>", esc(&m.name));
    }
    s.push_str("</tr>");
    for (label, cell) in rows {
        let _ = write!(s, "<tr><td>{label}</td>");
        for m in models {
            let _ = write!(s, "<td>{}</td>", cell(m));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    if let Some(method) = models
        .iter()
        .find_map(|m| m.summary_field(&["uncertainty", "auroc_method"]).as_str())
    {
        let _ = write!(s, "<p class=\"note\">AUROC intervals: {}</p>", esc(method));
    }
    let _ = write!(
        s,
        "<p class=\"note\">{}; a case passes when every sample passed. Timings are the summary's, else the mean over the per-sample timings in the results.</p>",
        super::INTERVAL_METHOD
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn full_and_bare_summaries() {
        let full = ModelResults {
            name: "big".into(),
            summary: json!({"summary": {
                "profile": {"name": "big", "source": "onnx", "model": "qwen", "device": "cuda", "precision": "int4",
                            "size_on_disk_bytes": 3221225472u64, "load_ms": 1234.0},
                "timing": {"samples": 2, "mean_ttft_ms": 20.0, "decode_tokens_per_s": 150.5, "mean_case_ms": 800.0},
                "resources": {"generated_tokens": 10, "peak_host_bytes": 2097152, "peak_device_bytes": null},
                "overall": {"cases": 164, "passed": 94, "errors": 0, "pass_rate": 0.573, "pass_rate_ci": {"low": 0.497, "high": 0.646},
                            "syntax_valid_rate": 1.0, "pass_at_k": {"1": 0.573, "2": 0.6}, "pass_hat_k": {"1": 0.573, "2": 0.5}},
                "categories": {"humaneval": {"cases": 164, "passed": 94, "pass_rate": 0.573, "pass_rate_ci": {"low": 0.497, "high": 0.646}}},
                "uncertainty": {"scores": [{"score": "mean_nll", "auroc": 0.7, "ci": {"low": 0.6, "high": 0.8}}],
                                "auroc_method": "bootstrap",
                                "low_prob_line": {"failing_samples": 70, "located": 20, "hits": 9, "expected_hits": 4.25, "p_value": 0.012}},
                "devices": [{"device": "cuda:0", "sequences": 82, "tokens_per_s": 3980.4, "peak_device_bytes": 5368709120u64},
                            {"device": "cuda:1", "sequences": 82, "tokens_per_s": 3901.0, "peak_device_bytes": 5368709120u64}]
            }, "gate_failures": []}),
            cases: vec![],
        };
        let bare = ModelResults {
            name: "reference".into(),
            summary: json!({"summary": {"overall": {"cases": 3, "passed": 3, "pass_rate": 1.0}}, "gate_failures": [{"x": 1}]}),
            cases: vec![],
        };
        let html = render(&[full, bare]);
        for want in [
            "3.0 GiB",
            "1234 ms",
            "150.5",
            "800 ms",
            "2.0 MiB",
            "57.3% [49.7, 64.6] (94/164)",
            "100.0% (3/3)",
            "pass@2",
            "pass^2",
            "9/20 (45%), chance 4.25, p = 0.012",
            "cuda:0: 82 seq, 3980 tok/s, 5.0 GiB<br>cuda:1: 82 seq, 3901 tok/s, 5.0 GiB",
            "<td>50.0%</td>",
            "AUROC mean NLL [CI]",
            "0.700 [0.60, 0.80]",
            "AUROC intervals: bootstrap",
            "1 failure(s)",
            "&nbsp;&nbsp;humaneval",
        ] {
            assert!(html.contains(want), "{want} in {html}");
        }
        assert!(!html.contains("pass@1<"), "pass@1 is the pass rate");
        // The bare profile says n/a for everything it lacks.
        assert!(html.matches(NA).count() >= 10);
    }
}
