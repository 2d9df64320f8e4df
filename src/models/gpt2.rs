//! GPT-2 (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners"): a stack
//! of pre-norm decoder blocks over token plus learned position embeddings, with the output
//! projection tied to the token embedding. Weight names, shapes (including the `[in, out]`
//! Conv1D orientation) and `config.json` are those of transformers' `GPT2LMHeadModel`.

use super::causal::{CausalConfig, CausalLm};
use super::family::{CausalSupport, Family, Kind, PeftDefaults, Sizes};
use crate::nn::checkpoint;
use crate::nn::{
    sinusoidal_encoding, Activation, CausalSelfAttention, DecoderBlock, Dropout, Embedding,
    FeedForward, KvCache, LayerNorm, LearnedPosition, Linear, ParamStore, PositionEncoding,
    Projection, Segments, VirtualTokens,
};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The GPT-2 family.
pub static FAMILY: Family = Family {
    name: "gpt2",
    model_types: &["gpt2"],
    kind: Kind::Causal,
    hf_class: "GPT2LMHeadModel",
    sequence_classification: Some("GPT2ForSequenceClassification"),
    peft: PeftDefaults {
        lora: &["c_attn"],
        ia3: &["c_attn", "mlp.c_proj"],
        ia3_feedforward: &["mlp.c_proj"],
        ln_tuning: &["ln_1", "ln_2", "ln_f"],
    },
    no_decay: &["wte", "wpe"],
    causal: Some(CausalSupport {
        parse: super::hf::parse::<Gpt2Config>,
        from_sizes,
        normalize_keys,
        gguf: None,
    }),
};

fn default_model_type() -> String {
    "gpt2".into()
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_pdrop() -> f64 {
    0.1
}
fn default_init_range() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}
fn default_position() -> String {
    "learned".into()
}
fn is_learned(s: &String) -> bool {
    s == "learned"
}

/// `config.json` of a GPT-2 model, with transformers' field names and defaults. Keys we do not
/// use are kept and written back unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Feed-forward width; `None` means `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// `"learned"` (GPT-2, the default) or `"sinusoidal"` (fixed; a ferroformer extension that
    /// transformers does not know, so such models load only here).
    #[serde(default = "default_position", skip_serializing_if = "is_learned")]
    pub position_encoding: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Gpt2Config {
    /// A config with the given sizes and GPT-2's other defaults.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Gpt2Config {
            model_type: default_model_type(),
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: default_act(),
            layer_norm_epsilon: default_eps(),
            resid_pdrop: default_pdrop(),
            embd_pdrop: default_pdrop(),
            attn_pdrop: default_pdrop(),
            initializer_range: default_init_range(),
            tie_word_embeddings: true,
            position_encoding: default_position(),
            extra: Default::default(),
        }
    }

    /// The published GPT-2 sizes: `gpt2` (124M), `gpt2-medium`, `gpt2-large`, `gpt2-xl`.
    pub fn named(name: &str) -> Option<Self> {
        let (e, l, h) = match name {
            "gpt2" => (768, 12, 12),
            "gpt2-medium" => (1024, 24, 16),
            "gpt2-large" => (1280, 36, 20),
            "gpt2-xl" => (1600, 48, 25),
            _ => return None,
        };
        Some(Gpt2Config::new(50257, 1024, e, l, h))
    }

    /// Sets every dropout probability to `p`.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.resid_pdrop = p;
        self.embd_pdrop = p;
        self.attn_pdrop = p;
        self
    }

    pub fn n_inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Checks the sizes are consistent.
    pub fn validate(&self) -> Result<()> {
        super::hf::check_sizes(
            &self.model_type,
            &FAMILY,
            &[
                ("vocab_size", self.vocab_size),
                ("n_positions", self.n_positions),
                ("n_embd", self.n_embd),
                ("n_layer", self.n_layer),
                ("n_head", self.n_head),
            ],
        )?;
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::Config(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            )));
        }
        Activation::from_hf(&self.activation_function)?;
        if !matches!(self.position_encoding.as_str(), "learned" | "sinusoidal") {
            return Err(Error::Config(format!(
                "position_encoding must be \"learned\" or \"sinusoidal\", got {:?}",
                self.position_encoding
            )));
        }
        for p in [self.resid_pdrop, self.embd_pdrop, self.attn_pdrop] {
            Dropout::new(p)?;
        }
        Ok(())
    }

    /// Reads `config.json`, naming the file in any error.
    pub fn load(path: &Path) -> Result<Self> {
        super::hf::read_config(path, Self::validate)
    }
}

impl CausalConfig for Gpt2Config {
    fn model_type(&self) -> &str {
        &self.model_type
    }
    fn validate(&self) -> Result<()> {
        Gpt2Config::validate(self)
    }
    fn to_json(&self) -> serde_json::Value {
        super::hf::config_json(self, FAMILY.hf_class, false)
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn max_positions(&self) -> usize {
        self.n_positions
    }
    fn hidden_size(&self) -> usize {
        self.n_embd
    }
    fn num_layers(&self) -> usize {
        self.n_layer
    }
    fn num_heads(&self) -> usize {
        self.n_head
    }
    fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }
    fn set_tie_word_embeddings(&mut self, tie: bool) {
        self.tie_word_embeddings = tie;
    }
    fn extra_mut(&mut self) -> &mut serde_json::Map<String, serde_json::Value> {
        &mut self.extra
    }
    fn uses_dropout(&self) -> bool {
        self.resid_pdrop > 0.0 || self.attn_pdrop > 0.0 || self.embd_pdrop > 0.0
    }
    fn build(&self, store: &mut ParamStore) -> Result<Box<dyn CausalLm>> {
        Ok(Box::new(Gpt2::new(self, store)?))
    }
    fn clone_box(&self) -> Box<dyn CausalConfig> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A fresh GPT-2 of a recipe's sizes.
fn from_sizes(s: &Sizes) -> Result<Box<dyn CausalConfig>> {
    let mut c = Gpt2Config::new(s.vocab_size, s.positions, s.hidden, s.layers, s.heads)
        .with_dropout(s.dropout);
    c.n_inner = s.intermediate;
    c.activation_function = s.activation.clone();
    c.tie_word_embeddings = s.tie_word_embeddings;
    c.position_encoding = s.position_encoding.clone();
    c.layer_norm_epsilon = s.norm_eps;
    c.extra.extend(s.token_ids());
    Ok(Box::new(c))
}

/// The GPT-2 language model.
pub struct Gpt2 {
    pub config: Gpt2Config,
    pub wte: Embedding,
    pub wpe: PositionEncoding,
    pub blocks: Vec<DecoderBlock>,
    pub ln_f: LayerNorm,
    /// The output projection `[vocab, n_embd]`: `lm_head.weight`, or the embedding table when
    /// tied.
    pub lm_head: Projection,
    pub drop: Dropout,
    pub virtual_tokens: VirtualTokens,
}

impl Gpt2 {
    /// Builds the model from `store` (initialising what it does not hold, if it may).
    pub fn new(config: &Gpt2Config, store: &mut ParamStore) -> Result<Self> {
        config.validate()?;
        let c = config;
        let std = c.initializer_range;
        // GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) at initialisation.
        let proj_std = std / (2.0 * c.n_layer as f64).sqrt();
        let wte = Embedding::new(store, "transformer.wte.weight", c.vocab_size, c.n_embd, std)?;
        let wpe = if c.position_encoding == "sinusoidal" {
            PositionEncoding::Sinusoidal(sinusoidal_encoding(
                c.n_positions,
                c.n_embd,
                store.device(),
            )?)
        } else {
            PositionEncoding::Learned(LearnedPosition::new(
                store,
                "transformer.wpe.weight",
                c.n_positions,
                c.n_embd,
                std,
            )?)
        };
        let act = Activation::from_hf(&c.activation_function)?;
        let mut blocks = Vec::with_capacity(c.n_layer);
        let hd = c.n_embd / c.n_head.max(1);
        let virtual_tokens =
            VirtualTokens::from_store(store, c.n_embd, c.n_layer, c.n_head, hd, Some(&wte.weight))?;
        for i in 0..c.n_layer {
            let p = format!("transformer.h.{i}");
            let prefix = virtual_tokens.layer(i).cloned();
            blocks.push(DecoderBlock {
                ln_1: LayerNorm::new(
                    store,
                    &format!("{p}.ln_1"),
                    c.n_embd,
                    c.layer_norm_epsilon,
                    true,
                )?,
                attn: CausalSelfAttention {
                    qkv: Linear::conv1d(
                        store,
                        &format!("{p}.attn.c_attn"),
                        c.n_embd,
                        3 * c.n_embd,
                        std,
                    )?,
                    proj: Linear::conv1d(
                        store,
                        &format!("{p}.attn.c_proj"),
                        c.n_embd,
                        c.n_embd,
                        proj_std,
                    )?,
                    n_head: c.n_head,
                    attn_dropout: Dropout::new(c.attn_pdrop)?,
                    resid_dropout: Dropout::new(c.resid_pdrop)?,
                    prefix,
                },
                ln_2: LayerNorm::new(
                    store,
                    &format!("{p}.ln_2"),
                    c.n_embd,
                    c.layer_norm_epsilon,
                    true,
                )?,
                mlp: FeedForward {
                    fc: Linear::conv1d(
                        store,
                        &format!("{p}.mlp.c_fc"),
                        c.n_embd,
                        c.n_inner(),
                        std,
                    )?,
                    proj: Linear::conv1d(
                        store,
                        &format!("{p}.mlp.c_proj"),
                        c.n_inner(),
                        c.n_embd,
                        proj_std,
                    )?,
                    act,
                },
                mlp_dropout: Dropout::new(c.resid_pdrop)?,
            });
        }
        let ln_f = LayerNorm::new(
            store,
            "transformer.ln_f",
            c.n_embd,
            c.layer_norm_epsilon,
            true,
        )?;
        let head = if c.tie_word_embeddings {
            wte.weight.clone()
        } else {
            store.get(
                "lm_head.weight",
                &[c.vocab_size, c.n_embd],
                crate::nn::Init::Normal(std),
            )?
        };
        Ok(Gpt2 {
            config: c.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            // An [out, in] weight without bias.
            lm_head: Projection::Dense(Linear::plain(head, None, false)),
            drop: Dropout::new(c.embd_pdrop)?,
            virtual_tokens,
        })
    }
}

impl CausalLm for Gpt2 {
    fn config(&self) -> &dyn CausalConfig {
        &self.config
    }

    fn hidden(
        &self,
        ids: &Tensor,
        caches: Option<&mut [KvCache]>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        // Positions start after the cached ones, or after a prefix.
        let offset = self.virtual_tokens.offset(caches.as_deref());
        let tok = self.wte.forward(ids)?;
        let (tok, n_virtual) = self.virtual_tokens.prepend(tok, offset)?;
        let pos = self.wpe.forward(offset, t + n_virtual)?;
        let mut x = tok.broadcast_add(&pos)?;
        x = self.drop.forward(&x, rng.as_deref_mut())?;
        match caches {
            Some(caches) => {
                for (block, cache) in self.blocks.iter().zip(caches.iter_mut()) {
                    x = block.forward(&x, Some(cache), None, rng.as_deref_mut())?;
                }
            }
            None => {
                for block in &self.blocks {
                    let b = block.clone();
                    x = checkpoint::layer(&[&x], rng.as_deref_mut(), move |xs, rng| {
                        b.forward(&xs[0], None, None, rng)
                    })?;
                }
            }
        }
        VirtualTokens::strip(self.ln_f.forward(&x)?, n_virtual)
    }

    fn hidden_packed(
        &self,
        ids: &Tensor,
        segments: &Segments,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        self.virtual_tokens.check_packable()?;
        let x = self
            .wte
            .forward(ids)?
            .broadcast_add(&self.wpe.forward_segments(segments)?)?;
        let mut x = self.drop.forward(&x, rng.as_deref_mut())?;
        for block in &self.blocks {
            let (b, seg) = (block.clone(), segments.clone());
            x = checkpoint::layer(&[&x], rng.as_deref_mut(), move |xs, rng| {
                b.forward(&xs[0], None, Some(&seg), rng)
            })?;
        }
        self.ln_f.forward(&x)
    }

    fn head(&self) -> &Projection {
        &self.lm_head
    }

    fn new_caches(&self) -> Vec<KvCache> {
        vec![KvCache::default(); self.blocks.len()]
    }

    fn max_positions(&self) -> usize {
        self.config
            .n_positions
            .saturating_sub(self.virtual_tokens.len())
    }

    fn device(&self) -> &Device {
        self.wte.weight.device()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Maps the key variants found in real GPT-2 checkpoints onto ours: original OpenAI-converted
/// files lack the `transformer.` prefix and carry `attn.bias`/`attn.masked_bias` mask buffers,
/// which are not parameters. Heads (`lm_head`, a classifier's `score`) keep their names.
pub(crate) fn normalize_keys(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(k, _)| !(k.ends_with(".attn.bias") || k.ends_with(".attn.masked_bias")))
        .map(|(k, t)| {
            if k.starts_with("transformer.") || k.starts_with("lm_head.") || k.starts_with("score.")
            {
                (k, t)
            } else {
                (format!("transformer.{k}"), t)
            }
        })
        .collect()
}
