//! Zero-shot multiple choice for chat models: each choice scored as the assistant's whole reply
//! to the record's messages (its tokens through the template's end of turn, as instruction
//! tuning trains them), by summed log-likelihood (`acc`) and per character (`acc_norm`, as
//! lm-evaluation-harness normalises by the choice's length).
//!
//! Records (JSON lines, as `instruct build` writes `eval.jsonl`): `messages` (the conversation
//! so far, ending with the user's turn), `choices` (strings), `answer` (index), and optionally
//! `family`, `task`, `held_out`.

use crate::data::instruct::Example;
use crate::models::CausalModel;
use crate::nn::kernels::cross_entropy::nll_rows;
use crate::objective::sft::{self, SftBatch};
use crate::text::chat::{ChatTemplate, Message};
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceRecord {
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub task: String,
    #[serde(default)]
    pub held_out: bool,
    pub messages: Vec<Message>,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// Reads records from a JSON-lines file (or a directory's `eval.jsonl`); a malformed record is
/// an error naming the line.
pub fn read_choices(path: &Path) -> Result<Vec<ChoiceRecord>> {
    let file = if path.is_dir() {
        path.join("eval.jsonl")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: String| Error::format(&file, format!("line {}: {m}", i + 1));
        let r: ChoiceRecord = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        if r.choices.is_empty() || r.choices.iter().any(|c| c.is_empty()) {
            return Err(at("empty choices".into()));
        }
        if r.answer >= r.choices.len() {
            return Err(at(format!(
                "answer {} but {} choices",
                r.answer,
                r.choices.len()
            )));
        }
        if r.messages.is_empty() {
            return Err(at("no messages".into()));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(Error::format(&file, "no records"));
    }
    Ok(out)
}

/// Each choice as the assistant's reply to the record's messages, tokenized with its trained
/// (scored) tokens marked.
pub fn choice_rows(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    record: &ChoiceRecord,
) -> Result<Vec<sft::Tokenized>> {
    record
        .choices
        .iter()
        .map(|c| {
            let ex = Example::ChatCompletion {
                prompt: record.messages.clone(),
                completion: vec![Message::new("assistant", c)],
            };
            sft::tokenize(&ex, Some(template), tokenizer, false, None)
        })
        .collect()
}

/// The log-likelihood of each choice as the assistant's reply (the prompt run once when the
/// replies share its tokens, else each row whole).
pub fn choice_logliks(
    model: &CausalModel,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    record: &ChoiceRecord,
) -> Result<Vec<f64>> {
    let rows = choice_rows(tokenizer, template, record)?;
    let max = model.max_positions();
    if let Some(r) = rows.iter().find(|r| r.ids.len() > max) {
        return Err(Error::Data(format!(
            "a question with its answer is {} tokens, more than the model's {max}",
            r.ids.len()
        )));
    }
    // Usually every reply follows the same prompt tokens: run the prompt once and share its
    // key/value cache among the replies.
    let split = |r: &sft::Tokenized| -> Option<usize> {
        let s = (1..r.ids.len()).find(|&i| r.trained[i])?;
        r.trained[s..].iter().all(|&t| t).then_some(s)
    };
    let splits: Vec<Option<usize>> = rows.iter().map(split).collect();
    if let Some(Some(s)) = splits.first() {
        let prompt = &rows[0].ids[..*s];
        let shared = rows
            .iter()
            .zip(&splits)
            .all(|(r, &sp)| sp == Some(*s) && &r.ids[..*s] == prompt);
        if shared {
            let conts: Vec<Vec<u32>> = rows.iter().map(|r| r.ids[*s..].to_vec()).collect();
            let (scores, _) = crate::eval::few_shot::score_continuations(model, prompt, &conts)?;
            return Ok(scores.iter().map(|x| x.loglik).collect());
        }
    }
    rows_logliks(model, &rows)
}

/// The summed log-likelihood of each row's trained tokens, every row run whole in one batch.
pub fn rows_logliks(model: &CausalModel, rows: &[sft::Tokenized]) -> Result<Vec<f64>> {
    let max = model.max_positions();
    let refs: Vec<Vec<&sft::Tokenized>> = rows.iter().map(|r| vec![r]).collect();
    let batch = SftBatch::new(&refs, false, max, 0, model.device())?;
    let h = model.hidden(&batch.ids, None, None)?;
    let (b, t, c) = h.dims3()?;
    let idx = Tensor::new(batch.rows.as_slice(), h.device())?;
    let logits = model.logits(&h.reshape((b * t, c))?.index_select(&idx, 0)?)?;
    let y = Tensor::new(batch.targets.as_slice(), h.device())?;
    let nll: Vec<f32> = nll_rows(&logits, &y)?.to_vec1()?;
    let mut ll = vec![0f64; b];
    for (&pos, n) in batch.rows.iter().zip(nll) {
        ll[pos as usize / t] -= n as f64;
    }
    Ok(ll)
}

/// Accuracy over a group of records.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Accuracy {
    pub n: usize,
    pub acc: f64,
    pub acc_norm: f64,
}

/// What [`evaluate`] measured: overall, per family, and per record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChoiceReport {
    pub all: Accuracy,
    pub families: BTreeMap<String, Accuracy>,
    /// Held-out families together (when the records mark any).
    pub held_out: Option<Accuracy>,
    /// Per record: the choices' log-likelihoods.
    #[serde(skip)]
    pub logliks: Vec<Vec<f64>>,
}

fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Scores every record; `progress` is called after each.
pub fn evaluate(
    model: &CausalModel,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    records: &[ChoiceRecord],
    progress: &mut dyn FnMut(usize),
) -> Result<ChoiceReport> {
    let mut report = ChoiceReport::default();
    let mut sums: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let ll = choice_logliks(model, tokenizer, template, r)?;
        let hit = usize::from(argmax(ll.iter().copied()) == r.answer);
        let norm = argmax(ll.iter().zip(&r.choices).map(|(l, c)| l / c.len() as f64));
        let hit_norm = usize::from(norm == r.answer);
        let mut keys = vec!["*".to_string(), format!("family:{}", r.family)];
        if r.held_out {
            keys.push("held_out".into());
        }
        for k in keys {
            let e = sums.entry(k).or_default();
            *e = (e.0 + 1, e.1 + hit, e.2 + hit_norm);
        }
        report.logliks.push(ll);
        progress(i + 1);
    }
    let acc = |&(n, h, hn): &(usize, usize, usize)| Accuracy {
        n,
        acc: h as f64 / n as f64,
        acc_norm: hn as f64 / n as f64,
    };
    for (k, v) in &sums {
        if k == "*" {
            report.all = acc(v);
        } else if k == "held_out" {
            report.held_out = Some(acc(v));
        } else if let Some(f) = k.strip_prefix("family:") {
            report.families.insert(f.to_string(), acc(v));
        }
    }
    Ok(report)
}
