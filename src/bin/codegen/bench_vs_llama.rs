//! `codegen bench engine` against llama.cpp, with ceilings: what llama.cpp's tools are asked
//! (the same workloads as ours: batch-1 decode at our prompt depth, prefill at our prefill
//! length, P sequences of N tokens), one round of them, the ceilings measured in the same run,
//! and the table printing both sides beside the ceilings.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use codegen_harness::doctor::gguf;

use crate::bench_llama::{self, BatchedRow, LlamaError, Tools};
use crate::ceiling::compute::{self, ShapeTiming};
use crate::ceiling::{self, CpuInfo, MatShape, WeightReads};

/// Bytes of the buffer the read bandwidth is measured on (far beyond any last-level cache).
pub const BANDWIDTH_BYTES: usize = 1 << 30;
/// Passes over it; the fastest counts (a pass takes ~50 ms, so a busy neighbour's burst
/// rarely spans them all).
pub const BANDWIDTH_PASSES: usize = 10;
/// The MatMulNBits timings (M, caches cold): a large M (the kernels' peak), and M = 1 (decode's
/// shape) with the weights coming from memory and from cache: a token's matmuls in the model
/// take between the two (one matrix's reads overlap the next's, and part of the weights stays in
/// the last-level cache).
pub const KERNEL_ROWS: [(usize, bool); 3] = [(256, true), (1, true), (1, false)];

/// The workloads, in our figures' terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workloads {
    pub threads: usize,
    /// Batch-1 decode: mean prompt tokens of our batch-1 prompts, tokens generated, repetitions.
    pub depth: usize,
    pub new_tokens: usize,
    pub reps: usize,
    /// Prefill: the long prompt's tokens.
    pub prefill: usize,
    /// The batch: prompt tokens per sequence, tokens generated each, sequences.
    pub batch: (usize, usize, usize),
}

/// llama.cpp ready to run: its tools and the GGUF.
#[derive(Debug, Clone)]
pub struct Llama {
    pub tools: Tools,
    pub gguf: PathBuf,
}

/// One round of llama.cpp's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlamaRound {
    pub decode_tok_s: f64,
    pub prefill_tok_s: f64,
    pub batch: BatchedRow,
    /// `build_number`/`build_commit` and CPU as llama-bench reports them.
    pub build: String,
}

/// Run each llama.cpp workload once.
pub fn llama_round(l: &Llama, w: &Workloads) -> Result<LlamaRound, LlamaError> {
    let decode = bench_llama::bench(
        &l.tools,
        &l.gguf,
        w.threads,
        (0, w.new_tokens, w.depth),
        w.reps,
    )?;
    let prefill = bench_llama::bench(&l.tools, &l.gguf, w.threads, (w.prefill, 0, 0), 1)?;
    let batch = bench_llama::batched(&l.tools, &l.gguf, w.threads, w.batch)?;
    Ok(LlamaRound {
        decode_tok_s: decode.avg_ts,
        prefill_tok_s: prefill.avg_ts,
        batch,
        build: format!(
            "build {} ({}), {}",
            decode.build_number, decode.build_commit, decode.model_type
        ),
    })
}

/// Where llama.cpp stands for this run: ready, or why its rows are absent.
pub fn prepare(
    arg: Option<&bench_llama::ToolsArg>,
    provisioner: &codegen_harness::provision::Provisioner,
    model: &Path,
    gguf: Option<&Path>,
) -> Result<Llama, String> {
    let gguf_dir = codegen_harness::models::gguf_dir(&provisioner.cache);
    let tools = match bench_llama::locate(arg, provisioner) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(bench_llama::how_to_enable(&provisioner.cache)),
        Err(e) => return Err(format!("llama.cpp: {e}")),
    };
    let gguf =
        bench_llama::gguf_for(model, &gguf_dir, gguf).map_err(|e| format!("llama.cpp: {e}"))?;
    Ok(Llama { tools, gguf })
}

/// The ceilings of one run.
#[derive(Debug, Clone, Default)]
pub struct Ceilings {
    pub cpu: CpuInfo,
    /// Read bandwidth in bytes/s before and after the rounds.
    pub bandwidth: Vec<f64>,
    pub ours: Option<WeightReads>,
    pub llama: Option<WeightReads>,
    /// Our MatMulNBits shapes (with counts), and each one's best timing at each of
    /// [`KERNEL_ROWS`].
    pub shapes: Vec<(MatShape, usize)>,
    pub kernel: Vec<ShapeTiming>,
    /// Why a figure is missing.
    pub notes: Vec<String>,
    pub load: Vec<String>,
}

impl Ceilings {
    /// The best bandwidth measured.
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth.iter().copied().fold(0.0, f64::max)
    }

    /// Our compute ceiling in tokens/s: every matrix of a token at the kernels' rate at the
    /// large M.
    pub fn compute_tok_s(&self) -> Option<f64> {
        compute::seconds_per_token(&self.kernel, 0).map(|s| 1.0 / s)
    }
}

/// Bandwidth, load and CPU (before the rounds; [`after_rounds`] adds the second bandwidth).
pub fn before_rounds(threads: usize) -> Ceilings {
    Ceilings {
        cpu: ceiling::cpu_info(),
        load: vec![ceiling::loadavg()],
        bandwidth: vec![ceiling::read_bandwidth(
            BANDWIDTH_BYTES,
            threads,
            BANDWIDTH_PASSES,
        )],
        ..Ceilings::default()
    }
}

/// The weight reads of both sides and the kernel timing.
pub fn weights(c: &mut Ceilings, model: &Path, gguf_file: Option<&Path>) {
    match ceiling::onnx::read_graph(&model.join("model.onnx")) {
        Ok(g) => {
            c.ours = Some(ceiling::onnx::decode_reads(&g));
            c.shapes = ceiling::onnx::nbits_shapes(&g);
        }
        Err(e) => c.notes.push(format!("ours: {e}")),
    }
    if let Some(path) = gguf_file {
        match gguf::read_header(path) {
            Ok(h) => match ceiling::gguf::decode_reads(&h) {
                Ok(r) => c.llama = Some(r),
                Err(e) => c.notes.push(format!("llama.cpp: {e}")),
            },
            Err(e) => c.notes.push(format!("llama.cpp: {e}")),
        }
    }
}

/// Time our kernels (before and after the rounds: each shape keeps its best rate at each M, so
/// that load at one end does not set the ceiling).
pub fn time_kernels(
    c: &mut Ceilings,
    environment: &ort::environment::Environment,
    threads_spin: (usize, bool),
) {
    match compute::time_shapes(environment, &c.shapes, threads_spin, &KERNEL_ROWS, 3) {
        Ok(k) if c.kernel.is_empty() => c.kernel = k,
        Ok(k) => {
            for (old, new) in c.kernel.iter_mut().zip(k) {
                for (o, n) in old.rates.iter_mut().zip(new.rates) {
                    if n.macs_per_s > o.macs_per_s {
                        *o = n;
                    }
                }
            }
        }
        Err(e) => c.notes.push(format!("compute ceiling: {e}")),
    }
}

/// The second bandwidth measurement, kernel timing and load reading.
pub fn after_rounds(
    c: &mut Ceilings,
    environment: Option<&ort::environment::Environment>,
    (threads, spin): (usize, bool),
) {
    c.load.push(ceiling::loadavg());
    c.bandwidth.push(ceiling::read_bandwidth(
        BANDWIDTH_BYTES,
        threads,
        BANDWIDTH_PASSES,
    ));
    if let Some(env) = environment {
        time_kernels(c, env, (threads, spin));
    }
}

/// One side's measured figures (medians of the rounds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Side {
    pub decode_tok_s: f64,
    pub prefill_tok_s: f64,
    pub batch_tok_s: f64,
}

/// The median of `v` (0 with none).
pub fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut x: Vec<f64> = v.into_iter().collect();
    x.sort_by(f64::total_cmp);
    if x.is_empty() { 0.0 } else { x[x.len() / 2] }
}

/// llama.cpp's medians over its rounds.
pub fn llama_side(rounds: &[LlamaRound]) -> Side {
    Side {
        decode_tok_s: median(rounds.iter().map(|r| r.decode_tok_s)),
        prefill_tok_s: median(rounds.iter().map(|r| r.prefill_tok_s)),
        batch_tok_s: median(rounds.iter().map(|r| r.batch.generated_tok_s())),
    }
}

/// A side's bandwidth ceiling in tokens/s: the weights are read once per step, and a step
/// makes `rows` tokens.
pub fn bandwidth_ceiling(reads: Option<&WeightReads>, bandwidth: f64, rows: usize) -> Option<f64> {
    reads
        .and_then(|r| ceiling::tokens_per_s(bandwidth, r.bytes))
        .map(|t| t * rows as f64)
}

/// Everything the table prints.
pub struct Table<'a> {
    pub llama: Option<&'a Llama>,
    pub ours: Side,
    pub theirs: Option<Side>,
    pub rounds: usize,
    pub workloads: &'a Workloads,
    pub ceilings: &'a Ceilings,
    pub llama_build: Option<&'a str>,
}

fn gb(bytes: f64) -> String {
    format!("{:.1} GB/s", bytes / 1e9)
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn pct(measured: f64, ceiling: Option<f64>) -> String {
    ceiling::share(measured, ceiling).map_or_else(|| "-".into(), |s| format!("{:.0}%", s * 100.0))
}

impl Table<'_> {
    /// The header lines: what llama.cpp is, the CPU, load, bandwidth and the kernel timing.
    pub fn header(&self, s: &mut String) {
        let c = self.ceilings;
        match self.llama {
            Some(l) => {
                let _ = writeln!(
                    s,
                    "against llama.cpp {} ({}), GGUF {}; {} threads each; medians of {} alternating rounds",
                    bench_llama::LLAMA_CPP_BUILD,
                    l.tools.origin,
                    l.gguf.display(),
                    self.workloads.threads,
                    self.rounds
                );
                if let Some(b) = self.llama_build {
                    let _ = writeln!(s, "llama-bench reports: {b}");
                }
            }
            None => {
                let _ = writeln!(s, "ceilings ({} threads):", self.workloads.threads);
            }
        }
        let missing: Vec<&str> = ceiling::FLAGS
            .iter()
            .filter(|f| !c.cpu.flags.iter().any(|g| g.as_str() == **f))
            .copied()
            .collect();
        let _ = writeln!(
            s,
            "cpu: {}; flags: {} (absent: {})",
            c.cpu.model,
            c.cpu.flags.join(" "),
            missing.join(" ")
        );
        let _ = writeln!(s, "load (/proc/loadavg): {}", c.load.join(" -> "));
        let each: Vec<String> = c.bandwidth.iter().map(|b| gb(*b)).collect();
        let _ = writeln!(
            s,
            "read bandwidth, {} threads over {} MiB: {} (best; before/after the rounds: {})",
            self.workloads.threads,
            BANDWIDTH_BYTES >> 20,
            gb(c.bandwidth()),
            each.join(", ")
        );
        self.kernel_line(s);
        for n in &c.notes {
            let _ = writeln!(s, "ceiling not measured: {n}");
        }
    }

    /// Our kernels: each matrix shape's rate at each row count, and what a token's matmuls
    /// take at each.
    fn kernel_line(&self, s: &mut String) {
        let c = self.ceilings;
        if c.kernel.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "compute: ORT MatMulNBits (accuracy level {}) alone on each of our matrix shapes, {} threads, caches flushed ({} MiB read) before each run:",
            compute::ACCURACY_LEVEL,
            self.workloads.threads,
            compute::FLUSH_BYTES >> 20
        );
        for t in &c.kernel {
            let rates: Vec<String> = t
                .rates
                .iter()
                .map(|r| {
                    let from = if r.cold { "" } else { " cached" };
                    format!("M={}{from} {:.1} GMAC/s", r.m, r.macs_per_s / 1e9)
                })
                .collect();
            let _ = writeln!(
                s,
                "  {} x{}: {}",
                shape_name(&t.shape),
                t.count,
                rates.join(", ")
            );
        }
        for (i, (m, cold)) in KERNEL_ROWS.iter().enumerate() {
            let Some(secs) = compute::seconds_per_token(&c.kernel, i) else {
                continue;
            };
            // At M=1 a step streams every weight once: the bytes/s the kernels reach.
            let streamed = match (*m, c.ours) {
                (1, Some(r)) => format!("; weights read at {}", gb(r.bytes as f64 / secs)),
                _ => String::new(),
            };
            let from = if *cold { "from memory" } else { "from cache" };
            let _ = writeln!(
                s,
                "  a token's matmuls at M={m}, weights {from}: {:.2} ms a row ({:.1} tok/s{streamed})",
                secs * 1e3,
                1.0 / secs,
            );
        }
    }
}

/// `K 896 x N 4864 8-bit/32`.
fn shape_name(m: &MatShape) -> String {
    format!(
        "K {} x N {} {}-bit/{}",
        m.k,
        m.n,
        m.bits.unwrap_or(0),
        m.block.unwrap_or(0)
    )
}

impl Table<'_> {
    /// llama.cpp's compute ceiling: its own best prefill rate (its kernels at a large M,
    /// attention included), a lower bound of its kernels' peak.
    fn llama_compute(&self) -> Option<f64> {
        self.theirs.map(|t| t.prefill_tok_s).filter(|&t| t > 0.0)
    }

    /// Ours: the kernels' rate at M=256 over a token's matrices, or our own prefill rate where
    /// that is higher (the kernels timed alone can fall short of what they do in the model).
    fn ours_compute(&self) -> Option<f64> {
        let prefill = Some(self.ours.prefill_tok_s).filter(|&t| t > 0.0);
        match (self.ceilings.compute_tok_s(), prefill) {
            (Some(k), Some(p)) => Some(k.max(p)),
            (k, p) => k.or(p),
        }
    }

    /// The rows: each workload with both sides, their ratio, and each side's ceilings.
    pub fn rows(&self, s: &mut String) {
        let (w, c) = (self.workloads, self.ceilings);
        let name = format!("llama.cpp {}", bench_llama::LLAMA_CPP_BUILD);
        line(s, "", ["codegen (ort)".into(), name, "ours/them".into()]);
        let th = |f: fn(&Side) -> f64| self.theirs.as_ref().map(f);
        let (bw, oc, lc) = (c.bandwidth(), self.ours_compute(), self.llama_compute());
        let (or, tr) = (c.ours.as_ref(), c.llama.as_ref());
        let cc_label = "  compute ceiling tok/s (share)";
        let (od, td) = (self.ours.decode_tok_s, th(|t| t.decode_tok_s));
        let label = format!(
            "decode tok/s, batch 1 (depth {}, {} new)",
            w.depth, w.new_tokens
        );
        line(s, &label, [format!("{od:.1}"), fmt(td, 1), ratio(od, td)]);
        let (o1, t1) = (bandwidth_ceiling(or, bw, 1), bandwidth_ceiling(tr, bw, 1));
        let bw_label = "  bandwidth ceiling tok/s (share)";
        line(
            s,
            bw_label,
            [ceil(Some(od), o1), ceil(td, t1), String::new()],
        );
        line(
            s,
            cc_label,
            [ceil(Some(od), oc), ceil(td, lc), String::new()],
        );
        let (op, tp) = (self.ours.prefill_tok_s, th(|t| t.prefill_tok_s));
        let label = format!("prefill tok/s ({} tokens)", w.prefill);
        line(s, &label, [format!("{op:.0}"), fmt(tp, 0), ratio(op, tp)]);
        line(
            s,
            cc_label,
            [ceil(Some(op), oc), ceil(None, lc), String::new()],
        );
        let (pp, tg, pl) = w.batch;
        let (ob, tb) = (self.ours.batch_tok_s, th(|t| t.batch_tok_s));
        let label = format!("{pl} x {tg} batch (prompts ~{pp}), generated tok/s");
        line(s, &label, [format!("{ob:.1}"), fmt(tb, 1), ratio(ob, tb)]);
        let (o8, t8) = (bandwidth_ceiling(or, bw, pl), bandwidth_ceiling(tr, bw, pl));
        let label = format!("  bandwidth ceiling, {pl} rows a step (share)");
        line(s, &label, [ceil(Some(ob), o8), ceil(tb, t8), String::new()]);
        line(
            s,
            cc_label,
            [ceil(Some(ob), oc), ceil(tb, lc), String::new()],
        );
        let bytes = |r: Option<&WeightReads>| r.map_or_else(|| "-".into(), |r| mb(r.bytes));
        line(
            s,
            "weight bytes read per token",
            [bytes(or), bytes(tr), String::new()],
        );
        let elems = |r: Option<&WeightReads>| {
            r.map_or_else(
                || "-".into(),
                |r| format!("{:.1} M", r.elements as f64 / 1e6),
            )
        };
        let label = "weight elements per token (matrices)";
        line(s, label, [elems(or), elems(tr), String::new()]);
    }
}

/// One row of the table: a label, ours, theirs, the ratio.
fn line(s: &mut String, label: &str, [ours, theirs, ratio]: [String; 3]) {
    let _ = writeln!(s, "{label:<44} {ours:>18} {theirs:>18} {ratio:>10}");
}

/// `ours / theirs` as `1.04x`, or `-`.
fn ratio(ours: f64, theirs: Option<f64>) -> String {
    theirs
        .filter(|&t| t > 0.0)
        .map_or_else(|| "-".into(), |t| format!("{:.2}x", ours / t))
}

/// A ceiling and the share of it measured: `53.5 (55%)`; the ceiling alone without a measure.
fn ceil(measured: Option<f64>, ceiling: Option<f64>) -> String {
    match (measured, ceiling) {
        (Some(m), Some(c)) => format!("{c:.1} ({})", pct(m, Some(c))),
        (None, Some(c)) => format!("{c:.1}"),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ceiling::compute::KernelRate;

    fn reads(bytes: u64, elements: u64) -> WeightReads {
        WeightReads {
            bytes,
            elements,
            largest: Some(MatShape {
                k: 896,
                n: 151_936,
                bits: Some(8),
                block: Some(32),
            }),
            ..WeightReads::default()
        }
    }

    #[test]
    fn ceilings_scale_with_rows_a_step_and_need_their_inputs() {
        let r = reads(568_000_000, 494_000_000);
        let bw = bandwidth_ceiling(Some(&r), 30.4e9, 1);
        assert!((bw.unwrap() - 53.52).abs() < 0.01);
        let bw8 = bandwidth_ceiling(Some(&r), 30.4e9, 8);
        assert!((bw8.unwrap() - 8.0 * 53.52).abs() < 0.1);
        assert_eq!(bandwidth_ceiling(None, 1.0, 1), None);
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([]), 0.0);
    }

    #[test]
    fn the_table_shows_both_sides_ratios_and_shares() {
        let ceilings = Ceilings {
            cpu: CpuInfo {
                model: "Xeon".into(),
                flags: vec!["avx2".into(), "avx512f".into()],
            },
            bandwidth: vec![30.0e9, 30.4e9],
            ours: Some(reads(568_000_000, 494_000_000)),
            llama: Some(reads(400_000_000, 494_000_000)),
            // one shape holding all 494 M elements: 1000 tok/s at M=256, 20 at M=1
            kernel: vec![ShapeTiming {
                shape: MatShape {
                    k: 1000,
                    n: 494_000,
                    bits: Some(8),
                    block: Some(32),
                },
                count: 1,
                rates: vec![
                    KernelRate {
                        m: 256,
                        cold: true,
                        seconds: 0.256,
                        macs_per_s: 494e9,
                    },
                    KernelRate {
                        m: 1,
                        cold: true,
                        seconds: 0.05,
                        macs_per_s: 9.88e9,
                    },
                ],
            }],
            notes: vec![],
            shapes: vec![],
            load: vec!["1.0 1.0 1.0".into(), "2.0 1.0 1.0".into()],
        };
        let w = Workloads {
            threads: 2,
            depth: 60,
            new_tokens: 128,
            reps: 3,
            prefill: 477,
            batch: (60, 128, 8),
        };
        let ours = Side {
            decode_tok_s: 29.4,
            prefill_tok_s: 296.0,
            batch_tok_s: 88.2,
        };
        let theirs = Side {
            decode_tok_s: 28.2,
            prefill_tok_s: 223.0,
            batch_tok_s: 78.2,
        };
        let t = Table {
            llama: None,
            ours,
            theirs: Some(theirs),
            rounds: 2,
            workloads: &w,
            ceilings: &ceilings,
            llama_build: None,
        };
        let mut s = String::new();
        t.header(&mut s);
        t.rows(&mut s);
        assert!(
            s.contains("30.4 GB/s (best; before/after the rounds: 30.0 GB/s, 30.4 GB/s)"),
            "{s}"
        );
        assert!(s.contains("absent: avx512_vnni"), "{s}");
        assert!(s.contains("1.0 1.0 1.0 -> 2.0 1.0 1.0"), "{s}");
        assert!(
            s.contains("K 1000 x N 494000 8-bit/32 x1: M=256 494.0 GMAC/s, M=1 9.9 GMAC/s"),
            "{s}"
        );
        assert!(
            s.contains("at M=1, weights from memory: 50.00 ms a row (20.0 tok/s; weights read at 11.4 GB/s)"),
            "{s}"
        );
        assert!(
            s.contains("at M=256, weights from memory: 1.00 ms a row (1000.0 tok/s)"),
            "{s}"
        );
        // decode: 29.4 of 30.4e9 / 568e6 = 53.5 (55%); llama 28.2 of 76.0 (37%)
        assert!(s.contains("53.5 (55%)"), "{s}");
        assert!(s.contains("76.0 (37%)"), "{s}");
        assert!(s.contains("1.04x"), "{s}");
        // compute: ours 1000 tok/s; llama's own prefill 223 -> 28.2 is 13%
        assert!(s.contains("1000.0 (3%)"), "{s}");
        assert!(s.contains("223.0 (13%)"), "{s}");
        assert!(s.contains("8 x 128 batch (prompts ~60)"), "{s}");
        assert!(s.contains("428.2 (21%)"), "{s}");
        assert!(s.contains("568 MB"), "{s}");
        assert!(s.contains("494.0 M"), "{s}");
        // without kernel timings (or below it), our own prefill rate is the compute ceiling
        let no_kernel = Ceilings {
            kernel: vec![],
            ..ceilings.clone()
        };
        let t = Table {
            ceilings: &no_kernel,
            ..t
        };
        assert_eq!(t.ours_compute(), Some(296.0));
    }
}
