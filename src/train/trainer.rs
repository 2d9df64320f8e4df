//! The training loop: one optimizer step at a time, with evaluation, logging, checkpoints and
//! exact resume.

use crate::assets;
use crate::data::corpus::for_each_chunk;
use crate::data::{corpus_files, Split, TokenShard};
use crate::models::{self, ArchConfig, CausalModel, Gpt2Config, LlamaConfig};
use crate::nn::ParamStore;
use crate::objective::CausalLm;
use crate::rng::Rng;
use crate::tokenizer::{Tokenizer, EOT};
use crate::train::checkpoint::{self, Checkpoint, TrainerState};
use crate::train::metrics::MetricsLog;
use crate::train::plot::plot_losses;
use crate::train::{AdamW, AdamWConfig, GradAccumulator, LrSchedule, Recipe};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set by the Ctrl-C handler; the loop saves a checkpoint and stops at the end of the step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Loss and bookkeeping of one optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Mean loss over fixed evaluation batches.
#[derive(Debug, Clone, Copy)]
pub struct EvalStats {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
}

/// What the loop reports as it goes.
pub enum Event<'a> {
    Eval(&'a EvalStats),
    Checkpoint(&'a Path),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    Interrupted { step: usize, checkpoint: PathBuf },
}

/// A prepared training run.
pub struct Trainer {
    pub recipe: Recipe,
    pub model: CausalModel,
    pub store: ParamStore,
    pub tokenizer: Tokenizer,
    pub optimizer: AdamW,
    pub schedule: LrSchedule,
    pub data: TokenShard,
    pub train_split: Split,
    pub val_split: Split,
    pub state: TrainerState,
    pub out_dir: PathBuf,
    metrics: MetricsLog,
    device: Device,
}

fn char_tokenizer(files: &[PathBuf]) -> Result<Tokenizer> {
    let mut chars = std::collections::BTreeSet::new();
    for f in files {
        for_each_chunk(f, 1 << 20, |text| {
            chars.extend(text.chars());
            Ok(())
        })?;
    }
    let s: String = chars.into_iter().collect();
    if s.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(Error::Data(format!(
            "the corpus is empty: {}",
            names.join(", ")
        )));
    }
    Tokenizer::train_char([s.as_str()])
}

fn model_config(recipe: &Recipe, tokenizer: &Tokenizer) -> ArchConfig {
    let m = &recipe.model;
    let eot = tokenizer.token_id(EOT);
    if m.architecture == "llama" {
        // SwiGLU's usual width: 8/3 of the model width (same parameters as a 4x GELU MLP),
        // rounded up to a multiple of 64.
        let ffn = m
            .intermediate_size
            .unwrap_or((8 * m.n_embd / 3).div_ceil(64) * 64);
        let mut c = LlamaConfig::new(
            tokenizer.vocab_size(),
            m.n_embd,
            ffn,
            m.n_layer,
            m.n_head,
            m.n_kv_head.unwrap_or(m.n_head),
            m.n_positions.unwrap_or(recipe.train.context),
        );
        c.rope_theta = Some(m.rope_theta);
        c.tie_word_embeddings = m.tie_word_embeddings;
        c.rms_norm_eps = m.layer_norm_epsilon;
        c.extra.insert("bos_token_id".into(), json!(eot));
        c.extra.insert("eos_token_id".into(), json!(eot));
        return ArchConfig::Llama(c);
    }
    let mut c = Gpt2Config::new(
        tokenizer.vocab_size(),
        m.n_positions.unwrap_or(recipe.train.context),
        m.n_embd,
        m.n_layer,
        m.n_head,
    )
    .with_dropout(m.dropout);
    c.activation_function = m.activation_function.clone();
    c.tie_word_embeddings = m.tie_word_embeddings;
    c.position_encoding = m.position_encoding.clone();
    c.layer_norm_epsilon = m.layer_norm_epsilon;
    // Written even when absent (null): transformers otherwise assumes GPT-2's 50256.
    c.extra.insert("bos_token_id".into(), json!(eot));
    c.extra.insert("eos_token_id".into(), json!(eot));
    ArchConfig::Gpt2(c)
}

impl Trainer {
    /// Prepares a run: tokenizer, token shard, model and optimizer, either fresh or (with
    /// `resume`) from the newest checkpoint in the recipe's `out_dir`.
    pub fn prepare(recipe: Recipe, resume: bool, device: &Device) -> Result<Self> {
        let out_dir = PathBuf::from(&recipe.train.out_dir);
        let checkpoints = checkpoint::list_checkpoints(&out_dir)?;
        let resume_from = if resume {
            Some(checkpoints.last().cloned().ok_or_else(|| {
                Error::format(
                    &out_dir,
                    "nothing to resume: the run directory has no checkpoint-<step> folder",
                )
            })?)
        } else {
            if !checkpoints.is_empty() {
                return Err(Error::format(
                    &out_dir,
                    "this run directory already holds checkpoints; pass --resume to continue it, or set train.out_dir to a new directory",
                ));
            }
            None
        };
        std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;

        let corpus: Vec<PathBuf> = recipe
            .data
            .corpus
            .iter()
            .map(|c| assets::resolve(c))
            .collect::<Result<_>>()?;
        let files = corpus_files(&corpus)?;

        let tokenizer = if let Some((_, ck)) = &resume_from {
            Tokenizer::load(&ck.join("tokenizer.json"))?
        } else if let Some(init) = &recipe.model.init {
            Tokenizer::load(&assets::resolve(init)?.join("tokenizer.json"))?
        } else {
            match recipe.data.tokenizer.as_str() {
                "char" => char_tokenizer(&files)?,
                "bpe" => Tokenizer::train_bpe(&files, recipe.data.vocab_size, 2)?,
                path => Tokenizer::load(Path::new(path))?,
            }
        };
        tokenizer.save(&out_dir.join("tokenizer.json"))?;

        let data = TokenShard::build_or_open(&files, &tokenizer, &out_dir.join("data/tokens.bin"))?;
        let (train_split, val_split) =
            data.split(recipe.data.val_fraction, recipe.train.context)?;

        let (model, store) = match (&resume_from, &recipe.model.init) {
            (Some((_, ck)), _) => models::load_dir(ck, device)?,
            (None, Some(init)) => models::load_dir(&assets::resolve(init)?, device)?,
            (None, None) => CausalModel::init(
                &model_config(&recipe, &tokenizer),
                device,
                recipe.train.seed,
            )?,
        };
        if model.vocab_size() < tokenizer.vocab_size() {
            return Err(Error::Config(format!(
                "the model's vocab_size ({}) is smaller than the tokenizer's ({})",
                model.vocab_size(),
                tokenizer.vocab_size()
            )));
        }
        if model.max_positions() < recipe.train.context {
            return Err(Error::Config(format!(
                "train.context ({}) exceeds the model's maximum positions ({})",
                recipe.train.context,
                model.max_positions()
            )));
        }

        let t = &recipe.train;
        let mut optimizer = AdamW::new(AdamWConfig {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
        });
        let state = match &resume_from {
            Some((_, ck)) => {
                let st = checkpoint::load_state(ck)?;
                optimizer.load(&ck.join("optimizer.safetensors"), &store, st.step as u64)?;
                st
            }
            None => {
                let root = Rng::new(t.seed);
                TrainerState {
                    step: 0,
                    data_rng: root.fork(1),
                    dropout_rng: root.fork(2),
                    tokens_seen: 0,
                    best_val_loss: None,
                    elapsed_s: 0.0,
                }
            }
        };
        let schedule = LrSchedule {
            lr: t.lr,
            min_lr: t.min_lr,
            warmup_steps: t.warmup_steps,
            decay_steps: t.decay_steps.unwrap_or(t.steps),
        };
        crate::io::write_atomic(&out_dir.join("recipe.toml"), recipe.to_toml().as_bytes())?;
        let metrics = MetricsLog::open(
            &out_dir.join("metrics.jsonl"),
            resume_from.as_ref().map(|_| state.step),
        )?;
        Ok(Trainer {
            recipe,
            model,
            store,
            tokenizer,
            optimizer,
            schedule,
            data,
            train_split,
            val_split,
            state,
            out_dir,
            metrics,
            device: device.clone(),
        })
    }

    fn batch(&self, split: Split, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let (b, t) = (self.recipe.train.batch_size, self.recipe.train.context);
        let (x, y) = self.data.sample_batch(split, b, t, rng);
        Ok((
            Tensor::from_vec(x, (b, t), &self.device)?,
            Tensor::from_vec(y, (b, t), &self.device)?,
        ))
    }

    /// One optimizer step (over `grad_accum` micro-batches).
    pub fn train_step(&mut self) -> Result<StepStats> {
        let t = &self.recipe.train;
        let accum = t.grad_accum;
        let mut acc = GradAccumulator::default();
        let mut loss_sum = 0f64;
        let dropout = match &self.model {
            CausalModel::Gpt2(m) => {
                m.config.resid_pdrop > 0.0 || m.config.attn_pdrop > 0.0 || m.config.embd_pdrop > 0.0
            }
            CausalModel::Llama(_) => false,
        };
        for _ in 0..accum {
            let mut rng = self.state.data_rng;
            let (x, y) = self.batch(self.train_split, &mut rng)?;
            self.state.data_rng = rng;
            let drop_rng = if dropout {
                Some(&mut self.state.dropout_rng)
            } else {
                None
            };
            let loss = CausalLm::train_loss(&self.model, &x, &y, drop_rng)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(Error::Training(format!(
                    "loss is {value} at step {}; try a lower train.lr (now {})",
                    self.state.step + 1,
                    t.lr
                )));
            }
            loss_sum += value;
            let loss = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            acc.add(&self.store, &loss.backward()?)?;
        }
        let (scale, grad_norm) = if t.grad_clip > 0.0 {
            acc.clip_scale(t.grad_clip)?
        } else {
            (1.0, acc.global_norm()?)
        };
        let lr = self.schedule.at(self.state.step);
        self.optimizer.step(&self.store, acc.grads(), lr, scale)?;
        self.state.step += 1;
        self.state.tokens_seen += (t.batch_size * t.context * accum) as u64;
        Ok(StepStats {
            step: self.state.step,
            loss: loss_sum / accum as f64,
            lr,
            grad_norm,
        })
    }

    /// Mean loss over `eval_iters` batches of each split. The batches are the same at every
    /// evaluation (a fixed seed), so the numbers are comparable across steps.
    pub fn evaluate(&self) -> Result<EvalStats> {
        let t = &self.recipe.train;
        let mean = |split: Split, stream: u64| -> Result<f64> {
            let mut rng = Rng::new(t.seed).fork(stream);
            let mut sum = 0f64;
            for _ in 0..t.eval_iters {
                let (x, y) = self.batch(split, &mut rng)?;
                sum += CausalLm::loss(&self.model, &x, &y, None)?.to_scalar::<f32>()? as f64;
            }
            Ok(sum / t.eval_iters as f64)
        };
        let train_loss = mean(self.train_split, 100)?;
        let val_loss = if self.val_split.len() > t.context {
            Some(mean(self.val_split, 101)?)
        } else {
            None
        };
        Ok(EvalStats {
            step: self.state.step,
            train_loss,
            val_loss,
        })
    }

    /// Saves `checkpoint-<step>` and refreshes the run directory's model.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let recipe_toml = self.recipe.to_toml();
        checkpoint::save(
            &self.out_dir,
            &Checkpoint {
                config: &self.model.config(),
                store: &self.store,
                tokenizer: &self.tokenizer,
                optimizer: &self.optimizer,
                state: &self.state,
                recipe_toml: &recipe_toml,
            },
            self.recipe.train.keep_checkpoints,
        )
    }

    /// Trains until `train.steps` (or an interruption), evaluating, logging and checkpointing.
    /// `on_event` receives evaluations and checkpoints (the CLI prints them).
    pub fn run(&mut self, show_progress: bool, on_event: &mut dyn FnMut(Event)) -> Result<Outcome> {
        let t = self.recipe.train.clone();
        let bar = if show_progress {
            indicatif::ProgressBar::new(t.steps as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {msg}  ETA {eta}",
            )
            .expect("valid template"),
        );
        bar.set_position(self.state.step as u64);
        let ckpt_every = self.recipe.checkpoint_interval();
        let tokens_per_step = (t.batch_size * t.context * t.grad_accum) as f64;
        let mut window_start = Instant::now();
        let mut window_steps = 0usize;
        let mut last_eval: Option<EvalStats> = None;
        while self.state.step < t.steps {
            let started = Instant::now();
            let stats = self.train_step()?;
            self.state.elapsed_s += started.elapsed().as_secs_f64();
            window_steps += 1;
            bar.inc(1);
            let step = stats.step;
            if step % t.log_interval == 0 || step == t.steps {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let tps = tokens_per_step * window_steps as f64 / secs;
                bar.set_message(format!("loss {:.4}  {:.0} tok/s", stats.loss, tps));
                self.metrics.log(json!({
                    "step": step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                    "tokens_per_s": tps, "tokens_seen": self.state.tokens_seen, "elapsed_s": self.state.elapsed_s,
                }))?;
                window_start = Instant::now();
                window_steps = 0;
            }
            if step % t.eval_interval == 0 || step == t.steps {
                let ev = self.evaluate()?;
                if let Some(v) = ev.val_loss {
                    if self.state.best_val_loss.is_none_or(|b| v < b) {
                        self.state.best_val_loss = Some(v);
                    }
                }
                self.metrics.log(json!({
                    "step": step, "train_loss": ev.train_loss, "val_loss": ev.val_loss,
                    "val_perplexity": ev.val_loss.map(f64::exp), "elapsed_s": self.state.elapsed_s,
                }))?;
                plot_losses(self.metrics.path(), &self.out_dir.join("loss.png"))?;
                bar.suspend(|| on_event(Event::Eval(&ev)));
                last_eval = Some(ev);
                // Evaluation time is not training time: restart the throughput window.
                window_start = Instant::now();
                window_steps = 0;
            }
            let interrupted = INTERRUPTED.load(Ordering::SeqCst);
            if step % ckpt_every == 0 || step == t.steps || interrupted {
                let path = self.save_checkpoint()?;
                bar.suspend(|| on_event(Event::Checkpoint(&path)));
                if interrupted && step < t.steps {
                    bar.abandon();
                    // Handled: a later run in this process starts uninterrupted.
                    INTERRUPTED.store(false, Ordering::SeqCst);
                    return Ok(Outcome::Interrupted {
                        step,
                        checkpoint: path,
                    });
                }
            }
        }
        bar.finish_and_clear();
        if last_eval.is_none() {
            plot_losses(self.metrics.path(), &self.out_dir.join("loss.png"))?;
        }
        Ok(Outcome::Finished)
    }
}
