//! The checks that need no ONNX Runtime, as pure functions over a [`Snapshot`] (and, for the
//! graph check, over the inputs and outputs `probe` read): each returns one [`Verdict`]. The folder rules come from `engine::onnx::folder`, the engine's own.

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::gguf::{GgufHeader, SUPPORTED_ARCHS};
use super::snapshot::{Loaded, Snapshot};
use super::template::chat_template;
use super::{Verdict, check};
use crate::engine::onnx::folder::{self, GraphSpec, GraphValue};
use crate::provision::models::human_bytes;

/// The checks over a snapshot alone, in order.
pub const STATIC_CHECKS: &[fn(&Snapshot) -> Verdict] =
    &[files, config, tokenizer, special_tokens, chat_template];

const REEXPORT: &str = "export the model again (`codegen models export FILE.gguf`, or remove the cached folder of a default model) or copy the file from the model's source";

/// Code the tokenizer must give back unchanged: indentation, tabs, quotes, unicode.
pub const SNIPPETS: &[&str] = &[
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n\tdef push(self, x):\n\t\tself.items.append(x)  # tab-indented\n",
    "print(f\"{name!r}: {value:>8.2f}\")\nassert s == 'héllo wörld ✓'\n",
    "    if not xs:\n        raise ValueError(\"empty\")\n\n\n",
];

/// Every file present and non-empty; what each is for.
pub fn files(snap: &Snapshot) -> Verdict {
    let mut missing = Vec::new();
    let mut optional = Vec::new();
    let mut present = Vec::new();
    for (role, size) in &snap.sizes {
        match size {
            Some(0) if role.required || role.name == "model.onnx.data" => {
                missing.push(format!("{} is empty ({})", role.name, role.purpose));
            }
            Some(n) => present.push(format!("{} {}", role.name, human_bytes(*n))),
            None if role.required => {
                missing.push(format!("{} is missing ({})", role.name, role.purpose))
            }
            None if role.name == "generation_config.json" => {
                optional.push(format!("{} is missing ({})", role.name, role.purpose))
            }
            None => {}
        }
    }
    if !missing.is_empty() {
        return Verdict::fail(check::FILES, missing.join("; "), REEXPORT);
    }
    if !optional.is_empty() {
        return Verdict::warn(
            check::FILES,
            format!(
                "{} (end-of-sequence ids then come from config.json and tokenizer_config.json)",
                optional.join("; ")
            ),
            "add generation_config.json from the model's source",
        );
    }
    Verdict::ok(check::FILES, present.join(", "))
}

/// `config.json` parses and states the sizes the engine reads, under any alias it knows.
pub fn config(snap: &Snapshot) -> Verdict {
    let c = match &snap.config {
        Loaded::Missing => return Verdict::skip(check::CONFIG, "files (config.json)"),
        Loaded::Invalid(e) => {
            return Verdict::fail(
                check::CONFIG,
                format!("config.json: {e}"),
                format!("config.json must be a JSON object; {REEXPORT}"),
            );
        }
        Loaded::Ready(c) => c,
    };
    let sizes = folder::config_sizes(c);
    let mut absent = Vec::new();
    for (value, keys) in [
        (sizes.layers, folder::LAYER_KEYS),
        (sizes.heads, folder::HEAD_KEYS),
        (sizes.hidden, folder::HIDDEN_KEYS),
        (sizes.vocab, folder::VOCAB_KEYS),
    ] {
        if value.is_none() {
            absent.push(keys.join(" / "));
        }
    }
    if !absent.is_empty() {
        return Verdict::fail(
            check::CONFIG,
            format!("config.json has no {}", absent.join(", no ")),
            "add the missing sizes to config.json (the values are in the model's original config or the GGUF metadata), or export again",
        );
    }
    let (heads, hidden) = (sizes.heads.unwrap_or(1), sizes.hidden.unwrap_or(0));
    let kv_heads = sizes.kv_heads_or_heads().unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Verdict::fail(
            check::CONFIG,
            format!("{heads} attention heads are not a multiple of {kv_heads} KV heads"),
            "correct num_attention_heads / num_key_value_heads in config.json",
        );
    }
    if sizes.head_dim.is_none() && (heads == 0 || hidden % heads != 0) {
        return Verdict::fail(
            check::CONFIG,
            format!(
                "hidden size {hidden} is not a multiple of {heads} heads and there is no head_dim"
            ),
            "add head_dim to config.json",
        );
    }
    let kv_note = if sizes.kv_heads.is_none() {
        " (no num_key_value_heads: as many as attention heads)"
    } else {
        ""
    };
    let detail = format!(
        "{} layers, {heads} heads, {kv_heads} KV heads{kv_note}, head size {}, hidden {hidden}, vocabulary {}",
        sizes.layers.unwrap_or(0),
        sizes.head_dim_or_derived().unwrap_or(0),
        sizes.vocab.unwrap_or(0),
    );
    match folder::context_length(c) {
        Some(n) => Verdict::ok(check::CONFIG, format!("{detail}, context {n}")),
        None => Verdict::warn(
            check::CONFIG,
            format!("{detail}; no context length (max_position_embeddings)"),
            "add max_position_embeddings to config.json: without it prompts are not checked against the context",
        ),
    }
}

/// The first difference between `a` and `b`, shown around where it is.
fn first_difference(a: &str, b: &str) -> String {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map(|((i, _), _)| i)
        .unwrap_or(a.len().min(b.len()));
    let start = a.floor_char_boundary(at.saturating_sub(10));
    let near = |s: &str| {
        s.get(start..)
            .unwrap_or("")
            .chars()
            .take(24)
            .collect::<String>()
    };
    format!("{:?} came back as {:?}", near(a), near(b))
}

/// `tokenizer.json` loads, gives code back unchanged, and fits the model's vocabulary.
pub fn tokenizer(snap: &Snapshot) -> Verdict {
    let tok = match &snap.tokenizer {
        Loaded::Missing => return Verdict::skip(check::TOKENIZER, "files (tokenizer.json)"),
        Loaded::Invalid(e) => {
            return Verdict::fail(
                check::TOKENIZER,
                format!("tokenizer.json: {e}"),
                format!("tokenizer.json must be a Hugging Face `tokenizers` file; {REEXPORT}"),
            );
        }
        Loaded::Ready(t) => t,
    };
    let mut warning = None;
    for snippet in SNIPPETS {
        let back = tok
            .encode(*snippet, false)
            .and_then(|enc| tok.decode(enc.get_ids(), false));
        match back {
            Err(e) => {
                return Verdict::fail(
                    check::TOKENIZER,
                    format!("failed to encode or decode {snippet:?}: {e}"),
                    REEXPORT,
                );
            }
            Ok(back) if back == *snippet => {}
            Ok(back) if back.strip_prefix(' ') == Some(snippet) => {
                warning = Some(format!("decoding adds a leading space: {snippet:?}"));
            }
            Ok(back) => {
                return Verdict::fail(
                    check::TOKENIZER,
                    format!(
                        "code does not round-trip: {}",
                        first_difference(snippet, &back)
                    ),
                    "the tokenizer loses characters (normalization or a missing byte fallback): use the model's own tokenizer.json",
                );
            }
        }
    }
    let vocab = tok.get_vocab_size(true);
    if let Some(model_vocab) = snap
        .config
        .ready()
        .and_then(|c| folder::config_sizes(c).vocab)
        && vocab > model_vocab
    {
        return Verdict::fail(
            check::TOKENIZER,
            format!(
                "the tokenizer has {vocab} tokens and the model {model_vocab} (config.json vocab_size): ids past {} have no embedding",
                model_vocab - 1
            ),
            "tokenizer.json belongs to another model: use the one exported with this graph",
        );
    }
    let detail = format!(
        "{vocab} tokens; {} code snippets round-trip",
        SNIPPETS.len()
    );
    match warning {
        Some(w) => Verdict::warn(
            check::TOKENIZER,
            format!("{detail} ({w})"),
            "check tokenizer.json's decoder (a Metaspace or Strip decoder removes the space)",
        ),
        None => Verdict::ok(check::TOKENIZER, detail),
    }
}

/// The end-of-sequence and padding tokens, as the engine merges them, exist and agree.
pub fn special_tokens(snap: &Snapshot) -> Verdict {
    const NAME: &str = check::SPECIAL_TOKENS;
    let Some(tok) = snap.tokenizer.ready() else {
        return Verdict::skip(NAME, check::TOKENIZER);
    };
    let tok_cfg = match &snap.tokenizer_config {
        Loaded::Missing => return Verdict::skip(NAME, "files (tokenizer_config.json)"),
        Loaded::Invalid(e) => {
            return Verdict::fail(
                NAME,
                format!("tokenizer_config.json: {e}"),
                format!("tokenizer_config.json must be a JSON object; {REEXPORT}"),
            );
        }
        Loaded::Ready(c) => c,
    };
    let gen_cfg = match &snap.generation_config {
        Loaded::Invalid(e) => {
            return Verdict::fail(
                NAME,
                format!("generation_config.json: {e}"),
                format!("generation_config.json must be a JSON object; {REEXPORT}"),
            );
        }
        other => other.ready().cloned().unwrap_or(Json::Null),
    };
    let config = snap.config_or_null();
    let spec = match folder::token_spec(&snap.dir, tok_cfg, &gen_cfg, &config, |t| {
        tok.token_to_id(t)
    }) {
        Ok(spec) => spec,
        Err(e) => {
            return Verdict::fail(
                NAME,
                e.to_string(),
                "set eos_token_id in generation_config.json to the model's end-of-turn token id",
            );
        }
    };
    let vocab = tok.get_vocab_size(true) as u32;
    if let Err(v) = ids_in_vocabulary(&config, &gen_cfg, vocab) {
        return v;
    }
    if let Err(v) = eos_agrees(tok, &spec.template_tokens.eos_token, &gen_cfg) {
        return v;
    }
    let names: Vec<String> = spec
        .eos
        .iter()
        .map(|id| format!("{id} {:?}", tok.id_to_token(*id).unwrap_or_default()))
        .collect();
    Verdict::ok(
        NAME,
        format!(
            "end of sequence: {}; padding {}",
            names.join(", "),
            spec.pad
        ),
    )
}

/// The ids a JSON value states: one number, or an array of them.
fn json_ids(v: Option<&Json>) -> Vec<u64> {
    match v {
        Some(Json::Number(n)) => n.as_u64().into_iter().collect(),
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_u64).collect(),
        _ => Vec::new(),
    }
}

/// The end-of-sequence and padding ids the configs state are inside the vocabulary.
fn ids_in_vocabulary(config: &Json, gen_cfg: &Json, vocab: u32) -> Result<(), Verdict> {
    const NAME: &str = check::SPECIAL_TOKENS;
    for (file, key) in [
        ("generation_config.json", "eos_token_id"),
        ("generation_config.json", "pad_token_id"),
        ("config.json", "eos_token_id"),
    ] {
        let json = if file == "config.json" {
            config
        } else {
            gen_cfg
        };
        if let Some(bad) = json_ids(json.get(key))
            .into_iter()
            .find(|id| *id >= vocab as u64)
        {
            return Err(Verdict::fail(
                NAME,
                format!(
                    "{file} {key} {bad} is outside the vocabulary ({vocab} tokens): generation would never stop there"
                ),
                format!(
                    "set {key} in {file} to the id of the model's end-of-turn token (tokenizer.json lists it under added_tokens)"
                ),
            ));
        }
    }
    Ok(())
}

/// tokenizer_config.json's `eos_text` is a token, among generation_config.json's eos ids.
fn eos_agrees(tok: &Tokenizer, eos_text: &str, gen_cfg: &Json) -> Result<(), Verdict> {
    const NAME: &str = check::SPECIAL_TOKENS;
    if !eos_text.is_empty() {
        let Some(eos_id) = tok.token_to_id(eos_text) else {
            return Err(Verdict::fail(
                NAME,
                format!(
                    "tokenizer_config.json eos_token {eos_text:?} is not a token of tokenizer.json"
                ),
                "set eos_token in tokenizer_config.json to a token that tokenizer.json has",
            ));
        };
        let stated = json_ids(gen_cfg.get("eos_token_id"));
        if !stated.is_empty() && !stated.contains(&u64::from(eos_id)) {
            return Err(Verdict::fail(
                NAME,
                format!(
                    "generation_config.json eos_token_id {stated:?} does not include the id of tokenizer_config.json eos_token {eos_text:?} ({eos_id}); the engine stops at both"
                ),
                format!(
                    "make generation_config.json eos_token_id include {eos_id}, or set eos_token to the token that ends a turn"
                ),
            ));
        }
    }
    Ok(())
}

/// A GGUF's architecture against what the exporter supports.
pub fn gguf_verdict(header: &GgufHeader) -> Verdict {
    let supported = SUPPORTED_ARCHS.join(", ");
    let arch = header.architecture().unwrap_or("");
    let about = format!(
        "GGUF v{}, {} tensors, {}{}",
        header.version,
        header.tensors.len(),
        header
            .file_type()
            .unwrap_or_else(|| "file type unknown".into()),
        header
            .name()
            .map(|n| format!(", {n:?}"))
            .unwrap_or_default()
    );
    if arch.is_empty() {
        return Verdict::fail(
            check::GGUF,
            format!("{about}: no general.architecture"),
            format!("the exporter supports {supported}; this file names no architecture"),
        );
    }
    if !header.supported() {
        return Verdict::fail(
            check::GGUF,
            format!("architecture {arch:?} is not supported ({about})"),
            format!(
                "the exporter supports these architectures: {supported}; use a GGUF of one of them, or add {arch:?} to harness/python/exporter"
            ),
        );
    }
    Verdict::ok(check::GGUF, format!("architecture {arch} ({about})"))
}

/// The graph's contract (the engine's own rule) and its agreement with `config.json`.
pub(crate) fn graph(
    snap: &Snapshot,
    inputs: &[GraphValue],
    outputs: &[GraphValue],
) -> (Verdict, Option<GraphSpec>) {
    let config = snap.config_or_null();
    let spec = match folder::graph_spec(&snap.dir, inputs, outputs, &config) {
        Ok(spec) => spec,
        Err(e) => {
            return (
                Verdict::fail(
                    check::GRAPH,
                    e.to_string(),
                    "the engine feeds input_ids, attention_mask, position_ids (optional) and past_key_values.N.key/value (float32 or float16, [batch, kv_heads, past, head_dim]) and reads logits and present.N.key/value: export with harness/python/exporter (`codegen models export`)",
                ),
                None,
            );
        }
    };
    let sizes = folder::config_sizes(&config);
    let vocab_dim = outputs
        .iter()
        .find(|v| v.name == "logits")
        .and_then(|v| v.shape.last().copied())
        .filter(|d| *d > 0)
        .map(|d| d as usize);
    let mut disagree = Vec::new();
    let mut compare = |what: &str, graph: usize, config: Option<usize>, key: &str| {
        if let Some(c) = config
            && c != graph
        {
            disagree.push(format!(
                "the graph has {graph} {what}, config.json {key} says {c}"
            ));
        }
    };
    compare("layers", spec.layers, sizes.layers, "num_hidden_layers");
    compare(
        "KV heads",
        spec.kv_heads,
        sizes.kv_heads_or_heads(),
        "num_key_value_heads",
    );
    compare(
        "as head size",
        spec.head_dim,
        sizes.head_dim_or_derived(),
        "head_dim",
    );
    if let Some(v) = vocab_dim {
        compare("logits per position", v, sizes.vocab, "vocab_size");
    }
    let verdict = if disagree.is_empty() {
        Verdict::ok(
            check::GRAPH,
            format!(
                "{:?} layout, {} layers, KV {:?} [batch, {}, past, {}], logits {:?}{}",
                spec.layout,
                spec.layers,
                spec.kv_type,
                spec.kv_heads,
                spec.head_dim,
                spec.logits_type,
                vocab_dim.map(|v| format!(" x {v}")).unwrap_or_default()
            )
            .to_lowercase(),
        )
    } else {
        Verdict::fail(
            check::GRAPH,
            disagree.join("; "),
            "config.json does not describe this graph (the engine sizes KV buffers from the graph, reports from config.json): export again, or correct config.json",
        )
    };
    (verdict, Some(spec))
}

#[cfg(test)]
mod tests {

    #[test]
    fn template_specials_finds_the_markers_a_template_writes() {
        let t = "{{ bos_token }}<|im_start|>{{ m }}<|im_end|>\n<start_of_turn>user [INST] x [/INST] <b>{% if a < b %}";
        assert_eq!(
            template_specials(t),
            vec![
                "<|im_start|>",
                "<|im_end|>",
                "<start_of_turn>",
                "[INST]",
                "[/INST]"
            ]
        );
    }
    use super::super::Status;
    use super::super::template::template_specials;
    use super::*;

    fn with_config(config: Json) -> Snapshot {
        Snapshot {
            dir: "m".into(),
            sizes: Vec::new(),
            config: Loaded::Ready(config),
            generation_config: Loaded::Missing,
            tokenizer_config: Loaded::Missing,
            tokenizer: Loaded::Missing,
        }
    }

    #[test]
    fn config_reads_aliases_and_takes_kv_heads_from_heads() {
        let gpt2 = serde_json::json!({"n_layer": 2, "n_head": 4, "n_embd": 64, "n_vocab": 100, "n_positions": 1024});
        let v = config(&with_config(gpt2));
        assert_eq!(v.status, Status::Ok, "{v:?}");
        assert!(
            v.detail
                .starts_with("2 layers, 4 heads, 4 KV heads (no num_key_value_heads"),
            "{}",
            v.detail
        );
        assert!(v.detail.ends_with("context 1024"), "{}", v.detail);
        let odd = serde_json::json!({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3, "hidden_size": 64, "vocab_size": 9});
        let v = config(&with_config(odd));
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.detail.contains("not a multiple of 3 KV heads"),
            "{}",
            v.detail
        );
        let no_context = serde_json::json!({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "vocab_size": 9});
        assert_eq!(config(&with_config(no_context)).status, Status::Warn);
    }

    #[test]
    fn differences_are_shown_where_they_are() {
        let d = first_difference("def f():\n    return 1", "def f():\n  return 1");
        assert!(d.contains("came back as"), "{d}");
        assert!(d.contains("    return"), "{d}");
    }
}
