//! Turns between the CUDA sessions of one process when several decode at once (one per GPU of
//! `device = "cuda:0,1"`, and the engines of several profiles of one run), and one engine at a
//! time on the GPUs.
//!
//! Why: ONNX Runtime captures a CUDA graph with `cudaStreamCaptureModeGlobal`. While one thread
//! captures, a CUDA call that may synchronise (an allocation, a copy) from any other thread of the
//! process invalidates the capture and fails both. So every session's GPU work happens under a
//! shared turn, and the decode steps that may capture take an exclusive one. A batch holds its
//! shared turn from setup to its last buffer's release and gives it up only between steps, when
//! it has nothing in flight. The gate is the process's, shared by every CUDA session; CPU
//! sessions capture nothing and take no lock.
//!
//! Engines of different profiles also take turns for a whole run of batches ([`engine_turn`]):
//! each gets the GPUs' free memory for its batches (budgets read when its turn starts) and its
//! sequences finish sooner than if all profiles shared the GPU at once.

use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

static CUDA_GATE: LazyLock<StepGate> = LazyLock::new(|| StepGate(Some(Arc::default())));

/// The lock, and a door every turn passes through. A session that gives up its shared turn at
/// the end of a step and asks again at once would otherwise barge past a session waiting for an
/// exclusive one (std's `RwLock` lets a new reader in between the last reader leaving and the
/// woken writer taking it): measured on two GPUs, the waiting session lost 1.7-1.9 s of its
/// 3.5-3.9 s batch. A writer keeps the door closed while the readers inside drain.
#[derive(Debug, Default)]
struct Gate {
    door: Mutex<()>,
    lock: RwLock<()>,
}
static CUDA_ENGINES: Mutex<()> = Mutex::new(());

/// The turn of one engine's batches on the GPUs (held by `Scheduler::run` under CUDA).
pub(crate) fn engine_turn() -> MutexGuard<'static, ()> {
    CUDA_ENGINES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decode steps of a captured batch that run exclusively: ONNX Runtime runs a graph id twice
/// before it captures it on the third run; one more for margin.
pub(crate) const CAPTURE_STEPS: usize = 4;

/// Shared by every session of one engine (cheap to clone).
#[derive(Debug, Clone, Default)]
pub(crate) struct StepGate(Option<Arc<Gate>>);

/// A held turn; dropping it gives it back.
#[must_use]
pub(crate) enum Turn<'a> {
    Free,
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

impl StepGate {
    /// A gate of its own (tests: the process's is [`StepGate::cuda`]).
    #[cfg(test)]
    fn new() -> StepGate {
        StepGate(Some(Arc::default()))
    }

    /// The gate every CUDA session of this process shares.
    pub fn cuda() -> StepGate {
        CUDA_GATE.clone()
    }

    /// A turn beside other sessions' ordinary steps.
    pub fn shared(&self) -> Turn<'_> {
        match &self.0 {
            None => Turn::Free,
            // A poisoned lock only means another session panicked mid-step; the lock itself
            // protects no data.
            Some(gate) => {
                let _door = gate.door.lock().unwrap_or_else(|p| p.into_inner());
                Turn::Shared(gate.lock.read().unwrap_or_else(|p| p.into_inner()))
            }
        }
    }

    /// A turn no other session's GPU work overlaps.
    pub fn exclusive(&self) -> Turn<'_> {
        match &self.0 {
            None => Turn::Free,
            Some(gate) => {
                let _door = gate.door.lock().unwrap_or_else(|p| p.into_inner());
                Turn::Exclusive(gate.lock.write().unwrap_or_else(|p| p.into_inner()))
            }
        }
    }

    /// The turn for decode step `step` of a batch (`captured`: it decodes with CUDA graphs).
    pub fn step(&self, step: usize, captured: bool) -> Turn<'_> {
        match captured && (1..=CAPTURE_STEPS).contains(&step) {
            true => self.exclusive(),
            false => self.shared(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn cpu_sessions_take_no_lock() {
        let gate = StepGate::default();
        let a = gate.exclusive();
        let b = gate.exclusive();
        assert!(matches!((a, b), (Turn::Free, Turn::Free)));
    }

    #[test]
    fn a_capture_step_excludes_every_other_session() {
        let gate = StepGate::new();
        let inside = AtomicUsize::new(0);
        let overlapped = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..2 {
                let (gate, inside, overlapped) = (gate.clone(), &inside, &overlapped);
                s.spawn(move || {
                    for step in 0..40 {
                        let captured = t == 0;
                        let turn = gate.step(step % 6, captured);
                        let exclusive = matches!(turn, Turn::Exclusive(_));
                        let others = inside.fetch_add(1, Ordering::SeqCst);
                        if exclusive && others > 0 {
                            overlapped.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(turn);
                    }
                });
            }
        });
        assert_eq!(overlapped.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_session_that_steps_without_pause_cannot_starve_a_capture() {
        // Two sessions step back to back, each holding its turn for its step's work; B starts
        // a moment later and wants its capture steps. B must get them within a few of A's
        // steps, not after A's whole batch (std's RwLock alone let A barge back in every time).
        let gate = StepGate::new();
        let a_steps = AtomicUsize::new(0);
        let a_steps_when_b_captured = AtomicUsize::new(usize::MAX);
        let work = |turn: Turn<'_>| {
            let spin = std::time::Instant::now();
            while spin.elapsed() < std::time::Duration::from_micros(1500) {}
            drop(turn);
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                for step in 0..150 {
                    work(gate.step(step + 10, true));
                    a_steps.fetch_add(1, Ordering::SeqCst);
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            for step in 0..=CAPTURE_STEPS {
                work(gate.step(step, true));
            }
            a_steps_when_b_captured.store(a_steps.load(Ordering::SeqCst), Ordering::SeqCst);
        });
        let waited = a_steps_when_b_captured.load(Ordering::SeqCst);
        assert!(
            waited < 60,
            "the capture waited until A's step {waited} of 150"
        );
    }
}
