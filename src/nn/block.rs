//! The pre-norm decoder block of GPT-2: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

use crate::nn::attention::{CausalSelfAttention, KvCache, Segments};
use crate::nn::dropout::Dropout;
use crate::nn::feed_forward::FeedForward;
use crate::nn::norm::LayerNorm;
use crate::rng::Rng;
use crate::Result;
use candle_core::Tensor;

/// One decoder layer (self-attention and feed-forward, each with a residual connection).
#[derive(Clone, Debug)]
pub struct DecoderBlock {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: FeedForward,
    pub mlp_dropout: Dropout,
}

impl DecoderBlock {
    pub fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        segments: Option<&Segments>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let a = self
            .attn
            .forward(&self.ln_1.forward(x)?, cache, segments, rng.as_deref_mut())?;
        let x = (x + a)?;
        let m = self.mlp.forward(&self.ln_2.forward(&x)?)?;
        let m = self.mlp_dropout.forward(&m, rng)?;
        Ok((x + m)?)
    }
}
