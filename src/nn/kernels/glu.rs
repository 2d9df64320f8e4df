//! Gated linear units `act(g) * u` (Shazeer, 2020: SwiGLU with SiLU, GeGLU with GELU), the
//! feed-forward network of the Llama-style families: forward in one pass, and the gradients
//! of both `g` and `u` in one pass, where the composition (activation, product, and their
//! backward) made about ten passes over `[tokens, intermediate]` tensors.

use super::gelu::{erf_slope, erf_value, tanh_slope, tanh_value};
use super::math::exp;
use super::{f32s, fused};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// The gate's activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GluAct {
    Silu,
    GeluTanh,
    GeluErf,
}

#[inline(always)]
fn silu_value(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn silu_slope(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-x));
    s * (1.0 + x * (1.0 - s))
}

/// `y = act(g) * u` element-wise.
#[inline(always)]
fn fwd(g: &[f32], u: &[f32], y: &mut [f32], act: impl Fn(f32) -> f32) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = act(g) * u;
    }
}

/// `dg = dy * u * act'(g)`, `du = dy * act(g)`.
#[inline(always)]
fn bwd(
    g: &[f32],
    u: &[f32],
    dy: &[f32],
    dg: &mut [f32],
    du: &mut [f32],
    act: impl Fn(f32) -> f32,
    slope: impl Fn(f32) -> f32,
) {
    for i in 0..g.len().min(dg.len()).min(du.len()) {
        let (x, d) = (g[i], dy[i]);
        dg[i] = d * u[i] * slope(x);
        du[i] = d * act(x);
    }
}

multiversion! {
    fn fwd_silu(g: &[f32], u: &[f32], y: &mut [f32]) { fwd(g, u, y, silu_value) }
}
multiversion! {
    fn fwd_gelu_tanh(g: &[f32], u: &[f32], y: &mut [f32]) { fwd(g, u, y, tanh_value) }
}
multiversion! {
    fn fwd_gelu_erf(g: &[f32], u: &[f32], y: &mut [f32]) { fwd(g, u, y, erf_value) }
}
multiversion! {
    fn bwd_silu(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        bwd(g, u, dy, dg, du, silu_value, silu_slope)
    }
}
multiversion! {
    fn bwd_gelu_tanh(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        bwd(g, u, dy, dg, du, tanh_value, tanh_slope)
    }
}
multiversion! {
    fn bwd_gelu_erf(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        bwd(g, u, dy, dg, du, erf_value, erf_slope)
    }
}

/// The fused op on `(g, u)`.
#[derive(Clone, Copy, Debug)]
struct Glu(GluAct);

/// Its backward on `(g, u, dy)`: `[dg | du]` packed.
struct GluGrad(GluAct);

fn same_len(op: &str, a: &[f32], b: &[f32]) -> candle_core::Result<()> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: inputs of {} and {} elements", a.len(), b.len());
    }
    Ok(())
}

impl CustomOp2 for Glu {
    fn name(&self) -> &'static str {
        "fused-glu"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        su: &CpuStorage,
        lu: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32s(sg, lg, self.name())?;
        let u = f32s(su, lu, self.name())?;
        same_len(self.name(), g, u)?;
        let f = match self.0 {
            GluAct::Silu => fwd_silu,
            GluAct::GeluTanh => fwd_gelu_tanh,
            GluAct::GeluErf => fwd_gelu_erf,
        };
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| f(g, u, y));
        Ok((CpuStorage::F32(y), lg.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = g.apply_op3_no_bwd(u, &grad.contiguous()?, &GluGrad(self.0))?;
        let n = g.elem_count();
        let dg = packed.narrow(0, 0, n)?.reshape(g.shape())?;
        let du = packed.narrow(0, n, n)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

impl CustomOp3 for GluGrad {
    fn name(&self) -> &'static str {
        "fused-glu-grad"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        su: &CpuStorage,
        lu: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32s(sg, lg, self.name())?;
        let u = f32s(su, lu, self.name())?;
        let dy = f32s(sd, ld, self.name())?;
        same_len(self.name(), g, u)?;
        same_len(self.name(), g, dy)?;
        let n = g.len();
        let f = match self.0 {
            GluAct::Silu => bwd_silu,
            GluAct::GeluTanh => bwd_gelu_tanh,
            GluAct::GeluErf => bwd_gelu_erf,
        };
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .zip(dy.par_chunks(CHUNK))
            .for_each(|(((dg, du), (g, u)), dy)| f(g, u, dy, dg, du));
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}

/// `act(g) * u`: the fused op on CPU for f32, else the composition.
pub fn glu(g: &Tensor, u: &Tensor, act: GluAct) -> crate::Result<Tensor> {
    if fused(g.device()) && g.dtype() == DType::F32 && u.dtype() == DType::F32 {
        if g.shape() != u.shape() {
            return Err(crate::Error::Config(format!(
                "gated unit: gate {:?} and up {:?} differ in shape",
                g.dims(),
                u.dims()
            )));
        }
        return Ok(g.contiguous()?.apply_op2(&u.contiguous()?, Glu(act))?);
    }
    glu_plain(g, u, act)
}

/// The reference composition: candle's activation (with its backward) times `u`.
pub fn glu_plain(g: &Tensor, u: &Tensor, act: GluAct) -> crate::Result<Tensor> {
    let a = match act {
        GluAct::Silu => g.silu()?,
        GluAct::GeluTanh => super::gelu::gelu_plain(g, false)?,
        GluAct::GeluErf => super::gelu::gelu_plain(g, true)?,
    };
    Ok((a * u)?)
}
