//! Training throughput of a causal LM on random tokens, through the engine every run uses
//! (frozen parameters, PEFT adapters, accumulation, clipping, the schedule, AdamW), so `bench
//! train` measures what `pretrain` and `finetune` do, less the reading of data. Not a recipe
//! objective: the bench builds it directly.

use crate::models::CausalModel;
use crate::nn::ParamStore;
use crate::objective::CausalLm;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::train::metrics::{peak_rss, reset_peak_rss};
use crate::train::task::{Batch, BatchLoss, DataSummary, Describe, Task};
use crate::train::{Prepared, Recipe, RunStart, Trainer};
use crate::{Error, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a measurement found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    /// Trained tokens per second (batch x context x grad_accum over the median step time).
    pub tokens_per_s: f64,
    pub step_ms_median: f64,
    /// Forward passes alone (no gradient), tokens per second.
    pub forward_tokens_per_s: f64,
    /// Peak resident memory of the training steps (MiB; loading excluded, as the engine logs
    /// it in `metrics.jsonl`).
    pub peak_rss_mb: Option<f64>,
    /// Every step's time, in order (warm-up included).
    pub step_ms: Vec<f64>,
    pub params: usize,
    pub trainable_params: usize,
    /// The loss of the last step (random tokens: about ln(vocab)).
    pub last_loss: f64,
}

/// The same random batch every step, as `bench/finetune_torch.py` draws one.
struct RandomTokens {
    model: CausalModel,
    x: Tensor,
    y: Tensor,
}

impl Task for RandomTokens {
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
            unit: "random tokens",
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
        false
    }

    fn batch_loss(
        &self,
        batch: Batch,
        _: &mut Rng,
        dropout: Option<&mut Rng>,
    ) -> Result<BatchLoss> {
        let loss = if batch.is_train() {
            CausalLm::train_loss(&self.model, &self.x, &self.y, dropout)?
        } else {
            CausalLm::loss(&self.model, &self.x, &self.y, dropout)?
        };
        Ok(BatchLoss {
            loss,
            tokens: self.x.elem_count(),
            hits: None,
        })
    }

    fn save(&self, _: &Path, _: &ParamStore) -> Result<()> {
        Ok(())
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        None
    }

    fn causal(&self) -> Option<&CausalModel> {
        Some(&self.model)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A scratch run directory, removed when dropped (the engine writes its recipe and metrics).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Trains `model` on one random batch of `train.batch_size` x `train.context` tokens for
/// `warmup` untimed and `steps` timed optimizer steps, as `recipe` configures the run
/// (`[peft]`, `train.freeze`, `train.grad_accum`, the optimizer), then times as many forward
/// passes. The run directory is a temporary one; `train.out_dir` is ignored.
pub fn measure(
    mut recipe: Recipe,
    model: CausalModel,
    store: ParamStore,
    warmup: usize,
    steps: usize,
) -> Result<Throughput> {
    if steps == 0 {
        return Err(Error::Config(
            "the number of timed steps must be positive".into(),
        ));
    }
    let (b, t) = (recipe.train.batch_size, recipe.train.context);
    if t > model.max_positions() {
        return Err(Error::Config(format!(
            "train.context {t} exceeds the model's {} positions",
            model.max_positions()
        )));
    }
    let vocab = model.vocab_size() as u64;
    let mut rng = Rng::new(recipe.train.seed);
    let mut draw = || -> Result<Tensor> {
        let v: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        Ok(Tensor::from_vec(v, (b, t), model.device())?)
    };
    let (x, y) = (draw()?, draw()?);
    let dir = std::env::temp_dir().join(format!(
        "ferroformer-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let scratch = Scratch(dir);
    recipe.train.out_dir = scratch.0.display().to_string();
    recipe.train.steps = warmup + steps;
    let start = RunStart {
        out_dir: scratch.0.clone(),
        resume_from: None,
    };
    let prepared = Prepared {
        task: Box::new(RandomTokens { model, x, y }),
        store,
        files: vec![],
    };
    let mut trainer = Trainer::new(recipe, start, prepared)?;
    let count = trainer.store.trainable_count();
    let mut step_ms = vec![];
    let mut last_loss = f64::NAN;
    reset_peak_rss();
    for _ in 0..warmup + steps {
        let t0 = Instant::now();
        let s = trainer.train_step()?;
        step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        last_loss = s.loss;
    }
    let peak = peak_rss().map(|p| p as f64 / (1 << 20) as f64);
    let task = trainer
        .task
        .as_any()
        .downcast_ref::<RandomTokens>()
        .expect("the task built above");
    let mut fwd = vec![];
    for _ in 0..warmup + steps {
        let t0 = Instant::now();
        let logits = task.model.forward(&task.x, None, None)?;
        logits.sum_all()?.to_scalar::<f32>()?;
        fwd.push(t0.elapsed().as_secs_f64());
    }
    let tokens = (b * t * trainer.recipe.train.grad_accum) as f64;
    let step = median(&step_ms[warmup..]);
    Ok(Throughput {
        tokens_per_s: tokens / (step / 1e3),
        step_ms_median: step,
        forward_tokens_per_s: (b * t) as f64 / median(&fwd[warmup..]),
        peak_rss_mb: peak,
        step_ms,
        params: count.all_params,
        trainable_params: count.trainable_params,
        last_loss,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
