//! What the per-user cache (shared by every checkout: models, ONNX Runtime, venvs,
//! generations; its folder is decided at the edge, see `Env::cache`) is built with: a file
//! lock so that parallel test processes do not race to fill it, and content hashes.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// A file-system operation that failed, with what was being done and where.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: std::path::PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(action: &'static str, path: &Path, source: io::Error) -> FileError {
        FileError {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An exclusive lock on `<dir>/.lock`, held until dropped. Blocks until it is free.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Create `dir` if needed and take its lock.
    pub fn acquire(dir: &Path) -> io::Result<DirLock> {
        DirLock::acquire_or_wait(dir, |_| {})
    }

    /// [`DirLock::acquire`], calling `waiting(dir)` first when another process holds the lock
    /// (so the wait is said, not silent).
    pub fn acquire_or_wait(dir: &Path, waiting: impl FnOnce(&Path)) -> io::Result<DirLock> {
        fs::create_dir_all(dir)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                waiting(dir);
                file.lock()?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(DirLock { _file: file })
    }
}

/// The sha256 of a file's content, as lower-case hex, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of bytes (digests in cache keys and hash checks).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let probe = File::options()
            .write(true)
            .open(dir.path().join(".lock"))
            .unwrap();
        assert!(probe.try_lock().is_err(), "second lock must not be granted");
        drop(lock);
        assert!(probe.try_lock().is_ok(), "lock must be free after drop");
    }
}
