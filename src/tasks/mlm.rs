//! Masked language modelling (BERT's pre-training): windows of the token stream with 15% of
//! the tokens chosen, most of them masked (see [`crate::objective::mlm`]); the loss and the
//! accuracy over the chosen positions. A fresh BERT of the recipe's sizes on a WordPiece
//! vocabulary, or a pretrained encoder (its MLM head initialised if it has none).

use super::text::{self, Tokens};
use super::{Setup, TaskInfo};
use crate::data::corpus_files;
use crate::models::bert::{self, Bert, BertConfig, BertHeads};
use crate::models::Kind;
use crate::nn::ParamStore;
use crate::objective::mlm::MaskedLm;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::train::task::{Batch, BatchLoss, DataSummary, Describe, Task};
use crate::train::{Prepared, Recipe};
use crate::Result;
use serde_json::json;
use std::path::Path;

pub static TASK: TaskInfo = TaskInfo {
    objective: "mlm",
    what: "masked language modelling",
    architectures: || super::families(|f| f.kind == Kind::Encoder),
    adapters: false,
    check: |_| Ok(()),
    prepare,
};

/// A BERT with its masked-LM head on a token stream.
pub struct Mlm {
    pub model: Bert,
    objective: MaskedLm,
    tokenizer: Tokenizer,
    tokens: Tokens,
    batch_size: usize,
    context: usize,
}

/// A BERT of the recipe's sizes, for `tokenizer`'s vocabulary.
fn bert_config(recipe: &Recipe, tokenizer: &Tokenizer) -> BertConfig {
    let m = &recipe.model;
    let mut extra = serde_json::Map::new();
    if let Some(pad) = tokenizer.token_id("[PAD]") {
        extra.insert("pad_token_id".into(), json!(pad));
    }
    BertConfig {
        model_type: "bert".into(),
        vocab_size: tokenizer.vocab_size(),
        hidden_size: m.n_embd,
        num_hidden_layers: m.n_layer,
        num_attention_heads: m.n_head,
        intermediate_size: m.intermediate_size.unwrap_or(4 * m.n_embd),
        hidden_act: m.activation_function.clone(),
        hidden_dropout_prob: m.dropout,
        attention_probs_dropout_prob: m.dropout,
        max_position_embeddings: m.n_positions.unwrap_or(recipe.train.context),
        type_vocab_size: 2,
        initializer_range: m.init_std.unwrap_or(0.02),
        layer_norm_eps: m.layer_norm_epsilon,
        position_embedding_type: "absolute".into(),
        extra,
    }
}

fn prepare(s: &Setup) -> Result<Prepared> {
    let r = s.recipe;
    let files = corpus_files(&s.corpus)?;
    let tokenizer = match &s.from {
        Some(dir) => Tokenizer::load_dir(dir)?,
        None => text::corpus_tokenizer(r, &files)?,
    };
    let tokens = Tokens::build(r, &files, &tokenizer, s.out_dir)?;
    tokenizer.save(&s.out_dir.join("tokenizer.json"))?;
    let objective = MaskedLm::new(&tokenizer, r.mlm)?;
    let (model, store) = match &s.from {
        Some(dir) => bert::load_dir_for_mlm(dir, s.device, r.train.seed)?,
        None => {
            let heads = BertHeads {
                pooler: false,
                mlm: true,
            };
            Bert::init(&bert_config(r, &tokenizer), heads, s.device, r.train.seed)?
        }
    };
    text::check_fits(
        model.config.vocab_size,
        model.config.max_position_embeddings,
        &tokenizer,
        Some(r.train.context),
    )?;
    Ok(Prepared {
        task: Box::new(Mlm {
            model,
            objective,
            tokenizer,
            tokens,
            batch_size: r.train.batch_size,
            context: r.train.context,
        }),
        store,
        files: vec![],
    })
}

impl Task for Mlm {
    fn model_type(&self) -> &str {
        &self.model.config.model_type
    }

    fn rebuild(&mut self, store: &mut ParamStore) -> Result<()> {
        let heads = BertHeads {
            pooler: self.model.pooler.is_some(),
            mlm: self.model.mlm.is_some(),
        };
        self.model = Bert::new(&self.model.config, store, heads)?;
        Ok(())
    }

    fn uses_dropout(&self) -> bool {
        let c = &self.model.config;
        c.hidden_dropout_prob > 0.0 || c.attention_probs_dropout_prob > 0.0
    }

    fn data(&self) -> DataSummary {
        DataSummary {
            train: self.tokens.train.len(),
            val: self.tokens.val.len(),
            unit: "tokens",
            ..Default::default()
        }
    }

    fn describe(&self) -> Describe {
        Describe {
            perplexity: true,
            accuracy: "masked-token accuracy",
        }
    }

    fn has_validation(&self) -> bool {
        self.tokens.has_validation(self.context)
    }

    fn batch_loss(
        &self,
        batch: Batch,
        rng: &mut Rng,
        dropout: Option<&mut Rng>,
    ) -> Result<BatchLoss> {
        let split = if batch.is_val() {
            self.tokens.val
        } else {
            self.tokens.train
        };
        let (b, t) = (self.batch_size, self.context);
        let mb = self
            .objective
            .batch(&self.tokens.shard, split, b, t, rng, self.model.device())?;
        let l = self.objective.loss(&self.model, &mb, dropout)?;
        Ok(BatchLoss {
            loss: l.loss,
            tokens: b * t,
            hits: Some((l.count, l.correct)),
        })
    }

    /// A `BertForMaskedLM` directory, with the tokenizer config naming `[MASK]` and the
    /// other special tokens.
    fn save(&self, dir: &Path, store: &ParamStore) -> Result<()> {
        bert::save_dir(dir, &self.model, store)?;
        self.tokenizer.save_bert_config(
            &dir.join("tokenizer_config.json"),
            self.model.config.max_position_embeddings,
        )?;
        self.tokenizer.save(&dir.join("tokenizer.json"))
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(&self.tokenizer)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
