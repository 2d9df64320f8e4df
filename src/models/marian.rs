//! The encoder-decoder Transformer (Vaswani et al., 2017, "Attention Is All You Need"): an
//! encoder stack reads the source sequence; a decoder stack attends to its own previous outputs
//! (masked self-attention) and to the encoded source (cross-attention) and predicts the next
//! target token. Fixed sinusoidal positions on both sides, post-norm layers, embeddings scaled
//! by `sqrt(d_model)`. Weight names and `config.json` are those of transformers'
//! `MarianMTModel` (Marian / OPUS-MT), so such checkpoints load and ours load in transformers.
//! Source and target may share one vocabulary and embedding (`model.shared`) or have their own.

use super::family::{Family, Kind, PeftDefaults};
use crate::nn::checkpoint;
use crate::nn::{
    sinusoidal_table, Activation, Dropout, Embedding, EncoderLayer, EncoderLayerConfig,
    EncoderLayerNames, Init, KvCache, LayerNorm, Linear, MultiHeadAttention, ParamStore,
    SinusoidLayout,
};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The Marian family.
pub static FAMILY: Family = Family {
    name: "marian",
    model_types: &["marian"],
    kind: Kind::EncoderDecoder,
    hf_class: "MarianMTModel",
    sequence_classification: None,
    peft: PeftDefaults {
        lora: &["q_proj", "v_proj"],
        ia3: &[],
        ia3_feedforward: &[],
        ln_tuning: &[],
    },
    no_decay: &["embed_tokens", "model.shared.weight", "final_logits_bias"],
    causal: None,
};

fn d_marian() -> String {
    "marian".into()
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_drop() -> f64 {
    0.1
}
fn d_true() -> bool {
    true
}
fn d_std() -> f64 {
    0.02
}
fn d_positions() -> usize {
    1024
}

/// Marian's LayerNorm epsilon: fixed (`nn.LayerNorm` default), not in the config.
const LN_EPS: f64 = 1e-5;

/// `config.json` of a `MarianMTModel`, with transformers' names and defaults; other keys are
/// kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MarianConfig {
    #[serde(default = "d_marian")]
    pub model_type: String,
    /// Source vocabulary (and target, when shared).
    pub vocab_size: usize,
    /// Target vocabulary; defaults to `vocab_size`.
    #[serde(default)]
    pub decoder_vocab_size: Option<usize>,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_gelu")]
    pub activation_function: String,
    #[serde(default = "d_drop")]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub activation_dropout: f64,
    #[serde(default = "d_std")]
    pub init_std: f64,
    #[serde(default)]
    pub scale_embedding: bool,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    /// The first decoder input (Marian: the pad id).
    pub decoder_start_token_id: u32,
    #[serde(default = "d_true")]
    pub share_encoder_decoder_embeddings: bool,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl MarianConfig {
    pub fn target_vocab_size(&self) -> usize {
        self.decoder_vocab_size.unwrap_or(self.vocab_size)
    }

    pub fn validate(&self) -> Result<()> {
        super::hf::check_sizes(
            &self.model_type,
            &FAMILY,
            &[
                ("vocab_size", self.vocab_size),
                ("decoder_vocab_size", self.target_vocab_size()),
                ("d_model", self.d_model),
                ("encoder_layers", self.encoder_layers),
                ("decoder_layers", self.decoder_layers),
                ("encoder_ffn_dim", self.encoder_ffn_dim),
                ("decoder_ffn_dim", self.decoder_ffn_dim),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
        )?;
        for (name, h) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if h == 0 || !self.d_model.is_multiple_of(h) {
                return Err(Error::Config(format!(
                    "d_model ({}) must be divisible by {name} ({h})",
                    self.d_model
                )));
            }
        }
        if !self.d_model.is_multiple_of(2) {
            return Err(Error::Config(
                "d_model must be even (sinusoidal positions)".into(),
            ));
        }
        if self.share_encoder_decoder_embeddings
            && self
                .decoder_vocab_size
                .is_some_and(|d| d != self.vocab_size)
        {
            return Err(Error::Config(format!(
                "share_encoder_decoder_embeddings needs decoder_vocab_size ({}) = vocab_size ({})",
                self.target_vocab_size(),
                self.vocab_size
            )));
        }
        let tv = self.target_vocab_size() as u32;
        for (name, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id >= tv {
                return Err(Error::Config(format!(
                    "{name} {id} is outside the target vocabulary of {tv}"
                )));
            }
        }
        Activation::from_hf(&self.activation_function)?;
        Dropout::new(self.dropout)?;
        Dropout::new(self.attention_dropout)?;
        Dropout::new(self.activation_dropout)?;
        Ok(())
    }

    /// Reads `config.json`, naming the file in any error.
    pub fn load(path: &Path) -> Result<Self> {
        super::hf::read_config(path, Self::validate)
    }

    /// The JSON transformers reads.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = super::hf::config_json(self, FAMILY.hf_class, true);
        v["decoder_vocab_size"] = serde_json::json!(self.target_vocab_size());
        v["is_encoder_decoder"] = serde_json::json!(true);
        v
    }
}

/// `LayerNorm(x + dropout(sublayer))`: the post-norm residual step of every sub-layer.
fn residual(
    norm: &LayerNorm,
    x: &Tensor,
    y: &Tensor,
    drop: &Dropout,
    rng: Option<&mut Rng>,
) -> Result<Tensor> {
    norm.forward(&(x + drop.forward(y, rng)?)?)
}

/// The position-wise feed-forward sub-layer `fc2(dropout(act(fc1(x))))`.
#[derive(Clone, Debug)]
struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    act_dropout: Dropout,
}

impl FeedForward {
    fn new(store: &mut ParamStore, p: &str, c: &MarianConfig, ffn: usize) -> Result<Self> {
        let d = c.d_model;
        Ok(FeedForward {
            fc1: Linear::new(store, &format!("{p}.fc1"), d, ffn, true, c.init_std)?,
            fc2: Linear::new(store, &format!("{p}.fc2"), ffn, d, true, c.init_std)?,
            act: Activation::from_hf(&c.activation_function)?,
            act_dropout: Dropout::new(c.activation_dropout)?,
        })
    }

    fn forward(&self, x: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        let h = self.act.forward(&self.fc1.forward(x)?)?;
        self.fc2.forward(&self.act_dropout.forward(&h, rng)?)
    }
}

fn attention(
    store: &mut ParamStore,
    p: &str,
    c: &MarianConfig,
    heads: usize,
) -> Result<MultiHeadAttention> {
    MultiHeadAttention::new(
        store,
        [
            &format!("{p}.q_proj"),
            &format!("{p}.k_proj"),
            &format!("{p}.v_proj"),
            &format!("{p}.out_proj"),
        ],
        c.d_model,
        heads,
        Dropout::new(c.attention_dropout)?,
        c.init_std,
    )
}

fn layer_norm(store: &mut ParamStore, p: &str, c: &MarianConfig) -> Result<LayerNorm> {
    LayerNorm::new(store, p, c.d_model, LN_EPS, true)
}

/// Masked self-attention, cross-attention to the encoder output, then the feed-forward
/// network.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: MultiHeadAttention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
    dropout: Dropout,
}

/// What one decoder layer keeps between generation steps: its self-attention keys and values
/// so far, and the cross-attention keys and values of the encoder output (computed once).
#[derive(Clone, Debug, Default)]
pub struct DecoderCache {
    pub self_kv: KvCache,
    pub cross_kv: Option<(Tensor, Tensor)>,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        enc: &Tensor,
        enc_mask: Option<&Tensor>,
        cache: Option<&mut DecoderCache>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let (self_cache, cross) = match cache {
            Some(c) => {
                if c.cross_kv.is_none() {
                    c.cross_kv = Some(self.encoder_attn.keys_values(enc)?);
                }
                (Some(&mut c.self_kv), c.cross_kv.clone())
            }
            None => (None, None),
        };
        let a = self
            .self_attn
            .self_attention(x, true, None, self_cache, rng.as_deref_mut())?;
        let x = residual(
            &self.self_attn_layer_norm,
            x,
            &a,
            &self.dropout,
            rng.as_deref_mut(),
        )?;
        let c = match cross {
            Some((k, v)) => {
                self.encoder_attn
                    .attend(&x, &k, &v, None, enc_mask, rng.as_deref_mut())?
            }
            None => self
                .encoder_attn
                .attend_full(&x, enc, false, enc_mask, rng.as_deref_mut())?,
        };
        let x = residual(
            &self.encoder_attn_layer_norm,
            &x,
            &c,
            &self.dropout,
            rng.as_deref_mut(),
        )?;
        let f = self.ffn.forward(&x, rng.as_deref_mut())?;
        residual(&self.final_layer_norm, &x, &f, &self.dropout, rng)
    }
}

/// An encoder-decoder Transformer.
pub struct Marian {
    pub config: MarianConfig,
    /// Source token embeddings (the shared table when shared).
    pub encoder_embed: Embedding,
    /// Target token embeddings.
    pub decoder_embed: Embedding,
    /// The output projection `[target vocab, d_model]` (the target embeddings when tied).
    pub lm_head: Tensor,
    /// Added to the logits (`final_logits_bias`, `[1, target vocab]`).
    pub final_logits_bias: Tensor,
    /// Fixed sinusoidal positions `[max_positions, d_model]`.
    positions: Tensor,
    encoder_layers: Vec<EncoderLayer>,
    decoder_layers: Vec<DecoderLayer>,
    embed_scale: f64,
    dropout: Dropout,
}

impl Marian {
    /// Builds the model from `store` (initialising what it does not hold, if it may).
    pub fn new(config: &MarianConfig, store: &mut ParamStore) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (d, std) = (c.d_model, c.init_std);
        let tv = c.target_vocab_size();
        // transformers' nn.Embedding(..., padding_idx=pad): the pad row (also the decoder's
        // start token) starts at zero and gets no gradient from lookups.
        let pad = c.pad_token_id;
        let (encoder_embed, decoder_embed) = if c.share_encoder_decoder_embeddings {
            let shared =
                Embedding::with_padding(store, "model.shared.weight", c.vocab_size, d, std, pad)?;
            (shared.clone(), shared)
        } else {
            (
                Embedding::with_padding(
                    store,
                    "model.encoder.embed_tokens.weight",
                    c.vocab_size,
                    d,
                    std,
                    pad,
                )?,
                Embedding::with_padding(
                    store,
                    "model.decoder.embed_tokens.weight",
                    tv,
                    d,
                    std,
                    pad,
                )?,
            )
        };
        let lm_head = if c.tie_word_embeddings {
            decoder_embed.weight.clone()
        } else {
            store.get("lm_head.weight", &[tv, d], Init::Normal(std))?
        };
        let final_logits_bias = store.get("final_logits_bias", &[1, tv], Init::Zeros)?;
        let dropout = Dropout::new(c.dropout)?;
        let encoder_layer = EncoderLayerConfig {
            hidden: d,
            heads: c.encoder_attention_heads,
            intermediate: c.encoder_ffn_dim,
            act: Activation::from_hf(&c.activation_function)?,
            eps: LN_EPS,
            attention_dropout: c.attention_dropout,
            hidden_dropout: c.dropout,
            activation_dropout: c.activation_dropout,
            std,
            pre_norm: false,
        };
        let encoder_layers = (0..c.encoder_layers)
            .map(|i| {
                let names = EncoderLayerNames::marian(&format!("model.encoder.layers.{i}"));
                EncoderLayer::new(store, &names, &encoder_layer)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut decoder_layers = Vec::with_capacity(c.decoder_layers);
        for i in 0..c.decoder_layers {
            let p = format!("model.decoder.layers.{i}");
            let h = c.decoder_attention_heads;
            decoder_layers.push(DecoderLayer {
                self_attn: attention(store, &format!("{p}.self_attn"), c, h)?,
                self_attn_layer_norm: layer_norm(store, &format!("{p}.self_attn_layer_norm"), c)?,
                encoder_attn: attention(store, &format!("{p}.encoder_attn"), c, h)?,
                encoder_attn_layer_norm: layer_norm(
                    store,
                    &format!("{p}.encoder_attn_layer_norm"),
                    c,
                )?,
                ffn: FeedForward::new(store, &p, c, c.decoder_ffn_dim)?,
                final_layer_norm: layer_norm(store, &format!("{p}.final_layer_norm"), c)?,
                dropout,
            });
        }
        let positions = sinusoidal_table(
            c.max_position_embeddings,
            d,
            SinusoidLayout::Halves,
            store.device(),
        )?;
        Ok(Marian {
            config: c.clone(),
            encoder_embed,
            decoder_embed,
            lm_head,
            final_logits_bias,
            positions,
            encoder_layers,
            decoder_layers,
            embed_scale: if c.scale_embedding {
                (d as f64).sqrt()
            } else {
                1.0
            },
            dropout,
        })
    }

    /// A freshly initialised model and its parameter store.
    pub fn init(config: &MarianConfig, device: &Device, seed: u64) -> Result<(Self, ParamStore)> {
        super::hf::init(device, seed, |s| Marian::new(config, s))
    }

    pub fn device(&self) -> &Device {
        self.lm_head.device()
    }

    /// Token embeddings scaled, plus positions `start..start + t`.
    fn embed(
        &self,
        table: &Embedding,
        ids: &Tensor,
        start: usize,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if start + t > self.config.max_position_embeddings {
            return Err(Error::Data(format!(
                "{} positions exceed the model's {}",
                start + t,
                self.config.max_position_embeddings
            )));
        }
        let x = (table.forward(ids)? * self.embed_scale)?;
        let x = x.broadcast_add(&self.positions.narrow(0, start, t)?)?;
        self.dropout.forward(&x, rng)
    }

    /// The additive mask `[b, 1, 1, s]` of a `[b, s]` 0/1 source mask (padded keys get the
    /// dtype's minimum, as transformers).
    pub fn source_mask(mask: &Tensor) -> Result<Tensor> {
        super::bert::Bert::additive_mask(mask)
    }

    /// Encoder output `[b, s, d]` for source ids `[b, s]` (u32); `mask` is the additive source
    /// mask of [`Marian::source_mask`]. `rng` enables dropout.
    pub fn encode(
        &self,
        src: &Tensor,
        mask: Option<&Tensor>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let mut x = self.embed(&self.encoder_embed, src, 0, rng.as_deref_mut())?;
        for layer in &self.encoder_layers {
            let (l, mask) = (layer.clone(), mask.cloned());
            x = checkpoint::layer(&[&x], rng.as_deref_mut(), move |xs, rng| {
                l.forward(&xs[0], mask.as_ref(), rng)
            })?;
        }
        Ok(x)
    }

    /// Decoder hidden states `[b, t, d]` for target ids `[b, t]` given the encoder output. With
    /// `caches` (one per decoder layer), positions continue after the cached ones and the
    /// encoder keys/values are computed once.
    pub fn decode(
        &self,
        tgt: &Tensor,
        enc: &Tensor,
        enc_mask: Option<&Tensor>,
        mut caches: Option<&mut [DecoderCache]>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let start = caches
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.self_kv.len())
            .unwrap_or(0);
        let mut x = self.embed(&self.decoder_embed, tgt, start, rng.as_deref_mut())?;
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            match caches.as_deref_mut() {
                Some(c) => {
                    x = layer.forward(&x, enc, enc_mask, Some(&mut c[i]), rng.as_deref_mut())?;
                }
                None => {
                    let (l, mask) = (layer.clone(), enc_mask.cloned());
                    x = checkpoint::layer(&[&x, enc], rng.as_deref_mut(), move |xs, rng| {
                        l.forward(&xs[0], &xs[1], mask.as_ref(), None, rng)
                    })?;
                }
            }
        }
        Ok(x)
    }

    /// Logits over the target vocabulary of decoder states `[.., d]`.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let dims = h.dims().to_vec();
        let d = *dims.last().expect("hidden states have a last dimension");
        let flat = h.reshape(((), d))?;
        let l = flat
            .matmul(&self.lm_head.t()?)?
            .broadcast_add(&self.final_logits_bias)?;
        let mut out = dims;
        *out.last_mut().expect("non-empty") = self.config.target_vocab_size();
        Ok(l.reshape(out)?)
    }

    /// One empty cache per decoder layer.
    pub fn new_caches(&self) -> Vec<DecoderCache> {
        vec![DecoderCache::default(); self.decoder_layers.len()]
    }
}

/// Keys of a checkpoint that are not parameters: tied copies of the shared embedding and the
/// fixed position tables (older conversions save them).
fn normalize_keys(
    config: &MarianConfig,
    tensors: BTreeMap<String, Tensor>,
) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(k, _)| {
            let tied_copy = config.share_encoder_decoder_embeddings
                && (k == "model.encoder.embed_tokens.weight"
                    || k == "model.decoder.embed_tokens.weight");
            !(k.ends_with("embed_positions.weight")
                || tied_copy
                || (config.tie_word_embeddings && k == "lm_head.weight"))
        })
        .collect()
}

/// Loads a Hugging Face `MarianMTModel` directory.
pub fn load_dir(dir: &Path, device: &Device) -> Result<(Marian, ParamStore)> {
    let d = super::hf::ModelDir::open(dir)?;
    let config: MarianConfig = d.parse_config(MarianConfig::validate)?;
    let mut w = d.weights(device)?;
    w.tensors = normalize_keys(&config, w.tensors);
    if !w.tensors.contains_key("final_logits_bias") {
        // A buffer transformers zero-fills when a file lacks it.
        let tv = config.target_vocab_size();
        w.tensors.insert(
            "final_logits_bias".into(),
            Tensor::zeros((1, tv), DType::F32, device)?,
        );
    }
    d.build(w, device, |s| Marian::new(&config, s))
}

/// Parameter names and shapes, without allocating.
pub fn param_shapes(config: &MarianConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    super::hf::param_shapes(|s| Marian::new(config, s).map(|_| ()))
}

/// Saves `config.json` and `model.safetensors`.
pub fn save_dir(dir: &Path, model: &Marian, store: &ParamStore) -> Result<()> {
    super::hf::save_dir(dir, &model.config.to_json(), store)
}
