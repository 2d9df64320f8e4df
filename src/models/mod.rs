//! Whole architectures, one file per family. Each `Config` mirrors the Hugging Face
//! `config.json` and parameters carry Hugging Face key names, so model directories move between
//! ferroformer and transformers unchanged. [`CausalModel`] is any of the causal language models,
//! chosen by `config.json`'s `model_type`.

pub mod bert;
pub mod gpt2;
pub mod llama;
pub mod seq2seq;
pub mod sequence_classifier;
pub mod vit;

pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::{Llama, LlamaConfig};

use crate::io::{read_json, safetensors, write_json_atomic};
use crate::nn::{KvCache, ParamStore, Projection};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `model_type`s [`CausalModel`] loads.
pub const CAUSAL_MODEL_TYPES: &[&str] = &["gpt2", "llama"];

/// The configuration of a causal language model of any supported family.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchConfig {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
}

impl ArchConfig {
    /// Parses a `config.json` value, choosing the family by `model_type`.
    pub fn from_json(v: serde_json::Value) -> Result<Self> {
        let kind = v
            .get("model_type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::Config("no \"model_type\" in the model config".into()))?
            .to_string();
        let parse = |e: serde_json::Error| Error::Config(format!("invalid {kind} config: {e}"));
        let c = match kind.as_str() {
            "gpt2" => ArchConfig::Gpt2(serde_json::from_value(v).map_err(parse)?),
            "llama" => ArchConfig::Llama(serde_json::from_value(v).map_err(parse)?),
            other => {
                return Err(Error::Config(format!(
                    "model_type {other:?} is not supported (supported causal LMs: {})",
                    CAUSAL_MODEL_TYPES.join(", ")
                )))
            }
        };
        c.validate()?;
        Ok(c)
    }

    /// Reads `config.json`, naming the file in any error.
    pub fn load(path: &Path) -> Result<Self> {
        let v: serde_json::Value = read_json(path)?;
        Self::from_json(v).map_err(|e| Error::format(path, e.to_string()))
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            ArchConfig::Gpt2(c) => c.validate(),
            ArchConfig::Llama(c) => c.validate(),
        }
    }

    /// The JSON transformers reads.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ArchConfig::Gpt2(c) => c.to_json(),
            ArchConfig::Llama(c) => c.to_json(),
        }
    }

    pub fn model_type(&self) -> &str {
        match self {
            ArchConfig::Gpt2(c) => &c.model_type,
            ArchConfig::Llama(c) => &c.model_type,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.vocab_size,
            ArchConfig::Llama(c) => c.vocab_size,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_positions,
            ArchConfig::Llama(c) => c.max_position_embeddings,
        }
    }

    /// The width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_embd,
            ArchConfig::Llama(c) => c.hidden_size,
        }
    }

    pub fn set_tie_word_embeddings(&mut self, tie: bool) {
        match self {
            ArchConfig::Gpt2(c) => c.tie_word_embeddings = tie,
            ArchConfig::Llama(c) => c.tie_word_embeddings = tie,
        }
    }

    pub fn tie_word_embeddings(&self) -> bool {
        match self {
            ArchConfig::Gpt2(c) => c.tie_word_embeddings,
            ArchConfig::Llama(c) => c.tie_word_embeddings,
        }
    }

    /// Keys kept from the JSON but not interpreted (token ids, dtype, ...).
    pub fn extra_mut(&mut self) -> &mut serde_json::Map<String, serde_json::Value> {
        match self {
            ArchConfig::Gpt2(c) => &mut c.extra,
            ArchConfig::Llama(c) => &mut c.extra,
        }
    }

    /// The parameter names and shapes of a model with this config, without allocating it.
    pub fn param_shapes(&self) -> Result<BTreeMap<String, Vec<usize>>> {
        match self {
            ArchConfig::Gpt2(c) => gpt2::param_shapes(c),
            ArchConfig::Llama(c) => llama::param_shapes(c),
        }
    }
}

/// A causal language model of any supported family.
pub enum CausalModel {
    Gpt2(Gpt2),
    Llama(Llama),
}

impl CausalModel {
    /// Builds the model from `store` (initialising what it does not hold, if it may).
    pub fn new(config: &ArchConfig, store: &mut ParamStore) -> Result<Self> {
        Ok(match config {
            ArchConfig::Gpt2(c) => CausalModel::Gpt2(Gpt2::new(c, store)?),
            ArchConfig::Llama(c) => CausalModel::Llama(Llama::new(c, store)?),
        })
    }

    /// A freshly initialised model and its parameter store.
    pub fn init(config: &ArchConfig, device: &Device, seed: u64) -> Result<(Self, ParamStore)> {
        let mut store = ParamStore::new_init(device, seed);
        let model = Self::new(config, &mut store)?;
        Ok((model, store))
    }

    /// This model with PEFT adapter directories `(name, dir)` loaded into `store` and applied
    /// (the first one active). On a frozen (inference) store the adapters are frozen too.
    pub fn with_adapters(
        self,
        store: &mut ParamStore,
        adapters: &[(String, std::path::PathBuf)],
    ) -> Result<Self> {
        if adapters.is_empty() {
            return Ok(self);
        }
        for (name, dir) in adapters {
            crate::peft::adapter_io::load_adapter(store, dir, name)?;
        }
        if !store.frozen().is_empty() {
            let all = store.vars().keys().cloned().collect();
            store.freeze(&all)?;
        }
        let model = CausalModel::new(&self.config(), store)?;
        crate::peft::adapter_io::check_adapters_used(store)?;
        Ok(model)
    }

    /// transformers' `model_type`: `gpt2` or `llama`.
    pub fn model_type(&self) -> &'static str {
        match self {
            CausalModel::Gpt2(_) => "gpt2",
            CausalModel::Llama(_) => "llama",
        }
    }

    pub fn config(&self) -> ArchConfig {
        match self {
            CausalModel::Gpt2(m) => ArchConfig::Gpt2(m.config.clone()),
            CausalModel::Llama(m) => ArchConfig::Llama(m.config.clone()),
        }
    }

    /// Final hidden states `[b, t, hidden]` for token ids `[b, t]` (u32). With `caches` (one
    /// per layer) positions continue after the cached ones. `rng` enables dropout (training).
    pub fn hidden(
        &self,
        ids: &Tensor,
        caches: Option<&mut [KvCache]>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        match self {
            CausalModel::Gpt2(m) => m.hidden(ids, caches, rng),
            CausalModel::Llama(m) => m.hidden(ids, caches, rng),
        }
    }

    /// Final hidden states `[b, t, hidden]` of rows holding several examples each, every one
    /// attending only within itself with positions from 0 (as if run alone).
    pub fn hidden_packed(
        &self,
        ids: &Tensor,
        segments: &crate::nn::Segments,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        match self {
            CausalModel::Gpt2(m) => m.hidden_packed(ids, segments, rng),
            CausalModel::Llama(m) => m.hidden_packed(ids, segments),
        }
    }

    /// Projects hidden states onto the vocabulary.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        match self {
            CausalModel::Gpt2(m) => m.logits(h),
            CausalModel::Llama(m) => m.logits(h),
        }
    }

    /// Logits `[b, t, vocab]` for token ids `[b, t]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        caches: Option<&mut [KvCache]>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, caches, rng)?;
        self.logits(&h)
    }

    /// The dense output projection `[vocab, hidden]` (`nn.Linear` orientation), when there is
    /// one (a quantized head has none).
    pub fn head_weight(&self) -> Option<&Tensor> {
        match self {
            CausalModel::Gpt2(m) => Some(m.lm_head.as_ref().unwrap_or(&m.wte.weight)),
            CausalModel::Llama(m) => match &m.lm_head {
                Projection::Dense(l) if l.adapters.is_none() => Some(&l.weight),
                Projection::Dense(_) | Projection::Quantized { .. } => None,
            },
        }
    }

    /// A quantized output projection without adapters, dequantized to f32 (for a training
    /// loss that fuses it with the cross-entropy instead of materialising the logits).
    pub fn dequantized_head(&self) -> Result<Option<Tensor>> {
        match self {
            CausalModel::Llama(m) => match &m.lm_head {
                Projection::Quantized {
                    weight,
                    adapters: None,
                    bias: None,
                } => Ok(Some(weight.dequantize()?)),
                _ => Ok(None),
            },
            CausalModel::Gpt2(_) => Ok(None),
        }
    }

    /// One empty cache per layer.
    pub fn new_caches(&self) -> Vec<KvCache> {
        match self {
            CausalModel::Gpt2(m) => m.new_caches(),
            CausalModel::Llama(m) => m.new_caches(),
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            CausalModel::Gpt2(m) => m.max_positions(),
            CausalModel::Llama(m) => m.max_positions(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            CausalModel::Gpt2(m) => m.config.vocab_size,
            CausalModel::Llama(m) => m.config.vocab_size,
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            CausalModel::Gpt2(m) => m.wte.weight.device(),
            CausalModel::Llama(m) => m.norm.weight.device(),
        }
    }
}

/// How many positions learned virtual tokens (a prompt or a prefix) take.
pub(crate) fn virtual_len(prompt: Option<&Tensor>, prefix: Option<&crate::nn::Prefix>) -> usize {
    prompt.map(|p| p.dim(0).unwrap_or(0)).unwrap_or(0) + prefix.map(|p| p.len()).unwrap_or(0)
}

/// Prompt tuning: `x` `[b, t, h]` with the virtual tokens `prompt` `[n, h]` before it, when
/// there are some and nothing is cached yet; and how many were put there.
pub(crate) fn prepend_prompt(
    x: Tensor,
    prompt: Option<&Tensor>,
    offset: usize,
) -> Result<(Tensor, usize)> {
    match prompt {
        Some(p) if offset == 0 => {
            let (b, _, h) = x.dims3()?;
            let n = p.dim(0)?;
            let p = p.unsqueeze(0)?.broadcast_as((b, n, h))?.contiguous()?;
            Ok((Tensor::cat(&[p, x], 1)?, n))
        }
        _ => Ok((x, 0)),
    }
}

/// The checks every encoder config shares: its `model_type`, positive sizes, and a width the
/// heads divide.
pub(crate) fn check_encoder_sizes(
    model_type: &str,
    expected: &str,
    sizes: &[(&str, usize)],
    hidden: usize,
    heads: usize,
) -> Result<()> {
    if model_type != expected {
        return Err(Error::Config(format!(
            "model_type is {model_type:?}, expected {expected:?}"
        )));
    }
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return Err(Error::Config(format!("{name} must be positive")));
    }
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::Config(format!(
            "hidden_size ({hidden}) must be divisible by num_attention_heads ({heads})"
        )));
    }
    Ok(())
}

/// Reads a `config.json` into `T` and validates it, naming the file in any error.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl Fn(&T) -> Result<()>,
) -> Result<T> {
    let cfg: T = read_json(path)?;
    validate(&cfg).map_err(|e| Error::format(path, e.to_string()))?;
    Ok(cfg)
}

/// `config` as the JSON transformers reads, with `architectures` (kept if the config already
/// names one, unless `replace`).
pub(crate) fn config_json<T: serde::Serialize>(
    config: &T,
    architecture: &str,
    replace: bool,
) -> serde_json::Value {
    let mut v = serde_json::to_value(config).expect("config serialises");
    let obj = v.as_object_mut().expect("a config is an object");
    if replace || !obj.contains_key("architectures") {
        obj.insert("architectures".into(), serde_json::json!([architecture]));
    }
    v
}

/// After building a model from loaded tensors: an error naming both files when an error says
/// the weights do not fit the config.
pub(crate) fn mismatch(e: Error, config_path: &Path) -> Error {
    match e {
        Error::Format { path, msg } => Error::format(
            path,
            format!(
                "{msg} (does {} match these weights?)",
                config_path.display()
            ),
        ),
        e => e,
    }
}

/// Fails when `store` holds tensors the model did not ask for (`used`).
pub(crate) fn check_all_used(
    store: &ParamStore,
    used: &[String],
    source: &Path,
    described_by: &str,
) -> Result<()> {
    let unused = store.unused(used);
    match unused.first() {
        None => Ok(()),
        Some(first) => Err(Error::format(
            source,
            format!(
                "{} tensors not used by the model described in {described_by} (first: {first}); the config does not match the weights",
                unused.len()
            ),
        )),
    }
}

/// The weight files of a model directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(Error::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in this model directory",
        ));
    }
    let v: serde_json::Value = read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(&index, "no \"weight_map\" object"))?;
    let mut files: Vec<String> = map
        .values()
        .map(|f| {
            f.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::format(&index, "weight_map values must be file names"))
        })
        .collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(&f);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::format(
                    &index,
                    format!("lists shard {f}, which is missing"),
                ))
            }
        })
        .collect()
}

/// All tensors of a model directory, by name (shards merged).
pub fn load_weights(dir: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let mut all = BTreeMap::new();
    for f in weight_files(dir)? {
        for (k, t) in safetensors::load(&f, device)? {
            if all.insert(k.clone(), t).is_some() {
                return Err(Error::format(
                    &f,
                    format!("tensor {k} appears in two shards"),
                ));
            }
        }
    }
    Ok(all)
}

/// Builds a model of `config` from `tensors` (read from `source`), checking that every tensor is
/// used and every parameter is present, with errors that name both files.
pub fn from_tensors(
    config: &ArchConfig,
    mut tensors: BTreeMap<String, Tensor>,
    device: &Device,
    source: &Path,
    config_path: &Path,
) -> Result<(CausalModel, ParamStore)> {
    tensors = match config {
        ArchConfig::Gpt2(_) => gpt2::normalize_keys(tensors),
        // Older checkpoints carry rotary frequency buffers; they are not parameters.
        ArchConfig::Llama(_) => tensors
            .into_iter()
            .filter(|(k, _)| !k.ends_with("rotary_emb.inv_freq"))
            .collect(),
    };
    if config.tie_word_embeddings() {
        // transformers may save the tied head as well; it is the same tensor as the embedding.
        tensors.remove("lm_head.weight");
    }
    let mut store = ParamStore::from_tensors(tensors, device, Some(source))?;
    let model = CausalModel::new(config, &mut store).map_err(|e| mismatch(e, config_path))?;
    let used: Vec<String> = config.param_shapes()?.into_keys().collect();
    check_all_used(&store, &used, source, &config_path.display().to_string())?;
    Ok((model, store))
}

/// Loads a Hugging Face causal-LM directory (`config.json` + `model.safetensors` or shards);
/// `model_type` chooses the family.
pub fn load_dir(dir: &Path, device: &Device) -> Result<(CausalModel, ParamStore)> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::format(dir, "no config.json in this model directory"));
    }
    let config = ArchConfig::load(&cfg_path)?;
    let files = weight_files(dir)?;
    let tensors = load_weights(dir, device)?;
    from_tensors(&config, tensors, device, &files[0], &cfg_path)
}

/// Saves `config.json` and `model.safetensors` into `dir` (created if needed), atomically each.
pub fn save_dir(dir: &Path, config: &ArchConfig, store: &ParamStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    safetensors::save(&dir.join("model.safetensors"), &store.tensors())?;
    write_json_atomic(&dir.join("config.json"), &config.to_json())
}
