//! Rotary position embedding (RoPE) as one pass over `[b, t, h, d]`, in the "rotate half"
//! layout of transformers' Llama: dimension `i < d/2` pairs with `i + d/2`. Its backward is
//! the same rotation by the opposite angle.

use super::{f32s, fused};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Rotates `[b, t, h, d]` by the angles of positions `offset .. offset + t`, or of the given
/// `positions` (`[b * t]`, packed examples); `cos`/`sin` are `[positions, d/2]` tables.
/// `inverse` rotates the other way (the backward).
#[derive(Clone, Debug)]
pub struct RopeOp {
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    pub offset: usize,
    pub positions: Option<Arc<Vec<u32>>>,
    pub inverse: bool,
}

multiversion! {
    fn rotate_row(x: &[f32], cos: &[f32], sin: &[f32], sign: f32, y: &mut [f32]) {
        let half = cos.len();
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        for i in 0..half {
            let s = sign * sin[i];
            y1[i] = x1[i] * cos[i] - x2[i] * s;
            y2[i] = x2[i] * cos[i] + x1[i] * s;
        }
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let (b, t, h, d) = l.shape().dims4()?;
        let half = d / 2;
        let last = match &self.positions {
            Some(p) if p.len() != b * t => {
                candle_core::bail!("fused-rope: {} positions for {b} x {t} tokens", p.len())
            }
            Some(p) => p.iter().max().map_or(0, |&m| m as usize + 1),
            None => self.offset + t,
        };
        if !d.is_multiple_of(2) || last * half > self.cos.len() {
            candle_core::bail!(
                "fused-rope: head dim {d} odd, or positions {last} beyond the table"
            );
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        // One task per (batch, position): h rows of d values.
        y.par_chunks_mut(h * d)
            .zip(x.par_chunks(h * d))
            .enumerate()
            .for_each(|(bt, (y, x))| {
                let p = match &self.positions {
                    Some(p) => p[bt] as usize,
                    None => self.offset + bt % t,
                };
                let cos = &self.cos[p * half..(p + 1) * half];
                let sin = &self.sin[p * half..(p + 1) * half];
                for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                    rotate_row(x, cos, sin, sign, y);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = RopeOp {
            inverse: !self.inverse,
            ..self.clone()
        };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// Whether the fused op applies to `x`.
pub fn usable(x: &Tensor) -> bool {
    fused(x.device()) && x.dtype() == candle_core::DType::F32
}
