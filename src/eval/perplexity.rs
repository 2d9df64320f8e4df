//! Perplexity of a causal language model on a text.
//!
//! The token ids are cut into consecutive, non-overlapping windows of `context` tokens (the
//! last may be shorter). Within a window, every token after the first is predicted from the
//! tokens before it in that window. A model trained with a beginning-of-sequence token
//! (`bos`: Gemma, Llama 2, whose tokenizers add it) reads each window after it, as it always
//! saw text, and then every token of the window is predicted (llama.cpp's perplexity, and
//! transformers' strided recipe, do the same). `tokens` counts predicted positions;
//! `mean_nll` is their mean negative log-likelihood in nats; perplexity is `exp(mean_nll)`.

use crate::models::CausalModel;
use crate::objective::clm::token_nll;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::Serialize;

/// The result, serialised as the CLI's JSON line.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PerplexityReport {
    pub tokens: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// Windows evaluated together in one forward pass.
const BATCH: usize = 8;

/// Perplexity of `model` on `ids`, each window read after `bos` when given; `on_progress`
/// receives the number of windows done.
pub fn perplexity(
    model: &CausalModel,
    ids: &[u32],
    context: usize,
    bos: Option<u32>,
    on_progress: &mut dyn FnMut(usize),
) -> Result<PerplexityReport> {
    if context < 2 {
        return Err(Error::Config(format!(
            "context must be at least 2, got {context}"
        )));
    }
    if context > model.max_positions() {
        return Err(Error::Config(format!(
            "context {context} exceeds the model's {} positions",
            model.max_positions()
        )));
    }
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= model.vocab_size()) {
        return Err(Error::Data(format!(
            "token id {bad} is outside the model's vocabulary"
        )));
    }
    // Without a BOS the first token of a window is context only.
    let min = if bos.is_some() { 1 } else { 2 };
    let windows: Vec<&[u32]> = ids.chunks(context).filter(|w| w.len() >= min).collect();
    if windows.is_empty() {
        return Err(Error::Data(format!(
            "the text has {} tokens; at least {min} are needed",
            ids.len()
        )));
    }
    let device = model.device();
    let mut total = 0f64;
    let mut count = 0usize;
    let mut done = 0;
    // Full windows are batched; a shorter last window goes alone.
    let mut i = 0;
    while i < windows.len() {
        let len = windows[i].len();
        let mut group = vec![windows[i]];
        while group.len() < BATCH
            && i + group.len() < windows.len()
            && windows[i + group.len()].len() == len
        {
            group.push(windows[i + group.len()]);
        }
        let b = group.len();
        // Inputs and the tokens they predict: [bos] + w[..len-1] -> w, or w[..len-1] -> w[1..].
        let (x, y): (Vec<u32>, Vec<u32>) = match bos {
            Some(bos) => (
                group
                    .iter()
                    .flat_map(|w| std::iter::once(bos).chain(w[..len - 1].iter().copied()))
                    .collect(),
                group.iter().flat_map(|w| w.iter().copied()).collect(),
            ),
            None => (
                group
                    .iter()
                    .flat_map(|w| w[..len - 1].iter().copied())
                    .collect(),
                group.iter().flat_map(|w| w[1..].iter().copied()).collect(),
            ),
        };
        let n = x.len() / b;
        let x = Tensor::from_vec(x, (b, n), device)?;
        let y = Tensor::from_vec(y, b * n, device)?;
        let logits = model.forward(&x, None, None)?;
        let nll = token_nll(&logits.reshape((b * n, model.vocab_size()))?, &y)?;
        let nll: Vec<f32> = nll.to_vec1()?;
        total += nll.iter().map(|v| *v as f64).sum::<f64>();
        count += nll.len();
        i += b;
        done += b;
        on_progress(done);
    }
    let mean_nll = total / count as f64;
    Ok(PerplexityReport {
        tokens: count,
        mean_nll,
        perplexity: mean_nll.exp(),
    })
}
