//! The hook through which parameter-efficient methods change a model without the model, or
//! these layers, knowing them. While a model is built, its linear layers, norms and virtual
//! tokens ask the parameter store; a store with an [`AdapterHook`] installed (PEFT's
//! registry, `crate::peft`) answers with the adapters that target them. `nn` defines the
//! questions; `peft` answers them.

use crate::nn::store::ParamStore;
use crate::Result;
use candle_core::Tensor;
use std::sync::Arc;

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

/// What a model asks of the store's adapters as it is built.
pub trait AdapterHook: Send + Sync {
    /// The adapters for linear layer `site`, their tensors taken from (or made in) `store`.
    fn linear(
        &mut self,
        store: &mut ParamStore,
        site: &LinearSite,
    ) -> Result<Option<Arc<dyn LinearAdapter>>>;
    /// The tensor a norm at `module` uses for its `param` (`weight`, `bias`), `base` unless
    /// an adapter tunes it.
    fn norm(
        &mut self,
        store: &mut ParamStore,
        module: &str,
        param: &str,
        base: Tensor,
    ) -> Result<Tensor>;
    /// Learned virtual-token embeddings `[n, hidden]` put before the input (prompt tuning);
    /// `table` (the token embeddings) may seed them.
    fn prompt(
        &mut self,
        store: &mut ParamStore,
        hidden: usize,
        table: Option<&Tensor>,
    ) -> Result<Option<Tensor>>;
    /// Learned keys and values for `layers` layers of `heads` key/value heads of `head_dim`
    /// (prefix tuning), as PEFT lays them out: `[n, layers * 2 * heads * head_dim]`.
    fn prefix(
        &mut self,
        store: &mut ParamStore,
        layers: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Option<Tensor>>;
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl ParamStore {
    /// Runs `f` with the store's hook taken out (it gets the store, hook-less, to work on).
    fn with_hook<T>(
        &mut self,
        none: impl FnOnce() -> T,
        f: impl FnOnce(&mut dyn AdapterHook, &mut ParamStore) -> Result<T>,
    ) -> Result<T> {
        let Some(mut hook) = self.take_hook() else {
            return Ok(none());
        };
        let out = f(hook.as_mut(), self);
        self.set_hook(hook);
        out
    }

    /// The adapters for linear layer `site` (none without a hook).
    pub fn adapt_linear(&mut self, site: &LinearSite) -> Result<Option<Arc<dyn LinearAdapter>>> {
        self.with_hook(|| None, |h, s| h.linear(s, site))
    }

    /// The tensor a norm uses for `param` (see [`AdapterHook::norm`]).
    pub fn adapt_norm(&mut self, module: &str, param: &str, base: Tensor) -> Result<Tensor> {
        match self.take_hook() {
            None => Ok(base),
            Some(mut hook) => {
                let out = hook.norm(self, module, param, base);
                self.set_hook(hook);
                out
            }
        }
    }

    /// Prompt tuning's embeddings (see [`AdapterHook::prompt`]).
    pub fn virtual_prompt(
        &mut self,
        hidden: usize,
        table: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        self.with_hook(|| None, |h, s| h.prompt(s, hidden, table))
    }

    /// Prefix tuning's keys and values (see [`AdapterHook::prefix`]).
    pub fn virtual_prefix(
        &mut self,
        layers: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Option<Tensor>> {
        self.with_hook(|| None, |h, s| h.prefix(s, layers, heads, head_dim))
    }
}
