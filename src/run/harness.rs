//! The libtest-mimic glue: build one trial per case x model from `harness/codegen.toml`, run
//! them like any cargo test (`--list`, filters, `--exact`, `--skip`, `--test-threads`), then
//! print the summary and apply the gate.
//!
//! Nothing heavy happens while building trials: `--list` parses case files only, and models and
//! Python start on first use. The per-case work is [`crate::evaluate`]'s. Under cargo-nextest
//! each process runs one trial and records it instead of summarising ([`crate::run::nextest`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Failed};
use thiserror::Error;

use crate::case::{self, Case, CaseError, LoadedCase};
use crate::config::{Config, ConfigError, ModelProfile};
use crate::engine::{AcceptedOutput, CompletionSource};
use crate::evaluate::{CaseOutcome, Evaluator};
use crate::gate::Baseline;
use crate::prompt::Prompt;
use crate::report::Journal;
use crate::run::env::Env;
use crate::run::profile::{self, Loading, ProfileError};
use crate::run::shard::Shard;
use crate::run::timeline::{Timed, Timeline};
use crate::snapshot;
use crate::trial::{TrialFailure, TrialResult};

mod accepted;
mod finish;
mod prepare;
mod process;
mod shard_manifest;

use accepted::AcceptedRuns;
pub(crate) use prepare::{prepare_sources, wait_for_generation, warm_evaluator};
pub(crate) use process::{quiet_snapshot_panics, stop_when_parent_is_gone};

/// A profile's source, opened on first use (the error is shared by every trial that needs it).
type OpenedSource = Result<Arc<dyn CompletionSource>, Arc<ProfileError>>;

/// Why a suite could not start.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cases(#[from] CaseError),
}

/// Everything the trials share.
pub struct Harness {
    pub(crate) config: Config,
    pub(crate) env: Env,
    pub(crate) cases: Vec<LoadedCase>,
    pub(crate) models: Vec<ModelProfile>,
    sources: Vec<OnceLock<OpenedSource>>,
    /// The accepted run a suite without snapshots follows (`[suite] accepted_outputs`).
    accepted_runs: AcceptedRuns,
    /// How ONNX models open: lazily in a cargo-nextest test process and in `codegen finish`.
    loading: Loading,
    pub(crate) evaluator: Evaluator,
    pub(crate) outcomes: Mutex<Vec<CaseOutcome>>,
    journal: Journal,
    timeline: Timeline,
    /// Run only this shard's cases (trials of the others are not built).
    pub(crate) shard: Option<Shard>,
}

impl Harness {
    /// Load the config and the case files (no Python, no models).
    pub fn load(options: &RunOptions) -> Result<Harness, LoadError> {
        let root = options.root.as_path();
        let mut config = Config::load(&options.config_path(), root)?;
        config.sandbox.apply_env(&options.env);
        let models: Vec<ModelProfile> = config
            .selected_models(options.models.as_deref())?
            .into_iter()
            .cloned()
            .collect();
        let cases_dir = config.resolve(&config.suite.cases);
        let cases = case::load_all(&cases_dir)?
            .into_iter()
            .filter(|c| {
                !config
                    .suite
                    .exclude
                    .iter()
                    .any(|x| c.category == *x || c.category.starts_with(&format!("{x}/")))
            })
            .collect();
        let results = config.results_dir();
        let journal = Journal::new(&match options.shard {
            Some(s) => results.join(s.dir_name()),
            None => results,
        });
        let accepted_runs = AcceptedRuns::new(
            config
                .suite
                .accepted_outputs
                .as_ref()
                .map(|p| config.resolve(p)),
            models.len(),
        );
        Ok(Harness {
            sources: models.iter().map(|_| OnceLock::new()).collect(),
            accepted_runs,
            loading: options.loading,
            evaluator: Evaluator::new(config.sandbox.clone())
                .with_low_prob_threshold(config.analysis.low_prob_threshold.get()),
            env: options.env.clone(),
            config,
            cases,
            models,
            outcomes: Mutex::new(Vec::new()),
            journal,
            timeline: Timeline::new(),
            shard: options.shard,
        })
    }

    /// Why this run would measure nothing although the user filtered nothing away, if so: no
    /// case files, or no model profile selected. (A libtest filter that matches no trial is
    /// not this: cargo hands the same filter to every test binary.)
    pub(crate) fn nothing_to_measure(&self) -> Option<String> {
        if self.models.is_empty() {
            let configured: Vec<&str> =
                self.config.models.iter().map(|m| m.name.as_str()).collect();
            return Some(format!(
                "{} selects no model profile (configured: {}; profiles with enabled = false run only when named in CODEGEN_MODELS or --models)",
                self.config.path.display(),
                if configured.is_empty() {
                    "none".to_string()
                } else {
                    configured.join(", ")
                }
            ));
        }
        if self.cases.is_empty() {
            let dir = self.config.resolve(&self.config.suite.cases);
            let excluded = if self.config.suite.exclude.is_empty() {
                String::new()
            } else {
                format!(", after excluding {}", self.config.suite.exclude.join(", "))
            };
            return Some(format!(
                "no case files under {} (`[suite] cases` in {}{excluded}); cases are <category>/<name>.toml below it",
                dir.display(),
                self.config.path.display()
            ));
        }
        None
    }

    pub(crate) fn trial_name(model: &ModelProfile, case: &LoadedCase) -> String {
        let id = case.key.rsplit('/').next().unwrap_or(&case.key);
        format!(
            "{}::{}::{}",
            model.name,
            case.category.replace('/', "::"),
            id
        )
    }

    pub(crate) fn source(&self, m: usize) -> OpenedSource {
        self.sources[m]
            .get_or_init(|| {
                profile::open_source(&self.config, &self.models[m], &self.env, self.loading)
                    .map_err(Arc::new)
            })
            .clone()
    }

    pub(crate) fn samples(&self, m: usize) -> usize {
        self.config.generation_for(&self.models[m]).samples.max(1)
    }

    /// The output `case`'s accepted snapshot for profile `m` holds, when the suite keeps
    /// snapshots and that one keeps generated tokens; without snapshots, the accepted run's
    /// (`[suite] accepted_outputs`), if the suite names one. A section that does not read back
    /// is said (file and line) and not followed.
    pub(crate) fn accepted(&self, m: usize, case: &Case) -> Option<AcceptedOutput> {
        if !self.config.suite.snapshot {
            return self.accepted_runs.get(m, &self.models[m].name, &case.key);
        }
        let dir = snapshot::snapshot_dir(
            &self.config.resolve(&self.config.suite.snapshots),
            &self.models[m].name,
        );
        snapshot::accepted_output(&dir, &snapshot::snapshot_name(&case.key)).unwrap_or_else(|e| {
            eprintln!("warning: failed to read the accepted tokens, not following them: {e}");
            None
        })
    }

    /// Generate, extract, check, run and score one case for one model.
    pub fn evaluate(&self, m: usize, case: &Case) -> CaseOutcome {
        let model = &self.models[m];
        match self.source(m) {
            Ok(source) => {
                let timed = Timed::new(source.as_ref(), &self.timeline);
                let accepted = self.accepted(m, case);
                let outcome = self.evaluator.evaluate(
                    case,
                    &model.name,
                    &model.prompt,
                    &timed,
                    self.samples(m),
                    accepted.as_ref(),
                );
                self.timeline.verdict(&case.key, timed.arrived());
                outcome
            }
            Err(e) => {
                let prompt = Prompt::for_case_with(case, &model.prompt);
                let mut outcome = CaseOutcome::new(case, &model.name, &prompt);
                outcome.protocol = model.prompt.clone();
                outcome.error = Some(e.to_string());
                outcome
            }
        }
    }

    pub(crate) fn run_trial(&self, m: usize, c: usize) -> Result<(), Failed> {
        self.timeline.setup_done();
        let loaded = &self.cases[c];
        let model = &self.models[m];
        let case = match &loaded.case {
            Ok(case) => case,
            Err(e) => {
                self.record(CaseOutcome {
                    key: loaded.key.clone(),
                    category: loaded.category.clone(),
                    model: model.name.clone(),
                    mode: String::new(),
                    protocol: model.prompt.clone(),
                    samples: Vec::new(),
                    error: Some(e.to_string()),
                    generation_error: false,
                    trial: Some(TrialResult::failed(TrialFailure::NotMeasured)),
                });
                return Err(e.to_string().into());
            }
        };
        let mut outcome = self.evaluate(m, case);
        let (trial, result) = self.judge_trial(m, c, case, &outcome);
        outcome.trial = Some(trial);
        self.record(outcome);
        result.map_err(Failed::from)
    }

    /// Whether the trial of `outcome` passes: its snapshot matches (an accepted known failure
    /// passes), or without snapshots, the case was measured.
    fn judge_trial(
        &self,
        m: usize,
        c: usize,
        case: &Case,
        outcome: &CaseOutcome,
    ) -> (TrialResult, Result<(), String>) {
        if let Some(e) = &outcome.error {
            // A harness-level failure (source, expected values) is never an accepted outcome.
            return (
                TrialResult::failed(TrialFailure::NotMeasured),
                Err(format!("failed to evaluate {}: {e}", case.key)),
            );
        }
        if !self.config.suite.snapshot {
            // Without snapshots a run is a measurement: a wrong answer is a measured result for
            // the summary, and the gate gives the verdict.
            return (TrialResult::PASSED, Ok(()));
        }
        let dir = snapshot::snapshot_dir(
            &self.config.resolve(&self.config.suite.snapshots),
            &self.models[m].name,
        );
        let name = snapshot::snapshot_name(&case.key);
        let existed = dir.join(format!("{name}.snap")).is_file();
        let origin = crate::snapshot_origin::origin(
            &self.config.root,
            &self.cases[c].path,
            &case.key,
            &self.models[m].name,
        );
        match snapshot::assert_matches(&dir, &name, &snapshot::render(outcome), &origin) {
            Ok(()) => (TrialResult::PASSED, Ok(())),
            Err(e) if existed => (TrialResult::failed(TrialFailure::SnapshotMismatch), Err(e)),
            Err(e) => (TrialResult::failed(TrialFailure::NoSnapshot), Err(e)),
        }
    }

    fn record(&self, outcome: CaseOutcome) {
        // A nextest test process records its trial in the run's folder instead (crate::run::nextest).
        if self.env.nextest.is_none()
            && let Err(e) = self.journal.record(&outcome)
        {
            // Said as it happens; the run fails when it writes its results at the end.
            eprintln!("warning: {e}");
        }
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(outcome);
    }

    /// Lock the results folder for this run. One run at a time writes a results folder: a
    /// second waits (saying so) rather than mix its journal into the first's. A nextest test
    /// process writes only its own trial's record elsewhere and takes no lock, so the processes
    /// of one nextest run never wait for each other; `codegen finish` takes it.
    pub(crate) fn lock_results(
        &self,
    ) -> Result<crate::provision::cache::DirLock, crate::provision::cache::FileError> {
        self.journal.lock(|dir| {
            eprintln!(
                "codegen: waiting for another run that writes to {} to finish (lock {})",
                dir.display(),
                dir.join(".lock").display()
            )
        })
    }

    /// The accepted verdicts for the cases of `model` that ran.
    fn baseline(&self, model: &ModelProfile, ran: &[&CaseOutcome]) -> Option<Baseline> {
        if !self.config.suite.snapshot {
            return None;
        }
        let dir = snapshot::snapshot_dir(
            &self.config.resolve(&self.config.suite.snapshots),
            &model.name,
        );
        let mut b = Baseline::default();
        for o in ran {
            if let Some(passed) = snapshot::accepted_verdict(&dir, &snapshot::snapshot_name(&o.key))
            {
                b.cases += 1;
                b.passed += passed as usize;
                // Paired verdicts for McNemar: only cases measured now.
                if o.error.is_none() {
                    match (passed, o.passed()) {
                        (true, false) => b.lost += 1,
                        (false, true) => b.gained += 1,
                        _ => {}
                    }
                }
            }
        }
        (b.cases > 0).then_some(b)
    }

    /// What profile `m`'s source holds that no trial reports (rows matching no case of the
    /// suite, unreadable rows); nothing when the source never opened.
    fn source_warnings(&self, m: usize) -> Vec<String> {
        let Some(Ok(source)) = self.sources[m].get() else {
            return Vec::new();
        };
        let cases: Vec<&LoadedCase> = self.cases.iter().collect();
        source.warnings(&cases)
    }

    /// What each device's session of model `m` generated (empty unless it generated).
    fn devices(&self, m: usize) -> Vec<crate::outcome::DeviceUsage> {
        match self.sources[m].get() {
            // A session that generated nothing (every answer cached) has nothing to say.
            Some(Ok(source)) => source
                .devices()
                .into_iter()
                .filter(|d| d.sequences > 0)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Where, under the results folder, a run of part of the suite (a libtest filter or `--skip`)
/// writes its files, so the full run's summaries are not replaced by a few cases'.
pub const FILTERED_DIR: &str = "filtered";

impl Harness {
    /// A run of part of the suite (not a shard's, not a nextest process's) writes its files
    /// beside the full run's, under [`FILTERED_DIR`], instead of replacing them.
    pub(crate) fn write_filtered_apart(&mut self, args: &Arguments) {
        if args.list || self.env.nextest.is_some() || self.shard.is_some() || !self.filtered(args) {
            return;
        }
        let dir = self.journal.dir().join(FILTERED_DIR);
        eprintln!(
            "codegen: a filtered run: results go to {} (the full run's files are kept)",
            dir.display()
        );
        self.journal = Journal::new(&dir);
    }

    /// Whether libtest's filter leaves out some of this run's trials but not all of them.
    fn filtered(&self, args: &Arguments) -> bool {
        let (mut selected_any, mut left_out) = (false, false);
        for model in &self.models {
            for case in &self.cases {
                if self.shard.is_some_and(|s| !s.contains(&case.key)) {
                    continue;
                }
                match selected(args, &Self::trial_name(model, case)) {
                    true => selected_any = true,
                    false => left_out = true,
                }
            }
        }
        selected_any && left_out
    }
}

/// Does libtest's filter select `name`?
pub(crate) fn selected(args: &Arguments, name: &str) -> bool {
    let matches = |pat: &str| {
        if args.exact {
            name == pat
        } else {
            name.contains(pat)
        }
    };
    if args.ignored {
        return false;
    }
    if let Some(filter) = &args.filter
        && !matches(filter)
    {
        return false;
    }
    !args.skip.iter().any(|s| matches(s))
}

/// How to run a suite.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The project root: relative paths in the config resolve against it.
    pub root: PathBuf,
    /// The config file (default `<root>/harness/codegen.toml`).
    pub config: Option<PathBuf>,
    /// Model profiles to run by name (default: the enabled ones).
    pub models: Option<Vec<String>>,
    /// Run only this shard of the cases (`CODEGEN_SHARD`, `codegen run --shard`).
    pub shard: Option<Shard>,
    /// How ONNX models open (lazily in a cargo-nextest test process).
    pub loading: Loading,
    /// The environment, read once by the entry point.
    pub env: Env,
}

impl RunOptions {
    /// The config file: the one named (relative to the root), else `harness/codegen.toml`.
    pub fn config_path(&self) -> PathBuf {
        match &self.config {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => self.root.join(p),
            None => self.root.join(crate::config::DEFAULT_CONFIG),
        }
    }

    /// The results folder the config names (`[suite] results`); the default one when there is
    /// no config file at all.
    pub fn results_dir(&self) -> Result<PathBuf, ConfigError> {
        let path = self.config_path();
        match path.exists() {
            true => Ok(Config::load(&path, &self.root)?.results_dir()),
            false => Ok(self.root.join(crate::config::DEFAULT_RESULTS)),
        }
    }

    /// Options taken from the environment (`CODEGEN_CONFIG`, `CODEGEN_MODELS` and the rest).
    pub fn from_env(root: &Path, env: Env) -> RunOptions {
        RunOptions {
            root: root.to_path_buf(),
            config: env.config.clone(),
            models: env.models.clone(),
            shard: env.shard,
            // Lazily everywhere: a run whose generations are all cached loads no model, so
            // its files do not depend on whether (or how fast) a model was loaded, and merged
            // shards equal an unsharded run. A miss loads the model for the whole batch.
            loading: Loading::Lazy,
            env,
        }
    }
}
