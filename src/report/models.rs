//! Profiles side by side, for the end of a run with two profiles or more: one table of every
//! profile (size on disk, precision, load time, time to first token, decode rate, time per
//! case, peak memory, pass rate with its interval, syntax-valid rate, AUROC of mean NLL, the
//! low-probability-line test), the pass rate per category, and for two profiles of the same
//! model at different precisions a comparison with the McNemar test on their paired verdicts.
//! Pure functions over summaries (and, for McNemar, the outcomes); plain text and Markdown.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::evaluate::CaseOutcome;
use crate::score::stats::{self, Interval};
use crate::score::uncertainty::Score;
use crate::score::{Summary, Totals};

const NA: &str = "n/a";

/// `1.2 GiB`, `512 MiB`, `3 KiB`.
fn bytes(b: u64) -> String {
    crate::models::human_bytes(b)
}

/// `850 ms`, `2.1 s`.
fn ms(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.1} s", v / 1000.0)
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| NA.to_string(), f)
}

/// `57.3% [49.7, 64.6]`.
fn rate_ci(rate: f64, ci: Interval) -> String {
    format!(
        "{:.1}% [{:.1}, {:.1}]",
        rate * 100.0,
        ci.low * 100.0,
        ci.high * 100.0
    )
}

fn pass_rate(t: &Totals) -> String {
    if t.cases == 0 {
        return NA.into();
    }
    rate_ci(t.pass_rate, t.pass_rate_ci)
}

/// A table as a header row and rows of cells.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Aligned columns for a terminal: the first left-aligned, the others right-aligned.
    fn text(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, &w))| match i {
                    0 => format!("{c:<w$}"),
                    _ => format!("{c:>w$}"),
                })
                .collect();
            format!("  {}\n", parts.join("  ").trim_end())
        };
        let mut s = line(&self.header);
        for row in &self.rows {
            s.push_str(&line(row));
        }
        s
    }

    fn markdown(&self) -> String {
        let cells = |row: &[String]| {
            let escaped: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", escaped.join(" | "))
        };
        let mut s = cells(&self.header);
        let rule: Vec<&str> = (0..self.header.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        let _ = writeln!(s, "| {} |", rule.join(" | "));
        for row in &self.rows {
            s.push_str(&cells(row));
        }
        s
    }
}

/// One row of the side-by-side table: a profile's figures.
fn profile_row(s: &Summary) -> Vec<String> {
    let p = s.profile.as_ref();
    let t = s.timing.as_ref();
    let r = s.resources.as_ref();
    let u = s.uncertainty.as_ref();
    let auroc = u
        .and_then(|u| u.scores.iter().find(|x| x.score == Score::MeanNll))
        .and_then(|x| Some(format!("{:.3} {}", x.auroc?, interval3(x.ci?))));
    let line = u.map(|u| &u.low_prob_line).filter(|l| l.located > 0);
    vec![
        s.model.clone(),
        opt(p.and_then(|p| p.size_on_disk_bytes), bytes),
        opt(p.and_then(|p| p.precision.clone()), |x| x),
        opt(p.and_then(|p| p.load_ms), ms),
        opt(t.map(|t| t.mean_ttft_ms), ms),
        opt(t.and_then(|t| t.decode_tokens_per_s), |v| format!("{v:.1}")),
        opt(t.map(|t| t.mean_case_ms), ms),
        opt(r.and_then(|r| r.peak_host_bytes), bytes),
        opt(r.and_then(|r| r.peak_device_bytes), bytes),
        pass_rate(&s.overall),
        format!("{:.1}%", s.overall.syntax_valid_rate * 100.0),
        auroc.unwrap_or_else(|| NA.into()),
        opt(line, |l| {
            format!(
                "{}/{} ({:.0}%; chance {:.0}%)",
                l.hits,
                l.located,
                100.0 * l.hits as f64 / l.located as f64,
                100.0 * l.expected_hits / l.located as f64
            )
        }),
        opt(line.and_then(|l| l.p_value), |p| format!("{p:.3}")),
    ]
}

/// `[0.601, 0.823]`.
fn interval3(i: Interval) -> String {
    format!("[{:.3}, {:.3}]", i.low, i.high)
}

const HEADER: [&str; 14] = [
    "profile",
    "size on disk",
    "precision",
    "load",
    "TTFT",
    "tok/s",
    "time/case",
    "peak host",
    "peak device",
    "pass rate [95% CI]",
    "syntax valid",
    "AUROC mean NLL [95% CI]",
    "low-prob line hits",
    "p",
];

fn side_by_side(summaries: &[Summary]) -> Table {
    Table {
        header: HEADER.iter().map(|h| h.to_string()).collect(),
        rows: summaries.iter().map(profile_row).collect(),
    }
}

/// Rows: categories (every profile's); columns: profiles; cells: pass rate with its interval.
fn per_category(summaries: &[Summary]) -> Table {
    let categories: BTreeSet<&String> =
        summaries.iter().flat_map(|s| s.categories.keys()).collect();
    let mut header = vec!["category".to_string()];
    header.extend(summaries.iter().map(|s| s.model.clone()));
    let mut rows: Vec<Vec<String>> = categories
        .into_iter()
        .map(|cat| {
            let mut row = vec![cat.clone()];
            row.extend(
                summaries
                    .iter()
                    .map(|s| s.categories.get(cat).map_or_else(|| NA.into(), pass_rate)),
            );
            row
        })
        .collect();
    let mut overall = vec!["overall".to_string()];
    overall.extend(summaries.iter().map(|s| pass_rate(&s.overall)));
    rows.push(overall);
    Table { header, rows }
}

/// Pairs of profiles of the same model at different precisions.
fn precision_pairs(summaries: &[Summary]) -> Vec<(&Summary, &Summary)> {
    let key = |s: &Summary| {
        let p = s.profile.as_ref()?;
        Some((p.model.clone()?, p.precision.clone()?))
    };
    let mut pairs = Vec::new();
    for (i, a) in summaries.iter().enumerate() {
        for b in &summaries[i + 1..] {
            if let (Some((ma, pa)), Some((mb, pb))) = (key(a), key(b))
                && ma == mb
                && pa != pb
            {
                pairs.push((a, b));
            }
        }
    }
    pairs
}

/// The comparison of two profiles of one model at different precisions: each one's figures,
/// and the exact McNemar test on the cases both measured.
fn precision_block(a: &Summary, b: &Summary, outcomes: &[CaseOutcome]) -> (String, Table) {
    let (pa, pb) = (a.profile.as_ref(), b.profile.as_ref());
    let precision = |p: Option<&crate::score::footprint::Profile>| {
        p.and_then(|p| p.precision.clone())
            .unwrap_or_else(|| NA.into())
    };
    let title = format!(
        "precision: `{}` {} vs `{}` {} (model {})",
        a.model,
        precision(pa),
        b.model,
        precision(pb),
        pa.and_then(|p| p.model.clone()).unwrap_or_default()
    );
    let verdicts = |model: &str| -> BTreeMap<&str, bool> {
        outcomes
            .iter()
            .filter(|o| o.model == model && o.error.is_none())
            .map(|o| (o.key.as_str(), o.passed()))
            .collect()
    };
    let (va, vb) = (verdicts(&a.model), verdicts(&b.model));
    let pairs: Vec<(bool, bool)> = va
        .iter()
        .filter_map(|(k, &x)| vb.get(k).map(|&y| (x, y)))
        .collect();
    let m = stats::mcnemar_paired(pairs.iter().copied());
    let row = |s: &Summary| {
        let t = s.timing.as_ref();
        let r = s.resources.as_ref();
        vec![
            s.model.clone(),
            precision(s.profile.as_ref()),
            pass_rate(&s.overall),
            format!("{:.1}%", s.overall.syntax_valid_rate * 100.0),
            opt(t.map(|t| t.mean_case_ms), ms),
            opt(t.and_then(|t| t.decode_tokens_per_s), |v| format!("{v:.1}")),
            opt(r.and_then(|r| r.peak_host_bytes), bytes),
            opt(r.and_then(|r| r.peak_device_bytes), bytes),
        ]
    };
    let table = Table {
        header: [
            "profile",
            "precision",
            "pass rate [95% CI]",
            "syntax valid",
            "time/case",
            "tok/s",
            "peak host",
            "peak device",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect(),
        rows: vec![row(a), row(b)],
    };
    let test = format!(
        "McNemar (exact, two-sided) on {} cases both measured: {} pass only with `{}`, {} only with `{}`; p = {:.3}",
        pairs.len(),
        m.b,
        a.model,
        m.c,
        b.model,
        m.p
    );
    (format!("{title}\n{test}"), table)
}

/// The side-by-side tables for a terminal; empty with fewer than two summaries.
pub fn text(summaries: &[Summary], outcomes: &[CaseOutcome]) -> String {
    if summaries.len() < 2 {
        return String::new();
    }
    let mut s = String::from("codegen profiles side by side\n");
    s.push_str(&side_by_side(summaries).text());
    let _ = writeln!(
        s,
        "  time/case: generation time of a case's samples; TTFT and tok/s: mean per sequence; AUROC: mean NLL predicting failure, DeLong CI; low-prob line: failing samples whose least likely token lies on the failing line, of those located (p: exact one-sided Poisson-binomial vs chance)"
    );
    s.push_str("\npass rate per category [95% Wilson CI]\n");
    s.push_str(&per_category(summaries).text());
    for (a, b) in precision_pairs(summaries) {
        let (title, table) = precision_block(a, b, outcomes);
        let _ = write!(s, "\n{}\n", title.replace('\n', "\n  "));
        s.push_str(&table.text());
    }
    s
}

/// The same as Markdown (for `comparison.md`); empty with fewer than two summaries.
pub fn markdown(summaries: &[Summary], outcomes: &[CaseOutcome]) -> String {
    if summaries.len() < 2 {
        return String::new();
    }
    let mut s = String::from("### codegen: profiles side by side\n\n");
    s.push_str(&side_by_side(summaries).markdown());
    s.push_str("\nTime/case: generation time of a case's samples; TTFT and tok/s: mean per sequence; AUROC: mean NLL predicting failure, DeLong CI; low-prob line: failing samples whose least likely token lies on the failing line, of those located (p: exact one-sided Poisson-binomial vs chance).\n");
    s.push_str("\n#### Pass rate per category (95% Wilson CI)\n\n");
    s.push_str(&per_category(summaries).markdown());
    for (a, b) in precision_pairs(summaries) {
        let (title, table) = precision_block(a, b, outcomes);
        let (head, test) = title.split_once('\n').unwrap_or((&title, ""));
        let _ = write!(s, "\n#### {}\n\n", capital(head));
        s.push_str(&table.markdown());
        let _ = writeln!(s, "\n{test}.");
    }
    s
}

fn capital(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "models_tests.rs"]
mod tests;
