//! `config.json` of the Llama-style families, read once for all of them: the keys they share
//! (sizes, norm epsilon, rotary base, biases, tying) are fields; the keys only some families
//! have (sliding windows, layer types, soft-caps, ...) stay in `extra`, written back
//! unchanged, and the family's [`Variant`] reads them when it describes its [`DecoderSpec`].
//! Also the llama.cpp (GGUF) names and metadata these families share.

use super::causal::{CausalConfig, CausalLm};
use super::decoder::{Decoder, DecoderSpec, LayerType};
use super::family::{Family, Sizes};
use crate::io::gguf::Gguf;
use crate::io::gguf_write::Metadata;
use crate::nn::{Activation, ParamStore, RopeScaling};
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::marker::PhantomData;

/// One Llama-style family: its descriptor and how its config becomes a decoder.
pub trait Variant: std::fmt::Debug + Clone + Default + PartialEq + Send + Sync + 'static {
    fn family() -> &'static Family;
    /// `tie_word_embeddings` when the config does not say (Gemma: tied).
    const TIED_BY_DEFAULT: bool = false;
    /// The decoder `c` describes.
    fn spec(c: &DecoderConfig<Self>) -> Result<DecoderSpec>;
    /// Completes a fresh model's config with the family's own keys.
    fn fresh(_c: &mut DecoderConfig<Self>) {}
}

fn d_positions() -> usize {
    2048
}
fn d_rms_eps() -> f64 {
    1e-6
}
fn d_init_range() -> f64 {
    0.02
}

/// `config.json` of a Llama-style model, with transformers' field names and defaults. Keys not
/// interpreted here are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecoderConfig<V> {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `None` means one per query head.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; `None` means `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// The gate's activation (Gemma names it `hidden_activation`, kept in `extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base; transformers 5 may instead write it inside `rope_parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Biases on the attention projections (absent: none, or what the family fixes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
    #[serde(skip)]
    pub variant: PhantomData<V>,
}

impl<V: Variant> DecoderConfig<V> {
    /// A config with the given sizes and the family's other defaults.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        max_position_embeddings: usize,
    ) -> Self {
        DecoderConfig {
            model_type: V::family().model_type().into(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: None,
            hidden_act: None,
            max_position_embeddings,
            rms_norm_eps: 1e-5,
            rope_theta: Some(10000.0),
            rope_scaling: None,
            attention_bias: None,
            mlp_bias: None,
            tie_word_embeddings: V::TIED_BY_DEFAULT,
            initializer_range: d_init_range(),
            extra: Default::default(),
            variant: PhantomData,
        }
    }

    /// A fresh model's config from a recipe's sizes (gated feed-forward at 8/3 of the width
    /// unless the recipe says otherwise).
    pub fn from_sizes(s: &Sizes) -> Self {
        let mut c = Self::new(
            s.vocab_size,
            s.hidden,
            s.gated_intermediate(),
            s.layers,
            s.heads,
            s.kv_heads.unwrap_or(s.heads),
            s.positions,
        );
        // Named, so families whose default width is their own (Gemma's 256) get the recipe's.
        c.head_dim = Some(s.hidden / s.heads.max(1));
        c.rope_theta = Some(s.rope_theta);
        c.tie_word_embeddings = s.tie_word_embeddings;
        c.rms_norm_eps = s.norm_eps;
        c.extra.extend(s.token_ids());
        // Said, so transformers does not take a family's default (Phi-3's 32000, which a small
        // vocabulary does not have).
        c.extra.insert("pad_token_id".into(), Value::Null);
        V::fresh(&mut c);
        c
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The gate's activation: `hidden_act`, else `hidden_activation`, else `default`.
    pub fn activation(&self, default: &str) -> Result<Activation> {
        let name = self
            .hidden_act
            .as_deref()
            .or_else(|| self.extra_str("hidden_activation"))
            .unwrap_or(default);
        Activation::from_hf(name)
    }

    /// A family-specific key of `extra`.
    pub fn extra_f64(&self, key: &str) -> Option<f64> {
        self.extra.get(key).and_then(Value::as_f64)
    }

    pub fn extra_usize(&self, key: &str) -> Option<usize> {
        self.extra
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
    }

    pub fn extra_bool(&self, key: &str) -> Option<bool> {
        self.extra.get(key).and_then(Value::as_bool)
    }

    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }

    /// The rotary parameters of layers of `kind` (`full_attention`, `sliding_attention`):
    /// transformers 5's `rope_parameters` (per layer kind when nested so, as Gemma 3 writes
    /// it), else `rope_theta` / `rope_scaling`; the base defaults to `default_theta`.
    pub fn rope_parameters(&self, kind: &str, default_theta: f64) -> Result<(f64, RopeScaling)> {
        let params = self
            .extra
            .get("rope_parameters")
            .map(|p| p.get(kind).unwrap_or(p));
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(default_theta);
        let scaling = RopeScaling::from_hf(self.rope_scaling.as_ref().or(params))?;
        Ok((theta, scaling))
    }

    /// The RoPE base of a single-table family.
    pub fn theta(&self) -> f64 {
        self.rope_parameters("full_attention", 10000.0)
            .map(|(t, _)| t)
            .unwrap_or(10000.0)
    }

    /// `layer_types` (`full_attention` / `sliding_attention` per layer), when the config lists
    /// them.
    pub fn layer_types(&self) -> Result<Option<Vec<bool>>> {
        let Some(list) = self.extra.get("layer_types").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let list = list
            .as_array()
            .ok_or_else(|| Error::Config("layer_types must be a list".into()))?;
        if list.len() != self.num_hidden_layers {
            return Err(Error::Config(format!(
                "layer_types lists {} layers, num_hidden_layers is {}",
                list.len(),
                self.num_hidden_layers
            )));
        }
        list.iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                other => Err(Error::Config(format!(
                    "layer type {other:?} is not supported (full_attention, sliding_attention)"
                ))),
            })
            .collect::<Result<Vec<bool>>>()
            .map(Some)
    }

    /// The decoder's sizes from the shared fields, Llama's layout otherwise (every layer
    /// global on one rotary table, attention biases as `attention_bias` says); families
    /// change what differs.
    pub fn base_spec(&self) -> Result<DecoderSpec> {
        check_head_dim(self.hidden_size, self.num_attention_heads, self.head_dim)?;
        Ok(DecoderSpec {
            vocab_size: self.vocab_size,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_dim(),
            max_positions: self.max_position_embeddings,
            norm_eps: self.rms_norm_eps,
            init_std: self.initializer_range,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: self.attention_bias.unwrap_or(false),
            o_bias: self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            ropes: vec![self.rope_parameters("full_attention", 10000.0)?],
            layer_types: DecoderSpec::global_layers(self.num_hidden_layers),
            ..DecoderSpec::default()
        })
    }

    /// Layer types from `sliding`: a window of `window` on the sliding layers, which use
    /// rotary table `local_rope` (the others table 0).
    pub fn windowed_layers(sliding: &[bool], window: usize, local_rope: usize) -> Vec<LayerType> {
        sliding
            .iter()
            .map(|&s| LayerType {
                rope: if s { local_rope } else { 0 },
                window: s.then_some(window),
            })
            .collect()
    }

    /// Reads `config.json`, naming the file in any error.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let v: Value = crate::io::read_json(path)?;
        let c = parse_value::<V>(v).map_err(|e| Error::format(path, e.to_string()))?;
        c.validate()
            .map_err(|e| Error::format(path, e.to_string()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        super::hf::check_sizes(&self.model_type, V::family(), &[])?;
        V::spec(self)?.validate()
    }
}

/// Parses `v` as `V`'s config, `tie_word_embeddings` defaulting as the family does.
fn parse_value<V: Variant>(mut v: Value) -> Result<DecoderConfig<V>> {
    let kind = v
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    if let Some(o) = v.as_object_mut() {
        o.entry("tie_word_embeddings")
            .or_insert(Value::Bool(V::TIED_BY_DEFAULT));
    }
    serde_json::from_value(v).map_err(|e| Error::Config(format!("invalid {kind} config: {e}")))
}

/// The family's `config.json` parser (see [`super::family::CausalSupport::parse`]).
pub fn parse<V: Variant>(v: Value) -> Result<Box<dyn CausalConfig>> {
    Ok(Box::new(parse_value::<V>(v)?))
}

/// A fresh model's config (see [`super::family::CausalSupport::from_sizes`]).
pub fn from_sizes<V: Variant>(s: &Sizes) -> Result<Box<dyn CausalConfig>> {
    Ok(Box::new(DecoderConfig::<V>::from_sizes(s)))
}

impl<V: Variant> CausalConfig for DecoderConfig<V> {
    fn model_type(&self) -> &str {
        &self.model_type
    }
    fn validate(&self) -> Result<()> {
        DecoderConfig::validate(self)
    }
    fn to_json(&self) -> Value {
        super::hf::config_json(self, V::family().hf_class, false)
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }
    fn num_layers(&self) -> usize {
        self.num_hidden_layers
    }
    fn num_heads(&self) -> usize {
        self.num_attention_heads
    }
    fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }
    fn set_tie_word_embeddings(&mut self, tie: bool) {
        self.tie_word_embeddings = tie;
    }
    fn extra_mut(&mut self) -> &mut serde_json::Map<String, Value> {
        &mut self.extra
    }
    fn build(&self, store: &mut ParamStore) -> Result<Box<dyn CausalLm>> {
        self.validate()?;
        let spec = V::spec(self)?;
        Ok(Box::new(Decoder::build(
            &spec,
            Box::new(self.clone()),
            store,
        )?))
    }
    fn clone_box(&self) -> Box<dyn CausalConfig> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Without an explicit `head_dim`, the heads must divide the width.
pub fn check_head_dim(hidden: usize, heads: usize, head_dim: Option<usize>) -> Result<()> {
    if head_dim.is_none() && heads > 0 && !hidden.is_multiple_of(heads) {
        return Err(Error::Config(format!(
            "hidden_size ({hidden}) must be divisible by num_attention_heads ({heads})"
        )));
    }
    Ok(())
}

/// llama.cpp's names of a Llama block's tensors, and the Hugging Face module each is.
pub const GGUF_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The Hugging Face key of a llama.cpp tensor name of a Llama-style decoder whose block
/// tensors are named by `block`.
pub fn gguf_tensor_name(name: &str, block: &[(&str, &str)]) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, hf) = block.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The sizes every llama.cpp decoder architecture writes under `{arch}.*`, as the shared
/// fields of a [`DecoderConfig`] (the family adds its own keys).
pub fn from_gguf<V: Variant>(g: &Gguf) -> Result<DecoderConfig<V>> {
    let arch = g.architecture()?.to_string();
    let k = |name: &str| format!("{arch}.{name}");
    let heads = g.usize(&k("attention.head_count"))?;
    let hidden = g.usize(&k("embedding_length"))?;
    let vocab_size = match g.opt_usize(&k("vocab_size"))? {
        Some(v) => v,
        None => g.str_array("tokenizer.ggml.tokens")?.len(),
    };
    let key_length = g.opt_usize(&k("attention.key_length"))?;
    if let Some(v) = g.opt_usize(&k("attention.value_length"))? {
        if Some(v) != key_length {
            return Err(g.err(format!(
                "attention.value_length {v} differs from attention.key_length {key_length:?}"
            )));
        }
    }
    let head_dim = key_length.filter(|&d| heads == 0 || d != hidden / heads);
    let d = head_dim.unwrap_or(hidden / heads.max(1));
    if let Some(r) = g.opt_usize(&k("rope.dimension_count"))? {
        if r != d {
            return Err(g.err(format!(
                "rotary dimension {r} differs from the head dimension {d}; partial rotary embedding is not supported"
            )));
        }
    }
    let rope_scaling = match g.str(&k("rope.scaling.type")) {
        Err(_) | Ok("none") => None,
        Ok("linear") => {
            let factor = g
                .f64(&k("rope.scaling.factor"))?
                .ok_or_else(|| g.err("linear rope scaling without rope.scaling.factor"))?;
            Some(serde_json::json!({"rope_type": "linear", "factor": factor}))
        }
        Ok(other) => return Err(g.err(format!("rope scaling type {other:?} is not supported"))),
    };
    if g.has_tensor("rope_freqs.weight") {
        return Err(g.err(
            "per-frequency rotary factors (rope_freqs, Llama 3.1 scaling) are not supported yet",
        ));
    }
    let mut c = DecoderConfig::<V>::new(
        vocab_size,
        hidden,
        g.usize(&k("feed_forward_length"))?,
        g.usize(&k("block_count"))?,
        heads,
        g.opt_usize(&k("attention.head_count_kv"))?.unwrap_or(heads),
        g.usize(&k("context_length"))?,
    );
    c.head_dim = head_dim;
    c.rope_theta = g.f64(&k("rope.freq_base"))?;
    c.rope_scaling = rope_scaling;
    if let Some(eps) = g.f64(&k("attention.layer_norm_rms_epsilon"))? {
        c.rms_norm_eps = eps;
    }
    c.tie_word_embeddings = !g.has_tensor("output.weight");
    c.extra.extend(g.special_tokens()?.id_entries());
    Ok(c)
}

/// llama.cpp's name of a Hugging Face key of a Llama-style decoder whose block tensors are
/// named by `block` (the inverse of [`gguf_tensor_name`]).
pub fn gguf_export_name(hf: &str, block: &[(&str, &str)]) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (g, _) = block.iter().find(|(_, h)| *h == part)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// The `{arch}.*` metadata llama.cpp reads for the shared fields of `c` (the inverse of
/// [`from_gguf`]), typed as llama.cpp's converter writes them (counts u32, floats f32).
pub fn to_gguf<V: Variant>(c: &DecoderConfig<V>, arch: &str) -> Result<Metadata> {
    let k = |name: &str| format!("{arch}.{name}");
    let u = |v: usize| -> Result<GgufValue> {
        u32::try_from(v)
            .map(GgufValue::U32)
            .map_err(|_| Error::Config(format!("{v} does not fit GGUF's 32-bit sizes")))
    };
    let (theta, scaling) = c.rope_parameters("full_attention", 10000.0)?;
    let mut m = vec![
        (k("vocab_size"), u(c.vocab_size)?),
        (k("context_length"), u(c.max_position_embeddings)?),
        (k("embedding_length"), u(c.hidden_size)?),
        (k("block_count"), u(c.num_hidden_layers)?),
        (k("feed_forward_length"), u(c.intermediate_size)?),
        (k("attention.head_count"), u(c.num_attention_heads)?),
        (k("attention.head_count_kv"), u(c.kv_heads())?),
        (k("rope.dimension_count"), u(c.head_dim())?),
        (k("attention.key_length"), u(c.head_dim())?),
        (k("attention.value_length"), u(c.head_dim())?),
        (k("rope.freq_base"), GgufValue::F32(theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(c.rms_norm_eps as f32),
        ),
    ];
    match scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            m.push((k("rope.scaling.type"), GgufValue::String("linear".into())));
            m.push((k("rope.scaling.factor"), GgufValue::F32(factor as f32)));
        }
        RopeScaling::Llama3 { .. } => {
            return Err(Error::Config(
                "Llama 3.1 rotary scaling (rope_freqs) cannot be written to GGUF yet".into(),
            ))
        }
    }
    Ok(m)
}

/// `c` checked, errors naming the GGUF file.
pub fn checked<V: Variant>(g: &Gguf, c: DecoderConfig<V>) -> Result<Box<dyn CausalConfig>> {
    c.validate().map_err(|e| g.err(e.to_string()))?;
    Ok(Box::new(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names() {
        assert_eq!(
            gguf_tensor_name("blk.12.attn_q.weight", GGUF_BLOCK).unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            gguf_tensor_name("output_norm.weight", GGUF_BLOCK).unwrap(),
            "model.norm.weight"
        );
        assert!(gguf_tensor_name("blk.x.attn_q.weight", GGUF_BLOCK).is_none());
        assert!(gguf_tensor_name("rope_freqs.weight", GGUF_BLOCK).is_none());
        for name in [
            "blk.3.ffn_down.weight",
            "blk.0.attn_q.bias",
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
        ] {
            let hf = gguf_tensor_name(name, GGUF_BLOCK).unwrap();
            assert_eq!(gguf_export_name(&hf, GGUF_BLOCK).unwrap(), name);
        }
        assert!(
            gguf_export_name("model.layers.0.self_attn.rotary_emb.inv_freq", GGUF_BLOCK).is_none()
        );
    }
}
