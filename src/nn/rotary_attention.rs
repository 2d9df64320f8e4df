//! Grouped-query self-attention with rotary positions (Llama and the decoders that vary it):
//! separate or fused (`qkv_proj`) query/key/value projections, key/value heads shared by
//! groups of query heads, an optional RMSNorm of each query and key head before the
//! rotation, sliding windows (a query sees the `window` latest positions, itself included),
//! a scale of its own, and soft-capped scores (`cap * tanh(s / cap)`). Full sequences go
//! through the fused causal kernel (windows as per-query first keys); the KV cache, prefixes
//! and soft-capping through the composition.

use crate::nn::attention::{causal_attention_in, KvCache, Prefix, Segments};
use crate::nn::dropout::Dropout;
use crate::nn::kernels::attention::causal_attention;
use crate::nn::kernels::softmax::attn_softmax;
use crate::nn::linear::Projection;
use crate::nn::norm::RmsNorm;
use crate::nn::rope::Rope;
use crate::Result;
use candle_core::{Device, Tensor, D};
use std::sync::Arc;

/// Queries, keys and values: three projections, or one (`qkv_proj`).
#[derive(Clone, Debug)]
pub enum Qkv {
    Separate {
        q_proj: Projection,
        k_proj: Projection,
        v_proj: Projection,
        /// Frozen quantized weights: the three stacked into one product.
        stacked: Option<Projection>,
    },
    Fused(Projection),
}

/// Splits the last dimension of `y` into parts of the given widths.
fn split_last(y: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
    let mut start = 0;
    widths
        .iter()
        .map(|&w| {
            let part = y.narrow(D::Minus1, start, w)?;
            start += w;
            Ok(part)
        })
        .collect()
}

/// Self-attention with rotary positions and grouped key/value heads.
#[derive(Clone, Debug)]
pub struct RotaryAttention {
    pub qkv: Qkv,
    pub o_proj: Projection,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope: Rope,
    pub window: Option<usize>,
    pub query_scale: Option<f64>,
    pub softcap: Option<f64>,
    /// Prefix tuning's learned keys (not rotated, as PEFT's) and values.
    pub prefix: Option<Prefix>,
}

impl RotaryAttention {
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (h, kvh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let widths = [h * d, kvh * d, kvh * d];
        Ok(match &self.qkv {
            Qkv::Separate {
                stacked: Some(p), ..
            }
            | Qkv::Fused(p) => {
                let mut parts = split_last(&p.forward(x)?, &widths)?.into_iter();
                let mut next = || parts.next().expect("three parts");
                (next(), next(), next())
            }
            Qkv::Separate {
                q_proj,
                k_proj,
                v_proj,
                stacked: None,
            } => (q_proj.forward(x)?, k_proj.forward(x)?, v_proj.forward(x)?),
        })
    }

    /// Queries `[b, t, h, d]`, keys and values `[b, t, kv_heads, d]` of `x`, the queries and
    /// keys normalised (when the family does) and rotated by `rotate`.
    fn heads(
        &self,
        x: &Tensor,
        rotate: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let (q, k, v) = self.project(x)?;
        let mut q = q.reshape((b, t, h, d))?;
        let mut k = k.reshape((b, t, kvh, d))?;
        let v = v.reshape((b, t, kvh, d))?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        Ok((rotate(&q)?, rotate(&k)?, v))
    }

    /// `x`: `[b, t, hidden]`. With `cache`, new keys/values (already rotated) are appended;
    /// with `segments`, packed examples attend only within themselves.
    pub fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        segments: Option<&Segments>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let offset = Prefix::offset(self.prefix.as_ref(), cache.as_deref());
        let (q, k, v) = self.heads(x, |y| match segments {
            Some(s) => self.rope.forward_segments(y, s),
            None => self.rope.forward(y, offset),
        })?;
        if cache.is_none()
            && self.prefix.is_none()
            && self.softcap.is_none()
            && crate::nn::kernels::fused(x.device())
        {
            // Full sequence (training, scoring): the fused blocked kernel over one packed
            // [b, t, (h + 2 kvh) d] tensor, each group of query heads reading its key/value head
            // in place; it scales by 1 / sqrt(head_dim), so another scale goes into the queries.
            let q = match self.query_scale {
                Some(s) => (&q * (s * (d as f64).sqrt()))?,
                None => q.clone(),
            };
            let qkv = Tensor::cat(
                &[
                    q.reshape((b, t, h * d))?,
                    k.reshape((b, t, kvh * d))?,
                    v.reshape((b, t, kvh * d))?,
                ],
                2,
            )?;
            let windowed = match self.window {
                Some(w) if w < t => Some(window_segments(segments, b, t, w)),
                _ => None,
            };
            if let Some(y) = causal_attention(&qkv, h, kvh, windowed.as_ref().or(segments))? {
                return self.o_proj.forward(&y);
            }
        }
        let heads_first = |t: &Tensor| t.transpose(1, 2);
        let y = self.attend(
            &heads_first(&q)?,
            &heads_first(&k)?,
            &heads_first(&v)?,
            offset,
            cache,
            segments,
        )?;
        self.o_proj
            .forward(&y.transpose(1, 2)?.reshape((b, t, h * d))?)
    }

    /// One new token per row (`x` `[b, 1, hidden]`), row `r` continuing its own sequence
    /// with its own `caches[r]`: the projections run on all rows at once, each row attends
    /// over its own cache. Equals `forward` on each row alone with its cache.
    pub fn forward_rows(&self, x: &Tensor, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let b = x.dim(0)?;
        let (h, d) = (self.n_head, self.head_dim);
        let offsets: Vec<usize> = caches
            .iter()
            .map(|c| Prefix::offset(self.prefix.as_ref(), Some(&**c)))
            .collect();
        let positions = Segments {
            b,
            t: 1,
            positions: Arc::new(offsets.iter().map(|&o| o as u32).collect()),
            starts: Arc::new(vec![0; b]),
        };
        let (q, k, v) = self.heads(x, |y| self.rope.forward_segments(y, &positions))?;
        let row = |t: &Tensor, r: usize| t.narrow(0, r, 1)?.transpose(1, 2);
        let kv = caches
            .iter_mut()
            .enumerate()
            .map(|(r, cache)| self.keys(&row(&k, r)?, &row(&v, r)?, Some(&mut **cache)))
            .collect::<Result<Vec<_>>>()?;
        let y = match self.attend_decode(&q.transpose(1, 2)?, &kv)? {
            Some(y) => y,
            None => {
                let rows = kv
                    .iter()
                    .zip(offsets)
                    .enumerate()
                    .map(|(r, ((k, v), offset))| self.attend_over(&row(&q, r)?, k, v, offset, None))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            }
        };
        self.o_proj
            .forward(&y.transpose(1, 2)?.reshape((b, 1, h * d))?)
    }

    /// Keys and values `[b, kv_heads, t, d]` appended to the cache and prefix: all the keys
    /// and values the new queries see.
    fn keys(
        &self,
        k: &Tensor,
        v: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        Prefix::apply(
            self.prefix.as_ref(),
            k.contiguous()?,
            v.contiguous()?,
            cache,
        )
    }

    /// One query per row (`q` `[b, h, 1, d]`) over row `r`'s keys and values `kv[r]` with
    /// the decode kernel, reading the caches in place; `None` where the fused kernels are off.
    fn attend_decode(&self, q: &Tensor, kv: &[(Tensor, Tensor)]) -> Result<Option<Tensor>> {
        if q.dim(2)? != 1 || !crate::nn::kernels::fused(q.device()) {
            return Ok(None);
        }
        let op = crate::nn::kernels::decode_attention::DecodeAttention {
            kv: kv.to_vec(),
            n_head: self.n_head,
            scale: self
                .query_scale
                .unwrap_or(1.0 / (self.head_dim as f64).sqrt()) as f32,
            softcap: self.softcap.map(|c| c as f32),
            window: self.window,
        };
        Ok(Some(q.contiguous()?.apply_op1(op)?))
    }

    /// Attention of `q` `[b, h, t, d]` over `k`, `v` `[b, kv_heads, t, d]` (appended to the
    /// cache and prefix first): `[b, h, t, d]`. The composition, for what the fused kernel
    /// does not cover.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        cache: Option<&mut KvCache>,
        segments: Option<&Segments>,
    ) -> Result<Tensor> {
        // A decode step (one new token after a cache) reads the cache in place.
        let decode = cache.is_some() && segments.is_none();
        let (k, v) = self.keys(k, v, cache)?;
        if decode {
            if let Some(y) = self.attend_decode(q, &[(k.clone(), v.clone())])? {
                return Ok(y);
            }
        }
        self.attend_over(q, &k, &v, offset, segments)
    }

    /// [`RotaryAttention::attend`] over keys and values already appended to the cache.
    fn attend_over(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        segments: Option<&Segments>,
    ) -> Result<Tensor> {
        if self.window.is_none() && self.softcap.is_none() && self.query_scale.is_none() {
            // No attention dropout in these families.
            causal_attention_in(q, k, v, offset, segments, &Dropout::default(), None)
        } else {
            let mask = Mask {
                offset,
                window: self.window,
                segments,
            };
            let scale = self
                .query_scale
                .unwrap_or(1.0 / (self.head_dim as f64).sqrt());
            masked_attention(q, k, v, &mask, scale, self.softcap)
        }
    }
}

/// Who sees whom in [`masked_attention`].
struct Mask<'a> {
    /// The position of the first query (the keys start at 0).
    offset: usize,
    window: Option<usize>,
    segments: Option<&'a Segments>,
}

impl Mask<'_> {
    /// Additive `[b or 1, 1, t, s]`: 0 where query `i` sees key `j` (`j <= offset + i`,
    /// within the window, in its own packed example), minus infinity elsewhere.
    fn tensor(&self, t: usize, s: usize, device: &Device) -> Result<Tensor> {
        let rows = self.segments.map_or(1, |seg| seg.b);
        let mut data = vec![f32::NEG_INFINITY; rows * t * s];
        for (r, block) in data.chunks_mut(t * s).enumerate() {
            for (i, row) in block.chunks_mut(s).enumerate() {
                let pos = self.offset + i;
                let mut first = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                if let Some(seg) = self.segments {
                    first = first.max(seg.starts[r * t + i] as usize);
                }
                row[first..=pos.min(s - 1)].fill(0.0);
            }
        }
        Ok(Tensor::from_vec(data, (rows, 1, t, s), device)?)
    }
}

/// Grouped-query attention of `q` `[b, h, t, d]` over `k`, `v` `[b, kv_heads, s, d]` with
/// the scores scaled by `scale`, soft-capped, and masked by `mask` (the composition the
/// fused kernel does not cover: sliding windows with a cache, soft-capping).
fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Mask,
    scale: f64,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kvh, s, _) = k.dims4()?;
    let g = h / kvh;
    let qg = q.contiguous()?.reshape((b, kvh, g * t, d))?;
    let mut scores = (qg.matmul(&k.t()?)?.reshape((b, h, t, s))? * scale)?;
    if let Some(cap) = softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }
    let scores = scores.broadcast_add(&mask.tensor(t, s, q.device())?)?;
    let p = attn_softmax(&scores, 1.0, None)?;
    let y = p.reshape((b, kvh, g * t, s))?.matmul(v)?;
    Ok(y.reshape((b, h, t, d))?)
}

/// The segments that make the fused causal kernel honour a sliding window of `w`: each query
/// sees from `w - 1` positions back (or its packed example's start, if later).
fn window_segments(segments: Option<&Segments>, b: usize, t: usize, w: usize) -> Segments {
    let starts = (0..b * t)
        .map(|k| {
            let i = k % t;
            let own = segments.map_or(0, |s| s.starts[k]);
            own.max((i + 1).saturating_sub(w) as u32)
        })
        .collect();
    let positions = match segments {
        Some(s) => s.positions.clone(),
        None => Arc::new((0..b * t).map(|k| (k % t) as u32).collect()),
    };
    Segments {
        b,
        t,
        positions,
        starts: Arc::new(starts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_follow_the_window_and_the_examples() {
        let s = window_segments(None, 1, 5, 2);
        assert_eq!(*s.starts, vec![0, 0, 1, 2, 3]);
        let packed = Segments::from_lengths(&[vec![3, 2]], 5).unwrap();
        let s = window_segments(Some(&packed), 1, 5, 2);
        assert_eq!(*s.starts, vec![0, 0, 1, 3, 3]);
        assert_eq!(s.positions, packed.positions);
    }

    #[test]
    fn mask_sees_the_window_after_a_cache() {
        let m = Mask {
            offset: 3,
            window: Some(2),
            segments: None,
        };
        let t = m.tensor(1, 4, &Device::Cpu).unwrap();
        let row: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(row[..2], [f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(row[2..], [0.0, 0.0]);
    }
}
