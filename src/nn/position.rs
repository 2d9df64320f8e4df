//! Positional encodings: how a model knows where each token stands.
//!
//! * Fixed sinusoidal ("Attention Is All You Need", section 3.5): no parameters,
//!   `PE(pos, 2i) = sin(pos / 10000^(2i/d))`, `PE(pos, 2i+1) = cos(pos / 10000^(2i/d))`,
//!   added to the token embeddings.
//! * Learned absolute (GPT-2, BERT): a table of one vector per position.

use crate::nn::embedding::Embedding;
use crate::nn::store::ParamStore;
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// Where the sine and cosine of each frequency go in a sinusoidal encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinusoidLayout {
    /// `sin` at `2i`, `cos` at `2i + 1` (the paper; GPT-2-style models here).
    Interleaved,
    /// `sin` in the first half, `cos` in the second (fairseq, Marian, BART's sinusoidal).
    Halves,
}

/// The `[max_len, dim]` table of fixed sinusoidal encodings (`dim` must be even), interleaved.
pub fn sinusoidal_encoding(max_len: usize, dim: usize, device: &Device) -> Result<Tensor> {
    sinusoidal_table(max_len, dim, SinusoidLayout::Interleaved, device)
}

/// The `[max_len, dim]` table of fixed sinusoidal encodings in `layout` (`dim` must be even).
pub fn sinusoidal_table(
    max_len: usize,
    dim: usize,
    layout: SinusoidLayout,
    device: &Device,
) -> Result<Tensor> {
    if !dim.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "sinusoidal positional encoding needs an even dimension, got {dim}"
        )));
    }
    let half = dim / 2;
    let mut data = vec![0f32; max_len * dim];
    for pos in 0..max_len {
        for i in 0..half {
            // Computed in f64 so long positions keep full f32 accuracy (and match
            // transformers' numpy tables bit for bit).
            let angle = pos as f64 / 10000f64.powf(2.0 * i as f64 / dim as f64);
            let (s, c) = match layout {
                SinusoidLayout::Interleaved => (2 * i, 2 * i + 1),
                SinusoidLayout::Halves => (i, half + i),
            };
            data[pos * dim + s] = angle.sin() as f32;
            data[pos * dim + c] = angle.cos() as f32;
        }
    }
    Ok(Tensor::from_vec(data, (max_len, dim), device)?)
}

/// Absolute position information added to token embeddings.
#[derive(Clone, Debug)]
pub enum PositionEncoding {
    Learned(LearnedPosition),
    /// The precomputed fixed table.
    Sinusoidal(Tensor),
}

/// A learned table of position vectors (`wpe` in GPT-2).
#[derive(Clone, Debug)]
pub struct LearnedPosition {
    pub table: Embedding,
}

impl LearnedPosition {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        max_len: usize,
        dim: usize,
        std: f64,
    ) -> Result<Self> {
        Ok(LearnedPosition {
            table: Embedding::new(store, name, max_len, dim, std)?,
        })
    }
}

impl PositionEncoding {
    /// Maximum number of positions.
    pub fn max_len(&self) -> usize {
        match self {
            PositionEncoding::Learned(l) => l.table.weight.dims()[0],
            PositionEncoding::Sinusoidal(t) => t.dims()[0],
        }
    }

    /// Encodings of positions `start .. start + len`, shape `[len, dim]`.
    pub fn forward(&self, start: usize, len: usize) -> Result<Tensor> {
        if start + len > self.max_len() {
            return Err(Error::Data(format!(
                "sequence reaches position {} but the model has only {} positions",
                start + len,
                self.max_len()
            )));
        }
        Ok(match self {
            PositionEncoding::Learned(l) => l.table.weight.narrow(0, start, len)?,
            PositionEncoding::Sinusoidal(t) => t.narrow(0, start, len)?,
        })
    }

    /// Encodings of the packed examples' positions, shape `[b, t, dim]`.
    pub fn forward_segments(&self, segments: &crate::nn::Segments) -> Result<Tensor> {
        let n = segments
            .positions
            .iter()
            .max()
            .map_or(0, |&m| m as usize + 1);
        if n > self.max_len() {
            return Err(Error::Data(format!(
                "a packed example reaches position {n} but the model has only {} positions",
                self.max_len()
            )));
        }
        let table = match self {
            PositionEncoding::Learned(l) => &l.table.weight,
            PositionEncoding::Sinusoidal(t) => t,
        };
        let ids = Tensor::from_slice(
            segments.positions.as_slice(),
            segments.b * segments.t,
            table.device(),
        )?;
        Ok(table
            .index_select(&ids, 0)?
            .reshape((segments.b, segments.t, table.dim(1)?))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_matches_formula() {
        let (n, d) = (50, 16);
        let t = sinusoidal_encoding(n, d, &Device::Cpu).unwrap();
        let v = t.to_vec2::<f32>().unwrap();
        for (pos, row) in v.iter().enumerate() {
            for (j, x) in row.iter().enumerate() {
                let i = (j / 2) as f64;
                let w = 1.0 / 10000f64.powf(2.0 * i / d as f64);
                let want = if j % 2 == 0 {
                    (pos as f64 * w).sin()
                } else {
                    (pos as f64 * w).cos()
                };
                assert!((*x as f64 - want).abs() < 1e-6, "pos {pos} dim {j}");
            }
        }
        // Position 0 is (0, 1, 0, 1, ...).
        assert_eq!(v[0][0], 0.0);
        assert_eq!(v[0][1], 1.0);
        assert!(sinusoidal_encoding(4, 5, &Device::Cpu).is_err());
    }
}
