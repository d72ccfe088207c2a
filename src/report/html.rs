//! The self-contained HTML report of a results folder: the model table, pass rates per
//! category and model (SVG bars), ROC curves of token uncertainty, pairwise model comparisons,
//! and every case with its verdicts and a token-probability heatmap of what the model wrote.
//! One file, no scripts or styles from elsewhere; the two tiny inline scripts open a linked
//! case and write the page's load time into the DOM (the browser test reads it).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use thiserror::Error;

use super::compare;
use super::compare_html;
use super::legend;
use super::model_table;
use super::results::{self, ModelResults, ReadError};
use super::roc;

/// Why a report could not be written.
#[derive(Debug, Error)]
pub enum HtmlError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Text escaped for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The element id of a case block: `prefix` names the model (and run), the key is encoded so
/// that distinct keys give distinct ids.
pub fn case_id(prefix: &str, key: &str) -> String {
    let mut s = format!("case-{prefix}-");
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            s.push(c);
        } else {
            let _ = write!(s, "_{:x}_", c as u32);
        }
    }
    s
}

pub(super) const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

/// Grouped horizontal bars: one group per category, one bar per model, and a legend whose
/// entries wrap instead of running into each other.
fn pass_rate_chart(models: &[ModelResults]) -> String {
    let mut cats: Vec<String> = super::results::categories(models).into_iter().collect();
    cats.push("overall".into());
    let bar_h = 14.0;
    let group_h = bar_h * models.len() as f64 + 10.0;
    let longest = cats
        .iter()
        .map(|c| legend::text_width(c, 11.0))
        .fold(60.0, f64::max);
    let (left, width) = (longest + 12.0, 420.0);
    let chart_h = group_h * cats.len() as f64 + 10.0;
    let entries: Vec<(String, String)> = models
        .iter()
        .enumerate()
        .map(|(mi, m)| (m.name.clone(), COLORS[mi % COLORS.len()].to_string()))
        .collect();
    let (legend_svg, l) = legend::svg(&entries, 10.0, chart_h, left + width + 40.0, 11.0);
    let svg_w = (left + width + 60.0).max(l.width + 20.0);
    let mut s = format!(
        "<svg class=\"chart\" width=\"{svg_w:.0}\" height=\"{:.0}\" font-size=\"11\" font-family=\"sans-serif\">",
        chart_h + l.height + 6.0
    );
    for (ci, cat) in cats.iter().enumerate() {
        let y0 = ci as f64 * group_h;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y0 + group_h / 2.0,
            esc(cat)
        );
        for (mi, m) in models.iter().enumerate() {
            let totals = if cat == "overall" {
                m.summary_field(&["overall"])
            } else {
                m.summary_field(&["categories", cat])
            };
            let Some(rate) = totals["pass_rate"].as_f64() else {
                continue;
            };
            let y = y0 + mi as f64 * bar_h;
            let _ = write!(
                s,
                "<rect x=\"{left:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"><title>{}: {:.1}%</title></rect><text x=\"{:.1}\" y=\"{}\">{:.0}%</text>",
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
    s.push_str(&legend_svg);
    s.push_str("</svg>");
    s
}

/// Probability buckets of the heatmap: (upper bound, CSS class, colour). Tokens at 0.95 or
/// above are left plain, which keeps a HumanEval report of several models small.
const BUCKETS: [(f64, &str, &str); 5] = [
    (0.05, "c0", "hsl(0,80%,72%)"),
    (0.2, "c1", "hsl(20,85%,72%)"),
    (0.5, "c2", "hsl(42,90%,70%)"),
    (0.8, "c3", "hsl(62,85%,72%)"),
    (0.95, "c4", "hsl(95,60%,82%)"),
];

fn bucket(p: f64) -> Option<&'static str> {
    BUCKETS.iter().find(|b| p < b.0).map(|b| b.1)
}

/// The legend of the heatmap's colours.
fn heat_legend() -> String {
    let mut s = String::from("<p class=\"note heat\">token probability: ");
    let mut low = 0.0;
    for (high, class, _) in BUCKETS {
        let _ = write!(s, "<i class=\"{class}\">{low}&ndash;{high}</i> ");
        low = high;
    }
    s.push_str("<i>&ge; 0.95 (plain)</i>; hover a coloured token for its probability and the two likeliest alternatives</p>");
    s
}

/// Shown instead of a piece in the tooltips: whitespace made visible.
fn visible(piece: &str) -> String {
    piece.escape_debug().to_string()
}

/// What the model wrote, one `<i>` per uncertain token: its bucket's class, and a tooltip
/// with its probability and the two likeliest alternatives of 1% or more.
fn heatmap(tokens: &Json) -> Option<String> {
    let pieces = tokens["pieces"].as_array()?;
    let logprobs = tokens["logprobs"].as_array()?;
    let top = tokens["top"].as_array();
    let ids = tokens["ids"].as_array();
    let mut s = String::from("<pre class=\"heat\">");
    for (i, (piece, lp)) in pieces.iter().zip(logprobs).enumerate() {
        let text = esc(piece.as_str().unwrap_or(""));
        let p = lp.as_f64().unwrap_or(0.0).exp();
        let Some(class) = bucket(p) else {
            s.push_str(&text);
            continue;
        };
        let mut title = format!("{:.0}%", p * 100.0);
        let chosen = ids.and_then(|ids| ids.get(i));
        let alts = top.and_then(|t| t.get(i)).and_then(Json::as_array);
        for a in alts
            .into_iter()
            .flatten()
            .filter(|a| a.get(0) != chosen || chosen.is_none())
            .filter_map(|a| Some((a.get(1)?.as_str()?, a.get(2)?.as_f64()?.exp())))
            .filter(|(alt, ap)| *ap >= 0.005 && Some(*alt) != piece.as_str())
            .take(2)
        {
            let _ = write!(title, "\n`{}` {:.0}%", visible(a.0), a.1 * 100.0);
        }
        let _ = write!(s, "<i class={class} title=\"{}\">{text}</i>", esc(&title));
    }
    s.push_str("</pre>");
    Some(s)
}

/// A sample's failure in words: its class (with the class's details, such as an exception
/// type), the first failing test and the generated line that raised, where known.
fn failure_line(failure: &Json) -> Option<String> {
    let class = match &failure["class"] {
        Json::String(c) => c.clone(),
        Json::Object(o) => o
            .values()
            .filter_map(|v| match v {
                Json::String(s) => Some(s.clone()),
                Json::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => return None,
    };
    let mut s = class;
    if let Some(test) = failure["test"].as_str() {
        let _ = write!(s, "; first failing test: {test}");
    }
    if let Some(line) = failure["source"].as_str() {
        let _ = write!(s, "; at: {}", line.trim());
    }
    Some(s)
}

/// One case's block: verdict, tests, and what the model wrote (heatmap, else the code).
pub(super) fn case_block(c: &Json, id_prefix: &str) -> String {
    let key = c["key"].as_str().unwrap_or("?");
    let samples = c["samples"].as_array().cloned().unwrap_or_default();
    let passed = results::case_passed(c) == Some(true);
    let mut s = format!(
        "<details class=\"case\" id=\"{}\"><summary class=\"{}\">{} {}</summary>",
        case_id(id_prefix, key),
        if passed { "pass" } else { "fail" },
        if passed { "&#10003;" } else { "&#10007;" },
        esc(key)
    );
    if let Some(e) = c["error"].as_str() {
        let _ = write!(s, "<pre class=\"err\">{}</pre>", esc(e));
    }
    for (i, sample) in samples.iter().enumerate() {
        let _ = write!(s, "<h4>sample {}</h4>", i + 1);
        if let Some(failure) = failure_line(&sample["failure"]) {
            let _ = write!(s, "<p class=\"fail\">failure: {}</p>", esc(&failure));
        }
        s.push_str("<ul>");
        for t in sample["tests"].as_array().into_iter().flatten() {
            let verdict = t["verdict"].as_str().unwrap_or("?");
            // In words, as the snapshots say it (`wrong answer: got 3, expected 2`).
            let words = serde_json::from_value::<crate::verdict::TestResult>(t.clone())
                .map(|r| r.verdict.describe())
                .unwrap_or_else(|_| verdict.replace('_', " "));
            let _ = write!(
                s,
                "<li class=\"{}\"><code>{}</code> &rarr; {}</li>",
                if verdict == "passed" { "pass" } else { "fail" },
                esc(t["label"].as_str().unwrap_or("")),
                esc(&words)
            );
        }
        s.push_str("</ul>");
        if let Some(h) = sample.get("tokens").and_then(heatmap) {
            s.push_str(&h);
        } else if let Some(code) = sample["extraction"]["code"].as_str() {
            let _ = write!(s, "<pre>{}</pre>", esc(code));
        }
    }
    s.push_str("</details>");
    s
}

/// The page's head (styles) and the top of its body.
pub(super) fn page_start(title: &str) -> String {
    let mut s = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
th.model-name{{max-width:14em;overflow-wrap:anywhere}}\
.pass{{color:#2a7d2a}}.fail{{color:#b22}}.note{{color:#555;font-size:90%}}pre{{background:#f6f6f6;padding:6px;overflow:auto}}\
.heat i{{font-style:normal;border-radius:2px}}",
        esc(title)
    );
    for (_, class, colour) in BUCKETS {
        let _ = write!(s, ".heat i.{class}{{background:{colour}}}");
    }
    s.push_str(
        "summary{cursor:pointer;font-family:monospace}.rocs{display:flex;flex-wrap:wrap;gap:16px}\
.pair{border-top:1px solid #ddd;margin-top:1em}.cases a{margin-right:.6em;font-family:monospace}\
</style></head><body>",
    );
    let _ = write!(s, "<h1>{}</h1>", esc(title));
    s
}

/// The end of the page: open a case block when a link points at it, and note the load time.
pub(super) const PAGE_END: &str = "<script>function openHash(){var e=document.getElementById(decodeURIComponent(location.hash.slice(1)));if(e&&e.tagName=='DETAILS'){e.open=true;e.scrollIntoView()}}\
addEventListener('hashchange',openHash);openHash();\
addEventListener('load',function(){document.body.setAttribute('data-load-ms',performance.now().toFixed(1))})</script></body></html>\n";

/// The report of these models' results; `notes` are HTML paragraphs put at the top.
pub fn render_models(models: &[ModelResults], notes: &[String]) -> String {
    let mut s = page_start("codegen-harness report");
    for n in notes {
        s.push_str(n);
    }
    s.push_str(&verdict::render(models));
    s.push_str("<h2>Models</h2>");
    s.push_str(&model_table::render(models));
    s.push_str(&following(models));
    s.push_str("<h2>Pass rate by category</h2>");
    s.push_str(&pass_rate_chart(models));
    s.push_str("<h2 id=\"roc\">Does uncertainty predict failure? ROC curves</h2><p class=\"note\">Each sample that generated tokens is scored; a curve traces the share of failing samples caught (true positives) against the share of passing samples flagged (false positives) as the threshold falls. The area is the AUROC (ties count half); intervals are the summary's where it has them.</p><div class=\"rocs\">");
    for m in models {
        s.push_str(&roc::plot(m));
    }
    s.push_str("</div>");
    // Pairs of model profiles only: the reference solutions and replayed fixtures (mutants)
    // are not models, and a pair with them measures the fixtures. They keep their place (the
    // case links count models by position) with no verdicts, so they pair with nothing.
    let verdicts: Vec<(String, compare::Verdicts)> = models
        .iter()
        .map(|m| match m.summary_field(&["profile", "source"]).as_str() {
            Some("reference" | "replay") => (m.name.clone(), Default::default()),
            _ => (m.name.clone(), m.verdicts()),
        })
        .collect();
    s.push_str(&compare_html::pairwise(&verdicts));
    s.push_str("<h2>Cases</h2>");
    if models
        .iter()
        .any(|m| m.samples().any(|x| x["tokens"].is_object()))
    {
        s.push_str(&heat_legend());
    }
    for (mi, m) in models.iter().enumerate() {
        let _ = write!(s, "<h3>Cases: {}</h3>", esc(&m.name));
        for c in &m.cases {
            s.push_str(&case_block(c, &format!("m{mi}")));
        }
    }
    s.push_str(PAGE_END);
    s
}

/// What near-tie resolution did, per model whose summary says (greedy runs checked against
/// accepted snapshots).
fn following(models: &[ModelResults]) -> String {
    let lines: Vec<String> = models
        .iter()
        .filter_map(|m| {
            let f: crate::following::Following =
                serde_json::from_value(m.summary["summary"]["following"].clone()).ok()?;
            Some(format!(
                "<li><b>{}</b>: {}</li>",
                esc(&m.name),
                esc(&f.line())
            ))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "<h2 id=\"following\">Accepted outputs</h2><p class=\"note\">Where this machine's top choice and the accepted token were within the tolerance, the accepted token was kept; a sample that left its accepted output decoded freely from there.</p><ul>{}</ul>",
        lines.concat()
    )
}

/// Render the report for every model whose results are in `dir`.
pub fn render(dir: &Path) -> Result<String, HtmlError> {
    let models = results::load(dir)?;
    let notes: Vec<String> = super::unfinished_runs(dir)
        .iter()
        .map(|partial| format!(
            "<p class=\"fail\"><b>Unfinished run:</b> {} holds the journal of a run that did not complete; this report shows the last completed run.</p>",
            esc(&partial.display().to_string())
        ))
        .collect();
    Ok(render_models(&models, &notes))
}

fn write_file(out: &Path, html: &str) -> Result<(), HtmlError> {
    fs::write(out, html).map_err(|source| HtmlError::Write {
        path: out.to_path_buf(),
        source,
    })
}

/// Write the report to `out`.
pub fn write(dir: &Path, out: &Path) -> Result<(), HtmlError> {
    write_file(out, &render(dir)?)
}

/// Write the comparison of two runs (`before` and `after` results folders) to `out`, and
/// return its text version.
pub fn write_comparison(before: &Path, after: &Path, out: &Path) -> Result<String, HtmlError> {
    let (b, a) = (results::load(before)?, results::load(after)?);
    let verdicts = |ms: &[ModelResults]| -> Vec<(String, compare::Verdicts)> {
        ms.iter().map(|m| (m.name.clone(), m.verdicts())).collect()
    };
    let c = compare::runs(&verdicts(&b), &verdicts(&a));
    let (bl, al) = (before.display().to_string(), after.display().to_string());
    write_file(out, &compare_html::runs(&c, &b, &a, &bl, &al))?;
    Ok(compare::text(&c, &bl, &al))
}

#[cfg(test)]
mod tests;
pub(crate) mod verdict;
