//! Attention softmax fused with its scale and causal mask: `softmax(scale * s)` over the last
//! dimension where key `j` is visible to query `i` only if `j <= offset + i`. Backward uses the
//! saved output: `ds = scale * p * (dp - sum(p * dp))`.

use super::math::{dot, exp, max, sum};
use super::{f32s, fused, rows_per_task};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

multiversion! {
    fn fwd_row(x: &[f32], scale: f32, visible: usize, y: &mut [f32]) {
        let (xv, _) = x.split_at(visible);
        let (yv, ym) = y.split_at_mut(visible);
        let m = max(xv);
        for (y, &v) in yv.iter_mut().zip(xv) {
            *y = exp(scale * (v - m));
        }
        let inv = 1.0 / sum(yv);
        for y in yv.iter_mut() {
            *y *= inv;
        }
        for y in ym.iter_mut() {
            *y = 0.0;
        }
    }
}

multiversion! {
    /// `fwd_row` over a buffer that holds the scores on entry and the probabilities on exit.
    pub(crate) fn softmax_in_place(y: &mut [f32], scale: f32, visible: usize) {
        let (yv, ym) = y.split_at_mut(visible);
        let m = max(yv);
        for y in yv.iter_mut() {
            *y = exp(scale * (*y - m));
        }
        let inv = 1.0 / sum(yv);
        for y in yv.iter_mut() {
            *y *= inv;
        }
        for y in ym.iter_mut() {
            *y = 0.0;
        }
    }
}

multiversion! {
    pub(crate) fn bwd_row(p: &[f32], dp: &[f32], scale: f32, dx: &mut [f32]) {
        let dot = dot(p, dp);
        for ((dx, &p), &d) in dx.iter_mut().zip(p).zip(dp) {
            *dx = scale * p * (d - dot);
        }
    }
}

/// Scaled, optionally causal softmax over the last dimension of `[.., t, s]` scores.
#[derive(Clone, Copy, Debug)]
pub struct AttnSoftmax {
    pub scale: f32,
    /// `Some(offset)`: causal, query `i` sees keys `0..=offset + i`.
    pub causal: Option<usize>,
}

struct AttnSoftmaxGrad {
    scale: f32,
}

impl CustomOp1 for AttnSoftmax {
    fn name(&self) -> &'static str {
        "fused-attn-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(st, l, self.name())?;
        let dims = l.dims();
        let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let n = x.len() / s;
        let mut y = vec![0f32; x.len()];
        let rows = rows_per_task(n, s);
        let (scale, causal) = (self.scale, self.causal);
        y.par_chunks_mut(rows * s).enumerate().for_each(|(ci, y)| {
            for (k, y) in y.chunks_mut(s).enumerate() {
                let r = ci * rows + k;
                let visible = match causal {
                    Some(off) => (off + r % t + 1).min(s),
                    None => s,
                };
                fwd_row(&x[r * s..(r + 1) * s], scale, visible, y);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &AttnSoftmaxGrad { scale: self.scale },
        )?))
    }
}

impl CustomOp2 for AttnSoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-attn-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = f32s(s1, l1, self.name())?;
        let dp = f32s(s2, l2, self.name())?;
        let s = *l1.dims().last().unwrap_or(&1);
        let n = p.len() / s.max(1);
        let mut dx = vec![0f32; p.len()];
        let rows = rows_per_task(n, s);
        dx.par_chunks_mut(rows * s)
            .zip(p.par_chunks(rows * s).zip(dp.par_chunks(rows * s)))
            .for_each(|(dx, (p, dp))| {
                for ((dx, p), dp) in dx.chunks_mut(s).zip(p.chunks(s)).zip(dp.chunks(s)) {
                    bwd_row(p, dp, self.scale, dx);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `softmax(scale * scores + causal mask)`: fused on CPU, composed elsewhere.
pub fn attn_softmax(scores: &Tensor, scale: f64, causal: Option<usize>) -> crate::Result<Tensor> {
    if fused(scores.device()) && scores.dtype() == candle_core::DType::F32 {
        return Ok(scores.contiguous()?.apply_op1(AttnSoftmax {
            scale: scale as f32,
            causal,
        })?);
    }
    attn_softmax_plain(scores, scale, causal)
}

/// The reference composition.
pub fn attn_softmax_plain(
    scores: &Tensor,
    scale: f64,
    causal: Option<usize>,
) -> crate::Result<Tensor> {
    let dims = scores.dims();
    let t = dims[dims.len() - 2];
    let mut att = (scores * scale)?;
    if let Some(offset) = causal {
        if t > 1 || offset + t < dims[dims.len() - 1] {
            att = att.broadcast_add(&causal_mask(t, offset, scores.device())?)?;
        }
    }
    super::ops::softmax(&att)
}

/// Additive mask `[t, offset + t]`: 0 where query `i` may see key `j` (`j <= offset + i`),
/// minus infinity elsewhere.
pub fn causal_mask(t: usize, offset: usize, device: &candle_core::Device) -> crate::Result<Tensor> {
    let total = offset + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(data, (t, total), device)?)
}
