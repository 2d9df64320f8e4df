//! `ferroformer fill-mask`: the most likely tokens at each [MASK] of a text.

use super::Common;
use anyhow::Result;
use clap::Args;
use ferroformer::infer::fill_mask::FillMask;

#[derive(Args, Debug)]
pub struct FillMaskArgs {
    /// Masked language model: a Hugging Face BERT directory with its MLM head
    /// (BertForMaskedLM), such as a `pretrain` run directory of the bert-mlm recipe.
    #[arg(long)]
    pub model: String,
    /// Candidates per mask.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// The text, with one or more [MASK] tokens (the model's mask token).
    pub text: String,
}

pub fn run(a: FillMaskArgs, c: &Common) -> Result<()> {
    let dir = ferroformer::assets::resolve_model(&a.model)?;
    let fm = FillMask::load(&dir, &c.device()?)?;
    let results = fm.fill(&a.text, a.top_k)?;
    if c.json {
        // transformers' pipeline shape: a list of candidates for one mask, a list of lists
        // for several.
        let v = if results.len() == 1 {
            serde_json::to_value(&results[0])?
        } else {
            serde_json::to_value(&results)?
        };
        println!("{v}");
        return Ok(());
    }
    for (i, cands) in results.iter().enumerate() {
        if results.len() > 1 {
            println!("{} {}:", fm.mask_token, i + 1);
        }
        for cand in cands {
            println!(
                "{:>7.4}  {:<14} {}",
                cand.score, cand.token_str, cand.sequence
            );
        }
    }
    Ok(())
}
