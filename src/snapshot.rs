//! The reviewable record of a case's outcome: a deterministic text (no timings, no paths that
//! differ between machines) asserted with insta, one file per case under `snapshots/<model>/`.
//!
//! A trial passes when its outcome matches the accepted snapshot: an accepted known failure is
//! not a test failure, and any change, better or worse, is. `cargo insta review` accepts or
//! rejects changes; on CI insta writes nothing and a mismatch fails.

use std::fmt::Write as _;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use crate::evaluate::CaseOutcome;
use crate::outcome::AcceptedOutput;
use crate::outcome::{Origin, Scope};

/// The heading of the section that keeps each sample's generated token ids.
const GENERATION_HEADING: &str = "--- generated tokens ---";
/// Token ids per line of that section.
const IDS_PER_LINE: usize = 20;

/// The file-name stem of a case's snapshot: `<category>__<id>` (insta adds `.snap`).
pub fn snapshot_name(key: &str) -> String {
    key.replace('/', "__")
}

/// Where a model profile's snapshots live.
pub fn snapshot_dir(snapshots_root: &Path, model: &str) -> PathBuf {
    snapshots_root.join(model)
}

/// First line of the rendering: what the baseline reader looks for.
fn verdict_line(outcome: &CaseOutcome) -> String {
    if let Some(err) = &outcome.error {
        return format!("verdict: error ({})", err.lines().next().unwrap_or(""));
    }
    format!(
        "verdict: {} ({}/{} samples passed)",
        if outcome.passed() { "passed" } else { "failed" },
        outcome.passed_samples(),
        outcome.samples.len()
    )
}

/// Render a case outcome as snapshot text.
pub fn render(outcome: &CaseOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", verdict_line(outcome));
    let _ = writeln!(s, "case: {}", outcome.key);
    let _ = writeln!(s, "mode: {}", outcome.mode);
    if let Some(err) = &outcome.error {
        let _ = writeln!(s, "error:");
        for line in err.lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    for (i, sample) in outcome.samples.iter().enumerate() {
        let _ = writeln!(s, "\n--- sample {} ---", i + 1);
        let origin = match &sample.extraction.origin {
            Origin::FencedBlock { index, count } => format!("code block {index} of {count}"),
            Origin::WholeReply => "the whole reply".into(),
            Origin::PrefixAndBody => "prefix + generated body".into(),
        };
        let _ = writeln!(s, "extracted from: {origin}");
        if let Some(why) = &sample.extraction.unpruned_reason {
            let _ = writeln!(s, "not pruned: {why}");
        }
        if !sample.extraction.dropped.is_empty() {
            let _ = writeln!(s, "dropped:");
            for d in &sample.extraction.dropped {
                let scope = match d.scope {
                    Scope::Reply => "reply",
                    Scope::Code => "code",
                };
                let lines = if d.first_line == d.last_line {
                    format!("line {}", d.first_line)
                } else {
                    format!("lines {}-{}", d.first_line, d.last_line)
                };
                let _ = writeln!(s, "  - {scope} {lines}: {} `{}`", d.reason, d.what);
            }
        }
        if !sample.extraction.raw_syntax_valid && sample.syntax.valid {
            let _ = writeln!(
                s,
                "raw code syntax: invalid (valid once the cut-off tail was dropped)"
            );
        }
        if sample.syntax.valid {
            let _ = writeln!(s, "syntax: valid");
        } else {
            let _ = writeln!(s, "syntax: invalid");
            for d in &sample.syntax.diagnostics {
                let _ = writeln!(s, "  - {}:{}: {}", d.line, d.column, d.message);
            }
        }
        let _ = writeln!(s, "load: {}", sample.load.describe());
        let _ = writeln!(s, "tests:");
        for (j, t) in sample.tests.iter().enumerate() {
            let _ = writeln!(
                s,
                "  [{}] {} -> {}",
                j + 1,
                one_line(&t.label),
                t.verdict.describe()
            );
        }
        let _ = writeln!(s, "code:");
        for line in sample.extraction.code.lines() {
            if line.is_empty() {
                let _ = writeln!(s, "  |");
            } else {
                let _ = writeln!(s, "  | {line}");
            }
        }
    }
    render_tokens(&mut s, outcome);
    s
}

/// The token ids of every greedy sample and the key they were generated under: accepting the
/// snapshot accepts them, and later runs keep them through near ties (see
/// [`accepted_output`]).
fn render_tokens(s: &mut String, outcome: &CaseOutcome) {
    let Some(key) = outcome.samples.first().and_then(|x| x.accept_key.as_ref()) else {
        return;
    };
    let _ = writeln!(s, "\n{GENERATION_HEADING}");
    let _ = writeln!(s, "key: {key}");
    for (i, sample) in outcome.samples.iter().enumerate() {
        let ids: &[u32] = sample.tokens.as_ref().map_or(&[], |t| &t.ids);
        let _ = writeln!(s, "sample {}: {} tokens", i + 1, ids.len());
        for line in ids.chunks(IDS_PER_LINE) {
            let line: Vec<String> = line.iter().map(u32::to_string).collect();
            let _ = writeln!(s, "  {}", line.join(" "));
        }
    }
}

/// The generated output an accepted snapshot holds (its key and each sample's token ids), or
/// `None` when there is no accepted snapshot or it keeps no tokens. A section that does not
/// read back is an error naming the file and line.
pub fn accepted_output(dir: &Path, name: &str) -> Result<Option<AcceptedOutput>, String> {
    let path = dir.join(format!("{name}.snap"));
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(None);
    };
    parse_tokens(&text).map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))
}

/// [`accepted_output`] of a snapshot file's text; errors carry the 1-based line.
fn parse_tokens(file: &str) -> Result<Option<AcceptedOutput>, (usize, String)> {
    let mut lines = file.lines().enumerate().map(|(i, l)| (i + 1, l));
    if !lines.any(|(_, l)| l == GENERATION_HEADING) {
        return Ok(None);
    }
    let (n, key_line) = lines.next().unwrap_or((0, ""));
    let key = key_line.strip_prefix("key: ").ok_or((
        n,
        format!("expected `key: ...` after `{GENERATION_HEADING}`"),
    ))?;
    let mut samples: Vec<Vec<u32>> = Vec::new();
    for (n, line) in lines {
        if let Some(ids) = line.strip_prefix("  ") {
            let sample = samples
                .last_mut()
                .ok_or((n, "token ids before any `sample N:` line".to_string()))?;
            for id in ids.split_whitespace() {
                sample.push(
                    id.parse()
                        .map_err(|_| (n, format!("`{id}` is not a token id")))?,
                );
            }
        } else if line.starts_with("sample ") {
            samples.push(Vec::new());
        } else if !line.is_empty() {
            return Err((n, format!("unexpected line `{line}` among the token ids")));
        }
    }
    Ok(Some(AcceptedOutput {
        key: key.to_string(),
        samples,
    }))
}

fn one_line(s: &str) -> String {
    let joined: Vec<&str> = s.lines().map(str::trim).collect();
    joined.join(" ")
}

/// Assert `text` against the accepted snapshot `name` in `dir`, through insta (which writes
/// `.snap.new` files for `cargo insta review`, unless on CI).
///
/// Returns `Err` on mismatch with a message that carries the diff itself: the message is printed
/// in libtest's `failures:` section under the trial's name, where it cannot interleave with other
/// trials' output the way insta's own printing from worker threads does (see
/// [`silence_insta_output`]).
pub fn assert_matches(
    dir: &Path,
    name: &str,
    text: &str,
    origin: &crate::snapshot_origin::Origin,
) -> Result<(), String> {
    let accepted = dir.join(format!("{name}.snap"));
    let accepted_text = fs::read_to_string(&accepted).ok();
    let change = match &accepted_text {
        Some(file) if snapshot_body(file) == text => None,
        other => Some(origin.change(other.as_deref())),
    };
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(origin.description());
    settings.set_input_file(&origin.case_file);
    settings.set_raw_info(&origin.info(change));
    let result = catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| {
            // As `insta::assert_snapshot!` does, with the case file as the snapshot's source
            // (insta would name this file and line, which tell a reviewer nothing and change
            // from build to build).
            insta::_macro_support::assert_snapshot(
                (name.to_string(), text).into(),
                &origin.root,
                "codegen",
                "codegen",
                &origin.case_file.to_string_lossy(),
                1,
                "outcome",
            )
        })
    }));
    let failed = !matches!(result, Ok(Ok(())));
    if !failed {
        return Ok(());
    }
    let why = change.map_or("", |c| c.words());
    Err(match accepted_text {
        Some(file) => format!(
            "outcome differs from the accepted snapshot {} ({why}); review with `cargo insta review`\n{}",
            accepted.display(),
            outcome_diff(snapshot_body(&file), text)
        ),
        None => format!(
            "no accepted snapshot yet at {}; review the new outcome with `cargo insta review`\n{}",
            accepted.display(),
            outcome_diff("", text)
        ),
    })
}

/// Stop insta from printing its own diffs and summaries, unless the user chose an
/// `INSTA_OUTPUT`: insta prints from the trial's thread while libtest prints `test name ... ok`
/// lines from another, so with several test threads the two interleave mid-line.
/// [`assert_matches`] puts the diff into the failure message instead.
///
/// Must be called before any other thread exists (it sets an environment variable).
pub fn silence_insta_output(insta_output_set: bool) {
    if !insta_output_set {
        // SAFETY: called first thing in the harness's entry point, before it starts any thread,
        // so no other thread can read or write the environment concurrently.
        unsafe { std::env::set_var("INSTA_OUTPUT", "none") };
    }
}

/// The body of an insta snapshot file: what follows the `---` header.
fn snapshot_body(file: &str) -> &str {
    file.strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .map_or(file, |(_, body)| body)
}

/// A unified diff of the accepted outcome against the new one, `-` for accepted lines and `+`
/// for new ones, with three lines of context.
fn outcome_diff(accepted: &str, new: &str) -> String {
    similar::TextDiff::from_lines(accepted, new)
        .unified_diff()
        .context_radius(3)
        .header("accepted snapshot", "new outcome")
        .to_string()
}

/// Read the verdict of an accepted snapshot: `Some(true)` passed, `Some(false)` failed or
/// errored, `None` when there is no accepted snapshot.
pub fn accepted_verdict(dir: &Path, name: &str) -> Option<bool> {
    let text = fs::read_to_string(dir.join(format!("{name}.snap"))).ok()?;
    let line = snapshot_body(&text)
        .lines()
        .find(|l| l.starts_with("verdict: "))?;
    Some(line.starts_with("verdict: passed"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn outcome_diff_marks_changed_lines_and_keeps_context() {
        let accepted = "verdict: passed\ncase: a\n  [1] f() -> passed\ncode:\n";
        let new = "verdict: failed\ncase: a\n  [1] f() -> wrong answer\ncode:\n";
        let diff = outcome_diff(accepted, new);
        assert!(
            diff.contains("-verdict: passed\n+verdict: failed\n"),
            "{diff}"
        );
        assert!(diff.contains(" case: a\n"), "{diff}");
        assert!(diff.contains("+  [1] f() -> wrong answer\n"), "{diff}");
    }

    #[test]
    fn snapshot_body_skips_insta_header() {
        let file = "---\nsource: src/snapshot.rs\ndescription: x\n---\nverdict: passed\n";
        assert_eq!(snapshot_body(file), "verdict: passed\n");
    }
    use crate::evaluate::SampleOutcome;
    use crate::evaluate::extract::{Extraction, Origin};
    use crate::evaluate::verdict::{LoadVerdict, TestResult, TestVerdict};
    use crate::syntax::SyntaxReport;

    /// One case with one sample of one test, passed or a wrong answer (also used by `score`).
    pub(crate) fn outcome(passed: bool) -> CaseOutcome {
        CaseOutcome {
            key: "cat/x".into(),
            category: "cat".into(),
            model: "m".into(),
            mode: "chat".into(),
            protocol: Default::default(),
            error: None,
            generation_error: false,
            trial: None,
            samples: vec![SampleOutcome {
                extraction: Extraction {
                    code: "def f():\n\n    return 1\n".into(),
                    origin: Origin::WholeReply,
                    dropped: vec![],
                    unpruned_reason: None,
                    raw_syntax_valid: true,
                },
                syntax: SyntaxReport {
                    valid: true,
                    diagnostics: vec![],
                },
                load: LoadVerdict::Ok,
                tests: vec![TestResult {
                    label: "f()".into(),
                    verdict: if passed {
                        TestVerdict::Passed
                    } else {
                        TestVerdict::WrongAnswer {
                            got: "1".into(),
                            expected: "2".into(),
                        }
                    },
                }],
                passed,
                confidence: None,
                finish_reason: None,
                timing: None,
                tokens: None,
                failure: None,
                accept_key: None,
                followed: None,
            }],
        }
    }

    #[test]
    fn render_is_stable_and_readable() {
        let text = render(&outcome(false));
        assert!(
            text.starts_with("verdict: failed (0/1 samples passed)\n"),
            "{text}"
        );
        assert!(
            text.contains("  [1] f() -> wrong answer: got 1, expected 2\n"),
            "{text}"
        );
        assert!(
            text.contains("  | def f():\n  |\n  |     return 1\n"),
            "{text}"
        );
        assert_eq!(text, render(&outcome(false)));
    }

    #[test]
    fn generated_tokens_are_rendered_and_read_back() {
        let mut o = outcome(true);
        o.samples[0].accept_key = Some("model abc, prompt def (3 tokens), settings 012".into());
        let ids: Vec<u32> = (0..45).map(|i| i * 1000).collect();
        o.samples[0].tokens = Some(crate::engine::TokenTrace {
            ids: ids.clone(),
            ..Default::default()
        });
        let text = render(&o);
        assert!(text.contains("\n--- generated tokens ---\nkey: model abc, prompt def (3 tokens), settings 012\nsample 1: 45 tokens\n  0 1000 "), "{text}");
        let file = format!("---\nsource: x\n---\n{text}");
        let back = parse_tokens(&file).unwrap().unwrap();
        assert_eq!(back.key, "model abc, prompt def (3 tokens), settings 012");
        assert_eq!(back.samples, vec![ids]);
        // No key (replayed text, sampled runs): no section, nothing to follow.
        assert!(!render(&outcome(true)).contains("generated tokens"));
        assert_eq!(parse_tokens(&render(&outcome(true))).unwrap(), None);
        // A damaged section names its line.
        let bad = file.replace("  0 1000", "  0 x1000");
        let (line, why) = parse_tokens(&bad).unwrap_err();
        assert!(why.contains("`x1000` is not a token id"), "{why}");
        assert_eq!(
            bad.lines()
                .nth(line - 1)
                .unwrap()
                .trim_start()
                .split(' ')
                .nth(1),
            Some("x1000")
        );
    }

    #[test]
    fn baseline_verdict_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let snap = format!(
            "---\nsource: src/snapshot.rs\n---\n{}",
            render(&outcome(true))
        );
        fs::write(dir.path().join("cat__x.snap"), snap).unwrap();
        assert_eq!(accepted_verdict(dir.path(), "cat__x"), Some(true));
        assert_eq!(accepted_verdict(dir.path(), "missing"), None);
    }
}
