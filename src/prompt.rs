//! Turn a case into model input: a chat conversation (rendered later with the model's own chat
//! template) or a completion prefix (a signature and docstring, as HumanEval does). A profile's
//! [`PromptProtocol`] (`[models.prompt]`) picks the system message and a prefilled start of the
//! assistant's reply for its chat prompts.

use std::fmt;

use minijinja::{Environment, context};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::case::{Case, PromptMode};

/// The system message sent with chat prompts. Part of the prompt, so part of the cache key.
pub const SYSTEM_MESSAGE: &str = "You are a careful Python programmer. Answer with one complete, \
self-contained Python code block that defines the requested function. Do not include example usage or tests.";

/// The system message a profile's chat prompts start with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemMessage {
    /// The harness's [`SYSTEM_MESSAGE`].
    #[default]
    Default,
    /// No system message: the chat template's own default (if any) applies.
    None,
    /// This text.
    Text(String),
}

impl<'de> Deserialize<'de> for SystemMessage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SystemMessage, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SystemMessage;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a system message (a string), or false for none")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SystemMessage, E> {
                if v {
                    Err(E::custom(
                        "system = true is not a message: write the message as a string, false for none, or leave it out for the harness's own",
                    ))
                } else {
                    Ok(SystemMessage::None)
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SystemMessage, E> {
                Ok(SystemMessage::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// How a profile asks its questions (`[models.prompt]`): the system message and an optional
/// prefilled start of the assistant's reply, and optionally a mode that overrides the cases'
/// (`mode = "complete"` runs a base model without a chat template on chat cases that carry a
/// prefix). The default is the harness's system message, no prefill, each case's own mode;
/// completion prompts ignore the system message and prefill.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptProtocol {
    /// `system = "..."` for a message of its own, `system = false` for none.
    pub system: SystemMessage,
    /// Text the assistant's turn starts with (written after the template's generation prompt);
    /// the completion a source returns starts with it, so the extractor sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
    /// Ask every case this way where the case has what it needs (a `prefix` for `complete`, a
    /// `prompt` for `chat`); a case without it keeps its own mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<PromptMode>,
}

/// Whether a fence's info string (after ```` ``` ````, trimmed, any case) names Python or
/// nothing: the blocks a chat reply's code is taken from. The extractor and the engine's
/// `stop_at_answer` read fences by this one rule.
pub fn is_python_fence(info: &str) -> bool {
    matches!(
        info.trim().to_ascii_lowercase().as_str(),
        "" | "python" | "py" | "python3" | "py3"
    )
}

/// Whether `line` defines function `name` (`def name(` or `async def name(`, indented or not).
pub fn defines_function(line: &str, name: &str) -> bool {
    let t = line.trim_start();
    t.strip_prefix("def ")
        .or_else(|| t.strip_prefix("async def "))
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.trim_start().starts_with('('))
}

/// Read back a protocol as results JSON records it (the serialized [`SystemMessage`]:
/// `"default"`, `"none"` or `{"text": ...}`), which differs from how the config writes one.
pub fn recorded_protocol<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<PromptProtocol, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Recorded {
        Default,
        None,
        Text(String),
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Protocol {
        system: Recorded,
        prefill: Option<String>,
        mode: Option<PromptMode>,
    }
    let p = Protocol::deserialize(d)?;
    Ok(PromptProtocol {
        system: match p.system {
            Recorded::Default => SystemMessage::Default,
            Recorded::None => SystemMessage::None,
            Recorded::Text(t) => SystemMessage::Text(t),
        },
        prefill: p.prefill,
        mode: p.mode,
    })
}

impl PromptProtocol {
    /// The harness's own protocol (recorded in results only when a profile changes it).
    pub fn is_default(&self) -> bool {
        *self == PromptProtocol::default()
    }
}

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a completion source is asked to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation; the engine renders it with the model's chat template, then writes
    /// `prefill` (the start of the assistant's reply) after the generation prompt.
    Chat {
        messages: Vec<Message>,
        prefill: Option<String>,
    },
    /// Raw text the model continues; the program is `prefix + completion`.
    Complete { prefix: String },
}

impl Prompt {
    /// A chat prompt: the harness's system message, then `instruction` from the user.
    pub fn chat(instruction: &str) -> Prompt {
        Prompt::chat_with(instruction, &PromptProtocol::default())
    }

    /// A chat prompt under `protocol`: its system message (if any), then `instruction` from
    /// the user, and its prefill.
    pub fn chat_with(instruction: &str, protocol: &PromptProtocol) -> Prompt {
        let system = match &protocol.system {
            SystemMessage::Default => Some(SYSTEM_MESSAGE),
            SystemMessage::None => None,
            SystemMessage::Text(text) => Some(text.as_str()),
        };
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(Message {
                role: "system".into(),
                content: system.into(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: instruction.to_string(),
        });
        Prompt::Chat {
            messages,
            prefill: protocol.prefill.clone(),
        }
    }

    /// Build the prompt for a case according to its mode, under the harness's own protocol.
    pub fn for_case(case: &Case) -> Prompt {
        Prompt::for_case_with(case, &PromptProtocol::default())
    }

    /// Build the prompt for a case according to its mode, under a profile's protocol.
    pub fn for_case_with(case: &Case, protocol: &PromptProtocol) -> Prompt {
        let mode = match protocol.mode {
            Some(PromptMode::Complete) if case.prefix.is_some() => PromptMode::Complete,
            Some(PromptMode::Chat) if !case.prompt.trim().is_empty() => PromptMode::Chat,
            _ => case.mode,
        };
        match mode {
            PromptMode::Chat => Prompt::chat_with(case.prompt.trim(), protocol),
            PromptMode::Complete => Prompt::Complete {
                prefix: case.prefix.clone().unwrap_or_default(),
            },
        }
    }

    /// The prefilled start of the assistant's reply, if any (chat prompts only).
    pub fn prefill(&self) -> Option<&str> {
        match self {
            Prompt::Chat { prefill, .. } => prefill.as_deref(),
            Prompt::Complete { .. } => None,
        }
    }

    /// `chat` or `complete`, as shown in snapshots.
    pub fn mode_name(&self) -> &'static str {
        match self {
            Prompt::Chat { .. } => "chat",
            Prompt::Complete { .. } => "complete",
        }
    }

    /// A stable text form of the prompt (used in cache keys and reports).
    pub fn canonical_text(&self) -> String {
        match self {
            Prompt::Chat { messages, prefill } => {
                let mut text: String = messages
                    .iter()
                    .map(|m| format!("<|{}|>\n{}\n", m.role, m.content))
                    .collect();
                if let Some(prefill) = prefill {
                    text.push_str(&format!("<|assistant|>\n{prefill}"));
                }
                text
            }
            Prompt::Complete { prefix } => prefix.clone(),
        }
    }
}

/// Failure to render a chat template.
#[derive(Debug, Error)]
pub enum TemplateError {
    #[error("failed to parse the chat template: {0}")]
    Parse(#[source] minijinja::Error),
    #[error("failed to render the chat template: {0}")]
    Render(#[source] minijinja::Error),
}

/// Special tokens a chat template may refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateTokens {
    pub bos_token: String,
    pub eos_token: String,
}

/// Render `messages` with a Hugging Face chat template (Jinja, from tokenizer_config.json).
pub fn render_chat_template(
    template: &str,
    messages: &[Message],
    tokens: &TemplateTokens,
    add_generation_prompt: bool,
) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(TemplateError::Parse)?;
    let tmpl = env.get_template("chat").map_err(TemplateError::Parse)?;
    let messages_value: Vec<minijinja::Value> = messages
        .iter()
        .map(|m| {
            minijinja::Value::from_pairs([
                ("role", minijinja::Value::from(m.role.as_str())),
                ("content", minijinja::Value::from(m.content.as_str())),
            ])
        })
        .collect();
    tmpl.render(context! {
        messages => messages_value,
        bos_token => tokens.bos_token.as_str(),
        eos_token => tokens.eos_token.as_str(),
        add_generation_prompt => add_generation_prompt,
        tools => minijinja::Value::from(()),
    })
    .map_err(TemplateError::Render)
}

/// The text an engine feeds the model for a chat prompt: `messages` rendered with the template
/// and its generation prompt, then the prefill (the start of the assistant's reply), if any.
pub fn render_chat_prompt(
    template: &str,
    messages: &[Message],
    prefill: Option<&str>,
    tokens: &TemplateTokens,
) -> Result<String, TemplateError> {
    let mut text = render_chat_template(template, messages, tokens, true)?;
    text.push_str(prefill.unwrap_or_default());
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml() {
        let msgs = vec![Message {
            role: "user".into(),
            content: "hi".into(),
        }];
        let out = render_chat_template(CHATML, &msgs, &TemplateTokens::default(), true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = "{{ raise_exception('no system role') }}";
        let err = render_chat_template(t, &[], &TemplateTokens::default(), false).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    fn user(content: &str) -> Message {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }

    #[test]
    fn the_default_protocol_is_the_old_prompt_byte_for_byte() {
        // The prompt before protocols existed: part of cache keys and snapshots.
        let old = vec![
            Message {
                role: "system".into(),
                content: SYSTEM_MESSAGE.into(),
            },
            user("Write f."),
        ];
        let Prompt::Chat { messages, prefill } = Prompt::chat("Write f.") else {
            panic!("a chat prompt")
        };
        assert_eq!((messages, prefill), (old.clone(), None));
        assert_eq!(
            Prompt::chat_with("Write f.", &PromptProtocol::default()),
            Prompt::chat("Write f.")
        );
        assert_eq!(
            Prompt::chat("Write f.").canonical_text(),
            format!("<|system|>\n{SYSTEM_MESSAGE}\n<|user|>\nWrite f.\n")
        );
        let out = render_chat_prompt(CHATML, &old, None, &TemplateTokens::default()).unwrap();
        assert_eq!(
            out,
            render_chat_template(CHATML, &old, &TemplateTokens::default(), true).unwrap()
        );
    }

    #[test]
    fn a_protocol_picks_the_system_message_and_prefill() {
        let none = PromptProtocol {
            system: SystemMessage::None,
            prefill: None,
            mode: None,
        };
        let Prompt::Chat { messages, .. } = Prompt::chat_with("q", &none) else {
            panic!("a chat prompt")
        };
        assert_eq!(messages, vec![user("q")]);
        let own = PromptProtocol {
            system: SystemMessage::Text("Be brief.".into()),
            prefill: Some("```python\n".into()),
            mode: None,
        };
        let prompt = Prompt::chat_with("q", &own);
        let Prompt::Chat { messages, prefill } = &prompt else {
            panic!("a chat prompt")
        };
        assert_eq!(messages[0].content, "Be brief.");
        assert_eq!(prefill.as_deref(), Some("```python\n"));
        assert_eq!(prompt.prefill(), Some("```python\n"));
        assert!(
            prompt
                .canonical_text()
                .ends_with("<|user|>\nq\n<|assistant|>\n```python\n")
        );
    }

    #[test]
    fn a_profile_can_ask_chat_cases_with_a_prefix_as_completions() {
        let parse = |text: &str| {
            crate::case::parse(
                std::path::Path::new("cases"),
                std::path::Path::new("cases/x/y.toml"),
                text,
            )
            .unwrap()
        };
        let tests = "entry_point = \"f\"\n[[tests]]\ncall = \"f()\"\nexpected = \"1\"\n";
        let with_prefix = parse(&format!(
            "prompt = \"Write f.\"\nprefix = \"def f():\\n\"\n{tests}"
        ));
        let without = parse(&format!("prompt = \"Write f.\"\n{tests}"));
        let complete: PromptProtocol = toml::from_str("mode = \"complete\"").unwrap();
        assert_eq!(
            Prompt::for_case_with(&with_prefix, &complete),
            Prompt::Complete {
                prefix: "def f():\n".into()
            }
        );
        // A case without a prefix cannot be continued: it keeps its own mode.
        assert!(matches!(
            Prompt::for_case_with(&without, &complete),
            Prompt::Chat { .. }
        ));
        assert!(matches!(
            Prompt::for_case_with(&with_prefix, &PromptProtocol::default()),
            Prompt::Chat { .. }
        ));
        assert!(toml::from_str::<PromptProtocol>("mode = \"fill\"").is_err());
    }

    #[test]
    fn the_prefill_follows_the_generation_prompt() {
        let out = render_chat_prompt(
            CHATML,
            &[user("hi")],
            Some("```python\n"),
            &TemplateTokens::default(),
        )
        .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n```python\n"
        );
    }
}
