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
        Self::lookup(&self.weight, ids)
    }

    fn lookup(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?;
        let out = weight.index_select(&flat, 0)?;
        dims.push(weight.dim(1)?);
        Ok(out.reshape(dims)?)
    }
}

/// A token table that is either dense (trainable) or kept quantized (frozen, inference): rows
/// are dequantized as they are looked up.
#[derive(Clone, Debug)]
pub enum TokenEmbedding {
    Dense(Embedding),
    Quantized(
        std::sync::Arc<crate::nn::kernels::qmatmul::QWeight>,
        candle_core::Device,
    ),
}

impl TokenEmbedding {
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            TokenEmbedding::Dense(e) => e.forward(ids),
            TokenEmbedding::Quantized(w, device) => {
                let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
                let dim = w.cols;
                let mut out = vec![0f32; flat.len() * dim];
                for (&id, o) in flat.iter().zip(out.chunks_exact_mut(dim)) {
                    if id as usize >= w.rows {
                        return Err(crate::Error::Config(format!(
                            "token id {id} is outside the embedding table ({} rows)",
                            w.rows
                        )));
                    }
                    w.dequantize_row(id as usize, o);
                }
                let mut dims = ids.dims().to_vec();
                dims.push(dim);
                Ok(Tensor::from_vec(out, dims, device)?)
            }
        }
    }

    /// The dense table, if there is one.
    pub fn dense(&self) -> Option<&Embedding> {
        match self {
            TokenEmbedding::Dense(e) => Some(e),
            TokenEmbedding::Quantized(..) => None,
        }
    }
}
