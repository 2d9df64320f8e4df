//! Cross-entropy fused with log-softmax over the vocabulary: per row one pass for the max,
//! one for the sum of exponentials, and in backward one more writing `softmax - onehot`. The
//! composition made half a dozen vocabulary-sized temporaries (64 MB each for 2048 tokens
//! of an 8192 vocabulary).

use super::math::{exp, max};
use super::{f32s, fused, rows_per_task, u32s};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

multiversion! {
    fn row_max(x: &[f32]) -> f32 {
        max(x)
    }
}

multiversion! {
    fn row_sum_exp(x: &[f32], m: f32) -> f32 {
        let mut acc = [0f32; 16];
        let chunks = x.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..16 {
                acc[i] += exp(c[i] - m);
            }
        }
        acc.iter().sum::<f32>() + rest.iter().map(|&v| exp(v - m)).sum::<f32>()
    }
}

multiversion! {
    fn row_grad(x: &[f32], lse: f32, g: f32, dx: &mut [f32]) {
        for (d, &v) in dx.iter_mut().zip(x) {
            *d = g * exp(v - lse);
        }
    }
}

fn lse(row: &[f32]) -> f32 {
    let m = row_max(row);
    m + row_sum_exp(row, m).ln()
}

/// Per-row negative log-likelihood of `targets` under `softmax(logits)`.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropy;

struct CrossEntropyGrad;

fn check(op: &str, n: usize, v: usize, t: &[u32]) -> candle_core::Result<()> {
    if t.len() != n {
        candle_core::bail!("{op}: {n} rows of logits but {} targets", t.len());
    }
    if let Some(bad) = t.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("{op}: target {bad} outside the vocabulary of {v}");
    }
    Ok(())
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let x = f32s(s1, l1, self.name())?;
        let t = u32s(s2, l2, self.name())?;
        check(self.name(), n, v, t)?;
        let mut out = vec![0f32; n];
        let rows = rows_per_task(n, v);
        out.par_chunks_mut(rows).enumerate().for_each(|(ci, o)| {
            for (k, o) in o.iter_mut().enumerate() {
                let r = ci * rows + k;
                let row = &x[r * v..(r + 1) * v];
                *o = lse(row) - row[t[r] as usize];
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        Ok((
            Some(logits.apply_op3_no_bwd(targets, &g, &CrossEntropyGrad)?),
            None,
        ))
    }
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
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
        let (n, v) = l1.shape().dims2()?;
        let x = f32s(s1, l1, self.name())?;
        let t = u32s(s2, l2, self.name())?;
        let g = f32s(s3, l3, self.name())?;
        let mut dx = vec![0f32; n * v];
        let rows = rows_per_task(n, v);
        dx.par_chunks_mut(rows * v).enumerate().for_each(|(ci, d)| {
            for (k, d) in d.chunks_mut(v).enumerate() {
                let r = ci * rows + k;
                let row = &x[r * v..(r + 1) * v];
                row_grad(row, lse(row), g[r], d);
                d[t[r] as usize] -= g[r];
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Per-row NLL `[n]` of `targets` `[n]` (u32) under `logits` `[n, v]`.
pub fn nll_rows(logits: &Tensor, targets: &Tensor) -> crate::Result<Tensor> {
    if fused(logits.device()) && logits.dtype() == candle_core::DType::F32 {
        return Ok(logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)?);
    }
    nll_rows_plain(logits, targets)
}

/// The reference composition: log-softmax, gather, negate.
pub fn nll_rows_plain(logits: &Tensor, targets: &Tensor) -> crate::Result<Tensor> {
    let logp = crate::nn::ops::log_softmax(logits)?;
    Ok(logp
        .gather(&targets.unsqueeze(1)?, D::Minus1)?
        .squeeze(1)?
        .neg()?)
}
