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

/// Trains `recipe`, printing evaluations to stdout. With `data.folds` >= 2 and no
/// `data.fold`, trains one run per fold (in `<out_dir>/fold-<k>`) and reports the mean
/// validation scores, also written to `<out_dir>/cv.json`.
pub fn train(recipe: Recipe, resume: bool, c: &Common) -> Result<()> {
    let k = recipe.data.folds;
    if k < 2 || recipe.data.fold.is_some() {
        train_one(recipe, resume, c)?;
        return Ok(());
    }
    let root = std::path::PathBuf::from(&recipe.train.out_dir);
    let mut folds = vec![];
    for i in 0..k {
        let mut r = recipe.clone();
        r.data.fold = Some(i);
        r.train.out_dir = root.join(format!("fold-{i}")).display().to_string();
        // A fold not yet started starts fresh when the others resume.
        let started = !ferroformer::train::checkpoint::list_checkpoints(std::path::Path::new(
            &r.train.out_dir,
        ))?
        .is_empty();
        if !c.quiet {
            eprintln!("fold {}/{k}", i + 1);
        }
        let (trainer, outcome) = train_one(r, resume && started, c)?;
        if outcome != Outcome::Finished {
            return Ok(());
        }
        let s = trainer
            .val_scores
            .clone()
            .ok_or_else(|| anyhow::anyhow!("fold {i} has no validation scores"))?;
        folds.push(s);
    }
    let stats = |f: &dyn Fn(&ferroformer::classify::Scores) -> f64| {
        let v: Vec<f64> = folds.iter().map(f).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
        (mean, sd, v)
    };
    let (acc, acc_sd, accs) = stats(&|s| s.accuracy);
    let (f1, f1_sd, f1s) = stats(&|s| s.macro_f1);
    let summary = json!({
        "folds": k, "mean_accuracy": acc, "sd_accuracy": acc_sd, "mean_macro_f1": f1,
        "sd_macro_f1": f1_sd, "accuracy": accs, "macro_f1": f1s,
        "n": folds.iter().map(|s| s.n).sum::<usize>(),
    });
    ferroformer::io::write_json_atomic(&root.join("cv.json"), &summary)?;
    if c.json {
        println!("{summary}");
    } else {
        println!(
            "{k}-fold cross-validation: accuracy {:.2}% (sd {:.2}), macro-F1 {:.4} (sd {:.4}); {}",
            100.0 * acc,
            100.0 * acc_sd,
            f1,
            f1_sd,
            root.join("cv.json").display()
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
    if !c.quiet {
        for note in trainer.data.notes() {
            eprintln!("note: {note}");
        }
        if let Some(t) = trainer.state.trainable {
            eprintln!("{t}");
        }
    }
    let json = c.json;
    let quiet = c.quiet;
    // Perplexity and masked tokens mean something for language models; classifiers get plain
    // accuracy.
    let images = trainer.data.classes() > 0;
    let triples = matches!(
        trainer.data,
        ferroformer::train::trainer::TrainData::Triples { .. }
    );
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
                    Some(v) if images || triples => line += &format!(", val loss {v:.4}"),
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
                    } else if triples {
                        "pairwise accuracy (true triple closer than its corruption)"
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
