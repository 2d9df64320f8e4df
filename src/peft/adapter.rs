//! Adapters on linear layers (LoRA, DoRA, IA3): the tensors each adapted layer holds, how they
//! change its output, and merging them into the base weights and back.
//!
//! The base model is never rebuilt around its adapters: a [`crate::nn::Linear`] (or quantized
//! projection) built while the parameter store has adapters registered gets an [`Adapters`]
//! for the ones that target its path, and every adapted layer of a model shares one
//! [`Switch`], so choosing the active adapters (or marking one merged) is a single write.

use crate::rng::Rng;
use crate::Result;
use candle_core::Tensor;
use std::sync::{Arc, Mutex};

/// Which adapters a model applies, shared by all its adapted layers.
#[derive(Debug, Default)]
pub struct AdapterState {
    /// The adapters applied, in order (LoRA updates of several adapters add up).
    pub active: Vec<String>,
    /// Adapters folded into the base weights (see [`merge`]): not applied again.
    pub merged: Vec<String>,
    /// During a training forward pass: the stream adapter dropout draws from.
    pub dropout: Option<Rng>,
}

pub type Switch = Arc<Mutex<AdapterState>>;

/// One adapter's tensors on one layer.
#[derive(Clone, Debug)]
pub enum Adapter {
    /// `y += scaling * B A dropout(x)`; with `magnitude`, DoRA.
    Lora {
        /// `[r, in]`.
        a: Tensor,
        /// `[out, r]`.
        b: Tensor,
        scaling: f64,
        dropout: f64,
        /// DoRA's per-output magnitude `[out]`.
        magnitude: Option<Tensor>,
    },
    /// IA3: the output (or, for feed-forward targets, the input) scaled elementwise by a
    /// learned vector (`[out, 1]`, or `[1, in]`).
    Ia3 { scale: Tensor, feedforward: bool },
}

/// The adapters of one layer, by adapter name.
#[derive(Clone, Debug)]
pub struct Adapters {
    pub switch: Switch,
    pub items: Vec<(String, Adapter)>,
}

/// `x @ w^T` for `x` `[n, in]`, `w` `[out, in]`, through the fused kernel where there is one.
fn mm(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match crate::nn::kernels::linear::linear(x, w, None, false)? {
        Some(y) => Ok(y),
        None => Ok(x.matmul(&w.t()?)?),
    }
}

/// The frozen map an adapter wraps, as the adapted layer provides it.
pub struct Base<'a> {
    /// `base(x)`: the layer's output, bias included.
    pub forward: &'a dyn Fn(&Tensor) -> Result<Tensor>,
    /// The weight as `[out, in]` (dequantized if need be), for DoRA.
    pub weight: &'a dyn Fn() -> Result<Tensor>,
    pub bias: Option<&'a Tensor>,
}

/// DoRA's `m / ||W + s B A||` per output row, with the norm treated as a constant (as PEFT).
fn dora_scale(w: &Tensor, a: &Tensor, b: &Tensor, s: f64, m: &Tensor) -> Result<Tensor> {
    let delta = (b.detach().matmul(&a.detach())? * s)?;
    let norm = (w + delta)?.sqr()?.sum(1)?.sqrt()?.detach();
    Ok(m.broadcast_div(&norm)?)
}

impl Adapters {
    /// The seed of this layer's dropout mask, when dropout is on (training) and `p > 0`.
    fn dropout_seed(&self, p: f64) -> Option<u64> {
        if p == 0.0 {
            return None;
        }
        let mut st = self.switch.lock().expect("adapter state");
        st.dropout.as_mut().map(|rng| rng.next_u64())
    }

    /// The layer's output for `x` `[n, in]` with the active, unmerged adapters applied.
    pub fn forward(&self, x: &Tensor, base: Base) -> Result<Tensor> {
        let (active, merged) = {
            let st = self.switch.lock().expect("adapter state");
            (st.active.clone(), st.merged.clone())
        };
        let live: Vec<&Adapter> = self
            .items
            .iter()
            .filter(|(n, _)| active.contains(n) && !merged.contains(n))
            .map(|(_, a)| a)
            .collect();
        // IA3 on a feed-forward target scales the input before the base map.
        let mut x_in = x.clone();
        for a in &live {
            if let Adapter::Ia3 {
                scale,
                feedforward: true,
            } = a
            {
                x_in = x_in.broadcast_mul(scale)?;
            }
        }
        let mut y = (base.forward)(&x_in)?;
        for a in &live {
            match a {
                Adapter::Ia3 {
                    scale,
                    feedforward: false,
                } => y = y.broadcast_mul(&scale.t()?)?,
                Adapter::Ia3 { .. } => {}
                Adapter::Lora {
                    a,
                    b,
                    scaling,
                    dropout,
                    magnitude,
                } => {
                    let seed = self.dropout_seed(*dropout);
                    if magnitude.is_none() {
                        let drop = seed.map(|s| (*dropout, s));
                        if let Some(fused) =
                            crate::nn::kernels::lora::lora_add(&y, x, a, b, *scaling, drop)?
                        {
                            y = fused;
                            continue;
                        }
                    }
                    let mask = match seed {
                        Some(s) => {
                            let m =
                                crate::nn::kernels::lora::dropout_mask(*dropout, s, x.elem_count());
                            Some(Tensor::from_vec(m, x.shape(), x.device())?)
                        }
                        None => None,
                    };
                    let xd = match &mask {
                        Some(m) => (x * m)?,
                        None => x.clone(),
                    };
                    let lora = (mm(&mm(&xd, a)?, b)? * *scaling)?;
                    y = match magnitude {
                        None => (y + lora)?,
                        Some(m) => {
                            let w = (base.weight)()?;
                            let scale = dora_scale(&w, a, b, *scaling, m)?.unsqueeze(0)?;
                            // The base output without its bias, for the dropped input.
                            let plain = match (&mask, base.bias) {
                                (None, Some(bias)) => y.broadcast_sub(bias)?,
                                (None, None) => y.clone(),
                                (Some(_), _) => mm(&xd, &w)?,
                            };
                            let dora = (plain.broadcast_mul(&(&scale - 1.0)?)?
                                + lora.broadcast_mul(&scale)?)?;
                            (y + dora)?
                        }
                    };
                }
            }
        }
        Ok(y)
    }
}

/// An adapted layer as the store records it, for merging.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AdaptedModule {
    /// The weight is `[in, out]` (GPT-2 Conv1D).
    pub in_out: bool,
    /// The weight is quantized (it cannot be merged into).
    pub quantized: bool,
    pub has_bias: bool,
}
