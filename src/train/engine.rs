//! The training engine: one optimizer step at a time (accumulation, clipping, the learning-rate
//! schedule), evaluation, logging, checkpoints and exact resume, for any [`Task`]. It knows no
//! task by name: what a batch is and what its loss means are the task's.

use crate::nn::kernels::bf16::Precision;
use crate::nn::ParamStore;
use crate::plot::plot_losses;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::train::checkpoint::{self, Checkpoint, TrainerState};
use crate::train::metrics::{peak_rss, reset_peak_rss, MetricsLog};
use crate::train::task::{Batch, BatchLoss, Task};
use crate::train::{AdamW, AdamWConfig, GradAccumulator, LrSchedule, Recipe};
use crate::{Error, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Set by the Ctrl-C handler; the loop saves a checkpoint and stops at the end of the step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Loss and bookkeeping of one optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub step: usize,
    /// Tokens the step trained on (padding excluded).
    pub tokens: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Mean loss over fixed evaluation batches (for the masked LM, over the masked positions),
/// accuracies where the task predicts something countable, and the task's own metrics.
#[derive(Debug, Clone)]
pub struct EvalStats {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// The task's metrics (logged as they are) and their line for people.
    pub extra: Option<(serde_json::Map<String, serde_json::Value>, String)>,
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

/// Files written into every checkpoint as they are (a causal LM's tokenizer_config.json with
/// its chat template, generation_config.json, ...), by name.
pub type ModelFiles = Vec<(String, Vec<u8>)>;

/// A task ready to train: its model's parameters and the files its checkpoints carry.
pub struct Prepared {
    pub task: Box<dyn Task>,
    pub store: ParamStore,
    pub files: ModelFiles,
}

/// Where a run starts: its directory, and the checkpoint it resumes from.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub out_dir: PathBuf,
    pub resume_from: Option<(usize, PathBuf)>,
}

impl RunStart {
    /// The recipe's `train.out_dir` (created), and with `resume` its newest checkpoint; a
    /// fresh run refuses a directory that already holds checkpoints.
    pub fn open(recipe: &Recipe, resume: bool) -> Result<Self> {
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
        Ok(RunStart {
            out_dir,
            resume_from,
        })
    }

    /// The model the task starts from: the checkpoint being resumed (an adapter run resumes
    /// from its base: the checkpoint holds only the adapter), else `model.init`.
    pub fn model(&self, recipe: &Recipe) -> Result<Option<PathBuf>> {
        Ok(match (&self.resume_from, &recipe.model.init) {
            (Some((_, ck)), _) if recipe.peft.is_none() => Some(ck.clone()),
            (_, Some(init)) => Some(crate::assets::resolve_model(init)?),
            (_, None) => None,
        })
    }
}

/// A prepared training run.
pub struct Trainer {
    pub recipe: Recipe,
    pub task: Box<dyn Task>,
    pub store: ParamStore,
    pub optimizer: AdamW,
    pub schedule: LrSchedule,
    pub state: TrainerState,
    pub out_dir: PathBuf,
    metrics: MetricsLog,
    /// The highest peak resident memory of the training steps in any logging window of this
    /// process (bytes; evaluation excluded).
    pub peak_step_rss: Option<u64>,
    /// The task's final scores (classification: accuracy, macro-F1, confusion matrix).
    pub final_scores: Option<serde_json::Value>,
    /// Files carried over from the starting model into every checkpoint.
    model_files: ModelFiles,
    /// Set by someone else to stop this run after the current step, as Ctrl-C does (a
    /// fine-tuning job cancelled through the server).
    pub stop: Option<Arc<AtomicBool>>,
}

/// Puts adapter `default` (configured by `cfg`, or read from the checkpoint `resume`) on
/// `model`, freezes everything it does not train, and returns the model rebuilt.
fn attach_adapter(
    task: &mut dyn Task,
    store: &mut ParamStore,
    cfg: &crate::peft::PeftConfig,
    base: Option<&str>,
    resume: Option<&Path>,
    precision: Precision,
) -> Result<()> {
    match resume {
        Some(ck) => crate::peft::adapter_io::load_adapter(store, ck, "default")?,
        None => {
            let mut cfg = cfg.clone();
            cfg.fill_default_targets(task.model_type())?;
            cfg.base_model_name_or_path = base.map(str::to_string);
            store.add_adapter("default", cfg, None)?;
        }
    }
    if let (None, Some(text), Some(tok)) = (
        resume,
        cfg.prompt_tuning_init_text.as_deref(),
        task.tokenizer(),
    ) {
        if cfg.prompt_tuning_init.as_deref() == Some("TEXT") {
            crate::peft::prompt_tuning::init_from_text(store, cfg, "default", text, tok)?;
        }
    }
    task.rebuild(store)?;
    if store.peft().modules.is_empty() {
        let what = if cfg.peft_type.wraps_linear() {
            "linear layer"
        } else {
            "norm"
        };
        let mut names: Vec<String> = store
            .vars()
            .keys()
            .filter_map(|k| k.strip_suffix(".weight"))
            .filter_map(|m| m.rsplit('.').next())
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        return Err(Error::Config(format!(
            "[peft] target_modules {} match no {what} of this model (module names end in: {})",
            serde_json::to_string(&cfg.target_modules).expect("serialises"),
            names.join(", ")
        )));
    }
    store.freeze_all_but_adapters()?;
    // A base loaded from a file is never written back: under bf16 its matrices can be held
    // in bf16.
    if precision == Precision::Bf16 && base.is_some() {
        store.hold_frozen_matrices_in_bf16()?;
    }
    task.rebuild(store)
}

impl Trainer {
    /// A run of `prepared`: parameters frozen as `train.freeze` / `train.train_only` say, the
    /// recipe's `[peft]` adapter attached, optimizer and state fresh or (when `start` resumes)
    /// read from the checkpoint.
    pub fn new(recipe: Recipe, start: RunStart, prepared: Prepared) -> Result<Self> {
        let Prepared {
            mut task,
            mut store,
            files,
        } = prepared;
        let spec = crate::peft::FreezeSpec {
            freeze: recipe.train.freeze.clone(),
            train_only: recipe.train.train_only.clone(),
        };
        if spec != crate::peft::FreezeSpec::default() {
            let names: Vec<&str> = store.vars().keys().map(String::as_str).collect();
            let frozen = crate::peft::frozen_names(&names, &spec)?;
            store.freeze(&frozen)?;
            task.rebuild(&mut store)?;
        }
        if let Some(cfg) = &recipe.peft {
            attach_adapter(
                task.as_mut(),
                &mut store,
                cfg,
                recipe.model.init.as_deref(),
                start.resume_from.as_ref().map(|(_, ck)| ck.as_path()),
                recipe.train.precision,
            )?;
        }
        let t = &recipe.train;
        if t.gradient_checkpointing && !store.device().is_cpu() {
            return Err(Error::Config(
                "train.gradient_checkpointing runs on the CPU only for now".into(),
            ));
        }
        if t.precision == Precision::Bf16 {
            if !store.device().is_cpu() {
                return Err(Error::Config(
                    "train.precision = \"bf16\" runs on the CPU only for now".into(),
                ));
            }
            // An unusable FERROFORMER_BF16_KERNEL fails here, not in the first product.
            crate::nn::kernels::bf16::kernel()?;
        }
        let mut optimizer = AdamW::new(AdamWConfig {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
        });
        optimizer.no_decay = task.no_decay().to_vec();
        let mut state = match &start.resume_from {
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
                    trainable: None,
                }
            }
        };
        state.trainable = Some(store.trainable_count());
        let schedule = LrSchedule {
            lr: t.lr,
            min_lr: t.min_lr,
            warmup_steps: t.warmup_steps,
            decay_steps: t.decay_steps.unwrap_or(t.steps),
        };
        let out_dir = start.out_dir;
        crate::io::write_atomic(&out_dir.join("recipe.toml"), recipe.to_toml().as_bytes())?;
        let metrics = MetricsLog::open(
            &out_dir.join("metrics.jsonl"),
            start.resume_from.as_ref().map(|_| state.step),
        )?;
        Ok(Trainer {
            recipe,
            task,
            store,
            optimizer,
            schedule,
            state,
            out_dir,
            metrics,
            peak_step_rss: None,
            final_scores: None,
            model_files: files,
            stop: None,
        })
    }

    /// The text tokenizer (none for images and triples).
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.task.tokenizer()
    }

    /// The parameters being trained (and the frozen ones).
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// One optimizer step (over `grad_accum` micro-batches).
    pub fn train_step(&mut self) -> Result<StepStats> {
        let (acc, loss_sum, tokens) = self.gradients()?;
        let t = &self.recipe.train;
        let (scale, grad_norm) = if t.grad_clip > 0.0 {
            acc.clip_scale(t.grad_clip)?
        } else {
            (1.0, acc.global_norm()?)
        };
        let lr = self.schedule.at(self.state.step);
        self.optimizer.step(&self.store, acc.grads(), lr, scale)?;
        self.state.step += 1;
        self.state.tokens_seen += tokens as u64;
        Ok(StepStats {
            step: self.state.step,
            tokens,
            loss: loss_sum / t.grad_accum as f64,
            lr,
            grad_norm,
        })
    }

    /// The next step's gradients, summed over its `grad_accum` micro-batches, with the summed
    /// loss and the token count; advances the data and dropout streams but not the step.
    pub fn gradients(&mut self) -> Result<(GradAccumulator, f64, usize)> {
        let t = &self.recipe.train;
        let accum = t.grad_accum;
        let mut acc = GradAccumulator::default();
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        let _checkpointing = crate::nn::checkpoint::enable(t.gradient_checkpointing);
        let _precision = crate::nn::kernels::bf16::enable(t.precision);
        let dropout = self.task.uses_dropout();
        let adapter_dropout = self
            .store
            .peft()
            .adapters
            .iter()
            .any(|a| a.config.lora_dropout > 0.0);
        for micro in 0..accum {
            let mut rng = self.state.data_rng;
            let mut drop_rng = self.state.dropout_rng;
            // Adapter dropout draws from its own stream, seeded from the saved one, so a
            // resumed run drops the same inputs.
            if adapter_dropout {
                self.store
                    .peft()
                    .set_dropout(Some(Rng::new(drop_rng.next_u64())));
            }
            let batch = self.task.batch_loss(
                Batch::Train {
                    step: self.state.step,
                    micro,
                },
                &mut rng,
                dropout.then_some(&mut drop_rng),
            );
            if adapter_dropout {
                self.store.peft().set_dropout(None);
            }
            let BatchLoss {
                loss, tokens: n, ..
            } = batch?;
            tokens += n;
            self.state.data_rng = rng;
            self.state.dropout_rng = drop_rng;
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
            let mut grads = loss.backward()?;
            crate::nn::checkpoint::merge_param_grads(&mut grads)?;
            acc.add(&self.store, &grads)?;
        }
        Ok((acc, loss_sum, tokens))
    }

    /// Mean loss over `eval_iters` batches of each split (for the masked LM also the accuracy
    /// over all masked positions), or over the whole validation set where the task scores it
    /// whole. The batches, and their masks, are the same at every evaluation (a fixed seed),
    /// so the numbers are comparable across steps.
    pub fn evaluate(&self) -> Result<EvalStats> {
        let t = &self.recipe.train;
        let _precision = crate::nn::kernels::bf16::enable(t.precision);
        let mean = |batch: Batch, stream: u64| -> Result<(f64, Option<f64>)> {
            let mut rng = Rng::new(t.seed).fork(stream);
            let (mut sum, mut count, mut correct) = (0f64, 0usize, 0usize);
            for _ in 0..t.eval_iters {
                let BatchLoss { loss, hits, .. } = self.task.batch_loss(batch, &mut rng, None)?;
                sum += loss.to_scalar::<f32>()? as f64;
                if let Some((n, c)) = hits {
                    count += n;
                    correct += c;
                }
            }
            let accuracy = (count > 0).then(|| correct as f64 / count as f64);
            Ok((sum / t.eval_iters as f64, accuracy))
        };
        let (train_loss, train_accuracy) = mean(Batch::TrainEval, 100)?;
        let (val_loss, val_accuracy) = if !self.task.has_validation() {
            (None, None)
        } else if let Some((l, a)) = self.task.full_validation()? {
            (Some(l), Some(a))
        } else {
            let (l, a) = mean(Batch::Val, 101)?;
            (Some(l), a)
        };
        Ok(EvalStats {
            step: self.state.step,
            train_loss,
            val_loss,
            train_accuracy,
            val_accuracy,
            extra: self.task.eval_metrics()?,
        })
    }

    /// Saves `checkpoint-<step>` and refreshes the run directory's model.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let recipe_toml = self.recipe.to_toml();
        checkpoint::save(
            &self.out_dir,
            &Checkpoint {
                task: self.task.as_ref(),
                store: &self.store,
                optimizer: &self.optimizer,
                state: &self.state,
                recipe_toml: &recipe_toml,
                files: &self.model_files,
                adapter_base: self
                    .recipe
                    .peft
                    .as_ref()
                    .and(self.recipe.model.init.as_deref()),
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
        let mut window_start = Instant::now();
        let mut window_tokens = 0usize;
        let mut last_eval: Option<EvalStats> = None;
        reset_peak_rss();
        while self.state.step < t.steps {
            let started = Instant::now();
            let stats = self.train_step()?;
            self.state.elapsed_s += started.elapsed().as_secs_f64();
            window_tokens += stats.tokens;
            bar.inc(1);
            let step = stats.step;
            if step % t.log_interval == 0 || step == t.steps {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let tps = window_tokens as f64 / secs;
                bar.set_message(format!("loss {:.4}  {:.0} tok/s", stats.loss, tps));
                let peak = peak_rss();
                reset_peak_rss();
                if let Some(p) = peak {
                    self.peak_step_rss = Some(self.peak_step_rss.unwrap_or(0).max(p));
                }
                self.metrics.log(json!({
                    "step": step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                    "tokens_per_s": tps, "tokens_seen": self.state.tokens_seen, "elapsed_s": self.state.elapsed_s,
                    "peak_rss_mb": peak.map(|p| p as f64 / (1 << 20) as f64),
                }))?;
                window_start = Instant::now();
                window_tokens = 0;
            }
            if step % t.eval_interval == 0 || step == t.steps {
                let ev = self.evaluate()?;
                if let Some(v) = ev.val_loss {
                    if self.state.best_val_loss.is_none_or(|b| v < b) {
                        self.state.best_val_loss = Some(v);
                    }
                }
                let mut rec = json!({
                    "step": step, "train_loss": ev.train_loss, "val_loss": ev.val_loss,
                    "val_perplexity": ev.val_loss.map(f64::exp), "elapsed_s": self.state.elapsed_s,
                });
                if ev.val_accuracy.is_some() || ev.train_accuracy.is_some() {
                    rec["train_accuracy"] = json!(ev.train_accuracy);
                    rec["val_accuracy"] = json!(ev.val_accuracy);
                }
                if let Some((extra, _)) = &ev.extra {
                    for (k, v) in extra {
                        rec[k] = v.clone();
                    }
                }
                self.metrics.log(rec)?;
                plot_losses(self.metrics.path(), &self.out_dir.join("loss.png"))?;
                bar.suspend(|| on_event(Event::Eval(&ev)));
                last_eval = Some(ev);
                // Evaluation time is not training time: restart the throughput window (and
                // the memory peak, which is the training steps').
                window_start = Instant::now();
                window_tokens = 0;
                reset_peak_rss();
            }
            let interrupted = INTERRUPTED.load(Ordering::SeqCst)
                || self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
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
        self.final_scores = self.task.finish(&self.out_dir)?;
        Ok(Outcome::Finished)
    }
}
