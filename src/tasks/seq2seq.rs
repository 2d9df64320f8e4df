//! Sequence to sequence (grapheme to phoneme on a pronouncing dictionary): source/target
//! pairs split by word, batches of pairs (of similar lengths with `train.group_by_length`),
//! the label-smoothed cross-entropy of the target under teacher forcing, and at each
//! evaluation the word and phoneme error rates of greedy outputs on validation words.

use super::{Setup, TaskInfo};
use crate::data::lexicon::Part;
use crate::models::marian::{self, Marian, MarianConfig};
use crate::models::Kind;
use crate::nn::ParamStore;
use crate::objective::seq2seq::{grouped_loss_scale, pad_batch, pair_loss, sample, PairData};
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::train::task::{Batch, BatchLoss, DataSummary, Describe, Task};
use crate::train::{Prepared, Recipe};
use crate::Result;
use serde_json::json;
use std::path::Path;

pub static TASK: TaskInfo = TaskInfo {
    objective: "seq2seq",
    what: "sequence to sequence",
    architectures: || super::families(|f| f.kind == Kind::EncoderDecoder),
    adapters: false,
    check: |_| Ok(()),
    prepare,
};

/// An encoder-decoder model on source/target pairs.
pub struct Seq2Seq {
    pub model: Marian,
    pub source: Tokenizer,
    pub data: PairData,
    recipe: Recipe,
}

/// An encoder-decoder model of the recipe's sizes (`n_layer` layers on each side) with
/// separate source and target vocabularies, the output projection tied to the target
/// embeddings, Marian's ids (`<pad>` 0 also starts the decoder, `</s>` 1).
fn marian_config(recipe: &Recipe, source: &Tokenizer, target: &Tokenizer) -> MarianConfig {
    let m = &recipe.model;
    let ffn = m.intermediate_size.unwrap_or(4 * m.n_embd);
    MarianConfig {
        model_type: "marian".into(),
        vocab_size: source.vocab_size(),
        decoder_vocab_size: Some(target.vocab_size()),
        d_model: m.n_embd,
        encoder_layers: m.n_layer,
        decoder_layers: m.n_layer,
        encoder_attention_heads: m.n_head,
        decoder_attention_heads: m.n_head,
        encoder_ffn_dim: ffn,
        decoder_ffn_dim: ffn,
        max_position_embeddings: m.n_positions.unwrap_or(recipe.train.context),
        activation_function: m.activation_function.clone(),
        dropout: m.dropout,
        attention_dropout: m.dropout,
        activation_dropout: m.dropout,
        init_std: m.init_std.unwrap_or(0.02),
        scale_embedding: true,
        pad_token_id: 0,
        eos_token_id: 1,
        decoder_start_token_id: 0,
        share_encoder_decoder_embeddings: false,
        tie_word_embeddings: m.tie_word_embeddings,
        extra: serde_json::Map::new(),
    }
}

fn prepare(s: &Setup) -> Result<Prepared> {
    let r = s.recipe;
    let d = &r.data;
    let lex = d.lexicon(&s.corpus[0])?;
    let tokenizers = match &s.from {
        Some(dir) => Some((
            Tokenizer::load_dir(dir)?,
            Tokenizer::load(&dir.join("target_tokenizer.json"))?,
        )),
        None => None,
    };
    let max_len = r.model.n_positions.unwrap_or(r.train.context);
    let fractions = d.split_fractions();
    let (source, data) =
        PairData::from_lexicon(&lex, d.split_seed, fractions, tokenizers, max_len)?;
    // The words of each part, so other tools (bench/g2p_torch.py) use the same split.
    let part = |p| -> Vec<&str> {
        lex.split(d.split_seed, fractions, p)
            .iter()
            .map(|e| e.word.as_str())
            .collect()
    };
    super::text::write_split(
        s.out_dir,
        &json!({
            "train": part(Part::Train), "valid": part(Part::Valid), "test": part(Part::Test),
        }),
    )?;
    source.save(&s.out_dir.join("tokenizer.json"))?;
    let (mut model, store) = match &s.from {
        Some(dir) => marian::load_dir(dir, s.device)?,
        None => Marian::init(
            &marian_config(r, &source, &data.target_tokenizer),
            s.device,
            r.train.seed,
        )?,
    };
    // Which way the model writes is its own property, read by `translate` from its config.
    let key = crate::infer::translate::REVERSE_TARGET;
    if d.reverse_target {
        model.config.extra.insert(key.into(), json!(true));
    } else {
        model.config.extra.remove(key);
    }
    super::text::check_fits(model.config.vocab_size, usize::MAX, &source, None)?;
    Ok(Prepared {
        task: Box::new(Seq2Seq {
            model,
            source,
            data,
            recipe: r.clone(),
        }),
        store,
        files: vec![],
    })
}

impl Seq2Seq {
    /// Error rates of greedy outputs for the first `limit` validation inputs.
    pub fn error_rates(&self, limit: usize) -> Result<crate::objective::seq2seq::ErrorRates> {
        let p = &self.data;
        let model = &self.model;
        let refs = &p.valid_refs[..limit.min(p.valid_refs.len())];
        let eos = model.config.eos_token_id;
        let opts = crate::infer::translate::DecodeOptions {
            max_new_tokens: model.config.max_position_embeddings,
            ..Default::default()
        };
        let mut outputs = Vec::with_capacity(refs.len());
        for chunk in refs.chunks(self.recipe.train.batch_size.max(1) * 4) {
            let srcs: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.clone()).collect();
            let decoded = crate::infer::translate::decode_ids(&[model], &srcs, &opts)?;
            outputs.extend(decoded.into_iter().map(|(tokens, _)| tokens));
        }
        let references: Vec<Vec<Vec<u32>>> = refs
            .iter()
            .map(|(_, r)| {
                r.iter()
                    .map(|t| crate::infer::translate::strip_eos(t, eos).to_vec())
                    .collect()
            })
            .collect();
        Ok(crate::objective::seq2seq::error_rates(
            &outputs,
            &references,
        ))
    }
}

impl Task for Seq2Seq {
    fn model_type(&self) -> &str {
        &self.model.config.model_type
    }

    fn rebuild(&mut self, store: &mut ParamStore) -> Result<()> {
        self.model = Marian::new(&self.model.config, store)?;
        Ok(())
    }

    fn uses_dropout(&self) -> bool {
        let c = &self.model.config;
        c.dropout > 0.0 || c.attention_dropout > 0.0 || c.activation_dropout > 0.0
    }

    fn data(&self) -> DataSummary {
        DataSummary {
            train: self.data.train.len(),
            val: self.data.valid.len(),
            unit: "pairs",
            ..Default::default()
        }
    }

    fn describe(&self) -> Describe {
        Describe {
            perplexity: true,
            accuracy: "accuracy",
        }
    }

    fn has_validation(&self) -> bool {
        !self.data.valid.is_empty()
    }

    fn batch_loss(
        &self,
        batch: Batch,
        rng: &mut Rng,
        dropout: Option<&mut Rng>,
    ) -> Result<BatchLoss> {
        let p = &self.data;
        let t = &self.recipe.train;
        let pairs = if batch.is_val() { &p.valid } else { &p.train };
        let c = &self.model.config;
        let grouped = !batch.is_val() && t.group_by_length;
        let drawn = sample(pairs, t.batch_size, grouped, rng);
        let tokens = drawn.iter().map(|p| p.src.len() + p.tgt.len()).sum();
        let pb = pad_batch(
            &drawn,
            c.pad_token_id,
            c.decoder_start_token_id,
            self.model.device(),
        )?;
        let (mut loss, _) = pair_loss(&self.model, &pb, t.label_smoothing, dropout)?;
        if grouped {
            loss = (loss * grouped_loss_scale(&drawn, p.mean_target_len))?;
        }
        Ok(BatchLoss {
            loss,
            tokens,
            hits: None,
        })
    }

    fn eval_metrics(&self) -> Result<Option<(serde_json::Map<String, serde_json::Value>, String)>> {
        let t = &self.recipe.train;
        let r = self.error_rates(t.eval_iters * t.batch_size)?;
        let mut m = serde_json::Map::new();
        m.insert("val_wer".into(), json!(r.wer));
        m.insert("val_per".into(), json!(r.per));
        m.insert("val_words".into(), json!(r.n));
        let line = format!(
            "val WER {:.2}% PER {:.2}% ({} words, greedy)",
            100.0 * r.wer,
            100.0 * r.per,
            r.n
        );
        Ok(Some((m, line)))
    }

    /// A `MarianMTModel` directory with the source tokenizer and `target_tokenizer.json`.
    fn save(&self, dir: &Path, store: &ParamStore) -> Result<()> {
        marian::save_dir(dir, &self.model, store)?;
        self.data
            .target_tokenizer
            .save(&dir.join("target_tokenizer.json"))?;
        self.source.save(&dir.join("tokenizer.json"))
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(&self.source)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
