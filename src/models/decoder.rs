//! The decoder-only Transformer of Llama (Touvron et al., 2023) and of the families that vary
//! it: pre-norm RMSNorm layers, rotary positions, grouped-query attention and a gated
//! feed-forward network. Mistral adds sliding-window attention; Qwen 2 biases on q/k/v; Qwen 3
//! and Gemma 3 normalise queries and keys per head; Gemma 2 and 3 scale the embeddings, wrap
//! both sub-layers in norms, soft-cap scores and logits and mix local and global layers;
//! Phi-3 fuses q/k/v and gate/up into single matrices. A family file describes its variant
//! as a [`DecoderSpec`]; this file builds and runs all of them, with Hugging Face key names
//! (`model.layers.N.self_attn.q_proj`, ...), so no family needs a renaming table.
//!
//! Every projection is a [`Projection`]: dense and trainable when the weights come from
//! safetensors, or kept in a llama.cpp quantized format for inference on GGUF checkpoints.

use super::causal::{CausalConfig, CausalLm};
use crate::nn::attention::{KvCache, Segments};
use crate::nn::checkpoint;
use crate::nn::{
    Activation, Embedding, GateUp, GatedMlp, Init, ParamStore, Projection, Qkv, QuantWeights,
    QuantizedWeight, RmsNorm, Rope, RopeScaling, RotaryAttention, TokenEmbedding, VirtualTokens,
};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// What kind of attention a layer has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerType {
    /// Index into [`DecoderSpec::ropes`].
    pub rope: usize,
    /// Sliding-window attention: a query sees the `window` latest positions, itself included.
    pub window: Option<usize>,
}

/// One decoder variant, as a family's configuration describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub norm_eps: f64,
    /// Norms scale by `1 + weight` (Gemma), their weights starting at zero.
    pub unit_offset_norms: bool,
    pub init_std: f64,
    pub tie_word_embeddings: bool,
    /// Biases on the query, key and value projections (Qwen 2, Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm of each query and key head before the rotation (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// The gate's activation (SwiGLU: silu; GeGLU: gelu).
    pub activation: Activation,
    /// The embeddings are multiplied by this (Gemma: `sqrt(hidden)`).
    pub embed_scale: Option<f64>,
    /// The scores' scale when it is not `1 / sqrt(head_dim)` (Gemma's
    /// `query_pre_attn_scalar ^ -0.5`).
    pub query_scale: Option<f64>,
    /// `cap * tanh(scores / cap)` before the mask (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// `cap * tanh(logits / cap)` (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Norms after attention and around the feed-forward network (Gemma 2 and 3):
    /// `post_attention_layernorm` on the attention's output, then
    /// `pre_feedforward_layernorm` and `post_feedforward_layernorm`; otherwise
    /// `post_attention_layernorm` is the feed-forward network's input norm.
    pub sandwich_norms: bool,
    /// One `qkv_proj` matrix (Phi-3) instead of `q_proj`, `k_proj`, `v_proj`.
    pub fused_qkv: bool,
    /// One `gate_up_proj` matrix (Phi-3) instead of `gate_proj`, `up_proj`.
    pub fused_gate_up: bool,
    /// Rotary tables: base and scaling.
    pub ropes: Vec<(f64, RopeScaling)>,
    /// One per layer.
    pub layer_types: Vec<LayerType>,
}

impl Default for DecoderSpec {
    /// Llama's layout with no sizes: every option off, SwiGLU, one rotary table of base
    /// 10000, no layers.
    fn default() -> Self {
        DecoderSpec {
            vocab_size: 0,
            hidden: 0,
            intermediate: 0,
            layers: 0,
            heads: 0,
            kv_heads: 0,
            head_dim: 0,
            max_positions: 0,
            norm_eps: 1e-6,
            unit_offset_norms: false,
            init_std: 0.02,
            tie_word_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            activation: Activation::Silu,
            embed_scale: None,
            query_scale: None,
            attn_softcap: None,
            final_softcap: None,
            sandwich_norms: false,
            fused_qkv: false,
            fused_gate_up: false,
            ropes: vec![(10000.0, RopeScaling::None)],
            layer_types: vec![],
        }
    }
}

impl DecoderSpec {
    /// `n` global layers on rotary table 0.
    pub fn global_layers(n: usize) -> Vec<LayerType> {
        vec![
            LayerType {
                rope: 0,
                window: None
            };
            n
        ]
    }

    /// Checks sizes the layers rely on.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden),
            ("intermediate_size", self.intermediate),
            ("num_hidden_layers", self.layers),
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_positions),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::Config(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.heads, self.kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "rotary embedding needs an even head dimension, got {}",
                self.head_dim
            )));
        }
        if self.layer_types.len() != self.layers {
            return Err(Error::Config(format!(
                "{} layer types for {} layers",
                self.layer_types.len(),
                self.layers
            )));
        }
        for l in &self.layer_types {
            if l.rope >= self.ropes.len() {
                return Err(Error::Config("a layer names a missing rotary table".into()));
            }
            if l.window == Some(0) {
                return Err(Error::Config("sliding_window must be positive".into()));
            }
        }
        for (name, cap) in [
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
        ] {
            if cap.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        Ok(())
    }
}

/// One decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`; with sandwich norms,
/// each sub-layer's output is normalised too before it is added.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: RotaryAttention,
    pub post_attention_layernorm: RmsNorm,
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    pub post_feedforward_layernorm: Option<RmsNorm>,
    pub mlp: GatedMlp,
}

impl DecoderLayer {
    pub fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        segments: Option<&Segments>,
    ) -> Result<Tensor> {
        self.around_attention(x, |h| self.self_attn.forward(h, cache, segments))
    }

    /// One new token per row, each row with its own caches (see
    /// [`RotaryAttention::forward_rows`]).
    pub fn forward_rows(&self, x: &Tensor, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        self.around_attention(x, |h| self.self_attn.forward_rows(h, caches))
    }

    /// The layer with `attend` as its attention sub-layer.
    fn around_attention(
        &self,
        x: &Tensor,
        attend: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let a = attend(&self.input_layernorm.forward(x)?)?;
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let x = (x + self.post_attention_layernorm.forward(&a)?)?;
                let m = post.forward(&self.mlp.forward(&pre.forward(&x)?)?)?;
                Ok((x + m)?)
            }
            _ => {
                let x = (x + a)?;
                let m = self
                    .mlp
                    .forward(&self.post_attention_layernorm.forward(&x)?)?;
                Ok((x + m)?)
            }
        }
    }
}

/// Builds projections from the store's quantized weights when they hold the key, else from
/// its parameters. It takes the quantized weights out of the store while building, so that
/// a matrix replaced by a view of a stacked one ([`Source::replace`]) is freed at once, and
/// gives them back (as the model holds them) when dropped, whether the build succeeded or not.
struct Source<'a> {
    store: &'a mut ParamStore,
    /// Quantized weights not used yet, and those used.
    quant: QuantWeights,
    used: QuantWeights,
    std: f64,
}

impl Drop for Source<'_> {
    fn drop(&mut self) {
        let mut q = std::mem::take(&mut self.quant);
        q.append(&mut self.used);
        self.store.set_quantized(q);
    }
}

impl<'a> Source<'a> {
    fn new(store: &'a mut ParamStore, std: f64) -> Self {
        let quant = std::mem::take(store.quantized_mut());
        Source {
            store,
            quant,
            used: QuantWeights::new(),
            std,
        }
    }

    /// The quantized weight of `key` (unused or used).
    fn quantized(&self, key: &str) -> Option<&QuantizedWeight> {
        self.quant.get(key).or_else(|| self.used.get(key))
    }

    /// Records that projection `prefix` now holds `p`'s weight (a view of a stacked matrix).
    fn replace(&mut self, prefix: &str, p: &Projection) {
        if let Projection::Quantized { weight, .. } = p {
            self.used.insert(format!("{prefix}.weight"), weight.clone());
        }
    }

    fn proj(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Projection> {
        let key = format!("{prefix}.weight");
        if let Some(q) = self.quant.remove(&key) {
            let q = self.used.entry(key.clone()).or_insert(q);
            if q.dims() != [d_out, d_in] {
                return Err(Error::Config(format!(
                    "quantized parameter {key} has shape {:?} but the configuration needs {:?}",
                    q.dims(),
                    [d_out, d_in]
                )));
            }
            let bias = if bias {
                Some(
                    self.store
                        .get(&format!("{prefix}.bias"), &[d_out], Init::Zeros)?,
                )
            } else {
                None
            };
            let q = q.clone();
            return Projection::quantized(self.store, prefix, q, bias);
        }
        Projection::linear(self.store, prefix, d_in, d_out, bias, self.std)
    }

    fn norm(&mut self, prefix: &str, dim: usize, spec: &DecoderSpec) -> Result<RmsNorm> {
        if spec.unit_offset_norms {
            RmsNorm::with_unit_offset(self.store, prefix, dim, spec.norm_eps)
        } else {
            RmsNorm::new(self.store, prefix, dim, spec.norm_eps)
        }
    }
}

/// A decoder-only language model of any of the Llama-style families.
pub struct Decoder {
    pub config: Box<dyn CausalConfig>,
    pub embed_tokens: TokenEmbedding,
    pub embed_scale: Option<f64>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// The output projection (the embedding table itself when tied).
    pub lm_head: Projection,
    pub final_softcap: Option<f64>,
    pub virtual_tokens: VirtualTokens,
}

const EMBED: &str = "model.embed_tokens.weight";

impl Decoder {
    /// Builds `spec`'s model (its configuration is `config`) from `store`, initialising what
    /// it does not hold if it may; the projections the store holds quantized stay quantized
    /// (frozen).
    pub fn build(
        spec: &DecoderSpec,
        config: Box<dyn CausalConfig>,
        store: &mut ParamStore,
    ) -> Result<Self> {
        spec.validate()?;
        let c = spec;
        let quantized = !store.quantized().is_empty();
        let (hs, h, kvh, d) = (c.hidden, c.heads, c.kv_heads, c.head_dim);
        // Shape-only stores need no rotary tables.
        let positions = if store.shapes().is_some() {
            2
        } else {
            c.max_positions
        };
        let ropes = c
            .ropes
            .iter()
            .map(|(theta, scaling)| Rope::new(d, positions, *theta, scaling, store.device()))
            .collect::<Result<Vec<_>>>()?;
        let quant_embed = match store.quantized().get(EMBED) {
            Some(QuantizedWeight::Cpu(w)) if !store.vars().contains_key(EMBED) => {
                if (w.rows, w.cols) != (c.vocab_size, hs) {
                    return Err(Error::Config(format!(
                        "quantized parameter {EMBED} has shape [{}, {}] but the configuration needs [{}, {hs}]",
                        w.rows, w.cols, c.vocab_size
                    )));
                }
                Some(w.clone())
            }
            _ => None,
        };
        let embed_tokens = match &quant_embed {
            Some(w) => TokenEmbedding::Quantized(w.clone(), store.device().clone()),
            None => {
                TokenEmbedding::Dense(Embedding::new(store, EMBED, c.vocab_size, hs, c.init_std)?)
            }
        };
        let virtual_tokens = VirtualTokens::from_store(
            store,
            hs,
            c.layers,
            kvh,
            d,
            embed_tokens.dense().map(|e| &e.weight),
        )?;
        let mut src = Source::new(store, c.init_std);
        let mut layers = Vec::with_capacity(c.layers);
        for (i, lt) in c.layer_types.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let input_layernorm = src.norm(&format!("{p}.input_layernorm"), hs, c)?;
            let a = format!("{p}.self_attn");
            let qkv = if c.fused_qkv {
                Qkv::Fused(src.proj(&format!("{a}.qkv_proj"), hs, (h + 2 * kvh) * d, c.qkv_bias)?)
            } else {
                Qkv::Separate {
                    q_proj: src.proj(&format!("{a}.q_proj"), hs, h * d, c.qkv_bias)?,
                    k_proj: src.proj(&format!("{a}.k_proj"), hs, kvh * d, c.qkv_bias)?,
                    v_proj: src.proj(&format!("{a}.v_proj"), hs, kvh * d, c.qkv_bias)?,
                    stacked: None,
                }
            };
            let o_proj = src.proj(&format!("{a}.o_proj"), h * d, hs, c.o_bias)?;
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(src.norm(&format!("{a}.q_norm"), d, c)?),
                    Some(src.norm(&format!("{a}.k_norm"), d, c)?),
                )
            } else {
                (None, None)
            };
            let post_attention_layernorm =
                src.norm(&format!("{p}.post_attention_layernorm"), hs, c)?;
            let pre_feedforward_layernorm = if c.sandwich_norms {
                Some(src.norm(&format!("{p}.pre_feedforward_layernorm"), hs, c)?)
            } else {
                None
            };
            let m = format!("{p}.mlp");
            let ffn = c.intermediate;
            let gate_up = if c.fused_gate_up {
                GateUp::Fused(src.proj(&format!("{m}.gate_up_proj"), hs, 2 * ffn, c.mlp_bias)?)
            } else {
                GateUp::Separate {
                    gate_proj: src.proj(&format!("{m}.gate_proj"), hs, ffn, c.mlp_bias)?,
                    up_proj: src.proj(&format!("{m}.up_proj"), hs, ffn, c.mlp_bias)?,
                    stacked: None,
                }
            };
            let down_proj = src.proj(&format!("{m}.down_proj"), ffn, hs, c.mlp_bias)?;
            let post_feedforward_layernorm = if c.sandwich_norms {
                Some(src.norm(&format!("{p}.post_feedforward_layernorm"), hs, c)?)
            } else {
                None
            };
            let mut layer = DecoderLayer {
                input_layernorm,
                self_attn: RotaryAttention {
                    qkv,
                    o_proj,
                    q_norm,
                    k_norm,
                    n_head: h,
                    n_kv_head: kvh,
                    head_dim: d,
                    rope: ropes[lt.rope].clone(),
                    window: lt.window,
                    query_scale: c.query_scale,
                    softcap: c.attn_softcap,
                    prefix: virtual_tokens.layer(i).cloned(),
                },
                post_attention_layernorm,
                pre_feedforward_layernorm,
                post_feedforward_layernorm,
                mlp: GatedMlp {
                    gate_up,
                    down_proj,
                    act: c.activation,
                },
            };
            if quantized {
                // Fewer, larger products per token: less thread hand-off than compute at
                // this size. The store then holds the parts as views of the stacked matrix,
                // so the separate copies loaded first are freed.
                if let Qkv::Separate {
                    q_proj,
                    k_proj,
                    v_proj,
                    stacked,
                } = &mut layer.self_attn.qkv
                {
                    *stacked = Projection::stack(&mut [q_proj, k_proj, v_proj]);
                    if stacked.is_some() {
                        src.replace(&format!("{a}.q_proj"), q_proj);
                        src.replace(&format!("{a}.k_proj"), k_proj);
                        src.replace(&format!("{a}.v_proj"), v_proj);
                    }
                }
                if let GateUp::Separate {
                    gate_proj,
                    up_proj,
                    stacked,
                } = &mut layer.mlp.gate_up
                {
                    *stacked = Projection::stack(&mut [gate_proj, up_proj]);
                    if stacked.is_some() {
                        src.replace(&format!("{m}.gate_proj"), gate_proj);
                        src.replace(&format!("{m}.up_proj"), up_proj);
                    }
                }
            }
            layers.push(layer);
        }
        let norm = src.norm("model.norm", hs, c)?;
        let lm_head = if c.tie_word_embeddings {
            match (src.quantized(EMBED), embed_tokens.dense()) {
                (Some(q), _) => Projection::Quantized {
                    weight: q.clone(),
                    bias: None,
                    adapters: None,
                },
                (None, Some(e)) => {
                    Projection::Dense(crate::nn::Linear::plain(e.weight.clone(), None, false))
                }
                (None, None) => unreachable!("a quantized table comes from `quant`"),
            }
        } else {
            src.proj("lm_head", hs, c.vocab_size, false)?
        };
        Ok(Decoder {
            config,
            embed_tokens,
            embed_scale: c.embed_scale,
            layers,
            norm,
            lm_head,
            final_softcap: c.final_softcap,
            virtual_tokens,
        })
    }

    fn embed(&self, ids: &Tensor, offset: usize) -> Result<(Tensor, usize)> {
        let x = self.embed_tokens.forward(ids)?;
        let (x, n) = self.virtual_tokens.prepend(x, offset)?;
        // The prompt's virtual tokens are scaled too: they replace input embeddings.
        Ok(match self.embed_scale {
            Some(s) => ((x * s)?, n),
            None => (x, n),
        })
    }
}

impl CausalLm for Decoder {
    fn config(&self) -> &dyn CausalConfig {
        &*self.config
    }

    /// No dropout in these families, so `_rng` is unused.
    fn hidden(
        &self,
        ids: &Tensor,
        caches: Option<&mut [KvCache]>,
        _rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let offset = self.virtual_tokens.offset(caches.as_deref());
        let (mut x, n) = self.embed(ids, offset)?;
        match caches {
            Some(caches) => {
                for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
                    x = layer.forward(&x, Some(cache), None)?;
                }
            }
            None => {
                for layer in &self.layers {
                    let l = layer.clone();
                    x = checkpoint::layer(&[&x], None, move |xs, _| l.forward(&xs[0], None, None))?;
                }
            }
        }
        VirtualTokens::strip(self.norm.forward(&x)?, n)
    }

    fn hidden_rows(&self, ids: &[u32], caches: &mut [Vec<KvCache>]) -> Result<Tensor> {
        if !self.virtual_tokens.is_empty() {
            return crate::models::causal::hidden_rows_one_by_one(self, ids, caches);
        }
        let x = Tensor::from_vec(ids.to_vec(), (ids.len(), 1), self.device())?;
        let (mut x, _) = self.embed(&x, 1)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let mut rows: Vec<&mut KvCache> = caches.iter_mut().map(|c| &mut c[l]).collect();
            x = layer.forward_rows(&x, &mut rows)?;
        }
        self.norm.forward(&x)
    }

    fn hidden_packed(
        &self,
        ids: &Tensor,
        segments: &Segments,
        _rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        self.virtual_tokens.check_packable()?;
        let (mut x, _) = self.embed(ids, 0)?;
        for layer in &self.layers {
            let (l, seg) = (layer.clone(), segments.clone());
            x = checkpoint::layer(&[&x], None, move |xs, _| {
                l.forward(&xs[0], None, Some(&seg))
            })?;
        }
        self.norm.forward(&x)
    }

    fn head(&self) -> &Projection {
        &self.lm_head
    }

    fn logit_softcap(&self) -> Option<f64> {
        self.final_softcap
    }

    fn new_caches(&self) -> Vec<KvCache> {
        vec![KvCache::default(); self.layers.len()]
    }

    fn max_positions(&self) -> usize {
        self.config
            .max_positions()
            .saturating_sub(self.virtual_tokens.len())
    }

    fn device(&self) -> &Device {
        self.norm.weight.device()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
