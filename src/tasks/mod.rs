//! Training tasks, one file each, and their registry. A task owns its data (how it is read,
//! split and sampled), the model it trains (fresh from the recipe's sizes or from
//! `model.init`), the loss of a batch, its extra metrics and what its checkpoints hold; the
//! engine ([`crate::train::Trainer`]) runs any of them. A recipe's `objective` and
//! `model.architecture` are resolved here, before any data is read.
//!
//! This layer sits above the inference pipelines (a sequence-to-sequence run scores greedy
//! outputs while it trains, a classifier its validation set) and above the engine, which
//! therefore imports none of them.

pub mod clm;
pub mod image_classification;
pub mod instruct_mixture;
pub mod mlm;
pub mod seq2seq;
pub mod sft;
pub mod text;
pub mod text_classification;
pub mod throughput;
pub mod transe;

use crate::models::registry;
use crate::train::{Prepared, Recipe, RunStart, Trainer};
use crate::{Error, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// What a task needs to prepare itself.
pub struct Setup<'a> {
    pub recipe: &'a Recipe,
    /// `data.corpus`, assets resolved.
    pub corpus: Vec<PathBuf>,
    /// The model to start from (a checkpoint being resumed, or `model.init`).
    pub from: Option<PathBuf>,
    pub out_dir: &'a Path,
    pub device: &'a Device,
}

/// One training task.
pub struct TaskInfo {
    /// The recipe's `objective`.
    pub objective: &'static str,
    /// What it trains, for messages.
    pub what: &'static str,
    /// The `model.architecture`s it trains.
    pub architectures: fn() -> Vec<&'static str>,
    /// Whether a `[peft]` adapter may be what trains.
    pub adapters: bool,
    /// Checks the recipe's options that matter to this task.
    pub check: fn(&Recipe) -> Result<()>,
    /// Reads the data and builds (or loads) the model.
    pub prepare: fn(&Setup) -> Result<Prepared>,
}

/// Every task.
pub static TASKS: &[&TaskInfo] = &[
    &clm::TASK,
    &sft::TASK,
    &mlm::TASK,
    &seq2seq::TASK,
    &image_classification::TASK,
    &text_classification::TASK,
    &transe::TASK,
];

/// The families of one kind that can do `what`, for `TaskInfo::architectures`.
pub(crate) fn families(keep: fn(&crate::models::Family) -> bool) -> Vec<&'static str> {
    registry::FAMILIES
        .iter()
        .filter(|f| keep(f))
        .map(|f| f.name)
        .collect()
}

/// The validation scores of a classifier (accuracy, macro-F1, confusion matrix) as
/// `confusion.json` and `confusion.png` in `out_dir`; returned as JSON.
pub(crate) fn write_scores(
    out_dir: &Path,
    s: &crate::infer::classify::Scores,
) -> Result<serde_json::Value> {
    crate::io::write_json_atomic(&out_dir.join("confusion.json"), s)?;
    crate::plot::plot_confusion(
        &s.confusion,
        &s.classes,
        &format!(
            "validation set ({}), accuracy {:.2}%, macro-F1 {:.4}",
            s.n,
            100.0 * s.accuracy,
            s.macro_f1
        ),
        &out_dir.join("confusion.png"),
    )?;
    Ok(serde_json::to_value(s).expect("scores serialise"))
}

/// The task a recipe's `objective` and `model.architecture` name; an unknown name or an
/// impossible pair is an error naming the recipe and the valid choices.
pub fn resolve(recipe: &Recipe) -> Result<&'static TaskInfo> {
    let in_recipe = |msg: String| match &recipe.source {
        Some(p) => Error::format(p, msg),
        None => Error::Config(msg),
    };
    let objective = recipe.objective.as_str();
    let arch = recipe.model.architecture.as_str();
    let candidates: Vec<&'static TaskInfo> = TASKS
        .iter()
        .copied()
        .filter(|t| t.objective == objective)
        .collect();
    if candidates.is_empty() {
        let mut known: Vec<&str> = TASKS.iter().map(|t| t.objective).collect();
        known.dedup();
        return Err(in_recipe(format!(
            "objective {objective:?} is not known (known: {})",
            known.join(", ")
        )));
    }
    let all_architectures: Vec<&str> = TASKS.iter().flat_map(|t| (t.architectures)()).collect();
    if !all_architectures.contains(&arch) {
        let mut known: Vec<&str> = registry::FAMILIES.iter().map(|f| f.name).collect();
        known.extend(TASKS.iter().flat_map(|t| (t.architectures)()));
        known.sort();
        known.dedup();
        return Err(in_recipe(format!(
            "model.architecture {arch:?} is not registered (known: {})",
            known.join(", ")
        )));
    }
    let task = candidates
        .iter()
        .find(|t| (t.architectures)().contains(&arch))
        .ok_or_else(|| {
            let fits: Vec<String> = candidates
                .iter()
                .map(|t| format!("{} trains {}", t.what, (t.architectures)().join(", ")))
                .collect();
            in_recipe(format!(
                "objective {objective:?} does not fit model.architecture {arch:?} ({})",
                fits.join("; ")
            ))
        })?;
    if recipe.peft.is_some() && !task.adapters {
        return Err(in_recipe(format!(
            "[peft] adapters train causal language models (objective \"clm\" or \"sft\"); {} is not supported with adapters yet",
            task.what
        )));
    }
    (task.check)(recipe).map_err(|e| in_recipe(e.to_string()))?;
    Ok(task)
}

/// Reads a recipe file, applies `--set` overrides and resolves its task.
pub fn load_recipe(path: &Path, overrides: &[String]) -> Result<Recipe> {
    let recipe = Recipe::load(path, overrides)?;
    resolve(&recipe)?;
    Ok(recipe)
}

/// Prepares a run of `recipe`: its task, data and model, either fresh or (with `resume`) from
/// the newest checkpoint in the recipe's `out_dir`.
pub fn prepare(recipe: Recipe, resume: bool, device: &Device) -> Result<Trainer> {
    let task = resolve(&recipe)?;
    let start = RunStart::open(&recipe, resume)?;
    let from = start.model(&recipe)?;
    if recipe.model.quantized && !from.as_deref().is_some_and(text::is_gguf) {
        return Err(Error::Config(
            "model.quantized needs a .gguf model.init (the base whose matrices stay quantized)"
                .into(),
        ));
    }
    let corpus: Vec<PathBuf> = recipe
        .data
        .corpus
        .iter()
        .map(|c| crate::assets::resolve(c))
        .collect::<Result<_>>()?;
    let prepared = (task.prepare)(&Setup {
        recipe: &recipe,
        corpus,
        from,
        out_dir: &start.out_dir,
        device,
    })?;
    Trainer::new(recipe, start, prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_objective_has_a_task_and_pairs_are_checked() {
        let base = crate::train::recipe::tests::R;
        let p = Path::new("r.toml");
        let r = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Recipe::parse(base, &sets, p).and_then(|r| resolve(&r).map(|t| t.what))
        };
        assert_eq!(r(&[]).unwrap(), clm::TASK.what);
        for arch in ["qwen3", "gemma2", "phi3", "mistral"] {
            let set = format!("model.architecture=\"{arch}\"");
            assert_eq!(r(&[&set]).unwrap(), clm::TASK.what);
        }
        let e = r(&["objective=\"mlm\"", "model.architecture=\"llama\""])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.toml") && e.contains("mlm") && e.contains("bert"),
            "{e}"
        );
        let e = r(&["objective=\"mlm\""]).unwrap_err().to_string();
        assert!(e.contains("bert"), "{e}");
        let e = r(&["model.architecture=\"mamba\""])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mamba") && e.contains("qwen2"), "{e}");
        let e = r(&["objective=\"dpo\""]).unwrap_err().to_string();
        assert!(e.contains("dpo") && e.contains("sft"), "{e}");
        assert_eq!(
            r(&["objective=\"classify\"", "model.architecture=\"vit\""]).unwrap(),
            image_classification::TASK.what
        );
    }
}
