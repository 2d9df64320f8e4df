//! `ferroformer translate`: one input per line on stdin, one output per line on stdout.

use super::Common;
use anyhow::{bail, Result};
use clap::Args;
use std::io::{BufRead, Write};

#[derive(Args, Debug)]
pub struct TranslateArgs {
    /// Sequence-to-sequence model: a run directory of a seq2seq recipe (e.g. g2p-cmudict) or a
    /// Marian directory with tokenizer.json (and target_tokenizer.json). Repeat to decode with
    /// an ensemble (models with the same vocabularies; see --ensemble-mean). Runs trained with
    /// `data.reverse_target` write right to left (their output is turned back); given beside
    /// left-to-right runs, each direction proposes its --beam best outputs and the one with the
    /// highest mean log-probability over all models (each reading it in its own direction,
    /// divided by length^--length-penalty) is written.
    #[arg(long, required = true)]
    pub model: Vec<String>,
    /// Beam width (1: greedy).
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// Beam search: a hypothesis' score is its log-probability / length^this.
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// With several --model: `log` decodes with the renormalised mean of their
    /// log-probabilities (a token must be likely under every model), `prob` with the mean of
    /// their probabilities (fairseq's ensembles). Left-to-right and right-to-left runs together: the
    /// same kind of mean, over whole candidate outputs.
    #[arg(long, default_value = "log")]
    pub ensemble_mean: ferroformer::infer::translate::EnsembleMean,
    /// Inputs decoded together.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Map characters outside the vocabulary to <unk> instead of failing.
    #[arg(long, default_value_t = false)]
    pub allow_unk: bool,
}

pub fn run(a: TranslateArgs, c: &Common) -> Result<()> {
    if a.beam == 0 || a.batch == 0 {
        bail!("--beam and --batch must be positive");
    }
    let t = ferroformer::infer::translate::Translator::load_ensemble(
        &super::model_dirs(&a.model)?,
        &c.device()?,
    )?;
    let opts = ferroformer::infer::translate::DecodeOptions {
        ensemble_mean: a.ensemble_mean,
        ..t.options(a.beam, a.length_penalty)
    };
    let stdin = std::io::stdin();
    let mut lines = vec![];
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("stdin line {}: {e}", i + 1))?;
        lines.push(line.trim().to_string());
    }
    let mut out = std::io::stdout().lock();
    for (ci, chunk) in lines.chunks(a.batch).enumerate() {
        let mut ids = vec![];
        let mut which = vec![];
        for (j, line) in chunk.iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            let n = ci * a.batch + j + 1;
            ids.push(
                t.encode(line, a.allow_unk)
                    .map_err(|e| anyhow::anyhow!("stdin line {n}: {e}"))?,
            );
            which.push(j);
        }
        let mut texts = vec![String::new(); chunk.len()];
        if !ids.is_empty() {
            for (j, (toks, _)) in which.iter().zip(t.translate_ids(&ids, &opts)?) {
                texts[*j] = t.target_text(&toks)?;
            }
        }
        for (j, text) in texts.iter().enumerate() {
            if chunk[j].is_empty() && !c.quiet {
                eprintln!(
                    "note: stdin line {} is empty; its output line is empty",
                    ci * a.batch + j + 1
                );
            }
            writeln!(out, "{text}")?;
        }
    }
    Ok(())
}
