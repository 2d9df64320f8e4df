//! `ferroformer eval choices`: zero-shot multiple choice for chat models.

use super::super::Common;
use super::super::ModelArgs;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

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

pub fn run(a: ChoicesArgs, c: &Common) -> Result<()> {
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
