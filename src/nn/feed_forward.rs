//! The position-wise feed-forward network: expand, activate, project back.

use crate::nn::linear::Linear;
use crate::{Error, Result};
use candle_core::Tensor;

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
