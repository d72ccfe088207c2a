//! What a run does after its trials: summaries, tables, the results files and the gate, and
//! the verdict lines it ends with.

use std::path::{Path, PathBuf};

use super::Harness;
use crate::evaluate::CaseOutcome;
use crate::gate::{self, Baseline};
use crate::report::{
    self,
    ending::{self, GateEnd, ProfileEnd},
};
use crate::score::Summary;
use crate::score::footprint::Profile;

impl Harness {
    /// Summaries, tables and the gate after the trials ran. Returns false when the gate failed.
    /// A shard writes its part and its manifest instead, and gates nothing (`failed_trials`
    /// goes into the manifest).
    pub(crate) fn finish(&self, failed_trials: usize) -> bool {
        self.finish_with(failed_trials, &self.evaluator.isolation())
    }

    /// [`Harness::finish`] with the sandbox's isolation line given (`codegen finish` ran no
    /// case itself: the trials' processes recorded theirs).
    pub(crate) fn finish_with(&self, failed_trials: usize, isolation: &str) -> bool {
        // Case order, not the order trials finished in: every figure (float sums included)
        // and every file is the same whatever the thread count or an interrupted earlier run.
        let mut outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        outcomes.sort_by(|a, b| (&a.model, &a.key).cmp(&(&b.model, &b.key)));
        let isolation = isolation.to_string();
        let mut ok = true;
        let mut summaries = Vec::new();
        let mut ends = Vec::new();
        for (m, model) in self.models.iter().enumerate() {
            let ran: Vec<&CaseOutcome> =
                outcomes.iter().filter(|o| o.model == model.name).collect();
            if ran.is_empty() {
                continue;
            }
            let mut summary = Summary::of(&model.name, &outcomes);
            summary.config_order = Some(m);
            summary.devices = self.devices(m);
            summary.profile = Some(self.profile(m));
            let baseline = self.baseline(model, &ran);
            let source_warnings = self.print_profile(m, &summary, baseline, &ran, &isolation);
            if let Some(shard) = self.shard {
                let note = format!(
                    "shard {shard}: {} of the suite's {} cases; partial summary, not gated (`codegen merge` gates the merged shards)",
                    ran.len(),
                    self.cases.len()
                );
                let written = written(
                    self.journal.complete_shard(
                        &summary,
                        &outcomes,
                        &isolation,
                        baseline,
                        &source_warnings,
                        &note,
                    ),
                    &mut ok,
                );
                println!("  {note}");
                ends.push(ProfileEnd {
                    model: model.name.clone(),
                    trials: summary.trials,
                    gate: GateEnd::NotGated,
                    results: written,
                });
                continue;
            }
            let verdict = gate::judge(&summary, self.config.gate_for(model), baseline);
            let written = written(
                self.journal.complete(
                    &summary,
                    &outcomes,
                    &isolation,
                    baseline,
                    &verdict,
                    &source_warnings,
                ),
                &mut ok,
            );
            ok &= verdict.failures.is_empty();
            for line in report::gate_lines(&verdict) {
                println!("  {line}");
            }
            ends.push(ProfileEnd {
                model: model.name.clone(),
                trials: summary.trials,
                gate: GateEnd::of(&verdict),
                results: written,
            });
            summaries.push(summary);
        }
        if summaries.len() >= 2 {
            println!();
            print!("{}", report::models::text(&summaries, &outcomes));
            match self.journal.complete_comparison(&summaries, &outcomes) {
                Ok(path) => println!("  comparison: {}", path.display()),
                Err(e) => ok &= results_not_written(&e),
            }
        }
        if let Some(shard) = self.shard {
            ok &= self.write_manifest(shard, &outcomes, &isolation, failed_trials);
        }
        self.print_ending(ends);
        ok
    }

    /// Print profile `m`'s table, sessions, timeline and its source's warnings (returned).
    fn print_profile(
        &self,
        m: usize,
        summary: &Summary,
        baseline: Option<Baseline>,
        ran: &[&CaseOutcome],
        isolation: &str,
    ) -> Vec<String> {
        print!("{}", report::conclusion(summary, baseline, ran, isolation));
        // Per session, only when a profile spreads over several (one is the resources line).
        if summary.devices.len() > 1 {
            for d in &summary.devices {
                println!("  session {d}");
            }
        }
        // Nothing to say when no trial ran here (`codegen finish`: the test processes did).
        if let Some(line) = self.timeline.line_if_any() {
            println!("  {line}");
        }
        let source_warnings = self.source_warnings(m);
        for w in &source_warnings {
            println!("  warning: {w}");
        }
        source_warnings
    }

    /// The run's last lines ([`ending::lines`]), paths as the user's commands name them:
    /// relative to the project root.
    fn print_ending(&self, mut ends: Vec<ProfileEnd>) {
        let rel = |p: &Path| p.strip_prefix(&self.config.root).unwrap_or(p).to_path_buf();
        for end in &mut ends {
            end.results = end.results.as_deref().map(rel);
        }
        print!("{}", ending::lines(&ends, &rel(self.journal.dir()), None));
    }

    /// Profile `m` as run: its configured facts, and what its source described and measured
    /// while loading, when it opened.
    pub(super) fn profile(&self, m: usize) -> Profile {
        let opened = self.sources[m].get().and_then(|s| s.as_ref().ok());
        Profile::of(
            &self.models[m],
            &opened.map(|s| s.describe()).unwrap_or_default(),
            opened.and_then(|s| s.load_facts()),
        )
    }
}

/// The summary file a profile's results were written to (said on its `results:` line), or
/// `None` when they could not be, which fails the run (`ok`).
fn written(
    result: Result<PathBuf, crate::provision::cache::FileError>,
    ok: &mut bool,
) -> Option<PathBuf> {
    match result {
        Ok(path) => {
            println!("  results: {}", path.display());
            Some(path)
        }
        Err(e) => {
            *ok &= results_not_written(&e);
            None
        }
    }
}

/// A run whose results could not be written fails (a green run that wrote nothing would be
/// read as a measurement): say so, naming the file. Returns false.
fn results_not_written(e: &crate::provision::cache::FileError) -> bool {
    eprintln!("error: {e}; the run fails because its results were not written");
    false
}
