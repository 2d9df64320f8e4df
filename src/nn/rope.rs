//! Rotary position embedding (Su et al., 2021, "RoFormer"): queries and keys are rotated, pair
//! of dimensions by pair, through angles proportional to their position, so attention scores
//! depend on relative position. Frequencies and layout follow transformers' Llama
//! (`rope_theta`, "rotate half" pairing, optional `rope_scaling` of type `linear` or `llama3`).

use crate::nn::kernels::rope::{usable, RopeOp};
use crate::nn::Segments;
use crate::{Error, Result};
use candle_core::{Device, Tensor, D};
use std::sync::Arc;

/// Precomputed cos/sin tables `[max_positions, head_dim / 2]`.
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    cos_v: Arc<Vec<f32>>,
    sin_v: Arc<Vec<f32>>,
    max_positions: usize,
}

/// `rope_scaling` of a Hugging Face config.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// Parses `rope_scaling` (`null` or an object with `rope_type` / `type`).
    pub fn from_hf(v: Option<&serde_json::Value>) -> Result<Self> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(RopeScaling::None);
        };
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let num = |k: &str| -> Result<f64> {
            v.get(k).and_then(|x| x.as_f64()).ok_or_else(|| {
                Error::Config(format!(
                    "rope_scaling of type {kind:?} needs a number {k:?}"
                ))
            })
        };
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: num("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => {
                return Err(Error::Config(format!(
                "rope_scaling type {other:?} is not supported (supported: default, linear, llama3)"
            )))
            }
        })
    }
}

impl Rope {
    /// Tables for `head_dim` (even) up to `max_positions`, base `theta`.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        scaling: &RopeScaling,
        device: &Device,
    ) -> Result<Self> {
        if !head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "rotary embedding needs an even head dimension, got {head_dim}"
            )));
        }
        let half = head_dim / 2;
        // As transformers: inv_freq in f32 from theta^(2i/d); the angle pos * inv_freq in f32.
        let mut inv: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        match *scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv.iter_mut().for_each(|f| *f /= factor as f32),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv.iter_mut() {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let new = if wavelen > low_wavelen {
                        freq / factor
                    } else if wavelen < high_wavelen {
                        freq
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    *f = new as f32;
                }
            }
        }
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Rope {
            cos: Tensor::from_slice(&cos, (max_positions, half), device)?,
            sin: Tensor::from_slice(&sin, (max_positions, half), device)?,
            cos_v: Arc::new(cos),
            sin_v: Arc::new(sin),
            max_positions,
        })
    }

    /// Rotates `x` `[b, t, heads, head_dim]` for positions `offset .. offset + t`.
    pub fn forward(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        if offset + t > self.max_positions {
            return Err(Error::Config(format!(
                "position {} is beyond the rotary table's {} positions",
                offset + t,
                self.max_positions
            )));
        }
        if usable(x) {
            let op = RopeOp {
                cos: self.cos_v.clone(),
                sin: self.sin_v.clone(),
                offset,
                positions: None,
                inverse: false,
            };
            return Ok(x.contiguous()?.apply_op1(op)?);
        }
        self.forward_plain(x, offset)
    }

    /// Rotates `x` `[b, t, heads, head_dim]` by each token's position within its packed
    /// example.
    pub fn forward_segments(&self, x: &Tensor, segments: &Segments) -> Result<Tensor> {
        if let Some(&m) = segments.positions.iter().max() {
            if m as usize >= self.max_positions {
                return Err(Error::Config(format!(
                    "position {} is beyond the rotary table's {} positions",
                    m + 1,
                    self.max_positions
                )));
            }
        }
        if usable(x) {
            let op = RopeOp {
                cos: self.cos_v.clone(),
                sin: self.sin_v.clone(),
                offset: 0,
                positions: Some(segments.positions.clone()),
                inverse: false,
            };
            return Ok(x.contiguous()?.apply_op1(op)?);
        }
        let (b, t, _h, d) = x.dims4()?;
        let ids = segments.position_ids(x.device())?.flatten_all()?;
        let table = |m: &Tensor| -> Result<Tensor> {
            Ok(m.index_select(&ids, 0)?.reshape((b, t, 1, d / 2))?)
        };
        Self::rotate(x, &table(&self.cos)?, &table(&self.sin)?)
    }

    /// The reference composition (`x * cos + rotate_half(x) * sin`) of differentiable ops.
    pub fn forward_plain(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        let cos = self.cos.narrow(0, offset, t)?.unsqueeze(1)?;
        let sin = self.sin.narrow(0, offset, t)?.unsqueeze(1)?;
        Self::rotate(x, &cos, &sin)
    }

    /// `x * cos + rotate_half(x) * sin` with tables broadcastable to `[b, t, h, d/2]`.
    fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let y1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let y2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        Ok(Tensor::cat(&[y1, y2], D::Minus1)?)
    }
}
