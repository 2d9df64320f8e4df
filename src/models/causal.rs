//! Causal language models of any family behind two traits: [`CausalConfig`] (a family's
//! `config.json`) and [`CausalLm`] (the model built from it). The engine, generation,
//! evaluation and PEFT see only [`ArchConfig`] and [`CausalModel`], which wrap them.

use crate::nn::{KvCache, ParamStore, Projection, Segments};
use crate::rng::Rng;
use crate::Result;
use candle_core::{Device, Tensor};
use std::any::Any;
use std::collections::BTreeMap;

/// A causal LM family's configuration: the fields of its `config.json` (unknown keys kept and
/// written back), and how to build the model it describes.
pub trait CausalConfig: std::fmt::Debug + Send + Sync + 'static {
    /// The `model_type` as read (a family may read several); the registry knows its family.
    fn model_type(&self) -> &str;
    /// Checks the sizes and options are consistent and supported.
    fn validate(&self) -> Result<()>;
    /// The JSON transformers reads (with `architectures`).
    fn to_json(&self) -> serde_json::Value;
    fn vocab_size(&self) -> usize;
    /// Maximum positions (context length).
    fn max_positions(&self) -> usize;
    /// The width of the hidden states.
    fn hidden_size(&self) -> usize;
    fn num_layers(&self) -> usize;
    fn num_heads(&self) -> usize;
    fn tie_word_embeddings(&self) -> bool;
    fn set_tie_word_embeddings(&mut self, tie: bool);
    /// Keys kept from the JSON but not interpreted (token ids, dtype, ...).
    fn extra_mut(&mut self) -> &mut serde_json::Map<String, serde_json::Value>;
    /// Whether training draws dropout masks.
    fn uses_dropout(&self) -> bool {
        false
    }
    /// The model, its parameters taken from `store` (initialised there if it may).
    fn build(&self, store: &mut ParamStore) -> Result<Box<dyn CausalLm>>;
    fn clone_box(&self) -> Box<dyn CausalConfig>;
    fn as_any(&self) -> &dyn Any;
}

/// A causal language model: what training, generation, evaluation and PEFT need of it.
pub trait CausalLm: Send + Sync {
    fn config(&self) -> &dyn CausalConfig;
    /// Final hidden states `[b, t, hidden]` for token ids `[b, t]` (u32). With `caches` (one
    /// per layer) positions continue after the cached ones. `rng` enables dropout (training).
    fn hidden(
        &self,
        ids: &Tensor,
        caches: Option<&mut [KvCache]>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor>;
    /// Final hidden states `[b, 1, hidden]` of one new token per row (`ids[r]`), row `r`
    /// continuing its own sequence with its own caches (`caches[r]`, one per layer): the
    /// decode step of continuous batching. Each row equals `hidden` on it alone; families
    /// that batch the projections override the default, which runs the rows one by one.
    fn hidden_rows(&self, ids: &[u32], caches: &mut [Vec<KvCache>]) -> Result<Tensor> {
        hidden_rows_one_by_one(self, ids, caches)
    }
    /// Final hidden states `[b, t, hidden]` of rows holding several examples each, every one
    /// attending only within itself with positions from 0 (as if run alone).
    fn hidden_packed(
        &self,
        ids: &Tensor,
        segments: &Segments,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor>;
    /// The output projection onto the vocabulary.
    fn head(&self) -> &Projection;
    /// Final-logit soft-capping (`cap * tanh(logits / cap)`, Gemma 2), if any.
    fn logit_softcap(&self) -> Option<f64> {
        None
    }
    /// One empty cache per layer.
    fn new_caches(&self) -> Vec<KvCache>;
    /// Positions left for the input (learned virtual tokens take some).
    fn max_positions(&self) -> usize;
    fn device(&self) -> &Device;
    fn as_any(&self) -> &dyn Any;
}

/// [`CausalLm::hidden_rows`] computed row by row.
pub fn hidden_rows_one_by_one<M: CausalLm + ?Sized>(
    model: &M,
    ids: &[u32],
    caches: &mut [Vec<KvCache>],
) -> Result<Tensor> {
    let rows = ids
        .iter()
        .zip(caches.iter_mut())
        .map(|(&id, c)| {
            let x = Tensor::new(&[id], model.device())?.unsqueeze(0)?;
            model.hidden(&x, Some(c), None)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

/// The configuration of a causal language model of any registered family.
#[derive(Debug)]
pub struct ArchConfig(Box<dyn CausalConfig>);

impl Clone for ArchConfig {
    fn clone(&self) -> Self {
        ArchConfig(self.0.clone_box())
    }
}

impl PartialEq for ArchConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.model_type() == other.0.model_type() && self.0.to_json() == other.0.to_json()
    }
}

impl std::ops::Deref for ArchConfig {
    type Target = dyn CausalConfig;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::ops::DerefMut for ArchConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.0
    }
}

impl ArchConfig {
    /// Wraps a family's configuration, validating it.
    pub fn new(config: impl CausalConfig) -> Result<Self> {
        Self::from_box(Box::new(config))
    }

    pub fn from_box(config: Box<dyn CausalConfig>) -> Result<Self> {
        config.validate()?;
        Ok(ArchConfig(config))
    }

    /// The family's own configuration type (`LlamaConfig`, ...), if it is that one.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// The parameter names and shapes of a model with this config, without allocating it.
    pub fn param_shapes(&self) -> Result<BTreeMap<String, Vec<usize>>> {
        let mut store = ParamStore::new_shapes();
        self.0.build(&mut store)?;
        Ok(store.shapes().cloned().unwrap_or_default())
    }
}

/// A causal language model of any registered family.
pub struct CausalModel(Box<dyn CausalLm>);

impl CausalModel {
    /// Builds the model from `store` (initialising what it does not hold, if it may).
    pub fn new(config: &ArchConfig, store: &mut ParamStore) -> Result<Self> {
        Ok(CausalModel(config.0.build(store)?))
    }

    /// A freshly initialised model and its parameter store.
    pub fn init(config: &ArchConfig, device: &Device, seed: u64) -> Result<(Self, ParamStore)> {
        let mut store = ParamStore::new_init(device, seed);
        let model = Self::new(config, &mut store)?;
        Ok((model, store))
    }

    /// transformers' `model_type` (as the config read it).
    pub fn model_type(&self) -> &str {
        self.0.config().model_type()
    }

    pub fn config(&self) -> ArchConfig {
        ArchConfig(self.0.config().clone_box())
    }

    /// The family's own model type (`Decoder`, `Gpt2`), if it is that one.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// See [`CausalLm::hidden`].
    pub fn hidden(
        &self,
        ids: &Tensor,
        caches: Option<&mut [KvCache]>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        self.0.hidden(ids, caches, rng)
    }

    /// See [`CausalLm::hidden_rows`].
    pub fn hidden_rows(&self, ids: &[u32], caches: &mut [Vec<KvCache>]) -> Result<Tensor> {
        let layers = self.0.config().num_layers();
        if ids.is_empty() || ids.len() != caches.len() || caches.iter().any(|c| c.len() != layers) {
            return Err(crate::Error::Config(format!(
                "a decode step needs one token and one cache per layer ({layers}) for each row: got {} tokens and {} caches",
                ids.len(),
                caches.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(crate::Error::Config(format!(
                "token id {bad} is outside the model's vocabulary"
            )));
        }
        self.0.hidden_rows(ids, caches)
    }

    /// See [`CausalLm::hidden_packed`].
    pub fn hidden_packed(
        &self,
        ids: &Tensor,
        segments: &Segments,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        self.0.hidden_packed(ids, segments, rng)
    }

    /// Projects hidden states onto the vocabulary.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let logits = self.0.head().forward(h)?;
        Ok(match self.0.logit_softcap() {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
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

    /// The dense output projection `[vocab, hidden]` (`nn.Linear` orientation) when the logits
    /// are nothing but its product (no adapters on it, no soft-capping), for a training loss
    /// that fuses it with the cross-entropy.
    pub fn head_weight(&self) -> Option<&Tensor> {
        match (self.0.head(), self.0.logit_softcap()) {
            (Projection::Dense(l), None) if l.adapters.is_none() && !l.in_out => Some(&l.weight),
            _ => None,
        }
    }

    /// A quantized output projection without adapters or bias, dequantized to f32 (for the
    /// same fused loss instead of materialising the logits).
    pub fn dequantized_head(&self) -> Result<Option<Tensor>> {
        match (self.0.head(), self.0.logit_softcap()) {
            (
                Projection::Quantized {
                    weight,
                    adapters: None,
                    bias: None,
                },
                None,
            ) => Ok(Some(weight.dequantize()?)),
            _ => Ok(None),
        }
    }

    /// One empty cache per layer.
    pub fn new_caches(&self) -> Vec<KvCache> {
        self.0.new_caches()
    }

    pub fn max_positions(&self) -> usize {
        self.0.max_positions()
    }

    pub fn vocab_size(&self) -> usize {
        self.0.config().vocab_size()
    }

    pub fn uses_dropout(&self) -> bool {
        self.0.config().uses_dropout()
    }

    pub fn device(&self) -> &Device {
        self.0.device()
    }
}
