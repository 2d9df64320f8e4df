//! Affine maps. This is the one place a model multiplies by a weight matrix, so later
//! parameter-efficient methods (LoRA and friends) wrap this type rather than the models.

use crate::nn::adapter::{Base, LinearAdapter, LinearSite};
use crate::nn::kernels::bf16::Precision;
use crate::nn::store::{Init, ParamStore};
use crate::Result;
use candle_core::{DType, Tensor, D};
use std::sync::Arc;

/// The weight as adapters see it: `[out, in]`, in f32 also when it is held in bf16.
fn out_in_f32(w: &Tensor, in_out: bool) -> Result<Tensor> {
    let w = w.to_dtype(DType::F32)?;
    Ok(if in_out { w.t()? } else { w })
}

/// The adapters on a layer.
pub type Adapters = Arc<dyn LinearAdapter>;

/// `y = x W + b`. The weight is kept in the orientation of the checkpoint it came from:
/// `[in, out]` for GPT-2's Conv1D, `[out, in]` for PyTorch's `nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// True when `weight` is `[in, out]` (GPT-2 Conv1D).
    pub in_out: bool,
    /// Adapters (LoRA, IA3) wrapping this map, when the store that built it had some
    /// targeting its path.
    pub adapters: Option<Adapters>,
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
        let weight = store.matrix(
            &format!("{prefix}.weight"),
            &[d_out, d_in],
            Init::Normal(std),
        )?;
        let bias = if bias {
            Some(store.get(&format!("{prefix}.bias"), &[d_out], Init::Zeros)?)
        } else {
            None
        };
        Linear::plain(weight, bias, false).adapted(store, prefix)
    }

    /// A map with no adapters.
    pub fn plain(weight: Tensor, bias: Option<Tensor>, in_out: bool) -> Self {
        Linear {
            weight,
            bias,
            in_out,
            adapters: None,
        }
    }

    /// This map with the adapters `store` has for the module at `prefix`.
    fn adapted(mut self, store: &mut ParamStore, prefix: &str) -> Result<Self> {
        let (d_in, d_out) = self.dims()?;
        let (w, in_out) = (self.weight.clone(), self.in_out);
        let weight = move || out_in_f32(&w, in_out);
        self.adapters = store.adapt_linear(&LinearSite {
            module: prefix,
            d_in,
            d_out,
            in_out: self.in_out,
            quantized: false,
            has_bias: self.bias.is_some(),
            weight: &weight,
        })?;
        Ok(self)
    }

    /// `(in, out)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (a, b) = self.weight.dims2()?;
        Ok(if self.in_out { (a, b) } else { (b, a) })
    }

    /// A GPT-2 Conv1D: weight `{prefix}.weight` of shape `[in, out]`, bias `{prefix}.bias`.
    pub fn conv1d(
        store: &mut ParamStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        std: f64,
    ) -> Result<Self> {
        let weight = store.matrix(
            &format!("{prefix}.weight"),
            &[d_in, d_out],
            Init::Normal(std),
        )?;
        let bias = store.get(&format!("{prefix}.bias"), &[d_out], Init::Zeros)?;
        Linear::plain(weight, Some(bias), true).adapted(store, prefix)
    }

    /// Applies the map to the last dimension of `x` (any leading shape).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.adapters {
            None => self.forward_base(x),
            Some(ad) => {
                let dims = x.dims().to_vec();
                let x2 = x.reshape(((), dims[dims.len() - 1]))?;
                let base = |x: &Tensor| self.forward_base(x);
                let weight = || out_in_f32(&self.weight, self.in_out);
                let y = ad.forward(
                    &x2,
                    Base {
                        forward: &base,
                        weight: &weight,
                        bias: self.bias.as_ref(),
                    },
                )?;
                let mut out_dims = dims;
                *out_dims.last_mut().expect("rank >= 1") = y.dim(D::Minus1)?;
                Ok(y.reshape(out_dims)?)
            }
        }
    }

    /// The map without adapters.
    fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
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
        // Under bf16 precision the operands are rounded as the fused op rounds them; a weight
        // held in bf16 is widened.
        let round = |t: &Tensor| -> Result<Tensor> {
            Ok(if crate::nn::kernels::bf16::current() == Precision::Bf16 {
                t.to_dtype(DType::BF16)?.to_dtype(x2.dtype())?
            } else {
                t.to_dtype(x2.dtype())?
            })
        };
        let (x2, w) = (round(&x2)?, round(&self.weight)?);
        let y = if self.in_out {
            x2.matmul(&w)?
        } else {
            x2.matmul(&w.t()?)?
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
        /// Adapters trained (in f32) on the frozen quantized weight: QLoRA.
        adapters: Option<Adapters>,
    },
}

/// Quantized weights by Hugging Face key (`...q_proj.weight`), for inference-only models.
pub type QuantWeights = std::collections::BTreeMap<String, QuantizedWeight>;

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

    /// `x @ W^T` over the last dimension of `x`. On our CPU kernel the product has a
    /// backward for `x` (the weight stays frozen), so adapters before it can train.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        Ok(match self {
            QuantizedWeight::Cpu(w) => x.to_dtype(DType::F32)?.contiguous()?.apply_op1(
                crate::nn::kernels::qmatmul::QMatMulOp {
                    weight: w.clone(),
                    dense: x.track_op(),
                },
            )?,
            QuantizedWeight::Candle(w) => w.forward(x)?,
        })
    }

    /// The weight dequantized to f32 `[rows, cols]`.
    pub fn dequantize(&self) -> Result<Tensor> {
        Ok(match self {
            QuantizedWeight::Cpu(w) => w.dequantize(),
            QuantizedWeight::Candle(candle_core::quantized::QMatMul::QTensor(q)) => {
                q.dequantize(&q.device())?
            }
            QuantizedWeight::Candle(
                candle_core::quantized::QMatMul::Tensor(t)
                | candle_core::quantized::QMatMul::TensorF16(t),
            ) => t.to_dtype(DType::F32)?,
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

    /// A frozen quantized projection, with the adapters `store` has for the module at
    /// `prefix`.
    pub fn quantized(
        store: &mut ParamStore,
        prefix: &str,
        weight: QuantizedWeight,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        let dims = weight.dims();
        let (d_out, d_in) = (dims[0], dims[1]);
        let w = weight.clone();
        let dense = move || w.dequantize();
        let adapters = store.adapt_linear(&LinearSite {
            module: prefix,
            d_in,
            d_out,
            in_out: false,
            quantized: true,
            has_bias: bias.is_some(),
            weight: &dense,
        })?;
        Ok(Projection::Quantized {
            weight,
            bias,
            adapters,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Dense(l) => l.forward(x),
            Projection::Quantized {
                weight,
                bias,
                adapters,
            } => {
                let base = |x: &Tensor| -> Result<Tensor> {
                    let y = weight.forward(x)?;
                    Ok(match bias {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    })
                };
                match adapters {
                    None => base(x),
                    Some(ad) => {
                        let dims = x.dims().to_vec();
                        let x2 = x.reshape(((), dims[dims.len() - 1]))?;
                        let dense = || weight.dequantize();
                        let y = ad.forward(
                            &x2,
                            Base {
                                forward: &base,
                                weight: &dense,
                                bias: bias.as_ref(),
                            },
                        )?;
                        let mut out_dims = dims;
                        *out_dims.last_mut().expect("rank >= 1") = y.dim(D::Minus1)?;
                        Ok(y.reshape(out_dims)?)
                    }
                }
            }
        }
    }

    /// The adapters on this projection.
    pub fn adapters(&self) -> Option<&Adapters> {
        match self {
            Projection::Dense(l) => l.adapters.as_ref(),
            Projection::Quantized { adapters, .. } => adapters.as_ref(),
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
                    adapters: None,
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
            adapters: None,
        })
    }
}
