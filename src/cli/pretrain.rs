//! `ferroformer pretrain`: run a recipe.

use super::{install_interrupt_handler, Common};
use anyhow::Result;
use clap::Args;
use ferroformer::train::trainer::Event;
use ferroformer::train::{Outcome, Recipe, Trainer};
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
    let recipe = Recipe::load(&a.recipe, &set)?;
    train(recipe, a.resume, c)?;
    Ok(())
}

/// Trains `recipe`, printing evaluations to stdout; returns the trainer and how it ended.
pub fn train(recipe: Recipe, resume: bool, c: &Common) -> Result<(Trainer, Outcome)> {
    let device = c.device()?;
    install_interrupt_handler(c.quiet);
    if !c.quiet {
        eprintln!("preparing {} in {}", recipe.name, recipe.train.out_dir);
    }
    let mut trainer = Trainer::prepare(recipe, resume, &device)?;
    if !c.quiet {
        let n = trainer.store.numel();
        let (train_n, val_n, unit) = trainer.data.sizes();
        let vocab = match &trainer.tokenizer {
            Some(t) => format!("vocabulary {}", t.vocab_size()),
            None => format!("{} classes", trainer.data.classes()),
        };
        eprintln!(
            "model: {} parameters ({}), {vocab}, {train_n} training / {val_n} validation {unit}{}",
            n,
            ferroformer::params::size_name(n),
            if resume {
                format!(", resuming at step {}", trainer.state.step)
            } else {
                String::new()
            }
        );
    }
    let json = c.json;
    let quiet = c.quiet;
    // Perplexity and masked tokens mean something for text; images get plain accuracy.
    let images = trainer.tokenizer.is_none();
    let outcome = trainer.run(c.progress(), &mut |ev| match ev {
        Event::Eval(e) => {
            if json {
                let mut v =
                    json!({"step": e.step, "train_loss": e.train_loss, "val_loss": e.val_loss});
                if e.train_accuracy.is_some() {
                    v["train_accuracy"] = json!(e.train_accuracy);
                    v["val_accuracy"] = json!(e.val_accuracy);
                }
                if let Some(r) = e.val_error_rates {
                    v["val_wer"] = json!(r.wer);
                    v["val_per"] = json!(r.per);
                }
                println!("{v}");
            } else {
                let mut line = format!("step {:>6}: train loss {:.4}", e.step, e.train_loss);
                match e.val_loss {
                    Some(v) if images => line += &format!(", val loss {v:.4}"),
                    Some(v) => line += &format!(", val loss {v:.4} (perplexity {:.2})", v.exp()),
                    None => {}
                }
                if let Some(r) = e.val_error_rates {
                    line += &format!(
                        ", val WER {:.2}% PER {:.2}% ({} words, greedy)",
                        100.0 * r.wer,
                        100.0 * r.per,
                        r.n
                    );
                }
                if let Some(a) = e.val_accuracy.or(e.train_accuracy) {
                    let which = if e.val_accuracy.is_some() {
                        "val"
                    } else {
                        "train"
                    };
                    let what = if images {
                        "accuracy"
                    } else {
                        "masked-token accuracy"
                    };
                    line += &format!(", {which} {what} {:.2}%", 100.0 * a);
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
    });
    match &outcome {
        Outcome::Finished => {
            if json {
                println!("{summary}");
            } else {
                println!(
                    "done: {} steps in {:.1} s of training; model in {}",
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
