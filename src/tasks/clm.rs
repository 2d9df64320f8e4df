//! Causal language modelling: windows of `train.context` tokens drawn at random from the
//! corpus's token stream, each token predicted from those before it. Pre-training a fresh
//! model of any causal family, or continuing a pretrained one (domain adaptation), whole, in
//! part, or through an adapter.

use super::text::{self, causal_start, Tokens};
use super::{Setup, TaskInfo};
use crate::data::corpus_files;
use crate::models::{self, CausalModel, Kind};
use crate::nn::ParamStore;
use crate::objective::CausalLm;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::train::task::{Batch, BatchLoss, DataSummary, Describe, Task};
use crate::train::Prepared;
use crate::Result;
use candle_core::Tensor;
use std::path::Path;

pub static TASK: TaskInfo = TaskInfo {
    objective: "clm",
    what: "causal language modelling",
    architectures: || super::families(|f| f.kind == Kind::Causal),
    adapters: true,
    check: |_| Ok(()),
    prepare,
};

/// A causal LM on a token stream.
pub struct Clm {
    pub model: CausalModel,
    pub tokenizer: Tokenizer,
    pub tokens: Tokens,
    batch_size: usize,
    context: usize,
}

fn prepare(s: &Setup) -> Result<Prepared> {
    let r = s.recipe;
    let files = corpus_files(&s.corpus)?;
    let start = causal_start(r, s.from.as_deref(), &files, s.device)?;
    let tokens = Tokens::build(r, &files, &start.tokenizer, s.out_dir)?;
    start.tokenizer.save(&s.out_dir.join("tokenizer.json"))?;
    text::check_fits(
        start.model.vocab_size(),
        start.model.max_positions(),
        &start.tokenizer,
        Some(r.train.context),
    )?;
    Ok(Prepared {
        task: Box::new(Clm {
            model: start.model,
            tokenizer: start.tokenizer,
            tokens,
            batch_size: r.train.batch_size,
            context: r.train.context,
        }),
        store: start.store,
        files: start.files,
    })
}

impl Task for Clm {
    fn model_type(&self) -> &str {
        self.model.model_type()
    }

    fn rebuild(&mut self, store: &mut ParamStore) -> Result<()> {
        self.model = CausalModel::new(&self.model.config(), store)?;
        Ok(())
    }

    fn uses_dropout(&self) -> bool {
        self.model.uses_dropout()
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
            accuracy: "accuracy",
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
        let (b, t) = (self.batch_size, self.context);
        let split = if batch.is_val() {
            self.tokens.val
        } else {
            self.tokens.train
        };
        let (x, y) = self.tokens.shard.sample_batch(split, b, t, rng);
        let device = self.model.device();
        let x = Tensor::from_vec(x, (b, t), device)?;
        let y = Tensor::from_vec(y, (b, t), device)?;
        // The fused head and loss, which computes its gradient as it goes, only when a
        // backward pass follows.
        let loss = if batch.is_train() {
            CausalLm::train_loss(&self.model, &x, &y, dropout)?
        } else {
            CausalLm::loss(&self.model, &x, &y, dropout)?
        };
        Ok(BatchLoss {
            loss,
            tokens: b * t,
            hits: None,
        })
    }

    fn save(&self, dir: &Path, store: &ParamStore) -> Result<()> {
        models::save_dir(dir, &self.model.config(), store)?;
        self.tokenizer.save(&dir.join("tokenizer.json"))
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(&self.tokenizer)
    }

    fn causal(&self) -> Option<&CausalModel> {
        Some(&self.model)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
