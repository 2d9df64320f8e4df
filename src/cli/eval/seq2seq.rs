//! `ferroformer eval seq2seq`: word and phoneme error rates of sequence-to-sequence runs.

use super::super::Common;
use super::bar;
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct Seq2seqArgs {
    /// A run directory (or checkpoint folder) of a seq2seq recipe. Repeat to score an ensemble
    /// (see --ensemble-mean); the models must share their vocabularies and their recipes' [data]
    /// (the same split; `reverse_target` may differ: right-to-left runs rescore the
    /// left-to-right runs' candidates, see `translate --help`).
    #[arg(long, required = true)]
    pub model: Vec<String>,
    /// The lexicon [default: the recipe's data.corpus].
    #[arg(long)]
    pub data: Option<String>,
    /// train, valid or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Beam width (1: greedy).
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// Beam search length penalty exponent.
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// With several --model: `log` decodes with the renormalised mean of their
    /// log-probabilities (a token must be likely under every model), `prob` with the mean of
    /// their probabilities (fairseq's ensembles). Left-to-right and right-to-left runs together: the
    /// same kind of mean, over whole candidate outputs.
    #[arg(long, default_value = "log")]
    pub ensemble_mean: ferroformer::infer::translate::EnsembleMean,
    /// Words decoded together.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
}

pub fn run(a: Seq2seqArgs, c: &Common) -> Result<()> {
    use ferroformer::eval::seq2seq::{part, run_lexicon, score};
    if a.beam == 0 || a.batch == 0 {
        anyhow::bail!("--beam and --batch must be positive");
    }
    let dirs = super::super::model_dirs(&a.model)?;
    let (lex, data) = run_lexicon(&dirs, a.data.as_deref())?;
    let words = part(&lex, &data, a.split.parse()?);
    if words.is_empty() {
        anyhow::bail!("the {} split is empty", a.split);
    }
    let t = ferroformer::infer::translate::Translator::load_ensemble(&dirs, &c.device()?)?;
    let opts = ferroformer::infer::translate::DecodeOptions {
        ensemble_mean: a.ensemble_mean,
        ..t.options(a.beam, a.length_penalty)
    };
    let bar = bar(c, words.len());
    let start = std::time::Instant::now();
    let r = score(&t, &words, &opts, a.batch, &mut |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    if c.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} words ({} split): WER {:.2}%, PER {:.2}%; without stress WER {:.2}%, PER {:.2}% ({}, {:.1} s)",
            r.n,
            a.split,
            100.0 * r.wer,
            100.0 * r.per,
            100.0 * r.wer_no_stress,
            100.0 * r.per_no_stress,
            if a.beam > 1 {
                format!("beam {}", a.beam)
            } else {
                "greedy".into()
            },
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
