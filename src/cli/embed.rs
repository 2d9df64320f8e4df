//! `ferroformer embed`: one sentence embedding per input line, as a JSON array per output
//! line, in input order.

use super::Common;
use anyhow::{bail, Result};
use clap::Args;
use ferroformer::infer::embed::{Pooling, SentenceEncoder};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Encoder: a Hugging Face BERT-family directory (with sentence-transformers' files when
    /// present), or an asset name such as all-minilm-l6-v2.
    #[arg(long)]
    pub model: String,
    /// UTF-8 text, one input per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Pooling: mean (over non-padding tokens) or cls [default: the model's 1_Pooling/config.json, else mean].
    #[arg(long)]
    pub pooling: Option<String>,
    /// Scale each embedding to unit length [default: on when the model's modules.json has Normalize].
    #[arg(long)]
    pub normalize: Option<bool>,
    /// Maximum tokens per input, special tokens included [default: sentence_bert_config.json's max_seq_length, else the model's positions].
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Fail on an input longer than the maximum instead of truncating it with a warning.
    #[arg(long, default_value_t = false)]
    pub no_truncate: bool,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

pub fn run(a: EmbedArgs, c: &Common) -> Result<()> {
    let dir = ferroformer::assets::resolve_model(&a.model)?;
    let mut enc = SentenceEncoder::load(&dir, &c.device()?)?;
    if let Some(p) = &a.pooling {
        enc.pooling = p.parse::<Pooling>()?;
    }
    if let Some(n) = a.normalize {
        enc.normalize = n;
    }
    if let Some(m) = a.max_length {
        if m < 2 || m > enc.model.config.max_position_embeddings {
            bail!(
                "--max-length {m}: must be between 2 and the model's {} positions",
                enc.model.config.max_position_embeddings
            );
        }
        enc.max_len = m;
    }
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    let text = ferroformer::data::read_text(&a.input)?;
    let mut toks = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            bail!(
                "{}: line {} is empty (every line is one input; remove empty lines)",
                a.input.display(),
                i + 1
            );
        }
        let t = enc.tokenize(line)?;
        if t.dropped > 0 {
            if a.no_truncate {
                bail!(
                    "{}: line {} has {} tokens, over the maximum {} (drop --no-truncate to truncate)",
                    a.input.display(),
                    i + 1,
                    t.ids.len() + t.dropped,
                    enc.max_len
                );
            }
            if c.progress() {
                eprintln!(
                    "warning: {}: line {} truncated to {} tokens ({} dropped)",
                    a.input.display(),
                    i + 1,
                    enc.max_len,
                    t.dropped
                );
            }
        }
        toks.push(t.ids);
    }
    if toks.is_empty() {
        bail!("{}: no input lines", a.input.display());
    }
    let bar = if c.progress() {
        indicatif::ProgressBar::new(toks.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = std::time::Instant::now();
    let embeddings = enc.embed_all(&toks, a.batch, &mut |n| bar.set_position(n as u64))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in embeddings {
        writeln!(out, "{}", serde_json::to_string(&e)?)?;
    }
    out.flush()?;
    bar.finish_and_clear();
    if c.progress() {
        let s = start.elapsed().as_secs_f64();
        eprintln!(
            "{} embeddings in {:.2} s ({:.1} sentences/s)",
            toks.len(),
            s,
            toks.len() as f64 / s.max(1e-9)
        );
    }
    Ok(())
}
