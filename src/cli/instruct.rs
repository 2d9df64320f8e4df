//! `ferroformer instruct`: instruction-tune a causal LM (supervised fine-tuning with the loss on
//! the responses), full or with a PEFT adapter.

use super::{pretrain, Common};
use anyhow::{bail, Result};
use clap::Args;
use ferroformer::train::Recipe;
use std::path::{Path, PathBuf};

/// The recipe used when none is given.
const DEFAULT_RECIPE: &str = include_str!("../../recipes/instruct.toml");

#[derive(Args, Debug)]
pub struct InstructArgs {
    /// The model to tune: a run or Hugging Face directory, a .gguf file or an asset name
    /// [default: the recipe's model.init; built-in recipe: smollm2-135m-instruct].
    #[arg(long)]
    pub from: Option<String>,
    /// Instruction data: a JSON / JSON-lines file of Alpaca (instruction, input, output),
    /// ShareGPT (conversations), messages or prompt-completion records, or a directory (its
    /// train.jsonl, as `instruct build` writes, else every .json/.jsonl file). Repeatable.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Recipe file (TOML) [default: the built-in recipes/instruct.toml: LoRA r=16 on every
    /// linear layer, packed 512-token rows, 300 steps x 4 rows, lr 5e-4].
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Chat template: `model` (the model's own), `chatml`, `alpaca`, `llama-2` or a .jinja
    /// file [default: the recipe's sft.template; built-in recipe: model].
    #[arg(long)]
    pub template: Option<String>,
    /// Train an adapter: lora, ia3, ln_tuning, prompt_tuning, prefix_tuning (PEFT's options
    /// via --set peft.r=8 ...); `none` trains every weight [default: the recipe's [peft];
    /// built-in recipe: lora].
    #[arg(long, value_name = "METHOD")]
    pub peft: Option<String>,
    /// Compute the loss on every token, not just the responses (sft.train_on = "all").
    #[arg(long, default_value_t = false)]
    pub train_on_all: bool,
    /// Override a recipe key, e.g. --set train.steps=100 --set sft.packing=false (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in the recipe's train.out_dir from its newest checkpoint, exactly.
    #[arg(long, default_value_t = false)]
    pub resume: bool,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn run(a: InstructArgs, c: &Common) -> Result<()> {
    let mut set = vec!["objective=\"sft\"".to_string()];
    let data: Vec<String> = a
        .data
        .iter()
        .map(|p| quoted(&p.display().to_string()))
        .collect();
    set.push(format!("data.corpus=[{}]", data.join(", ")));
    if let Some(t) = &a.template {
        set.push(format!("sft.template={}", quoted(t)));
    }
    if a.train_on_all {
        set.push("sft.train_on=\"all\"".into());
    }
    if let Some(seed) = c.seed {
        set.push(format!("train.seed={seed}"));
    }
    if let Some(from) = &a.from {
        set.push(format!("model.init={}", quoted(from)));
    }
    let (text, origin) = match &a.recipe {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            p.clone(),
        ),
        None => (
            DEFAULT_RECIPE.to_string(),
            PathBuf::from("recipes/instruct.toml"),
        ),
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", origin.display(), e.message()))?;
    match a.peft.as_deref() {
        Some("none") => {
            table.remove("peft");
        }
        Some(method) => {
            ferroformer::peft::PeftType::parse(method)?;
            if !table.contains_key("peft") {
                table.insert("peft".into(), toml::Value::Table(Default::default()));
            }
            set.insert(0, format!("peft.peft_type={}", quoted(method)));
        }
        None => {}
    }
    set.extend(a.set);
    let recipe = Recipe::parse(&table.to_string(), &set, Path::new(&origin))?;
    if recipe.model.init.is_none() {
        bail!("nothing to tune: pass --from MODEL or set model.init");
    }
    pretrain::train(recipe, a.resume, c)
}
