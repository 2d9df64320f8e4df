//! Learned virtual tokens, as prompt tuning (Lester et al., 2021: embeddings put before the
//! input) and prefix tuning (Li & Liang, 2021: keys and values put before every layer's own)
//! add them to a causal LM. Every model family goes through this one helper: it asks the
//! store for them, shifts positions past them, and takes their states back out.

use crate::nn::attention::{layer_prefix, KvCache, Prefix};
use crate::nn::store::ParamStore;
use crate::{Error, Result};
use candle_core::Tensor;

/// A model's virtual tokens (none when no prompt- or prefix-tuning adapter is active).
#[derive(Clone, Debug, Default)]
pub struct VirtualTokens {
    /// Prompt tuning's embeddings `[n, hidden]`.
    pub prompt: Option<Tensor>,
    /// Prefix tuning's keys and values, one entry per layer.
    pub prefix: Vec<Prefix>,
}

impl VirtualTokens {
    /// The store's active prompt or prefix for a model of `layers` layers with `kv_heads`
    /// key/value heads of `head_dim`; `table` (the token embeddings) seeds a new prompt.
    pub fn from_store(
        store: &mut ParamStore,
        hidden: usize,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        table: Option<&Tensor>,
    ) -> Result<Self> {
        let prompt = store.virtual_prompt(hidden, table)?;
        let prefix = match store.virtual_prefix(layers, kv_heads, head_dim)? {
            Some(all) => (0..layers)
                .map(|i| {
                    let (k, v) = layer_prefix(&all, i, kv_heads, head_dim)?;
                    Ok(Prefix { k, v })
                })
                .collect::<Result<_>>()?,
            None => vec![],
        };
        Ok(VirtualTokens { prompt, prefix })
    }

    /// Layer `i`'s prefix.
    pub fn layer(&self, i: usize) -> Option<&Prefix> {
        self.prefix.get(i)
    }

    /// Positions the virtual tokens take.
    pub fn len(&self) -> usize {
        self.prompt
            .as_ref()
            .map(|p| p.dim(0).unwrap_or(0))
            .unwrap_or(0)
            + self.prefix.first().map(Prefix::len).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position of the input's first token: after the cached ones, or after a prefix.
    pub fn offset(&self, caches: Option<&[KvCache]>) -> usize {
        Prefix::offset(self.prefix.first(), caches.and_then(|c| c.first()))
    }

    /// Input embeddings `x` `[b, t, h]` with the prompt before them when nothing is cached
    /// yet (`offset` 0), and how many virtual tokens were put there.
    pub fn prepend(&self, x: Tensor, offset: usize) -> Result<(Tensor, usize)> {
        match &self.prompt {
            Some(p) if offset == 0 => {
                let (b, _, h) = x.dims3()?;
                let n = p.dim(0)?;
                let p = p.unsqueeze(0)?.broadcast_as((b, n, h))?.contiguous()?;
                Ok((Tensor::cat(&[p, x], 1)?, n))
            }
            _ => Ok((x, 0)),
        }
    }

    /// Final states `h` `[b, n + t, h]` without the `n` virtual tokens' (not the input's).
    pub fn strip(h: Tensor, n: usize) -> Result<Tensor> {
        Ok(if n > 0 {
            let t = h.dim(1)? - n;
            h.narrow(1, n, t)?
        } else {
            h
        })
    }

    /// Packed training rows cannot take virtual tokens.
    pub fn check_packable(&self) -> Result<()> {
        if self.prompt.is_some() || !self.prefix.is_empty() {
            return Err(Error::Config(
                "packed examples cannot take prompt or prefix tuning's virtual tokens; \
                 train without packing"
                    .into(),
            ));
        }
        Ok(())
    }
}
