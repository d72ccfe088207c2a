//! What a batch used: peak host memory of this process and the GPU memory it holds.

use std::fs;

/// Peak resident memory of this process (VmHWM), in bytes.
pub(crate) fn peak_host_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Physical memory of this machine (MemTotal), in bytes.
pub(crate) fn total_host_bytes() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// GPU memory held by this process (MiB from `nvidia-smi`, which ONNX Runtime's arena keeps at
/// its high-water mark), in bytes. Only asked under CUDA: on a CPU run there is nothing to
/// measure and no process to spawn.
pub(crate) fn device_bytes() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut parts = l.split(',').map(str::trim);
        (parts.next()? == me).then_some(())?;
        parts
            .next()?
            .parse::<u64>()
            .ok()
            .map(|mib| mib * 1024 * 1024)
    })
}
