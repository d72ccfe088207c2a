//! Ceilings for CPU decode, measured in the run that reports them: the machine's read
//! bandwidth (a multi-threaded sum over a buffer far larger than the caches), the weight bytes
//! a decode step reads (ours from `model.onnx`, llama.cpp's from the GGUF), and the kernels'
//! own compute peak (ONNX Runtime's MatMulNBits on the model's largest matrix at a large M).
//! A side's bandwidth ceiling is bandwidth / bytes per token; its compute ceiling is its
//! kernels' weight elements per second / elements per token.

pub mod compute;
pub mod gguf;
pub mod onnx;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CeilingError {
    #[error("failed to read {path}: {message}")]
    Io { path: String, message: String },
    #[error("failed to read the ONNX graph: {0}")]
    Onnx(String),
    #[error("failed to read the GGUF file: {0}")]
    Gguf(String),
    #[error("failed to time MatMulNBits: {0}")]
    Compute(String),
}

/// The protobuf wire format, shared with the engine's graph rewrite.
pub use codegen_harness::engine::onnx::proto;

impl From<proto::Malformed> for CeilingError {
    fn from(e: proto::Malformed) -> CeilingError {
        CeilingError::Onnx(e.to_string())
    }
}

impl CeilingError {
    pub fn io(path: &Path, e: impl std::fmt::Display) -> CeilingError {
        CeilingError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// A weight matrix: K inputs, N outputs, and its block format when it is MatMulNBits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatShape {
    pub k: u64,
    pub n: u64,
    pub bits: Option<u64>,
    pub block: Option<u64>,
}

impl MatShape {
    pub fn float(k: u64, n: u64) -> MatShape {
        MatShape {
            k,
            n,
            bits: None,
            block: None,
        }
    }

    /// From a MatMulNBits node's attributes (K, N, bits, block_size).
    pub fn nbits(ints: &BTreeMap<String, i64>) -> Option<MatShape> {
        let get = |k: &str| ints.get(k).map(|&v| v.max(0) as u64);
        Some(MatShape {
            k: get("K")?,
            n: get("N")?,
            bits: Some(get("bits").unwrap_or(4)),
            block: Some(get("block_size").unwrap_or(32)),
        })
    }

    pub fn elements(&self) -> u64 {
        self.k * self.n
    }
}

/// What a decode step reads from the weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightReads {
    /// Bytes read per token.
    pub bytes: u64,
    /// Bytes not read per token (the gathered embedding table).
    pub skipped_bytes: u64,
    /// Weight elements of the matrices multiplied per token.
    pub elements: u64,
    pub matrices: usize,
    pub largest: Option<MatShape>,
    /// The output layer is the embedding table (GGUF files without `output.weight`).
    pub tied_output: bool,
}

/// Tokens per second a ceiling allows: `rate` units per second over `per_token` units a token.
pub fn tokens_per_s(rate: f64, per_token: u64) -> Option<f64> {
    (per_token > 0 && rate > 0.0).then(|| rate / per_token as f64)
}

/// `measured / ceiling`, none without a ceiling.
pub fn share(measured: f64, ceiling: Option<f64>) -> Option<f64> {
    ceiling.filter(|&c| c > 0.0).map(|c| measured / c)
}

/// The CPU's model name and the flags that decide which kernels run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    pub model: String,
    pub flags: Vec<String>,
}

/// Flags worth printing: AVX2, AVX-512, VNNI (both encodings) and AMX.
pub const FLAGS: &[&str] = &[
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
];

/// The first processor of `/proc/cpuinfo`'s text: its model name and which of [`FLAGS`] it has.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let field = |key: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let have: Vec<&str> = flags.split_whitespace().collect();
    CpuInfo {
        model: field("model name"),
        flags: FLAGS
            .iter()
            .filter(|f| have.contains(f))
            .map(|f| f.to_string())
            .collect(),
    }
}

/// This machine's CPU (empty where `/proc/cpuinfo` cannot be read).
pub fn cpu_info() -> CpuInfo {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or_default()
}

/// `/proc/loadavg`'s first three figures, as printed there.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Read bandwidth in bytes/s: `threads` threads each sum their share of a `bytes` buffer
/// (filled first, so every page is resident), best of `passes`.
pub fn read_bandwidth(bytes: usize, threads: usize, passes: usize) -> f64 {
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = threads.max(1);
    let chunk = words.div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf.chunks(chunk).map(|c| s.spawn(move || sum(c))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(total);
        best = best.max((words * 8) as f64 / secs);
    }
    best
}

/// A sum in eight independent lanes, so that the loads, not the adds, set the pace.
pub fn sum(c: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for w in &mut it {
        for (l, x) in lanes.iter_mut().zip(w) {
            *l = l.wrapping_add(*x);
        }
    }
    let rest = it.remainder().iter().fold(0u64, |a, &x| a.wrapping_add(x));
    lanes.iter().fold(rest, |a, &x| a.wrapping_add(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_divide_rate_by_what_a_token_needs() {
        // 30.4 GB/s over 568 MB a token: 53.5 tok/s; 29.4 measured is 55% of it.
        let c = tokens_per_s(30.4e9, 568_000_000).unwrap();
        assert!((c - 53.52).abs() < 0.01, "{c}");
        assert!((share(29.4, Some(c)).unwrap() - 0.549).abs() < 0.001);
        assert_eq!(tokens_per_s(1.0, 0), None);
        assert_eq!(share(1.0, None), None);
    }

    #[test]
    fn cpuinfo_gives_the_model_and_the_kernel_flags() {
        let text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        let c = parse_cpuinfo(text);
        assert_eq!(c.model, "Intel(R) Xeon(R) Platinum");
        assert_eq!(c.flags, vec!["avx2", "avx512f", "avx512_vnni", "amx_tile"]);
        assert_eq!(parse_cpuinfo(""), CpuInfo::default());
    }

    #[test]
    fn bandwidth_reads_every_word() {
        assert_eq!(sum(&(0..1001u64).collect::<Vec<_>>()), 1000 * 1001 / 2);
        assert!(read_bandwidth(1 << 20, 2, 2) > 0.0);
    }
}
