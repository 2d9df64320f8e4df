//! `ferroformer semnet embed`: TransE knowledge-graph embeddings trained through the training
//! engine, then filtered link prediction on the held-out triples.

use super::super::Common;
use super::GraphArg;
use anyhow::{bail, Result};
use clap::Args;
use ferroformer::semnet;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub graph: GraphArg,
    /// Train on this split directory (train.txt, valid.txt, test.txt: head<TAB>relation<TAB>tail)
    /// instead of building one from --graph.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Run directory (model, checkpoints, metrics, the split it built, link_prediction.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the train/valid/test split built from --graph.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Keep only entities in at least this many triples (repeatedly, the k-core) before
    /// splitting; 1 keeps all. WN18 kept well-connected synsets only.
    #[arg(long, default_value_t = 1)]
    pub min_degree: usize,
    /// WordNet: keep triples between synsets of every part of speech, as WN18RR does,
    /// instead of nouns only.
    #[arg(long, default_value_t = false)]
    pub all_pos: bool,
    /// Embedding dimension.
    #[arg(long, default_value_t = 100)]
    pub dim: usize,
    /// Distance: 1 (L1) or 2 (L2).
    #[arg(long, default_value_t = 1)]
    pub norm: u8,
    /// Margin of the ranking loss (6 was best of 1, 2, 4, 6 on WordNet's validation MRR).
    #[arg(long, default_value_t = 6.0)]
    pub margin: f64,
    /// Adam learning rate (betas 0.9, 0.999; constant after a short warmup).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Warmup steps (linear, from 0 to --lr).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Triples per step (each with one corrupted triple).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 10000)]
    pub steps: usize,
    /// Steps between evaluations (and checkpoints).
    #[arg(long, default_value_t = 1000)]
    pub eval_every: usize,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long, default_value_t = false)]
    pub resume: bool,
    /// Only rank the first N test (and validation) triples [default: all].
    #[arg(long)]
    pub rank_limit: Option<usize>,
}

pub fn run(a: EmbedArgs, c: &Common) -> Result<()> {
    let split_dir = match &a.split {
        Some(d) => d.clone(),
        None => {
            let d = a.out.join("data");
            if !(a.resume && d.join("train.txt").exists()) {
                let g = a.graph.open(c)?;
                let (split, report) = semnet::kg::KgSplit::from_graph(
                    &g,
                    &semnet::kg::SplitOptions {
                        seed: a.split_seed,
                        min_degree: a.min_degree,
                        nouns_only: !a.all_pos,
                        ..Default::default()
                    },
                )?;
                split.save(&d)?;
                ferroformer::io::write_json_atomic(&d.join("split.json"), &report)?;
                if c.progress() {
                    eprintln!(
                        "split: {} triples ({} entities, {} relations): {} train, {} valid, {} test; {} valid/test triples dropped for an entity unseen in training -> {}",
                        report.triples, split.entities.len(), split.relations.len(), report.train,
                        report.valid, report.test, report.dropped_unseen, d.display()
                    );
                }
            }
            d
        }
    };
    let seed = c.seed.unwrap_or(0);
    let recipe = format!(
        r#"name = "transe"
objective = "transe"
[data]
corpus = [{corpus}]
[model]
architecture = "transe"
n_embd = {dim}
[transe]
norm = {norm}
margin = {margin}
[train]
out_dir = {out}
steps = {steps}
context = 1
batch_size = {batch}
lr = {lr}
min_lr = {lr}
warmup_steps = {warmup}
weight_decay = 0.0
beta2 = 0.999
grad_clip = 0.0
eval_interval = {every}
eval_iters = 5
seed = {seed}
"#,
        corpus = toml::Value::String(split_dir.display().to_string()),
        dim = a.dim,
        norm = a.norm,
        margin = a.margin,
        out = toml::Value::String(a.out.display().to_string()),
        steps = a.steps,
        batch = a.batch,
        lr = a.lr,
        warmup = a.warmup.min(a.steps),
        every = a.eval_every,
    );
    let recipe =
        ferroformer::train::Recipe::parse(&recipe, &[], std::path::Path::new("semnet embed"))?;
    let (trainer, outcome) = super::super::pretrain::train_one(recipe, a.resume, c)?;
    if let ferroformer::train::Outcome::Interrupted { .. } = outcome {
        return Ok(());
    }
    let Some(ferroformer::tasks::transe::TransETask {
        model,
        split,
        known,
        ..
    }) = trainer.task.as_any().downcast_ref()
    else {
        bail!("not a TransE run");
    };
    model.save_dir(&a.out, &trainer.store, Some(split))?;
    let limit = |v: &[semnet::kg::Triple]| -> Vec<semnet::kg::Triple> {
        v[..a.rank_limit.unwrap_or(v.len()).min(v.len())].to_vec()
    };
    let t = Instant::now();
    // An empty split (a tiny network) has no ranking: null, not an error.
    let rank = |v: &[semnet::kg::Triple]| -> Result<Option<semnet::transe::Ranking>> {
        if v.is_empty() {
            return Ok(None);
        }
        Ok(Some(semnet::transe::rank(model, &limit(v), known)?))
    };
    let (valid, test) = (rank(&split.valid)?, rank(&split.test)?);
    let summary = json!({
        "entities": split.entities.len(), "relations": split.relations.len(),
        "train": split.train.len(), "valid": valid, "test": test, "dim": a.dim, "norm": a.norm,
        "margin": a.margin, "steps": trainer.state.step, "rank_seconds": t.elapsed().as_secs_f64(),
    });
    ferroformer::io::write_json_atomic(&a.out.join("link_prediction.json"), &summary)?;
    if c.json {
        println!("{summary}");
    } else {
        for (name, r) in [("valid", valid), ("test", test)] {
            let Some(r) = r else {
                println!("{name}: no triples");
                continue;
            };
            println!(
                "{name}: filtered MRR {:.4}, mean rank {:.0}, Hits@1 {:.4}, Hits@3 {:.4}, Hits@10 {:.4} ({} queries)",
                r.mrr, r.mean_rank, r.hits1, r.hits3, r.hits10, r.queries
            );
        }
    }
    Ok(())
}
