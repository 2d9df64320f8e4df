//! `ferroformer similar`: semantic search, ranking the lines of a corpus by the cosine
//! similarity of their embeddings to a query's.

use super::Common;
use anyhow::{bail, Result};
use clap::Args;
use ferroformer::infer::embed::{cosine, SentenceEncoder};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SimilarArgs {
    /// Encoder: a Hugging Face BERT-family directory or an asset name such as all-minilm-l6-v2.
    #[arg(long)]
    pub model: String,
    /// UTF-8 text, one document per line (empty lines are skipped).
    #[arg(long)]
    pub corpus: PathBuf,
    /// The query text.
    #[arg(long)]
    pub query: String,
    /// How many of the most similar lines to print.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

pub fn run(a: SimilarArgs, c: &Common) -> Result<()> {
    if a.top_k == 0 || a.batch == 0 {
        bail!("--top-k and --batch must be positive");
    }
    if a.query.trim().is_empty() {
        bail!("--query is empty");
    }
    let dir = ferroformer::assets::resolve_model(&a.model)?;
    let enc = SentenceEncoder::load(&dir, &c.device()?)?;
    let text = ferroformer::data::read_text(&a.corpus)?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        bail!("{}: no non-empty lines", a.corpus.display());
    }
    let docs: Vec<&str> = lines.iter().map(|(_, l)| *l).collect();
    let q = enc.embed(&[a.query.as_str()], 1)?.remove(0);
    let e = enc.embed(&docs, a.batch)?;
    let mut scored: Vec<(f64, usize)> = e.iter().map(|v| cosine(&q, v)).zip(0..).collect();
    scored.sort_by(|x, y| y.0.total_cmp(&x.0));
    for (score, i) in scored.into_iter().take(a.top_k) {
        let (line, doc) = lines[i];
        if c.json {
            println!(
                "{}",
                serde_json::json!({"line": line + 1, "score": score, "text": doc})
            );
        } else {
            println!("{score:.4}  {}:{}  {doc}", a.corpus.display(), line + 1);
        }
    }
    Ok(())
}
