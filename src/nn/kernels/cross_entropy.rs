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

multiversion! {
    fn row_grad_in_place(x: &mut [f32], lse: f32, g: f32) {
        for v in x.iter_mut() {
            *v = g * exp(*v - lse);
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
    let logp = super::ops::log_softmax(logits)?;
    Ok(logp
        .gather(&targets.unsqueeze(1)?, D::Minus1)?
        .squeeze(1)?
        .neg()?)
}

/// Rows of the `[n, vocab]` logits materialised at a time.
const HEAD_CHUNK: usize = 256;

/// The output projection and the mean cross-entropy in one op, for training: logits are made
/// `HEAD_CHUNK` rows at a time and turned into their gradient at once, so the `[n, vocab]`
/// logits (and their gradient) never exist whole. The op's output packs `[loss, dh, dW]`;
/// backward only scales `dh` and `dW` by the incoming gradient of the loss. Same FLOPs as the
/// separate matmul and loss, a fraction of the memory traffic. With `weight_grad` false (a
/// frozen head) `dW` is neither computed nor packed.
/// The head's products take bf16 operands with `precision` bf16; the loss stays f32.
#[derive(Clone, Copy, Debug)]
pub struct HeadCrossEntropy {
    pub weight_grad: bool,
    pub precision: super::bf16::Precision,
}

impl CustomOp3 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        st: &CpuStorage,
        lt: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use super::bf16::product;
        use super::gemm::{View, ViewMut};
        let p = self.precision;
        let (n, c) = lh.shape().dims2()?;
        let (v, wc) = lw.shape().dims2()?;
        if wc != c {
            candle_core::bail!(
                "{}: hidden size {c} but the head weight is {v}x{wc}",
                self.name()
            );
        }
        let h = f32s(sh, lh, self.name())?;
        let w = f32s(sw, lw, self.name())?;
        let t = u32s(st, lt, self.name())?;
        check(self.name(), n, v, t)?;
        let nw = if self.weight_grad { v * c } else { 0 };
        let mut out = vec![0f32; 1 + n * c + nw];
        let (loss_slot, rest) = out.split_at_mut(1);
        let (dh, dw) = rest.split_at_mut(n * c);
        let wv = View::rows(w, v, c, c);
        let mut logits = vec![0f32; HEAD_CHUNK.min(n) * v];
        let inv_n = 1.0 / n as f32;
        let mut loss = 0f64;
        for r0 in (0..n).step_by(HEAD_CHUNK) {
            let rows = HEAD_CHUNK.min(n - r0);
            let hc = View::rows(&h[r0 * c..], rows, c, c);
            let lg = &mut logits[..rows * v];
            product(p, ViewMut::rows(lg, rows, v, v), hc, wv.t(), false, true)?;
            // Each row becomes (softmax - onehot) / n, its NLL summed.
            let per_task = rows_per_task(rows, v);
            let chunk_loss: f64 = lg
                .par_chunks_mut(per_task * v)
                .enumerate()
                .map(|(ci, block)| {
                    let mut s = 0f64;
                    for (k, row) in block.chunks_mut(v).enumerate() {
                        let tr = t[r0 + ci * per_task + k] as usize;
                        let l = lse(row);
                        s += (l - row[tr]) as f64;
                        row_grad_in_place(row, l, inv_n);
                        row[tr] -= inv_n;
                    }
                    s
                })
                .sum();
            loss += chunk_loss;
            let g = View::rows(lg, rows, v, v);
            product(
                p,
                ViewMut::rows(&mut dh[r0 * c..(r0 + rows) * c], rows, c, c),
                g,
                wv,
                false,
                true,
            )?;
            if self.weight_grad {
                product(p, ViewMut::rows(dw, v, c, c), g.t(), hc, true, true)?;
            }
        }
        loss_slot[0] = (loss / n as f64) as f32;
        Ok((CpuStorage::F32(out), Shape::from(1 + n * c + nw)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _t: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (nh, nw) = (h.elem_count(), w.elem_count());
        let g = grad.narrow(0, 0, 1)?;
        let dh = res
            .narrow(0, 1, nh)?
            .broadcast_mul(&g)?
            .reshape(h.shape())?;
        let dw = if self.weight_grad {
            Some(
                res.narrow(0, 1 + nh, nw)?
                    .broadcast_mul(&g)?
                    .reshape(w.shape())?,
            )
        } else {
            None
        };
        Ok((super::tracked(h).then_some(dh), dw, None))
    }
}

/// Mean cross-entropy of `targets` `[n]` under `h` `[n, c]` projected by `w` `[vocab, c]`, for
/// training (it computes the gradients in the forward pass). `None` where not fused.
pub fn head_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
) -> crate::Result<Option<Tensor>> {
    if !fused(h.device()) || h.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let op = HeadCrossEntropy {
        weight_grad: super::tracked(w),
        precision: super::bf16::current(),
    };
    let packed = h
        .contiguous()?
        .apply_op3(&w.contiguous()?, &targets.contiguous()?, op)?;
    Ok(Some(packed.narrow(0, 0, 1)?.squeeze(0)?))
}
