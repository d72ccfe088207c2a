//! The chat-template check and its lint, as ggufdoctor does it: the template renders a system
//! and a user message with the generation prompt, the special tokens it writes exist, there is
//! one BOS, and a turn ends with an end-of-sequence id.

use serde_json::Value as Json;

use super::snapshot::Snapshot;
use super::{Verdict, check};
use crate::engine::onnx::folder;
use crate::prompt::{Prompt, render_chat_template};

/// The chat template renders a system and a user message; none means completion-only.
pub fn chat_template(snap: &Snapshot) -> Verdict {
    const NAME: &str = check::CHAT_TEMPLATE;
    let (Some(tok), Some(tok_cfg)) = (snap.tokenizer.ready(), snap.tokenizer_config.ready()) else {
        return Verdict::skip(NAME, "tokenizer and special-tokens");
    };
    let spec = match folder::token_spec(
        &snap.dir,
        tok_cfg,
        &snap
            .generation_config
            .ready()
            .cloned()
            .unwrap_or(Json::Null),
        &snap.config_or_null(),
        |t| tok.token_to_id(t),
    ) {
        Ok(spec) => spec,
        Err(_) => return Verdict::skip(NAME, check::SPECIAL_TOKENS),
    };
    let Some(template) = spec.chat_template.clone() else {
        return Verdict::warn(
            NAME,
            "no chat_template in tokenizer_config.json: completion-only (cases with a prefix run, chat cases fail)",
            "add the model's chat_template to tokenizer_config.json to run chat cases",
        );
    };
    let user = "Write a Python function `add(a, b)` that returns their sum.";
    let Prompt::Chat { messages, .. } = Prompt::chat(user) else {
        unreachable!("Prompt::chat builds a chat prompt")
    };
    let text = match render_chat_template(&template, &messages, &spec.template_tokens, true) {
        Ok(text) => text,
        Err(e) => {
            return Verdict::fail(
                NAME,
                format!("{e:#}"),
                "fix chat_template in tokenizer_config.json (take it from the model's source); minijinja renders it with Python-style methods",
            );
        }
    };
    let tokens = tok
        .encode(text.as_str(), false)
        .map(|e| e.len())
        .unwrap_or(0);
    if !text.contains(user) {
        return Verdict::fail(
            NAME,
            "the rendered prompt does not contain the user's message",
            "fix chat_template: it must write each message's content",
        );
    }
    let lint = lint_template(&template, &text, tok, tok_cfg, &spec);
    if let Some(problem) = lint.problems.first() {
        return Verdict::fail(
            NAME,
            problem.clone(),
            "fix chat_template or the special tokens in tokenizer_config.json/generation_config.json (take them from the model's source)",
        );
    }
    if !text.contains(crate::prompt::SYSTEM_MESSAGE) {
        return Verdict::warn(
            NAME,
            format!("renders ({tokens} tokens) but drops the system message"),
            "the harness's system message is lost: use a template that writes system messages",
        );
    }
    if let Some(warning) = lint.warnings.first() {
        return Verdict::warn(
            NAME,
            format!("renders system + user messages ({tokens} tokens); {warning}"),
            "check the template's special tokens and BOS against the tokenizer (tokenizer.json's added tokens, add_bos_token)",
        );
    }
    Verdict::ok(
        NAME,
        format!(
            "renders system + user messages ({tokens} tokens); {}",
            lint.notes.join("; ")
        ),
    )
}

/// What the template lint found (ggufdoctor's checks): problems fail the check.
#[derive(Debug, Default)]
pub struct TemplateLint {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// The special-token-like literals a template writes: `<|...|>`, `<word>` and `[INST]`-style.
pub fn template_specials(template: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &template[i..];
        let end = if let Some(inner) = rest.strip_prefix("<|") {
            inner.find("|>").map(|e| e + 4)
        } else if let Some(inner) = rest.strip_prefix('<') {
            let word = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(0);
            (word > 1 && inner[word..].starts_with('>')).then_some(word + 2)
        } else if let Some(inner) = rest.strip_prefix('[') {
            let word = inner
                .find(|c: char| !(c.is_ascii_uppercase() || c == '/' || c == '_'))
                .unwrap_or(0);
            (word > 2 && inner[word..].starts_with(']')).then_some(word + 2)
        } else {
            None
        };
        match end {
            Some(n) if !rest[..n].contains(char::is_whitespace) => {
                let lit = rest[..n].to_string();
                if !found.contains(&lit) {
                    found.push(lit);
                }
                i += n;
            }
            _ => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    found
}

/// Lint a chat template against the tokenizer: the special tokens it writes exist, the
/// rendered prompt (tokenized as the engine does, no special tokens added) has at most one
/// BOS, and an assistant turn ends with one of the end-of-sequence ids.
pub(crate) fn lint_template(
    template: &str,
    rendered: &str,
    tok: &tokenizers::Tokenizer,
    tok_cfg: &Json,
    spec: &folder::TokenSpec,
) -> TemplateLint {
    let mut lint = TemplateLint::default();
    let missing: Vec<String> = template_specials(template)
        .into_iter()
        .filter(|s| s.starts_with("<|") || s.starts_with("<start_") || s.starts_with("<end_"))
        .filter(|s| tok.token_to_id(s).is_none())
        .collect();
    if !missing.is_empty() {
        // a warning: some templates write such markers as plain text (OLMo 2's <|user|>)
        lint.warnings.push(format!(
            "the template writes {}, not a token of tokenizer.json (split into pieces: plain text, or a missing special token)",
            missing.join(", ")
        ));
    }
    let bos_text = &spec.template_tokens.bos_token;
    let bos_id = (!bos_text.is_empty())
        .then(|| tok.token_to_id(bos_text))
        .flatten();
    if let (Some(bos), Ok(enc)) = (bos_id, tok.encode(rendered, false)) {
        let count = enc.get_ids().iter().filter(|&&id| id == bos).count();
        if count > 1 {
            lint.problems.push(format!(
                "the rendered prompt has {count} BOS tokens {bos_text:?} (double BOS)"
            ));
        } else if count == 1 && enc.get_ids().first() != Some(&bos) {
            lint.problems.push(format!(
                "BOS {bos_text:?} is not the first token of the prompt"
            ));
        }
        let adds_bos = tok_cfg["add_bos_token"].as_bool().unwrap_or(false);
        if count == 0 && adds_bos {
            lint.warnings.push(format!(
                "the template writes no BOS while add_bos_token is set; llama.cpp adds {bos_text:?} to the rendered prompt, the engine does not"
            ));
        } else {
            lint.notes.push(format!("{count} BOS"));
        }
    }
    // How an assistant turn ends: the first token after the reply's text.
    let marker = "Zq9xReplyEnd";
    let turn = [
        crate::prompt::Message {
            role: "user".into(),
            content: "Hi".into(),
        },
        crate::prompt::Message {
            role: "assistant".into(),
            content: marker.into(),
        },
    ];
    if let Ok(text) = render_chat_template(template, &turn, &spec.template_tokens, false)
        && let Some(at) = text.find(marker)
    {
        {
            let after = &text[at + marker.len()..];
            let first = tok
                .encode(after, false)
                .ok()
                .and_then(|e| e.get_ids().first().copied());
            match first {
                Some(id) if spec.eos.contains(&id) => lint.notes.push(format!(
                    "a turn ends with {:?}, an end-of-sequence id",
                    tok.id_to_token(id).unwrap_or_default()
                )),
                Some(id) => lint.problems.push(format!(
                    "an assistant turn ends with {:?} ({id}), which is not among the end-of-sequence ids {:?}: generation would not stop at the end of a turn",
                    tok.id_to_token(id).unwrap_or_default(),
                    spec.eos
                )),
                None => {}
            }
        }
    }
    lint
}
