//! Supervised fine-tuning on instructions: examples rendered with a chat template, tokenised,
//! and trained with the loss on the responses only (or on everything), optionally packed
//! several to a row.
//!
//! Which tokens are trained follows TRL's SFT pipeline (tests/fixtures/sft, TRL 1.16 with its
//! ChatML training template): in a conversation, every assistant turn from the end of the
//! generation prompt (`<|im_start|>assistant\n`) through what the template writes after the
//! content (`<|im_end|>\n`), found as the difference between the conversation rendered up to
//! the turn with the generation prompt and through the turn; in a prompt-completion example,
//! everything after the prompt rendered with the generation prompt. The whole text is tokenised
//! at once and token `i` is trained when its text overlaps a trained span (transformers'
//! `return_assistant_tokens_mask`); it is then the target predicted from tokens `..i`.

use crate::data::instruct::Example;
use crate::models::CausalModel;
use crate::nn::Segments;
use crate::objective::CausalLm;
use crate::rng::Rng;
use crate::text::chat::{ChatTemplate, Message};
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

/// One tokenised example: ids and, per token, whether it is a training target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl Tokenized {
    /// Training targets (tokens after the first that are trained).
    pub fn targets(&self) -> usize {
        self.trained.iter().skip(1).filter(|&&t| t).count()
    }
}

/// Chat templates built in, by name: `chatml`, `alpaca`, `llama-2`.
pub fn builtin_template(name: &str) -> Option<&'static str> {
    Some(match name {
        "chatml" => CHATML,
        "alpaca" => ALPACA,
        "llama-2" | "llama2" => LLAMA2,
        _ => return None,
    })
}

/// The names [`builtin_template`] knows.
pub const BUILTIN_TEMPLATES: &[&str] = &["chatml", "alpaca", "llama-2"];

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Stanford Alpaca's prompt (a system message replaces its preamble); the response ends with
/// the end-of-sequence token.
const ALPACA: &str = "{% if messages[0]['role'] != 'system' %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}{% endif %}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}{% else %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}";

/// Meta's Llama-2 chat format (`[INST]`, `<<SYS>>`), as transformers' template for it.
const LLAMA2: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{% elif message['role'] == 'user' %}{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{% set content = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% else %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

/// The template named `name`: `model` (the model's own, `own`), a built-in, or a Jinja file.
/// A built-in's special tokens are the model's, else GPT-2's end of text when the tokenizer
/// has it.
pub fn resolve_template(
    name: &str,
    own: Option<&ChatTemplate>,
    tokenizer: &Tokenizer,
) -> Result<ChatTemplate> {
    if name == "model" {
        return own.cloned().ok_or_else(|| {
            Error::Config(format!(
                "the model has no chat template: name one of {} or a .jinja file",
                BUILTIN_TEMPLATES.join(", ")
            ))
        });
    }
    let eos = own.and_then(|t| t.eos_token.clone()).or_else(|| {
        let eot = crate::text::tokenizer::EOT;
        tokenizer.token_id(eot).map(|_| eot.to_string())
    });
    let bos = own.and_then(|t| t.bos_token.clone());
    let source = match builtin_template(name) {
        Some(src) => src.to_string(),
        None => {
            let path = std::path::Path::new(name);
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "template {name:?} is neither model, a built-in ({}) nor a file",
                    BUILTIN_TEMPLATES.join(", ")
                )));
            }
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
        }
    };
    ChatTemplate::new(&source, bos, eos).map_err(|e| Error::Config(format!("{name}: {e}")))
}

/// How examples longer than the context are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Keep the first `context` tokens (TRL's `max_length` truncation).
    Truncate,
    /// Leave the example out.
    Drop,
}

impl Overflow {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "truncate" => Ok(Overflow::Truncate),
            "drop" => Ok(Overflow::Drop),
            other => Err(Error::Config(format!(
                "sft.overflow must be \"truncate\" or \"drop\", not {other:?}"
            ))),
        }
    }
}

/// What tokenising a data set did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizeReport {
    pub examples: usize,
    /// Examples cut to the context.
    pub truncated: usize,
    /// Examples left out: longer than the context (with `Overflow::Drop`) or nothing left to
    /// train after truncation.
    pub dropped: usize,
}

/// The message of a configuration error without its kind (for nesting).
fn message(e: Error) -> String {
    match e {
        Error::Config(m) | Error::Data(m) => m,
        other => other.to_string(),
    }
}

fn render(t: &ChatTemplate, m: &[Message], gen: bool, what: &str) -> Result<String> {
    t.render(m, gen)
        .map_err(|e| Error::Config(format!("{what}: {}", message(e))))
}

/// The rendered text of an example and its trained byte ranges (all of it with
/// `train_on_all`).
pub fn render_example(
    ex: &Example,
    template: Option<&ChatTemplate>,
    train_on_all: bool,
    eos: Option<&str>,
) -> Result<(String, Vec<Range<usize>>)> {
    let need = || {
        template.ok_or_else(|| {
            Error::Config("conversations need a chat template (--template NAME)".into())
        })
    };
    let (text, spans) = match ex {
        Example::Text { prompt, completion } => {
            // Plain text: the completion ends with the end-of-sequence token, as TRL appends.
            let mut text = format!("{prompt}{completion}");
            if let Some(e) = eos.filter(|e| !text.ends_with(*e)) {
                text.push_str(e);
            }
            let span = prompt.len()..text.len();
            (text, vec![span])
        }
        Example::ChatCompletion { prompt, completion } => {
            let t = need()?;
            let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
            let head = render(t, prompt, true, "rendering the prompt")?;
            let text = render(t, &all, false, "rendering the conversation")?;
            if !text.starts_with(&head) {
                return Err(Error::Config(
                    "the chat template renders the prompt differently inside the whole \
                     conversation, so the completion cannot be located"
                        .into(),
                ));
            }
            let span = head.len()..text.len();
            (text, vec![span])
        }
        Example::Chat(m) => {
            let t = need()?;
            let text = render(t, m, false, "rendering the conversation")?;
            let mut spans = vec![];
            for (i, msg) in m.iter().enumerate() {
                if msg.role != "assistant" {
                    continue;
                }
                let head = render(t, &m[..i], true, "rendering the conversation")?;
                let through = render(t, &m[..=i], false, "rendering the conversation")?;
                if !through.starts_with(&head) || !text.starts_with(&through) {
                    return Err(Error::Config(format!(
                        "the chat template does not render turn {} as a continuation of the \
                         turns before it, so the assistant's text cannot be located",
                        i + 1
                    )));
                }
                spans.push(head.len()..through.len());
            }
            (text, spans)
        }
    };
    Ok(if train_on_all {
        let n = text.len();
        (text, std::iter::once(0..n).collect())
    } else {
        (text, spans)
    })
}

/// Tokenises an example (see [`render_example`]); a token is trained when its text overlaps a
/// trained span.
pub fn tokenize(
    ex: &Example,
    template: Option<&ChatTemplate>,
    tokenizer: &Tokenizer,
    train_on_all: bool,
    eos: Option<&str>,
) -> Result<Tokenized> {
    let (text, spans) = render_example(ex, template, train_on_all, eos)?;
    let (ids, offsets) = tokenizer.encode_with_offsets(&text)?;
    let trained = offsets
        .iter()
        .map(|&(a, b)| spans.iter().any(|s| a < s.end && b > s.start))
        .collect();
    Ok(Tokenized { ids, trained })
}

/// Tokenises every example, applying the overflow policy at `context` tokens.
pub fn tokenize_all(
    examples: &[Example],
    template: Option<&ChatTemplate>,
    tokenizer: &Tokenizer,
    train_on_all: bool,
    context: usize,
    overflow: Overflow,
) -> Result<(Vec<Tokenized>, TokenizeReport)> {
    let eos = template.and_then(|t| t.eos_token.clone());
    let mut report = TokenizeReport::default();
    let mut out = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        report.examples += 1;
        let mut t = tokenize(ex, template, tokenizer, train_on_all, eos.as_deref())
            .map_err(|e| Error::Data(format!("example {}: {}", i + 1, message(e))))?;
        if t.ids.len() > context {
            if overflow == Overflow::Drop {
                report.dropped += 1;
                continue;
            }
            report.truncated += 1;
            t.ids.truncate(context);
            t.trained.truncate(context);
        }
        if t.targets() == 0 {
            report.dropped += 1;
            continue;
        }
        out.push(t);
    }
    Ok((out, report))
}

/// Best-fit-decreasing packing as TRL's `pack_dataset(strategy="bfd")`: sequences by length,
/// longest first (ties in input order), each into the fullest bin it fits (among bins with the
/// same free space, the one that reached it first), or a new bin. Returns each bin's sequence
/// indices in the order placed; bins in the order opened. Lengths above `capacity` count as
/// `capacity` (TRL truncates them first); empty sequences are left out, as TRL drops them.
/// (TRL packs each run of 1,000 examples on its own, an artefact of `datasets.map` batches;
/// this packs the whole set, which fills rows at least as well.)
pub fn pack_bfd(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).filter(|&i| lengths[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i].min(capacity)));
    let mut bins: Vec<Vec<usize>> = vec![];
    let mut by_space: BTreeMap<usize, VecDeque<usize>> = BTreeMap::new();
    for i in order {
        let n = lengths[i].min(capacity);
        let found = by_space
            .range(n..)
            .next()
            .map(|(&space, _)| space)
            .filter(|&s| s < capacity);
        let (bin, space) = match found {
            Some(space) => {
                let q = by_space.get_mut(&space).expect("found above");
                let bin = q.pop_front().expect("non-empty");
                if q.is_empty() {
                    by_space.remove(&space);
                }
                (bin, space)
            }
            None => {
                bins.push(vec![]);
                (bins.len() - 1, capacity)
            }
        };
        bins[bin].push(i);
        let left = space - n;
        if left > 0 {
            by_space.entry(left).or_default().push_back(bin);
        }
    }
    bins
}

/// A batch of tokenised examples: rows of token ids (one example per row, or several packed),
/// and the flat positions whose next token is a target.
pub struct SftBatch {
    /// `[b, t]` (u32).
    pub ids: Tensor,
    /// Packed rows' example boundaries (`None`: one example per row, right-padded).
    pub segments: Option<Segments>,
    /// Flat indices into `b * t` of the positions that predict a target.
    pub rows: Vec<u32>,
    /// The target of each of `rows`.
    pub targets: Vec<u32>,
}

impl SftBatch {
    /// `rows[r]` holds the examples of batch row `r` (more than one only when `packed`), padded
    /// with `pad` to the longest row (to `context` when packed, so shapes stay fixed).
    pub fn new(
        rows: &[Vec<&Tokenized>],
        packed: bool,
        context: usize,
        pad: u32,
        device: &Device,
    ) -> Result<Self> {
        let width = |r: &Vec<&Tokenized>| r.iter().map(|e| e.ids.len()).sum::<usize>();
        let t = if packed {
            context
        } else {
            rows.iter().map(width).max().unwrap_or(0)
        };
        if t == 0 || rows.iter().any(|r| width(r) > t) {
            return Err(Error::Data(format!("a batch row does not fit {t} tokens")));
        }
        let mut ids = vec![pad; rows.len() * t];
        let (mut flat, mut targets) = (vec![], vec![]);
        for (r, row) in rows.iter().enumerate() {
            let mut at = r * t;
            for ex in row {
                ids[at..at + ex.ids.len()].copy_from_slice(&ex.ids);
                for j in 1..ex.ids.len() {
                    if ex.trained[j] {
                        flat.push((at + j - 1) as u32);
                        targets.push(ex.ids[j]);
                    }
                }
                at += ex.ids.len();
            }
        }
        let segments = if packed {
            let lengths: Vec<Vec<usize>> = rows
                .iter()
                .map(|r| r.iter().map(|e| e.ids.len()).collect())
                .collect();
            Some(Segments::from_lengths(&lengths, t)?)
        } else {
            None
        };
        Ok(SftBatch {
            ids: Tensor::from_vec(ids, (rows.len(), t), device)?,
            segments,
            rows: flat,
            targets,
        })
    }

    /// Trained targets in the batch.
    pub fn count(&self) -> usize {
        self.targets.len()
    }
}

/// Mean cross-entropy over the batch's trained targets. `train`: the fused training head.
pub fn loss(
    model: &CausalModel,
    batch: &SftBatch,
    rng: Option<&mut Rng>,
    train: bool,
) -> Result<Tensor> {
    if batch.targets.is_empty() {
        return Err(Error::Data("a batch with nothing to train".into()));
    }
    let h = match &batch.segments {
        Some(s) => model.hidden_packed(&batch.ids, s, rng)?,
        None => model.hidden(&batch.ids, None, rng)?,
    };
    let (b, t, c) = h.dims3()?;
    let device = h.device();
    let idx = Tensor::new(batch.rows.as_slice(), device)?;
    let chosen = h.reshape((b * t, c))?.index_select(&idx, 0)?;
    let y = Tensor::new(batch.targets.as_slice(), device)?;
    CausalLm::head_loss(model, &chosen, &y, train)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfd_packs_fullest_bin_first() {
        // 5 and 4 open bins (free 3, 4); 3 fills the first; 2 goes to the second (free 2),
        // the next 2 fills it; 1 fits nowhere and opens a third.
        let bins = pack_bfd(&[2, 5, 3, 4, 2, 1], 8);
        assert_eq!(bins, vec![vec![1, 2], vec![3, 0, 4], vec![5]]);
        // Over-long sequences take a bin of their own.
        assert_eq!(pack_bfd(&[10, 1], 8), vec![vec![0], vec![1]]);
    }

    #[test]
    fn builtin_templates_render_incrementally() {
        let m = vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello"),
            Message::new("user", "Bye"),
            Message::new("assistant", "Ciao"),
        ];
        for name in BUILTIN_TEMPLATES {
            let t = ChatTemplate::new(
                builtin_template(name).unwrap(),
                Some("<s>".into()),
                Some("</s>".into()),
            )
            .unwrap();
            let (text, spans) =
                render_example(&Example::Chat(m.clone()), Some(&t), false, None).unwrap();
            let trained: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
            match *name {
                "chatml" => assert_eq!(trained, ["Hello<|im_end|>\n", "Ciao<|im_end|>\n"]),
                "alpaca" => {
                    assert!(
                        text.starts_with(
                            "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello</s>"
                        ),
                        "{text}"
                    );
                    assert_eq!(trained, ["Hello</s>\n\n", "Ciao</s>\n\n"]);
                }
                _ => {
                    assert!(
                        text.starts_with("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye"),
                        "{text}"
                    );
                    assert_eq!(trained, [" Hello </s>", " Ciao </s>"]);
                }
            }
        }
    }
}
