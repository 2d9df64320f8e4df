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

/// The query heads' dot products with the keys (`p` as in [`group`]) in AVX-512, when the
/// CPU has it and the head size is a multiple of 16; `false` otherwise (nothing written).
/// The portable loop's running sum over 16 lanes chains 16 adds per key; here a tree.
fn dots512(q: &[f32], k: Rows, at: (usize, usize, usize), p: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if at.2.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn dots(q: &[f32], k: Rows, (g, first, d): (usize, usize, usize), p: &mut [f32]) {
            use std::arch::x86_64::*;
            let n = p.len() / (q.len() / d);
            for j in 0..n {
                let kr = k.row(g, first + j, d);
                for (a, q) in q.chunks_exact(d).enumerate() {
                    let mut acc = _mm512_setzero_ps();
                    for c in (0..d).step_by(16) {
                        let x = _mm512_loadu_ps(q.as_ptr().add(c));
                        acc = _mm512_fmadd_ps(x, _mm512_loadu_ps(kr.as_ptr().add(c)), acc);
                    }
                    p[a * n + j] = _mm512_reduce_add_ps(acc);
                }
            }
        }
        // SAFETY: the CPU has AVX-512F; rows are `d` long (`Rows::row` checks), a multiple
        // of 16, and `q` holds whole rows of `d`.
        unsafe { dots(q, k, at, p) };
        return true;
    }
    let _ = (q, k, at, p);
    false
}

/// `out` = the weights `p` times the values, as [`group`] sums them (position by position),
/// in AVX-512 with up to 64 outputs in registers across all positions; `false` (nothing
/// written) where [`dots512`] would be.
fn weighted512(p: &[f32], v: Rows, at: (usize, usize, usize), out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if at.2.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn weighted(
            p: &[f32],
            v: Rows,
            (g, first, d): (usize, usize, usize),
            out: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            let n = p.len() / (out.len() / d);
            for (out, p) in out.chunks_exact_mut(d).zip(p.chunks_exact(n)) {
                for c in (0..d).step_by(64) {
                    let lanes = (d - c).min(64) / 16;
                    let mut acc = [_mm512_setzero_ps(); 4];
                    for (j, &w) in p.iter().enumerate() {
                        let (w, vr) = (_mm512_set1_ps(w), v.row(g, first + j, d).as_ptr().add(c));
                        for (l, acc) in acc.iter_mut().enumerate().take(lanes) {
                            let x = _mm512_loadu_ps(vr.add(16 * l));
                            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(w, x));
                        }
                    }
                    for (l, acc) in acc.iter().enumerate().take(lanes) {
                        _mm512_storeu_ps(out.as_mut_ptr().add(c + 16 * l), *acc);
                    }
                }
            }
        }
        // SAFETY: as in `dots512`; `out` holds whole rows of `d`, `p` one row of weights
        // for each.
        unsafe { weighted(p, v, at, out) };
        return true;
    }
    let _ = (p, v, at, out);
    false
}

multiversion! {
    /// `out` = softmax(scores) · values for the query heads `q` (rows of `d`) that share
    /// key/value head `g`, from position `first`: each key and value is read once for all of
    /// them. `p` is scratch, a row of one score per key seen for each query head.
    fn group(
        q: &[f32],
        kv: [Rows; 2],
        at: (usize, usize, usize),
        op: &DecodeAttention,
        p: &mut [f32],
        out: &mut [f32],
    ) {
        let ([k, v], (g, first, d)) = (kv, at);
        let heads = q.len() / d;
        let n = p.len() / heads;
        if !dots512(q, k, (g, first, d), p) {
            for j in 0..n {
                let kr = k.row(g, first + j, d);
                for (a, q) in q.chunks_exact(d).enumerate() {
                    p[a * n + j] = dot(q, kr);
                }
            }
        }
        for p in p.iter_mut() {
            let s = *p * op.scale;
            *p = match op.softcap {
                Some(c) => c * tanh(s / c),
                None => s,
            };
        }
        for p in p.chunks_exact_mut(n) {
            softmax_in_place(p, 1.0, n);
        }
        if !weighted512(p, v, (g, first, d), out) {
            out.fill(0.0);
            for j in 0..n {
                let vr = v.row(g, first + j, d);
                for (a, out) in out.chunks_exact_mut(d).enumerate() {
                    let w = p[a * n + j];
                    for (o, &x) in out.iter_mut().zip(vr) {
                        *o += w * x;
                    }
                }
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
        // A task is a row's key/value head with the query heads that read it (the heads of
        // a group are adjacent), or, with too few of those to share out, one query head.
        let kvh = rows[0].3;
        if rows.iter().any(|r| r.3 != kvh) {
            candle_core::bail!("{name}: rows with different numbers of key/value heads");
        }
        let per = if b * kvh >= 2 * rayon::current_num_threads() {
            h / kvh
        } else {
            1
        };
        team::par_for(b * h / per, &|task| {
            let (r, head) = (task * per / h, task * per % h);
            let (k, v, n, _) = rows[r];
            let first = self.window.map_or(0, |w| n.saturating_sub(w));
            // Scratch for the scores, kept per thread: a step runs rows x groups x layers tasks.
            thread_local!(static P: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) });
            let span = task * per * d..(task + 1) * per * d;
            // SAFETY: each task writes its own heads' outputs, inside `y`, which outlives
            // `par_for`.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.at(span.start), span.len()) };
            P.with_borrow_mut(|p| {
                p.resize(per * (n - first), 0.0);
                let g = head / (h / kvh);
                group(&q[span], [k, v], (g, first, d), self, p, out)
            });
        });
        Ok((CpuStorage::F32(y), Shape::from((b, h, 1, d))))
    }
}
