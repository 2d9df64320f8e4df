//! Causal multi-head attention as one op over the fused `[b, t, (h + 2 kvh) d]` query/key/value
//! projection (`kvh` key/value heads shared by groups of query heads: grouped-query attention,
//! read in place rather than repeated), blocked over queries (flash-attention style): for each head and block of 64
//! queries, scores against the visible keys, softmax, and the weighted sum of values. No
//! `[b, h, t, t]` probability tensor is stored (memory grows with `t`, not `t^2`); backward
//! recomputes each block's probabilities from q and k. Heads run in parallel; q, k and v are
//! read in place as strided views, so there are no transposes or copies.

use super::gemm::{a_bt, matmul, View, ViewMut};
use super::softmax::{bwd_row, softmax_in_place};
use super::{f32s, fused};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Queries per block.
const BQ: usize = 64;

/// Causal attention over `qkv` `[b, t, (h + 2 kvh) d]` (the `h` query heads, then the `kvh`
/// key heads, then the `kvh` value heads; query head `i` reads key/value head `i / (h / kvh)`)
/// with `n_head` = h query heads; output `[b, t, h d]`. With `starts` (`[b * t]`: the first key
/// each query may see), several examples packed in one row attend only within themselves.
#[derive(Clone, Debug)]
pub struct CausalAttention {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub starts: Option<Arc<Vec<u32>>>,
}

struct CausalAttentionGrad {
    op: CausalAttention,
}

struct Geometry {
    b: usize,
    t: usize,
    /// Query width `h * hd`.
    c: usize,
    /// Row width of the packed input, `(h + 2 kvh) * hd`.
    w: usize,
    h: usize,
    kvh: usize,
    hd: usize,
    scale: f32,
}

impl Geometry {
    /// The key/value head query head `h` reads.
    fn kv_of(&self, h: usize) -> usize {
        h / (self.h / self.kvh)
    }
}

fn geometry(
    op: &str,
    l: &Layout,
    n_head: usize,
    n_kv_head: usize,
) -> candle_core::Result<Geometry> {
    let (b, t, w) = l.shape().dims3()?;
    let parts = n_head + 2 * n_kv_head;
    if n_head == 0
        || n_kv_head == 0
        || !n_head.is_multiple_of(n_kv_head)
        || !w.is_multiple_of(parts)
    {
        candle_core::bail!(
            "{op}: last dimension {w} is not (heads {n_head} + 2 x key/value heads {n_kv_head}) x head_dim, with the heads a multiple of the key/value heads"
        );
    }
    let hd = w / parts;
    Ok(Geometry {
        b,
        t,
        c: n_head * hd,
        w,
        h: n_head,
        kvh: n_kv_head,
        hd,
        scale: 1.0 / (hd as f32).sqrt(),
    })
}

/// q of query head `h`, and k and v of the key/value head it reads, in one batch element's
/// `[t, w]` slice.
fn qkv_views<'a>(xb: &'a [f32], g: &Geometry, h: usize) -> (View<'a>, View<'a>, View<'a>) {
    let kv = g.kv_of(h);
    let at = |col: usize| View::rows(&xb[col..], g.t, g.hd, g.w);
    (
        at(h * g.hd),
        at(g.c + kv * g.hd),
        at(g.c + (g.kvh + kv) * g.hd),
    )
}

/// Softmax probabilities of query rows `i0 .. i0 + nb` over keys `0 .. i0 + nb`, into `p`;
/// `starts` (this batch element's `[t]`) hides the keys before each query's example.
fn block_probs(
    q: View,
    k: View,
    g: &Geometry,
    i0: usize,
    nb: usize,
    starts: Option<&[u32]>,
    p: &mut [f32],
) {
    let kmax = i0 + nb;
    let p = &mut p[..nb * kmax];
    a_bt(p, q.row_range(i0, nb), k.row_range(0, kmax));
    for (r, row) in p.chunks_mut(kmax).enumerate() {
        // Query i0 + r sees keys start ..= i0 + r.
        let start = starts.map_or(0, |s| s[i0 + r] as usize);
        row[..start].fill(0.0);
        softmax_in_place(&mut row[start..], g.scale, i0 + r + 1 - start);
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geometry(self.name(), l, self.n_head, self.n_kv_head)?;
        let x = f32s(s, l, self.name())?;
        let head = g.t * g.hd;
        // Per-head outputs [b, h, t, hd], then interleaved into [b, t, c].
        let mut heads = vec![0f32; g.b * g.h * head];
        heads
            .par_chunks_mut(head)
            .enumerate()
            .for_each(|(task, out)| {
                let (bi, h) = (task / g.h, task % g.h);
                let xb = &x[bi * g.t * g.w..(bi + 1) * g.t * g.w];
                let (q, k, v) = qkv_views(xb, &g, h);
                let starts = self.starts.as_ref().map(|s| &s[bi * g.t..(bi + 1) * g.t]);
                let mut p = vec![0f32; BQ * g.t];
                for i0 in (0..g.t).step_by(BQ) {
                    let nb = BQ.min(g.t - i0);
                    let kmax = i0 + nb;
                    block_probs(q, k, &g, i0, nb, starts, &mut p);
                    matmul(
                        ViewMut::rows(&mut out[i0 * g.hd..(i0 + nb) * g.hd], nb, g.hd, g.hd),
                        View::rows(&p, nb, kmax, kmax),
                        v.row_range(0, kmax),
                        false,
                        false,
                    );
                }
            });
        let mut y = vec![0f32; g.b * g.t * g.c];
        y.par_chunks_mut(g.t * g.c)
            .enumerate()
            .for_each(|(bi, yb)| {
                for h in 0..g.h {
                    let src = &heads[(bi * g.h + h) * head..(bi * g.h + h + 1) * head];
                    for (row, s) in yb.chunks_mut(g.c).zip(src.chunks(g.hd)) {
                        row[h * g.hd..(h + 1) * g.hd].copy_from_slice(s);
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.t, g.c))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &CausalAttentionGrad { op: self.clone() },
        )?))
    }
}

impl CustomOp2 for CausalAttentionGrad {
    fn name(&self) -> &'static str {
        "fused-causal-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geometry(self.name(), l1, self.op.n_head, self.op.n_kv_head)?;
        let x = f32s(s1, l1, self.name())?;
        let dy = f32s(s2, l2, self.name())?;
        let head = g.t * g.hd;
        // Per query head: [dq | dk | dv], each [t, hd]; the dk and dv of the query heads sharing
        // a key/value head are summed when written out.
        let mut grads = vec![0f32; g.b * g.h * 3 * head];
        grads
            .par_chunks_mut(3 * head)
            .enumerate()
            .for_each(|(task, out)| {
                let (bi, h) = (task / g.h, task % g.h);
                let xb = &x[bi * g.t * g.w..(bi + 1) * g.t * g.w];
                let dyh = View::rows(&dy[bi * g.t * g.c + h * g.hd..], g.t, g.hd, g.c);
                let (q, k, v) = qkv_views(xb, &g, h);
                let starts = self
                    .op
                    .starts
                    .as_ref()
                    .map(|s| &s[bi * g.t..(bi + 1) * g.t]);
                let (dq, rest) = out.split_at_mut(head);
                let (dk, dv) = rest.split_at_mut(head);
                let mut p = vec![0f32; BQ * g.t];
                let mut dp = vec![0f32; BQ * g.t];
                let mut ds = vec![0f32; BQ * g.t];
                for i0 in (0..g.t).step_by(BQ) {
                    let nb = BQ.min(g.t - i0);
                    let kmax = i0 + nb;
                    block_probs(q, k, &g, i0, nb, starts, &mut p);
                    let pv = View::rows(&p, nb, kmax, kmax);
                    let dy_blk = dyh.row_range(i0, nb);
                    // dV[0..kmax] += P^T dY
                    matmul(
                        ViewMut::rows(&mut dv[..kmax * g.hd], kmax, g.hd, g.hd),
                        pv.t(),
                        dy_blk,
                        true,
                        false,
                    );
                    // dP = dY V^T
                    a_bt(&mut dp[..nb * kmax], dy_blk, v.row_range(0, kmax));
                    for ((prow, dprow), dsrow) in p[..nb * kmax]
                        .chunks(kmax)
                        .zip(dp[..nb * kmax].chunks(kmax))
                        .zip(ds[..nb * kmax].chunks_mut(kmax))
                    {
                        bwd_row(prow, dprow, g.scale, dsrow);
                    }
                    let dsv = View::rows(&ds, nb, kmax, kmax);
                    // dQ rows = dS K ; dK[0..kmax] += dS^T Q_blk
                    matmul(
                        ViewMut::rows(&mut dq[i0 * g.hd..(i0 + nb) * g.hd], nb, g.hd, g.hd),
                        dsv,
                        k.row_range(0, kmax),
                        false,
                        false,
                    );
                    matmul(
                        ViewMut::rows(&mut dk[..kmax * g.hd], kmax, g.hd, g.hd),
                        dsv.t(),
                        q.row_range(i0, nb),
                        true,
                        false,
                    );
                }
            });
        let mut dx = vec![0f32; g.b * g.t * g.w];
        dx.par_chunks_mut(g.t * g.w)
            .enumerate()
            .for_each(|(bi, xb)| {
                for h in 0..g.h {
                    let base = (bi * g.h + h) * 3 * head;
                    let kv = g.kv_of(h);
                    let first = h % (g.h / g.kvh) == 0;
                    for part in 0..3 {
                        let src = &grads[base + part * head..base + (part + 1) * head];
                        let o = match part {
                            0 => h * g.hd,
                            1 => g.c + kv * g.hd,
                            _ => g.c + (g.kvh + kv) * g.hd,
                        };
                        for (row, s) in xb.chunks_mut(g.w).zip(src.chunks(g.hd)) {
                            let dst = &mut row[o..o + g.hd];
                            if part == 0 || first {
                                dst.copy_from_slice(s);
                            } else {
                                dst.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Fused causal attention of `qkv` `[b, t, (n_head + 2 n_kv_head) d]` (within each packed
/// example when `segments` is given), or `None` where it does not apply.
pub fn causal_attention(
    qkv: &Tensor,
    n_head: usize,
    n_kv_head: usize,
    segments: Option<&crate::nn::Segments>,
) -> crate::Result<Option<Tensor>> {
    if !fused(qkv.device()) || qkv.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let starts = segments.map(|s| s.starts.clone());
    Ok(Some(qkv.contiguous()?.apply_op1(CausalAttention {
        n_head,
        n_kv_head,
        starts,
    })?))
}
