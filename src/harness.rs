//! The libtest-mimic glue: build one trial per case x model from `harness/codegen.toml`, run
//! them like any cargo test (`--list`, filters, `--exact`, `--skip`, `--test-threads`), then
//! print the summary and apply the gate.
//!
//! Nothing heavy happens while building trials: `--list` parses case files only, and models and
//! Python start on first use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};

use crate::case::{self, Case, Expectation, LoadedCase};
use crate::config::{Config, ModelProfile, SourceConfig};
use crate::engine::replay::{ReferenceSource, ReplaySource};
use crate::engine::{CompletionSource, Request};
use crate::extract::extract;
use crate::gate::{self, Baseline};
use crate::prompt::Prompt;
use crate::report::{self, Journal};
use crate::sandbox::{Job, Sandbox, TimeoutPolicy, WorkerSandbox, calibrate};
use crate::score::{self, CaseOutcome, Confidence, SampleOutcome, Summary};
use crate::snapshot;
use crate::syntax;
use crate::value::Value;

/// Environment variable naming the config file (default `harness/codegen.toml`).
pub const CONFIG_ENV: &str = "CODEGEN_CONFIG";
/// Environment variable selecting model profiles by name (comma-separated).
pub const MODELS_ENV: &str = "CODEGEN_MODELS";

type Shared<T> = OnceLock<Result<T, String>>;
/// Expected values of one case, evaluated once and shared by every model's trial.
type ExpectedCell = Arc<Shared<Vec<Option<Value>>>>;

/// Everything the trials share.
pub struct Harness {
    config: Config,
    cases: Vec<LoadedCase>,
    models: Vec<ModelProfile>,
    sandbox: Shared<Arc<dyn Sandbox>>,
    sources: Vec<Shared<Arc<dyn CompletionSource>>>,
    expected: Mutex<HashMap<String, ExpectedCell>>,
    timeouts: Mutex<HashMap<String, Arc<OnceLock<Duration>>>>,
    outcomes: Mutex<Vec<CaseOutcome>>,
    journal: Journal,
}

impl Harness {
    /// Load the config and the case files (no Python, no models).
    pub fn load(options: &RunOptions) -> Result<Harness, String> {
        let root = options.root.as_path();
        let config_path = options
            .config
            .clone()
            .map(|p| if p.is_absolute() { p } else { root.join(p) })
            .unwrap_or_else(|| root.join("harness/codegen.toml"));
        let config = Config::load(&config_path, root).map_err(|e| e.to_string())?;
        let selection = options.models.clone();
        let models: Vec<ModelProfile> = config
            .selected_models(selection.as_deref())
            .map_err(|e| e.to_string())?
            .into_iter()
            .cloned()
            .collect();
        let cases_dir = config.resolve(&config.suite.cases);
        let cases = case::load_all(&cases_dir)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|c| {
                !config
                    .suite
                    .exclude
                    .iter()
                    .any(|x| c.category == *x || c.category.starts_with(&format!("{x}/")))
            })
            .collect();
        let journal = Journal::new(&config.resolve(&config.suite.results));
        Ok(Harness {
            sources: models.iter().map(|_| OnceLock::new()).collect(),
            config,
            cases,
            models,
            sandbox: OnceLock::new(),
            expected: Mutex::new(HashMap::new()),
            timeouts: Mutex::new(HashMap::new()),
            outcomes: Mutex::new(Vec::new()),
            journal,
        })
    }

    fn trial_name(model: &ModelProfile, case: &LoadedCase) -> String {
        let id = case.key.rsplit('/').next().unwrap_or(&case.key);
        format!(
            "{}::{}::{}",
            model.name,
            case.category.replace('/', "::"),
            id
        )
    }

    fn sandbox(&self) -> Result<Arc<dyn Sandbox>, String> {
        self.sandbox
            .get_or_init(|| {
                WorkerSandbox::new(&self.config.sandbox)
                    .map(|s| Arc::new(s) as Arc<dyn Sandbox>)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    fn source(&self, m: usize) -> Result<Arc<dyn CompletionSource>, String> {
        self.sources[m]
            .get_or_init(|| {
                let model = &self.models[m];
                match model.source_config()? {
                    SourceConfig::Reference => {
                        Ok(Arc::new(ReferenceSource) as Arc<dyn CompletionSource>)
                    }
                    SourceConfig::Replay { path } => {
                        ReplaySource::open(&self.config.resolve(&path))
                            .map(|s| Arc::new(s) as Arc<dyn CompletionSource>)
                            .map_err(|e| e.to_string())
                    }
                    SourceConfig::Onnx {
                        model: name,
                        device,
                        precision,
                    } => open_engine(
                        &self.config,
                        &name,
                        &device,
                        &precision,
                        self.config.generation_for(model),
                    ),
                }
            })
            .clone()
    }

    /// The evaluated expected values of a case (once per case, shared by every model).
    fn expected(&self, case: &Case) -> Result<Vec<Option<Value>>, String> {
        let cell = self
            .expected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(case.key.clone())
            .or_default()
            .clone();
        cell.get_or_init(|| {
            let exprs: Vec<String> = case
                .tests
                .iter()
                .filter_map(|t| match &t.expect {
                    Expectation::Value(e) => Some(e.clone()),
                    Expectation::Raises(_) => None,
                })
                .collect();
            let mut values =
                self.sandbox()?
                    .evaluate_expected(&exprs)
                    .map_err(|e| {
                        // Name the test whose expected value failed, like a case-file error.
                        if let crate::sandbox::SandboxError::Expected { expr, .. } = &e
                            && let Some((i, t)) = case.tests.iter().enumerate().find(
                                |(_, t)| matches!(&t.expect, Expectation::Value(x) if x == expr),
                            )
                        {
                            return format!(
                                "{}:{}: field `tests[{i}].expected`: {e}",
                                case.path.display(),
                                t.line
                            );
                        }
                        format!("{}: {e}", case.path.display())
                    })?
                    .into_iter();
            Ok(case
                .tests
                .iter()
                .map(|t| match t.expect {
                    Expectation::Value(_) => values.next(),
                    Expectation::Raises(_) => None,
                })
                .collect())
        })
        .clone()
    }

    /// The per-call deadline of a case: its own `timeout_ms`, else calibrated once from its
    /// reference solution's runtime on this machine (with the configured floor and factor), so
    /// a slow machine does not turn correct answers into timeouts.
    fn test_timeout(&self, case: &Case, sandbox: &Arc<dyn Sandbox>) -> Duration {
        if let Some(ms) = case.timeout_ms {
            return Duration::from_millis(ms);
        }
        let policy = TimeoutPolicy::from_config(&self.config.sandbox);
        let cell = self
            .timeouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(case.key.clone())
            .or_default()
            .clone();
        *cell.get_or_init(|| {
            let Some(reference) = &case.reference else {
                return policy.ceiling;
            };
            let prompt = Prompt::for_case(case);
            let extraction = extract(reference, &prompt, &case.entry_point, &test_names(case));
            let job = self.job(case, extraction.code, policy.ceiling);
            calibrate(sandbox.as_ref(), &job, &policy).unwrap_or(policy.ceiling)
        })
    }

    fn job(&self, case: &Case, program: String, test_timeout: Duration) -> Job {
        Job {
            program,
            setup: case.setup.clone(),
            entry_point: case.entry_point.clone(),
            calls: case.tests.iter().map(|t| t.call.clone()).collect(),
            check: case.check.clone(),
            test_timeout,
            load_timeout: Duration::from_millis(self.config.sandbox.load_timeout_ms),
        }
    }

    /// Generate, extract, check, run and score one case for one model.
    pub fn evaluate(&self, m: usize, case: &Case) -> CaseOutcome {
        let model = &self.models[m];
        let prompt = Prompt::for_case(case);
        let mut outcome = CaseOutcome {
            key: case.key.clone(),
            category: case.category.clone(),
            model: model.name.clone(),
            mode: prompt.mode_name().to_string(),
            samples: Vec::new(),
            error: None,
        };
        let result = (|| -> Result<Vec<SampleOutcome>, String> {
            let expected = self.expected(case)?;
            let sandbox = self.sandbox()?;
            let samples = self.config.generation_for(model).samples.max(1);
            let completions = self
                .source(m)?
                .complete(&Request {
                    case,
                    prompt: &prompt,
                    samples,
                })
                .map_err(|e| e.to_string())?;
            let test_timeout = self.test_timeout(case, &sandbox);
            let test_names = test_names(case);
            let mut out = Vec::with_capacity(completions.len());
            for completion in completions {
                let extraction = extract(&completion.text, &prompt, &case.entry_point, &test_names);
                let syntax = syntax::check(&extraction.code);
                let job = self.job(case, extraction.code.clone(), test_timeout);
                let report = sandbox.execute(&job).map_err(|e| e.to_string())?;
                let (load, tests) = score::judge(case, &expected, &report);
                let passed = load == score::LoadVerdict::Ok
                    && !tests.is_empty()
                    && tests.iter().all(|t| t.verdict.is_pass());
                out.push(SampleOutcome {
                    extraction,
                    syntax,
                    load,
                    tests,
                    passed,
                    confidence: completion.tokens.as_ref().and_then(Confidence::from_trace),
                    finish_reason: completion.finish_reason.clone(),
                    timing: completion.timing.clone(),
                    tokens: completion.tokens.clone(),
                });
            }
            Ok(out)
        })();
        match result {
            Ok(samples) => outcome.samples = samples,
            Err(e) => outcome.error = Some(e),
        }
        outcome
    }

    fn run_trial(&self, m: usize, c: usize) -> Result<(), Failed> {
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
                    samples: Vec::new(),
                    error: Some(e.to_string()),
                });
                return Err(e.to_string().into());
            }
        };
        let outcome = self.evaluate(m, case);
        self.record(outcome.clone());
        if let Some(e) = &outcome.error {
            // A harness-level failure (source, expected values) is never an accepted outcome.
            return Err(format!("failed to evaluate {}: {e}", case.key).into());
        }
        if self.config.suite.snapshot {
            let dir = snapshot::snapshot_dir(
                &self.config.resolve(&self.config.suite.snapshots),
                &model.name,
            );
            snapshot::assert_matches(
                &dir,
                &snapshot::snapshot_name(&case.key),
                &snapshot::render(&outcome),
            )?;
            Ok(())
        } else if outcome.passed() {
            Ok(())
        } else {
            let mut msg = format!("{} failed", case.key);
            for (i, s) in outcome.samples.iter().enumerate() {
                if s.load != score::LoadVerdict::Ok {
                    msg.push_str(&format!("\n  sample {}: load {}", i + 1, s.load.describe()));
                }
                for t in s.tests.iter().filter(|t| !t.verdict.is_pass()) {
                    msg.push_str(&format!(
                        "\n  sample {}: {} -> {}",
                        i + 1,
                        t.label,
                        t.verdict.describe()
                    ));
                }
            }
            Err(msg.into())
        }
    }

    fn record(&self, outcome: CaseOutcome) {
        if let Err(e) = self.journal.record(&outcome) {
            eprintln!("warning: failed to journal results: {e}");
        }
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(outcome);
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
        let mut b = Baseline {
            cases: 0,
            passed: 0,
        };
        for o in ran {
            if let Some(passed) = snapshot::accepted_verdict(&dir, &snapshot::snapshot_name(&o.key))
            {
                b.cases += 1;
                b.passed += passed as usize;
            }
        }
        (b.cases > 0).then_some(b)
    }

    /// Summaries, tables and the gate after the trials ran. Returns false when the gate failed.
    fn finish(&self) -> bool {
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        let isolation = self
            .sandbox
            .get()
            .and_then(|s| s.as_ref().ok())
            .map(|s| s.isolation())
            .unwrap_or_default();
        let mut ok = true;
        for model in &self.models {
            let ran: Vec<&CaseOutcome> =
                outcomes.iter().filter(|o| o.model == model.name).collect();
            if ran.is_empty() {
                continue;
            }
            let summary = Summary::of(&model.name, &outcomes);
            let baseline = self.baseline(model, &ran);
            let failures = gate::evaluate(&summary, self.config.gate_for(model), baseline);
            println!();
            print!("{}", report::summary_table(&summary, baseline));
            if !isolation.is_empty() {
                println!("  sandbox: {isolation}");
            }
            if let Err(e) = self
                .journal
                .write_reports(&summary, &outcomes, baseline, &failures)
            {
                eprintln!("warning: failed to write reports: {e}");
            }
            match self
                .journal
                .write_summary(&summary, &isolation, baseline, &failures)
            {
                Ok(path) => println!("  results: {}", path.display()),
                Err(e) => eprintln!("warning: failed to write the summary: {e}"),
            }
            for f in &failures {
                println!("  {f}");
                ok = false;
            }
            if failures.is_empty() {
                println!("  gate: passed");
            }
        }
        ok
    }
}

/// Names the case's tests use (a check block may call helpers the prompt defined).
fn test_names(case: &Case) -> std::collections::BTreeSet<String> {
    let mut names = crate::extract::names_used(case.check.as_deref().unwrap_or(""));
    for t in &case.tests {
        names.extend(crate::extract::names_used(&t.call));
    }
    names
}

/// Open the ONNX Runtime engine for a profile: resolve the device, make sure the model folder
/// exists (a default model is downloaded and exported on first use), and load it.
fn open_engine(
    config: &Config,
    model: &str,
    device: &str,
    precision: &str,
    settings: crate::engine::GenerationSettings,
) -> Result<Arc<dyn CompletionSource>, String> {
    use crate::models::{Precision, Target};
    use crate::runtime::Device;
    let mut device: Device = device
        .parse()
        .map_err(|e: crate::device::ParseError| e.to_string())?;
    if device == Device::Auto {
        // GroupQueryAttention runs fp16 on CUDA and fp32 on CPU, so the export follows the device.
        device = if crate::runtime::nvidia_driver_present() {
            Device::Cuda
        } else {
            Device::Cpu
        };
        eprintln!("codegen: device auto -> {device}");
    }
    let target = if device == Device::Cuda {
        Target::Cuda
    } else {
        Target::Cpu
    };
    let precision: Precision = precision.parse().map_err(|e| format!("{e}"))?;
    // A relative folder or file is relative to the project root; a bare name is a default model.
    let resolved = config.resolve(Path::new(model));
    let name_or_path = if resolved.exists() {
        resolved.to_string_lossy().into_owned()
    } else {
        model.to_string()
    };
    let dir = crate::models::ensure_model(&name_or_path, target, precision)
        .map_err(|e| format!("failed to prepare model `{model}`: {e}"))?;
    crate::engine::onnx::open(&dir, device, settings)
        .map(|s| Arc::new(s) as Arc<dyn CompletionSource>)
        .map_err(|e| e.to_string())
}

/// Does libtest's filter select `name`?
fn selected(args: &Arguments, name: &str) -> bool {
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
    /// Model profiles to run by name, comma-separated (default: the enabled ones).
    pub models: Option<String>,
}

impl RunOptions {
    /// Options from the environment: `CODEGEN_CONFIG` and `CODEGEN_MODELS`.
    pub fn from_env(root: &Path) -> RunOptions {
        RunOptions {
            root: root.to_path_buf(),
            config: std::env::var_os(CONFIG_ENV).map(PathBuf::from),
            models: std::env::var(MODELS_ENV).ok(),
        }
    }
}

/// Entry point of `tests/codegen.rs`: run the suite found under `root`, configured by the
/// environment, with libtest's command-line arguments.
pub fn main(root: &Path) -> ExitCode {
    run(&RunOptions::from_env(root), Arguments::from_args())
}

/// Run a suite: build the trials, run them with libtest-mimic, print the summary, apply the
/// gate. Exit code 101 when a trial failed or the gate failed.
///
/// Call it before the process starts any thread: it adjusts insta's output through the environment.
pub fn run(options: &RunOptions, args: Arguments) -> ExitCode {
    snapshot::silence_insta_output();
    quiet_snapshot_panics();
    let harness = match Harness::load(options) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(101);
        }
    };
    let mut trials = Vec::new();
    let mut requests: Vec<(usize, usize)> = Vec::new();
    for (m, model) in harness.models.iter().enumerate() {
        for (c, case) in harness.cases.iter().enumerate() {
            let name = Harness::trial_name(model, case);
            if !args.list && selected(&args, &name) {
                requests.push((m, c));
            }
            let h = Arc::clone(&harness);
            trials.push(Trial::test(name, move || h.run_trial(m, c)));
        }
    }
    if !args.list {
        prepare_sources(&harness, &requests);
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if args.list {
        return conclusion.exit_code();
    }
    let gate_ok = harness.finish();
    if conclusion.has_failed() || !gate_ok {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}

/// insta reports a snapshot mismatch by printing the diff and then panicking; the panic message
/// and backtrace add nothing to the diff, so they are not printed. Other panics are.
fn quiet_snapshot_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let from_insta = info.location().is_some_and(|l| l.file().contains("insta"));
        if !from_insta {
            default_hook(info);
        }
    }));
}

/// Hand every selected request to its source before the trials run, so that an engine can
/// batch all of them rather than the few that `--test-threads` lets run at once.
fn prepare_sources(harness: &Harness, requests: &[(usize, usize)]) {
    for m in 0..harness.models.len() {
        let cases: Vec<&Case> = requests
            .iter()
            .filter(|(mm, _)| *mm == m)
            .filter_map(|(_, c)| harness.cases[*c].case.as_ref().ok())
            .collect();
        if cases.is_empty() {
            continue;
        }
        let Ok(source) = harness.source(m) else {
            continue; // each trial reports the error
        };
        let samples = harness
            .config
            .generation_for(&harness.models[m])
            .samples
            .max(1);
        let prompts: Vec<Prompt> = cases.iter().map(|c| Prompt::for_case(c)).collect();
        let reqs: Vec<Request<'_>> = cases
            .iter()
            .zip(&prompts)
            .map(|(case, prompt)| Request {
                case,
                prompt,
                samples,
            })
            .collect();
        if let Err(e) = source.prepare(&reqs) {
            eprintln!(
                "warning: model `{}` could not prepare its batch: {e}",
                harness.models[m].name
            );
        }
    }
}
