//! k-fold cross-validation: with `data.folds` >= 2 and no `data.fold`, one run per fold (in
//! `<out_dir>/fold-<k>`, fold `k` held out), and the mean and standard deviation of the folds'
//! final validation scores in `<out_dir>/cv.json`.

use crate::train::{checkpoint, Recipe};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Whether `recipe` asks for one run per fold.
pub fn wanted(recipe: &Recipe) -> bool {
    recipe.data.folds >= 2 && recipe.data.fold.is_none()
}

/// Runs every fold of `recipe` with `run` (given the fold's recipe and whether to resume it;
/// it returns the run's final scores, `None` when it stopped early), then writes `cv.json`.
/// Returns the summary, or `None` when a fold stopped early (run again with resume).
pub fn run_folds(
    recipe: &Recipe,
    resume: bool,
    run: &mut dyn FnMut(Recipe, bool) -> Result<Option<Value>>,
) -> Result<Option<Value>> {
    let k = recipe.data.folds;
    let root = PathBuf::from(&recipe.train.out_dir);
    let mut folds = vec![];
    for i in 0..k {
        let mut r = recipe.clone();
        r.data.fold = Some(i);
        r.train.out_dir = root.join(format!("fold-{i}")).display().to_string();
        // A fold not yet started starts fresh when the others resume.
        let started = !checkpoint::list_checkpoints(Path::new(&r.train.out_dir))?.is_empty();
        let Some(scores) = run(r, resume && started)? else {
            return Ok(None);
        };
        folds.push(scores);
    }
    let stats = |key: &str| -> Result<(f64, f64, Vec<f64>)> {
        let v: Vec<f64> = folds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s[key].as_f64().ok_or_else(|| {
                    Error::Training(format!("fold {i} has no validation {key} to average"))
                })
            })
            .collect::<Result<_>>()?;
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
        Ok((mean, sd, v))
    };
    let (acc, acc_sd, accs) = stats("accuracy")?;
    let (f1, f1_sd, f1s) = stats("macro_f1")?;
    let n: u64 = folds.iter().filter_map(|s| s["n"].as_u64()).sum();
    let summary = json!({
        "folds": k, "mean_accuracy": acc, "sd_accuracy": acc_sd, "mean_macro_f1": f1,
        "sd_macro_f1": f1_sd, "accuracy": accs, "macro_f1": f1s, "n": n,
    });
    crate::io::write_json_atomic(&root.join("cv.json"), &summary)?;
    Ok(Some(summary))
}
