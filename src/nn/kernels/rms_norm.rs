//! RMSNorm (Zhang & Sennrich, 2019) forward in one pass per row, backward in one pass per row
//! plus a reduction for the weight gradient.

use super::math::{dot, sum};
use super::{f32s, fused, rows_per_task, rows_with_param_grads};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

multiversion! {
    fn fwd_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
        let r = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * r * w;
        }
    }
}

multiversion! {
    fn bwd_row(x: &[f32], w: &[f32], dy: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32]) {
        let c = x.len() as f32;
        let r = 1.0 / (dot(x, x) / c + eps).sqrt();
        // g = dy * w; dx = r * (g - xhat * mean(g * xhat)), xhat = x * r.
        for i in 0..x.len() {
            dx[i] = dy[i] * w[i] * x[i];
            dw[i] += dy[i] * x[i] * r;
        }
        let m = sum(dx) * r * r / c;
        for i in 0..x.len() {
            dx[i] = r * (dy[i] * w[i] - x[i] * m);
        }
    }
}

/// Fused RMSNorm over the last dimension with a weight.
#[derive(Clone, Copy, Debug)]
pub struct RmsNormOp {
    pub eps: f32,
}

/// Backward: `[dx (n*c) | dw (c)]`.
struct RmsNormGrad {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let c = w.len();
        if l1.dims().last() != Some(&c) {
            candle_core::bail!(
                "{}: weight of {c} does not match input {:?}",
                self.name(),
                l1.dims()
            );
        }
        let n = x.len() / c;
        let mut y = vec![0f32; x.len()];
        let rows = rows_per_task(n, c);
        y.par_chunks_mut(rows * c)
            .zip(x.par_chunks(rows * c))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(c).zip(x.chunks(c)) {
                    fwd_row(x, w, self.eps, y);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let n = x.elem_count() / c;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n * c)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n * c, c)?;
        // A frozen gain (or a constant input) gets no gradient entry.
        let keep = |t: &Tensor, g: Tensor| super::tracked(t).then_some(g);
        Ok((keep(x, dx), keep(w, dw)))
    }
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let dy = f32s(s3, l3, self.name())?;
        let c = w.len();
        let n = x.len() / c;
        let mut out = vec![0f32; n * c + c];
        let (dx, dw) = out.split_at_mut(n * c);
        rows_with_param_grads(dx, c, dw, |r, dx, acc| {
            bwd_row(
                &x[r * c..(r + 1) * c],
                w,
                &dy[r * c..(r + 1) * c],
                self.eps,
                dx,
                acc,
            );
        });
        Ok((CpuStorage::F32(out), Shape::from(n * c + c)))
    }
}

/// Fused RMSNorm if available for `x`'s device, else `None` (the caller composes).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Option<Tensor>> {
    if !fused(x.device()) || x.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(
        &w.contiguous()?,
        RmsNormOp { eps: eps as f32 },
    )?))
}
