//! `ferroformer eval prototypes`: few-shot classifiers on sentence embeddings.

use super::super::Common;
use super::bar;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

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

pub fn run(a: PrototypesArgs, c: &Common) -> Result<()> {
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
