//! ONNX Runtime discovery: find (or fetch) `libonnxruntime.so`, load it once per process, and pick
//! the execution provider.
//!
//! Order: `ORT_DYLIB_PATH`; else a cached copy under `<cache>/onnxruntime/<version>/<flavour>/`;
//! else the pinned wheel from PyPI ([`crate::provision`], hash-checked), its libraries unpacked
//! under a [`DirLock`] so parallel processes do not race.
//!
//! For CUDA the CUDA 13 / cuDNN 9 libraries are found (or fetched) and preloaded first
//! ([`crate::provision::cuda`]); the outcome is kept in [`Runtime::cuda`] so that opening a session either
//! falls back to CPU saying what was missing (`auto`) or fails with it (`cuda`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use thiserror::Error;

use crate::provision::cache::DirLock;
use crate::provision::cuda;
use crate::provision::{self, Provisioner};

/// The ONNX Runtime version the `ort` crate targets.
pub const ORT_VERSION: &str = "1.31.1";

pub use crate::device::Device;
use crate::device::Provider;

/// Where ONNX Runtime's library comes from, decided at the edge: the provider it must serve,
/// an explicit library (`ORT_DYLIB_PATH`), the cache the wheel is unpacked under, the Python
/// whose pip downloads it, and the folder of CUDA libraries to use (`CODEGEN_CUDA_LIBS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSpec {
    pub provider: Provider,
    pub dylib: Option<PathBuf>,
    pub cache: PathBuf,
    pub python: PathBuf,
    pub cuda_libs: Option<PathBuf>,
}

impl RuntimeSpec {
    /// Where the CUDA libraries are looked for.
    pub fn cuda(&self) -> cuda::CudaSpec {
        cuda::CudaSpec {
            libs: self.cuda_libs.clone(),
            cache: self.cache.clone(),
            python: self.python.clone(),
        }
    }
}

/// Failure to find, fetch or load ONNX Runtime.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("failed to fetch ONNX Runtime: {0}")]
    Fetch(String),
    #[error("failed to unpack {path}: {message}")]
    Unpack { path: String, message: String },
    #[error(
        "failed to load ONNX Runtime from {path}: {message} (set ORT_DYLIB_PATH to a libonnxruntime.so {ORT_VERSION})"
    )]
    Load { path: String, message: String },
    #[error("failed to use CUDA: {0}")]
    Cuda(String),
    #[error("failed to access {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Resolve a configured device on this machine: where `auto` meets the driver check, for every
/// caller (profiles, `codegen bench engine`).
pub fn resolve_device(device: Device) -> crate::device::Resolution {
    device.resolve(nvidia_driver_present())
}

/// Whether this machine looks like it has an NVIDIA driver (decides which wheel `auto` fetches).
pub fn nvidia_driver_present() -> bool {
    Path::new("/proc/driver/nvidia/version").exists()
}

/// The wheel flavour: `cpu` (package `onnxruntime`) or `gpu` (`onnxruntime-gpu`).
fn flavour(provider: Provider) -> &'static str {
    match provider {
        Provider::Cpu => "cpu",
        Provider::Cuda => "gpu",
    }
}

/// Path of the ONNX Runtime shared library to load, fetching it when needed.
pub fn library_path(spec: &RuntimeSpec) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = &spec.dylib {
        return Ok(p.clone());
    }
    let flavour = flavour(spec.provider);
    let dir = spec
        .cache
        .join("onnxruntime")
        .join(ORT_VERSION)
        .join(flavour);
    let lib = dir.join(format!("libonnxruntime.so.{ORT_VERSION}"));
    if lib.exists() {
        return Ok(lib);
    }
    let _lock = DirLock::acquire(&dir).map_err(io_err(&dir))?;
    if lib.exists() {
        return Ok(lib);
    }
    let wheel = match spec.provider {
        Provider::Cpu => provision::ONNXRUNTIME,
        Provider::Cuda => provision::ONNXRUNTIME_GPU,
    };
    let wheel = Provisioner::new(spec.cache.clone(), spec.python.clone())
        .wheel(&wheel)
        .map_err(|e| {
            RuntimeError::Fetch(format!(
                "{e}; set ORT_DYLIB_PATH to a local libonnxruntime.so.{ORT_VERSION} to work offline"
            ))
        })?;
    unpack_libraries(&wheel, &dir)?;
    if !lib.exists() {
        return Err(RuntimeError::Unpack {
            path: wheel.display().to_string(),
            message: format!("no libonnxruntime.so.{ORT_VERSION} inside"),
        });
    }
    Ok(lib)
}

/// Copy every `onnxruntime/capi/lib*.so*` of the wheel into `dir`.
fn unpack_libraries(wheel: &Path, dir: &Path) -> Result<(), RuntimeError> {
    provision::unpack_wheel(wheel, dir, "ONNX Runtime", |n| {
        n.strip_prefix("onnxruntime/capi/")
            .filter(|base| base.starts_with("lib") && base.contains(".so") && !base.contains('/'))
            .map(str::to_string)
    })
    .map(|_| ())
    .map_err(|e| RuntimeError::Fetch(e.to_string()))
}

/// The process-wide ONNX Runtime: the library that was loaded, the environment built on it,
/// and, when it serves CUDA, the CUDA libraries that were preloaded or why they were not.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub library: PathBuf,
    pub environment: Environment,
    pub cuda: Option<Result<cuda::CudaLibs, String>>,
}

impl Runtime {
    /// Why CUDA cannot be used, when its libraries were not found or did not load.
    pub fn cuda_unavailable(&self) -> Option<&str> {
        match &self.cuda {
            Some(Err(why)) => Some(why),
            _ => None,
        }
    }
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Load ONNX Runtime once per process (later calls return the same runtime; the library cannot be
/// swapped once loaded).
pub fn init(spec: &RuntimeSpec) -> Result<Runtime, RuntimeError> {
    let result = RUNTIME.get_or_init(|| {
        let lib = library_path(spec).map_err(|e| e.to_string())?;
        // Before the provider is registered: its libraries then resolve by soname.
        let cuda = (spec.provider == Provider::Cuda)
            .then(|| cuda::prepare(&spec.cuda()).map_err(|e| e.to_string()));
        let load = |message: String| {
            RuntimeError::Load {
                path: lib.display().to_string(),
                message,
            }
            .to_string()
        };
        let environment = ort::init_from(&lib)
            .map_err(|e| load(e.to_string()))?
            .with_name("codegen-harness")
            .build()
            .map_err(|e| load(e.to_string()))?;
        Ok(Runtime {
            library: lib,
            environment,
            cuda,
        })
    });
    result.clone().map_err(RuntimeError::Fetch)
}

/// What a CUDA failure most likely means, with what to do about it.
pub fn explain_cuda_failure(message: &str) -> String {
    let hint = if message.contains("libcudnn") {
        "cuDNN 9 is missing: install the nvidia-cudnn-cu13 wheel (or cuDNN 9) into the base Python, or point CODEGEN_CUDA_LIBS at a folder holding it"
    } else if message.contains("libcublas")
        || message.contains("libcudart")
        || message.contains("libcu")
    {
        "the CUDA 13 runtime libraries are missing: install the nvidia-cuda-runtime, nvidia-cublas and nvidia-curand wheels (CUDA 13 line) into the base Python, or point CODEGEN_CUDA_LIBS at a folder holding them"
    } else if message.contains("providers_cuda")
        || message.contains("not available")
        || message.contains("Not available")
    {
        "this ONNX Runtime build has no CUDA execution provider: use the onnxruntime-gpu wheel (set ORT_DYLIB_PATH, or let --device cuda fetch it)"
    } else if message.contains("driver")
        || message.contains("CUDA failure 35")
        || message.contains("no CUDA-capable")
    {
        "the NVIDIA driver is missing or too old for CUDA 13"
    } else {
        "check that an NVIDIA GPU, its driver, CUDA 13 and cuDNN 9 are present, or run with --device cpu"
    };
    format!("{message}; {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_failures_say_what_to_do() {
        assert!(explain_cuda_failure("libcudnn.so.9: cannot open").contains("cuDNN"));
        assert!(explain_cuda_failure("whatever").contains("--device cpu"));
    }
}
