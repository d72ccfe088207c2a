//! A shard's manifest, written beside its results when the run ends: what `codegen merge` checks
//! (models, model files, settings, case set, version) and adds up (baselines, failed trials).

use super::Harness;
use crate::evaluate::CaseOutcome;
use crate::run::shard::{self, Shard};

impl Harness {
    /// The shard's manifest beside its results: what `codegen merge` checks and adds up.
    pub(super) fn write_manifest(
        &self,
        shard: Shard,
        outcomes: &[CaseOutcome],
        isolation: &str,
        failed_trials: usize,
    ) -> bool {
        let mut ran: Vec<String> = outcomes.iter().map(|o| o.key.clone()).collect();
        ran.sort();
        ran.dedup();
        let models = self
            .models
            .iter()
            .enumerate()
            .map(|(m, model)| {
                let mine: Vec<&CaseOutcome> =
                    outcomes.iter().filter(|o| o.model == model.name).collect();
                let described = match self.sources[m].get() {
                    Some(Ok(source)) => Some(source.describe()),
                    _ => None,
                };
                shard::manifest::ModelRun {
                    name: model.name.clone(),
                    files_sha256: shard::manifest::files_sha256(
                        &self.config,
                        model,
                        described.as_ref(),
                    ),
                    gate: self.config.gate_for(model).clone(),
                    baseline: self.baseline(model, &mine),
                    source_warnings: self.source_warnings(m),
                    profile: Some(self.profile(m)),
                    devices: self.devices(m),
                }
            })
            .collect();
        let manifest = shard::manifest::Manifest {
            format: shard::manifest::FORMAT,
            shard,
            harness_version: shard::manifest::HARNESS_VERSION.into(),
            settings: shard::manifest::settings(&self.config, &self.models),
            models,
            cases: shard::manifest::case_entries(&self.cases),
            ran,
            isolation: isolation.to_string(),
            failed_trials,
        };
        match manifest.write(self.journal.dir()) {
            Ok(path) => {
                println!("\ncodegen: shard {shard} manifest: {}", path.display());
                true
            }
            Err(e) => {
                eprintln!("error: {e}");
                false
            }
        }
    }
}
