//! `ferroformer params`: parameter accounting.

use super::Common;
use anyhow::{bail, Context, Result};
use clap::Args;
use ferroformer::models::params::{report, size_name};
use ferroformer::models::{ArchConfig, Gpt2Config};
use std::path::Path;

#[derive(Args, Debug)]
pub struct ParamsArgs {
    /// A model: a Hugging Face directory (reads its config.json), a .gguf file (reads its
    /// metadata), or an asset name such as smollm2-135m-instruct.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub model: Option<String>,
    /// A named config (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a config.json path, or inline
    /// JSON (`model_type` gpt2 when absent).
    #[arg(long)]
    pub config: Option<String>,
    /// Batch size for the training memory estimate.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Context for the memory and FLOPs estimates [default: the model's maximum positions].
    #[arg(long)]
    pub context: Option<usize>,
}

fn load_config(a: &ParamsArgs) -> Result<ArchConfig> {
    if let Some(m) = &a.model {
        let p = ferroformer::assets::resolve_model(m)?;
        if p.extension().is_some_and(|x| x == "gguf") {
            let g = ferroformer::io::gguf::Gguf::open(&p)?;
            return Ok(ferroformer::infer::pretrained::gguf_config(&g)?);
        }
        return Ok(ArchConfig::load(&p.join("config.json"))?);
    }
    let c = a.config.as_deref().unwrap_or_default();
    if let Some(cfg) = Gpt2Config::named(c) {
        return Ok(ArchConfig::new(cfg)?);
    }
    if c.trim_start().starts_with('{') {
        let mut v: serde_json::Value = serde_json::from_str(c).context("--config: invalid JSON")?;
        if let Some(o) = v.as_object_mut() {
            o.entry("model_type").or_insert_with(|| "gpt2".into());
        }
        return Ok(ArchConfig::from_json(v)?);
    }
    let p = Path::new(c);
    if p.exists() {
        let p = if p.is_dir() {
            p.join("config.json")
        } else {
            p.to_path_buf()
        };
        return Ok(ArchConfig::load(&p)?);
    }
    bail!("--config {c:?}: not a known name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a file, or JSON")
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn run(a: ParamsArgs, c: &Common) -> Result<()> {
    let cfg = load_config(&a)?;
    let r = report(&cfg, a.batch, a.context, &|_| false)?;
    if c.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let w = r
        .modules
        .keys()
        .map(|k| k.len())
        .max()
        .unwrap_or(10)
        .max(12);
    println!("{:<w$}  {:>14}", "module", "parameters");
    // Model order: embeddings, blocks by number, final norm, head.
    let mut modules: Vec<(&String, &usize)> = r.modules.iter().collect();
    modules.sort_by_key(|(m, _)| {
        let block = m
            .strip_prefix("transformer.h.")
            .or_else(|| m.strip_prefix("model.layers."))
            .and_then(|i| i.parse::<usize>().ok());
        match (block, m.as_str()) {
            (Some(i), _) => (1, i),
            (None, "transformer.wte" | "model.embed_tokens") => (0, 0),
            (None, "transformer.wpe") => (0, 1),
            (None, "lm_head") => (3, 0),
            _ => (2, 0),
        }
    });
    for (m, n) in modules {
        println!("{m:<w$}  {n:>14}");
    }
    println!("{:<w$}  {:>14}  ({})", "total", r.total, r.size);
    println!("{:<w$}  {:>14}", "trainable", r.trainable);
    let blocks: Vec<String> = r
        .per_block
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("per block: {}", blocks.join(", "));
    println!(
        "FLOPs per token at context {}: forward {:.3e}, training {:.3e} (N in matmuls: {}, {})",
        r.flops_per_token.context,
        r.flops_per_token.forward,
        r.flops_per_token.train,
        r.matmul_params,
        size_name(r.matmul_params)
    );
    let m = &r.memory;
    println!(
        "training memory (f32, AdamW, batch {} x {}): weights {}, gradients {}, moments {}, activations ~{}, total ~{}",
        m.batch,
        m.context,
        gib(m.weights),
        gib(m.gradients),
        gib(m.adamw_moments),
        gib(m.activations),
        gib(m.total)
    );
    Ok(())
}
