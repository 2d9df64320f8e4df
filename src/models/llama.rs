//! Llama (Touvron et al., 2023, "LLaMA: Open and Efficient Foundation Language Models"): a
//! pre-norm decoder with RMSNorm, rotary position embedding, a SwiGLU feed-forward network
//! (Shazeer, 2020) and grouped-query attention. Weight names and `config.json` are those of
//! transformers' `LlamaForCausalLM`, so SmolLM2, TinyLlama, Llama 2/3 and the like load unchanged.
//!
//! Every projection is a [`Projection`]: dense and trainable when the weights come from
//! safetensors, or kept in a llama.cpp quantized format for inference on GGUF checkpoints.

use crate::nn::kernels::attention::causal_attention;
use crate::nn::{
    attention::causal_attention_in, Activation, Dropout, Embedding, Init, KvCache, ParamStore,
    Projection, QuantizedWeight, RmsNorm, Rope, RopeScaling, Segments, TokenEmbedding,
};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

fn d_llama() -> String {
    "llama".into()
}
fn d_silu() -> String {
    "silu".into()
}
fn d_rms_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    10000.0
}
fn d_init_range() -> f64 {
    0.02
}
fn d_positions() -> usize {
    2048
}

/// `config.json` of a Llama model, with transformers' field names and defaults. Keys we do not
/// use (token ids, dtype, ...) are kept and written back unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    #[serde(default = "d_llama")]
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
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base; transformers 5 may instead write it inside `rope_parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl LlamaConfig {
    /// A config with the given sizes and Llama's other defaults.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        max_position_embeddings: usize,
    ) -> Self {
        LlamaConfig {
            model_type: d_llama(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: None,
            hidden_act: d_silu(),
            max_position_embeddings,
            rms_norm_eps: 1e-5,
            rope_theta: Some(d_theta()),
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            initializer_range: d_init_range(),
            extra: Default::default(),
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base: `rope_theta`, else `rope_parameters.rope_theta` (transformers 5), else
    /// 10000.
    pub fn theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| {
                self.extra
                    .get("rope_parameters")
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|t| t.as_f64())
            })
            .unwrap_or(d_theta())
    }

    /// The RoPE scaling, from `rope_scaling` or transformers 5's `rope_parameters`.
    pub fn scaling(&self) -> Result<RopeScaling> {
        RopeScaling::from_hf(
            self.rope_scaling
                .as_ref()
                .or_else(|| self.extra.get("rope_parameters")),
        )
    }

    pub fn validate(&self) -> Result<()> {
        if self.model_type != "llama" {
            return Err(Error::Config(format!(
                "model_type is {:?}, expected \"llama\"",
                self.model_type
            )));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Config(format!(
                "hidden_size ({}) must be divisible by num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(Error::Config(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::Config(format!(
                "rotary embedding needs an even head dimension, got {}",
                self.head_dim()
            )));
        }
        if Activation::from_hf(&self.hidden_act)? != Activation::Silu {
            return Err(Error::Config(format!(
                "hidden_act {:?}: Llama's SwiGLU feed-forward needs \"silu\"",
                self.hidden_act
            )));
        }
        self.scaling()?;
        Ok(())
    }

    /// Reads `config.json`, naming the file in any error.
    pub fn load(path: &Path) -> Result<Self> {
        super::read_config(path, Self::validate)
    }

    /// The JSON transformers expects (with `architectures`).
    pub fn to_json(&self) -> serde_json::Value {
        super::config_json(self, "LlamaForCausalLM", false)
    }
}

/// Self-attention with separate query/key/value projections, RoPE and grouped key/value heads.
#[derive(Clone, Debug)]
pub struct LlamaAttention {
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    pub o_proj: Projection,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope: Rope,
    /// For frozen quantized weights: q, k and v stacked into one product.
    pub qkv_stacked: Option<Projection>,
    /// Prefix tuning's learned keys (not rotated, as PEFT's) and values.
    pub prefix: Option<crate::nn::Prefix>,
}

impl LlamaAttention {
    /// `x`: `[b, t, hidden]`. With `cache`, new keys/values (already rotated) are appended;
    /// with `segments`, packed examples attend only within themselves.
    pub fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        segments: Option<&Segments>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let offset = crate::nn::Prefix::offset(self.prefix.as_ref(), cache.as_deref());
        let (q, k, v) = match &self.qkv_stacked {
            Some(p) => {
                let y = p.forward(x)?;
                (
                    y.narrow(2, 0, h * d)?,
                    y.narrow(2, h * d, kvh * d)?,
                    y.narrow(2, (h + kvh) * d, kvh * d)?,
                )
            }
            None => (
                self.q_proj.forward(x)?,
                self.k_proj.forward(x)?,
                self.v_proj.forward(x)?,
            ),
        };
        let q = q.reshape((b, t, h, d))?;
        let k = k.reshape((b, t, kvh, d))?;
        let v = v.reshape((b, t, kvh, d))?;
        let (q, k) = match segments {
            Some(s) => (
                self.rope.forward_segments(&q, s)?,
                self.rope.forward_segments(&k, s)?,
            ),
            None => (
                self.rope.forward(&q, offset)?,
                self.rope.forward(&k, offset)?,
            ),
        };
        if cache.is_none() && self.prefix.is_none() && crate::nn::kernels::fused(x.device()) {
            // Full sequence (training, scoring): the fused blocked kernel over one packed
            // [b, t, 3 h d] tensor, key/value heads repeated to the query heads.
            let repeat = |x: Tensor| -> Result<Tensor> {
                Ok(if kvh == h {
                    x.reshape((b, t, h * d))?
                } else {
                    x.unsqueeze(3)?
                        .broadcast_as((b, t, kvh, h / kvh, d))?
                        .reshape((b, t, h * d))?
                })
            };
            let qkv = Tensor::cat(
                &[
                    q.reshape((b, t, h * d))?,
                    repeat(k.clone())?,
                    repeat(v.clone())?,
                ],
                2,
            )?;
            if let Some(y) = causal_attention(&qkv, h, segments)? {
                return self.o_proj.forward(&y);
            }
        }
        let q = q.transpose(1, 2)?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = crate::nn::Prefix::apply(self.prefix.as_ref(), k, v, cache)?;
        // Llama has no attention dropout.
        let y = causal_attention_in(&q, &k, &v, offset, segments, &Dropout::default(), None)?;
        let y = y.transpose(1, 2)?.reshape((b, t, h * d))?;
        self.o_proj.forward(&y)
    }
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct LlamaMlp {
    pub gate_proj: Projection,
    pub up_proj: Projection,
    pub down_proj: Projection,
    /// For frozen quantized weights: gate and up stacked into one product.
    pub gate_up_stacked: Option<Projection>,
}

impl LlamaMlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (g, u) = match &self.gate_up_stacked {
            Some(p) => {
                let y = p.forward(x)?;
                let n = y.dim(D::Minus1)? / 2;
                (y.narrow(D::Minus1, 0, n)?, y.narrow(D::Minus1, n, n)?)
            }
            None => (self.gate_proj.forward(x)?, self.up_proj.forward(x)?),
        };
        let g = g.silu()?;
        self.down_proj.forward(&(g * u)?)
    }
}

/// One decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Clone, Debug)]
pub struct LlamaBlock {
    pub input_layernorm: RmsNorm,
    pub self_attn: LlamaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: LlamaMlp,
}

impl LlamaBlock {
    pub fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        segments: Option<&Segments>,
    ) -> Result<Tensor> {
        let a = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, cache, segments)?;
        let x = (x + a)?;
        let m = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        Ok((x + m)?)
    }
}

/// Quantized weights by Hugging Face key (`...q_proj.weight`), for inference-only models.
pub type QuantWeights = BTreeMap<String, QuantizedWeight>;

/// The Llama causal language model.
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: TokenEmbedding,
    pub layers: Vec<LlamaBlock>,
    pub norm: RmsNorm,
    /// The output projection (the embedding table itself when tied).
    pub lm_head: Projection,
    /// Prompt tuning's virtual-token embeddings `[n, hidden]`, put before the input.
    pub prompt: Option<Tensor>,
}

/// Builds projections from the quantized weights when they hold the key, else from the store.
struct Source<'a> {
    store: &'a mut ParamStore,
    quant: Option<&'a QuantWeights>,
}

impl Source<'_> {
    fn proj(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        std: f64,
    ) -> Result<Projection> {
        let key = format!("{prefix}.weight");
        if let Some(q) = self.quant.and_then(|q| q.get(&key)) {
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
            return Projection::quantized(self.store, prefix, q.clone(), bias);
        }
        Projection::linear(self.store, prefix, d_in, d_out, bias, std)
    }
}

impl Llama {
    /// Builds the model from `store` (initialising what it does not hold, if it may); the
    /// projections the store holds quantized stay quantized (frozen).
    pub fn new(config: &LlamaConfig, store: &mut ParamStore) -> Result<Self> {
        let quant = store.quantized().clone();
        Self::build(config, store, (!quant.is_empty()).then_some(&quant))
    }

    /// Builds the model with the projections found in `quant` kept quantized (inference only);
    /// everything else (norms, the embedding table) comes from `store`.
    pub fn new_quantized(
        config: &LlamaConfig,
        store: &mut ParamStore,
        quant: &QuantWeights,
    ) -> Result<Self> {
        store.set_quantized(quant.clone());
        Self::build(config, store, Some(quant))
    }

    fn build(
        config: &LlamaConfig,
        store: &mut ParamStore,
        quant: Option<&QuantWeights>,
    ) -> Result<Self> {
        config.validate()?;
        let c = config;
        let std = c.initializer_range;
        let (hs, h, kvh, d) = (
            c.hidden_size,
            c.num_attention_heads,
            c.kv_heads(),
            c.head_dim(),
        );
        let rope = Rope::new(
            d,
            c.max_position_embeddings,
            c.theta(),
            &c.scaling()?,
            store.device(),
        )?;
        let embed_key = "model.embed_tokens.weight";
        let quant_embed = match quant.and_then(|q| q.get(embed_key)) {
            Some(QuantizedWeight::Cpu(w)) if !store.vars().contains_key(embed_key) => {
                if (w.rows, w.cols) != (c.vocab_size, hs) {
                    return Err(Error::Config(format!(
                        "quantized parameter {embed_key} has shape [{}, {}] but the configuration needs [{}, {hs}]",
                        w.rows, w.cols, c.vocab_size
                    )));
                }
                Some(w.clone())
            }
            _ => None,
        };
        let embed_tokens = match &quant_embed {
            Some(w) => TokenEmbedding::Quantized(w.clone(), store.device().clone()),
            None => TokenEmbedding::Dense(Embedding::new(store, embed_key, c.vocab_size, hs, std)?),
        };
        let prompt = store.prompt_for(hs, embed_tokens.dense().map(|e| &e.weight))?;
        let prefix = store.prefix_for(c.num_hidden_layers, kvh, d)?;
        let mut src = Source { store, quant };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let ab = c.attention_bias;
            let mb = c.mlp_bias;
            let ffn = c.intermediate_size;
            layers.push(LlamaBlock {
                input_layernorm: RmsNorm::new(
                    src.store,
                    &format!("{p}.input_layernorm"),
                    hs,
                    c.rms_norm_eps,
                )?,
                self_attn: LlamaAttention {
                    q_proj: src.proj(&format!("{p}.self_attn.q_proj"), hs, h * d, ab, std)?,
                    k_proj: src.proj(&format!("{p}.self_attn.k_proj"), hs, kvh * d, ab, std)?,
                    v_proj: src.proj(&format!("{p}.self_attn.v_proj"), hs, kvh * d, ab, std)?,
                    o_proj: src.proj(&format!("{p}.self_attn.o_proj"), h * d, hs, ab, std)?,
                    n_head: h,
                    n_kv_head: kvh,
                    head_dim: d,
                    rope: rope.clone(),
                    qkv_stacked: None,
                    prefix: match &prefix {
                        Some(all) => {
                            let (k, v) = crate::nn::layer_prefix(all, i, kvh, d)?;
                            Some(crate::nn::Prefix { k, v })
                        }
                        None => None,
                    },
                },
                post_attention_layernorm: RmsNorm::new(
                    src.store,
                    &format!("{p}.post_attention_layernorm"),
                    hs,
                    c.rms_norm_eps,
                )?,
                mlp: LlamaMlp {
                    gate_proj: src.proj(&format!("{p}.mlp.gate_proj"), hs, ffn, mb, std)?,
                    up_proj: src.proj(&format!("{p}.mlp.up_proj"), hs, ffn, mb, std)?,
                    down_proj: src.proj(&format!("{p}.mlp.down_proj"), ffn, hs, mb, std)?,
                    gate_up_stacked: None,
                },
            });
            if quant.is_some() {
                // Fewer, larger products per token: less thread hand-off than compute at
                // this size.
                let l = layers.last_mut().expect("pushed");
                let a = &mut l.self_attn;
                a.qkv_stacked =
                    Projection::stack(&mut [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj]);
                let m = &mut l.mlp;
                m.gate_up_stacked = Projection::stack(&mut [&mut m.gate_proj, &mut m.up_proj]);
            }
        }
        let norm = RmsNorm::new(src.store, "model.norm", hs, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            match (quant.and_then(|q| q.get(embed_key)), embed_tokens.dense()) {
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
            src.proj("lm_head", hs, c.vocab_size, false, std)?
        };
        Ok(Llama {
            config: c.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            prompt,
        })
    }

    /// A freshly initialised model and its parameter store.
    pub fn init(config: &LlamaConfig, device: &Device, seed: u64) -> Result<(Self, ParamStore)> {
        let mut store = ParamStore::new_init(device, seed);
        let model = Llama::new(config, &mut store)?;
        Ok((model, store))
    }

    /// Final hidden states `[b, t, hidden]` for token ids `[b, t]` (u32). Llama has no
    /// dropout, so `_rng` is accepted for a uniform interface and unused.
    pub fn hidden(
        &self,
        ids: &Tensor,
        caches: Option<&mut [KvCache]>,
        _rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let offset = caches.as_ref().map(|c| c[0].len()).unwrap_or(0);
        let x = self.embed_tokens.forward(ids)?;
        let (mut x, n_virtual) = super::prepend_prompt(x, self.prompt.as_ref(), offset)?;
        match caches {
            Some(caches) => {
                for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
                    x = layer.forward(&x, Some(cache), None)?;
                }
            }
            None => {
                for layer in &self.layers {
                    x = layer.forward(&x, None, None)?;
                }
            }
        }
        let h = self.norm.forward(&x)?;
        // The virtual tokens' states are not the input's.
        Ok(if n_virtual > 0 {
            h.narrow(1, n_virtual, t)?
        } else {
            h
        })
    }

    /// Final hidden states `[b, t, hidden]` of rows holding several packed examples each.
    pub fn hidden_packed(&self, ids: &Tensor, segments: &Segments) -> Result<Tensor> {
        if self.prompt.is_some() || self.layers.iter().any(|l| l.self_attn.prefix.is_some()) {
            return Err(Error::Config(
                "packed examples cannot take prompt or prefix tuning's virtual tokens; \
                 train without packing"
                    .into(),
            ));
        }
        let mut x = self.embed_tokens.forward(ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, None, Some(segments))?;
        }
        self.norm.forward(&x)
    }

    /// Projects hidden states onto the vocabulary.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(h)
    }

    /// One empty cache per layer.
    pub fn new_caches(&self) -> Vec<KvCache> {
        vec![KvCache::default(); self.layers.len()]
    }

    /// Positions left for the input (learned virtual tokens take some).
    pub fn max_positions(&self) -> usize {
        let prefix = self
            .layers
            .first()
            .and_then(|l| l.self_attn.prefix.as_ref());
        let virtual_n = super::virtual_len(self.prompt.as_ref(), prefix);
        self.config
            .max_position_embeddings
            .saturating_sub(virtual_n)
    }
}

/// The parameter names and shapes of a Llama model with this config, without allocating it.
pub fn param_shapes(config: &LlamaConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut store = ParamStore::new_shapes();
    // Shape-only tables for RoPE would still be computed; cap them, they are not parameters.
    let mut c = config.clone();
    c.max_position_embeddings = c.max_position_embeddings.min(2);
    Llama::new(&c, &mut store)?;
    Ok(store.shapes().cloned().unwrap_or_default())
}

/// Reorders the rows of a query or key projection from llama.cpp's interleaved rotary layout
/// back to transformers' "rotate half" layout. llama.cpp's converter applies, per head,
/// `w.reshape(heads, 2, d/2, in).swapaxes(1, 2)`; this is its inverse. Rows are moved as
/// whole byte ranges (`row_bytes` each), so it works on quantized data too: every row of a
/// GGUF matrix is quantized on its own.
pub fn unpermute_rotary_rows(data: &[u8], rows: usize, row_bytes: usize, heads: usize) -> Vec<u8> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let dst = h * d + s * half + j;
                let src = h * d + 2 * j + s;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}
