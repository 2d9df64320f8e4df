//! What the engine trains: a [`Task`] owns its model, its data and how a batch of that data
//! becomes a loss (burn's `TrainStep`/`ValidStep` split); the engine ([`super::Trainer`]) owns
//! the loop and knows no task by name. The tasks themselves (`crate::tasks`) sit above the
//! engine and the inference pipelines their evaluations use.

use crate::models::CausalModel;
use crate::nn::ParamStore;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::Result;
use candle_core::Tensor;
use std::path::Path;
use std::sync::Mutex;

/// Which batch the engine asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Batch {
    /// Micro-batch `micro` of optimizer step `step` (0-based, the step being taken).
    Train { step: usize, micro: usize },
    /// A validation batch (a fixed stream, so evaluations compare across steps).
    Val,
    /// A batch of training data for the training-loss estimate (no augmentation).
    TrainEval,
}

impl Batch {
    pub fn is_val(self) -> bool {
        self == Batch::Val
    }

    /// A training step's batch (dropout, augmentation, epochs).
    pub fn is_train(self) -> bool {
        matches!(self, Batch::Train { .. })
    }
}

/// One batch's loss, the tokens (or examples) it held, and for tasks that predict classes or
/// masked tokens the predictions scored and those right.
pub struct BatchLoss {
    pub loss: Tensor,
    pub tokens: usize,
    pub hits: Option<(usize, usize)>,
}

/// What a task trains on, for the user.
#[derive(Debug, Clone, Default)]
pub struct DataSummary {
    pub train: usize,
    pub val: usize,
    /// `tokens`, `pairs`, `images`, ...
    pub unit: &'static str,
    /// Classification: the number of classes (0 otherwise).
    pub classes: usize,
    /// What preparing the data found (skipped records, truncations).
    pub notes: Vec<String>,
}

/// How evaluations of a task read.
#[derive(Debug, Clone, Copy)]
pub struct Describe {
    /// The loss is a per-token negative log-likelihood (its exponential a perplexity).
    pub perplexity: bool,
    /// What the accuracy counts (`masked-token accuracy`, `accuracy`, ...).
    pub accuracy: &'static str,
}

/// A training task.
pub trait Task: Send {
    /// transformers' `model_type` of the trained model (PEFT's default targets come from it).
    fn model_type(&self) -> &str;
    /// Builds the model again from `store` (after freezing, or adding adapters).
    fn rebuild(&mut self, store: &mut ParamStore) -> Result<()>;
    /// Whether training draws dropout masks.
    fn uses_dropout(&self) -> bool;
    /// Parameter-name fragments exempt from weight decay besides the model families' own.
    fn no_decay(&self) -> &'static [&'static str] {
        &[]
    }
    fn data(&self) -> DataSummary;
    fn describe(&self) -> Describe;
    fn has_validation(&self) -> bool;
    /// The loss of one batch; `dropout` enables dropout.
    fn batch_loss(
        &self,
        batch: Batch,
        rng: &mut Rng,
        dropout: Option<&mut Rng>,
    ) -> Result<BatchLoss>;
    /// Mean loss and accuracy over the whole validation set, for tasks that score it whole
    /// (classification); `None` lets the engine average `eval_iters` batches.
    fn full_validation(&self) -> Result<Option<(f64, f64)>> {
        Ok(None)
    }
    /// Metrics beyond loss and accuracy (sequence-to-sequence: error rates of greedy
    /// outputs), logged with each evaluation, and their line for people.
    fn eval_metrics(&self) -> Result<Option<(serde_json::Map<String, serde_json::Value>, String)>> {
        Ok(None)
    }
    /// At the end of training: final scores (classification: accuracy, macro-F1 and the
    /// confusion matrix, also written into `out_dir`).
    fn finish(&mut self, _out_dir: &Path) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }
    /// Writes the model directory: config, weights, tokenizer and what else the task's
    /// models need to load (image preprocessing, a target vocabulary, ...).
    fn save(&self, dir: &Path, store: &ParamStore) -> Result<()>;
    /// The text tokenizer (none for images and triples).
    fn tokenizer(&self) -> Option<&Tokenizer>;
    /// The causal LM, for sampling after training.
    fn causal(&self) -> Option<&CausalModel> {
        None
    }
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Examples in epochs: each epoch a fresh permutation seeded by the seed and the epoch number
/// (so resuming at a step reproduces them), the current one kept between batches.
#[derive(Debug, Default)]
pub struct EpochOrder(Mutex<Option<(usize, Vec<usize>)>>);

impl EpochOrder {
    /// The `b` example indices (of `n`) for samples `first..first + b` of the run.
    pub fn indices(&self, n: usize, first: usize, b: usize, seed: u64) -> Vec<usize> {
        let mut perm = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (first..first + b)
            .map(|k| {
                let epoch = k / n;
                if perm
                    .as_ref()
                    .is_none_or(|(e, p)| *e != epoch || p.len() != n)
                {
                    let mut p: Vec<usize> = (0..n).collect();
                    Rng::new(seed).fork(1000 + epoch as u64).shuffle(&mut p);
                    *perm = Some((epoch, p));
                }
                perm.as_ref().expect("set above").1[k % n]
            })
            .collect()
    }

    /// Classification-style batches: a training step's `batch_size` examples are the next
    /// ones of the epoch's permutation (`micro` of the step's `grad_accum`); evaluation
    /// batches are drawn at random from `rng`.
    pub fn batch(
        &self,
        n: usize,
        batch: Batch,
        t: &super::recipe::TrainConfig,
        rng: &mut Rng,
    ) -> Vec<usize> {
        let b = t.batch_size;
        match batch {
            Batch::Train { step, micro } => {
                self.indices(n, (step * t.grad_accum + micro) * b, b, t.seed)
            }
            Batch::Val | Batch::TrainEval => (0..b).map(|_| rng.below(n as u64) as usize).collect(),
        }
    }
}
