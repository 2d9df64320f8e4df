//! Run directories and checkpoints.
//!
//! A run directory is itself a Hugging Face model directory (the latest weights, `config.json`,
//! `tokenizer.json`) plus `recipe.toml`, `metrics.jsonl`, `loss.png` and `checkpoint-<step>/`
//! folders, each holding the model, `optimizer.safetensors` and `trainer_state.json`. A
//! checkpoint folder is written under a temporary name and renamed into place, so it is either
//! complete or absent.

use crate::io::{read_json, write_atomic, write_json_atomic};
use crate::nn::ParamStore;
use crate::rng::Rng;
use crate::train::task::Task;
use crate::train::AdamW;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything besides weights and moments needed to continue a run exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Stream for choosing training windows.
    pub data_rng: Rng,
    /// Stream for dropout masks.
    pub dropout_rng: Rng,
    pub tokens_seen: u64,
    pub best_val_loss: Option<f64>,
    /// Training wall time so far, in seconds (excluding time between interruption and resume).
    pub elapsed_s: f64,
    /// Trainable and total parameters (fewer trainable when some are frozen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<crate::peft::TrainableCount>,
}

/// Folders `checkpoint-<step>` in `run`, oldest first.
pub fn list_checkpoints(run: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !run.is_dir() {
        return Ok(vec![]);
    }
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(run)
        .map_err(|e| Error::io(run, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .exists()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// What a checkpoint holds.
pub struct Checkpoint<'a> {
    pub task: &'a dyn Task,
    pub store: &'a ParamStore,
    pub optimizer: &'a AdamW,
    pub state: &'a TrainerState,
    pub recipe_toml: &'a str,
    /// Other files of the model directory, written as they are (name, content).
    pub files: &'a [(String, Vec<u8>)],
    /// An adapter run: the base model's name; the adapter is saved (as PEFT does) instead
    /// of the whole model.
    pub adapter_base: Option<&'a str>,
}

impl Checkpoint<'_> {
    /// Writes the model (or the adapter), its tokenizer and the carried files into `dir`.
    fn save_model(&self, dir: &Path) -> Result<()> {
        match self.adapter_base {
            Some(base) => {
                crate::peft::adapter_io::save_adapter(self.store, "default", dir, Some(base))?;
                if let Some(t) = self.task.tokenizer() {
                    t.save(&dir.join("tokenizer.json"))?;
                }
            }
            None => self.task.save(dir, self.store)?,
        }
        for (name, bytes) in self.files {
            write_atomic(&dir.join(name), bytes)?;
        }
        Ok(())
    }
}

/// Writes `checkpoint-<step>` atomically, refreshes the run directory's model files, and keeps
/// only the newest `keep` checkpoints. Returns the checkpoint folder.
pub fn save(run: &Path, ck: &Checkpoint, keep: usize) -> Result<PathBuf> {
    let step = ck.state.step;
    let final_dir = run.join(format!("checkpoint-{step}"));
    let tmp = run.join(format!(".checkpoint-{step}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    ck.save_model(&tmp)?;
    ck.optimizer
        .save(&tmp.join("optimizer.safetensors"), ck.store)?;
    write_json_atomic(&tmp.join("trainer_state.json"), ck.state)?;
    write_atomic(&tmp.join("recipe.toml"), ck.recipe_toml.as_bytes())?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    if let Ok(d) = std::fs::File::open(run) {
        let _ = d.sync_all();
    }
    ck.save_model(run)?;
    let all = list_checkpoints(run)?;
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
        }
    }
    Ok(final_dir)
}

/// Reads a checkpoint's trainer state.
pub fn load_state(ckpt: &Path) -> Result<TrainerState> {
    read_json(&ckpt.join("trainer_state.json"))
}
