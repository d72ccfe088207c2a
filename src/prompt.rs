//! Turn a case into model input: a chat conversation (rendered later with the model's own chat
//! template) or a completion prefix (a signature and docstring, as HumanEval does).

use minijinja::{Environment, context};
use serde::Serialize;
use thiserror::Error;

use crate::case::{Case, PromptMode};

/// The system message sent with chat prompts. Part of the prompt, so part of the cache key.
pub const SYSTEM_MESSAGE: &str = "You are a careful Python programmer. Answer with one complete, \
self-contained Python code block that defines the requested function. Do not include example usage or tests.";

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a completion source is asked to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation; the engine renders it with the model's chat template.
    Chat { messages: Vec<Message> },
    /// Raw text the model continues; the program is `prefix + completion`.
    Complete { prefix: String },
}

impl Prompt {
    /// A chat prompt: the harness's system message, then `instruction` from the user.
    pub fn chat(instruction: &str) -> Prompt {
        Prompt::Chat {
            messages: vec![
                Message {
                    role: "system".into(),
                    content: SYSTEM_MESSAGE.into(),
                },
                Message {
                    role: "user".into(),
                    content: instruction.to_string(),
                },
            ],
        }
    }

    /// Build the prompt for a case according to its mode.
    pub fn for_case(case: &Case) -> Prompt {
        match case.mode {
            PromptMode::Chat => Prompt::chat(case.prompt.trim()),
            PromptMode::Complete => Prompt::Complete {
                prefix: case.prefix.clone().unwrap_or_default(),
            },
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
            Prompt::Chat { messages } => messages
                .iter()
                .map(|m| format!("<|{}|>\n{}\n", m.role, m.content))
                .collect(),
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
}
