//! Differentiable softmax and log-softmax over the last dimension.
//!
//! The max subtracted for stability is detached: softmax is shift-invariant, so its gradient
//! through the max is exactly zero, and detaching saves a reduction in the backward pass.
//! (candle-nn's `softmax_last_dim` has no backward at all; never use it on a training path.)

use crate::Result;
use candle_core::{Tensor, D};

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}
