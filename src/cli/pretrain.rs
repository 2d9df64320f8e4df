//! `ferroformer pretrain`: run a recipe.

use super::{install_interrupt_handler, Common};
use anyhow::Result;
use clap::Args;
use ferroformer::train::engine::Event;
use ferroformer::train::{cross_validation, Outcome, Recipe, Trainer};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Recipe file (TOML), e.g. recipes/gpt-shakespeare-char.toml.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override a recipe key, e.g. --set train.lr=3e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue from the newest checkpoint in the recipe's train.out_dir.
    #[arg(long, default_value_t = false)]
    pub resume: bool,
}

pub fn run(a: PretrainArgs, c: &Common) -> Result<()> {
    let mut set = a.set;
    if let Some(seed) = c.seed {
        set.push(format!("train.seed={seed}"));
    }
    let recipe = ferroformer::tasks::load_recipe(&a.recipe, &set)?;
    train(recipe, a.resume, c)?;
    Ok(())
}

/// Trains `recipe`, printing evaluations to stdout. With `data.folds` >= 2 and no
/// `data.fold`, trains one run per fold (in `<out_dir>/fold-<k>`) and reports the mean
/// validation scores, also written to `<out_dir>/cv.json`.
pub fn train(recipe: Recipe, resume: bool, c: &Common) -> Result<()> {
    if !cross_validation::wanted(&recipe) {
        train_one(recipe, resume, c)?;
        return Ok(());
    }
    let k = recipe.data.folds;
    let summary = cross_validation::run_folds(&recipe, resume, &mut |r, resume| {
        if !c.quiet {
            eprintln!("fold {}/{k}", r.data.fold.unwrap_or(0) + 1);
        }
        let (trainer, outcome) =
            train_one(r, resume, c).map_err(|e| ferroformer::Error::Training(format!("{e:#}")))?;
        if outcome != Outcome::Finished {
            return Ok(None);
        }
        trainer.final_scores.clone().map(Some).ok_or_else(|| {
            ferroformer::Error::Training("a fold finished without validation scores".into())
        })
    })?;
    let Some(s) = summary else {
        return Ok(());
    };
    if c.json {
        println!("{s}");
    } else {
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{k}-fold cross-validation: accuracy {:.2}% (sd {:.2}), macro-F1 {:.4} (sd {:.4}); {}",
            100.0 * f("mean_accuracy"),
            100.0 * f("sd_accuracy"),
            f("mean_macro_f1"),
            f("sd_macro_f1"),
            std::path::Path::new(&recipe.train.out_dir)
                .join("cv.json")
                .display()
        );
    }
    Ok(())
}

/// Trains one run of `recipe`; returns the trainer and how it ended.
pub fn train_one(recipe: Recipe, resume: bool, c: &Common) -> Result<(Trainer, Outcome)> {
    let device = c.device()?;
    install_interrupt_handler(c.quiet);
    if !c.quiet {
        eprintln!("preparing {} in {}", recipe.name, recipe.train.out_dir);
    }
    let mut trainer = ferroformer::tasks::prepare(recipe, resume, &device)?;
    let data = trainer.task.data();
    if !c.quiet {
        let n = trainer.store.numel();
        let (train_n, val_n, unit) = (data.train, data.val, data.unit);
        let vocab = match trainer.tokenizer() {
            Some(t) => format!("vocabulary {}", t.vocab_size()),
            None => format!("{} classes", data.classes),
        };
        eprintln!(
            "model: {} parameters ({}), {vocab}, {train_n} training / {val_n} validation {unit}{}",
            n,
            ferroformer::models::params::size_name(n),
            if resume {
                format!(", resuming at step {}", trainer.state.step)
            } else {
                String::new()
            }
        );
    }
    if !c.quiet {
        for note in &data.notes {
            eprintln!("note: {note}");
        }
        if let Some(t) = trainer.state.trainable {
            eprintln!("{t}");
        }
    }
    let json = c.json;
    let quiet = c.quiet;
    // Perplexity means something for language models; what the accuracy counts is the task's.
    let describe = trainer.task.describe();
    let outcome = trainer.run(c.progress(), &mut |ev| match ev {
        Event::Eval(e) => {
            if json {
                let mut v =
                    json!({"step": e.step, "train_loss": e.train_loss, "val_loss": e.val_loss});
                if e.train_accuracy.is_some() {
                    v["train_accuracy"] = json!(e.train_accuracy);
                    v["val_accuracy"] = json!(e.val_accuracy);
                }
                if let Some((extra, _)) = &e.extra {
                    for (k, x) in extra {
                        v[k] = x.clone();
                    }
                }
                println!("{v}");
            } else {
                let mut line = format!("step {:>6}: train loss {:.4}", e.step, e.train_loss);
                match e.val_loss {
                    Some(v) if describe.perplexity => {
                        line += &format!(", val loss {v:.4} (perplexity {:.2})", v.exp())
                    }
                    Some(v) => line += &format!(", val loss {v:.4}"),
                    None => {}
                }
                if let Some((_, text)) = &e.extra {
                    line += &format!(", {text}");
                }
                if let Some(a) = e.val_accuracy.or(e.train_accuracy) {
                    let which = if e.val_accuracy.is_some() {
                        "val"
                    } else {
                        "train"
                    };
                    line += &format!(", {which} {} {:.2}%", describe.accuracy, 100.0 * a);
                }
                println!("{line}");
            }
        }
        Event::Checkpoint(p) => {
            if !quiet {
                eprintln!("saved {}", p.display());
            }
        }
    })?;
    let st = &trainer.state;
    let summary = json!({
        "out_dir": trainer.out_dir, "step": st.step, "finished": outcome == Outcome::Finished,
        "best_val_loss": st.best_val_loss, "train_seconds": st.elapsed_s, "tokens_seen": st.tokens_seen,
        "trainable": st.trainable,
        "peak_step_rss_mb": trainer.peak_step_rss.map(|p| p as f64 / (1 << 20) as f64),
    });
    match &outcome {
        Outcome::Finished => {
            if json {
                println!("{summary}");
            } else {
                let peak = trainer
                    .peak_step_rss
                    .map(|p| format!(", peak memory of a step {:.0} MB", p as f64 / 1048576.0))
                    .unwrap_or_default();
                println!(
                    "done: {} steps in {:.1} s of training{peak}; model in {}",
                    st.step,
                    st.elapsed_s,
                    trainer.out_dir.display()
                );
            }
        }
        Outcome::Interrupted { step, checkpoint } => {
            if json {
                println!("{summary}");
            }
            eprintln!(
                "stopped at step {step}; checkpoint {}. Continue with --resume.",
                checkpoint.display()
            );
        }
    }
    Ok((trainer, outcome))
}
