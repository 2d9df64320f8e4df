//! Fill-mask: the most likely tokens at each `[MASK]` of a text under a masked language model
//! (BERT with its MLM head), as transformers' `fill-mask` pipeline reports them.

use crate::io::read_json;
use crate::models::bert::{self, Bert};
use crate::nn::ParamStore;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::Path;

/// One candidate for a masked position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// Probability of the token at that position.
    pub score: f32,
    /// Token id.
    pub token: u32,
    /// The token as text (`##s` for a word piece).
    pub token_str: String,
    /// The input with this token in place of the mask (special tokens removed when the text
    /// has one mask, kept when it has several, as transformers does).
    pub sequence: String,
}

/// A masked language model with its tokenizer.
pub struct FillMask {
    pub model: Bert,
    pub store: ParamStore,
    pub tokenizer: Tokenizer,
    /// The mask token's text and id.
    pub mask_token: String,
    pub mask_id: u32,
}

impl FillMask {
    /// Loads a Hugging Face BERT directory that has the MLM head (`BertForMaskedLM`); the mask
    /// token is `tokenizer_config.json`'s `mask_token`, else `[MASK]`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (model, store) = bert::load_dir(dir, device)?;
        if model.mlm.is_none() {
            return Err(Error::format(
                dir,
                "this model has no masked-LM head (cls.predictions.*): it is a BertModel, not a BertForMaskedLM, and cannot fill masks",
            ));
        }
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::load_dir(dir)?;
        let tc = dir.join("tokenizer_config.json");
        let mask_token = if tc.exists() {
            let v: serde_json::Value = read_json(&tc)?;
            match v.get("mask_token") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Object(o)) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or("[MASK]")
                    .to_string(),
                _ => "[MASK]".to_string(),
            }
        } else {
            "[MASK]".to_string()
        };
        let mask_id = tokenizer.token_id(&mask_token).ok_or_else(|| {
            Error::format(
                &tok_path,
                format!("the vocabulary has no mask token {mask_token}"),
            )
        })?;
        Ok(FillMask {
            model,
            store,
            tokenizer,
            mask_token,
            mask_id,
        })
    }

    /// The `top_k` most likely tokens at each mask of `text`, in text order. Errors when the
    /// text has no mask or is longer than the model's positions.
    pub fn fill(&self, text: &str, top_k: usize) -> Result<Vec<Vec<Candidate>>> {
        if top_k == 0 {
            return Err(Error::Config("top-k must be at least 1".into()));
        }
        let ids = self.tokenizer.encode_special(text)?;
        let masks: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == self.mask_id).collect();
        if masks.is_empty() {
            return Err(Error::Data(format!(
                "the text has no {} token to fill: {text:?}",
                self.mask_token
            )));
        }
        let max = self.model.config.max_position_embeddings;
        if ids.len() > max {
            return Err(Error::Data(format!(
                "the text is {} tokens long; the model takes at most {max}",
                ids.len()
            )));
        }
        let device = self.model.device();
        let input = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
        let h = self.model.encode(&input, None, None)?.squeeze(0)?;
        let rows: Vec<u32> = masks.iter().map(|&i| i as u32).collect();
        let h = h.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
        let probs = crate::nn::ops::softmax(&self.model.mlm_logits(&h)?)?;
        let probs: Vec<Vec<f32>> = probs.to_vec2()?;
        let single = masks.len() == 1;
        let mut out = Vec::with_capacity(masks.len());
        for (&pos, p) in masks.iter().zip(&probs) {
            let mut order: Vec<u32> = (0..p.len() as u32).collect();
            let k = top_k.min(order.len());
            order.select_nth_unstable_by(k - 1, |&a, &b| p[b as usize].total_cmp(&p[a as usize]));
            order.truncate(k);
            order.sort_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
            let mut cands = Vec::with_capacity(k);
            for id in order {
                let mut filled = ids.clone();
                filled[pos] = id;
                cands.push(Candidate {
                    score: p[id as usize],
                    token: id,
                    token_str: self.tokenizer.decode(&[id])?,
                    sequence: self.tokenizer.decode_with(&filled, single)?,
                });
            }
            out.push(cands);
        }
        Ok(out)
    }
}
