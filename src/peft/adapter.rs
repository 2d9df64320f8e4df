//! The adapters of one linear layer (LoRA, DoRA, IA3): each method's piece of the layer
//! ([`LayerAdapter`], defined in its own file), and how they compose into the layer's output.
//!
//! The base model is never rebuilt around its adapters: a [`crate::nn::Linear`] (or quantized
//! projection) built while the parameter store has adapters registered gets an [`Adapters`]
//! for the ones that target its path, and every adapted layer of a model shares one
//! [`Switch`], so choosing the active adapters (or marking one merged) is a single write.

use crate::nn::adapter::{Base, LinearAdapter};
use crate::rng::Rng;
use crate::Result;
use candle_core::Tensor;
use std::sync::{Arc, Mutex};

/// Which adapters a model applies, shared by all its adapted layers.
#[derive(Debug, Default)]
pub struct AdapterState {
    /// The adapters applied, in order (LoRA updates of several adapters add up).
    pub active: Vec<String>,
    /// Adapters folded into the base weights (see `merge_adapter`): not applied again.
    pub merged: Vec<String>,
    /// During a training forward pass: the stream adapter dropout draws from.
    pub dropout: Option<Rng>,
}

pub type Switch = Arc<Mutex<AdapterState>>;

/// One adapter's tensors on one linear layer.
pub trait LayerAdapter: std::fmt::Debug + Send + Sync {
    /// What the base map reads instead of the layer's input `x` (IA3 on a feed-forward
    /// target scales it), if this adapter changes it.
    fn input(&self, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// The output so far, `y`, with this adapter's change; `x` is the layer's input and
    /// `dropout_seed` this adapter's dropout mask seed while training.
    fn output(
        &self,
        x: &Tensor,
        y: Tensor,
        base: &Base,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor>;
    /// The dropout probability on the adapter's input.
    fn dropout(&self) -> f64 {
        0.0
    }
}

/// The adapters of one layer, by adapter name.
#[derive(Clone, Debug)]
pub struct Adapters {
    pub switch: Switch,
    pub items: Vec<(String, Arc<dyn LayerAdapter>)>,
}

impl Adapters {
    /// The seed of this layer's dropout mask, when dropout is on (training) and `p > 0`.
    fn dropout_seed(&self, p: f64) -> Option<u64> {
        if p == 0.0 {
            return None;
        }
        // Through the checkpoint tape: a recomputed layer must draw the same masks.
        crate::nn::checkpoint::seed(|| {
            let mut st = self.switch.lock().expect("adapter state");
            st.dropout.as_mut().map(|rng| rng.next_u64())
        })
    }
}

impl LinearAdapter for Adapters {
    /// The layer's output for `x` `[n, in]` with the active, unmerged adapters applied: the
    /// inputs they scale, the base map, then each one's change of the output, in order.
    fn forward(&self, x: &Tensor, base: Base) -> Result<Tensor> {
        let (active, merged) = {
            let st = self.switch.lock().expect("adapter state");
            (st.active.clone(), st.merged.clone())
        };
        let live: Vec<&Arc<dyn LayerAdapter>> = self
            .items
            .iter()
            .filter(|(n, _)| active.contains(n) && !merged.contains(n))
            .map(|(_, a)| a)
            .collect();
        let mut x_in = x.clone();
        for a in &live {
            if let Some(scaled) = a.input(&x_in)? {
                x_in = scaled;
            }
        }
        let mut y = (base.forward)(&x_in)?;
        for a in &live {
            let seed = self.dropout_seed(a.dropout());
            y = a.output(x, y, &base, seed)?;
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
