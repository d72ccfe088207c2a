//! Work done before the trials run: every selected request handed to its source at once (so an
//! engine batches all of them), and expected values and timeouts computed while models generate.

use std::sync::Arc;

use super::Harness;
use crate::case::Case;
use crate::engine::{AcceptedOutput, Request};
use crate::prompt::Prompt;

/// Evaluate expected values and calibrate timeouts of the selected cases on a few background
/// threads while the models generate (both are per case, whatever the completion).
pub(crate) fn warm_evaluator(harness: &Arc<Harness>, requests: &[(usize, usize)]) {
    const THREADS: usize = 4;
    let mut cases: Vec<usize> = requests.iter().map(|(_, c)| *c).collect();
    cases.sort_unstable();
    cases.dedup();
    let cases = Arc::new(cases);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..THREADS.min(cases.len()) {
        let (harness, cases, next) = (Arc::clone(harness), Arc::clone(&cases), Arc::clone(&next));
        let warm = move || {
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&c) = cases.get(k) else { break };
                if let Ok(case) = &harness.cases[c].case {
                    harness.evaluator.warm(case);
                }
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name(format!("codegen-warm-{i}"))
            .spawn(warm)
        {
            eprintln!("warning: failed to start a warm-up thread: {e}");
        }
    }
}

/// Hand every selected request to its source before the trials run, so that an engine can
/// batch all of them rather than the few that `--test-threads` lets run at once.
pub(crate) fn prepare_sources(harness: &Harness, requests: &[(usize, usize)]) {
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
        let samples = harness.samples(m);
        let protocol = &harness.models[m].prompt;
        let prompts: Vec<Prompt> = cases
            .iter()
            .map(|c| Prompt::for_case_with(c, protocol))
            .collect();
        let accepted: Vec<Option<AcceptedOutput>> =
            cases.iter().map(|c| harness.accepted(m, c)).collect();
        let reqs: Vec<Request<'_>> = cases
            .iter()
            .zip(&prompts)
            .zip(&accepted)
            .map(|((case, prompt), accepted)| {
                Request::new(case, prompt, samples, accepted.as_ref())
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

/// Wait until every selected request's completions exist. With `--test-threads 1` libtest
/// writes `test name ... ` before a trial and its verdict after it, so a progress line written
/// while the first trial waits for its completion would finish libtest's half line: the trials
/// start once generation has ended instead (with one thread they score one at a time anyway).
pub(crate) fn wait_for_generation(harness: &Harness, requests: &[(usize, usize)]) {
    for &(m, c) in requests {
        let (Ok(source), Ok(case)) = (harness.source(m), &harness.cases[c].case) else {
            continue;
        };
        let prompt = Prompt::for_case_with(case, &harness.models[m].prompt);
        let accepted = harness.accepted(m, case);
        let request = Request::new(case, &prompt, harness.samples(m), accepted.as_ref());
        // The trial asks again and reports any error; here it only waits.
        let _ = source.complete(&request);
    }
}
