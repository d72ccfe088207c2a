//! A configured model profile turned into a running completion source: the reference
//! solutions, a replay file, or a model run by ONNX Runtime (resolving `device = "auto"` once,
//! and preparing the model folder, exporting a default model on first use).

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::config::{Config, ModelProfile, SourceConfig};
use crate::device::{Device, Gpus, Precision, Provider};
use crate::engine::onnx::{self, OnnxOptions};
use crate::engine::replay::{ReferenceSource, ReplaySource};
use crate::engine::{CompletionSource, GenerationSettings, SourceError};
use crate::provision::Provisioner;
use crate::provision::models::ModelError;
use crate::provision::runtime::{self, RuntimeSpec};
use crate::run::env::Env;

/// Why a profile's source could not be opened.
#[derive(Debug, Error)]
pub enum ProfileError {
    #[error(transparent)]
    Replay(SourceError),
    #[error("failed to prepare model `{model}`: {source}")]
    Model {
        model: String,
        #[source]
        source: ModelError,
    },
    #[error(transparent)]
    Engine(onnx::EngineError),
    #[error("failed to choose the GPUs: {0}")]
    Gpus(crate::device::ParseError),
}

/// How an ONNX profile's model is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loading {
    /// Load the model now.
    Eager,
    /// Answer from the generation cache and load the model only for a request it misses
    /// ([`onnx::LazyOnnxSource`]): a cargo-nextest test process, `codegen finish`.
    Lazy,
}

/// Open the completion source a profile names.
pub fn open_source(
    config: &Config,
    profile: &ModelProfile,
    env: &Env,
    loading: Loading,
) -> Result<Arc<dyn CompletionSource>, ProfileError> {
    match &profile.source {
        SourceConfig::Reference => Ok(Arc::new(ReferenceSource)),
        SourceConfig::Replay { path } => ReplaySource::open(&config.resolve(path))
            .map(|s| Arc::new(s) as Arc<dyn CompletionSource>)
            .map_err(ProfileError::Replay),
        SourceConfig::Onnx {
            model,
            device,
            gpus,
            precision,
        } => open_engine(
            config,
            OnnxProfile {
                model,
                device: *device,
                gpus,
                precision: *precision,
            },
            config.generation_for(profile),
            env,
            loading,
        ),
    }
}

/// An ONNX profile's `[[models]]` fields.
struct OnnxProfile<'a> {
    model: &'a str,
    device: Device,
    gpus: &'a Gpus,
    precision: Precision,
}

/// Open the ONNX Runtime engine for a profile: resolve the device, make sure the model folder
/// exists (a default model is downloaded and exported on first use), and load it.
fn open_engine(
    config: &Config,
    profile: OnnxProfile<'_>,
    settings: GenerationSettings,
    env: &Env,
    loading: Loading,
) -> Result<Arc<dyn CompletionSource>, ProfileError> {
    let OnnxProfile {
        model,
        device,
        gpus,
        precision,
    } = profile;
    let resolution = runtime::resolve_device(device);
    if device == Device::Auto {
        eprintln!("codegen: device auto -> {resolution}");
    }
    let device_ids = match (resolution.provider, gpus) {
        (_, Gpus::First) | (Provider::Cpu, _) => vec![0],
        (Provider::Cuda, gpus) => gpus
            .resolve(crate::machine::gpu_count())
            .map_err(ProfileError::Gpus)?,
    };
    // A relative folder or file is relative to the project root; a bare name is a default model.
    let resolved = config.resolve(Path::new(model));
    let name_or_path = if resolved.exists() {
        resolved.to_string_lossy().into_owned()
    } else {
        model.to_string()
    };
    let dir = crate::provision::models::ensure_model(
        &Provisioner::from_env(env),
        &name_or_path,
        resolution.provider.target(),
        precision,
    )
    .map_err(|source| ProfileError::Model {
        model: model.to_string(),
        source,
    })?;
    let runtime = RuntimeSpec::from_env(resolution.provider, env);
    let mut options = OnnxOptions::new(runtime, env.cache.clone(), settings);
    options.cpu_fallback = resolution.fallback_to_cpu;
    options.device_ids = device_ids;
    options.apply_env(&env.engine);
    match loading {
        Loading::Eager => {
            onnx::open_with(&dir, options).map(|s| Arc::new(s) as Arc<dyn CompletionSource>)
        }
        Loading::Lazy => {
            onnx::open_lazy(&dir, options).map(|s| Arc::new(s) as Arc<dyn CompletionSource>)
        }
    }
    .map_err(ProfileError::Engine)
}
