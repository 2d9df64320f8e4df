//! Multi-head causal self-attention (Vaswani et al., 2017) with a key/value cache for
//! generation one token at a time.

use crate::nn::dropout::Dropout;
use crate::nn::kernels::softmax::attn_softmax;
use crate::nn::linear::{Linear, Projection};
use crate::nn::store::ParamStore;
use crate::rng::Rng;
use crate::Result;
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// Keys and values of the positions seen so far, in buffers `[batch, heads, capacity,
/// head_dim]` written in place and grown by doubling. (Concatenating a one-token-longer copy
/// at every step costs a copy of the whole cache per token and, as every new block is larger
/// than any freed one, fragments the heap: measured +600 MB over 500 tokens of SmolLM2.)
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps, as row `i`, the cached row `idx[i]` (`idx` u32 on the cache's device): beam
    /// search follows the beams it keeps.
    pub fn reorder(&mut self, idx: &Tensor) -> Result<()> {
        for buf in [&mut self.k, &mut self.v] {
            if let Some(t) = buf.as_ref() {
                *buf = Some(t.index_select(idx, 0)?);
            }
        }
        Ok(())
    }

    /// Appends keys and values `[b, h, t, d]` (contiguous) and returns all cached ones,
    /// `[b, h, len, d]` views of the buffers.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let need = self.len + t;
        let cap = self.k.as_ref().map(|k| k.dims()[2]).unwrap_or(0);
        if need > cap {
            let new_cap = need.max(2 * cap).max(64);
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, h, new_cap, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    }
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        let (kb, vb) = (
            self.k.as_ref().expect("grown"),
            self.v.as_ref().expect("grown"),
        );
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }
}

/// Several examples packed into each row of a `[b, t]` batch: every token attends only to the
/// earlier tokens of its own example, and positions restart at each example, so a packed row
/// computes exactly what the examples would alone. Padding after the last example of a row is
/// one more example (its outputs are ignored).
#[derive(Clone, Debug, PartialEq)]
pub struct Segments {
    pub b: usize,
    pub t: usize,
    /// `[b * t]`: each token's position within its example.
    pub positions: Arc<Vec<u32>>,
    /// `[b * t]`: the index in its row of each token's example's first token.
    pub starts: Arc<Vec<u32>>,
}

impl Segments {
    /// From the example lengths of each row (each row's lengths sum to at most `t`).
    pub fn from_lengths(rows: &[Vec<usize>], t: usize) -> Result<Self> {
        let mut positions = Vec::with_capacity(rows.len() * t);
        let mut starts = Vec::with_capacity(rows.len() * t);
        for (r, lengths) in rows.iter().enumerate() {
            let used: usize = lengths.iter().sum();
            if used > t {
                return Err(crate::Error::Data(format!(
                    "packed row {r} holds {used} tokens, more than its {t}"
                )));
            }
            let mut start = 0;
            for &n in lengths.iter().chain(std::iter::once(&(t - used))) {
                for i in 0..n {
                    positions.push(i as u32);
                    starts.push(start as u32);
                }
                start += n;
            }
        }
        Ok(Segments {
            b: rows.len(),
            t,
            positions: Arc::new(positions),
            starts: Arc::new(starts),
        })
    }

    /// The position ids `[b, t]` (u32).
    pub fn position_ids(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            self.positions.as_slice(),
            (self.b, self.t),
            device,
        )?)
    }

    /// The additive mask `[b, 1, t, t]` for composed attention: 0 where query `i` may see key
    /// `j` (same example, `j <= i`), minus infinity elsewhere.
    pub fn mask(&self, device: &Device) -> Result<Tensor> {
        let t = self.t;
        let mut data = vec![f32::NEG_INFINITY; self.b * t * t];
        for (row, chunk) in data.chunks_mut(t * t).enumerate() {
            for (i, q) in chunk.chunks_mut(t).enumerate() {
                let start = self.starts[row * t + i] as usize;
                q[start..=i].fill(0.0);
            }
        }
        Ok(Tensor::from_vec(data, (self.b, 1, t, t), device)?)
    }
}

pub use crate::nn::kernels::softmax::causal_mask;

/// Scaled dot-product attention of queries `q` `[b, h, t, d]` over keys and values
/// `[b, kv_heads, s, d]`, where `kv_heads` divides `h` (grouped-query attention, Ainslie et al.
/// 2023: head `i` reads key/value head `i / (h / kv_heads)`, as transformers' `repeat_kv`).
/// With `causal = Some(offset)`, query `i` sees keys `0 ..= offset + i`; `mask` is an additive
/// mask broadcastable to `[b, h, t, s]` (BERT's padding mask `[b, 1, 1, s]`); `dropout` applies
/// to the probabilities when `rng` is given. Output `[b, h, t, d]`. The key/value heads are
/// shared by reshaping the queries, not by copying keys and values.
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: Option<usize>,
    mask: Option<&Tensor>,
    dropout: &Dropout,
    rng: Option<&mut Rng>,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kvh, s, _) = k.dims4()?;
    if kvh == 0 || h % kvh != 0 {
        return Err(crate::Error::Config(format!(
            "{h} query heads cannot share {kvh} key/value heads"
        )));
    }
    let g = h / kvh;
    let att = dropout.forward(&attention_probs(q, k, causal, mask)?, rng)?;
    let y = att.reshape((b, kvh, g * t, s))?.matmul(&v.contiguous()?)?;
    Ok(y.reshape((b, h, t, d))?)
}

/// Causal [`grouped_attention`] (queries from position `offset`), kept inside each packed
/// example when `segments` is given.
pub fn causal_attention_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
    segments: Option<&Segments>,
    dropout: &Dropout,
    rng: Option<&mut Rng>,
) -> Result<Tensor> {
    let mask = segments.map(|s| s.mask(q.device())).transpose()?;
    grouped_attention(q, k, v, Some(offset), mask.as_ref(), dropout, rng)
}

/// The attention probabilities `[b, h, t, s]` of [`grouped_attention`] (before dropout).
pub fn attention_probs(
    q: &Tensor,
    k: &Tensor,
    causal: Option<usize>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kvh, s, _) = k.dims4()?;
    let q = q.contiguous()?.reshape((b, kvh, (h / kvh) * t, d))?;
    let scores = q.matmul(&k.t()?)?.reshape((b, h, t, s))?;
    let scale = 1.0 / (d as f64).sqrt();
    match mask {
        // The mask is added after scaling, so the softmax runs unscaled.
        Some(m) => attn_softmax(&(scores * scale)?.broadcast_add(m)?, 1.0, causal),
        None => attn_softmax(&scores, scale, causal),
    }
}

/// Multi-head attention with separate query, key, value and output projections (BERT, Marian,
/// BART, the original Transformer): self-attention when keys and values come from the queries'
/// own sequence, cross-attention when they come from another (the encoder's output).
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    pub q: Projection,
    pub k: Projection,
    pub v: Projection,
    pub out: Projection,
    pub n_head: usize,
    /// On the attention probabilities.
    pub dropout: Dropout,
}

impl MultiHeadAttention {
    /// Projections `[dim, dim]` with biases named by `names` (query, key, value, output
    /// prefixes, e.g. `layers.0.self_attn.q_proj`).
    pub fn new(
        store: &mut ParamStore,
        names: [&str; 4],
        dim: usize,
        n_head: usize,
        dropout: Dropout,
        std: f64,
    ) -> Result<Self> {
        if n_head == 0 || !dim.is_multiple_of(n_head) {
            return Err(crate::Error::Config(format!(
                "the width {dim} is not divisible by {n_head} attention heads"
            )));
        }
        let mut lin = |name: &str| Projection::linear(store, name, dim, dim, true, std);
        Ok(MultiHeadAttention {
            q: lin(names[0])?,
            k: lin(names[1])?,
            v: lin(names[2])?,
            out: lin(names[3])?,
            n_head,
            dropout,
        })
    }

    /// `[b, t, c]` projected by `p` and split into heads `[b, h, t, c / h]`.
    fn heads(&self, p: &Projection, x: &Tensor) -> Result<Tensor> {
        self.split_heads(&p.forward(x)?)
    }

    /// `[b, t, c]` split into heads `[b, h, t, c / h]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        Ok(x.reshape((b, t, self.n_head, c / self.n_head))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Heads `[b, h, t, d]` joined into `[b, t, h * d]` and projected.
    fn merge_heads(&self, y: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = y.dims4()?;
        self.out
            .forward(&y.transpose(1, 2)?.reshape((b, t, h * d))?)
    }

    /// Keys and values `[b, h, s, d]` of `src` `[b, s, c]`: computed once per source sequence
    /// for cross-attention.
    pub fn keys_values(&self, src: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.heads(&self.k, src)?, self.heads(&self.v, src)?))
    }

    /// The queries of `x` `[b, t, c]` attend over `k`, `v` `[b, h, s, d]`; `causal` and the
    /// additive `mask` as in [`grouped_attention`]. Output `[b, t, c]`, projected.
    pub fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: Option<usize>,
        mask: Option<&Tensor>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let q = self.heads(&self.q, x)?;
        self.merge_heads(&grouped_attention(
            &q,
            k,
            v,
            causal,
            mask,
            &self.dropout,
            rng,
        )?)
    }

    /// The self-attention probabilities `[b, h, t, t]` over `x` `[b, t, c]` (attention maps).
    pub fn probs(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        attention_probs(
            &self.heads(&self.q, x)?,
            &self.heads(&self.k, x)?,
            None,
            mask,
        )
    }

    /// The queries of `x` `[b, t, c]` attend over keys and values projected from `src`
    /// `[b, s, c]` (`x` itself in self-attention), none cached: training and whole-sequence
    /// evaluation. `causal` hides later positions; `mask` as in [`grouped_attention`]. On CPU
    /// the fused op; the composition of [`Self::attend`] elsewhere (and as its reference).
    pub fn attend_full(
        &self,
        x: &Tensor,
        src: &Tensor,
        causal: bool,
        mask: Option<&Tensor>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let (q, k, v) = (
            self.q.forward(x)?,
            self.k.forward(src)?,
            self.v.forward(src)?,
        );
        if let Some(y) = crate::nn::kernels::mha::multi_head_attention(
            &q,
            &k,
            &v,
            self.n_head,
            causal,
            mask,
            self.dropout.p,
            rng.as_deref_mut(),
        )? {
            return self.out.forward(&y);
        }
        self.merge_heads(&grouped_attention(
            &self.split_heads(&q)?,
            &self.split_heads(&k)?,
            &self.split_heads(&v)?,
            // The queries are the last of the keys' positions, as in the fused op.
            causal.then_some(k.dim(1)?.saturating_sub(q.dim(1)?)),
            mask,
            &self.dropout,
            rng,
        )?)
    }

    /// Self-attention over `x` `[b, t, c]`. With `cache`, the new keys and values are appended
    /// and the queries (positions after the cached ones) attend over all of them; `causal`
    /// hides later positions.
    pub fn self_attention(
        &self,
        x: &Tensor,
        causal: bool,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let Some(cache) = cache else {
            return self.attend_full(x, x, causal, mask, rng);
        };
        let (k, v) = self.keys_values(x)?;
        let offset = cache.len();
        let (k, v) = cache.append(&k, &v)?;
        self.attend(x, &k, &v, causal.then_some(offset), mask, rng)
    }
}

/// Prefix tuning's keys and values for one layer: `[heads, n, head_dim]` each, cut from the
/// adapter's `[n, layers * 2 * heads * head_dim]` tensor (PEFT's layout).
pub fn layer_prefix(
    all: &Tensor,
    layer: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(Tensor, Tensor)> {
    let n = all.dim(0)?;
    let w = heads * head_dim;
    let kv = all
        .narrow(1, layer * 2 * w, 2 * w)?
        .reshape((n, 2, heads, head_dim))?;
    let part = |i: usize| -> Result<Tensor> {
        Ok(kv
            .narrow(1, i, 1)?
            .squeeze(1)?
            .transpose(0, 1)?
            .contiguous()?)
    };
    Ok((part(0)?, part(1)?))
}

/// Learned key/value prefixes (prefix tuning) before a layer's own keys and values.
#[derive(Clone, Debug)]
pub struct Prefix {
    /// `[heads, n, head_dim]`.
    pub k: Tensor,
    pub v: Tensor,
}

impl Prefix {
    pub fn len(&self) -> usize {
        self.k.dim(1).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The prefix for a batch of `b`, `[b, heads, n, head_dim]` each.
    fn batch(&self, b: usize) -> Result<(Tensor, Tensor)> {
        let expand = |t: &Tensor| -> Result<Tensor> {
            let (h, n, d) = t.dims3()?;
            Ok(t.unsqueeze(0)?.broadcast_as((b, h, n, d))?.contiguous()?)
        };
        Ok((expand(&self.k)?, expand(&self.v)?))
    }

    /// Keys and values `[b, h, t, d]` with the prefix in front; with a cache, the prefix is
    /// written into it first when it is empty (so generation carries it), and the new keys
    /// and values appended. Returns them and the position of the first new one.
    pub fn apply(
        prefix: Option<&Prefix>,
        k: Tensor,
        v: Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        let b = k.dim(0)?;
        match (prefix, cache) {
            (Some(p), Some(c)) => {
                if c.is_empty() {
                    let (pk, pv) = p.batch(b)?;
                    c.append(&pk, &pv)?;
                }
                c.append(&k, &v)
            }
            (None, Some(c)) => c.append(&k, &v),
            (Some(p), None) => {
                let (pk, pv) = p.batch(b)?;
                Ok((Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?))
            }
            (None, None) => Ok((k, v)),
        }
    }

    /// The position of the first new token: after the cache, or after the prefix.
    pub fn offset(prefix: Option<&Prefix>, cache: Option<&KvCache>) -> usize {
        match (cache, prefix) {
            (Some(c), Some(p)) if c.is_empty() => p.len(),
            (Some(c), _) => c.len(),
            (None, Some(p)) => p.len(),
            (None, None) => 0,
        }
    }
}

/// Causal multi-head self-attention with a fused query/key/value projection (`c_attn` in GPT-2).
#[derive(Clone, Debug)]
pub struct CausalSelfAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub n_head: usize,
    pub attn_dropout: Dropout,
    pub resid_dropout: Dropout,
    /// Prefix tuning's learned keys and values.
    pub prefix: Option<Prefix>,
}

impl CausalSelfAttention {
    /// `x`: `[b, t, c]`. With `cache`, the new keys/values are appended and queries attend to
    /// all cached positions plus the causal part of the new ones.
    /// With `segments`, packed examples attend only within themselves.
    pub fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        segments: Option<&Segments>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        // Training and full-sequence evaluation: the fused blocked kernel (attention dropout
        // needs the probabilities, so it takes the composed path).
        let fused = if cache.is_none()
            && self.prefix.is_none()
            && (rng.is_none() || self.attn_dropout.p == 0.0)
        {
            crate::nn::kernels::attention::causal_attention(
                &qkv,
                self.n_head,
                self.n_head,
                segments,
            )?
        } else {
            None
        };
        let y = match fused {
            Some(y) => y,
            None => self.attend(&qkv, cache, segments, rng.as_deref_mut())?,
        };
        let y = self.proj.forward(&y)?;
        self.resid_dropout.forward(&y, rng)
    }

    /// Multi-head causal attention of a fused `[b, t, 3c]` projection, composed of plain ops
    /// (with the KV cache and attention dropout); output `[b, t, c]` before the projection.
    pub fn attend(
        &self,
        qkv: &Tensor,
        cache: Option<&mut KvCache>,
        segments: Option<&Segments>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let (b, t, c3) = qkv.dims3()?;
        let c = c3 / 3;
        let h = self.n_head;
        let hd = c / h;
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * c, c)?
                .reshape((b, t, h, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let offset = Prefix::offset(self.prefix.as_ref(), cache.as_deref());
        let (k, v) = Prefix::apply(self.prefix.as_ref(), k, v, cache)?;
        let y = causal_attention_in(&q, &k, &v, offset, segments, &self.attn_dropout, rng)?;
        Ok(y.transpose(1, 2)?.reshape((b, t, c))?)
    }
}
