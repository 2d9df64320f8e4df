//! Attention of one new token per sequence over that sequence's key/value cache: a decode
//! step, for every row of a continuous batch at once.
//!
//! The composition copies each cache view (strided: the buffer has room to grow) to a
//! contiguous tensor and runs two small GEMMs per row, one row after another; at 16
//! sequences that was a fifth of a serving step, on one thread. Here the cache is read in
//! place and the (row, query head) pairs are shared out with [`super::team::par_for`].
//!
//! Inference only: the op has no backward (candle reports an error if one is asked for).
//! Tested against a plain composition of candle ops in `tests/kernels.rs`, and end to end by
//! the families' generation tests against transformers.

use super::math::{dot, tanh};
use super::softmax::softmax_in_place;
use super::{f32s, team, SendPtr};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

/// Queries `[b, heads, 1, d]` (contiguous) against row `r`'s keys and values
/// `kv[r]`, each `[1, kv_heads, s_r, d]` with contiguous rows (views of a cache are fine):
/// `[b, heads, 1, d]`. The query is the last of its row's `s_r` positions.
#[derive(Clone, Debug)]
pub struct DecodeAttention {
    pub kv: Vec<(Tensor, Tensor)>,
    pub n_head: usize,
    /// On the scores, before the soft cap.
    pub scale: f32,
    /// Scores become `cap tanh(score / cap)`.
    pub softcap: Option<f32>,
    /// Only the last `window` positions (the query's own included) are seen.
    pub window: Option<usize>,
}

/// One row's keys or values in its storage: element `(head, pos, i)` at
/// `at + head * hs + pos * ps + i`.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    at: usize,
    hs: usize,
    ps: usize,
}

impl<'a> Rows<'a> {
    fn row(&self, head: usize, pos: usize, d: usize) -> &'a [f32] {
        let s = self.at + head * self.hs + pos * self.ps;
        &self.data[s..s + d]
    }
}

/// A row's keys or values `[1, kv_heads, n, d]` in `s`, and `n`, checked against the
/// queries' shape `q`.
fn rows_of<'a>(
    s: &'a Storage,
    l: &Layout,
    q: [usize; 4],
    name: &str,
) -> candle_core::Result<(Rows<'a>, usize)> {
    let (one, heads, n, d) = l.shape().dims4()?;
    let st = l.stride();
    let Storage::Cpu(CpuStorage::F32(data)) = s else {
        candle_core::bail!("{name}: keys and values must be f32 on the CPU")
    };
    if one != 1 || d != q[3] || st[3] != 1 || heads == 0 || !q[1].is_multiple_of(heads) {
        candle_core::bail!(
            "{name}: keys/values {:?} (strides {st:?}) do not fit queries {q:?}",
            l.shape().dims()
        );
    }
    let rows = Rows {
        data,
        at: l.start_offset(),
        hs: st[1],
        ps: st[2],
    };
    Ok((rows, n))
}

multiversion! {
    /// `out` = softmax(scores) · values for one query head reading key/value head `g` from
    /// position `first`; `p` is scratch, one per key seen.
    fn head(
        q: &[f32],
        kv: [Rows; 2],
        at: (usize, usize),
        op: &DecodeAttention,
        p: &mut [f32],
        out: &mut [f32],
    ) {
        let ([k, v], (g, first)) = (kv, at);
        let d = q.len();
        for (j, p) in p.iter_mut().enumerate() {
            let s = dot(q, k.row(g, first + j, d)) * op.scale;
            *p = match op.softcap {
                Some(c) => c * tanh(s / c),
                None => s,
            };
        }
        let n = p.len();
        softmax_in_place(p, 1.0, n);
        out.fill(0.0);
        for (j, &w) in p.iter().enumerate() {
            for (o, &x) in out.iter_mut().zip(v.row(g, first + j, d)) {
                *o += w * x;
            }
        }
    }
}

impl CustomOp1 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let q = f32s(s, l, name)?;
        let (b, h, t, d) = l.shape().dims4()?;
        if t != 1 || b != self.kv.len() || h != self.n_head {
            candle_core::bail!(
                "{name}: queries {:?} for {} rows of {} heads, one position each",
                l.shape().dims(),
                self.kv.len(),
                self.n_head
            );
        }
        let guards: Vec<_> = self
            .kv
            .iter()
            .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()))
            .collect();
        let mut rows = Vec::with_capacity(b);
        for ((ks, kl), (vs, vl)) in &guards {
            let (k, n) = rows_of(ks, kl, [b, h, t, d], name)?;
            let (v, nv) = rows_of(vs, vl, [b, h, t, d], name)?;
            if n != nv || n == 0 || kl.dims()[1] != vl.dims()[1] {
                candle_core::bail!(
                    "{name}: keys {:?} and values {:?} disagree or are empty",
                    kl.dims(),
                    vl.dims()
                );
            }
            rows.push((k, v, n, kl.dims()[1]));
        }
        let mut y = vec![0f32; b * h * d];
        let dst = SendPtr(y.as_mut_ptr());
        team::par_for(b * h, &|task| {
            let (r, hh) = (task / h, task % h);
            let (k, v, n, kvh) = rows[r];
            let first = self.window.map_or(0, |w| n.saturating_sub(w));
            // Scratch for the scores, kept per thread: a step runs rows x heads x layers tasks.
            thread_local!(static P: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) });
            // SAFETY: each task writes its own `d` outputs, inside `y`, which outlives
            // `par_for`.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.at(task * d), d) };
            P.with_borrow_mut(|p| {
                p.resize(n - first, 0.0);
                head(
                    &q[task * d..(task + 1) * d],
                    [k, v],
                    (hh / (h / kvh), first),
                    self,
                    p,
                    out,
                )
            });
        });
        Ok((CpuStorage::F32(y), Shape::from((b, h, 1, d))))
    }
}
