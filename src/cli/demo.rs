//! `ferroformer demo`: the first thing to run.

use super::{print_flush, Common};
use anyhow::Result;
use clap::Args;
use ferroformer::infer::generate::{generate, SamplingConfig};
use ferroformer::train::{checkpoint, Outcome, Recipe};
use std::path::Path;

const RECIPE: &str = include_str!("../../recipes/gpt-shakespeare-char.toml");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Run directory [default: runs/demo].
    #[arg(long, default_value = "runs/demo")]
    pub out: String,
    /// Override a recipe key, e.g. --set train.steps=500 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(a: DemoArgs, c: &Common) -> Result<()> {
    let mut set = vec![format!("train.out_dir={:?}", a.out)];
    set.extend(a.set);
    if let Some(seed) = c.seed {
        set.push(format!("train.seed={seed}"));
    }
    let recipe = Recipe::parse(RECIPE, &set, Path::new("recipes/gpt-shakespeare-char.toml"))?;
    let out = Path::new(&a.out);
    // An interrupted demo continues where it stopped; a finished one starts over.
    let ckpts = checkpoint::list_checkpoints(out)?;
    let resume = match ckpts.last() {
        Some((step, _)) if *step < recipe.train.steps => {
            eprintln!(
                "continuing the interrupted demo in {} from step {step}",
                out.display()
            );
            true
        }
        Some(_) => {
            std::fs::remove_dir_all(out)?;
            false
        }
        None => false,
    };
    let (trainer, outcome) = super::pretrain::train_one(recipe, resume, c)?;
    if let Outcome::Interrupted { .. } = outcome {
        eprintln!("run `ferroformer demo` again to continue");
        return Ok(());
    }
    let s = &trainer.recipe.sample;
    let cfg = SamplingConfig {
        max_tokens: s.max_tokens,
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        seed: trainer.recipe.train.seed,
    };
    if !c.json {
        let k = s.top_k.map(|k| format!(", top-k {k}")).unwrap_or_default();
        let p = s.top_p.map(|p| format!(", top-p {p}")).unwrap_or_default();
        println!("\nsample (temperature {}{k}{p}):", s.temperature);
        print_flush(&s.prompt);
    }
    let mut text = String::new();
    generate(
        trainer
            .task
            .causal()
            .ok_or_else(|| anyhow::anyhow!("the demo recipe must train a causal LM"))?,
        trainer
            .tokenizer()
            .ok_or_else(|| anyhow::anyhow!("the demo recipe must train a text model"))?,
        &s.prompt,
        &cfg,
        &mut |t| {
            if c.json {
                text.push_str(t);
            } else {
                print_flush(t);
            }
        },
    )?;
    if c.json {
        println!(
            "{}",
            serde_json::json!({"sample": format!("{}{}", s.prompt, text)})
        );
    } else {
        println!();
    }
    Ok(())
}
