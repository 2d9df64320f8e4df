//! Causal language modelling: predict each next token from the tokens before it.

use crate::models::CausalModel;
use crate::nn::kernels::cross_entropy::nll_rows;
use crate::rng::Rng;
use crate::Result;
use candle_core::Tensor;

/// Mean cross-entropy of `logits` `[n, vocab]` against `targets` `[n]` (u32), in nats.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(nll_rows(logits, targets)?.mean_all()?)
}

/// Per-position negative log-likelihood `[n]` (no reduction), for evaluation.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    nll_rows(logits, targets)
}

/// The causal LM objective over a model.
pub struct CausalLm;

impl CausalLm {
    /// The loss for a training step: as [`CausalLm::loss`], but on CPU the output projection
    /// and cross-entropy run as one op that produces the gradients in its forward pass (so
    /// use [`CausalLm::loss`] when no backward follows).
    pub fn train_loss(
        model: &CausalModel,
        inputs: &Tensor,
        targets: &Tensor,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let h = model.hidden(inputs, None, rng)?;
        let (b, t, c) = h.dims3()?;
        Self::head_loss(
            model,
            &h.reshape((b * t, c))?,
            &targets.reshape(b * t)?,
            true,
        )
    }

    /// Mean cross-entropy of `targets` `[n]` (u32) predicted from final hidden states `h`
    /// `[n, hidden]`. With `train`, on CPU the output projection and cross-entropy run as one
    /// op that produces the gradients in its forward pass.
    pub fn head_loss(
        model: &CausalModel,
        h: &Tensor,
        targets: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        if train {
            // A quantized head (QLoRA) is dequantized for the step: 4 bytes per weight for a
            // moment instead of the [tokens, vocab] logits and their gradient.
            let dequantized;
            let head = match model.head_weight() {
                Some(w) => Some(w),
                None => {
                    dequantized = model.dequantized_head()?;
                    dequantized.as_ref()
                }
            };
            if let Some(w) = head {
                if let Some(loss) =
                    crate::nn::kernels::cross_entropy::head_cross_entropy(h, w, targets)?
                {
                    return Ok(loss);
                }
            }
        }
        cross_entropy(&model.logits(h)?, targets)
    }

    /// Loss of predicting `targets` `[b, t]` from `inputs` `[b, t]` (targets are inputs shifted by
    /// one). `rng` enables dropout.
    pub fn loss(
        model: &CausalModel,
        inputs: &Tensor,
        targets: &Tensor,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let logits = model.forward(inputs, None, rng)?;
        let (b, t, v) = logits.dims3()?;
        cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)
    }
}
