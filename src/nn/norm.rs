//! Layer normalisation (Ba et al., 2016), written as a composition of differentiable ops:
//! candle-nn's fused `layer_norm` has no backward and would silently stop training.

use crate::nn::store::{Init, ParamStore};
use crate::Result;
use candle_core::{Tensor, D};

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    /// Weight `{prefix}.weight`, bias `{prefix}.bias` (when `bias`).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        dim: usize,
        eps: f64,
        bias: bool,
    ) -> Result<Self> {
        let weight = store.get(&format!("{prefix}.weight"), &[dim], Init::Ones)?;
        let bias = if bias {
            let b = store.get(&format!("{prefix}.bias"), &[dim], Init::Zeros)?;
            Some(store.adapt_norm(prefix, "bias", b)?)
        } else {
            None
        };
        Ok(LayerNorm {
            weight: store.adapt_norm(prefix, "weight", weight)?,
            bias,
            eps,
        })
    }

    /// Fused on CPU (see `nn::kernels::layer_norm`), the composition elsewhere.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(b) = &self.bias {
            if let Some(y) =
                crate::nn::kernels::layer_norm::layer_norm(x, &self.weight, b, self.eps)?
            {
                return Ok(y);
            }
        }
        self.forward_plain(x)
    }

    /// The reference composition of differentiable ops.
    pub fn forward_plain(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        let y = xc.broadcast_mul(&inv)?.broadcast_mul(&self.weight)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// RMSNorm (Zhang & Sennrich, 2019; Llama): `y = x / sqrt(mean(x^2) + eps) * weight` over the
/// last dimension, no centring and no bias. Gemma's variant scales by `1 + weight` (its
/// weights start at zero).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    /// Scale by `1 + weight` (Gemma).
    pub unit_offset: bool,
}

impl RmsNorm {
    /// Weight `{prefix}.weight`.
    pub fn new(store: &mut ParamStore, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight = store.get(&format!("{prefix}.weight"), &[dim], Init::Ones)?;
        Ok(RmsNorm {
            weight: store.adapt_norm(prefix, "weight", weight)?,
            eps,
            unit_offset: false,
        })
    }

    /// Gemma's norm: weight `{prefix}.weight` (initialised to zeros), scaling by `1 + weight`.
    pub fn with_unit_offset(
        store: &mut ParamStore,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<Self> {
        let weight = store.get(&format!("{prefix}.weight"), &[dim], Init::Zeros)?;
        Ok(RmsNorm {
            weight: store.adapt_norm(prefix, "weight", weight)?,
            eps,
            unit_offset: true,
        })
    }

    /// The scale applied: `weight`, or `1 + weight`. Computed at each call, so a trained
    /// weight (updated in place) is always the one used.
    fn scale(&self) -> Result<Tensor> {
        Ok(if self.unit_offset {
            (&self.weight + 1.0)?
        } else {
            self.weight.clone()
        })
    }

    /// Fused on CPU (see `nn::kernels::rms_norm`), the composition elsewhere.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = crate::nn::kernels::rms_norm::rms_norm(x, &self.scale()?, self.eps)? {
            return Ok(y);
        }
        self.forward_plain(x)
    }

    /// The reference composition of differentiable ops (candle-nn's `rms_norm` has no backward).
    pub fn forward_plain(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(&self.scale()?)?)
    }
}
