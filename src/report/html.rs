//! A self-contained HTML report from a run's results files: pass rates per category and model
//! (SVG bars), latency and memory, how well token uncertainty predicts failure, and every case
//! with its verdicts, code and a token-probability heatmap of what the model wrote.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use thiserror::Error;

/// Why a report could not be written.
#[derive(Debug, Error)]
pub enum HtmlError {
    #[error("failed to read results in {dir}: {message}")]
    Read { dir: PathBuf, message: String },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct ModelResults {
    name: String,
    summary: Json,
    cases: Vec<Json>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn f(j: &Json, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(j, |v, k| v.get(*k))?.as_f64()
}

fn load(dir: &Path) -> Result<Vec<ModelResults>, HtmlError> {
    let err = |message: String| HtmlError::Read {
        dir: dir.to_path_buf(),
        message,
    };
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| err(e.to_string()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("summary-")
                .and_then(|r| r.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(err(
            "no summary-<model>.json files: run the suite first".into()
        ));
    }
    let mut out = Vec::new();
    for name in names {
        let summary: Json = serde_json::from_str(
            &fs::read_to_string(dir.join(format!("summary-{name}.json")))
                .map_err(|e| err(e.to_string()))?,
        )
        .map_err(|e| err(format!("summary-{name}.json: {e}")))?;
        let mut cases = Vec::new();
        if let Ok(text) = fs::read_to_string(dir.join(format!("results-{name}.jsonl"))) {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                cases.push(
                    serde_json::from_str(line)
                        .map_err(|e| err(format!("results-{name}.jsonl:{}: {e}", i + 1)))?,
                );
            }
        }
        cases.sort_by(|a: &Json, b: &Json| a["key"].as_str().cmp(&b["key"].as_str()));
        out.push(ModelResults {
            name,
            summary,
            cases,
        });
    }
    Ok(out)
}

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

/// Grouped horizontal bars: one group per category, one bar per model.
fn pass_rate_chart(models: &[ModelResults]) -> String {
    let mut cats: Vec<String> = models
        .iter()
        .flat_map(|m| {
            m.summary["summary"]["categories"]
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    cats.sort();
    cats.dedup();
    cats.push("overall".into());
    let bar_h = 14.0;
    let group_h = bar_h * models.len() as f64 + 10.0;
    let (left, width) = (170.0, 420.0);
    let height = group_h * cats.len() as f64 + 30.0;
    let mut s = format!(
        "<svg width=\"{}\" height=\"{height}\" font-size=\"11\" font-family=\"sans-serif\">",
        left + width + 60.0
    );
    for (ci, cat) in cats.iter().enumerate() {
        let y0 = ci as f64 * group_h;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y0 + group_h / 2.0,
            esc(cat)
        );
        for (mi, m) in models.iter().enumerate() {
            let totals = if cat == "overall" {
                &m.summary["summary"]["overall"]
            } else {
                &m.summary["summary"]["categories"][cat.as_str()]
            };
            let Some(rate) = totals["pass_rate"].as_f64() else {
                continue;
            };
            let y = y0 + mi as f64 * bar_h;
            let _ = write!(
                s,
                "<rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"><title>{}: {:.1}%</title></rect><text x=\"{:.1}\" y=\"{}\">{:.0}%</text>",
                rate * width,
                bar_h - 2.0,
                COLORS[mi % COLORS.len()],
                esc(&m.name),
                rate * 100.0,
                left + rate * width + 4.0,
                y + bar_h - 4.0,
                rate * 100.0
            );
        }
    }
    let ly = height - 12.0;
    for (mi, m) in models.iter().enumerate() {
        let x = left + mi as f64 * 140.0;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{ly}\">{}</text>",
            ly - 9.0,
            COLORS[mi % COLORS.len()],
            x + 14.0,
            esc(&m.name)
        );
    }
    s.push_str("</svg>");
    s
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn timing_row(m: &ModelResults) -> Option<String> {
    let timings: Vec<&Json> = m
        .cases
        .iter()
        .flat_map(|c| c["samples"].as_array().into_iter().flatten())
        .filter_map(|s| s.get("timing").filter(|t| !t.is_null()))
        .collect();
    if timings.is_empty() {
        return None;
    }
    let mut total: Vec<f64> = timings.iter().filter_map(|t| f(t, &["total_ms"])).collect();
    total.sort_by(f64::total_cmp);
    let mean = |k: &str| {
        let xs: Vec<f64> = timings.iter().filter_map(|t| f(t, &[k])).collect();
        xs.iter().sum::<f64>() / xs.len().max(1) as f64
    };
    let peak = |k: &str| timings.iter().filter_map(|t| t[k].as_u64()).max();
    let mib = |b: Option<u64>| {
        b.map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
            .unwrap_or_else(|| "n/a".into())
    };
    Some(format!(
        "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.1}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td></tr>",
        esc(&m.name),
        timings.len(),
        mean("time_to_first_token_ms"),
        mean("decode_tokens_per_s"),
        percentile(&total, 0.5),
        percentile(&total, 0.95),
        mib(peak("peak_host_bytes")),
        mib(peak("peak_device_bytes"))
    ))
}

/// Background colour for a token probability: red (unsure) through yellow to green (sure).
fn prob_color(p: f64) -> String {
    let p = p.clamp(0.0, 1.0);
    let hue = 120.0 * p;
    format!("hsl({hue:.0},75%,{:.0}%)", 85.0 - 10.0 * (1.0 - p))
}

fn heatmap(tokens: &Json) -> Option<String> {
    let pieces = tokens["pieces"].as_array()?;
    let logprobs = tokens["logprobs"].as_array()?;
    let top = tokens["top"].as_array();
    let mut s = String::from("<pre class=\"heat\">");
    for (i, (piece, lp)) in pieces.iter().zip(logprobs).enumerate() {
        let p = lp.as_f64().unwrap_or(0.0).exp();
        let mut title = format!("p = {p:.3}");
        if let Some(alts) = top.and_then(|t| t.get(i)).and_then(Json::as_array) {
            for a in alts.iter().take(5) {
                if let (Some(piece), Some(lp)) = (
                    a.get(1).and_then(Json::as_str),
                    a.get(2).and_then(Json::as_f64),
                ) {
                    let _ = write!(title, "\n{:?} {:.3}", piece, lp.exp());
                }
            }
        }
        let _ = write!(
            s,
            "<span style=\"background:{}\" title=\"{}\">{}</span>",
            prob_color(p),
            esc(&title),
            esc(piece.as_str().unwrap_or(""))
        );
    }
    s.push_str("</pre>");
    Some(s)
}

fn case_block(c: &Json) -> String {
    let key = c["key"].as_str().unwrap_or("?");
    let samples = c["samples"].as_array().cloned().unwrap_or_default();
    let passed =
        c["error"].is_null() && !samples.is_empty() && samples.iter().all(|s| s["passed"] == true);
    let mut s = format!(
        "<details><summary class=\"{}\">{} {}</summary>",
        if passed { "pass" } else { "fail" },
        if passed { "&#10003;" } else { "&#10007;" },
        esc(key)
    );
    if let Some(e) = c["error"].as_str() {
        let _ = write!(s, "<pre class=\"err\">{}</pre>", esc(e));
    }
    for (i, sample) in samples.iter().enumerate() {
        let _ = write!(s, "<h4>sample {}</h4><ul>", i + 1);
        for t in sample["tests"].as_array().into_iter().flatten() {
            let verdict = t["verdict"].as_str().unwrap_or("?");
            let detail = match verdict {
                "wrong_answer" => format!(
                    "got {}, expected {}",
                    t["got"].as_str().unwrap_or(""),
                    t["expected"].as_str().unwrap_or("")
                ),
                "raised" | "wrong_exception" => format!(
                    "{}: {}",
                    t["error"]["exc_type"].as_str().unwrap_or(""),
                    t["error"]["message"].as_str().unwrap_or("")
                ),
                _ => String::new(),
            };
            let _ = write!(
                s,
                "<li class=\"{}\"><code>{}</code> &rarr; {} {}</li>",
                if verdict == "passed" { "pass" } else { "fail" },
                esc(t["label"].as_str().unwrap_or("")),
                esc(verdict),
                esc(&detail)
            );
        }
        s.push_str("</ul>");
        if let Some(h) = sample.get("tokens").and_then(heatmap) {
            s.push_str("<p>what the model wrote, coloured by token probability (hover for alternatives):</p>");
            s.push_str(&h);
        } else if let Some(code) = sample["extraction"]["code"].as_str() {
            let _ = write!(s, "<pre>{}</pre>", esc(code));
        }
    }
    s.push_str("</details>");
    s
}

/// Render the report for every model whose results are in `dir`.
pub fn render(dir: &Path) -> Result<String, HtmlError> {
    let models = load(dir)?;
    let mut s = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>codegen-harness report</title><style>\
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}\
.pass{color:#2a7d2a}.fail{color:#b22}pre{background:#f6f6f6;padding:6px;overflow:auto}\
pre.heat span{border-radius:2px}summary{cursor:pointer;font-family:monospace}</style></head><body>\
<h1>codegen-harness report</h1>",
    );
    for partial in super::unfinished_runs(dir) {
        let _ = write!(
            s,
            "<p class=\"fail\"><b>Unfinished run:</b> {} holds the journal of a run that did not complete; this report shows the last completed run.</p>",
            esc(&partial.display().to_string())
        );
    }
    s.push_str("<h2>Pass rate by category</h2>");
    s.push_str(&pass_rate_chart(&models));
    s.push_str("<h2>Summary</h2><table><tr><th>model</th><th>cases</th><th>passed</th><th>pass rate</th><th>syntax valid</th><th>not measured</th><th>AUROC (mean NLL)</th><th>gate</th></tr>");
    for m in &models {
        let o = &m.summary["summary"]["overall"];
        let gate = m.summary["gate_failures"]
            .as_array()
            .map(|g| g.len())
            .unwrap_or(0);
        let auroc = f(&m.summary, &["summary", "uncertainty", "auroc_mean_nll"])
            .map(|a| format!("{a:.3}"))
            .unwrap_or_else(|| "n/a".into());
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{}</td><td>{auroc}</td><td class=\"{}\">{}</td></tr>",
            esc(&m.name),
            o["cases"],
            o["passed"],
            o["pass_rate"].as_f64().unwrap_or(0.0) * 100.0,
            o["syntax_valid_rate"].as_f64().unwrap_or(0.0) * 100.0,
            o["errors"].as_u64().unwrap_or(0),
            if gate == 0 { "pass" } else { "fail" },
            if gate == 0 {
                "passed".to_string()
            } else {
                format!("{gate} failure(s)")
            }
        );
    }
    s.push_str("</table>");
    let rows: Vec<String> = models.iter().filter_map(timing_row).collect();
    if !rows.is_empty() {
        s.push_str("<h2>Latency and memory</h2><table><tr><th>model</th><th>samples</th><th>mean TTFT ms</th><th>mean decode tok/s</th><th>p50 ms</th><th>p95 ms</th><th>peak host</th><th>peak device</th></tr>");
        s.extend(rows);
        s.push_str("</table>");
    }
    for m in &models {
        let _ = write!(s, "<h2>Cases: {}</h2>", esc(&m.name));
        for c in &m.cases {
            s.push_str(&case_block(c));
        }
    }
    s.push_str("</body></html>\n");
    Ok(s)
}

/// Write the report to `out`.
pub fn write(dir: &Path, out: &Path) -> Result<(), HtmlError> {
    let html = render(dir)?;
    fs::write(out, html).map_err(|source| HtmlError::Write {
        path: out.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_summary_cases_and_heatmap() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("summary-m.json"),
            r#"{"summary":{"model":"m","overall":{"cases":1,"passed":0,"pass_rate":0.0,"syntax_valid_rate":1.0},"categories":{"a":{"cases":1,"passed":0,"pass_rate":0.0,"syntax_valid_rate":1.0}}},"gate_failures":[]}"#,
        )
        .unwrap();
        fs::write(
            dir.path().join("results-m.jsonl"),
            r#"{"key":"a/x","samples":[{"passed":false,"tests":[{"label":"f(1)","verdict":"wrong_answer","got":"1","expected":"2"}],"extraction":{"code":"def f(x): return x"},"tokens":{"pieces":["def"," f"],"logprobs":[-0.01,-2.0],"top":[[],[[1," g",-0.5]]]},"timing":{"total_ms":10.0,"time_to_first_token_ms":2.0,"decode_tokens_per_s":50.0}}],"error":null}"#,
        )
        .unwrap();
        let html = render(dir.path()).unwrap();
        assert!(html.contains("got 1, expected 2"));
        assert!(html.contains("<span style=\"background:hsl("), "heatmap");
        assert!(html.contains("Latency and memory"));
        assert!(render(Path::new("/nonexistent")).is_err());
    }
}
