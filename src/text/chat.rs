//! Chat templates: the Jinja template a chat model ships with (`chat_template` in
//! `tokenizer_config.json`, `tokenizer.chat_template` in GGUF) turns a conversation into the
//! exact text the model was trained on. Rendered with `minijinja` in the configuration
//! transformers uses (`trim_blocks`, `lstrip_blocks`, loop controls, Python string methods,
//! `raise_exception`).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled-checked chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env
}

fn jinja_err(e: minijinja::Error) -> Error {
    let at = e.line().map(|l| format!(", line {l}")).unwrap_or_default();
    let what = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    Error::Config(format!("chat template{at}: {what}"))
}

impl ChatTemplate {
    /// Checks that `source` compiles.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let env = env();
        env.template_from_str(source).map_err(jinja_err)?;
        Ok(ChatTemplate {
            source: source.to_string(),
            bos_token,
            eos_token,
        })
    }

    /// The text of `messages`; with `add_generation_prompt`, followed by the opening of the
    /// assistant's turn (what the model continues).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = env();
        let tmpl = env.template_from_str(&self.source).map_err(jinja_err)?;
        tmpl.render(minijinja::context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(jinja_err)
    }

    /// Tokens that end an assistant turn in well-known template families and appear in this
    /// template (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3, `<end_of_turn>`, `</s>`).
    pub fn end_of_turn_markers(&self) -> Vec<&'static str> {
        [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<end_of_turn>",
            "</s>",
        ]
        .into_iter()
        .filter(|m| self.source.contains(m))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml() {
        let t = ChatTemplate::new(CHATML, None, None).unwrap();
        let s = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.end_of_turn_markers(), vec!["<|im_end|>"]);
    }

    #[test]
    fn python_methods_and_raise() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ bos_token }}{{ messages[0]['content'].strip() | upper }}",
            Some("<s>".into()),
            None,
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "<s>HI"
        );
        let err = t.render(&[Message::new("system", "x")], false).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
        assert!(ChatTemplate::new("{% if %}", None, None).is_err());
    }
}
