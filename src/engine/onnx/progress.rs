//! What a run that generates says while it does, on stderr: a line when generation starts
//! (sequences and the token budget), the tokens per second and an ETA as it goes, and a line
//! when it ends. The ETA counts tokens, not sequences: a batch's rows finish together near its
//! end, so counting finished sequences reads "0 s" until the last moment. It is the token
//! budget left (each unfinished row's `max_new_tokens`, which a row that stops early gives
//! back) at the rate so far: an upper bound, written `ETA <= ...`.
//!
//! Progress is whole lines, one every few seconds, on a terminal as off one: libtest prints
//! its own lines on stdout from the moment the trials start (a finished row is scored at
//! once, while the batch's longer rows generate), and a bar redrawn in place would share their
//! lines. (With `--test-threads 1` libtest writes `test name ... ` before a trial and its
//! verdict after it: the harness then starts the trials once generation has ended.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a progress line is written.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The progress of one [`super::scheduler::Scheduler::run`].
pub(super) struct Progress {
    shown: bool,
    started: Instant,
    sequences: u64,
    done: AtomicU64,
    tokens: AtomicU64,
    /// Tokens the unfinished rows may still take plus those the finished ones took.
    budget: AtomicU64,
    last_line: Mutex<Instant>,
    /// The closing line was written.
    finished: AtomicBool,
}

fn secs(d: f64) -> String {
    match d {
        d if d >= 90.0 => format!("{}m{:02}s", (d / 60.0) as u64, (d % 60.0) as u64),
        d => format!("{d:.0} s"),
    }
}

impl Progress {
    /// Progress over `budgets` (each sequence's `max_new_tokens`); `shown`: say anything at all.
    pub(super) fn new(budgets: &[usize], shown: bool) -> Progress {
        let budget: u64 = budgets.iter().map(|&b| b as u64).sum();
        let sequences = budgets.len() as u64;
        if shown {
            eprintln!(
                "codegen: generating {sequences} sequence{} (up to {budget} tokens)",
                if sequences == 1 { "" } else { "s" }
            );
        }
        Progress {
            shown,
            started: Instant::now(),
            sequences,
            done: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            budget: AtomicU64::new(budget),
            last_line: Mutex::new(Instant::now()),
            finished: AtomicBool::new(false),
        }
    }

    /// `12/36 sequences, 1234 tokens, 45.6 tok/s, ETA <= 20 s`.
    fn status(&self) -> String {
        let tokens = self.tokens.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = tokens as f64 / elapsed;
        let left = self.budget.load(Ordering::Relaxed).saturating_sub(tokens);
        let eta = match rate > 0.0 {
            true => format!("ETA <= {}", secs(left as f64 / rate)),
            false => "ETA: measuring".into(),
        };
        format!(
            "{}/{} sequences, {tokens} tokens, {rate:.1} tok/s, {eta}",
            self.done.load(Ordering::Relaxed),
            self.sequences
        )
    }

    /// One token generated.
    pub(super) fn token(&self) {
        let all = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.shown || !all.is_multiple_of(16) {
            return;
        }
        self.maybe_line();
    }

    /// A progress line, when the last one is old enough.
    fn maybe_line(&self) {
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= LINE_EVERY {
            *last = Instant::now();
            eprintln!("codegen: generating: {}", self.status());
        }
    }

    /// A row finished after `generated` of its `max_new` tokens (or failed: `generated` 0).
    /// Called before the row is handed to its caller: the closing line is written before the
    /// last trial can print.
    pub(super) fn row_done(&self, generated: usize, max_new: usize) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let unused = max_new.saturating_sub(generated) as u64;
        self.budget.fetch_sub(
            unused.min(self.budget.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if done == self.sequences {
            self.finish();
        }
    }

    /// Generation ended: the closing line (once).
    pub(super) fn finish(&self) {
        if self.shown && !self.finished.swap(true, Ordering::Relaxed) {
            let tokens = self.tokens.load(Ordering::Relaxed);
            let elapsed = self.started.elapsed().as_secs_f64();
            eprintln!(
                "codegen: generated {} sequence{}, {tokens} tokens in {elapsed:.1} s ({:.1} tok/s)",
                self.sequences,
                if self.sequences == 1 { "" } else { "s" },
                tokens as f64 / elapsed.max(1e-9)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_counts_the_token_budget_left() {
        let p = Progress::new(&[100, 100], false);
        assert!(p.status().ends_with("ETA: measuring"), "{}", p.status());
        for _ in 0..50 {
            p.token();
        }
        // One row stopped after 10 tokens: 90 of its budget are given back.
        p.row_done(10, 100);
        assert_eq!(p.budget.load(Ordering::Relaxed), 110);
        let s = p.status();
        assert!(s.starts_with("1/2 sequences, 50 tokens, "), "{s}");
        assert!(s.contains("ETA <= "), "{s}");
        assert_eq!(secs(125.0), "2m05s");
        assert_eq!(secs(3.2), "3 s");
    }
}
