//! Whole architectures, one file per family, each declaring a [`Family`] that
//! [`registry::FAMILIES`] lists. Each `Config` mirrors the Hugging Face `config.json` and
//! parameters carry Hugging Face key names, so model directories move between ferroformer and
//! transformers unchanged. Causal LMs of every family are [`CausalModel`]s, chosen by
//! `config.json`'s `model_type`; the Llama-style families share [`decoder::Decoder`].

pub mod bert;
pub mod causal;
pub mod decoder;
pub mod decoder_config;
pub mod family;
pub mod gemma2;
pub mod gemma3;
pub mod gpt2;
pub mod hf;
pub mod llama;
pub mod marian;
pub mod mistral;
pub mod params;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod registry;
pub mod sequence_classifier;
pub mod vit;

pub use causal::{ArchConfig, CausalConfig, CausalLm, CausalModel};
pub use decoder::{Decoder, DecoderSpec};
pub use decoder_config::{DecoderConfig, Variant};
pub use family::{Family, Kind, Sizes};
pub use gpt2::{Gpt2, Gpt2Config};
pub use hf::{load_weights, weight_files};
pub use llama::LlamaConfig;

use crate::nn::ParamStore;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Builds a causal LM of `config` from `tensors` (read from `source`), checking that every
/// tensor is used and every parameter is present, with errors that name both files.
pub fn from_tensors(
    config: &ArchConfig,
    tensors: BTreeMap<String, Tensor>,
    device: &Device,
    source: &Path,
    config_path: &Path,
) -> Result<(CausalModel, ParamStore)> {
    let mut tensors = (config.family().causal()?.normalize_keys)(tensors);
    if config.tie_word_embeddings() {
        // transformers may save the tied head as well; it is the same tensor as the embedding.
        tensors.remove("lm_head.weight");
    }
    hf::build_checked(tensors, device, source, config_path, |s| {
        CausalModel::new(config, s)
    })
}

/// Loads a Hugging Face causal-LM directory (`config.json` + `model.safetensors` or shards);
/// `model_type` chooses the family.
pub fn load_dir(dir: &Path, device: &Device) -> Result<(CausalModel, ParamStore)> {
    let d = hf::ModelDir::open(dir)?;
    let config = ArchConfig::from_json(d.config.clone())
        .map_err(|e| Error::format(&d.config_path, e.to_string()))?;
    let w = d.weights(device)?;
    from_tensors(&config, w.tensors, device, &w.source, &d.config_path)
}

/// Saves `config.json` and `model.safetensors` into `dir` (created if needed), atomically each.
pub fn save_dir(dir: &Path, config: &ArchConfig, store: &ParamStore) -> Result<()> {
    hf::save_dir(dir, &config.to_json(), store)
}
