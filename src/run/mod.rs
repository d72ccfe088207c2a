//! Running a suite: the libtest-mimic [`harness`] that `tests/codegen.rs` calls, its
//! cargo-nextest mode ([`nextest`]), one [`shard`] of N and [`merge`] of the shards, a
//! configured [`profile`] turned into a completion source, the run's [`timeline`], and the
//! environment ([`env`], read once at the entry points).

pub mod env;
pub mod harness;
pub mod merge;
pub mod nextest;
pub mod profile;
pub mod shard;
pub mod timeline;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Trial};

use crate::snapshot;
use env::Env;
use harness::{
    Harness, RunOptions, prepare_sources, quiet_snapshot_panics, selected,
    stop_when_parent_is_gone, warm_evaluator,
};

/// Entry point of `tests/codegen.rs`: run the suite found under `root`, configured by the
/// environment, with libtest's command-line arguments.
pub fn main(root: &Path) -> ExitCode {
    match Env::from_process() {
        Ok(env) => run(&RunOptions::from_env(root, env), Arguments::from_args()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(101)
        }
    }
}

/// One trial per case x model of this run (another shard's cases are left out), and the
/// (model, case) pairs libtest's filter selects, which are generated before the trials run.
fn trials(harness: &Arc<Harness>, args: &Arguments) -> (Vec<Trial>, Vec<(usize, usize)>) {
    let mut trials = Vec::new();
    let mut requests: Vec<(usize, usize)> = Vec::new();
    for (m, model) in harness.models.iter().enumerate() {
        for (c, case) in harness.cases.iter().enumerate() {
            if harness.shard.is_some_and(|s| !s.contains(&case.key)) {
                continue; // another shard's case: not listed, not generated
            }
            let name = Harness::trial_name(model, case);
            if !args.list && selected(args, &name) {
                requests.push((m, c));
            }
            let h = Arc::clone(harness);
            trials.push(Trial::test(name, move || {
                let result = h.run_trial(m, c);
                match h.env.nextest.is_some() {
                    true => nextest::record_trial(&h, m, c, result),
                    false => result,
                }
            }));
        }
    }
    (trials, requests)
}

/// Run a suite: build the trials, run them with libtest-mimic, print the summary, apply the
/// gate. Exit code 101 when a trial failed or the gate failed.
///
/// Call it before the process starts any thread: it adjusts insta's output through the environment.
pub fn run(options: &RunOptions, args: Arguments) -> ExitCode {
    snapshot::silence_insta_output(options.env.insta_output_set);
    quiet_snapshot_panics();
    stop_when_parent_is_gone();
    let mut harness = match Harness::load(options) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(101);
        }
    };
    harness.write_filtered_apart(&args);
    let harness = Arc::new(harness);
    let (trials, requests) = trials(&harness, &args);
    let measures = !args.list && (!requests.is_empty() || harness.shard.is_some());
    let _results_lock = match measures && harness.env.nextest.is_none() {
        true => match harness.lock_results() {
            Ok(lock) => Some(lock),
            Err(e) => {
                eprintln!("error: {e}; nothing was run");
                return ExitCode::from(101);
            }
        },
        false => None,
    };
    if !args.list {
        prepare_sources(&harness, &requests);
        warm_evaluator(&harness, &requests);
        if args.test_threads == Some(1) {
            harness::wait_for_generation(&harness, &requests);
        }
    }
    if !args.list
        && let Some(why) = harness.nothing_to_measure()
    {
        if harness.config.suite.allow_empty {
            eprintln!("codegen: nothing measured ({why}); allowed by [suite] allow_empty");
            return ExitCode::SUCCESS;
        }
        eprintln!("error: nothing to measure: {why}");
        return ExitCode::from(101);
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if args.list || harness.env.nextest.is_some() {
        // A nextest test process ran its trial and recorded it: `codegen finish` summarises,
        // writes and gates the whole run.
        return conclusion.exit_code();
    }
    if requests.is_empty() && harness.shard.is_none() {
        // A filter cargo passed to every test binary (`cargo test some_unit_test`) matched no
        // trial here: nothing ran, so nothing is summarised, written or gated.
        eprintln!(
            "codegen: the filter matched none of the {} trials; nothing measured, no results written",
            harness.models.len() * harness.cases.len()
        );
        return conclusion.exit_code();
    }
    let failed_trials = match harness.config.suite.snapshot {
        true => conclusion.num_failed as usize,
        false => 0,
    };
    let gate_ok = harness.finish(failed_trials);
    // With snapshots a trial is a comparison and any mismatch fails the run; without, trials
    // are measurements and the gate alone decides.
    let trials_failed = harness.config.suite.snapshot && conclusion.has_failed();
    if trials_failed || !gate_ok {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}
