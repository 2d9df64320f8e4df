//! `ferroformer eval fewshot`: in-context few-shot evaluation as lm-evaluation-harness does it.

use super::super::Common;
use super::super::ModelArgs;
use super::bar;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

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

pub fn run(a: FewshotArgs, c: &Common) -> Result<()> {
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
