//! `ferroformer generate`: stream text from a model, or one chat turn with `--chat`.

use super::{print_flush, Common, ModelArgs};
use anyhow::Result;
use clap::Args;
use ferroformer::infer::generate::{generate_stream, SamplingConfig};
use ferroformer::text::chat::Message;

/// Sampling flags shared by `generate` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token every time (greedy, deterministic).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample only among the K most likely tokens [default: all].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to P [default: 1].
    #[arg(long)]
    pub top_p: Option<f64>,
}

impl SamplingArgs {
    pub fn config(&self, c: &Common) -> Result<SamplingConfig> {
        let cfg = SamplingConfig {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: c.seed.unwrap_or(0),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to continue (with --chat: the user's message).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Treat --prompt as a user message: render it with the model's chat template, generate
    /// the assistant's reply, stop at the end of the turn.
    #[arg(long, default_value_t = false)]
    pub chat: bool,
    /// With --chat: a system message [default: the template's own, if any].
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: GenerateArgs, c: &Common) -> Result<()> {
    let cfg = a.sampling.config(c)?;
    let p = a.model.load(c)?;
    let (prompt_ids, stop) = if a.chat {
        let mut messages = vec![];
        if let Some(s) = &a.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &a.prompt));
        let text = p.chat()?.render(&messages, true)?;
        (p.tokenizer.encode(&text)?, p.stop_tokens())
    } else {
        let mut ids = p.encode_prompt(&a.prompt)?;
        if ids.is_empty() {
            // Nothing to condition on: start from the beginning-of-sequence token.
            ids.extend(p.special.bos.or(p.special.eos));
        }
        (ids, p.stop_tokens())
    };
    let start = std::time::Instant::now();
    let mut text = String::new();
    if !c.json && !a.chat {
        print_flush(&a.prompt);
    }
    let ids = generate_stream(&p.model, &p.tokenizer, &prompt_ids, &cfg, &stop, &mut |t| {
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
            serde_json::json!({"prompt": a.prompt, "text": text, "ids": ids, "tokens": ids.len(), "prompt_tokens": prompt_ids.len(), "seconds": secs})
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
