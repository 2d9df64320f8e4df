//! The Transformer encoder layer of BERT and Marian (post-norm) and of the Vision Transformer
//! (pre-norm):
//! bidirectional multi-head self-attention and a feed-forward network, each with dropout and a
//! residual connection. One implementation; where the LayerNorms sit is a flag.

use crate::nn::attention::MultiHeadAttention;
use crate::nn::dropout::Dropout;
use crate::nn::feed_forward::Activation;
use crate::nn::linear::Projection;
use crate::nn::norm::LayerNorm;
use crate::nn::store::ParamStore;
use crate::rng::Rng;
use crate::Result;
use candle_core::Tensor;

/// The parameter prefixes of one layer (transformers' names differ between models).
pub struct EncoderLayerNames {
    /// Query, key, value and attention-output projections.
    pub attention: [String; 4],
    /// The LayerNorm around the attention (BERT: `attention.output.LayerNorm`, after the
    /// residual; ViT: `layernorm_before`, before the attention).
    pub norm_attention: String,
    pub intermediate: String,
    pub output: String,
    /// The LayerNorm around the feed-forward network (BERT: `output.LayerNorm`; ViT:
    /// `layernorm_after`).
    pub norm_ffn: String,
}

impl EncoderLayerNames {
    /// BERT's names under `prefix` (e.g. `bert.encoder.layer.0`).
    pub fn bert(prefix: &str) -> Self {
        let p = |s: &str| format!("{prefix}.{s}");
        EncoderLayerNames {
            attention: [
                p("attention.self.query"),
                p("attention.self.key"),
                p("attention.self.value"),
                p("attention.output.dense"),
            ],
            norm_attention: p("attention.output.LayerNorm"),
            intermediate: p("intermediate.dense"),
            output: p("output.dense"),
            norm_ffn: p("output.LayerNorm"),
        }
    }

    /// Marian's (BART's) names under `prefix` (e.g. `model.encoder.layers.0`).
    pub fn marian(prefix: &str) -> Self {
        let p = |s: &str| format!("{prefix}.{s}");
        EncoderLayerNames {
            attention: [
                p("self_attn.q_proj"),
                p("self_attn.k_proj"),
                p("self_attn.v_proj"),
                p("self_attn.out_proj"),
            ],
            norm_attention: p("self_attn_layer_norm"),
            intermediate: p("fc1"),
            output: p("fc2"),
            norm_ffn: p("final_layer_norm"),
        }
    }

    /// ViT's names under `prefix` (e.g. `vit.encoder.layer.0`).
    pub fn vit(prefix: &str) -> Self {
        let p = |s: &str| format!("{prefix}.{s}");
        EncoderLayerNames {
            attention: [
                p("attention.attention.query"),
                p("attention.attention.key"),
                p("attention.attention.value"),
                p("attention.output.dense"),
            ],
            norm_attention: p("layernorm_before"),
            intermediate: p("intermediate.dense"),
            output: p("output.dense"),
            norm_ffn: p("layernorm_after"),
        }
    }
}

/// Sizes and regularisation of an encoder layer.
#[derive(Debug, Clone, Copy)]
pub struct EncoderLayerConfig {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub act: Activation,
    pub eps: f64,
    /// On the attention probabilities.
    pub attention_dropout: f64,
    /// On each sub-layer's output, before its residual.
    pub hidden_dropout: f64,
    /// Inside the feed-forward network, after the activation (Marian's `activation_dropout`).
    pub activation_dropout: f64,
    /// Initialisation std of the projections.
    pub std: f64,
    /// `x + f(norm(x))` (ViT, GPT-2) rather than `norm(x + f(x))` (BERT, the original).
    pub pre_norm: bool,
}

/// One encoder layer.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    pub attention: MultiHeadAttention,
    pub norm_attention: LayerNorm,
    pub intermediate: Projection,
    pub output: Projection,
    pub norm_ffn: LayerNorm,
    pub act: Activation,
    pub dropout: Dropout,
    pub activation_dropout: Dropout,
    pub pre_norm: bool,
}

impl EncoderLayer {
    pub fn new(
        store: &mut ParamStore,
        names: &EncoderLayerNames,
        c: &EncoderLayerConfig,
    ) -> Result<Self> {
        let [q, k, v, o] = &names.attention;
        let ln = |store: &mut ParamStore, p: &str| LayerNorm::new(store, p, c.hidden, c.eps, true);
        Ok(EncoderLayer {
            attention: MultiHeadAttention::new(
                store,
                [q, k, v, o],
                c.hidden,
                c.heads,
                Dropout::new(c.attention_dropout)?,
                c.std,
            )?,
            norm_attention: ln(store, &names.norm_attention)?,
            intermediate: Projection::linear(
                store,
                &names.intermediate,
                c.hidden,
                c.intermediate,
                true,
                c.std,
            )?,
            output: Projection::linear(
                store,
                &names.output,
                c.intermediate,
                c.hidden,
                true,
                c.std,
            )?,
            norm_ffn: ln(store, &names.norm_ffn)?,
            act: c.act,
            dropout: Dropout::new(c.hidden_dropout)?,
            activation_dropout: Dropout::new(c.activation_dropout)?,
            pre_norm: c.pre_norm,
        })
    }

    /// `x` `[b, t, c]`; `mask` additive, broadcastable to `[b, h, t, t]` (BERT's padding mask
    /// `[b, 1, 1, t]`); `rng` enables dropout.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let attend = |h: &Tensor, rng: Option<&mut Rng>| -> Result<Tensor> {
            let mut rng = rng;
            let y = self
                .attention
                .self_attention(h, false, mask, None, rng.as_deref_mut())?;
            self.dropout.forward(&y, rng)
        };
        let ffn = |h: &Tensor, rng: Option<&mut Rng>| -> Result<Tensor> {
            let mut rng = rng;
            let a = self.act.forward(&self.intermediate.forward(h)?)?;
            let a = self.activation_dropout.forward(&a, rng.as_deref_mut())?;
            self.dropout.forward(&self.output.forward(&a)?, rng)
        };
        if self.pre_norm {
            let a = (x + attend(&self.norm_attention.forward(x)?, rng.as_deref_mut())?)?;
            Ok((&a + ffn(&self.norm_ffn.forward(&a)?, rng)?)?)
        } else {
            let a = self
                .norm_attention
                .forward(&(attend(x, rng.as_deref_mut())? + x)?)?;
            self.norm_ffn.forward(&(ffn(&a, rng)? + &a)?)
        }
    }

    /// The attention probabilities `[b, h, t, t]` of this layer for its input `x` (for
    /// attention maps; not on the training path).
    pub fn attention_probs(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = if self.pre_norm {
            self.norm_attention.forward(x)?
        } else {
            x.clone()
        };
        self.attention.probs(&h, mask)
    }
}
