//! The doctor's reports for people and programs: each model's verdicts with their remedies,
//! the compatibility table over all models, and the same as JSON. Rendering only; nothing
//! here checks anything.

use std::fmt::Write as _;

use serde::Serialize;

use super::{ModelReport, Status, Verdict};
use crate::provision::models::human_bytes;

/// One model's verdicts, one line each, remedies under the checks that need one.
pub fn details(report: &ModelReport) -> String {
    let mut out = String::new();
    let folder = report
        .folder
        .as_ref()
        .filter(|f| f.as_os_str() != report.model.as_str())
        .map(|f| format!(" ({})", f.display()))
        .unwrap_or_default();
    let _ = writeln!(out, "{}{folder}", report.model);
    let width = report
        .verdicts
        .iter()
        .map(|v| v.check.len())
        .max()
        .unwrap_or(0);
    for v in &report.verdicts {
        let _ = writeln!(
            out,
            "  {:<4}  {:<width$}  {}",
            v.status.as_str(),
            v.check,
            v.detail
        );
        if let Some(remedy) = &v.remedy {
            let _ = writeln!(out, "  {:<4}  {:<width$}  -> {remedy}", "", "");
        }
    }
    let _ = writeln!(out, "  verdict: {}", report.verdict().as_str());
    out
}

fn or_dash<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "-".to_string(), show)
}

/// The compatibility table: one row per model.
pub fn table(reports: &[ModelReport]) -> String {
    let header = [
        "model",
        "architecture",
        "layers",
        "hidden",
        "size",
        "precision",
        "load",
        "time/token",
        "peak memory",
        "verdict",
        "first failing check",
    ];
    let rows: Vec<[String; 11]> = reports
        .iter()
        .map(|r| {
            [
                r.model.clone(),
                r.architecture.clone().unwrap_or_else(|| "-".into()),
                or_dash(r.layers, |n| n.to_string()),
                or_dash(r.hidden, |n| n.to_string()),
                or_dash(r.size_bytes, human_bytes),
                r.precision.clone().unwrap_or_else(|| "-".into()),
                or_dash(r.load_ms, |ms| format!("{:.2} s", ms / 1e3)),
                or_dash(r.ms_per_token, |ms| format!("{ms:.1} ms")),
                or_dash(r.peak_host_bytes, human_bytes),
                r.verdict().as_str().to_string(),
                or_dash(r.first_failure(), |v: &Verdict| v.check.clone()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let sep = if i + 1 == cells.len() { "" } else { "  " };
            // Numbers read best right-aligned, words left-aligned.
            if matches!(i, 2 | 3 | 4 | 6 | 7 | 8) {
                let _ = write!(s, "{cell:>w$}{sep}");
            } else if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}{sep}");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// One model in the JSON output.
#[derive(Debug, Serialize)]
struct JsonModel<'a> {
    #[serde(flatten)]
    report: &'a ModelReport,
    verdict: Status,
    first_failing_check: Option<&'a str>,
}

/// The JSON document `--json` prints: `{"models": [...], "verdict": "..."}`.
pub fn json(reports: &[ModelReport]) -> serde_json::Value {
    let models: Vec<JsonModel<'_>> = reports
        .iter()
        .map(|r| JsonModel {
            report: r,
            verdict: r.verdict(),
            first_failing_check: r.first_failure().map(|v| v.check.as_str()),
        })
        .collect();
    serde_json::json!({
        "verdict": overall(reports),
        "models": models,
    })
}

/// The worst verdict over all models.
pub fn overall(reports: &[ModelReport]) -> Status {
    reports
        .iter()
        .map(ModelReport::verdict)
        .max()
        .unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_show_the_first_failure() {
        let good = ModelReport {
            model: "good".into(),
            size_bytes: Some(3 << 20),
            precision: Some("int4".into()),
            load_ms: Some(1500.0),
            ms_per_token: Some(12.34),
            verdicts: vec![Verdict::ok("files", "all there")],
            ..ModelReport::default()
        };
        let bad = ModelReport {
            model: "bad".into(),
            verdicts: vec![
                Verdict::ok("files", "ok"),
                Verdict::fail("config", "no layers", "add them"),
                Verdict::fail("graph", "x", "y"),
            ],
            ..ModelReport::default()
        };
        let t = table(&[good.clone(), bad.clone()]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("model"), "{t}");
        assert!(
            lines[1].contains("3.0 MiB")
                && lines[1].contains("1.50 s")
                && lines[1].contains("12.3 ms"),
            "{t}"
        );
        assert!(lines[2].ends_with("fail     config"), "{t}");
        let j = json(&[good, bad.clone()]);
        assert_eq!(j["verdict"], "fail");
        assert_eq!(j["models"][1]["first_failing_check"], "config");
        assert_eq!(j["models"][1]["verdicts"][1]["remedy"], "add them");
        let d = details(&bad);
        assert!(
            d.contains("fail  config  no layers\n") && d.contains("-> add them"),
            "{d}"
        );
    }
}
