//! Token embeddings: a table with one learned vector per vocabulary entry.

use crate::nn::store::{Init, ParamStore};
use crate::Result;
use candle_core::{Tensor, D};

/// A lookup table `[vocab, dim]`; also serves as the tied output projection of language models.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor,
    /// PyTorch's `padding_idx`: this row starts at zero and lookups of it pass no gradient,
    /// so it stays as loaded (Marian's decoder start token is its pad token).
    pub padding_idx: Option<u32>,
}

impl Embedding {
    /// The table `{name}` of shape `[n, dim]`, initialised N(0, std).
    pub fn new(store: &mut ParamStore, name: &str, n: usize, dim: usize, std: f64) -> Result<Self> {
        Ok(Embedding {
            weight: store.get(name, &[n, dim], Init::Normal(std))?,
            padding_idx: None,
        })
    }

    /// As [`Embedding::new`], with PyTorch's `padding_idx` semantics for row `pad`.
    pub fn with_padding(
        store: &mut ParamStore,
        name: &str,
        n: usize,
        dim: usize,
        std: f64,
        pad: u32,
    ) -> Result<Self> {
        Ok(Embedding {
            weight: store.get(name, &[n, dim], Init::NormalZeroRow(std, pad as usize))?,
            padding_idx: Some(pad),
        })
    }

    /// Looks up `ids` (u32, any shape) and returns `[..ids.shape, dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let out = Self::lookup(&self.weight, ids)?;
        match self.padding_idx {
            Some(pad) if out.track_op() => {
                // Rows looked up for `pad` take the detached value: no gradient reaches it.
                let is_pad = ids
                    .eq(pad)?
                    .unsqueeze(D::Minus1)?
                    .broadcast_as(out.shape())?;
                Ok(is_pad.where_cond(&out.detach(), &out)?)
            }
            _ => Ok(out),
        }
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
