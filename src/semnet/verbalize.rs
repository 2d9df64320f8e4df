//! Triples to text: each relation's template (declared with it) filled with the concepts'
//! labels, for training corpora (`text`, `jsonl`) and instruction data (`messages`: a fact
//! with its tail blanked, to be completed).

use crate::semnet::graph::Graph;
use crate::semnet::relation::RelId;
use serde_json::{json, Value};

/// "a" or "an" for a word (by its first letter).
pub fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// The label with an article when it is a common noun (starts lower-case).
fn with_article(label: &str) -> String {
    if label.starts_with(|c: char| c.is_lowercase()) {
        format!("{} {label}", article(label))
    } else {
        label.to_string()
    }
}

const BLANK: &str = "___";

/// Fills `template` for (head, tail) labels; a relation without one reads
/// "{head} <relation> {tail}.". The first letter is capitalised.
fn fill(template: Option<&str>, rel: &str, head: &str, tail: &str) -> String {
    let default = format!("{{head}} {} {{tail}}.", rel.replace('_', " "));
    let t = template.unwrap_or(&default);
    let a_tail = if tail == BLANK {
        BLANK.to_string()
    } else {
        with_article(tail)
    };
    let s = t
        .replace("{a_head}", &with_article(head))
        .replace("{a_tail}", &a_tail)
        .replace("{head}", head)
        .replace("{tail}", tail);
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

/// The sentence for one triple.
pub fn sentence(g: &Graph, head: u32, rel: RelId, tail: u32) -> String {
    let r = g.relations.get(rel);
    fill(
        r.template.as_deref(),
        &r.name,
        &g.concept(head).label(),
        &g.concept(tail).label(),
    )
}

/// Output forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// One sentence per line.
    Text,
    /// `{"text": sentence}` per line (a pre-training corpus).
    Jsonl,
    /// `{"messages": [user: "Complete the fact: ... ___", assistant: tail]}` per line, the
    /// records `instruct` trains on.
    Messages,
}

impl std::str::FromStr for Form {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "text" => Ok(Form::Text),
            "jsonl" => Ok(Form::Jsonl),
            "messages" => Ok(Form::Messages),
            _ => Err(crate::Error::Config(format!(
                "unknown verbalize format {s:?} (known: text, jsonl, messages)"
            ))),
        }
    }
}

/// One output line for a triple.
pub fn line(g: &Graph, head: u32, rel: RelId, tail: u32, form: Form) -> String {
    match form {
        Form::Text => sentence(g, head, rel, tail),
        Form::Jsonl => json!({"text": sentence(g, head, rel, tail)}).to_string(),
        Form::Messages => {
            let r = g.relations.get(rel);
            let blanked = fill(
                r.template.as_deref(),
                &r.name,
                &g.concept(head).label(),
                BLANK,
            );
            let v: Value = json!({"messages": [
                {"role": "user", "content": format!("Complete the fact: {blanked}")},
                {"role": "assistant", "content": g.concept(tail).label()},
            ]});
            v.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_with_articles_and_capitals() {
        assert_eq!(
            fill(
                Some("{a_head} is a kind of {tail}."),
                "is_a",
                "ox",
                "animal"
            ),
            "An ox is a kind of animal."
        );
        assert_eq!(
            fill(
                Some("{a_head} is a kind of {tail}."),
                "is_a",
                "LoRA",
                "PEFT method"
            ),
            "LoRA is a kind of PEFT method."
        );
        assert_eq!(
            fill(None, "trained_on", "GPT-2", "WebText"),
            "GPT-2 trained on WebText."
        );
        assert_eq!(
            fill(
                Some("{a_head} is part of {a_tail}."),
                "part_of",
                "wheel",
                BLANK
            ),
            "A wheel is part of ___."
        );
    }
}
