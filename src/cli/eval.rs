//! `ferroformer eval`: measure a model.

use super::{Common, ModelArgs};
use anyhow::Result;
use clap::{Args, Subcommand};
use ferroformer::data::read_text;
use ferroformer::eval::perplexity;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum EvalCmd {
    /// Perplexity of a causal LM on a text file: consecutive non-overlapping windows of
    /// --context tokens, each token after a window's first predicted from those before it.
    Perplexity(PerplexityArgs),
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// UTF-8 text file.
    #[arg(long)]
    pub text: PathBuf,
    /// Window length in tokens [default: the model's maximum positions].
    #[arg(long)]
    pub context: Option<usize>,
}

pub fn run(cmd: EvalCmd, c: &Common) -> Result<()> {
    match cmd {
        EvalCmd::Perplexity(a) => {
            let p = a.model.load(c)?;
            let model = &p.model;
            let text = read_text(&a.text)?;
            let ids = p.tokenizer.encode(&text)?;
            let context = a.context.unwrap_or(model.max_positions());
            let windows = ids.len().div_ceil(context.max(1));
            let bar = if c.progress() {
                indicatif::ProgressBar::new(windows as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            let r = perplexity(model, &ids, context, &mut |n| bar.set_position(n as u64))
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.text.display()))?;
            bar.finish_and_clear();
            if c.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "tokens {}  mean NLL {:.4} nats  perplexity {:.3}",
                    r.tokens, r.mean_nll, r.perplexity
                );
            }
            Ok(())
        }
    }
}
