//! A GGUF file's header read in Rust: magic, version, metadata key/value pairs and tensor
//! infos (llama.cpp's `docs/gguf.md`), enough to name a file's architecture and say whether
//! the exporter supports it before a Python process is started. Tensor data is never read.
//!
//! Sizes in the header come from the file, so every count and length is bounded before
//! anything is allocated: a damaged or hostile header is an error, never a huge allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The GGUF architectures `harness/python/exporter` can export (its `SUPPORTED_ARCHS`; a test
/// reads the Python file and checks that the two lists are the same).
pub const SUPPORTED_ARCHS: &[&str] = &[
    "llama", "qwen2", "qwen3", "gemma3", "smollm3", "olmo2", "gpt2", "phi2", "phi3",
];

const MAGIC: &[u8; 4] = b"GGUF";
/// Longest string the header may hold (chat templates are a few KiB; token texts are short).
const MAX_STRING: u64 = 16 << 20;
/// Most entries of one metadata array (vocabularies are ~150k-260k tokens).
const MAX_ARRAY: u64 = 1 << 24;
/// Most metadata pairs and tensors (real files have tens and hundreds to a few thousand).
const MAX_ENTRIES: u64 = 1 << 20;
/// Most dimensions of one tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// Failure to read a GGUF header.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("failed to read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {path} as GGUF: {problem}")]
    Format { path: PathBuf, problem: String },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            GgufValue::Uint(n) => Some(*n),
            GgufValue::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }
}

/// One tensor's description (its data stays in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    /// `ggml_type` number (0 F32, 1 F16, 2 Q4_0, 8 Q8_0, 12 Q4_K, ...).
    pub ggml_type: u32,
    /// Offset from the start of the tensor data section.
    pub offset: u64,
}

/// What a GGUF header says.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
}

impl GgufHeader {
    /// `general.architecture` (e.g. `llama`, `qwen2`, `gemma3`).
    pub fn architecture(&self) -> Option<&str> {
        self.metadata.get("general.architecture")?.as_str()
    }

    /// `general.name`, when the file has one.
    pub fn name(&self) -> Option<&str> {
        self.metadata.get("general.name")?.as_str()
    }

    /// `general.file_type` as llama.cpp names it (`Q4_K_M`, `F16`, ...), when known.
    pub fn file_type(&self) -> Option<String> {
        let n = self.metadata.get("general.file_type")?.as_u64()?;
        Some(file_type_name(n).map_or_else(|| format!("file type {n}"), str::to_string))
    }

    /// Whether the exporter supports this file's architecture.
    pub fn supported(&self) -> bool {
        self.architecture()
            .is_some_and(|a| SUPPORTED_ARCHS.contains(&a))
    }
}

/// llama.cpp's `llama_ftype` names (the common ones).
fn file_type_name(n: u64) -> Option<&'static str> {
    Some(match n {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// Read the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<GgufHeader, GgufError> {
    let file = File::open(path).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_header(BufReader::new(file)).map_err(|e| match e {
        ParseError::Io(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            GgufError::Format {
                path: path.to_path_buf(),
                problem: "the file ends inside its header (truncated?)".into(),
            }
        }
        ParseError::Io(source) => GgufError::Io {
            path: path.to_path_buf(),
            source,
        },
        ParseError::Format(problem) => GgufError::Format {
            path: path.to_path_buf(),
            problem,
        },
    })
}

/// A read failure before the path is known.
#[derive(Debug)]
enum ParseError {
    Io(io::Error),
    Format(String),
}

impl From<io::Error> for ParseError {
    fn from(e: io::Error) -> Self {
        ParseError::Io(e)
    }
}

struct Reader<R> {
    inner: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn bounded(&mut self, max: u64, what: &str) -> Result<u64, ParseError> {
        let n = self.u64()?;
        if n > max {
            return Err(ParseError::Format(format!(
                "{what} is {n}, more than {max}: the header is damaged"
            )));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let len = self.bounded(MAX_STRING, "a string length")? as usize;
        let mut buf = vec![0u8; len];
        self.inner.read_exact(&mut buf)?;
        String::from_utf8(buf).map_err(|_| ParseError::Format("a string is not valid UTF-8".into()))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, ParseError> {
        Ok(match ty {
            0 => GgufValue::Uint(self.u8()?.into()),
            1 => GgufValue::Int((self.u8()? as i8).into()),
            2 => GgufValue::Uint(self.u16()?.into()),
            3 => GgufValue::Int((self.u16()? as i16).into()),
            4 => GgufValue::Uint(self.u32()?.into()),
            5 => GgufValue::Int((self.u32()? as i32).into()),
            6 => GgufValue::Float(f32::from_le_bytes(self.bytes()?).into()),
            7 => GgufValue::Bool(self.u8()? != 0),
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(ParseError::Format("arrays nested too deep".into()));
                }
                let item = self.u32()?;
                let n = self.bounded(MAX_ARRAY, "an array length")?;
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::Uint(self.u64()?),
            11 => GgufValue::Int(self.u64()? as i64),
            12 => GgufValue::Float(f64::from_le_bytes(self.bytes()?)),
            other => {
                return Err(ParseError::Format(format!(
                    "unknown metadata value type {other}"
                )));
            }
        })
    }
}

fn parse_header(inner: impl Read) -> Result<GgufHeader, ParseError> {
    let mut r = Reader { inner };
    let magic = r.bytes::<4>()?;
    if &magic != MAGIC {
        return Err(ParseError::Format(format!(
            "it starts with {magic:02x?}, not the GGUF magic \"GGUF\""
        )));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        let why = if version.swap_bytes() <= 3 {
            "a big-endian file"
        } else {
            "not a version this reader knows (2 or 3)"
        };
        return Err(ParseError::Format(format!("GGUF version {version}: {why}")));
    }
    let tensor_count = r.bounded(MAX_ENTRIES, "the tensor count")?;
    let kv_count = r.bounded(MAX_ENTRIES, "the metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
    for _ in 0..tensor_count {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(ParseError::Format(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<_, _>>()?;
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a GGUF v3 header with `metadata` (string values only) and no tensors.
    fn write_test_header(metadata: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        for (k, v) in metadata {
            string(&mut out, k);
            out.extend_from_slice(&8u32.to_le_bytes());
            string(&mut out, v);
        }
        out
    }

    fn parse(bytes: &[u8]) -> Result<GgufHeader, ParseError> {
        parse_header(bytes)
    }

    #[test]
    fn a_header_with_metadata_and_tensors_is_read() {
        let mut bytes = write_test_header(&[("general.architecture", "qwen2")]);
        // Patch in one tensor and two more pairs: a u32 and an array of strings.
        bytes[8..16].copy_from_slice(&1u64.to_le_bytes());
        bytes[16..24].copy_from_slice(&3u64.to_le_bytes());
        let s = |out: &mut Vec<u8>, t: &str| {
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            out.extend_from_slice(t.as_bytes());
        };
        s(&mut bytes, "general.file_type");
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&15u32.to_le_bytes());
        s(&mut bytes, "tokenizer.ggml.tokens");
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        s(&mut bytes, "a");
        s(&mut bytes, "b");
        s(&mut bytes, "token_embd.weight");
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&896u64.to_le_bytes());
        bytes.extend_from_slice(&151936u64.to_le_bytes());
        bytes.extend_from_slice(&12u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let h = parse(&bytes).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.architecture(), Some("qwen2"));
        assert!(h.supported());
        assert_eq!(h.file_type().as_deref(), Some("Q4_K_M"));
        assert_eq!(
            h.metadata["tokenizer.ggml.tokens"],
            GgufValue::Array(vec![
                GgufValue::String("a".into()),
                GgufValue::String("b".into())
            ])
        );
        assert_eq!(h.tensors[0].dims, vec![896, 151936]);
        assert_eq!(h.tensors[0].ggml_type, 12);
    }

    #[test]
    fn damaged_headers_are_errors_not_allocations() {
        let err = |b: &[u8]| match parse(b) {
            Err(ParseError::Format(m)) => m,
            Err(ParseError::Io(e)) => format!("io: {e}"),
            Ok(_) => panic!("parsed"),
        };
        assert!(err(b"PK\x03\x04rest").contains("not the GGUF magic"));
        let mut v1 = write_test_header(&[]);
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(err(&v1).contains("GGUF version 1"));
        let mut huge = write_test_header(&[("k", "v")]);
        // The string length of the key, made absurd.
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&huge).contains("the header is damaged"));
        let full = write_test_header(&[("general.architecture", "llama")]);
        assert!(err(&full[..full.len() - 2]).starts_with("io:"));
        let mut mamba = write_test_header(&[("general.architecture", "mamba")]);
        assert!(!parse(&mamba).unwrap().supported());
        assert!(
            parse(&write_test_header(&[("general.architecture", "gemma3")]))
                .unwrap()
                .supported()
        );
        mamba.truncate(20);
        assert!(err(&mamba).starts_with("io:"));
    }
}
