//! `ferroformer tokenizer`: train vocabularies.

use super::Common;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ferroformer::data::corpus_files;
use ferroformer::text::tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TokenizerCmd {
    /// Train a char-level, byte-level BPE or BERT WordPiece tokenizer and write tokenizer.json.
    Train(TrainArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Corpus files or folders, or asset:NAME (repeatable).
    #[arg(long, required = true)]
    pub corpus: Vec<String>,
    /// Vocabulary kind: char, bpe (byte-level, GPT-2 style) or wordpiece (BERT: [PAD] [UNK]
    /// [CLS] [SEP] [MASK], ## continuation pieces).
    #[arg(long, default_value = "bpe")]
    pub kind: String,
    /// Vocabulary size for bpe (256 byte tokens and <|endoftext|> included) or wordpiece
    /// (the 5 special tokens included).
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Minimum frequency of a merged pair (bpe) or piece (wordpiece).
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// wordpiece: keep case and accents (a "cased" vocabulary); by default text is lowercased
    /// and accents stripped.
    #[arg(long, default_value_t = false)]
    pub cased: bool,
    /// Output file.
    #[arg(long, default_value = "tokenizer.json")]
    pub out: PathBuf,
}

pub fn run(cmd: TokenizerCmd, c: &Common) -> Result<()> {
    let TokenizerCmd::Train(a) = cmd;
    let paths: Vec<PathBuf> = a
        .corpus
        .iter()
        .map(|p| ferroformer::assets::resolve(p))
        .collect::<Result<_, _>>()?;
    let files = corpus_files(&paths)?;
    let tok = match a.kind.as_str() {
        "bpe" => Tokenizer::train_bpe(&files, a.vocab_size, a.min_frequency)?,
        "wordpiece" => Tokenizer::train_wordpiece(&files, a.vocab_size, a.min_frequency, !a.cased)?,
        "char" => {
            let texts: Vec<String> = files
                .iter()
                .map(|f| ferroformer::data::read_text(f))
                .collect::<Result<_, _>>()?;
            Tokenizer::train_char(texts.iter().map(|s| s.as_str()))?
        }
        k => bail!("--kind {k:?}: expected char, bpe or wordpiece"),
    };
    tok.save(&a.out)?;
    if c.json {
        println!(
            "{}",
            serde_json::json!({"path": a.out, "vocab_size": tok.vocab_size()})
        );
    } else {
        println!("wrote {} ({} tokens)", a.out.display(), tok.vocab_size());
    }
    Ok(())
}
