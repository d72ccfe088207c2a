//! What a model folder says about itself, as plain data: the graph's inputs and outputs
//! checked against what the engine feeds and reads (names, element types, the KV layout), the
//! sizes `config.json` gives, and the special tokens and chat template of the tokenizer
//! configs. Pure functions over already-read values, so every rule is tested without ONNX
//! Runtime; `model.rs` reads the files and the session and hands them here.

use std::path::Path;

use serde_json::Value as Json;

use super::error::EngineError;
use super::tensor::Float;
use crate::prompt::TemplateTokens;

/// How the graph expects its cache and positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// onnxruntime-genai: no `position_ids`; GroupQueryAttention derives positions and lengths
    /// from `attention_mask` and keeps each sequence's cache packed from position 0. Batches are
    /// right-padded and the mask marks each row's valid length.
    Genai,
    /// Hugging Face Optimum: explicit `position_ids`, the cache grows by concatenation and the
    /// mask covers every cached position (padding holes included).
    Optimum,
}

/// Element type of a graph input or output, as far as the engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Element {
    F32,
    F16,
    Other(String),
}

/// One graph input or output: its name, element type and shape (-1 for a dynamic axis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphValue {
    pub name: String,
    pub element: Element,
    pub shape: Vec<i64>,
}

/// The graph's contract with the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphSpec {
    pub layout: Layout,
    pub layers: usize,
    pub kv_type: Float,
    pub logits_type: Float,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The graph takes `logits_positions` [batch, n]: it computes logits only at those positions
    /// (our exporter's graphs; a prefill then needs one row per sequence, not one per token).
    pub logits_positions: bool,
}

/// The name of the optional input that selects the positions whose logits the graph computes.
pub(crate) const LOGITS_POSITIONS: &str = "logits_positions";

fn float_of(element: &Element, what: &str) -> Result<Float, String> {
    match element {
        Element::F32 => Ok(Float::F32),
        Element::F16 => Ok(Float::F16),
        Element::Other(other) => Err(format!(
            "{what} has element type {other}; the engine runs float32 or float16"
        )),
    }
}

/// Check `model.onnx`'s inputs and outputs, with `config.json` for sizes the graph leaves
/// dynamic. `folder` is used in errors.
pub(crate) fn graph_spec(
    folder: &Path,
    inputs: &[GraphValue],
    outputs: &[GraphValue],
    config: &Json,
) -> Result<GraphSpec, EngineError> {
    let bad = |problem: String| EngineError::folder(folder, problem);
    let input = |n: &str| inputs.iter().find(|v| v.name == n);
    let layers = kv_layers(inputs, outputs).map_err(&bad)?;
    let logits = outputs
        .iter()
        .find(|v| v.name == "logits")
        .ok_or_else(|| bad("model.onnx: graph output `logits` is missing".into()))?;
    let logits_type = float_of(&logits.element, "output `logits`").map_err(&bad)?;
    let past0 = input("past_key_values.0.key").expect("checked above");
    let kv_type = float_of(&past0.element, "input `past_key_values.0.key`").map_err(&bad)?;
    let shape = &past0.shape;
    if shape.len() != 4 {
        return Err(bad(format!(
            "model.onnx: `past_key_values.0.key` has rank {}, expected 4 [batch, kv_heads, past, head_dim]",
            shape.len()
        )));
    }
    let (kv_heads, head_dim) = kv_sizes(shape, config).map_err(&bad)?;
    let layout = if input("position_ids").is_some() {
        Layout::Optimum
    } else {
        Layout::Genai
    };
    if let Some(unknown) = inputs.iter().find(|v| {
        !matches!(
            v.name.as_str(),
            "input_ids" | "attention_mask" | "position_ids" | LOGITS_POSITIONS
        ) && !v.name.starts_with("past_key_values.")
    }) {
        return Err(bad(format!(
            "model.onnx: unexpected graph input `{}` (the engine feeds input_ids, attention_mask, position_ids, past_key_values.*)",
            unknown.name
        )));
    }
    // ONNX Runtime lists an input with a default value among the initializers, so the
    // exporter also names it in config.json.
    let logits_positions = input(LOGITS_POSITIONS).is_some()
        || config
            .pointer("/codegen_export/logits_positions")
            .and_then(Json::as_str)
            == Some(LOGITS_POSITIONS);
    Ok(GraphSpec {
        layout,
        layers,
        kv_type,
        logits_type,
        kv_heads,
        head_dim,
        logits_positions,
    })
}

/// The number of KV-cached layers: every one with its past inputs and present outputs, beside
/// `input_ids` and `attention_mask`.
fn kv_layers(inputs: &[GraphValue], outputs: &[GraphValue]) -> Result<usize, String> {
    let input = |n: &str| inputs.iter().find(|v| v.name == n);
    let has_output = |n: &str| outputs.iter().any(|v| v.name == n);
    for req in ["input_ids", "attention_mask"] {
        if input(req).is_none() {
            let names: Vec<&str> = inputs.iter().map(|v| v.name.as_str()).collect();
            return Err(format!(
                "model.onnx: graph input `{req}` is missing (inputs: {})",
                names.join(", ")
            ));
        }
    }
    let layers = (0..)
        .take_while(|i| input(&format!("past_key_values.{i}.key")).is_some())
        .count();
    if layers == 0 {
        return Err(
            "model.onnx: no `past_key_values.0.key` input (a KV-cached decoder is required)".into(),
        );
    }
    for i in 0..layers {
        for kind in ["key", "value"] {
            if input(&format!("past_key_values.{i}.{kind}")).is_none() {
                return Err(format!(
                    "model.onnx: graph input `past_key_values.{i}.{kind}` is missing"
                ));
            }
            if !has_output(&format!("present.{i}.{kind}")) {
                return Err(format!(
                    "model.onnx: graph output `present.{i}.{kind}` is missing"
                ));
            }
        }
    }
    Ok(layers)
}

/// (kv_heads, head_dim) from the past's `shape`, or `config.json` where the graph leaves them
/// dynamic.
fn kv_sizes(shape: &[i64], config: &Json) -> Result<(usize, usize), String> {
    let sizes = config_sizes(config);
    let kv_heads = if shape[1] > 0 {
        shape[1] as usize
    } else {
        sizes.kv_heads_or_heads().ok_or_else(|| {
            "kv_heads is dynamic in the graph and config.json has no num_key_value_heads"
                .to_string()
        })?
    };
    let head_dim = if shape[3] > 0 {
        shape[3] as usize
    } else {
        sizes.head_dim_or_derived().ok_or_else(|| {
            "head_dim is dynamic in the graph and config.json has no head_dim".to_string()
        })?
    };
    Ok((kv_heads, head_dim))
}

/// Names real configs give each size (Hugging Face first, then GPT-2, Falcon, ChatGLM and
/// llama.cpp-style aliases): the engine and `codegen doctor` read sizes through these lists only.
pub(crate) const LAYER_KEYS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers", "n_layers"];
pub(crate) const HEAD_KEYS: &[&str] = &["num_attention_heads", "n_head", "num_heads", "n_heads"];
pub(crate) const KV_HEAD_KEYS: &[&str] = &[
    "num_key_value_heads",
    "n_head_kv",
    "num_kv_heads",
    "multi_query_group_num",
];
pub(crate) const HIDDEN_KEYS: &[&str] = &["hidden_size", "n_embd", "d_model"];
pub(crate) const VOCAB_KEYS: &[&str] = &["vocab_size", "n_vocab", "padded_vocab_size"];
pub(crate) const INTERMEDIATE_KEYS: &[&str] = &["intermediate_size", "n_inner", "ffn_hidden_size"];

/// The sizes `config.json` states (`None` where it says nothing under any alias).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConfigSizes {
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    /// As stated; absent means multi-head attention (as many KV heads as heads).
    pub kv_heads: Option<usize>,
    pub hidden: Option<usize>,
    /// As stated; absent means `hidden / heads`.
    pub head_dim: Option<usize>,
    pub vocab: Option<usize>,
    pub intermediate: Option<usize>,
}

impl ConfigSizes {
    /// KV heads, defaulting to the attention heads as Hugging Face does.
    pub fn kv_heads_or_heads(&self) -> Option<usize> {
        self.kv_heads.or(self.heads)
    }

    /// `head_dim`, else `hidden / heads`.
    pub fn head_dim_or_derived(&self) -> Option<usize> {
        self.head_dim.or_else(|| Some(self.hidden? / self.heads?))
    }
}

/// The first of `keys` that `config` gives as a whole number.
pub(crate) fn config_usize(config: &Json, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| config.get(*k).and_then(Json::as_u64))
        .map(|n| n as usize)
}

/// Read the sizes of `config.json` under every alias in the lists above.
pub(crate) fn config_sizes(config: &Json) -> ConfigSizes {
    ConfigSizes {
        layers: config_usize(config, LAYER_KEYS),
        heads: config_usize(config, HEAD_KEYS),
        kv_heads: config_usize(config, KV_HEAD_KEYS),
        hidden: config_usize(config, HIDDEN_KEYS),
        head_dim: config_usize(config, &["head_dim"]),
        intermediate: config_usize(config, INTERMEDIATE_KEYS),
        vocab: config_usize(config, VOCAB_KEYS),
    }
}

/// The tokenizer's special tokens and chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenSpec {
    pub eos: Vec<u32>,
    pub pad: u32,
    pub chat_template: Option<String>,
    pub template_tokens: TemplateTokens,
}

/// A token given as a string or as `{"content": ...}` (tokenizer_config.json style).
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Special tokens from `tokenizer_config.json`, `generation_config.json` and `config.json`
/// (the end-of-sequence ids of all three, in that order of preference), `token_id` mapping a
/// token's text to its id.
pub(crate) fn token_spec(
    folder: &Path,
    tokenizer_config: &Json,
    generation_config: &Json,
    config: &Json,
    token_id: impl Fn(&str) -> Option<u32>,
) -> Result<TokenSpec, EngineError> {
    let chat_template = match tokenizer_config.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    };
    let bos_token = token_text(tokenizer_config.get("bos_token")).unwrap_or_default();
    let eos_token = token_text(tokenizer_config.get("eos_token")).unwrap_or_default();
    let mut eos = ids_of(generation_config.get("eos_token_id"));
    for id in ids_of(config.get("eos_token_id"))
        .into_iter()
        .chain(token_id(&eos_token))
    {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    if eos.is_empty() {
        return Err(EngineError::folder(
            folder,
            "no end-of-sequence token (generation_config.json `eos_token_id`, config.json `eos_token_id` or tokenizer_config.json `eos_token`)",
        ));
    }
    let pad = ids_of(generation_config.get("pad_token_id"))
        .first()
        .copied()
        .unwrap_or(eos[0]);
    Ok(TokenSpec {
        eos,
        pad,
        chat_template,
        template_tokens: TemplateTokens {
            bos_token,
            eos_token,
        },
    })
}

/// How many positions the model was trained for (`max_position_embeddings` and the aliases
/// real configs use), if the folder says.
pub(crate) fn context_length(config: &Json) -> Option<usize> {
    [
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
    ]
    .iter()
    .find_map(|k| config.get(*k).and_then(Json::as_u64))
    .map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(name: &str, element: Element, shape: &[i64]) -> GraphValue {
        GraphValue {
            name: name.into(),
            element,
            shape: shape.to_vec(),
        }
    }

    fn genai(layers: usize, element: Element) -> (Vec<GraphValue>, Vec<GraphValue>) {
        let mut inputs = vec![
            value("input_ids", Element::Other("int64".into()), &[-1, -1]),
            value("attention_mask", Element::Other("int64".into()), &[-1, -1]),
        ];
        let mut outputs = vec![value("logits", Element::F32, &[-1, -1, 100])];
        for i in 0..layers {
            for kind in ["key", "value"] {
                inputs.push(value(
                    &format!("past_key_values.{i}.{kind}"),
                    element.clone(),
                    &[-1, 2, -1, 8],
                ));
                outputs.push(value(
                    &format!("present.{i}.{kind}"),
                    element.clone(),
                    &[-1, 2, -1, 8],
                ));
            }
        }
        (inputs, outputs)
    }

    #[test]
    fn a_genai_graph_is_described() {
        let (inputs, outputs) = genai(3, Element::F16);
        let spec = graph_spec(Path::new("m"), &inputs, &outputs, &Json::Null).unwrap();
        assert_eq!(
            spec,
            GraphSpec {
                layout: Layout::Genai,
                layers: 3,
                kv_type: Float::F16,
                logits_type: Float::F32,
                kv_heads: 2,
                head_dim: 8,
                logits_positions: false,
            }
        );
        // Our exporter names the optional input in config.json (ONNX Runtime does not list it).
        let config =
            serde_json::json!({"codegen_export": {"logits_positions": "logits_positions"}});
        let spec = graph_spec(Path::new("m"), &inputs, &outputs, &config).unwrap();
        assert!(spec.logits_positions);
    }

    #[test]
    fn dynamic_sizes_come_from_config_and_position_ids_mean_optimum() {
        let (mut inputs, outputs) = genai(1, Element::F32);
        for v in inputs.iter_mut().filter(|v| v.name.starts_with("past")) {
            v.shape = vec![-1, -1, -1, -1];
        }
        inputs.push(value(
            "position_ids",
            Element::Other("int64".into()),
            &[-1, -1],
        ));
        let config = serde_json::json!({"num_key_value_heads": 4, "hidden_size": 64, "num_attention_heads": 8});
        let spec = graph_spec(Path::new("m"), &inputs, &outputs, &config).unwrap();
        assert_eq!(
            (spec.layout, spec.kv_heads, spec.head_dim),
            (Layout::Optimum, 4, 8)
        );
        let err = graph_spec(Path::new("m"), &inputs, &outputs, &Json::Null).unwrap_err();
        assert!(err.to_string().contains("no num_key_value_heads"), "{err}");
    }

    #[test]
    fn broken_contracts_are_named() {
        let (inputs, outputs) = genai(2, Element::F32);
        let check = |inputs: &[GraphValue], outputs: &[GraphValue], says: &str| {
            let err = graph_spec(Path::new("/m"), inputs, outputs, &Json::Null)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("failed to use model folder /m: "), "{err}");
            assert!(err.contains(says), "{err}");
        };
        check(&inputs[1..], &outputs, "graph input `input_ids` is missing");
        check(&inputs[..2], &outputs, "no `past_key_values.0.key` input");
        let no_value: Vec<GraphValue> = inputs
            .iter()
            .filter(|v| v.name != "past_key_values.1.value")
            .cloned()
            .collect();
        check(&no_value, &outputs, "`past_key_values.1.value` is missing");
        check(&inputs, &outputs[1..], "graph output `logits` is missing");
        let mut extra = inputs.clone();
        extra.push(value(
            "token_type_ids",
            Element::Other("int64".into()),
            &[-1, -1],
        ));
        check(&extra, &outputs, "unexpected graph input `token_type_ids`");
        let mut int8 = inputs.clone();
        int8[2].element = Element::Other("int8".into());
        check(&int8, &outputs, "element type int8");
        let mut rank3 = inputs.clone();
        rank3[2].shape = vec![-1, 2, 8];
        check(&rank3, &outputs, "rank 3");
    }

    #[test]
    fn special_tokens_merge_the_three_configs() {
        let tok = serde_json::json!({"eos_token": {"content": "<|im_end|>"}, "bos_token": "<s>", "chat_template": "{{ x }}"});
        let gen_cfg = serde_json::json!({"eos_token_id": [7, 8], "pad_token_id": 3});
        let config = serde_json::json!({"eos_token_id": 8});
        let spec = token_spec(Path::new("m"), &tok, &gen_cfg, &config, |t| {
            (t == "<|im_end|>").then_some(9)
        })
        .unwrap();
        assert_eq!(spec.eos, vec![7, 8, 9]);
        assert_eq!(spec.pad, 3);
        assert_eq!(spec.chat_template.as_deref(), Some("{{ x }}"));
        assert_eq!(spec.template_tokens.bos_token, "<s>");
        let err = token_spec(
            Path::new("m"),
            &Json::Null,
            &Json::Null,
            &Json::Null,
            |_| None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no end-of-sequence token"),
            "{err}"
        );
        let gpt2 = config_sizes(&serde_json::json!({"n_layer": 12, "n_head": 12, "n_embd": 768}));
        assert_eq!(
            (
                gpt2.layers,
                gpt2.kv_heads_or_heads(),
                gpt2.head_dim_or_derived()
            ),
            (Some(12), Some(12), Some(64))
        );
        assert_eq!(
            context_length(&serde_json::json!({"max_position_embeddings": 32768})),
            Some(32768)
        );
    }
}
