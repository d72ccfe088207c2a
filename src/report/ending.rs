//! The run's last lines: one verdict per profile (its trials, its gate, where its results
//! are) and one for the run, so that the end of the output says what the exit status says,
//! wherever the tables and the gate's lines scrolled to.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::gate::Verdict;
use crate::trial::TrialCounts;

/// How a profile's gate ended.
#[derive(Debug, Clone, PartialEq)]
pub enum GateEnd {
    Passed,
    /// The first threshold not met, and how many were not.
    Failed {
        first: String,
        count: usize,
    },
    /// A shard: `codegen merge` gates the merged run.
    NotGated,
}

impl GateEnd {
    /// The gate's verdict as it ended.
    pub fn of(verdict: &Verdict) -> GateEnd {
        match verdict.failures.first() {
            None => GateEnd::Passed,
            Some(f) => GateEnd::Failed {
                first: f.message.clone(),
                count: verdict.failures.len(),
            },
        }
    }
}

/// One profile's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEnd {
    pub model: String,
    /// `None` when trials were not recorded (results read back from an older run).
    pub trials: Option<TrialCounts>,
    pub gate: GateEnd,
    /// Its summary file, when it was written.
    pub results: Option<PathBuf>,
}

impl ProfileEnd {
    fn failed_trials(&self) -> usize {
        self.trials.map_or(0, |t| t.failed)
    }
}

/// The verdict lines: `codegen verdict:`, one line per profile, and `overall:` with where the
/// results folder and the report are (`report`: the page written, else how to write it).
pub fn lines(profiles: &[ProfileEnd], results_dir: &Path, report: Option<&Path>) -> String {
    let mut s = String::from("\ncodegen verdict:\n");
    for p in profiles {
        let trials = p
            .trials
            .map_or_else(|| "not recorded".to_string(), |t| t.words());
        let gate = match &p.gate {
            GateEnd::Passed => "gate passed".to_string(),
            GateEnd::NotGated => "not gated (a shard: `codegen merge` gates)".to_string(),
            GateEnd::Failed { first, count } => {
                let more = match count {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                format!("gate FAILED: {first}{more}")
            }
        };
        let results = p
            .results
            .as_ref()
            .map_or_else(|| "results not written".into(), |r| r.display().to_string());
        let _ = writeln!(s, "  {}: trials {trials}; {gate}; {results}", p.model);
    }
    let failed_trials: usize = profiles.iter().map(ProfileEnd::failed_trials).sum();
    let failed_gates: Vec<&str> = profiles
        .iter()
        .filter(|p| matches!(p.gate, GateEnd::Failed { .. }))
        .map(|p| p.model.as_str())
        .collect();
    let unwritten = profiles.iter().filter(|p| p.results.is_none()).count();
    let mut why = Vec::new();
    if failed_trials > 0 {
        why.push(format!("{failed_trials} trial(s) failed"));
    }
    if !failed_gates.is_empty() {
        why.push(format!("gate failed for {}", failed_gates.join(", ")));
    }
    if unwritten > 0 {
        why.push(format!("results of {unwritten} profile(s) not written"));
    }
    let verdict = match why.is_empty() {
        true => "passed".to_string(),
        false => format!("FAILED ({})", why.join("; ")),
    };
    let report = match report {
        Some(r) => format!("report {}", r.display()),
        None => format!(
            "report: `codegen report {}` writes {}",
            results_dir.display(),
            results_dir.join("report.html").display()
        ),
    };
    let _ = writeln!(
        s,
        "  overall: {verdict}; results {}; {report}",
        results_dir.display()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(model: &str, failed: usize, gate: GateEnd) -> ProfileEnd {
        ProfileEnd {
            model: model.into(),
            trials: Some(TrialCounts {
                passed: 36 - failed,
                failed,
                snapshot_mismatch: failed,
                ..Default::default()
            }),
            gate,
            results: Some(PathBuf::from(format!("t/summary-{model}.json"))),
        }
    }

    #[test]
    fn the_last_line_says_what_the_exit_status_says() {
        let passed = lines(
            &[end("reference", 0, GateEnd::Passed)],
            Path::new("t"),
            None,
        );
        assert!(
            passed.contains(
                "  reference: trials 36 passed, 0 failed; gate passed; t/summary-reference.json\n"
            ),
            "{passed}"
        );
        assert!(
            passed
                .trim_end()
                .lines()
                .last()
                .unwrap()
                .starts_with("  overall: passed; results t;"),
            "{passed}"
        );
        let failed = lines(
            &[
                end("reference", 16, GateEnd::Passed),
                end(
                    "qwen",
                    0,
                    GateEnd::Failed {
                        first: "gate failed for model `qwen`: short".into(),
                        count: 2,
                    },
                ),
            ],
            Path::new("t"),
            Some(Path::new("t/report.html")),
        );
        assert!(
            failed.contains("16 failed (16 snapshot mismatch)"),
            "{failed}"
        );
        assert!(
            failed.contains("gate FAILED: gate failed for model `qwen`: short (and 1 more)"),
            "{failed}"
        );
        assert!(
            failed.contains(
                "  overall: FAILED (16 trial(s) failed; gate failed for qwen); results t; report t/report.html\n"
            ),
            "{failed}"
        );
    }
}
