//! What a model family tells the rest of ferroformer about itself: the names it has in
//! transformers, PEFT and llama.cpp, and the functions that read its configurations. Each model
//! file declares one [`Family`]; [`super::registry`] lists them, and everything that needs a
//! family-specific answer (recipes, the trainer, PEFT defaults, GGUF loading, the CLI) asks
//! the registry instead of matching on names.

use super::causal::CausalConfig;
use crate::io::gguf::Gguf;
use crate::io::gguf_write::Metadata;
use crate::Result;
use candle_core::quantized::QTensor;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// What a family's models are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A decoder-only language model (next-token prediction, generation).
    Causal,
    /// A bidirectional text encoder (masked LM, sentence embeddings).
    Encoder,
    /// An encoder-decoder translation model.
    EncoderDecoder,
    /// An image classifier.
    ImageClassifier,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Causal => "causal language model",
            Kind::Encoder => "text encoder",
            Kind::EncoderDecoder => "encoder-decoder model",
            Kind::ImageClassifier => "image classifier",
        }
    }
}

/// PEFT's default `target_modules` for a `model_type` (peft/utils/constants.py), per method.
#[derive(Debug, Clone, Copy)]
pub struct PeftDefaults {
    pub lora: &'static [&'static str],
    pub ia3: &'static [&'static str],
    /// IA3's feed-forward targets (their input is scaled, not their output).
    pub ia3_feedforward: &'static [&'static str],
    pub ln_tuning: &'static [&'static str],
}

/// The sizes of a fresh model, from a recipe's `[model]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    /// Key/value heads (grouped-query attention); `None`: one per query head.
    pub kv_heads: Option<usize>,
    /// Feed-forward width; `None`: the family's usual multiple of `hidden`.
    pub intermediate: Option<usize>,
    pub positions: usize,
    pub activation: String,
    pub dropout: f64,
    pub tie_word_embeddings: bool,
    /// `learned` or `sinusoidal` (GPT-2).
    pub position_encoding: String,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Written as `bos_token_id` / `eos_token_id` (transformers otherwise assumes its own).
    pub eot: Option<u32>,
}

impl Sizes {
    /// SwiGLU's usual width: 8/3 of the model width (the parameters of a 4x GELU MLP), rounded
    /// up to a multiple of 64; or the recipe's.
    pub fn gated_intermediate(&self) -> usize {
        self.intermediate
            .unwrap_or((8 * self.hidden / 3).div_ceil(64) * 64)
    }

    /// `bos_token_id` and `eos_token_id`, written even when unknown (null): transformers
    /// otherwise assumes its family's own ids.
    pub fn token_ids(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("bos_token_id".into(), serde_json::json!(self.eot));
        m.insert("eos_token_id".into(), serde_json::json!(self.eot));
        m
    }
}

/// How a family reads llama.cpp's GGUF files.
pub struct GgufSupport {
    /// `general.architecture` values.
    pub architectures: &'static [&'static str],
    /// The configuration the metadata describes.
    pub config: fn(&Gguf) -> Result<Box<dyn CausalConfig>>,
    /// The Hugging Face key of a llama.cpp tensor name (`None`: not part of this family).
    pub tensor_name: fn(&str) -> Option<String>,
    /// Undoes what llama.cpp's converter did to the tensor with Hugging Face key `hf` (the
    /// rotary row order of Llama's query/key rows, Gemma's norm offset).
    pub transform: fn(&dyn CausalConfig, &str, QTensor) -> Result<QTensor>,
    /// How the family is written as a GGUF file (`None`: not yet).
    pub export: Option<GgufExport>,
}

/// How a family writes llama.cpp's GGUF files: the inverse of the reading side.
pub struct GgufExport {
    /// `general.architecture`.
    pub architecture: &'static str,
    /// The `{architecture}.*` metadata (sizes, rotary, norms) the config describes.
    pub metadata: fn(&dyn CausalConfig) -> Result<Metadata>,
    /// The llama.cpp name of a Hugging Face key (`None`: llama.cpp has no such tensor).
    pub tensor_name: fn(&str) -> Option<String>,
    /// What llama.cpp's converter does to the tensor with Hugging Face key `hf` (the rotary
    /// row order of Llama's query/key rows), on f32 data.
    pub transform: fn(&dyn CausalConfig, &str, Tensor) -> Result<Tensor>,
}

/// What a causal LM family provides beyond its descriptor.
pub struct CausalSupport {
    /// Parses `config.json` (already known to have one of the family's `model_type`s).
    pub parse: fn(serde_json::Value) -> Result<Box<dyn CausalConfig>>,
    /// A fresh model's configuration from a recipe's sizes.
    pub from_sizes: fn(&Sizes) -> Result<Box<dyn CausalConfig>>,
    /// Maps the key variants real checkpoints carry onto the family's own (and drops buffers
    /// that are not parameters).
    pub normalize_keys: fn(BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor>,
    pub gguf: Option<GgufSupport>,
}

/// One model family.
pub struct Family {
    /// The registry name, written as a recipe's `model.architecture`.
    pub name: &'static str,
    /// transformers' `model_type` values it reads (the first is the one it writes).
    pub model_types: &'static [&'static str],
    pub kind: Kind,
    /// transformers' class of the whole model as we save it (`LlamaForCausalLM`, ...).
    pub hf_class: &'static str,
    /// transformers' `*ForSequenceClassification` class, if the family classifies text.
    pub sequence_classification: Option<&'static str>,
    pub peft: PeftDefaults,
    /// Parameter-name fragments exempt from weight decay besides every tensor of rank < 2
    /// (embedding tables).
    pub no_decay: &'static [&'static str],
    pub causal: Option<CausalSupport>,
}

impl Family {
    /// The `model_type` it writes.
    pub fn model_type(&self) -> &'static str {
        self.model_types[0]
    }
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Family({})", self.name)
    }
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
