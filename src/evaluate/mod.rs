//! The per-case flow: ask a completion source for a case's samples, extract each program,
//! check its syntax, run it in the sandbox and judge it. [`Evaluator`] owns what the flow
//! shares across cases (the sandbox, evaluated expected values, calibrated timeouts) and
//! produces the [`CaseOutcome`] that snapshots, reports and the gate read.

pub mod calibrate;
pub mod confidence;
pub mod extract;
pub mod failure;
pub mod sandbox;
pub mod value;
pub mod verdict;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use confidence::Confidence;

use crate::case::{Case, Expectation};
use crate::engine::{
    AcceptedOutput, CompletionSource, FinishReason, Followed, Request, Timing, TokenTrace,
};
use crate::prompt::{Prompt, PromptProtocol};
use crate::syntax::{self, SyntaxReport};
use calibrate::{TimeoutPolicy, calibrate_expecting};
use extract::{Extraction, extract, names_used};
use failure::Failure;
use sandbox::{Job, Sandbox, SandboxConfig, SandboxError, WorkerSandbox};
use value::Value;
use verdict::{LoadVerdict, TestResult};

/// Why a case could not be evaluated (as opposed to a program that failed its tests).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvalError {
    #[error("failed to start the sandbox: {0}")]
    SandboxStart(String),
    #[error("{path}:{line}: field `tests[{index}].expected`: {message}")]
    Expected {
        path: String,
        line: usize,
        index: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    ExpectedValues { path: String, message: String },
    #[error("{0}")]
    Source(String),
    #[error("failed to run the program in the sandbox: {0}")]
    Execute(String),
}

type Shared<T> = Arc<OnceLock<Result<T, EvalError>>>;

/// Runs the per-case flow; shared by every trial of a run.
pub struct Evaluator {
    config: SandboxConfig,
    sandbox: OnceLock<Result<Arc<dyn Sandbox>, EvalError>>,
    /// Expected values of each case, evaluated once and shared by every model.
    expected: Mutex<HashMap<String, Shared<Vec<Option<Value>>>>>,
    timeouts: Mutex<HashMap<String, Arc<OnceLock<Duration>>>>,
    /// Tokens under this probability are low-confidence (`[analysis] low_prob_threshold`).
    low_prob_threshold: f64,
}

impl Evaluator {
    /// An evaluator that starts the worker sandbox on first use.
    pub fn new(config: SandboxConfig) -> Evaluator {
        Evaluator {
            config,
            sandbox: OnceLock::new(),
            expected: Mutex::new(HashMap::new()),
            timeouts: Mutex::new(HashMap::new()),
            low_prob_threshold: confidence::DEFAULT_LOW_PROB_THRESHOLD,
        }
    }

    /// Count tokens under `threshold` as low-confidence (default
    /// [`confidence::DEFAULT_LOW_PROB_THRESHOLD`]).
    pub fn with_low_prob_threshold(mut self, threshold: f64) -> Evaluator {
        self.low_prob_threshold = threshold;
        self
    }

    /// An evaluator over a given sandbox (tests use a fake one).
    pub fn with_sandbox(config: SandboxConfig, sandbox: Arc<dyn Sandbox>) -> Evaluator {
        let evaluator = Evaluator::new(config);
        let _ = evaluator.sandbox.set(Ok(sandbox));
        evaluator
    }

    fn sandbox(&self) -> Result<Arc<dyn Sandbox>, EvalError> {
        self.sandbox
            .get_or_init(|| {
                WorkerSandbox::new(&self.config)
                    .map(|s| Arc::new(s) as Arc<dyn Sandbox>)
                    .map_err(|e| EvalError::SandboxStart(e.to_string()))
            })
            .clone()
    }

    /// The isolation in force, once the sandbox has started (empty before).
    pub fn isolation(&self) -> String {
        self.sandbox
            .get()
            .and_then(|s| s.as_ref().ok())
            .map(|s| s.isolation())
            .unwrap_or_default()
    }

    /// Generate, extract, check, run and judge one case for one model, asked under the
    /// model profile's prompt protocol.
    pub fn evaluate(
        &self,
        case: &Case,
        model: &str,
        protocol: &PromptProtocol,
        source: &dyn CompletionSource,
        samples: usize,
        accepted: Option<&AcceptedOutput>,
    ) -> CaseOutcome {
        let prompt = Prompt::for_case_with(case, protocol);
        let mut outcome = CaseOutcome::new(case, model, &prompt);
        outcome.protocol = protocol.clone();
        match self.samples(case, &prompt, source, samples, accepted) {
            Ok(samples) => outcome.samples = samples,
            Err(e) => {
                outcome.generation_error = matches!(e, EvalError::Source(_));
                outcome.error = Some(e.to_string());
            }
        }
        outcome
    }

    fn samples(
        &self,
        case: &Case,
        prompt: &Prompt,
        source: &dyn CompletionSource,
        samples: usize,
        accepted: Option<&AcceptedOutput>,
    ) -> Result<Vec<SampleOutcome>, EvalError> {
        let expected = self.expected(case)?;
        let sandbox = self.sandbox()?;
        let completions = source
            .complete(&Request::new(case, prompt, samples.max(1), accepted))
            .map_err(|e| EvalError::Source(e.to_string()))?;
        let test_timeout = self.test_timeout(case, &sandbox);
        let test_names = test_names(case);
        let mut out = Vec::with_capacity(completions.len());
        for completion in completions {
            let extraction = extract(&completion.text, prompt, &case.entry_point, &test_names);
            let syntax = syntax::check(&extraction.code);
            let job = job(case, extraction.code.clone(), test_timeout, &self.config);
            let report = sandbox
                .execute(&job)
                .map_err(|e| EvalError::Execute(e.to_string()))?;
            let (load, tests) = verdict::judge(case, &expected, &report);
            let passed = load == LoadVerdict::Ok
                && !tests.is_empty()
                && tests.iter().all(|t| t.verdict.is_pass());
            let confidence = completion
                .tokens
                .as_ref()
                .and_then(|t| Confidence::from_trace(t, &extraction.code, self.low_prob_threshold));
            let mut sample = SampleOutcome {
                extraction,
                syntax,
                load,
                tests,
                passed,
                confidence,
                finish_reason: completion.finish_reason.clone(),
                timing: completion.timing.clone(),
                tokens: completion.tokens.clone(),
                failure: None,
                accept_key: completion.accept_key.clone(),
                followed: completion.followed,
            };
            sample.failure = failure::classify(&sample);
            out.push(sample);
        }
        Ok(out)
    }

    /// Do now what every model's trial of `case` shares: evaluate its expected values and
    /// calibrate its timeout. The harness calls it while the models generate, so that once a
    /// completion arrives only its own execution is left. Errors are left for the trial to
    /// report.
    pub fn warm(&self, case: &Case) {
        if self.expected(case).is_ok()
            && let Ok(sandbox) = self.sandbox()
        {
            self.test_timeout(case, &sandbox);
        }
    }

    /// The evaluated expected values of a case (once per case, shared by every model).
    fn expected(&self, case: &Case) -> Result<Vec<Option<Value>>, EvalError> {
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
            let mut values = self
                .sandbox()?
                .evaluate_expected(&exprs)
                .map_err(|e| expected_error(case, e))?
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
        let policy = TimeoutPolicy::from_config(&self.config);
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
            let job = job(case, extraction.code, policy.ceiling, &self.config);
            let raises: Vec<Option<String>> = case
                .tests
                .iter()
                .map(|t| match &t.expect {
                    Expectation::Raises(name) => Some(name.clone()),
                    Expectation::Value(_) => None,
                })
                .collect();
            calibrate_expecting(sandbox.as_ref(), &job, &raises, &policy).unwrap_or_else(|e| {
                // Said, not silent: the ceiling makes every timeout of this case that long.
                eprintln!(
                    "warning: failed to calibrate the timeout of {} from its reference ({e}); using the ceiling of {} ms",
                    case.key,
                    policy.ceiling.as_millis()
                );
                policy.ceiling
            })
        })
    }
}

/// Name the test whose expected value failed to evaluate, like a case-file error.
fn expected_error(case: &Case, e: SandboxError) -> EvalError {
    let path = case.path.display().to_string();
    if let SandboxError::Expected { expr, .. } = &e
        && let Some((index, t)) = case
            .tests
            .iter()
            .enumerate()
            .find(|(_, t)| matches!(&t.expect, Expectation::Value(x) if x == expr))
    {
        return EvalError::Expected {
            path,
            line: t.line,
            index,
            message: e.to_string(),
        };
    }
    EvalError::ExpectedValues {
        path,
        message: e.to_string(),
    }
}

fn job(case: &Case, program: String, test_timeout: Duration, config: &SandboxConfig) -> Job {
    Job {
        program,
        setup: case.setup.clone(),
        entry_point: case.entry_point.clone(),
        calls: case.tests.iter().map(|t| t.call.clone()).collect(),
        check: case.check.clone(),
        // The check block's helpers come from the trusted prompt, never from the candidate.
        prelude: case.check.as_ref().and_then(|_| case.prefix.clone()),
        test_timeout,
        load_timeout: Duration::from_millis(config.load_timeout_ms),
        stop_after_timeout: config.stop_after_timeout,
    }
}

/// Names the case's tests use (a check block may call helpers the prompt defined).
fn test_names(case: &Case) -> BTreeSet<String> {
    let mut names = names_used(case.check.as_deref().unwrap_or(""));
    for t in &case.tests {
        names.extend(names_used(&t.call));
    }
    names
}

/// Everything about one sample of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleOutcome {
    pub extraction: Extraction,
    pub syntax: SyntaxReport,
    pub load: LoadVerdict,
    pub tests: Vec<TestResult>,
    pub passed: bool,
    pub confidence: Option<Confidence>,
    pub finish_reason: Option<FinishReason>,
    /// Generation timings and memory (results only; never in snapshots).
    pub timing: Option<Timing>,
    /// The generated tokens with their probabilities (results only; for the HTML heatmap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenTrace>,
    /// Why the sample failed (none when it passed): class, first failing test, generated line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The key its output can be accepted under (greedy generations; see [`AcceptedOutput`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_key: Option<String>,
    /// How the generation followed the accepted output, when it was checked against one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<Followed>,
}

/// The outcome of one case for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseOutcome {
    pub key: String,
    pub category: String,
    pub model: String,
    pub mode: String,
    /// The profile's prompt protocol; left out of results when it is the harness's own.
    #[serde(
        default,
        skip_serializing_if = "PromptProtocol::is_default",
        deserialize_with = "crate::prompt::recorded_protocol"
    )]
    pub protocol: PromptProtocol,
    pub samples: Vec<SampleOutcome>,
    /// Set when the case could not be evaluated at all (bad case file, source failure).
    pub error: Option<String>,
    /// The error is the completion source's (generation failed), not the case's or sandbox's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generation_error: bool,
    /// How the case's trial ended (its snapshot), beside the model's verdict: set by the
    /// harness once the trial is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<crate::trial::TrialResult>,
}

impl CaseOutcome {
    /// An outcome with no samples yet.
    pub fn new(case: &Case, model: &str, prompt: &Prompt) -> CaseOutcome {
        CaseOutcome {
            key: case.key.clone(),
            category: case.category.clone(),
            model: model.to_string(),
            mode: prompt.mode_name().to_string(),
            protocol: PromptProtocol::default(),
            samples: Vec::new(),
            error: None,
            generation_error: false,
            trial: None,
        }
    }

    pub fn passed_samples(&self) -> usize {
        self.samples.iter().filter(|s| s.passed).count()
    }

    /// Mean pass rate over samples (pass@1 estimate); 0 for an errored case.
    pub fn pass_at_1(&self) -> f64 {
        if self.samples.is_empty() {
            0.0
        } else {
            self.passed_samples() as f64 / self.samples.len() as f64
        }
    }

    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.samples.is_empty() && self.samples.iter().all(|s| s.passed)
    }
}
