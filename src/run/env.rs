//! The environment, read once at the entry points (`tests/codegen.rs`, the `codegen` binary,
//! the harness's own tests) into typed settings. The library below reads no environment
//! variable: it is handed an [`Env`] or the part of it it needs.
//!
//! Every variable is listed in [`VARIABLES`] (docs/configuration.md's table is checked against it). A value
//! that does not parse is an error naming the variable, what it got and what it accepts.

use std::ffi::OsString;
use std::path::PathBuf;

use thiserror::Error;

use crate::device::Provider;
use crate::engine::onnx::{AttentionKernel, OnnxOptions};
use crate::evaluate::sandbox::{Level, SandboxConfig};
use crate::provision::Provisioner;
use crate::provision::runtime::RuntimeSpec;
use crate::run::shard::{Shard, ShardError};

/// One documented environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    /// What it accepts.
    pub value: &'static str,
    /// What it does.
    pub effect: &'static str,
}

/// Every environment variable the harness reads, in the order docs/configuration.md's table lists them.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "CODEGEN_CONFIG",
        value: "path",
        effect: "the config file (default harness/codegen.toml, relative to the repository root)",
    },
    Variable {
        name: "CODEGEN_MODELS",
        value: "a,b",
        effect: "run these profiles only (also those with enabled = false)",
    },
    Variable {
        name: "CODEGEN_SHARD",
        value: "K/N",
        effect: "run only shard K of N of the cases (1-based, by a stable hash of the case id); results go to `<results>/shard-K-of-N/` for `codegen merge`",
    },
    Variable {
        name: "NEXTEST_EXECUTION_MODE",
        value: "set by cargo-nextest",
        effect: "`process-per-test`: this process runs one trial for cargo-nextest; it records the outcome under `<results>/nextest-<NEXTEST_RUN_ID>/` and prints no summary and applies no gate (`codegen finish` does, over the whole run)",
    },
    Variable {
        name: "NEXTEST_RUN_ID",
        value: "set by cargo-nextest",
        effect: "the nextest run's id (a UUID): names the folder the run's trials are recorded in",
    },
    Variable {
        name: "CODEGEN_CACHE",
        value: "path",
        effect: "the per-user cache (default $XDG_CACHE_HOME/codegen-harness, else ~/.cache/codegen-harness)",
    },
    Variable {
        name: "CODEGEN_PYTHON",
        value: "path",
        effect: "the Python that builds the exporter's venv and downloads wheels (default python3)",
    },
    Variable {
        name: "CODEGEN_WHEELHOUSE",
        value: "path",
        effect: "install and download Python wheels from this folder only (pip --no-index --find-links; `codegen unpack` fills one)",
    },
    Variable {
        name: "ORT_DYLIB_PATH",
        value: "path",
        effect: "load this libonnxruntime.so instead of the cached wheel's",
    },
    Variable {
        name: "CODEGEN_CUDA_LIBS",
        value: "path",
        effect: "a folder of the CUDA 13 and cuDNN 9 libraries to use instead of searching the system and Python and downloading the pinned wheels",
    },
    Variable {
        name: "CODEGEN_NO_CACHE",
        value: "0 or 1",
        effect: "1: generate again instead of reading the generation cache",
    },
    Variable {
        name: "CODEGEN_SANDBOX_LEVEL",
        value: "strict, basic or none",
        effect: "override [sandbox] level (the harness's own tests read it too)",
    },
    Variable {
        name: "CODEGEN_ALLOW_HOST_ROOT",
        value: "0 or 1",
        effect: "override [sandbox] allow_host_root (1: a root harness whose Python uid 65534 cannot reach runs generated code as root at the strict level)",
    },
    Variable {
        name: "CODEGEN_ORT_THREADS",
        value: "count",
        effect: "ONNX Runtime intra-op threads on CPU (0: one per core)",
    },
    Variable {
        name: "CODEGEN_ORT_SPIN",
        value: "0 or 1",
        effect: "1: let ONNX Runtime's worker threads spin between runs",
    },
    Variable {
        name: "CODEGEN_ORT_NONDETERMINISTIC",
        value: "0 or 1",
        effect: "1: allow ONNX Runtime kernels that are not deterministic",
    },
    Variable {
        name: "CODEGEN_ORT_ATTENTION",
        value: "0 or 1",
        effect: "1: run attention on ONNX Runtime's GroupQueryAttention kernel instead of the harness's own on CPU (docs/engine.md)",
    },
    Variable {
        name: "CODEGEN_DRAFTS",
        value: "0 or 1",
        effect: "0: no prompt-lookup draft tokens for a row decoding alone on CPU (docs/engine.md)",
    },
    Variable {
        name: "CODEGEN_DEVICE_HEAD",
        value: "0 or 1",
        effect: "force greedy token choice on the device off or on (default: on under CUDA)",
    },
    Variable {
        name: "CODEGEN_CUDA_GRAPH",
        value: "0 or 1",
        effect: "force CUDA-graph decode off or on (default: on under CUDA for greedy batches)",
    },
    Variable {
        name: "CODEGEN_GRAPHS_PER_SESSION",
        value: "count",
        effect: "captured CUDA graphs before the session is created again (default 64)",
    },
    Variable {
        name: "CODEGEN_SHARED_KV",
        value: "0 or 1",
        effect: "0: give each decode step its own KV buffers instead of sharing past and present",
    },
    Variable {
        name: "CODEGEN_ZERO_KV",
        value: "0 or 1",
        effect: "0: leave KV buffers on the device unzeroed (only for measuring what zeroing costs)",
    },
    Variable {
        name: "CODEGEN_PROFILE",
        value: "0 or 1",
        effect: "1: print where each generated batch spent its time",
    },
    Variable {
        name: "CODEGEN_FOLLOW_ACCEPTED",
        value: "0 or 1",
        effect: "0: greedy generations decode freely instead of keeping the accepted output through near ties (`[generation.follow_accepted]`)",
    },
    Variable {
        name: "CODEGEN_GENAI_PYTHON",
        value: "path",
        effect: "`codegen bench engine`: a Python that has onnxruntime-genai (default: a venv it builds)",
    },
    Variable {
        name: "CODEGEN_BENCH_GENAI_SCRIPT",
        value: "path",
        effect: "`codegen bench engine`: run this script instead of harness/python/bench_genai.py",
    },
];

/// A variable whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("failed to read environment variable {name}={value:?}: expected {expected}")]
pub struct EnvError {
    pub name: &'static str,
    pub value: String,
    pub expected: String,
}

/// Switches and sizes of the ONNX Runtime engine that the environment may force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineEnv {
    pub no_cache: bool,
    pub threads: Option<usize>,
    pub spin: bool,
    pub nondeterministic: bool,
    pub device_head: Option<bool>,
    pub cuda_graph: Option<bool>,
    pub graphs_per_session: Option<usize>,
    /// `Some(false)` turns the shared past/present KV buffers off.
    pub shared_kv: Option<bool>,
    /// `Some(false)` leaves device KV buffers unzeroed.
    pub zero_kv: Option<bool>,
    /// `Some(false)`: no prompt-lookup draft tokens on CPU.
    pub drafts: Option<bool>,
    /// `true`: ONNX Runtime's own attention kernel on CPU instead of ours.
    pub ort_attention: bool,
    pub profile: bool,
    /// `Some(false)`: decode freely, whatever the accepted outputs.
    pub follow_accepted: Option<bool>,
}

/// A test process that cargo-nextest started for one test of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextestProcess {
    /// `NEXTEST_RUN_ID`: shared by every test process of one `cargo nextest run` (letters,
    /// digits and `-` only, as it names a folder).
    pub run_id: String,
}

/// Everything the harness takes from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub config: Option<PathBuf>,
    /// Profile names from `CODEGEN_MODELS` (empty entries dropped; `None` when unset or empty).
    pub models: Option<Vec<String>>,
    /// `CODEGEN_SHARD`: run only this shard of the cases.
    pub shard: Option<Shard>,
    /// Set when cargo-nextest runs this process for one test (`NEXTEST_EXECUTION_MODE=
    /// process-per-test`, with `NEXTEST_RUN_ID`).
    pub nextest: Option<NextestProcess>,
    /// The per-user cache folder, already resolved from `CODEGEN_CACHE`, `XDG_CACHE_HOME`, `HOME`.
    pub cache: PathBuf,
    pub python: Option<PathBuf>,
    /// `CODEGEN_WHEELHOUSE`: pip takes wheels from this folder only.
    pub wheelhouse: Option<PathBuf>,
    pub ort_dylib: Option<PathBuf>,
    /// `CODEGEN_CUDA_LIBS`: the folder of CUDA libraries to use.
    pub cuda_libs: Option<PathBuf>,
    pub sandbox_level: Option<Level>,
    pub allow_host_root: Option<bool>,
    pub engine: EngineEnv,
    pub genai_python: Option<PathBuf>,
    pub genai_script: Option<PathBuf>,
    /// `PATH`, for finding programs named without a folder (`python3`).
    pub path: Option<OsString>,
    /// Whether insta's own `INSTA_OUTPUT` is set (otherwise the harness silences insta's
    /// printing, see `snapshot::silence_insta_output`).
    pub insta_output_set: bool,
}

impl Env {
    /// Read the process environment.
    pub fn from_process() -> Result<Env, EnvError> {
        Env::from_lookup(|name| std::env::var_os(name))
    }

    /// Read variables through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Env, EnvError> {
        let reader = Reader { lookup: &lookup };
        Ok(Env {
            config: reader.path("CODEGEN_CONFIG"),
            models: reader.text("CODEGEN_MODELS")?.and_then(|list| {
                let names: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                (!names.is_empty()).then_some(names)
            }),
            shard: reader.shard("CODEGEN_SHARD")?,
            nextest: reader.nextest()?,
            cache: reader.cache_dir(),
            python: reader.path("CODEGEN_PYTHON"),
            wheelhouse: reader.path("CODEGEN_WHEELHOUSE"),
            ort_dylib: reader.path("ORT_DYLIB_PATH"),
            cuda_libs: reader.path("CODEGEN_CUDA_LIBS"),
            sandbox_level: reader.parsed(
                "CODEGEN_SANDBOX_LEVEL",
                "strict, basic or none",
                |v| toml::Value::String(v.to_string()).try_into().ok(),
            )?,
            allow_host_root: reader.switch("CODEGEN_ALLOW_HOST_ROOT")?,
            engine: EngineEnv {
                no_cache: reader.switch("CODEGEN_NO_CACHE")?.unwrap_or(false),
                threads: reader.count("CODEGEN_ORT_THREADS")?,
                spin: reader.switch("CODEGEN_ORT_SPIN")?.unwrap_or(false),
                nondeterministic: reader
                    .switch("CODEGEN_ORT_NONDETERMINISTIC")?
                    .unwrap_or(false),
                device_head: reader.switch("CODEGEN_DEVICE_HEAD")?,
                cuda_graph: reader.switch("CODEGEN_CUDA_GRAPH")?,
                graphs_per_session: reader.count("CODEGEN_GRAPHS_PER_SESSION")?,
                shared_kv: reader.switch("CODEGEN_SHARED_KV")?,
                zero_kv: reader.switch("CODEGEN_ZERO_KV")?,
                drafts: reader.switch("CODEGEN_DRAFTS")?,
                ort_attention: reader.switch("CODEGEN_ORT_ATTENTION")?.unwrap_or(false),
                profile: reader.switch("CODEGEN_PROFILE")?.unwrap_or(false),
                follow_accepted: reader.switch("CODEGEN_FOLLOW_ACCEPTED")?,
            },
            genai_python: reader.path("CODEGEN_GENAI_PYTHON"),
            genai_script: reader.path("CODEGEN_BENCH_GENAI_SCRIPT"),
            path: lookup("PATH"),
            insta_output_set: lookup("INSTA_OUTPUT").is_some(),
        })
    }

    /// Find a program: a name with a `/` is taken as it is, a bare name is searched on `PATH`.
    pub fn which(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            return Some(PathBuf::from(program));
        }
        std::env::split_paths(self.path.as_ref()?)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    }

    /// The Python used to fetch wheels and build venvs.
    pub fn base_python(&self) -> PathBuf {
        self.python
            .clone()
            .unwrap_or_else(|| PathBuf::from("python3"))
    }
}

// How each setting the environment forces applies: the stages themselves read no environment
// and know nothing of [`Env`].

impl SandboxConfig {
    /// Apply what the environment forces: `CODEGEN_SANDBOX_LEVEL`, `CODEGEN_ALLOW_HOST_ROOT`, and
    /// a `python` named without
    /// a folder looked up on the environment's `PATH` (the sandbox itself reads no environment).
    pub fn apply_env(&mut self, env: &Env) {
        if let Some(level) = env.sandbox_level {
            self.level = level;
        }
        if let Some(allow) = env.allow_host_root {
            self.allow_host_root = allow;
        }
        if let Some(found) = env.which(&self.python) {
            self.python_from_path = !self.python.contains('/');
            self.python = found.to_string_lossy().into_owned();
        }
    }
}

impl OnnxOptions {
    /// Overlay what the environment forces (`CODEGEN_NO_CACHE`, `CODEGEN_ORT_THREADS`, ...).
    pub fn apply_env(&mut self, env: &EngineEnv) {
        self.no_cache |= env.no_cache;
        self.threads = env.threads.unwrap_or(self.threads);
        self.spin |= env.spin;
        self.nondeterministic |= env.nondeterministic;
        self.device_head = env.device_head.or(self.device_head);
        self.cuda_graph = env.cuda_graph.or(self.cuda_graph);
        self.graphs_per_session = env.graphs_per_session.or(self.graphs_per_session);
        self.shared_kv &= env.shared_kv.unwrap_or(true);
        self.zero_kv &= env.zero_kv.unwrap_or(true);
        self.drafts = env.drafts.unwrap_or(self.drafts);
        if env.ort_attention {
            self.attention = AttentionKernel::OnnxRuntime;
        }
        self.profile |= env.profile;
        if let Some(follow) = env.follow_accepted {
            self.settings.follow_accepted.enabled = follow;
        }
    }
}

impl Provisioner {
    /// The environment's cache, base Python and wheelhouse.
    pub fn from_env(env: &Env) -> Provisioner {
        Provisioner::new(env.cache.clone(), env.base_python())
            .with_wheelhouse(env.wheelhouse.clone())
    }
}

impl RuntimeSpec {
    /// The library for `provider` as the environment says (`ORT_DYLIB_PATH`, the cache, the
    /// base Python).
    pub fn from_env(provider: Provider, env: &Env) -> RuntimeSpec {
        RuntimeSpec {
            provider,
            dylib: env.ort_dylib.clone(),
            cache: env.cache.clone(),
            python: env.base_python(),
            cuda_libs: env.cuda_libs.clone(),
        }
    }
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<OsString>,
}

impl Reader<'_> {
    /// A set, non-empty value (empty counts as unset, as shells make it easy to export one).
    fn raw(&self, name: &str) -> Option<OsString> {
        (self.lookup)(name).filter(|v| !v.is_empty())
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        self.raw(name).map(PathBuf::from)
    }

    fn text(&self, name: &'static str) -> Result<Option<String>, EnvError> {
        self.raw(name)
            .map(|v| {
                v.into_string().map_err(|v| EnvError {
                    name,
                    value: v.to_string_lossy().into_owned(),
                    expected: "UTF-8 text".into(),
                })
            })
            .transpose()
    }

    fn parsed<T>(
        &self,
        name: &'static str,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, EnvError> {
        match self.text(name)? {
            None => Ok(None),
            Some(v) => parse(v.trim()).map(Some).ok_or(EnvError {
                name,
                value: v,
                expected: expected.into(),
            }),
        }
    }

    fn switch(&self, name: &'static str) -> Result<Option<bool>, EnvError> {
        self.parsed(name, "0 or 1", |v| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => None,
        })
    }

    /// `K/N`; the error says what was wrong with it.
    fn shard(&self, name: &'static str) -> Result<Option<Shard>, EnvError> {
        match self.text(name)? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e: ShardError| EnvError {
                name,
                expected: format!("K/N with 1 <= K <= N, such as 2/3 ({e})"),
                value: v,
            }),
        }
    }

    /// nextest's process-per-test mode, with its run id. Other execution modes (and nextest's
    /// list phase, which sets no mode) are not a per-test process.
    fn nextest(&self) -> Result<Option<NextestProcess>, EnvError> {
        if self.text("NEXTEST_EXECUTION_MODE")?.as_deref() != Some("process-per-test") {
            return Ok(None);
        }
        let name = "NEXTEST_RUN_ID";
        let run_id = self.text(name)?.unwrap_or_default();
        let ok = !run_id.is_empty()
            && run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(EnvError {
                name,
                value: run_id,
                expected: "a run id of letters, digits and `-` (cargo-nextest sets a UUID with NEXTEST_EXECUTION_MODE=process-per-test)".into(),
            });
        }
        Ok(Some(NextestProcess { run_id }))
    }

    fn count(&self, name: &'static str) -> Result<Option<usize>, EnvError> {
        self.parsed(name, "a whole number", |v| v.parse().ok())
    }

    fn cache_dir(&self) -> PathBuf {
        if let Some(dir) = self.path("CODEGEN_CACHE") {
            return dir;
        }
        if let Some(dir) = self.path("XDG_CACHE_HOME") {
            return dir.join("codegen-harness");
        }
        if let Some(home) = self.path("HOME") {
            return home.join(".cache").join("codegen-harness");
        }
        std::env::temp_dir().join("codegen-harness-cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, EnvError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Env::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn unset_means_defaults() {
        let e = env(&[("HOME", "/home/u")]).unwrap();
        assert_eq!(e.cache, PathBuf::from("/home/u/.cache/codegen-harness"));
        assert_eq!(e.engine, EngineEnv::default());
        assert_eq!(e.models, None);
        assert_eq!(e.base_python(), PathBuf::from("python3"));
    }

    #[test]
    fn values_are_typed() {
        let e = env(&[
            ("CODEGEN_MODELS", " a, ,b "),
            ("CODEGEN_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("CODEGEN_NO_CACHE", "1"),
            ("CODEGEN_ORT_THREADS", "3"),
            ("CODEGEN_CUDA_GRAPH", "0"),
            ("CODEGEN_SANDBOX_LEVEL", "basic"),
            ("CODEGEN_ALLOW_HOST_ROOT", "1"),
            ("CODEGEN_WHEELHOUSE", "/w"),
        ])
        .unwrap();
        assert_eq!(e.wheelhouse, Some(PathBuf::from("/w")));
        assert_eq!(e.models, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(e.cache, PathBuf::from("/c"));
        assert!(e.engine.no_cache);
        assert_eq!(e.engine.threads, Some(3));
        assert_eq!(e.engine.cuda_graph, Some(false));
        assert_eq!(e.engine.device_head, None);
        assert_eq!(e.sandbox_level, Some(Level::Basic));
        assert_eq!(e.allow_host_root, Some(true));
        let e = env(&[("XDG_CACHE_HOME", "/x"), ("CODEGEN_NO_CACHE", "")]).unwrap();
        assert_eq!(e.cache, PathBuf::from("/x/codegen-harness"));
        assert!(!e.engine.no_cache);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = env(&[("CODEGEN_ORT_THREADS", "many")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to read environment variable CODEGEN_ORT_THREADS=\"many\": expected a whole number"
        );
        let err = env(&[("CODEGEN_CUDA_GRAPH", "maybe")]).unwrap_err();
        assert_eq!(err.name, "CODEGEN_CUDA_GRAPH");
        let err = env(&[("CODEGEN_SANDBOX_LEVEL", "paranoid")]).unwrap_err();
        assert!(err.to_string().contains("strict, basic or none"), "{err}");
        let err = env(&[("CODEGEN_SHARD", "4/3")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to read environment variable CODEGEN_SHARD=\"4/3\": expected K/N with 1 <= K <= N, such as 2/3 (failed to read shard 4/3: K must be between 1 and N)"
        );
        let shard = env(&[("CODEGEN_SHARD", "2/3")]).unwrap().shard;
        assert_eq!(shard, Some(Shard::new(2, 3).unwrap()));
    }

    #[test]
    fn nextest_per_test_process_needs_its_run_id() {
        assert_eq!(env(&[("NEXTEST", "1")]).unwrap().nextest, None);
        let e = env(&[
            ("NEXTEST_EXECUTION_MODE", "process-per-test"),
            ("NEXTEST_RUN_ID", "1f79aa0d-4ec8-4a5c-aa83-5e8dc2f36573"),
        ])
        .unwrap();
        assert_eq!(
            e.nextest,
            Some(NextestProcess {
                run_id: "1f79aa0d-4ec8-4a5c-aa83-5e8dc2f36573".into()
            })
        );
        let err = env(&[("NEXTEST_EXECUTION_MODE", "process-per-test")]).unwrap_err();
        assert_eq!(err.name, "NEXTEST_RUN_ID");
        let err = env(&[
            ("NEXTEST_EXECUTION_MODE", "process-per-test"),
            ("NEXTEST_RUN_ID", "../x"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("letters, digits"), "{err}");
    }

    #[test]
    fn every_variable_is_in_the_documented_table() {
        let docs = include_str!("../../docs/configuration.md");
        for v in VARIABLES {
            assert!(
                docs.contains(&format!("| `{}", v.name)),
                "docs/configuration.md's environment table lacks {}",
                v.name
            );
        }
    }
}
