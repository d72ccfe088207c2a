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

/// Free memory of the GPU this process runs on (device 0, as the CUDA provider is opened), from
/// `nvidia-smi`, in bytes. Asked once the weights are loaded, so what is free is what batches
/// can have.
pub(crate) fn device_free_bytes() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.free",
            "--format=csv,noheader,nounits",
            "--id=0",
        ])
        .output()
        .ok()?;
    parse_mib(&String::from_utf8_lossy(&out.stdout))
}

/// The first line of `nvidia-smi`'s csv output as MiB, in bytes.
fn parse_mib(text: &str) -> Option<u64> {
    let mib: u64 = text.lines().next()?.trim().parse().ok()?;
    Some(mib * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nvidia_smi_mib_become_bytes() {
        assert_eq!(super::parse_mib("81559\n"), Some(81559 << 20));
        assert_eq!(super::parse_mib("[N/A]\n"), None);
        assert_eq!(super::parse_mib(""), None);
    }
}
