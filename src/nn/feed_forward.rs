//! The position-wise feed-forward network: expand, activate, project back.

use crate::nn::kernels::glu::{glu, GluAct};
use crate::nn::linear::{Linear, Projection};
use crate::{Error, Result};
use candle_core::{Tensor, D};

/// Activation functions, named as in Hugging Face configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x * Phi(x)` (`"gelu"`).
    Gelu,
    /// GELU's tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`): GPT-2's default.
    GeluTanh,
    Relu,
    /// `x * sigmoid(x)` (`"silu"`, `"swish"`).
    Silu,
}

impl Activation {
    /// Parses a Hugging Face `activation_function` / `hidden_act` name.
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(Error::Config(format!(
                    "unknown activation function {other:?} (known: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
                )))
            }
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Gelu => crate::nn::kernels::gelu::gelu(x, true)?,
            Activation::GeluTanh => crate::nn::kernels::gelu::gelu(x, false)?,
            Activation::Relu => x.relu()?,
            Activation::Silu => x.silu()?,
        })
    }
}

/// `proj(act(fc(x)))`.
#[derive(Clone, Debug)]
pub struct FeedForward {
    pub fc: Linear,
    pub proj: Linear,
    pub act: Activation,
}

impl FeedForward {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.act.forward(&self.fc.forward(x)?)?)
    }
}

/// Gate and up projections: two, or one (`gate_up_proj`, gate first).
#[derive(Clone, Debug)]
pub enum GateUp {
    Separate {
        gate_proj: Projection,
        up_proj: Projection,
        /// Frozen quantized weights: both stacked into one product.
        stacked: Option<Projection>,
    },
    Fused(Projection),
}

/// The gated feed-forward network: `down(act(gate(x)) * up(x))` (SwiGLU, GeGLU).
#[derive(Clone, Debug)]
pub struct GatedMlp {
    pub gate_up: GateUp,
    pub down_proj: Projection,
    pub act: Activation,
}

impl GatedMlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (g, u) = match &self.gate_up {
            GateUp::Separate {
                stacked: Some(p), ..
            }
            | GateUp::Fused(p) => {
                let y = p.forward(x)?;
                let n = y.dim(D::Minus1)? / 2;
                (y.narrow(D::Minus1, 0, n)?, y.narrow(D::Minus1, n, n)?)
            }
            GateUp::Separate {
                gate_proj,
                up_proj,
                stacked: None,
            } => (gate_proj.forward(x)?, up_proj.forward(x)?),
        };
        let act = match self.act {
            Activation::Silu => Some(GluAct::Silu),
            Activation::GeluTanh => Some(GluAct::GeluTanh),
            Activation::Gelu => Some(GluAct::GeluErf),
            Activation::Relu => None,
        };
        let h = match act {
            Some(a) => glu(&g, &u, a)?,
            None => (self.act.forward(&g)? * u)?,
        };
        self.down_proj.forward(&h)
    }
}
