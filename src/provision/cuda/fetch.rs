//! The last resort of [`super::locate`]: the pinned CUDA 13 / cuDNN 9 wheels
//! ([`provision::CUDA_WHEELS`]) fetched through the [`Provisioner`] (hash-checked, cached
//! under `<cache>/wheels`) and their libraries unpacked into `<cache>/cuda/<version-set>/lib`
//! under a [`DirLock`], marked ready only when every wheel is in.

use std::fs;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{CudaError, CudaSpec};
use crate::provision::cache::{DirLock, FileError, hex};
use crate::provision::{self, Provisioner};

/// The file name to unpack a wheel entry as, when it is a library (`nvidia/**/lib/lib*.so*`).
pub fn wheel_library(entry: &str) -> Option<&str> {
    let (dir, base) = entry.rsplit_once('/')?;
    (entry.starts_with("nvidia/")
        && (dir.ends_with("/lib") || dir.ends_with("/lib64"))
        && base.starts_with("lib")
        && base.contains(".so"))
    .then_some(base)
}

/// The folder name of the pinned set: changes with any pin.
pub fn version_set() -> String {
    let files: Vec<&str> = provision::CUDA_WHEELS.iter().map(|w| w.file).collect();
    let key = hex(&Sha256::digest(files.join("\n").as_bytes()));
    format!("cuda13-{}", &key[..12])
}

/// The pinned wheels' libraries under `<cache>/cuda/<version-set>/lib`, fetched on first use.
pub(super) fn download(spec: &CudaSpec) -> Result<PathBuf, CudaError> {
    let root = spec.cache.join("cuda").join(version_set());
    let lib = root.join("lib");
    let ready = root.join(".ready");
    if ready.is_file() {
        return Ok(lib);
    }
    let _lock = DirLock::acquire(&root).map_err(|e| FileError::new("lock", &root, e))?;
    if ready.is_file() {
        return Ok(lib);
    }
    fs::create_dir_all(&lib).map_err(|e| FileError::new("create", &lib, e))?;
    let provisioner = Provisioner::new(spec.cache.clone(), spec.python.clone());
    for wheel in provision::CUDA_WHEELS {
        let path = provisioner.wheel(wheel)?;
        // The wheel's `nvidia/**/lib/lib*.so*`, flat into `lib`.
        provision::unpack_wheel(&path, &lib, wheel.package, |n| {
            wheel_library(n).map(str::to_string)
        })?;
    }
    let files: Vec<&str> = provision::CUDA_WHEELS.iter().map(|w| w.file).collect();
    fs::write(&ready, files.join("\n")).map_err(|e| FileError::new("write", &ready, e))?;
    Ok(lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_libraries_of_a_wheel_are_unpacked() {
        assert_eq!(
            wheel_library("nvidia/cu13/lib/libcublasLt.so.13"),
            Some("libcublasLt.so.13")
        );
        assert_eq!(
            wheel_library("nvidia/cudnn/lib/libcudnn_graph.so.9"),
            Some("libcudnn_graph.so.9")
        );
        assert_eq!(wheel_library("nvidia/cu13/include/cuda.h"), None);
        assert_eq!(wheel_library("nvidia/__init__.py"), None);
        assert_eq!(
            wheel_library("nvidia_cublas-13.0.2.14.dist-info/RECORD"),
            None
        );
        assert!(version_set().starts_with("cuda13-"));
    }
}
