//! `ferroformer generate`: stream text from a model.

use super::{load_model, print_flush, Common};
use anyhow::Result;
use clap::Args;
use ferroformer::generate::{generate, SamplingConfig};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a Hugging Face directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: String,
    /// Text to continue.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample only among the K most likely tokens [default: all].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to P [default: 1].
    #[arg(long)]
    pub top_p: Option<f64>,
}

pub fn run(a: GenerateArgs, c: &Common) -> Result<()> {
    let cfg = SamplingConfig {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: c.seed.unwrap_or(0),
    };
    cfg.validate()?;
    let device = c.device()?;
    let (model, tokenizer) = load_model(&a.model, &device)?;
    let start = std::time::Instant::now();
    let mut text = String::new();
    if !c.json {
        print_flush(&a.prompt);
    }
    let ids = generate(&model, &tokenizer, &a.prompt, &cfg, &mut |t| {
        if c.json {
            text.push_str(t);
        } else {
            print_flush(t);
        }
    })?;
    let secs = start.elapsed().as_secs_f64();
    if c.json {
        println!(
            "{}",
            serde_json::json!({"prompt": a.prompt, "text": text, "tokens": ids.len(), "seconds": secs})
        );
    } else {
        println!();
        if !c.quiet {
            eprintln!(
                "{} tokens in {:.2} s ({:.1} tokens/s)",
                ids.len(),
                secs,
                ids.len() as f64 / secs.max(1e-9)
            );
        }
    }
    Ok(())
}
