//! Content hashes of model folders (computed once, remembered by path + size + mtime under
//! `<cache>/model-hashes/`) and the generation cache under `<cache>/generations/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::Completion;
use crate::provision::cache::{hex, sha256_file};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileStamp {
    name: String,
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

fn stamp(path: &Path) -> std::io::Result<(u64, u128)> {
    let meta = fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

/// The sha256 of a model folder's files (names and contents, sorted by name; lock files and
/// hidden files excluded). File hashes are remembered under `<cache>/model-hashes/`, keyed by
/// the folder's path, and reused while each file's size and mtime are unchanged.
pub(crate) fn model_hash(dir: &Path, cache: &Path) -> std::io::Result<String> {
    let canon = dir.canonicalize()?;
    let mut names: Vec<String> = fs::read_dir(&canon)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let memo_dir = cache.join("model-hashes");
    let memo = memo_dir.join(format!(
        "{}.json",
        hex(&Sha256::digest(canon.to_string_lossy().as_bytes()))
    ));
    let old: Vec<FileStamp> = fs::read(&memo)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut stamps = Vec::new();
    for name in names {
        let path = canon.join(&name);
        let (size, mtime_ns) = stamp(&path)?;
        let known = old
            .iter()
            .find(|s| s.name == name && s.size == size && s.mtime_ns == mtime_ns);
        let sha256 = match known {
            Some(s) => s.sha256.clone(),
            None => sha256_file(&path)?,
        };
        stamps.push(FileStamp {
            name,
            size,
            mtime_ns,
            sha256,
        });
    }
    if stamps != old {
        let _ = fs::create_dir_all(&memo_dir);
        if let Ok(text) = serde_json::to_vec(&stamps) {
            let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
            if fs::write(&tmp, text).is_ok() {
                let _ = fs::rename(&tmp, &memo);
            }
        }
    }
    let mut h = Sha256::new();
    for s in &stamps {
        h.update(s.name.as_bytes());
        h.update([0]);
        h.update(s.sha256.as_bytes());
        h.update([0]);
    }
    Ok(hex(&h.finalize()))
}

/// Completions stored by the hash of what determines them.
#[derive(Debug, Clone)]
pub(crate) struct GenerationCache {
    dir: PathBuf,
    enabled: bool,
}

impl GenerationCache {
    /// The cache under `<cache>/generations/`; `enabled = false` neither reads nor writes.
    pub fn new(enabled: bool, cache: &Path) -> GenerationCache {
        GenerationCache {
            dir: cache.join("generations"),
            enabled,
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// Whether the cache is read and written (`CODEGEN_NO_CACHE` turns it off).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn get(&self, key: &str) -> Option<Completion> {
        if !self.enabled {
            return None;
        }
        let bytes = fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn put(&self, key: &str, completion: &Completion) {
        if !self.enabled {
            return;
        }
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        if let Ok(text) = serde_json::to_vec(completion) {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if fs::write(&tmp, text).is_ok() {
                let _ = fs::rename(&tmp, &path);
            }
        }
    }
}
