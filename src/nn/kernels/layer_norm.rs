//! LayerNorm forward in one pass per row (mean, variance, normalise, scale, shift) and
//! backward in one pass per row plus a reduction for the weight and bias gradients.

use super::math::{sum, sum_sq_dev};
use super::{f32s, fused, rows_per_task, rows_with_param_grads};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

multiversion! {
    fn fwd_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
        let c = x.len() as f32;
        let mean = sum(x) / c;
        let var = sum_sq_dev(x, mean) / c;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mean) * rstd * w + b;
        }
    }
}

multiversion! {
    fn bwd_row(x: &[f32], w: &[f32], dy: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
        let c = x.len() as f32;
        let mean = sum(x) / c;
        let var = sum_sq_dev(x, mean) / c;
        let rstd = 1.0 / (var + eps).sqrt();
        // a = mean of dxhat, bm = mean of dxhat * xhat, from sum(dy w) and sum(dy w (x - mean)).
        let mut a = [0f32; 16];
        let mut bs = [0f32; 16];
        for i in 0..x.len() {
            let xhat = (x[i] - mean) * rstd;
            let dxhat = dy[i] * w[i];
            a[i % 16] += dxhat;
            bs[i % 16] += dxhat * xhat;
            dw[i] += dy[i] * xhat;
            db[i] += dy[i];
        }
        let a = a.iter().sum::<f32>() / c;
        let bm = bs.iter().sum::<f32>() / c;
        for i in 0..x.len() {
            let xhat = (x[i] - mean) * rstd;
            dx[i] = rstd * (dy[i] * w[i] - a - xhat * bm);
        }
    }
}

/// Fused LayerNorm over the last dimension of `x` with weight and bias.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormOp {
    pub eps: f32,
}

/// Backward: returns `[dx (n*c) | dw (c) | db (c)]` in one buffer.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
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
        let b = f32s(s3, l3, self.name())?;
        let c = w.len();
        if b.len() != c || l1.dims().last() != Some(&c) {
            candle_core::bail!(
                "{}: weight/bias of {c} do not match input {:?}",
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
                    fwd_row(x, w, b, self.eps, y);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let n = x.elem_count() / c;
        let packed =
            x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n * c)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n * c, c)?;
        let db = packed.narrow(0, n * c + c, c)?;
        // Frozen gain and bias (or a constant input) get no gradient entry.
        let keep = |t: &Tensor, g: Tensor| super::tracked(t).then_some(g);
        Ok((keep(x, dx), keep(w, dw), keep(b, db)))
    }
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
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
        let mut out = vec![0f32; n * c + 2 * c];
        let (dx, rest) = out.split_at_mut(n * c);
        rows_with_param_grads(dx, c, rest, |r, dx, acc| {
            let (dw, db) = acc.split_at_mut(c);
            bwd_row(
                &x[r * c..(r + 1) * c],
                w,
                &dy[r * c..(r + 1) * c],
                self.eps,
                dx,
                dw,
                db,
            );
        });
        Ok((CpuStorage::F32(out), Shape::from(n * c + 2 * c)))
    }
}

/// Fused layer norm if available for `x`'s device, else `None` (the caller composes).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> crate::Result<Option<Tensor>> {
    if !fused(x.device()) || x.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        w,
        b,
        LayerNormOp { eps: eps as f32 },
    )?))
}
