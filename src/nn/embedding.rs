//! Token embeddings: a table with one learned vector per vocabulary entry.

use crate::nn::store::{Init, ParamStore};
use crate::Result;
use candle_core::Tensor;

/// A lookup table `[vocab, dim]`; also serves as the tied output projection of language models.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    /// The table `{name}` of shape `[n, dim]`, initialised N(0, std).
    pub fn new(store: &mut ParamStore, name: &str, n: usize, dim: usize, std: f64) -> Result<Self> {
        Ok(Embedding {
            weight: store.get(name, &[n, dim], Init::Normal(std))?,
        })
    }

    /// Looks up `ids` (u32, any shape) and returns `[..ids.shape, dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?;
        let out = self.weight.index_select(&flat, 0)?;
        dims.push(self.weight.dim(1)?);
        Ok(out.reshape(dims)?)
    }
}
