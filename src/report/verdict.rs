//! The top of the report: each profile's verdict (its trials and its gate) in one line, so
//! that a page whose gates passed while trials failed says both before any table.

use std::fmt::Write as _;

use super::page::esc;
use super::results::ModelResults;

/// `36 passed, 16 failed (16 snapshot mismatch)`, or `None` when trials were not recorded.
pub(super) fn trials_words(m: &ModelResults) -> Option<(String, bool)> {
    let t: crate::trial::TrialCounts =
        serde_json::from_value(m.summary_field(&["trials"]).clone()).ok()?;
    Some((t.words(), t.failed == 0))
}

/// The trials cell of the model table (HTML).
pub(super) fn trials_cell(m: &ModelResults) -> String {
    match trials_words(m) {
        Some((words, true)) => format!("<span class=\"pass\">{}</span>", esc(&words)),
        Some((words, false)) => format!("<span class=\"fail\">{}</span>", esc(&words)),
        None => "n/a".into(),
    }
}

/// The gate in words: `passed`, `failed: <first threshold>`, or `not gated` for a shard.
fn gate_words(m: &ModelResults) -> (String, bool) {
    if m.summary["partial"].is_string() {
        return ("not gated (a shard)".into(), true);
    }
    match m.summary["gate_failures"].as_array() {
        Some(f) if f.is_empty() => ("passed".into(), true),
        Some(f) => (
            format!(
                "FAILED: {}",
                f[0]["message"]
                    .as_str()
                    .unwrap_or("a threshold was not met")
            ),
            false,
        ),
        None => ("n/a".into(), true),
    }
}

/// The verdict list at the top of the page.
pub(super) fn render(models: &[ModelResults]) -> String {
    let mut s = String::from("<ul id=\"verdict\">");
    for m in models {
        let (trials, trials_ok) = trials_words(m).unwrap_or(("not recorded".into(), true));
        let (gate, gate_ok) = gate_words(m);
        let class = |ok: bool| if ok { "pass" } else { "fail" };
        let _ = write!(
            s,
            "<li><b>{}</b>: trials <span class=\"{}\">{}</span>; gate <span class=\"{}\">{}</span></li>",
            esc(&m.name),
            class(trials_ok),
            esc(&trials),
            class(gate_ok),
            esc(&gate)
        );
    }
    s.push_str("</ul>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as Json, json};

    #[test]
    fn trials_and_gate_side_by_side() {
        let m = ModelResults {
            name: "reference".into(),
            summary: json!({"summary": {"trials": {"passed": 20, "failed": 16, "snapshot_mismatch": 16}},
                "gate_failures": []}),
            cases: Vec::<Json>::new(),
        };
        let html = render(&[m]);
        assert!(html.contains("trials <span class=\"fail\">20 passed, 16 failed (16 snapshot mismatch)</span>; gate <span class=\"pass\">passed</span>"), "{html}");
    }
}
