//! The engine opened lazily: a [`CompletionSource`] that answers from the generation cache
//! without loading the model, and loads it (once, [`super::open_with`]) only when a request has
//! a sample the cache does not hold.
//!
//! A cache key needs the prompt's token ids (the chat template rendered, then tokenized: the ids
//! are remembered under `<cache>/prompt-ids/` by the model's hash and the prompt's text, so a
//! warm process does not even load the tokenizer), the model folder's hash (remembered per
//! folder) and the facts the loaded
//! model would report ([`KeyFacts`]: provider, device head, CUDA graphs). Those are predicted
//! from the options as the loader decides them; a wrong prediction only makes keys miss, and a
//! miss loads the model, which gives the same answers as an eagerly opened engine. A cached
//! answer is not checked against this machine's memory budget: it was generated within one.
//!
//! cargo-nextest runs each trial in its own process: with the cache filled beforehand
//! (`codegen generate`), such a process never loads the model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::gencache::{self, GenerationCache};
use super::scheduler::{self, KeyFacts};
use super::{AttentionKernel, EngineError, OnnxOptions, OnnxSource, attention, folder};
use crate::device::Provider;
use crate::engine::{Completion, CompletionSource, DeviceUsage, LoadFacts, Request, SourceError};
use crate::prompt::{Prompt, TemplateTokens};
use crate::provision::cache::hex;
use sha2::{Digest, Sha256};

/// The engine, loaded on the first request the generation cache cannot answer.
pub struct LazyOnnxSource {
    dir: PathBuf,
    options: OnnxOptions,
    chat_template: Option<String>,
    template_tokens: TemplateTokens,
    /// Loaded on the first prompt whose ids are not remembered.
    tokenizer: OnceLock<Result<Tokenizer, EngineError>>,
    facts: KeyFacts,
    cache: GenerationCache,
    engine: OnceLock<Result<OnnxSource, EngineError>>,
}

impl std::fmt::Debug for LazyOnnxSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyOnnxSource")
            .field("dir", &self.dir)
            .field("loaded", &self.loaded())
            .finish()
    }
}

fn read_json(dir: &Path, name: &str) -> Result<Json, EngineError> {
    let text = std::fs::read_to_string(dir.join(name))
        .map_err(|e| EngineError::folder(dir, format!("failed to read {name}: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::folder(dir, format!("failed to parse {name}: {e}")))
}

/// The chat template and the tokens it names, from the folder's small config files (the end-of-
/// sequence ids, which need the tokenizer, play no part in a prompt's text).
fn template_of(dir: &Path) -> Result<(Option<String>, TemplateTokens), EngineError> {
    let tokenizer_config = read_json(dir, "tokenizer_config.json")?;
    let generation_config = read_json(dir, "generation_config.json").unwrap_or(Json::Null);
    let config = read_json(dir, "config.json").unwrap_or(Json::Null);
    let tokens = folder::token_spec(dir, &tokenizer_config, &generation_config, &config, |_| {
        Some(u32::MAX)
    })?;
    Ok((tokens.chat_template, tokens.template_tokens))
}

/// The key facts the loader would report for `options`, predicted: the provider asked for (CPU
/// when CUDA may fall back and there is no driver), the device head as `Model::load` decides
/// it, and CUDA-graph decode where it would be asked for and could apply (captured graphs need
/// the device head and shared KV buffers; a folder whose graph cannot share them misses), and
/// attention on our kernel on a CPU where `routes` (the folder's graph has nodes it takes, and
/// this CPU runs it) and the options leave it on.
pub(crate) fn predicted_facts(
    options: &OnnxOptions,
    model_hash: String,
    driver_present: bool,
    routes: bool,
) -> KeyFacts {
    let provider = match options.provider {
        Provider::Cuda if options.cpu_fallback && !driver_present => Provider::Cpu,
        p => p,
    };
    let device_head = options.device_head.unwrap_or(provider == Provider::Cuda);
    let fixed_decode = options.cuda_graph.unwrap_or(provider == Provider::Cuda);
    KeyFacts {
        model_hash,
        provider,
        device_head,
        cuda_graph: fixed_decode && device_head && options.shared_kv,
        own_attention: routes
            && provider == Provider::Cpu
            && options.attention == AttentionKernel::Own,
    }
}

/// Open `model_dir` lazily: read its tokenizer and hash its files, load nothing else.
pub fn open_lazy(model_dir: &Path, options: OnnxOptions) -> Result<LazyOnnxSource, EngineError> {
    let (chat_template, template_tokens) = template_of(model_dir)?;
    let model_hash =
        gencache::model_hash(model_dir, &options.cache).map_err(|e| EngineError::Hash {
            folder: model_dir.to_path_buf(),
            message: e.to_string(),
        })?;
    let facts = predicted_facts(
        &options,
        model_hash,
        crate::provision::runtime::nvidia_driver_present(),
        attention::own_graph(&model_dir.join("model.onnx")).is_some(),
    );
    Ok(LazyOnnxSource {
        dir: model_dir.to_path_buf(),
        cache: GenerationCache::new(!options.no_cache, &options.cache),
        options,
        chat_template,
        template_tokens,
        tokenizer: OnceLock::new(),
        facts,
        engine: OnceLock::new(),
    })
}

impl LazyOnnxSource {
    /// Whether the model has been loaded (a request missed the cache).
    pub fn loaded(&self) -> bool {
        self.engine.get().is_some()
    }

    /// How many sequences the loaded model generated (0 while not loaded).
    pub fn generated_sequences(&self) -> u64 {
        match self.engine.get() {
            Some(Ok(engine)) => engine.generated_sequences(),
            _ => 0,
        }
    }

    /// The model, loaded on first call.
    fn engine(&self) -> Result<&OnnxSource, EngineError> {
        self.engine
            .get_or_init(|| super::open_with(&self.dir, self.options.clone()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The token ids of `prompt`: remembered ones, or the tokenizer's (then remembered).
    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let (text, special) = scheduler::prompt_text(
            &self.dir,
            self.chat_template.as_deref(),
            &self.template_tokens,
            prompt,
        )?;
        let key = hex(&Sha256::digest(
            format!("{}\0{special}\0{text}", self.facts.model_hash).as_bytes(),
        ));
        let memo = self
            .options
            .cache
            .join("prompt-ids")
            .join(&key[..2])
            .join(format!("{key}.json"));
        if let Some(ids) = std::fs::read(&memo)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<u32>>(&b).ok())
        {
            return Ok(ids);
        }
        let tokenizer = self
            .tokenizer
            .get_or_init(|| {
                Tokenizer::from_file(self.dir.join("tokenizer.json")).map_err(|e| {
                    EngineError::folder(&self.dir, format!("failed to load tokenizer.json: {e}"))
                })
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let ids = tokenizer
            .encode(text.as_str(), special)
            .map_err(|e| EngineError::Tokenize(e.to_string()))?
            .get_ids()
            .to_vec();
        // Best effort, written whole (a temporary file renamed): a reader sees all or nothing.
        if let (Some(dir), Ok(bytes)) = (memo.parent(), serde_json::to_vec(&ids)) {
            let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &memo);
            }
        }
        Ok(ids)
    }

    /// Every sample of `request` from the cache, or `None` when one misses (or cannot be keyed).
    fn cached(&self, request: &Request<'_>) -> Option<Vec<Completion>> {
        if !self.cache.enabled() {
            return None;
        }
        let plan = scheduler::plan(
            self.prompt_ids(request.prompt).ok()?,
            &self.facts,
            &self.options.settings,
            None,
            request,
        )
        .ok()?;
        let prefill = request.prompt.prefill().unwrap_or_default();
        plan.keys
            .iter()
            .map(|key| {
                self.cache.get(key).map(|mut c| {
                    // As the engine answers: the prefill, then what the model generated.
                    c.text.insert_str(0, prefill);
                    c
                })
            })
            .collect()
    }
}

impl CompletionSource for LazyOnnxSource {
    fn prepare(&self, requests: &[Request<'_>]) -> Result<(), SourceError> {
        if self.loaded() || requests.iter().any(|r| self.cached(r).is_none()) {
            return self
                .engine()
                .map_err(SourceError::Engine)?
                .prepare(requests);
        }
        Ok(())
    }

    fn complete(&self, request: &Request<'_>) -> Result<Vec<Completion>, SourceError> {
        if let Some(hit) = self.cached(request) {
            return Ok(hit);
        }
        self.engine()
            .map_err(|e| SourceError::Generation {
                case_id: request.case_key.to_string(),
                message: e.to_string(),
            })?
            .complete(request)
    }

    fn describe(&self) -> BTreeMap<String, String> {
        if let Some(Ok(engine)) = self.engine.get() {
            return engine.describe();
        }
        [
            ("model", self.dir.display().to_string()),
            ("model_sha256", self.facts.model_hash.clone()),
            ("device", self.facts.provider.to_string()),
            ("device_head", self.facts.device_head.to_string()),
            ("cuda_graph", self.facts.cuda_graph.to_string()),
            ("batch_size", self.options.settings.batch_size.to_string()),
            ("temperature", self.options.settings.temperature.to_string()),
            ("seed", self.options.settings.seed.to_string()),
            (
                "loaded",
                "every completion came from the generation cache".into(),
            ),
            (
                "size_on_disk_bytes",
                crate::engine::folder_size(&self.dir).map_or_else(String::new, |b| b.to_string()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn devices(&self) -> Vec<DeviceUsage> {
        match self.engine.get() {
            Some(Ok(engine)) => engine.devices(),
            _ => Vec::new(),
        }
    }

    fn load_facts(&self) -> Option<LoadFacts> {
        match self.engine.get() {
            Some(Ok(engine)) => engine.load_facts(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::GenerationSettings;
    use crate::provision::runtime::RuntimeSpec;

    fn options(provider: Provider) -> OnnxOptions {
        let mut runtime = RuntimeSpec::from_env(provider, &crate::run::env::Env::default());
        runtime.provider = provider;
        let mut o = OnnxOptions::new(runtime, "/c".into(), GenerationSettings::default());
        o.provider = provider;
        o
    }

    #[test]
    fn facts_are_predicted_as_the_loader_decides_them() {
        let cpu = predicted_facts(&options(Provider::Cpu), "h".into(), false, true);
        assert_eq!(
            (
                cpu.provider,
                cpu.device_head,
                cpu.cuda_graph,
                cpu.own_attention
            ),
            (Provider::Cpu, false, false, true)
        );
        let cuda = predicted_facts(&options(Provider::Cuda), "h".into(), true, true);
        assert_eq!(
            (
                cuda.provider,
                cuda.device_head,
                cuda.cuda_graph,
                cuda.own_attention
            ),
            (Provider::Cuda, true, true, false)
        );
        let mut o = options(Provider::Cuda);
        o.cuda_graph = Some(false);
        assert!(!predicted_facts(&o, "h".into(), true, true).cuda_graph);
        o.cpu_fallback = true;
        let fallen = predicted_facts(&o, "h".into(), false, true);
        assert_eq!(
            (fallen.provider, fallen.device_head, fallen.own_attention),
            (Provider::Cpu, false, true)
        );
        let mut ort = options(Provider::Cpu);
        ort.attention = AttentionKernel::OnnxRuntime;
        assert!(!predicted_facts(&ort, "h".into(), false, true).own_attention);
        assert!(!predicted_facts(&options(Provider::Cpu), "h".into(), false, false).own_attention);
    }
}
