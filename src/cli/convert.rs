//! `ferroformer convert`: write any loadable model (a GGUF file, a Hugging Face directory, an
//! asset) as a Hugging Face directory: config.json, model.safetensors (f32), tokenizer.json,
//! tokenizer_config.json (special tokens, chat template), generation_config.json.

use super::{load_model, Common};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The model to convert: a llama.cpp .gguf file (dequantized to f32), a Hugging Face
    /// directory, or an asset name such as smollm2-135m-instruct.
    #[arg(long)]
    pub from: String,
    /// Output directory (created; must not already hold a model unless --force).
    #[arg(long)]
    pub to: PathBuf,
    /// Overwrite the model files in an existing --to directory.
    #[arg(long, default_value_t = false)]
    pub force: bool,
}

pub fn run(a: ConvertArgs, c: &Common) -> Result<()> {
    if a.to.join("config.json").exists() && !a.force {
        bail!(
            "{}: already holds a model (config.json); pass --force to overwrite",
            a.to.display()
        );
    }
    let p = load_model(&a.from, c, false)?;
    p.save_dir(&a.to)?;
    if c.json {
        println!(
            "{}",
            serde_json::json!({"from": p.source, "to": a.to, "model_type": p.model.config().model_type(), "parameters": p.store.numel()})
        );
    } else if !c.quiet {
        eprintln!("wrote {}", a.to.display());
    }
    Ok(())
}
