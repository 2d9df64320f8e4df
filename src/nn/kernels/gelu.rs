//! GELU (Hendrycks & Gimpel, 2016), exact `x Phi(x)` or the tanh approximation, forward and
//! backward each in one pass.

use super::math::{erf, exp, tanh};
use super::{f32s, fused};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

const K0: f32 = 0.797_884_6; // sqrt(2 / pi)
const K1: f32 = 0.044_715;
const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;
const CHUNK: usize = 1 << 15;

/// GELU, tanh form.
#[inline(always)]
pub(crate) fn tanh_value(x: f32) -> f32 {
    let t = tanh(K0 * (x + K1 * x * x * x));
    0.5 * x * (1.0 + t)
}

/// GELU, exact form.
#[inline(always)]
pub(crate) fn erf_value(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * INV_SQRT2))
}

/// The derivative of the tanh form.
#[inline(always)]
pub(crate) fn tanh_slope(x: f32) -> f32 {
    let x2 = x * x;
    let t = tanh(K0 * x * (1.0 + K1 * x2));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K0 * (1.0 + 3.0 * K1 * x2)
}

/// The derivative of the exact form.
#[inline(always)]
pub(crate) fn erf_slope(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * INV_SQRT2));
    let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
    cdf + x * pdf
}

multiversion! {
    fn fwd_tanh(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = tanh_value(x);
        }
    }
}

multiversion! {
    fn fwd_erf(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = erf_value(x);
        }
    }
}

multiversion! {
    fn bwd_tanh(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            *dx = g * tanh_slope(x);
        }
    }
}

multiversion! {
    fn bwd_erf(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            *dx = g * erf_slope(x);
        }
    }
}

/// The fused GELU op.
#[derive(Clone, Copy, Debug)]
pub struct Gelu {
    /// Exact (erf) form; otherwise the tanh approximation.
    pub exact: bool,
}

struct GeluGrad {
    exact: bool,
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        let f = if self.exact { fwd_erf } else { fwd_tanh };
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| f(x, y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(
            arg.apply_op2_no_bwd(&g, &GeluGrad { exact: self.exact })?,
        ))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let dy = f32s(s2, l2, self.name())?;
        let mut dx = vec![0f32; x.len()];
        let f = if self.exact { bwd_erf } else { bwd_tanh };
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(dx, (x, dy))| f(x, dy, dx));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// GELU of `x`: the fused op on CPU, candle's unary ops elsewhere.
pub fn gelu(x: &Tensor, exact: bool) -> crate::Result<Tensor> {
    if fused(x.device()) && x.dtype() == candle_core::DType::F32 {
        return Ok(x.contiguous()?.apply_op1(Gelu { exact })?);
    }
    gelu_plain(x, exact)
}

/// The reference composition: candle's `gelu_erf` / `gelu` (tanh) with their backward.
pub fn gelu_plain(x: &Tensor, exact: bool) -> crate::Result<Tensor> {
    Ok(if exact { x.gelu_erf()? } else { x.gelu()? })
}
