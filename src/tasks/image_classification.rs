//! Image classification with a Vision Transformer: the training images less a seeded
//! `data.val_fraction` held out, in epochs of a seeded permutation, augmented; the
//! (label-smoothed) cross-entropy of the class logits; the accuracy over the whole validation
//! set at each evaluation and its confusion matrix at the end. A fresh ViT of the recipe's
//! sizes (its preprocessing normalising each channel with the training images' mean and
//! deviation), or a pretrained one with its own preprocessing.

use super::{Setup, TaskInfo};
use crate::data::images::{self, ImageSet, ImageSplit, Preprocessor};
use crate::models::vit::{self, Vit, VitConfig};
use crate::models::Kind;
use crate::nn::ParamStore;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::train::task::{Batch, BatchLoss, DataSummary, Describe, EpochOrder, Task};
use crate::train::{Prepared, Recipe};
use crate::{Error, Result};
use candle_core::Tensor;
use serde_json::json;
use std::path::Path;

pub static TASK: TaskInfo = TaskInfo {
    objective: "classify",
    what: "image classification",
    architectures: || super::families(|f| f.kind == Kind::ImageClassifier),
    adapters: false,
    check,
    prepare,
};

fn check(r: &Recipe) -> Result<()> {
    if r.model.patch_size == Some(0) {
        return Err(Error::Config("model.patch_size must be positive".into()));
    }
    if !(0.0..=1.0).contains(&r.augment.flip) {
        return Err(Error::Config(format!(
            "augment.flip is a probability, not {}",
            r.augment.flip
        )));
    }
    Ok(())
}

/// A ViT on labelled images.
pub struct ImageClassification {
    pub model: Vit,
    pub preprocessor: Preprocessor,
    train: ImageSet,
    val: ImageSet,
    order: EpochOrder,
    recipe: Recipe,
}

fn prepare(s: &Setup) -> Result<Prepared> {
    let recipe = s.recipe;
    let root = &s.corpus[0];
    let d = &recipe.data;
    let loaded = match &s.from {
        Some(dir) => {
            let (model, store) = vit::load_dir(dir, s.device)?;
            let pre = Preprocessor::load(
                &dir.join("preprocessor_config.json"),
                model.config.num_channels,
            )?;
            Some((model, store, pre))
        }
        None => None,
    };
    let channels = loaded.as_ref().map(|(m, _, _)| m.config.num_channels);
    let all = images::read_dataset(root, ImageSplit::Train, channels, &d.labels)?;
    let (train, val) = all.split_off(d.val_fraction, d.split_seed);
    // The held-out images' indices, so other tools (bench/vit_torch.py) use the same split.
    let (_, held) = images::split_indices(all.len(), d.val_fraction, d.split_seed);
    super::text::write_split(s.out_dir, &json!({ "val": held }))?;
    if train.is_empty() {
        return Err(Error::format(
            root,
            format!(
                "no training images ({} read, data.val_fraction {})",
                all.len(),
                d.val_fraction
            ),
        ));
    }
    let (model, store, preprocessor) = match loaded {
        Some((model, store, pre)) => {
            let n = model.config.labels()?.len();
            if train.classes.len() > n {
                return Err(Error::Config(format!(
                    "the data has {} classes, the model {n}",
                    train.classes.len()
                )));
            }
            (model, store, pre)
        }
        None => fresh(recipe, root, &train, s.device)?,
    };
    Ok(Prepared {
        task: Box::new(ImageClassification {
            model,
            preprocessor,
            train,
            val,
            order: EpochOrder::default(),
            recipe: recipe.clone(),
        }),
        store,
        files: vec![],
    })
}

/// A fresh ViT of the recipe's sizes for the training images.
fn fresh(
    recipe: &Recipe,
    root: &Path,
    train: &ImageSet,
    device: &candle_core::Device,
) -> Result<(Vit, ParamStore, Preprocessor)> {
    let m = &recipe.model;
    if train.height != train.width {
        return Err(Error::format(
            root,
            format!(
                "a ViT takes square images; these are {}x{}",
                train.width, train.height
            ),
        ));
    }
    let patch = m
        .patch_size
        .ok_or_else(|| Error::Config("model.patch_size is needed to build a ViT".into()))?;
    if !train.height.is_multiple_of(patch) {
        return Err(Error::Config(format!(
            "model.patch_size {patch} does not divide the {}-pixel images",
            train.height
        )));
    }
    let mut config = VitConfig {
        model_type: "vit".into(),
        hidden_size: m.n_embd,
        num_hidden_layers: m.n_layer,
        num_attention_heads: m.n_head,
        intermediate_size: m.intermediate_size.unwrap_or(4 * m.n_embd),
        hidden_act: m.activation_function.clone(),
        hidden_dropout_prob: m.dropout,
        attention_probs_dropout_prob: m.dropout,
        initializer_range: m.init_std.unwrap_or(0.02),
        layer_norm_eps: m.layer_norm_epsilon,
        image_size: train.height,
        patch_size: patch,
        num_channels: train.channels,
        qkv_bias: true,
        id2label: Default::default(),
        label2id: Default::default(),
        extra: Default::default(),
    };
    config.set_labels(&train.classes);
    let (model, store) = Vit::init(&config, device, recipe.train.seed)?;
    let (mean, std) = train.channel_stats();
    let pre = Preprocessor::new(train.height, train.width, mean, std);
    Ok((model, store, pre))
}

impl ImageClassification {
    /// Cross-entropy (label-smoothed by `smoothing`) of the class logits for images `x`, and
    /// how many it classifies right.
    fn loss(
        &self,
        x: &Tensor,
        labels: &[u32],
        smoothing: f64,
        dropout: Option<&mut Rng>,
    ) -> Result<(Tensor, usize)> {
        let model = &self.model;
        let logits = model.logits(&model.forward(x, false, dropout)?)?;
        let y = Tensor::new(labels, x.device())?;
        let loss = crate::objective::seq2seq::smoothed_cross_entropy(&logits, &y, smoothing)?;
        let predicted = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
        Ok((loss, correct))
    }
}

impl Task for ImageClassification {
    fn model_type(&self) -> &str {
        &self.model.config.model_type
    }

    fn rebuild(&mut self, store: &mut ParamStore) -> Result<()> {
        let classifier = self.model.classifier.is_some();
        self.model = Vit::new(&self.model.config, store, classifier)?;
        Ok(())
    }

    fn uses_dropout(&self) -> bool {
        let c = &self.model.config;
        c.hidden_dropout_prob > 0.0 || c.attention_probs_dropout_prob > 0.0
    }

    fn data(&self) -> DataSummary {
        DataSummary {
            train: self.train.len(),
            val: self.val.len(),
            unit: "images",
            classes: self.train.classes.len(),
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
        let aug = batch
            .is_train()
            .then_some((&self.recipe.augment, &mut *rng));
        let (x, labels) =
            crate::infer::classify::batch(set, &idx, &self.preprocessor, aug, self.model.device())?;
        let (loss, correct) = self.loss(&x, &labels, t.label_smoothing, dropout)?;
        Ok(BatchLoss {
            loss,
            tokens: t.batch_size,
            hits: Some((t.batch_size, correct)),
        })
    }

    fn full_validation(&self) -> Result<Option<(f64, f64)>> {
        let all: Vec<usize> = (0..self.val.len()).collect();
        let (mut sum, mut correct) = (0f64, 0usize);
        for chunk in all.chunks(self.recipe.train.batch_size) {
            let (x, labels) = crate::infer::classify::batch(
                &self.val,
                chunk,
                &self.preprocessor,
                None,
                self.model.device(),
            )?;
            let (loss, c) = self.loss(&x, &labels, 0.0, None)?;
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
        let s = crate::infer::classify::score(
            &self.model,
            &self.preprocessor,
            &self.val,
            self.recipe.train.batch_size,
        )?;
        super::write_scores(out_dir, &s).map(Some)
    }

    /// A `ViTForImageClassification` directory with its `preprocessor_config.json`.
    fn save(&self, dir: &Path, store: &ParamStore) -> Result<()> {
        vit::save_dir(dir, &self.model, store)?;
        self.preprocessor
            .save(&dir.join("preprocessor_config.json"))
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        None
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
