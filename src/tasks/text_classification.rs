//! Text classification: a pretrained encoder or decoder with a classification head (its own,
//! or a fresh one for the data's classes) on labelled texts, split by stratified k-fold
//! (`data.folds`, `data.fold`) or a seeded `data.val_fraction`; in epochs of a seeded
//! permutation; the accuracy over the whole validation set at each evaluation, and its
//! scores (accuracy, macro-F1, confusion matrix) at the end.

use super::{Setup, TaskInfo};
use crate::models::sequence_classifier::{self, Body, Pooling, SequenceClassifier};
use crate::nn::ParamStore;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::train::task::{Batch, BatchLoss, DataSummary, Describe, EpochOrder, Task};
use crate::train::{Prepared, Recipe};
use crate::{Error, Result};
use serde_json::json;
use std::path::Path;

pub static TASK: TaskInfo = TaskInfo {
    objective: "classify",
    what: "text classification",
    architectures: || super::families(|f| f.sequence_classification.is_some()),
    adapters: false,
    check,
    prepare,
};

fn check(r: &Recipe) -> Result<()> {
    if r.model.init.is_none() {
        return Err(Error::Config(
            "text classification fine-tunes a pretrained model: set model.init (or pass --from)"
                .into(),
        ));
    }
    if r.train.context == 0 {
        return Err(Error::Config(
            "train.context (the longest text in tokens) must be positive".into(),
        ));
    }
    if let Some(p) = &r.model.pooling {
        Pooling::parse(p)?;
    }
    Ok(())
}

/// A classifier on labelled texts (token ids and class index of each).
pub struct TextClassification {
    pub model: SequenceClassifier,
    tokenizer: Tokenizer,
    train: Vec<(Vec<u32>, u32)>,
    val: Vec<(Vec<u32>, u32)>,
    classes: Vec<String>,
    order: EpochOrder,
    recipe: Recipe,
}

fn prepare(s: &Setup) -> Result<Prepared> {
    let recipe = s.recipe;
    let from = s.from.as_deref().ok_or_else(|| {
        Error::Config(
            "text classification fine-tunes a pretrained model: set model.init or pass --from"
                .into(),
        )
    })?;
    if super::text::is_gguf(from) {
        return Err(Error::format(
            from,
            "a classifier starts from a model directory; convert the GGUF file first (ferroformer convert)",
        ));
    }
    let mut examples = vec![];
    for f in crate::data::corpus_files(&s.corpus)? {
        examples.extend(crate::data::labelled::read_labelled(
            &f,
            &recipe.data.encoding,
        )?);
    }
    let data_classes = crate::data::labelled::label_names(&examples);
    let pooling = recipe
        .model
        .pooling
        .as_deref()
        .map(Pooling::parse)
        .transpose()?;
    let (model, store) = sequence_classifier::load_dir(
        from,
        s.device,
        Some(&data_classes),
        pooling,
        recipe.train.seed,
    )?;
    let tokenizer = Tokenizer::load_dir(from)?;
    let classes = model.labels.clone();
    let encoded: Vec<(Vec<u32>, u32)> = examples
        .iter()
        .map(|e| {
            let label = classes
                .iter()
                .position(|c| *c == e.label)
                .expect("load_dir checked the labels") as u32;
            Ok((
                model.encode(&tokenizer, &e.text, recipe.train.context)?,
                label,
            ))
        })
        .collect::<Result<_>>()?;
    let d = &recipe.data;
    let (train_idx, val_idx) = if d.folds >= 2 {
        let labels: Vec<usize> = encoded.iter().map(|(_, l)| *l as usize).collect();
        let fold_of = crate::data::labelled::stratified_folds(&labels, d.folds, d.split_seed)?;
        let k = d.fold.ok_or_else(|| {
            Error::Config(format!(
                "data.folds is {}: name the held-out fold with data.fold",
                d.folds
            ))
        })?;
        (0..encoded.len()).partition(|&i| fold_of[i] != k)
    } else {
        crate::data::images::split_indices(encoded.len(), d.val_fraction, d.split_seed)
    };
    if train_idx.is_empty() {
        return Err(Error::Data("no training texts left after the split".into()));
    }
    super::text::write_split(s.out_dir, &json!({ "val": val_idx, "classes": classes }))?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| encoded[i].clone()).collect();
    tokenizer.save(&s.out_dir.join("tokenizer.json"))?;
    Ok(Prepared {
        task: Box::new(TextClassification {
            model,
            tokenizer,
            train: pick(&train_idx),
            val: pick(&val_idx),
            classes,
            order: EpochOrder::default(),
            recipe: recipe.clone(),
        }),
        store,
        files: vec![],
    })
}

impl Task for TextClassification {
    fn model_type(&self) -> &str {
        match &self.model.body {
            Body::Bert(b) => &b.config.model_type,
            Body::Causal(c) => c.model_type(),
        }
    }

    fn rebuild(&mut self, store: &mut ParamStore) -> Result<()> {
        self.model = self.model.rebuild(store)?;
        Ok(())
    }

    fn uses_dropout(&self) -> bool {
        self.model.uses_dropout()
    }

    fn data(&self) -> DataSummary {
        DataSummary {
            train: self.train.len(),
            val: self.val.len(),
            unit: "texts",
            classes: self.classes.len(),
            notes: vec![],
        }
    }

    fn describe(&self) -> Describe {
        Describe {
            perplexity: false,
            accuracy: "accuracy",
        }
    }

    fn has_validation(&self) -> bool {
        !self.val.is_empty()
    }

    fn batch_loss(
        &self,
        batch: Batch,
        rng: &mut Rng,
        dropout: Option<&mut Rng>,
    ) -> Result<BatchLoss> {
        let t = &self.recipe.train;
        let set = if batch.is_val() {
            &self.val
        } else {
            &self.train
        };
        let idx = self.order.batch(set.len(), batch, t, rng);
        let seqs: Vec<&[u32]> = idx.iter().map(|&i| set[i].0.as_slice()).collect();
        let labels: Vec<u32> = idx.iter().map(|&i| set[i].1).collect();
        let (loss, correct) = crate::infer::classify::text_loss(
            &self.model,
            &seqs,
            &labels,
            t.label_smoothing,
            dropout,
        )?;
        Ok(BatchLoss {
            loss,
            tokens: seqs.iter().map(|s| s.len()).sum(),
            hits: Some((t.batch_size, correct)),
        })
    }

    fn full_validation(&self) -> Result<Option<(f64, f64)>> {
        let all: Vec<usize> = (0..self.val.len()).collect();
        let (mut sum, mut correct) = (0f64, 0usize);
        for chunk in all.chunks(self.recipe.train.batch_size) {
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| self.val[i].0.as_slice()).collect();
            let labels: Vec<u32> = chunk.iter().map(|&i| self.val[i].1).collect();
            let (loss, c) =
                crate::infer::classify::text_loss(&self.model, &seqs, &labels, 0.0, None)?;
            sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            correct += c;
        }
        let n = all.len().max(1) as f64;
        Ok(Some((sum / n, correct as f64 / n)))
    }

    fn finish(&mut self, out_dir: &Path) -> Result<Option<serde_json::Value>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let s = crate::infer::classify::score_texts(
            &self.model,
            &self.val,
            self.recipe.train.batch_size,
        )?;
        super::write_scores(out_dir, &s).map(Some)
    }

    /// transformers' `*ForSequenceClassification` directory (a BERT's with its tokenizer
    /// config).
    fn save(&self, dir: &Path, store: &ParamStore) -> Result<()> {
        sequence_classifier::save_dir(dir, &self.model, store)?;
        if let Body::Bert(b) = &self.model.body {
            self.tokenizer.save_bert_config(
                &dir.join("tokenizer_config.json"),
                b.config.max_position_embeddings,
            )?;
        }
        self.tokenizer.save(&dir.join("tokenizer.json"))
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(&self.tokenizer)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
