//! `ferroformer finetune`: continue training a pretrained model (all of it, or part of it with
//! the rest frozen) as a recipe describes.

use super::{pretrain, Common};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The model to start from: a run or Hugging Face directory, a llama.cpp .gguf file
    /// (dequantized to f32), or an asset name such as smollm2-135m-instruct [default: the
    /// recipe's model.init].
    #[arg(long)]
    pub from: Option<String>,
    /// Recipe file (TOML), e.g. recipes/domain-shakespeare.toml.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override a recipe key, e.g. --set train.lr=3e-5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Freeze the parameters a pattern selects (repeatable; added to the recipe's
    /// train.freeze). Patterns are dot-separated segments, each a glob or a layer range:
    /// `embed_tokens`, `layers.0-25`, `*norm*`, `bert.embeddings`.
    #[arg(long, value_name = "PATTERN")]
    pub freeze: Vec<String>,
    /// Train only the parameters these patterns select, freezing the rest (repeatable; added
    /// to train.train_only), e.g. --train-only layers.26-29 --train-only model.norm.
    #[arg(long = "train-only", value_name = "PATTERN")]
    pub train_only: Vec<String>,
    /// Train an adapter instead of the model: `lora` or `ia3` (sets peft.peft_type; the other
    /// options, with PEFT's names and defaults, via --set peft.r=8 --set
    /// peft.target_modules='["q_proj","v_proj"]' or a [peft] table in the recipe). The run
    /// directory then holds adapter_config.json + adapter_model.safetensors. With a .gguf
    /// --from, --set model.quantized=true keeps the base quantized (QLoRA).
    #[arg(long, value_name = "METHOD")]
    pub peft: Option<String>,
    /// Continue the fine-tuning run in the recipe's train.out_dir from its newest checkpoint,
    /// exactly.
    #[arg(long, default_value_t = false)]
    pub resume: bool,
}

pub fn run(a: FinetuneArgs, c: &Common) -> Result<()> {
    let mut set = a.set;
    if let Some(seed) = c.seed {
        set.push(format!("train.seed={seed}"));
    }
    if let Some(method) = a.peft {
        ferroformer::peft::PeftType::parse(&method)?;
        set.insert(0, format!("peft.peft_type={}", toml::Value::String(method)));
    }
    if let Some(from) = a.from {
        // Before parsing, so the recipe is checked as the model it will start from.
        set.push(format!("model.init={}", toml::Value::String(from)));
    }
    let mut recipe = ferroformer::tasks::load_recipe(&a.recipe, &set)?;
    if recipe.model.init.is_none() {
        bail!(
            "{}: nothing to fine-tune: pass --from MODEL or set model.init",
            a.recipe.display()
        );
    }
    recipe.train.freeze.extend(a.freeze);
    recipe.train.train_only.extend(a.train_only);
    pretrain::train(recipe, a.resume, c)
}
