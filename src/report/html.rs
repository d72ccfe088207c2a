//! The self-contained HTML report of a results folder: the model table, pass rates per
//! category and model (SVG bars), ROC curves of token uncertainty, pairwise model comparisons,
//! and every case with its verdicts and a token-probability heatmap of what the model wrote.
//! One file, no scripts or styles from elsewhere; the two tiny inline scripts open a linked
//! case and write the page's load time into the DOM (the browser test reads it).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::compare;
use super::compare_html;
use super::legend;
use super::model_table;
use super::page::{PAGE_END, case_block, esc, heat_legend, page_start};
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

/// The report of these models' results; `notes` are HTML paragraphs put at the top.
pub fn render_models(models: &[ModelResults], notes: &[String]) -> String {
    let mut s = page_start("codegen-harness report");
    for n in notes {
        s.push_str(n);
    }
    s.push_str(&super::verdict::render(models));
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
            let f: crate::score::following::Following =
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
