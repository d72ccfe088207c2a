//! How a trial ended, beside the model's verdict on the case: a trial passes when the outcome
//! matches its accepted snapshot (an accepted known failure passes), and fails on a changed
//! outcome, a missing snapshot or a case that could not be measured. Recorded in each results
//! row and counted per profile, so JUnit, the summary and the report say what the run's exit
//! status says.

use serde::{Deserialize, Serialize};

/// Why a trial failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialFailure {
    /// The outcome differs from the accepted snapshot.
    SnapshotMismatch,
    /// There is no accepted snapshot for the case yet.
    NoSnapshot,
    /// The case could not be measured (a bad case file, the source or the sandbox failing).
    NotMeasured,
}

impl TrialFailure {
    /// The failure in words.
    pub fn words(self) -> &'static str {
        match self {
            TrialFailure::SnapshotMismatch => "snapshot mismatch",
            TrialFailure::NoSnapshot => "no accepted snapshot",
            TrialFailure::NotMeasured => "not measured",
        }
    }
}

/// A trial's result: passed, or failed and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialResult {
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<TrialFailure>,
}

impl TrialResult {
    pub const PASSED: TrialResult = TrialResult {
        passed: true,
        failure: None,
    };

    pub fn failed(why: TrialFailure) -> TrialResult {
        TrialResult {
            passed: false,
            failure: Some(why),
        }
    }
}

/// A profile's trials: how many passed and failed, and the failures by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialCounts {
    pub passed: usize,
    pub failed: usize,
    #[serde(default)]
    pub snapshot_mismatch: usize,
    #[serde(default)]
    pub no_snapshot: usize,
    #[serde(default)]
    pub not_measured: usize,
}

impl TrialCounts {
    /// Over the outcomes' trial results, where recorded; `None` when none is (results
    /// written before trials were recorded).
    pub fn of(trials: impl Iterator<Item = Option<TrialResult>>) -> Option<TrialCounts> {
        let mut c = TrialCounts::default();
        let mut any = false;
        for t in trials.flatten() {
            any = true;
            match t.failure {
                None if t.passed => c.passed += 1,
                why => {
                    c.failed += 1;
                    match why {
                        Some(TrialFailure::SnapshotMismatch) => c.snapshot_mismatch += 1,
                        Some(TrialFailure::NoSnapshot) => c.no_snapshot += 1,
                        Some(TrialFailure::NotMeasured) | None => c.not_measured += 1,
                    }
                }
            }
        }
        any.then_some(c)
    }

    /// `36 passed, 2 failed (1 snapshot mismatch, 1 no accepted snapshot)`.
    pub fn words(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        let kinds: Vec<String> = [
            (self.snapshot_mismatch, TrialFailure::SnapshotMismatch),
            (self.no_snapshot, TrialFailure::NoSnapshot),
            (self.not_measured, TrialFailure::NotMeasured),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, k)| format!("{n} {}", k.words()))
        .collect();
        if !kinds.is_empty() {
            s.push_str(&format!(" ({})", kinds.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_how_trials_failed() {
        let trials = [
            Some(TrialResult::PASSED),
            Some(TrialResult::failed(TrialFailure::SnapshotMismatch)),
            Some(TrialResult::failed(TrialFailure::NoSnapshot)),
            None,
        ];
        let counts = TrialCounts::of(trials.into_iter()).unwrap();
        assert_eq!(
            counts.words(),
            "1 passed, 2 failed (1 snapshot mismatch, 1 no accepted snapshot)"
        );
        assert_eq!(TrialCounts::of([None].into_iter()), None);
    }
}
