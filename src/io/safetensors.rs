//! safetensors files: read with errors that name the file, written atomically with the
//! `{"format": "pt"}` metadata that transformers requires.

use crate::io::atomic::write_with;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Loads every tensor of a safetensors file onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and lives only during this call; a concurrent truncation
    // by another process is the usual mmap caveat and is not something we can prevent.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let tensors = candle_core::safetensors::load_buffer(&mmap, device)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    Ok(tensors.into_iter().collect())
}

/// Saves tensors to `path` atomically, in key order, with `format: pt` metadata.
pub fn save(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    // Tensors must be contiguous for their bytes to be viewed directly.
    let owned: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(owned.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
        .map_err(|e| Error::format(path, format!("cannot serialise tensors: {e}")))?;
    write_with(path, |w| std::io::Write::write_all(w, &bytes))
}
