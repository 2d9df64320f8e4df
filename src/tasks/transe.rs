//! Knowledge-graph embeddings (TransE, Bordes et al., 2013) from a split directory of
//! triples: batches of true triples each with a corrupted one (head or tail replaced), the
//! margin ranking loss, and the fraction of pairs ranked right (see
//! [`crate::semnet::transe`]).

use super::{Setup, TaskInfo};
use crate::nn::ParamStore;
use crate::rng::Rng;
use crate::semnet::kg::{KgSplit, Triple};
use crate::semnet::transe::{TransE, TransEConfig};
use crate::text::tokenizer::Tokenizer;
use crate::train::task::{Batch, BatchLoss, DataSummary, Describe, EpochOrder, Task};
use crate::train::{Prepared, Recipe};
use crate::Result;
use std::collections::HashSet;
use std::path::Path;

pub static TASK: TaskInfo = TaskInfo {
    objective: "transe",
    what: "knowledge-graph embedding",
    architectures: || vec!["transe"],
    adapters: false,
    check: |_| Ok(()),
    prepare,
};

/// TransE on a triple split.
pub struct TransETask {
    pub model: TransE,
    pub split: KgSplit,
    /// Every known triple (filtered ranking leaves them out).
    pub known: HashSet<Triple>,
    order: EpochOrder,
    recipe: Recipe,
}

fn prepare(s: &Setup) -> Result<Prepared> {
    let recipe = s.recipe;
    let split = KgSplit::load(&s.corpus[0])?;
    let config = TransEConfig {
        model_type: "transe".into(),
        n_entities: split.entities.len(),
        n_relations: split.relations.len(),
        dim: recipe.model.n_embd,
        norm: recipe.transe.norm,
        margin: recipe.transe.margin,
    };
    let mut store = match &s.from {
        Some(dir) => {
            let path = dir.join("model.safetensors");
            let tensors = crate::io::safetensors::load(&path, s.device)?;
            let mut st = ParamStore::from_tensors(tensors, s.device, Some(&path))?;
            st.allow_init(recipe.train.seed);
            st
        }
        None => ParamStore::new_init(s.device, recipe.train.seed),
    };
    let model = TransE::new(&config, &mut store)?;
    let known = split.known();
    Ok(Prepared {
        task: Box::new(TransETask {
            model,
            split,
            known,
            order: EpochOrder::default(),
            recipe: recipe.clone(),
        }),
        store,
        files: vec![],
    })
}

impl Task for TransETask {
    fn model_type(&self) -> &str {
        &self.model.config.model_type
    }

    fn rebuild(&mut self, store: &mut ParamStore) -> Result<()> {
        self.model = TransE::new(&self.model.config, store)?;
        Ok(())
    }

    fn uses_dropout(&self) -> bool {
        false
    }

    fn no_decay(&self) -> &'static [&'static str] {
        crate::semnet::transe::NO_DECAY
    }

    fn data(&self) -> DataSummary {
        DataSummary {
            train: self.split.train.len(),
            val: self.split.valid.len(),
            unit: "triples",
            ..Default::default()
        }
    }

    fn describe(&self) -> Describe {
        Describe {
            perplexity: false,
            accuracy: "pairwise accuracy (true triple closer than its corruption)",
        }
    }

    fn has_validation(&self) -> bool {
        !self.split.valid.is_empty()
    }

    fn batch_loss(
        &self,
        batch: Batch,
        rng: &mut Rng,
        _dropout: Option<&mut Rng>,
    ) -> Result<BatchLoss> {
        let t = &self.recipe.train;
        let set = if batch.is_val() {
            &self.split.valid
        } else {
            &self.split.train
        };
        let idx = self.order.batch(set.len(), batch, t, rng);
        let pos: Vec<Triple> = idx.iter().map(|&i| set[i]).collect();
        let neg = TransE::corrupt(&pos, self.model.config.n_entities, rng);
        let l = self.model.margin_loss(&pos, &neg)?;
        Ok(BatchLoss {
            loss: l.loss,
            tokens: t.batch_size,
            hits: Some((t.batch_size, l.correct)),
        })
    }

    fn save(&self, dir: &Path, store: &ParamStore) -> Result<()> {
        self.model.save_dir(dir, store, None)
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        None
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
