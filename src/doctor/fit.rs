//! Whether a model fits this machine: the memory it needs (measured, or estimated from its
//! weights) against what [`super::machine`] found free and in total, as pure functions.

use super::snapshot::Snapshot;
use super::{Verdict, check};
use crate::machine::{GpuMemory, HostMemory};
use crate::provision::models::human_bytes;

/// Whether `need` bytes fit memory of which `available` is free out of `total`.
pub fn fit(
    name: &str,
    what: &str,
    need: u64,
    available: u64,
    total: u64,
    remedy_full: &str,
) -> Verdict {
    let about = format!(
        "{what} needs about {}; {} free of {}",
        human_bytes(need),
        human_bytes(available),
        human_bytes(total)
    );
    if need <= available {
        Verdict::ok(name, about)
    } else if need <= total {
        Verdict::warn(
            name,
            about,
            "it fits once other programs release memory: close them, or run fewer test threads",
        )
    } else {
        Verdict::fail(name, about, remedy_full)
    }
}

/// Host memory: the measured peak when the model ran, else the weights plus a margin.
pub fn host_fit(snap: &Snapshot, measured: Option<u64>, host: Option<HostMemory>) -> Verdict {
    let Some(host) = host else {
        return Verdict::warn(
            check::HOST_MEMORY,
            "this machine's memory is unknown (/proc/meminfo unreadable)",
            "check by hand that the machine has about twice the model's size free",
        );
    };
    let Some(weights) = snap.weights_bytes() else {
        return Verdict::skip(check::HOST_MEMORY, "files (model.onnx)");
    };
    let (need, what) = match measured {
        Some(peak) => (peak, "measured: the engine"),
        // ONNX Runtime holds the weights once more while it prepacks them, plus the runtime.
        None => (weights * 3 / 2 + (256 << 20), "estimated: the model"),
    };
    fit(
        check::HOST_MEMORY,
        what,
        need,
        host.available,
        host.total,
        "use a smaller model or a lower precision (int4), or a machine with more memory",
    )
}

/// GPU memory: the weights on the device plus a margin for the CUDA context and KV cache.
pub fn gpu_fit(snap: &Snapshot, gpu: Option<&GpuMemory>) -> Verdict {
    let Some(gpu) = gpu else {
        return Verdict::ok(check::GPU_MEMORY, "no GPU (nvidia-smi not found): CPU only");
    };
    let Some(weights) = snap.weights_bytes() else {
        return Verdict::skip(check::GPU_MEMORY, "files (model.onnx)");
    };
    let need = weights + (768 << 20);
    fit(
        check::GPU_MEMORY,
        &format!("estimated: the model on {}", gpu.name),
        need,
        gpu.free,
        gpu.total,
        "use a lower precision (int4) or a smaller model, or run with --device cpu",
    )
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn memory_fits_warns_when_only_busy_and_fails_when_too_big() {
        let gib = 1u64 << 30;
        assert_eq!(fit("m", "x", gib, 2 * gib, 4 * gib, "r").status, Status::Ok);
        assert_eq!(
            fit("m", "x", 3 * gib, 2 * gib, 4 * gib, "r").status,
            Status::Warn
        );
        let too_big = fit("m", "x", 5 * gib, 2 * gib, 4 * gib, "smaller");
        assert_eq!(too_big.status, Status::Fail);
        assert!(too_big.detail.contains("5.0 GiB") && too_big.remedy.unwrap().contains("smaller"));
    }
}
