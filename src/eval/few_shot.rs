//! In-context few-shot evaluation of causal LMs, as lm-evaluation-harness does it: k solved
//! exemplars before the document (see [`Task::context`]), then
//! - multiple choice: the log-likelihood of `target_delimiter + choice` after the context;
//!   `acc` takes the highest, `acc_norm` the highest per character of the choice;
//! - generation: greedy decoding until a stop string, scored by exact match.
//!
//! Tokens are split as lm-eval's `_encode_pair` splits them (the context's trailing whitespace
//! moves to the continuation; the continuation is what encoding the whole string adds after
//! the context's own tokens). The context runs once per document and its key/value cache
//! serves every choice.

use crate::eval::task::{OutputType, Target, Task};
use crate::infer::generate::{generate_ids, SamplingConfig};
use crate::models::CausalModel;
use crate::rng::PyRandom;
use crate::text::tokenizer::{Tokenizer, EOT};
use crate::{Error, Result};
use candle_core::Tensor;
use serde::Serialize;

/// Python's `str.isspace` (what lm-eval's `rstrip()` strips).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// lm-eval's `_encode_pair`: token ids of the context and of the continuation. An empty
/// context becomes `[prefix]` (the BOS or end-of-text token).
pub fn encode_pair(
    m: &Prompted,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        let cont = m.tokenizer.encode(continuation)?;
        if cont.is_empty() {
            return Err(Error::Data("an empty continuation".into()));
        }
        // A continuation that itself starts with the prefix token is its own context.
        if cont[0] == m.prefix && cont.len() > 1 {
            return Ok((vec![cont[0]], cont[1..].to_vec()));
        }
        return Ok((vec![m.prefix], cont));
    }
    let kept = context.trim_end_matches(py_space);
    let (ctx, cont) = (kept, format!("{}{continuation}", &context[kept.len()..]));
    let whole = m.encode(&format!("{ctx}{cont}"))?;
    let ctx_ids = m.encode(ctx)?;
    let cont_ids = whole.get(ctx_ids.len()..).unwrap_or_default().to_vec();
    if cont_ids.is_empty() {
        return Err(Error::Data(format!(
            "the continuation {continuation:?} adds no tokens after the context (it merges into the context's last token)"
        )));
    }
    Ok((ctx_ids, cont_ids))
}

/// One continuation's score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// Summed log-probability of its tokens.
    pub loglik: f64,
    /// Whether every token is the model's most likely one.
    pub is_greedy: bool,
}

/// Log-probability of `target` under `logits`, and whether it is the argmax.
fn token_score(logits: &[f32], target: u32) -> (f64, bool) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let lse = (logits
        .iter()
        .map(|&x| ((x - max) as f64).exp())
        .sum::<f64>())
    .ln()
        + max as f64;
    let t = logits[target as usize];
    // First maximum, as torch's argmax.
    let best = logits.iter().position(|&x| x == max).unwrap_or(0);
    (t as f64 - lse, best == target as usize)
}

/// Scores each continuation after `context` (token ids): the context runs once, and its
/// key/value cache, copied for each continuation, serves all of them in one batched pass.
/// When context plus the longest continuation exceed the model's window, the context loses
/// tokens from its start (lm-eval's left truncation). Returns the scores and how many context
/// tokens were dropped.
pub fn score_continuations(
    model: &CausalModel,
    context: &[u32],
    continuations: &[Vec<u32>],
) -> Result<(Vec<Scored>, usize)> {
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    if longest == 0 || continuations.iter().any(Vec::is_empty) {
        return Err(Error::Data("an empty continuation".into()));
    }
    if context.is_empty() {
        return Err(Error::Data("an empty context".into()));
    }
    let vocab = model.vocab_size();
    if let Some(&bad) = context
        .iter()
        .chain(continuations.iter().flatten())
        .find(|&&t| t as usize >= vocab)
    {
        return Err(Error::Data(format!(
            "token id {bad} is outside the model's vocabulary ({vocab})"
        )));
    }
    let window = model.max_positions();
    // The model sees context + continuation minus its last token.
    let over = (context.len() + longest - 1).saturating_sub(window);
    if over >= context.len() {
        return Err(Error::Data(format!(
            "a continuation of {longest} tokens does not fit the model's {window}-token window"
        )));
    }
    let context = &context[over..];
    let dev = model.device();
    let mut caches = model.new_caches();
    let x = Tensor::new(context, dev)?.unsqueeze(0)?;
    let h = model.hidden(&x, Some(&mut caches), None)?;
    let last = model
        .logits(&h.narrow(1, context.len() - 1, 1)?)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out: Vec<Scored> = continuations
        .iter()
        .map(|c| {
            let (loglik, is_greedy) = token_score(&last, c[0]);
            Scored { loglik, is_greedy }
        })
        .collect();
    if longest > 1 {
        let n = continuations.len();
        let t = longest - 1;
        let copy = Tensor::zeros(n, candle_core::DType::U32, dev)?;
        for c in caches.iter_mut() {
            c.reorder(&copy)?;
        }
        // Inputs: every continuation token but the last, right-padded (padding comes after
        // the positions read, so causal attention keeps it out of them).
        let mut ids = vec![0u32; n * t];
        let mut rows = vec![];
        let mut targets = vec![];
        for (i, c) in continuations.iter().enumerate() {
            ids[i * t..i * t + c.len() - 1].copy_from_slice(&c[..c.len() - 1]);
            for (j, &tok) in c.iter().enumerate().skip(1) {
                rows.push((i * t + j - 1) as u32);
                targets.push((i, tok));
            }
        }
        let x = Tensor::from_vec(ids, (n, t), dev)?;
        let h = model.hidden(&x, Some(&mut caches), None)?;
        let c = h.dim(2)?;
        let picked = h
            .reshape((n * t, c))?
            .index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
        let logits = model.logits(&picked)?.to_vec2::<f32>()?;
        for (row, (i, target)) in logits.iter().zip(targets) {
            let (ll, greedy) = token_score(row, target);
            out[i].loglik += ll;
            out[i].is_greedy &= greedy;
        }
    }
    Ok((out, over))
}

/// One evaluated document.
#[derive(Debug, Clone, Serialize)]
pub struct DocResult {
    pub doc: usize,
    /// Exemplars (indices into the few-shot split), in prompt order.
    pub exemplars: Vec<usize>,
    pub context_tokens: usize,
    /// Context tokens dropped to fit the window.
    #[serde(skip_serializing_if = "is_zero")]
    pub truncated: usize,
    /// Multiple choice: the right choice, each choice's score, and the predictions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logliks: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub is_greedy: Vec<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pred: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pred_norm: Option<usize>,
    /// Generation: what the model wrote (cut at the stop string) and the accepted answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
    /// 1 or 0: acc for multiple choice, exact match for generation.
    pub correct: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct_norm: Option<f64>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The summary lm-eval prints, with its standard errors (sample standard deviation over
/// documents / sqrt(n)).
#[derive(Debug, Clone, Serialize)]
pub struct FewshotReport {
    pub task: String,
    pub shots: usize,
    pub n: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_stderr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match_stderr: Option<f64>,
    /// Documents whose context was cut to fit the window.
    pub truncated: usize,
    /// Tokens run through the model (contexts once, continuations or generations).
    pub tokens: usize,
    pub seconds: f64,
}

/// Mean and lm-eval's standard error of the mean.
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// First index of the maximum (numpy's argmax).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Exact match after the task's normalisation.
fn exact_match(task: &Task, generated: &str, answers: &[String]) -> bool {
    let g = &task.generation;
    let norm = |s: &str| -> String {
        let mut s = if g.strip {
            s.trim().to_string()
        } else {
            s.to_string()
        };
        if g.ignore_case {
            s = s.to_lowercase();
        }
        if g.ignore_punctuation {
            s.retain(|c| !c.is_ascii_punctuation());
        }
        s
    };
    let got = norm(generated);
    answers.iter().any(|a| norm(a) == got)
}

/// What to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct FewshotConfig {
    pub shots: usize,
    /// Exemplar sampling seed [lm-eval's default: 1234].
    pub seed: u64,
    /// Only the first N test documents.
    pub limit: Option<usize>,
}

/// The model with what prompting it needs.
pub struct Prompted<'a> {
    pub model: &'a CausalModel,
    pub tokenizer: &'a Tokenizer,
    /// Put before every encoded text (when the tokenizer adds a BOS, as transformers' encode
    /// does by default).
    pub bos: Option<u32>,
    /// Token an empty context starts from: BOS, else end of text (lm-eval's prefix token).
    pub prefix: u32,
    /// Tokens that end a generation (end of text/turn).
    pub stop_tokens: Vec<u32>,
}

impl<'a> Prompted<'a> {
    /// A loaded model as lm-eval's HF wrapper prompts it.
    pub fn new(p: &'a crate::infer::pretrained::PretrainedCausalLm) -> Result<Self> {
        let prefix = p
            .special
            .bos
            .or(p.special.eos)
            .or_else(|| p.tokenizer.token_id(EOT))
            .ok_or_else(|| {
                Error::Config(
                    "the tokenizer has no BOS or end-of-text token to start an empty context"
                        .into(),
                )
            })?;
        Ok(Prompted {
            model: &p.model,
            tokenizer: &p.tokenizer,
            bos: p.special.bos.filter(|_| p.special.add_bos),
            prefix,
            stop_tokens: p.stop_tokens(),
        })
    }

    /// Token ids of `text`, after the BOS when the tokenizer adds one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        ids.extend(self.tokenizer.encode(text)?);
        Ok(ids)
    }
}

/// Evaluates `task` with `cfg.shots` exemplars per document; `progress` is called after each
/// document with the number done.
pub fn evaluate(
    m: &Prompted,
    task: &Task,
    cfg: &FewshotConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<(FewshotReport, Vec<DocResult>)> {
    let start = std::time::Instant::now();
    let n = cfg.limit.unwrap_or(usize::MAX).min(task.test_docs().len());
    if n == 0 {
        return Err(Error::Config("--limit 0 leaves no documents".into()));
    }
    let mut rng = PyRandom::new(cfg.seed);
    let mut results = Vec::with_capacity(n);
    let mut tokens = 0;
    for i in 0..n {
        let exemplars = task.exemplars(i, cfg.shots, &mut rng)?;
        let context = task.context(i, &exemplars)?;
        let doc = &task.test_docs()[i];
        let choices = task.choices(doc)?;
        let target = task.target(doc, &choices)?;
        let at = |e: Error| match e {
            Error::Data(msg) => Error::format(&task.path, format!("test document {i}: {msg}")),
            o => o,
        };
        let r = match (task.output_type, target) {
            (OutputType::MultipleChoice, Target::Index(t)) => {
                let mut ctx_ids = vec![];
                let conts = choices
                    .iter()
                    .map(|c| {
                        let (ctx, cont) =
                            encode_pair(m, &context, &format!("{}{c}", task.target_delimiter))?;
                        ctx_ids = ctx;
                        Ok(cont)
                    })
                    .collect::<Result<Vec<_>>>()
                    .map_err(at)?;
                let (scores, truncated) =
                    score_continuations(m.model, &ctx_ids, &conts).map_err(at)?;
                tokens +=
                    ctx_ids.len() - truncated + conts.iter().map(|c| c.len() - 1).sum::<usize>();
                let logliks: Vec<f64> = scores.iter().map(|s| s.loglik).collect();
                let per_char: Vec<f64> = logliks
                    .iter()
                    .zip(&choices)
                    .map(|(l, c)| l / c.chars().count() as f64)
                    .collect();
                let (pred, pred_norm) = (argmax(&logliks), argmax(&per_char));
                DocResult {
                    doc: i,
                    exemplars,
                    context_tokens: ctx_ids.len() - truncated,
                    truncated,
                    target: Some(t),
                    is_greedy: scores.iter().map(|s| s.is_greedy).collect(),
                    logliks,
                    pred: Some(pred),
                    pred_norm: Some(pred_norm),
                    generated: None,
                    answers: vec![],
                    correct: f64::from(u8::from(pred == t)),
                    correct_norm: Some(f64::from(u8::from(pred_norm == t))),
                }
            }
            (OutputType::GenerateUntil, Target::Text(answers)) => {
                let mut ids = m.encode(&context)?;
                if ids.is_empty() {
                    ids.push(m.prefix);
                }
                let g = &task.generation;
                let window = m.model.max_positions();
                // Room for the answer: the context keeps its last tokens (lm-eval's rule).
                let keep = window.saturating_sub(g.max_gen_toks).max(1);
                let truncated = ids.len().saturating_sub(keep);
                let ids = &ids[truncated..];
                let until = task.until();
                let sampling = SamplingConfig {
                    max_tokens: g.max_gen_toks,
                    temperature: 0.0,
                    top_k: None,
                    top_p: None,
                    seed: 0,
                };
                let mut out_ids = vec![];
                let mut text = String::new();
                generate_ids(m.model, ids, &sampling, &m.stop_tokens, &mut |id| {
                    out_ids.push(id);
                    text = m.tokenizer.decode_with(&out_ids, true)?;
                    Ok(!until
                        .iter()
                        .any(|u| !u.is_empty() && text.contains(u.as_str())))
                })
                .map_err(at)?;
                tokens += ids.len() + out_ids.len();
                // Cut at the first stop string, as lm-eval does for each in turn.
                for u in until.iter().filter(|u| !u.is_empty()) {
                    if let Some(p) = text.find(u.as_str()) {
                        text.truncate(p);
                    }
                }
                let ok = exact_match(task, &text, &answers);
                DocResult {
                    doc: i,
                    exemplars,
                    context_tokens: ids.len(),
                    truncated,
                    target: None,
                    logliks: vec![],
                    is_greedy: vec![],
                    pred: None,
                    pred_norm: None,
                    generated: Some(text),
                    answers,
                    correct: f64::from(u8::from(ok)),
                    correct_norm: None,
                }
            }
            _ => unreachable!(
                "Task::target returns an index for multiple choice and text for generation"
            ),
        };
        results.push(r);
        progress(i + 1);
    }
    let correct: Vec<f64> = results.iter().map(|r| r.correct).collect();
    let (acc, acc_se) = mean_stderr(&correct);
    let mut report = FewshotReport {
        task: task.name.clone(),
        shots: cfg.shots,
        n,
        acc: None,
        acc_norm: None,
        acc_stderr: None,
        acc_norm_stderr: None,
        exact_match: None,
        exact_match_stderr: None,
        truncated: results.iter().filter(|r| r.truncated > 0).count(),
        tokens,
        seconds: start.elapsed().as_secs_f64(),
    };
    match task.output_type {
        OutputType::MultipleChoice => {
            let norm: Vec<f64> = results.iter().filter_map(|r| r.correct_norm).collect();
            let (an, an_se) = mean_stderr(&norm);
            report.acc = Some(acc);
            report.acc_stderr = Some(acc_se);
            report.acc_norm = Some(an);
            report.acc_norm_stderr = Some(an_se);
        }
        OutputType::GenerateUntil => {
            report.exact_match = Some(acc);
            report.exact_match_stderr = Some(acc_se);
        }
    }
    Ok((report, results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_and_argmax_as_numpy() {
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m, 0.75);
        // numpy: np.std([1,0,1,1], ddof=1) / 2
        assert!((se - 0.25).abs() < 1e-12, "{se}");
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn token_score_is_log_softmax() {
        let (lp, greedy) = token_score(&[1.0, 2.0, 3.0], 2);
        let want = 3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((lp - want).abs() < 1e-6 && greedy);
        assert!(!token_score(&[1.0, 2.0, 3.0], 0).1);
    }
}
