//! What this machine has and what this process uses: host memory (`/proc/meminfo`), the GPU's
//! memory and this process's share of it (`nvidia-smi`, when there is one), and the process's
//! peak memory, which `codegen doctor` resets before each model so that every row of its table
//! shows its own model's peak. The engine (batch budgets, timings) and the doctor read the same
//! functions.

use std::fs;
use std::process::Command;

/// Host memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub total: u64,
    /// `MemAvailable`: what can be had without swapping.
    pub available: u64,
}

/// The first GPU's memory, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuMemory {
    pub name: String,
    pub total: u64,
    pub free: u64,
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Parse `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<HostMemory> {
    Some(HostMemory {
        total: meminfo_kib(text, "MemTotal:")? * 1024,
        available: meminfo_kib(text, "MemAvailable:")? * 1024,
    })
}

/// This machine's memory.
pub fn host_memory() -> Option<HostMemory> {
    parse_meminfo(&fs::read_to_string("/proc/meminfo").ok()?)
}

/// Parse `nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits`
/// (MiB), first GPU.
pub fn parse_nvidia_smi(text: &str) -> Option<GpuMemory> {
    let line = text.lines().next()?;
    let mut parts = line.split(',').map(str::trim);
    let name = parts.next()?.to_string();
    let total: u64 = parts.next()?.parse().ok()?;
    let free: u64 = parts.next()?.parse().ok()?;
    Some(GpuMemory {
        name,
        total: total << 20,
        free: free << 20,
    })
}

/// The first GPU's memory, `None` when there is no `nvidia-smi` or no GPU.
pub fn gpu_memory() -> Option<GpuMemory> {
    gpu_memory_of(0)
}

/// GPU `index`'s memory (`nvidia-smi -i`), `None` when there is no `nvidia-smi` or no such GPU.
pub fn gpu_memory_of(index: u32) -> Option<GpuMemory> {
    parse_nvidia_smi(&nvidia_smi(&[
        "-i",
        &index.to_string(),
        "--query-gpu=name,memory.total,memory.free",
        "--format=csv,noheader,nounits",
    ])?)
}

/// How many GPUs the driver lists (`None` without `nvidia-smi`).
pub fn gpu_count() -> Option<usize> {
    let text = nvidia_smi(&["--query-gpu=index", "--format=csv,noheader"])?;
    Some(text.lines().filter(|l| !l.trim().is_empty()).count())
}

fn nvidia_smi(args: &[&str]) -> Option<String> {
    let out = Command::new("nvidia-smi").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// GPU memory held by this process (MiB from `nvidia-smi`, which ONNX Runtime's arena keeps at
/// its high-water mark), in bytes, on every GPU together. Only asked under CUDA: on a CPU run
/// there is nothing to measure and no process to spawn.
pub fn process_gpu_bytes() -> Option<u64> {
    let text = nvidia_smi(&[
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ])?;
    parse_compute_apps(&text, std::process::id())
}

/// The same, on GPU `index` alone.
pub fn process_gpu_bytes_on(index: u32) -> Option<u64> {
    let text = nvidia_smi(&[
        "-i",
        &index.to_string(),
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ])?;
    parse_compute_apps(&text, std::process::id())
}

/// The MiB `nvidia-smi --query-compute-apps=pid,used_memory` gives process `pid`, in bytes.
fn parse_compute_apps(text: &str, pid: u32) -> Option<u64> {
    let pid = pid.to_string();
    let mine: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(',').map(str::trim);
            (parts.next()? == pid).then_some(())?;
            parts.next()?.parse::<u64>().ok().map(|mib| mib << 20)
        })
        .collect();
    // One line per GPU the process uses.
    (!mine.is_empty()).then(|| mine.iter().sum())
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_host_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    meminfo_kib(&status, "VmHWM:").map(|kib| kib * 1024)
}

/// Reset the peak to the current resident size (Linux: `5` into `/proc/self/clear_refs`), so
/// that the next reading is this model's. Where that is refused, peaks accumulate over models.
pub fn reset_peak_host() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_nvidia_smi_are_read() {
        let m = parse_meminfo(
            "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   16000000 kB\n",
        )
        .unwrap();
        assert_eq!(m.total, 24_000_000 * 1024);
        assert_eq!(m.available, 16_000_000 * 1024);
        let g = parse_nvidia_smi("NVIDIA H200, 143771, 140000\nNVIDIA H200, 1, 1\n").unwrap();
        assert_eq!(g.name, "NVIDIA H200");
        assert_eq!(g.total, 143_771 << 20);
        assert_eq!(g.free, 140_000 << 20);
        assert!(parse_nvidia_smi("").is_none());
        let apps = "4242, 10086\n17, 3\n";
        assert_eq!(parse_compute_apps(apps, 4242), Some(10086 << 20));
        assert_eq!(parse_compute_apps(apps, 1), None);
        // A process on two GPUs has a line on each.
        assert_eq!(
            parse_compute_apps("4242, 100\n17, 3\n4242, 50\n", 4242),
            Some(150 << 20)
        );
    }
}
