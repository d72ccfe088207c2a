//! A model folder read once, as data: which files are there and how big, and each config and
//! the tokenizer parsed (or why not). The checks in [`super::checks`] are pure functions over
//! it, so a broken folder is described without ONNX Runtime.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::Tokenizer;

/// A file of a model folder and what it is for.
#[derive(Debug, Clone, Copy)]
pub struct FileRole {
    pub name: &'static str,
    pub purpose: &'static str,
    /// The engine cannot run without it.
    pub required: bool,
}

/// The files of a model folder (the layout `harness/python/exporter` writes).
pub const FILE_ROLES: &[FileRole] = &[
    FileRole {
        name: "model.onnx",
        purpose: "the decoder graph ONNX Runtime runs",
        required: true,
    },
    FileRole {
        name: "model.onnx.data",
        purpose: "the graph's weights, outside model.onnx (absent when they are inside)",
        required: false,
    },
    FileRole {
        name: "config.json",
        purpose: "sizes: layers, heads, KV heads, head size, vocabulary, context length",
        required: true,
    },
    FileRole {
        name: "generation_config.json",
        purpose: "end-of-sequence and padding token ids",
        required: false,
    },
    FileRole {
        name: "tokenizer.json",
        purpose: "the tokenizer: vocabulary, merges, special tokens",
        required: true,
    },
    FileRole {
        name: "tokenizer_config.json",
        purpose: "special tokens by name and the chat template",
        required: true,
    },
    FileRole {
        name: "genai_config.json",
        purpose: "lets onnxruntime-genai run the folder (codegen bench engine only)",
        required: false,
    },
];

/// A file read and parsed, or why not.
#[derive(Debug, Clone)]
pub enum Loaded<T> {
    Missing,
    /// Present but unreadable or malformed: the parser's message.
    Invalid(String),
    Ready(T),
}

impl<T> Loaded<T> {
    pub fn ready(&self) -> Option<&T> {
        match self {
            Loaded::Ready(t) => Some(t),
            _ => None,
        }
    }
}

/// What a model folder holds.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    /// Size of each file of [`FILE_ROLES`], `None` when absent.
    pub sizes: Vec<(FileRole, Option<u64>)>,
    pub config: Loaded<Json>,
    pub generation_config: Loaded<Json>,
    pub tokenizer_config: Loaded<Json>,
    pub tokenizer: Loaded<Tokenizer>,
}

fn read_json(path: &Path) -> Loaded<Json> {
    match fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
        Err(e) => Loaded::Invalid(format!("failed to read: {e}")),
        Ok(text) => match serde_json::from_str::<Json>(&text) {
            Ok(v @ Json::Object(_)) => Loaded::Ready(v),
            Ok(_) => Loaded::Invalid("failed to parse: not a JSON object".into()),
            Err(e) => Loaded::Invalid(format!("failed to parse: {e}")),
        },
    }
}

impl Snapshot {
    /// Read `dir`'s files.
    pub fn read(dir: &Path) -> Snapshot {
        let sizes = FILE_ROLES
            .iter()
            .map(|role| {
                let size = fs::metadata(dir.join(role.name))
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                (*role, size)
            })
            .collect();
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if !tokenizer_path.is_file() {
            Loaded::Missing
        } else {
            match Tokenizer::from_file(&tokenizer_path) {
                Ok(t) => Loaded::Ready(t),
                Err(e) => Loaded::Invalid(format!("failed to load: {e}")),
            }
        };
        Snapshot {
            dir: dir.to_path_buf(),
            sizes,
            config: read_json(&dir.join("config.json")),
            generation_config: read_json(&dir.join("generation_config.json")),
            tokenizer_config: read_json(&dir.join("tokenizer_config.json")),
            tokenizer,
        }
    }

    /// Size of `name`, when present.
    pub fn size(&self, name: &str) -> Option<u64> {
        self.sizes
            .iter()
            .find(|(r, _)| r.name == name)
            .and_then(|(_, s)| *s)
    }

    /// Bytes of the graph and its weights.
    pub fn weights_bytes(&self) -> Option<u64> {
        Some(self.size("model.onnx")? + self.size("model.onnx.data").unwrap_or(0))
    }

    /// The weights' precision as the exporter recorded it, else `unknown`.
    pub fn precision(&self) -> String {
        self.config
            .ready()
            .and_then(|c| c.pointer("/codegen_export/precision"))
            .and_then(Json::as_str)
            .or_else(|| {
                self.config
                    .ready()
                    .and_then(|c| c.get("torch_dtype"))
                    .and_then(Json::as_str)
            })
            .unwrap_or("unknown")
            .to_string()
    }

    /// `config.json`, or JSON null when it is missing or malformed (as the engine reads it).
    pub fn config_or_null(&self) -> Json {
        self.config.ready().cloned().unwrap_or(Json::Null)
    }
}
