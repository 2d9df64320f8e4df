//! Affine maps. This is the one place a model multiplies by a weight matrix, so later
//! parameter-efficient methods (LoRA and friends) wrap this type rather than the models.

use crate::nn::store::{Init, ParamStore};
use crate::Result;
use candle_core::{DType, Tensor, D};

/// `y = x W + b`. The weight is kept in the orientation of the checkpoint it came from:
/// `[in, out]` for GPT-2's Conv1D, `[out, in]` for PyTorch's `nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// True when `weight` is `[in, out]` (GPT-2 Conv1D).
    pub in_out: bool,
}

impl Linear {
    /// A `nn.Linear`: weight `{prefix}.weight` `[out, in]` (initialised N(0, std)), and
    /// `{prefix}.bias` (zeros) when `bias`.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        std: f64,
    ) -> Result<Self> {
        Ok(Linear {
            weight: store.get(
                &format!("{prefix}.weight"),
                &[d_out, d_in],
                Init::Normal(std),
            )?,
            bias: if bias {
                Some(store.get(&format!("{prefix}.bias"), &[d_out], Init::Zeros)?)
            } else {
                None
            },
            in_out: false,
        })
    }

    /// A GPT-2 Conv1D: weight `{prefix}.weight` of shape `[in, out]`, bias `{prefix}.bias`.
    pub fn conv1d(
        store: &mut ParamStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        std: f64,
    ) -> Result<Self> {
        Ok(Linear {
            weight: store.get(
                &format!("{prefix}.weight"),
                &[d_in, d_out],
                Init::Normal(std),
            )?,
            bias: Some(store.get(&format!("{prefix}.bias"), &[d_out], Init::Zeros)?),
            in_out: true,
        })
    }

    /// Applies the map to the last dimension of `x` (any leading shape).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = dims[dims.len() - 1];
        // One 2-D matmul over all leading positions is much faster than a broadcast batch.
        let x2 = x.reshape(((), d_in))?;
        let fused =
            crate::nn::kernels::linear::linear(&x2, &self.weight, self.bias.as_ref(), self.in_out)?;
        if let Some(y) = fused {
            let mut out_dims = dims;
            *out_dims.last_mut().expect("rank >= 1") = y.dim(D::Minus1)?;
            return Ok(y.reshape(out_dims)?);
        }
        self.forward_plain_2d(x2, dims)
    }

    /// The reference composition: candle matmul, then a broadcast bias add.
    pub fn forward_plain(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let x2 = x.reshape(((), dims[dims.len() - 1]))?;
        self.forward_plain_2d(x2, dims)
    }

    fn forward_plain_2d(&self, x2: Tensor, dims: Vec<usize>) -> Result<Tensor> {
        let y = if self.in_out {
            x2.matmul(&self.weight)?
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let d_out = y.dim(D::Minus1)?;
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = d_out;
        Ok(y.reshape(out_dims)?)
    }
}

/// A projection whose weight is either a dense (trainable) [`Linear`] or a frozen matrix kept
/// in a llama.cpp quantized format (Q4_0, Q8_0, K-quants, ...) and multiplied without being
/// dequantized, for inference on quantized checkpoints.
#[derive(Clone, Debug)]
pub enum Projection {
    Dense(Linear),
    Quantized {
        /// `[out, in]`, as `nn.Linear`.
        weight: QuantizedWeight,
        bias: Option<Tensor>,
    },
}

/// A quantized weight in the form its device multiplies fastest.
#[derive(Clone, Debug)]
pub enum QuantizedWeight {
    /// Repacked for our CPU kernel (Q4_0, Q4_1, Q8_0).
    Cpu(std::sync::Arc<crate::nn::kernels::qmatmul::QWeight>),
    /// candle's quantized matmul (other types, other devices).
    Candle(candle_core::quantized::QMatMul),
}

impl QuantizedWeight {
    /// On CPU, types our kernel covers are repacked for it (candle's copy can then be
    /// dropped, so the weight is held once); others stay candle's.
    pub fn new(q: candle_core::quantized::QTensor) -> Result<Self> {
        let cpu = if q.device().is_cpu() {
            crate::nn::kernels::qmatmul::QWeight::from_qtensor(&q)?
        } else {
            None
        };
        Ok(match cpu {
            Some(w) => QuantizedWeight::Cpu(std::sync::Arc::new(w)),
            None => QuantizedWeight::Candle(candle_core::quantized::QMatMul::from_qtensor(q)?),
        })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            QuantizedWeight::Cpu(w) => vec![w.rows, w.cols],
            QuantizedWeight::Candle(candle_core::quantized::QMatMul::QTensor(q)) => {
                q.shape().dims().to_vec()
            }
            QuantizedWeight::Candle(
                candle_core::quantized::QMatMul::Tensor(t)
                | candle_core::quantized::QMatMul::TensorF16(t),
            ) => t.dims().to_vec(),
        }
    }
}

impl Projection {
    /// A `nn.Linear`-oriented dense projection: weight `{prefix}.weight` `[out, in]`, and
    /// `{prefix}.bias` when `bias`.
    pub fn linear(
        store: &mut ParamStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        std: f64,
    ) -> Result<Self> {
        Ok(Projection::Dense(Linear::new(
            store, prefix, d_in, d_out, bias, std,
        )?))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Dense(l) => l.forward(x),
            Projection::Quantized { weight, bias } => {
                use candle_core::Module;
                let y = match weight {
                    QuantizedWeight::Cpu(w) => {
                        x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(
                            &crate::nn::kernels::qmatmul::QMatMulOp { weight: w.clone() },
                        )?
                    }
                    QuantizedWeight::Candle(w) => w.forward(x)?,
                };
                Ok(match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
        }
    }

    /// Several bias-free CPU-quantized projections of the same input as one (their outputs
    /// side by side), and each part re-pointed to its rows of the stacked matrix (so the
    /// weights are held once); `None` if they are not all of that kind.
    pub fn stack(parts: &mut [&mut Projection]) -> Option<Projection> {
        let ws: Vec<&crate::nn::kernels::qmatmul::QWeight> = parts
            .iter()
            .map(|p| match &**p {
                Projection::Quantized {
                    weight: QuantizedWeight::Cpu(w),
                    bias: None,
                } => Some(w.as_ref()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let w = crate::nn::kernels::qmatmul::QWeight::concat_rows(&ws)?;
        let mut start = 0;
        for p in parts.iter_mut() {
            if let Projection::Quantized {
                weight: QuantizedWeight::Cpu(part),
                ..
            } = &mut **p
            {
                let n = part.rows;
                *part = std::sync::Arc::new(w.row_range(start, n).expect("rows in range"));
                start += n;
            }
        }
        Some(Projection::Quantized {
            weight: QuantizedWeight::Cpu(std::sync::Arc::new(w)),
            bias: None,
        })
    }
}
