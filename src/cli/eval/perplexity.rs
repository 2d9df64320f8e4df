//! `ferroformer eval perplexity`: perplexity of a causal LM on texts.

use super::super::Common;
use super::super::ModelArgs;
use anyhow::Result;
use clap::Args;
use ferroformer::data::read_text;
use ferroformer::eval::perplexity;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file (UTF-8 text, .bz2, or a MediaWiki XML dump), folder (its files in name
    /// order), `asset:NAME` or `asset:NAME/FILE`; repeatable: the files are joined with
    /// newlines, in order.
    #[arg(long, required = true)]
    pub text: Vec<String>,
    /// Window length in tokens [default: the model's maximum positions].
    #[arg(long)]
    pub context: Option<usize>,
    /// Score only the first this many tokens of the text [default: all].
    #[arg(long)]
    pub max_tokens: Option<usize>,
}

pub fn run(a: PerplexityArgs, c: &Common) -> Result<()> {
    let p = a.model.load(c)?;
    let model = &p.model;
    let mut ids = vec![];
    let newline = p.tokenizer.encode("\n")?;
    let paths: Vec<PathBuf> = a
        .text
        .iter()
        .map(|t| ferroformer::assets::resolve(t))
        .collect::<Result<_, _>>()?;
    for (i, path) in ferroformer::data::corpus_files(&paths)?.iter().enumerate() {
        if i > 0 {
            ids.extend_from_slice(&newline);
        }
        ids.extend(p.tokenizer.encode(&read_text(path)?)?);
    }
    if let Some(n) = a.max_tokens {
        ids.truncate(n);
    }
    let names = a.text.join(", ");
    let context = a.context.unwrap_or(model.max_positions());
    let windows = ids.len().div_ceil(context.max(1));
    let bar = if c.progress() {
        indicatif::ProgressBar::new(windows as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let bos = p.special.bos.filter(|_| p.special.add_bos);
    let r = perplexity(model, &ids, context, bos, &mut |n| {
        bar.set_position(n as u64)
    })
    .map_err(|e| anyhow::anyhow!("{names}: {e}"))?;
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
