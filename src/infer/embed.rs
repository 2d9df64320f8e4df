//! Sentence embeddings from an encoder, as sentence-transformers computes them: tokenize
//! (`[CLS] ... [SEP]`, truncated to `max_seq_length`), run the encoder over a padded batch,
//! pool (mean over the non-padding tokens, or the `[CLS]` vector) and, when the model's
//! `modules.json` has a `Normalize` step, scale to unit length. The pooling mode comes from
//! `1_Pooling/config.json` and the length limit from `sentence_bert_config.json`.

use crate::io::read_json;
use crate::models::bert::{self, Bert};
use crate::nn::ParamStore;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over non-padding tokens.
    Mean,
    /// The first (`[CLS]`) token's vector.
    Cls,
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            o => Err(Error::Config(format!(
                "pooling {o:?} is not supported (mean, cls)"
            ))),
        }
    }
}

/// A BERT-family encoder with its tokenizer and pooling recipe.
pub struct SentenceEncoder {
    pub model: Bert,
    pub store: ParamStore,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Tokens per input, special tokens included.
    pub max_len: usize,
}

/// One tokenized input.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// Tokens dropped by truncation.
    pub dropped: usize,
}

impl SentenceEncoder {
    /// Loads a model directory with sentence-transformers' files when present (defaults: mean
    /// pooling, no normalisation, the model's maximum positions).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (model, store) = bert::load_dir(dir, device)?;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"))?;
        let pool_cfg = dir.join("1_Pooling/config.json");
        let pooling = if pool_cfg.exists() {
            let v: serde_json::Value = read_json(&pool_cfg)?;
            let on = |k: &str| v.get(k).and_then(|b| b.as_bool()).unwrap_or(false);
            if on("pooling_mode_mean_tokens") {
                Pooling::Mean
            } else if on("pooling_mode_cls_token") {
                Pooling::Cls
            } else {
                return Err(Error::format(
                    &pool_cfg,
                    "only mean and cls pooling are supported",
                ));
            }
        } else {
            Pooling::Mean
        };
        let modules = dir.join("modules.json");
        let normalize = if modules.exists() {
            let v: serde_json::Value = read_json(&modules)?;
            v.as_array().is_some_and(|a| {
                a.iter().any(|m| {
                    m.get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| t.ends_with("Normalize"))
                })
            })
        } else {
            false
        };
        let sb = dir.join("sentence_bert_config.json");
        let max_len = if sb.exists() {
            let v: serde_json::Value = read_json(&sb)?;
            v.get("max_seq_length")
                .and_then(|m| m.as_u64())
                .map(|m| m as usize)
        } else {
            None
        }
        .unwrap_or(model.config.max_position_embeddings)
        .min(model.config.max_position_embeddings);
        Ok(SentenceEncoder {
            model,
            store,
            tokenizer,
            pooling,
            normalize,
            max_len,
        })
    }

    /// `[CLS] tokens [SEP]`, keeping the first `max_len - 2` tokens of a longer text.
    pub fn tokenize(&self, text: &str) -> Result<Tokenized> {
        let mut ids = self.tokenizer.encode_special(text)?;
        let mut dropped = 0;
        if ids.len() > self.max_len && self.max_len >= 2 {
            let last = *ids.last().expect("non-empty");
            dropped = ids.len() - self.max_len;
            ids.truncate(self.max_len - 1);
            ids.push(last);
        }
        Ok(Tokenized { ids, dropped })
    }

    /// Embeddings of already tokenized inputs, as one right-padded batch.
    pub fn embed_ids(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let dev = self.model.device();
        let t = batch.iter().map(|b| b.len()).max().unwrap_or(0);
        let pad = 0u32;
        let mut ids = Vec::with_capacity(batch.len() * t);
        let mut mask = Vec::with_capacity(batch.len() * t);
        for b in batch {
            ids.extend(
                b.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, t - b.len())),
            );
            mask.extend((0..t).map(|i| u32::from(i < b.len())));
        }
        let ids = Tensor::from_vec(ids, (batch.len(), t), dev)?;
        let mask = Tensor::from_vec(mask, (batch.len(), t), dev)?;
        let h = self.model.encode(&ids, None, Some(&mask))?;
        let mut e = match self.pooling {
            Pooling::Mean => bert::mean_pool(&h, &mask)?,
            Pooling::Cls => h.narrow(1, 0, 1)?.squeeze(1)?,
        };
        if self.normalize {
            e = bert::l2_normalize(&e)?;
        }
        Ok(e.to_vec2()?)
    }

    /// Embeddings of `texts` in order, `batch` at a time.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let toks: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenize(t).map(|t| t.ids))
            .collect::<Result<_>>()?;
        self.embed_all(&toks, batch, &mut |_| {})
    }

    /// Embeddings of tokenized inputs in order. Batches are formed from inputs of similar
    /// length (as sentence-transformers does), so little compute goes to padding;
    /// `on_progress` gets the number of inputs done.
    pub fn embed_all(
        &self,
        toks: &[Vec<u32>],
        batch: usize,
        on_progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..toks.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(toks[i].len()));
        let mut out = vec![vec![]; toks.len()];
        let mut done = 0;
        for idx in order.chunks(batch.max(1)) {
            let chunk: Vec<Vec<u32>> = idx.iter().map(|&i| toks[i].clone()).collect();
            for (&i, e) in idx.iter().zip(self.embed_ids(&chunk)?) {
                out[i] = e;
            }
            done += idx.len();
            on_progress(done);
        }
        Ok(out)
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}
