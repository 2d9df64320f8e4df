//! Multi-head attention over separate query `[b, t, c]` and key/value `[b, s, c]` projections
//! (BERT, Marian, ViT: self- or cross-attention) as one op. Per batch element and head: the
//! scores, an additive key mask (padding), the causal mask, softmax, attention dropout and the
//! value product, with heads read and written in place as strided views, so the composition's
//! head transposes, score and probability tensors and their backward passes never exist.
//! Backward recomputes each block's probabilities from q and k and regenerates the dropout
//! mask from its seed instead of storing either.

use super::dropout::DropoutOp;
use super::gemm::{a_bt, matmul, View, ViewMut};
use super::softmax::{bwd_row, softmax_in_place};
use super::{f32s, fused};
use crate::rng::Rng;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Queries per block.
const BQ: usize = 64;

/// Attention of queries `[b, t, c]` over keys and values `[b, s, c]`, `n_head` heads.
#[derive(Clone, Debug)]
pub struct MultiHeadOp {
    pub n_head: usize,
    /// Query `i` sees keys `0 ..= s - t + i` (the queries are the last `t` positions).
    pub causal: bool,
    /// `[b, s]`, added to every query's scaled scores (0 or minus infinity for padding).
    pub key_bias: Option<Arc<Vec<f32>>>,
    /// Dropout on the probabilities; element `(b, h, i, j)` of the `[b, h, t, s]`
    /// probabilities takes mask value number `((b * heads + h) * t + i) * s + j`, as dropout of
    /// the composed path's probability tensor does.
    pub dropout: Option<DropoutOp>,
}

/// The gradient op: `dy` is carried along (candle's custom ops take at most three inputs).
struct MultiHeadGrad {
    op: MultiHeadOp,
    dy: Tensor,
}

#[derive(Clone, Copy)]
struct Geometry {
    b: usize,
    t: usize,
    s: usize,
    c: usize,
    h: usize,
    hd: usize,
    scale: f32,
}

struct Inputs<'a> {
    g: Geometry,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl<'a> Inputs<'a> {
    /// Batch element `bi`'s `[t, c]` queries and `[s, c]` keys and values.
    fn batch(&self, bi: usize) -> (&'a [f32], &'a [f32], &'a [f32]) {
        let g = &self.g;
        let (nq, nk) = (g.t * g.c, g.s * g.c);
        (
            &self.q[bi * nq..(bi + 1) * nq],
            &self.k[bi * nk..(bi + 1) * nk],
            &self.v[bi * nk..(bi + 1) * nk],
        )
    }
}

impl MultiHeadOp {
    fn geometry(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> candle_core::Result<Geometry> {
        let (b, t, c) = lq.shape().dims3()?;
        let (bk, s, ck) = lk.shape().dims3()?;
        if lv.shape().dims() != lk.shape().dims() || bk != b || ck != c {
            candle_core::bail!(
                "multi-head attention: queries {:?}, keys {:?}, values {:?} do not match",
                lq.shape(),
                lk.shape(),
                lv.shape()
            );
        }
        if self.n_head == 0 || c % self.n_head != 0 {
            candle_core::bail!(
                "multi-head attention: width {c} not divisible by {} heads",
                self.n_head
            );
        }
        if self.causal && t > s {
            candle_core::bail!("multi-head attention: causal with {t} queries over {s} keys");
        }
        if let Some(bias) = &self.key_bias {
            if bias.len() != b * s {
                candle_core::bail!(
                    "multi-head attention: key mask of {} for [{b}, {s}]",
                    bias.len()
                );
            }
        }
        let hd = c / self.n_head;
        Ok(Geometry {
            b,
            t,
            s,
            c,
            h: self.n_head,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        })
    }

    /// The geometry and the contiguous f32 data of q, k and v (`op` names errors).
    #[allow(clippy::too_many_arguments)]
    fn inputs<'a>(
        &self,
        op: &str,
        sq: &'a CpuStorage,
        lq: &Layout,
        sk: &'a CpuStorage,
        lk: &Layout,
        sv: &'a CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<Inputs<'a>> {
        Ok(Inputs {
            g: self.geometry(lq, lk, lv)?,
            q: f32s(sq, lq, op)?,
            k: f32s(sk, lk, op)?,
            v: f32s(sv, lv, op)?,
        })
    }

    /// Keys visible to the query block starting at `i0` of `nb` queries.
    fn keys(&self, g: &Geometry, i0: usize, nb: usize) -> usize {
        if self.causal {
            g.s - g.t + i0 + nb
        } else {
            g.s
        }
    }

    /// Probabilities of queries `i0 .. i0 + nb` of head `hh` of batch element `bi` over keys
    /// `0 .. kmax`, into `p` (`[nb, kmax]`); dropped ones zeroed in `pd` when there is dropout.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        g: &Geometry,
        q: View,
        k: View,
        bi: usize,
        hh: usize,
        i0: usize,
        nb: usize,
        p: &mut [f32],
        pd: &mut [f32],
    ) -> usize {
        let kmax = self.keys(g, i0, nb);
        let p = &mut p[..nb * kmax];
        a_bt(p, q.row_range(i0, nb), k.row_range(0, kmax));
        let bias = self
            .key_bias
            .as_ref()
            .map(|b| &b[bi * g.s..bi * g.s + kmax]);
        for (r, row) in p.chunks_mut(kmax).enumerate() {
            let visible = if self.causal {
                g.s - g.t + i0 + r + 1
            } else {
                kmax
            };
            match bias {
                Some(bias) => {
                    for (x, &m) in row[..visible].iter_mut().zip(bias) {
                        *x = *x * g.scale + m;
                    }
                    softmax_in_place(row, 1.0, visible);
                }
                None => softmax_in_place(row, g.scale, visible),
            }
        }
        if let Some(d) = &self.dropout {
            let pd = &mut pd[..nb * kmax];
            pd.copy_from_slice(p);
            for (r, row) in pd.chunks_mut(kmax).enumerate() {
                let first = (((bi * g.h + hh) * g.t + i0 + r) * g.s) as u64;
                d.apply_in_place(row, first);
            }
        }
        kmax
    }
}

/// Head `hh`'s `[rows, hd]` view of a `[rows, c]` slab.
fn head<'a>(x: &'a [f32], g: &Geometry, rows: usize, hh: usize) -> View<'a> {
    View::rows(&x[hh * g.hd..], rows, g.hd, g.c)
}

fn head_mut<'a>(x: &'a mut [f32], g: &Geometry, rows: usize, hh: usize) -> ViewMut<'a> {
    ViewMut::rows(&mut x[hh * g.hd..], rows, g.hd, g.c)
}

impl CustomOp3 for MultiHeadOp {
    fn name(&self) -> &'static str {
        "fused-multi-head-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let inp = self.inputs(self.name(), sq, lq, sk, lk, sv, lv)?;
        let g = inp.g;
        let mut y = vec![0f32; g.b * g.t * g.c];
        y.par_chunks_mut(g.t * g.c)
            .enumerate()
            .for_each(|(bi, yb)| {
                let (qb, kb, vb) = inp.batch(bi);
                let n = BQ.min(g.t) * g.s;
                let mut p = vec![0f32; n];
                let mut pd = vec![0f32; if self.dropout.is_some() { n } else { 0 }];
                for hh in 0..g.h {
                    let (qh, kh, vh) = (
                        head(qb, &g, g.t, hh),
                        head(kb, &g, g.s, hh),
                        head(vb, &g, g.s, hh),
                    );
                    for i0 in (0..g.t).step_by(BQ) {
                        let nb = BQ.min(g.t - i0);
                        let kmax = self.block(&g, qh, kh, bi, hh, i0, nb, &mut p, &mut pd);
                        let probs = if self.dropout.is_some() { &pd } else { &p };
                        matmul(
                            head_mut(&mut yb[i0 * g.c..], &g, nb, hh),
                            View::rows(probs, nb, kmax, kmax),
                            vh.row_range(0, kmax),
                            false,
                            false,
                        );
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.t, g.c))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, c) = q.dims3()?;
        let s = k.dim(1)?;
        let op = MultiHeadGrad {
            op: self.clone(),
            dy: grad.contiguous()?,
        };
        let all = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (b * t * c, b * s * c);
        Ok((
            Some(all.narrow(0, 0, nq)?.reshape((b, t, c))?),
            Some(all.narrow(0, nq, nk)?.reshape((b, s, c))?),
            Some(all.narrow(0, nq + nk, nk)?.reshape((b, s, c))?),
        ))
    }
}

impl CustomOp3 for MultiHeadGrad {
    fn name(&self) -> &'static str {
        "fused-multi-head-attention-grad"
    }

    /// `[dq | dk | dv]`, flattened.
    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = &self.op;
        let inp = op.inputs(self.name(), sq, lq, sk, lk, sv, lv)?;
        let g = inp.g;
        let (dy_storage, dy_layout) = self.dy.storage_and_layout();
        let dy = match &*dy_storage {
            Storage::Cpu(st) => f32s(st, dy_layout, self.name())?,
            _ => candle_core::bail!("{}: the gradient is not on the CPU", self.name()),
        };
        if dy.len() != g.b * g.t * g.c {
            candle_core::bail!(
                "{}: gradient of {} for [{}, {}, {}]",
                self.name(),
                dy.len(),
                g.b,
                g.t,
                g.c
            );
        }
        let (nq, nk) = (g.b * g.t * g.c, g.b * g.s * g.c);
        let mut out = vec![0f32; nq + 2 * nk];
        let (dq, rest) = out.split_at_mut(nq);
        let (dk, dv) = rest.split_at_mut(nk);
        dq.par_chunks_mut(g.t * g.c)
            .zip(dk.par_chunks_mut(g.s * g.c))
            .zip(dv.par_chunks_mut(g.s * g.c))
            .enumerate()
            .for_each(|(bi, ((dqb, dkb), dvb))| {
                let (qb, kb, vb) = inp.batch(bi);
                let dyb = &dy[bi * g.t * g.c..(bi + 1) * g.t * g.c];
                let n = BQ.min(g.t) * g.s;
                let mut p = vec![0f32; n];
                let mut pd = vec![0f32; if op.dropout.is_some() { n } else { 0 }];
                let mut dp = vec![0f32; n];
                let mut ds = vec![0f32; n];
                for hh in 0..g.h {
                    let (qh, kh, vh, dyh) = (
                        head(qb, &g, g.t, hh),
                        head(kb, &g, g.s, hh),
                        head(vb, &g, g.s, hh),
                        head(dyb, &g, g.t, hh),
                    );
                    for i0 in (0..g.t).step_by(BQ) {
                        let nb = BQ.min(g.t - i0);
                        let kmax = op.block(&g, qh, kh, bi, hh, i0, nb, &mut p, &mut pd);
                        let m = nb * kmax;
                        let probs = if op.dropout.is_some() { &pd } else { &p };
                        let dy_blk = dyh.row_range(i0, nb);
                        // dV[..kmax] += P_dropped^T dY
                        matmul(
                            head_mut(dvb, &g, kmax, hh),
                            View::rows(probs, nb, kmax, kmax).t(),
                            dy_blk,
                            true,
                            false,
                        );
                        // dP = (dY V^T) * mask
                        a_bt(&mut dp[..m], dy_blk, vh.row_range(0, kmax));
                        if let Some(d) = &op.dropout {
                            for (r, row) in dp[..m].chunks_mut(kmax).enumerate() {
                                let first = (((bi * g.h + hh) * g.t + i0 + r) * g.s) as u64;
                                d.apply_in_place(row, first);
                            }
                        }
                        for ((prow, dprow), dsrow) in p[..m]
                            .chunks(kmax)
                            .zip(dp[..m].chunks(kmax))
                            .zip(ds[..m].chunks_mut(kmax))
                        {
                            bwd_row(prow, dprow, g.scale, dsrow);
                        }
                        let dsv = View::rows(&ds[..m], nb, kmax, kmax);
                        // dQ rows = dS K ; dK[..kmax] += dS^T Q_blk
                        matmul(
                            head_mut(&mut dqb[i0 * g.c..], &g, nb, hh),
                            dsv,
                            kh.row_range(0, kmax),
                            false,
                            false,
                        );
                        matmul(
                            head_mut(dkb, &g, kmax, hh),
                            dsv.t(),
                            qh.row_range(i0, nb),
                            true,
                            false,
                        );
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(nq + 2 * nk)))
    }
}

/// The fused attention of `q` `[b, t, c]` over `k`, `v` `[b, s, c]`, with dropout `p` on the
/// probabilities when `rng` is given (one draw from it, as the composed path's dropout), or
/// `None`, drawing nothing, where it does not apply (another device or dtype, or a mask other
/// than one additive value per key, `[b, 1, 1, s]`).
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    causal: bool,
    key_mask: Option<&Tensor>,
    p: f64,
    rng: Option<&mut Rng>,
) -> crate::Result<Option<Tensor>> {
    if !fused(q.device()) || q.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let (b, _, _) = q.dims3()?;
    let s = k.dim(1)?;
    let key_bias = match key_mask {
        None => None,
        Some(m) if m.dims() == [b, 1, 1, s] => Some(Arc::new(
            m.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        )),
        Some(_) => return Ok(None),
    };
    let dropout = match rng {
        Some(rng) if p > 0.0 => Some(DropoutOp {
            p,
            seed: rng.next_u64(),
        }),
        _ => None,
    };
    let op = MultiHeadOp {
        n_head,
        causal,
        key_bias,
        dropout,
    };
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::attention::grouped_attention;
    use crate::nn::dropout::Dropout;
    use candle_core::{Device, Var};

    /// `[b, t, c]` into heads `[b, h, t, c / h]`.
    fn split(x: &Tensor, h: usize) -> Tensor {
        let (b, t, c) = x.dims3().unwrap();
        x.reshape((b, t, h, c / h))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst <= tol * scale, "{what}: {worst} (largest {scale})");
    }

    /// The fused op against the composition (`grouped_attention`) on the same inputs and
    /// dropout seed: outputs and the gradients of q, k and v.
    fn check(b: usize, t: usize, s: usize, h: usize, causal: bool, padded: bool, p: f64) {
        let dev = Device::Cpu;
        let c = 8 * h;
        let var = |n: usize| {
            Var::from_tensor(&Tensor::randn(0f32, 1., (b, n, c), &dev).unwrap()).unwrap()
        };
        let (q, k, v) = (var(t), var(s), var(s));
        // Batch element i sees its first s - 2i keys (padding after them).
        let mask = padded.then(|| {
            let m: Vec<f32> = (0..b * s)
                .map(|i| {
                    if i % s < s - 2 * (i / s) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            Tensor::from_vec(m, (b, 1, 1, s), &dev).unwrap()
        });
        let w = Tensor::randn(0f32, 1., (b, t, c), &dev).unwrap();
        let mut r1 = Rng::new(5);
        let mut r2 = Rng::new(5);
        let y1 = multi_head_attention(&q, &k, &v, h, causal, mask.as_ref(), p, Some(&mut r1))
            .unwrap()
            .unwrap();
        let y2 = grouped_attention(
            &split(&q, h),
            &split(&k, h),
            &split(&v, h),
            causal.then_some(s - t),
            mask.as_ref(),
            &Dropout { p },
            Some(&mut r2),
        )
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, c))
        .unwrap();
        assert_eq!(r1, r2, "one draw each");
        let what = format!("b{b} t{t} s{s} h{h} causal {causal} padded {padded} p {p}");
        close(&y1, &y2, 1e-5, &what);
        let g1 = (y1 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (y2 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (x, name) in [(&q, "dq"), (&k, "dk"), (&v, "dv")] {
            close(
                g1.get(x).unwrap(),
                g2.get(x).unwrap(),
                1e-5,
                &format!("{what} {name}"),
            );
        }
    }

    #[test]
    fn fused_equals_the_composition() {
        // Cross-attention with padded keys; self-attention, causal; both with dropout; more
        // queries than one block (64), and causal queries that are the last of the keys.
        check(3, 5, 7, 2, false, true, 0.0);
        check(3, 5, 7, 2, false, true, 0.3);
        check(2, 6, 6, 4, true, false, 0.0);
        check(2, 6, 6, 4, true, false, 0.2);
        check(2, 70, 70, 2, true, true, 0.1);
        check(2, 70, 90, 2, false, true, 0.0);
        check(1, 3, 9, 1, true, false, 0.0);
    }
}
