//! HTML for the comparisons of [`super::compare`]: the pairwise view of the models in one
//! report (which cases pass on one and fail on the other, linked to their case blocks, with
//! McNemar's test) and the page comparing two runs (`codegen report A B`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::Value as Json;

use super::compare::{MCNEMAR_METHOD, Paired, RunComparison, Verdicts, p_value};
use super::page::{PAGE_END, case_block, case_id, esc, page_start};
use super::results::ModelResults;

/// Links to the case blocks with these keys.
fn links(keys: &[String], prefix: &str) -> String {
    if keys.is_empty() {
        return "<span class=\"note\">none</span>".into();
    }
    keys.iter()
        .map(|k| format!("<a href=\"#{}\">{}</a>", case_id(prefix, k), esc(k)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn mcnemar_line(p: &Paired, b_is: &str, c_is: &str) -> String {
    format!(
        "b = {} ({b_is}), c = {} ({c_is}), McNemar p = {}",
        p.mcnemar.b,
        p.mcnemar.c,
        p_value(p.mcnemar.p)
    )
}

/// The pairwise view: every pair of models with shared cases.
pub fn pairwise(models: &[(String, Verdicts)]) -> String {
    let mut s = String::from("<section id=\"pairwise\"><h2>Model pairs</h2>");
    let pairs = super::compare::pairwise(models);
    if pairs.is_empty() {
        s.push_str("<p class=\"note\">no two model profiles measured a case in common (reference and replay profiles are fixtures and are not paired)</p>");
    }
    for (i, j, p) in &pairs {
        let (a, b) = (esc(&models[*i].0), esc(&models[*j].0));
        let _ = write!(
            s,
            "<div class=\"pair\"><h3>{a} vs {b}</h3><p>{} shared cases: {} pass on both, {} fail on both; {}</p>\
<p>passes on {a}, fails on {b} ({}): <span class=\"cases\">{}</span></p>\
<p>passes on {b}, fails on {a} ({}): <span class=\"cases\">{}</span></p>",
            p.shared,
            p.both_passed,
            p.both_failed,
            mcnemar_line(p, &format!("only {a} passes"), &format!("only {b} passes")),
            p.first_only.len(),
            links(&p.first_only, &format!("m{i}")),
            p.second_only.len(),
            links(&p.second_only, &format!("m{j}")),
        );
        if !p.missing_in_first.is_empty() || !p.missing_in_second.is_empty() {
            let _ = write!(
                s,
                "<p class=\"note\">not paired: {} measured only by {a}, {} only by {b}</p>",
                p.missing_in_second.len(),
                p.missing_in_first.len()
            );
        }
        s.push_str("</div>");
    }
    let _ = write!(
        s,
        "<p class=\"note\">A case passes when every sample passed. {MCNEMAR_METHOD}; it asks whether the two models' pass rates on the shared cases differ by more than chance.</p></section>"
    );
    s
}

/// The results of case `key` of `model`.
fn find_case<'a>(ms: &'a [ModelResults], model: &str, key: &str) -> Option<&'a Json> {
    ms.iter()
        .find(|r| r.name == model)
        .and_then(|r| r.cases.iter().find(|c| c["key"] == key))
}

/// The page comparing two runs, with the blocks of every case whose verdict changed (before
/// and after side by side).
pub fn runs(
    c: &RunComparison,
    before: &[ModelResults],
    after: &[ModelResults],
    before_label: &str,
    after_label: &str,
) -> String {
    let mut s = page_start("codegen-harness: two runs compared");
    let _ = write!(
        s,
        "<p>before: <code>{}</code><br>after: <code>{}</code></p><section id=\"runs\"><table id=\"changes\"><tr><th>model</th><th>shared cases</th><th>pass rate before</th><th>after</th><th>change</th><th>better (fail&rarr;pass)</th><th>worse (pass&rarr;fail)</th><th>McNemar p</th></tr>",
        esc(before_label),
        esc(after_label)
    );
    for (mi, m) in c.models.iter().enumerate() {
        let p = &m.paired;
        let _ = write!(
            s,
            "<tr><td><a href=\"#run-{mi}\">{}</a></td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{:+.1} points</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&m.model),
            p.shared,
            p.first_rate() * 100.0,
            p.second_rate() * 100.0,
            m.rate_change() * 100.0,
            m.better().len(),
            m.worse().len(),
            p_value(p.mcnemar.p)
        );
    }
    s.push_str("</table>");
    for (label, names) in [
        ("only before", &c.only_before),
        ("only after", &c.only_after),
    ] {
        if !names.is_empty() {
            let _ = write!(
                s,
                "<p class=\"note\">models {label}: {}</p>",
                esc(&names.join(", "))
            );
        }
    }
    let _ = write!(
        s,
        "<p class=\"note\">Pass rates over the cases both runs measured; a case passes when every sample passed. {MCNEMAR_METHOD} (b: worse, c: better).</p>"
    );
    for (mi, m) in c.models.iter().enumerate() {
        let p = &m.paired;
        let prefix = format!("r{mi}");
        let _ = write!(
            s,
            "<div class=\"pair\" id=\"run-{mi}\"><h2>{}</h2><p>{}</p><p>better (fail &rarr; pass, {}): <span class=\"cases\">{}</span></p><p>worse (pass &rarr; fail, {}): <span class=\"cases\">{}</span></p>",
            esc(&m.model),
            mcnemar_line(p, "worse", "better"),
            m.better().len(),
            links(m.better(), &prefix),
            m.worse().len(),
            links(m.worse(), &prefix),
        );
        for (label, keys) in [
            ("measured only before", &p.missing_in_second),
            ("measured only after", &p.missing_in_first),
        ] {
            if !keys.is_empty() {
                let _ = write!(
                    s,
                    "<p class=\"note\">{label} ({}): {}</p>",
                    keys.len(),
                    esc(&keys.join(", "))
                );
            }
        }
        let changed: BTreeSet<&String> = m.better().iter().chain(m.worse()).collect();
        for key in changed {
            let _ = write!(
                s,
                "<details class=\"case\" id=\"{}\"><summary>{} changed</summary><div class=\"rocs\">",
                case_id(&prefix, key),
                esc(key)
            );
            for (side, ms) in [("before", before), ("after", after)] {
                let _ = write!(s, "<div><h4>{side}</h4>");
                if let Some(case) = find_case(ms, &m.model, key) {
                    s.push_str(&case_block(case, &format!("{prefix}{side}")).replacen(
                        "<details ",
                        "<details open ",
                        1,
                    ));
                }
                s.push_str("</div>");
            }
            s.push_str("</div></details>");
        }
        s.push_str("</div>");
    }
    s.push_str("</section>");
    s.push_str(PAGE_END);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::compare;
    use serde_json::json;

    fn model(name: &str, verdicts: &[(&str, bool)]) -> ModelResults {
        ModelResults {
            name: name.into(),
            summary: json!({}),
            cases: verdicts
                .iter()
                .map(|(k, p)| json!({"key": k, "error": null, "samples": [{"passed": p, "tests": []}]}))
                .collect(),
        }
    }

    #[test]
    fn pairwise_links_each_list_to_its_models_blocks() {
        let models = vec![
            (
                "a".to_string(),
                model("a", &[("x/1", true), ("x/2", false)]).verdicts(),
            ),
            (
                "b".to_string(),
                model("b", &[("x/1", false), ("x/2", true)]).verdicts(),
            ),
        ];
        let html = pairwise(&models);
        assert!(
            html.contains(&format!("href=\"#{}\"", case_id("m0", "x/1"))),
            "{html}"
        );
        assert!(html.contains(&format!("href=\"#{}\"", case_id("m1", "x/2"))));
        assert!(html.contains("b = 1 (only a passes), c = 1 (only b passes), McNemar p = 1.000"));
        assert!(html.contains("exact two-sided binomial test on the discordant pairs"));
    }

    #[test]
    fn run_page_shows_changed_cases_before_and_after() {
        let before = vec![model("m", &[("x/1", true), ("x/2", false), ("x/3", true)])];
        let after = vec![model("m", &[("x/1", false), ("x/2", true), ("x/3", true)])];
        let v = |ms: &[ModelResults]| -> Vec<(String, Verdicts)> {
            ms.iter().map(|m| (m.name.clone(), m.verdicts())).collect()
        };
        let c = compare::runs(&v(&before), &v(&after));
        let html = runs(&c, &before, &after, "A", "B");
        assert!(
            html.contains("<td>66.7%</td><td>66.7%</td><td>+0.0 points</td><td>1</td><td>1</td>"),
            "{html}"
        );
        // Both changed cases have a block linked from the lists, holding both runs' verdicts.
        for key in ["x/1", "x/2"] {
            let id = case_id("r0", key);
            assert!(html.contains(&format!("href=\"#{id}\"")));
            assert!(html.contains(&format!("id=\"{id}\"")));
        }
        assert!(
            !html.contains(&case_id("r0", "x/3")),
            "unchanged cases are left out"
        );
        assert_eq!(html.matches("<details open class=\"case\"").count(), 4);
    }
}
