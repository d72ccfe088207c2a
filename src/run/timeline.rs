//! When a run's phases ended, for the line under the summary: how long setup took (config,
//! cases, models, sandbox), when the last completion arrived, when the last verdict came, and
//! which case took longest to score once its completion was there (the tail a timeout makes).
//! Generation and scoring overlap, so these are instants on one clock, not a sum of parts.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::{Completion, CompletionSource, Request, SourceError};

/// The run's clock and its marks.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    marks: Mutex<Marks>,
}

#[derive(Debug, Default, Clone)]
struct Marks {
    setup: Option<Duration>,
    last_completion: Option<Duration>,
    last_verdict: Option<Duration>,
    /// The case whose scoring took longest after its completion arrived, and how long.
    slowest_scoring: Option<(Duration, String)>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            marks: Mutex::new(Marks::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Marks) -> R) -> R {
        f(&mut self.marks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Setup ends when the first trial starts (the first call wins).
    pub fn setup_done(&self) {
        let now = self.start.elapsed();
        self.with(|m| {
            m.setup.get_or_insert(now);
        });
    }

    /// A completion arrived; returns when.
    pub fn completion(&self) -> Instant {
        let now = Instant::now();
        let at = now - self.start;
        self.with(|m| m.last_completion = m.last_completion.max(Some(at)));
        now
    }

    /// Case `key` has its verdict; its completion arrived at `completed` (if it had one).
    pub fn verdict(&self, key: &str, completed: Option<Instant>) {
        let now = Instant::now();
        let at = now - self.start;
        self.with(|m| {
            m.last_verdict = m.last_verdict.max(Some(at));
            if let Some(c) = completed {
                let scoring = now - c;
                if m.slowest_scoring.as_ref().is_none_or(|(d, _)| scoring > *d) {
                    m.slowest_scoring = Some((scoring, key.to_string()));
                }
            }
        });
    }

    /// "timeline: setup 1.9 s, last completion at 6.1 s, last verdict at 15.8 s; slowest to
    /// score: humaneval/HumanEval_1 9.8 s".
    #[cfg(test)]
    pub fn line(&self) -> String {
        render(&self.with(|m| m.clone()))
    }

    /// [`Timeline::line`], or `None` when nothing was marked.
    pub fn line_if_any(&self) -> Option<String> {
        let m = self.with(|m| m.clone());
        let empty = m.setup.is_none() && m.last_completion.is_none() && m.last_verdict.is_none();
        (!empty).then(|| render(&m))
    }
}

fn render(m: &Marks) -> String {
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let mut parts = Vec::new();
    if let Some(d) = m.setup {
        parts.push(format!("setup {}", s(d)));
    }
    if let Some(d) = m.last_completion {
        parts.push(format!("last completion at {}", s(d)));
    }
    if let Some(d) = m.last_verdict {
        parts.push(format!("last verdict at {}", s(d)));
    }
    let mut line = format!("timeline: {}", parts.join(", "));
    if let Some((d, key)) = &m.slowest_scoring {
        line.push_str(&format!("; slowest to score: {key} {}", s(*d)));
    }
    line
}

/// A source that notes on the timeline when each of its completions arrives.
pub struct Timed<'a> {
    pub inner: &'a dyn CompletionSource,
    pub timeline: &'a Timeline,
    /// When the last completion of this wrapper arrived (one wrapper per trial).
    pub arrived: Mutex<Option<Instant>>,
}

impl<'a> Timed<'a> {
    pub fn new(inner: &'a dyn CompletionSource, timeline: &'a Timeline) -> Timed<'a> {
        Timed {
            inner,
            timeline,
            arrived: Mutex::new(None),
        }
    }

    pub fn arrived(&self) -> Option<Instant> {
        *self.arrived.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CompletionSource for Timed<'_> {
    fn prepare(&self, requests: &[Request<'_>]) -> Result<(), SourceError> {
        self.inner.prepare(requests)
    }

    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError> {
        let out = self.inner.complete(request);
        *self.arrived.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.timeline.completion());
        out
    }

    fn describe(&self) -> BTreeMap<String, String> {
        self.inner.describe()
    }

    fn load_facts(&self) -> Option<crate::outcome::LoadFacts> {
        self.inner.load_facts()
    }

    fn warnings(&self, cases: &[&crate::case::LoadedCase]) -> Vec<String> {
        self.inner.warnings(cases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_each_mark_and_the_slowest_case() {
        let marks = Marks {
            setup: Some(Duration::from_millis(1900)),
            last_completion: Some(Duration::from_millis(6100)),
            last_verdict: Some(Duration::from_millis(15_800)),
            slowest_scoring: Some((Duration::from_millis(9800), "humaneval/HumanEval_1".into())),
        };
        assert_eq!(
            render(&marks),
            "timeline: setup 1.9 s, last completion at 6.1 s, last verdict at 15.8 s; slowest to score: humaneval/HumanEval_1 9.8 s"
        );
    }

    #[test]
    fn the_slowest_scoring_case_wins() {
        let t = Timeline::new();
        let early = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        t.verdict("a", Some(Instant::now()));
        t.verdict("b", Some(early));
        t.verdict("c", None);
        let line = t.line();
        assert!(line.contains("slowest to score: b "), "{line}");
    }
}
