//! What a linear layer's adapters look like to the layer: the parameter store's adapter
//! hook ([`crate::nn::store::AdapterHook`], which PEFT's registry implements) hands them out
//! as a model is built, and the layer runs them around its own map.

use crate::Result;
use candle_core::Tensor;

/// The frozen map an adapter wraps, as the adapted layer provides it.
pub struct Base<'a> {
    /// `base(x)`: the layer's output, bias included.
    pub forward: &'a dyn Fn(&Tensor) -> Result<Tensor>,
    /// The weight as `[out, in]` (dequantized if need be), for DoRA.
    pub weight: &'a dyn Fn() -> Result<Tensor>,
    pub bias: Option<&'a Tensor>,
}

/// The adapters a linear layer carries.
pub trait LinearAdapter: std::fmt::Debug + Send + Sync {
    /// The layer's output for `x` `[n, in]` with the adapters applied.
    fn forward(&self, x: &Tensor, base: Base) -> Result<Tensor>;
}

/// A linear layer being built, as the hook sees it.
pub struct LinearSite<'a> {
    /// Its module path (`model.layers.3.self_attn.q_proj`).
    pub module: &'a str,
    pub d_in: usize,
    pub d_out: usize,
    /// The weight is `[in, out]` (GPT-2 Conv1D).
    pub in_out: bool,
    /// The weight is kept quantized.
    pub quantized: bool,
    pub has_bias: bool,
    /// The base weight as `[out, in]` (DoRA's magnitude starts at its row norms).
    pub weight: &'a dyn Fn() -> Result<Tensor>,
}
