//! What a run tells people: the terminal summary table, and results JSON journaled as cases
//! finish (so an interrupted run keeps what it measured) plus one summary file per model.

use std::fmt::Write as _;

pub mod compare;
pub mod compare_html;
pub mod ending;
pub mod html;
mod journal;
pub mod legend;
pub mod model_table;
pub mod models;
pub mod page;
pub mod results;
pub mod roc;
mod verdict;

pub use journal::{Journal, entries_where, partial_results_path, results_path, unfinished_runs};

use crate::evaluate::CaseOutcome;
use crate::gate::{Baseline, GateFailure, Verdict};
use crate::score::footprint::Profile;
use crate::score::stats::Interval;
use crate::score::{Summary, Totals};

/// The line under the tables that names how the intervals were computed.
pub const INTERVAL_METHOD: &str =
    "pass rate intervals: 95% Wilson score interval over the measured cases";

/// `[49.7, 64.6]`: an interval in percent.
fn interval(i: Interval) -> String {
    format!("[{:.1}, {:.1}]", i.low * 100.0, i.high * 100.0)
}

/// Render the summary table for one model.
/// "generated N tokens; peak memory: host X MiB, device Y MiB" (device only where measured).
pub fn resources_line(r: &crate::score::Resources) -> String {
    let mib = |b: u64| format!("{} MiB", b >> 20);
    let mut parts = Vec::new();
    if let Some(h) = r.peak_host_bytes {
        parts.push(format!("host {}", mib(h)));
    }
    if let Some(d) = r.peak_device_bytes {
        parts.push(format!("device {}", mib(d)));
    }
    let memory = match parts.is_empty() {
        true => "not measured".to_string(),
        false => parts.join(", "),
    };
    format!(
        "generated {} tokens; peak memory: {memory}",
        r.generated_tokens
    )
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

pub fn summary_table(summary: &Summary, baseline: Option<Baseline>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "codegen summary for model `{}`", summary.model);
    let width = summary
        .categories
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("category".len());
    let _ = writeln!(
        s,
        "  {:<width$}  {:>6}  {:>6}  {:>9}  {:>14}  {:>12}",
        "category", "cases", "passed", "pass rate", "95% CI", "syntax valid"
    );
    let row = |s: &mut String, name: &str, t: &Totals| {
        let _ = writeln!(
            s,
            "  {:<width$}  {:>6}  {:>6}  {:>8.1}%  {:>14}  {:>11.1}%",
            name,
            t.cases,
            t.passed,
            t.pass_rate * 100.0,
            interval(t.pass_rate_ci),
            t.syntax_valid_rate * 100.0
        );
    };
    for (cat, t) in &summary.categories {
        row(&mut s, cat, t);
    }
    let _ = writeln!(s, "  {}", "-".repeat(width + 59));
    row(&mut s, "overall", &summary.overall);
    let _ = writeln!(s, "  {INTERVAL_METHOD}");
    if several_samples(summary) {
        let _ = writeln!(s, "  {:<width$}  {}", "", pass_k_header(&summary.overall));
        for (cat, t) in &summary.categories {
            let _ = writeln!(s, "  {cat:<width$}  {}", pass_k_cells(t));
        }
        let _ = writeln!(
            s,
            "  {:<width$}  {}",
            "overall",
            pass_k_cells(&summary.overall)
        );
        let _ = writeln!(s, "  {PASS_K_METHOD}");
    }
    if summary.overall.errors > 0 {
        let _ = writeln!(
            s,
            "  not measured: {} case(s) (errors, not wrong answers; not in the rates above)",
            summary.overall.errors
        );
    }
    if let Some(r) = &summary.resources {
        let _ = writeln!(s, "  {}", resources_line(r));
    }
    if summary.failures != crate::evaluate::failure::FailureCounts::default() {
        let _ = writeln!(s, "  failures: {}", summary.failures.line());
    }
    if let Some(d) = &summary.diversity {
        let _ = writeln!(s, "  {}", d.line());
    }
    if let Some(f) = &summary.following {
        let _ = writeln!(s, "  {}", f.line());
    }
    if let Some(b) = baseline {
        let _ = writeln!(
            s,
            "  accepted baseline: {:.1}% over {} cases with accepted snapshots",
            b.rate() * 100.0,
            b.cases
        );
    }
    if let Some(t) = &summary.timing {
        let _ = writeln!(s, "  {}", timing_line(t, summary.profile.as_ref()));
    }
    if let Some(u) = &summary.uncertainty {
        for line in uncertainty_lines(u) {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

/// Whether some case has several samples (then pass@k and pass^k are worth a table).
fn several_samples(summary: &Summary) -> bool {
    summary.overall.pass_at_k.len() > 1 || summary.overall.samples > summary.overall.cases
}

/// The line under the pass@k / pass^k table.
pub const PASS_K_METHOD: &str = "pass@k: at least one of k samples passes; pass^k: all k pass (unbiased estimators over each case's n samples)";

fn pass_k_header(t: &Totals) -> String {
    let mut cols: Vec<String> = t.pass_at_k.keys().map(|k| format!("pass@{k}")).collect();
    cols.extend(
        t.pass_hat_k
            .keys()
            .filter(|&&k| k > 1)
            .map(|k| format!("pass^{k}")),
    );
    cols.iter()
        .map(|c| format!("{c:>8}"))
        .collect::<Vec<_>>()
        .join("")
}

fn pass_k_cells(t: &Totals) -> String {
    let hat = t.pass_hat_k.iter().filter(|(k, _)| **k > 1);
    t.pass_at_k
        .iter()
        .chain(hat)
        .map(|(_, v)| format!("{:>7.1}%", v * 100.0))
        .collect::<Vec<_>>()
        .join("")
}

/// `timing: TTFT 420 ms, decode 31.2 tok/s per sequence; per case mean 1.8 s, p50 1.7 s, p95
/// 2.5 s (36 samples); engine load 2.1 s; model 1.5 GiB on disk`.
pub fn timing_line(t: &crate::score::footprint::TimingStats, profile: Option<&Profile>) -> String {
    let ms = |v: f64| match v < 1000.0 {
        true => format!("{v:.0} ms"),
        false => format!("{:.1} s", v / 1000.0),
    };
    let mut s = format!(
        "timing: TTFT mean {}, decode {} per sequence; per case mean {}, p50 {}, p95 {} ({} samples)",
        ms(t.mean_ttft_ms),
        t.decode_tokens_per_s
            .map_or_else(|| "n/a".to_string(), |v| format!("{v:.1} tok/s")),
        ms(t.mean_case_ms),
        ms(t.p50_case_ms),
        ms(t.p95_case_ms),
        t.samples
    );
    if let Some(load) = profile.and_then(|p| p.load_ms) {
        let _ = write!(s, "; engine load {}", ms(load));
    }
    if let Some(size) = profile.and_then(|p| p.size_on_disk_bytes) {
        let _ = write!(s, "; model {} on disk", crate::models::human_bytes(size));
    }
    s
}

/// The uncertainty lines: mean NLL by verdict, AUROC of each score with its interval, and the
/// low-probability line test.
pub fn uncertainty_lines(u: &crate::score::uncertainty::UncertaintyStats) -> Vec<String> {
    let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into());
    vec![
        format!(
            "uncertainty: mean NLL passed {} / failed {} ({} samples)",
            f(u.mean_nll_passed),
            f(u.mean_nll_failed),
            u.samples
        ),
        u.auroc_line(),
        u.low_prob_line.line(),
    ]
}

/// The summary as Markdown, for a pull-request comment: the table, then each failing case with
/// its first failing test.
pub fn markdown(
    summary: &Summary,
    outcomes: &[CaseOutcome],
    baseline: Option<Baseline>,
    gate: &[GateFailure],
    gate_note: Option<&str>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### codegen: `{}`\n", summary.model);
    markdown_rates(&mut s, summary);
    markdown_facts(&mut s, summary);
    markdown_verdict(&mut s, summary, outcomes, baseline, gate, gate_note);
    s
}

/// The pass-rate table per category, and pass@k / pass^k when there are several samples.
fn markdown_rates(s: &mut String, summary: &Summary) {
    let _ = writeln!(
        s,
        "| category | cases | passed | pass rate | syntax valid |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    let row = |s: &mut String, name: &str, t: &Totals| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {:.1}% {} | {:.1}% |",
            t.cases,
            t.passed,
            t.pass_rate * 100.0,
            interval(t.pass_rate_ci),
            t.syntax_valid_rate * 100.0
        );
    };
    for (cat, t) in &summary.categories {
        row(s, cat, t);
    }
    row(s, "**overall**", &summary.overall);
    let _ = writeln!(s, "\n{}.", capitalized(INTERVAL_METHOD));
    if several_samples(summary) {
        let t = &summary.overall;
        let mut head: Vec<String> = t.pass_at_k.keys().map(|k| format!("pass@{k}")).collect();
        head.extend(
            t.pass_hat_k
                .keys()
                .filter(|&&k| k > 1)
                .map(|k| format!("pass^{k}")),
        );
        let _ = writeln!(s, "\n| category | {} |", head.join(" | "));
        let _ = writeln!(s, "| --- |{}", " ---: |".repeat(head.len()));
        let cells = |t: &Totals| {
            let hat = t.pass_hat_k.iter().filter(|(k, _)| **k > 1);
            let v: Vec<String> = t
                .pass_at_k
                .iter()
                .chain(hat)
                .map(|(_, v)| format!("{:.1}%", v * 100.0))
                .collect();
            v.join(" | ")
        };
        for (cat, t) in &summary.categories {
            let _ = writeln!(s, "| {cat} | {} |", cells(t));
        }
        let _ = writeln!(s, "| **overall** | {} |", cells(t));
        let _ = writeln!(s, "\n{}.", capitalized(PASS_K_METHOD));
    }
}

/// One line each: unmeasured cases, resources, failures, diversity, following, timing,
/// uncertainty.
fn markdown_facts(s: &mut String, summary: &Summary) {
    if summary.overall.errors > 0 {
        let _ = writeln!(
            s,
            "\n**Not measured: {} case(s)** (errors, not wrong answers; not in the rates above).",
            summary.overall.errors
        );
    }
    if let Some(r) = &summary.resources {
        let _ = writeln!(s, "\n{}.", capitalized(&resources_line(r)));
    }
    if summary.failures != crate::evaluate::failure::FailureCounts::default() {
        let _ = writeln!(s, "\nFailures: {}.", summary.failures.line());
    }
    if let Some(d) = &summary.diversity {
        let _ = writeln!(s, "\n{}.", capitalized(&d.line()));
    }
    if let Some(f) = &summary.following {
        let _ = writeln!(s, "\n{}.", capitalized(&f.line()));
    }
    if let Some(t) = &summary.timing {
        let _ = writeln!(
            s,
            "\n{}.",
            capitalized(&timing_line(t, summary.profile.as_ref()))
        );
    }
    if let Some(u) = &summary.uncertainty {
        let _ = writeln!(s);
        for line in uncertainty_lines(u) {
            let _ = writeln!(s, "- {}.", capitalized(&line));
        }
    }
}

/// The baseline, the trials, the gate and the failing cases.
fn markdown_verdict(
    s: &mut String,
    summary: &Summary,
    outcomes: &[CaseOutcome],
    baseline: Option<Baseline>,
    gate: &[GateFailure],
    gate_note: Option<&str>,
) {
    if let Some(b) = baseline {
        let _ = writeln!(
            s,
            "\nAccepted baseline: {:.1}% over {} cases.",
            b.rate() * 100.0,
            b.cases
        );
    }
    if let Some(t) = &summary.trials {
        let _ = writeln!(
            s,
            "\nTrials (outcome against the accepted snapshots): {}.",
            t.words()
        );
    }
    if let (true, Some(note)) = (gate.is_empty(), gate_note) {
        let _ = writeln!(s, "\nGate: {note}.");
    } else if gate.is_empty() {
        let _ = writeln!(s, "\nGate: passed.");
    } else {
        let _ = writeln!(s, "\nGate: **failed**");
        for f in gate {
            let _ = writeln!(s, "- {}", f.message);
        }
    }
    let failing: Vec<&CaseOutcome> = outcomes
        .iter()
        .filter(|o| o.model == summary.model && !o.passed())
        .collect();
    if !failing.is_empty() {
        let _ = writeln!(
            s,
            "\n<details><summary>{} failing cases</summary>\n",
            failing.len()
        );
        for o in failing {
            let why = first_failure(o);
            let label = if o.error.is_some() {
                " (not measured)"
            } else {
                ""
            };
            let _ = writeln!(s, "- `{}`{label}: {}", o.key, why.replace('|', "\\|"));
        }
        let _ = writeln!(s, "\n</details>");
    }
}

fn first_failure(o: &CaseOutcome) -> String {
    if let Some(e) = &o.error {
        return e.lines().next().unwrap_or("").to_string();
    }
    for sample in &o.samples {
        if sample.load != crate::evaluate::verdict::LoadVerdict::Ok {
            return format!("load {}", sample.load.describe());
        }
        if let Some(t) = sample.tests.iter().find(|t| !t.verdict.is_pass()) {
            return format!(
                "`{}` -> {}",
                t.label.lines().next().unwrap_or(""),
                t.verdict.describe()
            );
        }
    }
    "failed".into()
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML for CI systems that display test reports: one test case per trial. JUnit's
/// failures are the trials' failures (a changed or missing snapshot), so a CI's test view
/// agrees with the run's exit status: an accepted known failure is not one. Its errors are the
/// cases that could not be measured. The model's own verdict on each case is the testcase's
/// `model_verdict` property, and the suite's properties say so. Results recorded without trial
/// results count the model's wrong answers as failures, as before.
pub fn junit(model: &str, outcomes: &[CaseOutcome]) -> String {
    let mine: Vec<&CaseOutcome> = outcomes.iter().filter(|o| o.model == model).collect();
    let errors = mine.iter().filter(|o| o.error.is_some()).count();
    let trial_failed = |o: &CaseOutcome| match o.trial {
        Some(t) => !t.passed,
        None => !o.passed(),
    };
    let failures = mine
        .iter()
        .filter(|o| o.error.is_none() && trial_failed(o))
        .count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites><testsuite name=\"codegen::{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\">",
        xml_escape(model),
        mine.len()
    );
    let _ = writeln!(
        s,
        "  <properties><property name=\"failures\" value=\"{JUNIT_FAILURES}\"/><property name=\"model_passed\" value=\"{}\"/></properties>",
        mine.iter().filter(|o| o.passed()).count()
    );
    for o in mine {
        let _ = write!(
            s,
            "  <testcase classname=\"{}\" name=\"{}\"><properties><property name=\"model_verdict\" value=\"{}\"/></properties>",
            xml_escape(&format!("{model}::{}", o.category)),
            xml_escape(&o.key),
            xml_escape(&model_verdict(o))
        );
        if o.error.is_some() {
            let _ = write!(s, "<error message=\"{}\"/>", xml_escape(&first_failure(o)));
        } else if trial_failed(o) {
            let why = o
                .trial
                .and_then(|t| t.failure)
                .map_or("the model's answer failed", |f| f.words());
            let _ = write!(s, "<failure message=\"{}\"/>", xml_escape(why));
        }
        let _ = writeln!(s, "</testcase>");
    }
    s.push_str("</testsuite></testsuites>\n");
    s
}

/// What JUnit's failures count, said in each JUnit file.
const JUNIT_FAILURES: &str = "trials that failed (outcome differs from its accepted snapshot, or no accepted snapshot); the model's verdict on each case is its model_verdict property";

/// The model's verdict on a case in words: `passed`, `failed: wrong answer ...`, `not measured`.
fn model_verdict(o: &CaseOutcome) -> String {
    match (&o.error, o.passed()) {
        (Some(_), _) => "not measured".into(),
        (None, true) => "passed".into(),
        (None, false) => format!("failed: {}", first_failure(o)),
    }
}

/// What a run prints for a model after its trials, up to the run's own lines: the table, the
/// cases not measured, and the sandbox's isolation.
pub fn conclusion(
    summary: &Summary,
    baseline: Option<Baseline>,
    ran: &[&CaseOutcome],
    isolation: &str,
) -> String {
    let mut s = String::from("\n");
    s.push_str(&summary_table(summary, baseline));
    for o in ran.iter().filter(|o| o.error.is_some()) {
        let error = o.error.as_deref().unwrap_or_default();
        let _ = writeln!(
            s,
            "  not measured: {}: {}",
            o.key,
            error.lines().next().unwrap_or_default()
        );
    }
    if !isolation.is_empty() {
        let _ = writeln!(s, "  sandbox: {isolation}");
    }
    s
}

/// The gate's lines under the table: each threshold not met, or `gate: passed` (with the note
/// when a rule let a drop pass).
pub fn gate_lines(verdict: &Verdict) -> Vec<String> {
    if verdict.failures.is_empty() {
        return vec![match &verdict.note {
            Some(note) => format!("gate: {note}"),
            None if verdict.held.is_empty() => "gate: passed (no threshold set)".to_string(),
            None => format!("gate: passed ({})", verdict.held.join("; ")),
        }];
    }
    verdict.failures.iter().map(|f| f.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_rows_and_overall() {
        let t = Totals {
            cases: 2,
            errors: 0,
            passed: 1,
            samples: 2,
            passed_samples: 1,
            syntax_valid_samples: 2,
            pass_rate: 0.5,
            pass_rate_ci: crate::score::stats::wilson(1.0, 2),
            syntax_valid_rate: 1.0,
            pass_at_k: [(1, 0.5)].into(),
            pass_hat_k: [(1, 0.5)].into(),
        };
        let summary = Summary {
            model: "m".into(),
            profile: None,
            timing: None,
            overall: t.clone(),
            categories: [("strings".to_string(), t)].into(),
            uncertainty: None,
            diversity: None,
            following: None,
            trials: None,
            config_order: None,
            failures: Default::default(),
            resources: Some(crate::score::Resources {
                generated_tokens: 1234,
                peak_host_bytes: Some(3 << 30),
                peak_device_bytes: Some(5 << 29),
            }),
            devices: Vec::new(),
        };
        let table = summary_table(&summary, None);
        assert!(
            table.contains("  generated 1234 tokens; peak memory: host 3072 MiB, device 2560 MiB"),
            "{table}"
        );
        // The interval column sits between the pass rate and the syntax-valid rate, right-aligned
        // under its header.
        assert!(
            table.contains("  category   cases  passed  pass rate          95% CI  syntax valid"),
            "{table}"
        );
        assert!(
            table.contains("  strings        2       1      50.0%     [9.5, 90.5]        100.0%"),
            "{table}"
        );
        assert!(
            table.contains("  overall        2       1      50.0%     [9.5, 90.5]        100.0%"),
            "{table}"
        );
        assert!(
            table.contains(
                "\n  pass rate intervals: 95% Wilson score interval over the measured cases\n"
            ),
            "{table}"
        );
        let md = markdown(&summary, &[], None, &[], None);
        assert!(
            md.contains("| strings | 2 | 1 | 50.0% [9.5, 90.5] | 100.0% |"),
            "{md}"
        );
        assert!(
            md.contains("\nPass rate intervals: 95% Wilson score interval"),
            "{md}"
        );
        assert!(md.contains("\nGate: passed.\n"), "{md}");
        let note = "passed (drop of 6.0 points > max_drop 3.0, but not significant: …)";
        let md = markdown(&summary, &[], None, &[], Some(note));
        assert!(md.contains(&format!("\nGate: {note}.\n")), "{md}");
    }

    #[test]
    fn pass_k_table_timing_and_uncertainty_lines() {
        // Two samples of one case, one passing: pass@2 100%, pass^2 0%.
        let mut o = crate::snapshot::tests::outcome(true);
        let mut failing = o.samples[0].clone();
        failing.passed = false;
        o.samples.push(failing);
        let mut summary = Summary::of("m", &[o]);
        summary.timing = Some(crate::score::footprint::TimingStats {
            samples: 2,
            mean_ttft_ms: 420.0,
            decode_tokens_per_s: Some(31.25),
            mean_case_ms: 1800.0,
            p50_case_ms: 1700.0,
            p95_case_ms: 2500.0,
        });
        let table = summary_table(&summary, None);
        assert!(
            table.contains("\n              pass@1  pass@2  pass^2\n  cat          50.0%  100.0%    0.0%\n  overall      50.0%  100.0%    0.0%\n"),
            "{table}"
        );
        assert!(
            table.contains("\n  timing: TTFT mean 420 ms, decode 31.2 tok/s per sequence; per case mean 1.8 s, p50 1.7 s, p95 2.5 s (2 samples)\n"),
            "{table}"
        );
        let md = markdown(&summary, &[], None, &[], None);
        assert!(md.contains("\n| category | pass@1 | pass@2 | pass^2 |\n| --- | ---: | ---: | ---: |\n| cat | 50.0% | 100.0% | 0.0% |\n"), "{md}");
        // Uncertainty: one passing and one failing sample with token traces.
        let u = crate::score::uncertainty::UncertaintyStats {
            samples: 2,
            mean_nll_passed: Some(0.1),
            mean_nll_failed: Some(0.4),
            auroc_mean_nll: Some(1.0),
            auroc_min_prob: Some(1.0),
            scores: vec![crate::score::uncertainty::ScoreAuroc {
                score: crate::score::uncertainty::Score::MeanNll,
                auroc: Some(1.0),
                ci: Some(Interval {
                    low: 0.0,
                    high: 1.0,
                }),
            }],
            auroc_method: crate::score::stats::AUROC_METHOD,
            low_prob_line: crate::score::uncertainty::LowProbLine::test(1, &[]),
        };
        summary.uncertainty = Some(u);
        let table = summary_table(&summary, None);
        assert!(
            table.contains("\n  uncertainty: mean NLL passed 0.100 / failed 0.400 (2 samples)\n  AUROC for failure (95% CI, DeLong): mean NLL 1.000 [0.000, 1.000]\n  least likely token on the failing line: 0 of 0 located failures (chance 0.00; p = n/a"),
            "{table}"
        );
        let md = markdown(&summary, &[], None, &[], None);
        assert!(
            md.contains("\n- AUROC for failure (95% CI, DeLong): mean NLL 1.000 [0.000, 1.000].\n"),
            "{md}"
        );
    }

    #[test]
    fn failures_and_diversity_lines() {
        let outcomes = [
            crate::snapshot::tests::outcome(false),
            crate::snapshot::tests::outcome(true),
        ];
        let mut summary = Summary::of("m", &outcomes);
        assert!(!summary_table(&summary, None).contains("diversity"));
        summary.diversity = Some(crate::score::diversity::Diversity {
            cases: 4,
            all_identical_rate: 0.25,
            mean_distinct: 2.5,
        });
        let table = summary_table(&summary, None);
        assert!(table.contains("\n  failures: wrong answer 1\n"), "{table}");
        assert!(
            table.contains("\n  diversity: 25.0% of 4 cases with n >= 2 all identical; mean 2.50 distinct samples\n"),
            "{table}"
        );
        let md = markdown(&summary, &outcomes, None, &[], None);
        assert!(md.contains("\nFailures: wrong answer 1.\n"), "{md}");
        assert!(md.contains("\nDiversity: 25.0% of 4 cases"), "{md}");
    }
}
