//! What a PEFT method is to the rest of `peft`: the [`Method`] trait each method file
//! implements, the store access it builds its tensors with ([`Ctx`]), and one adapted module
//! as a merge sees it ([`Fold`]).

use super::adapter::{AdaptedModule, LayerAdapter};
use super::config::{PeftConfig, PeftType};
use crate::nn::adapter::LinearSite;
use crate::nn::store::{Init, ParamStore};
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One named adapter.
#[derive(Debug, Clone)]
pub struct RegisteredAdapter {
    pub name: String,
    pub config: PeftConfig,
    /// The adapter directory it was read from: its tensors must then all be present.
    pub source: Option<PathBuf>,
}

/// One PEFT method: its options, what it adds to a model, and how it folds into weights.
pub trait Method: Sync {
    fn peft_type(&self) -> PeftType;
    /// The key segments of the tensors it stores (`lora_A`, `ia3_l`, ...).
    fn kinds(&self) -> &'static [&'static str];
    /// Checks the method's own options.
    fn validate(&self, _cfg: &PeftConfig) -> Result<()> {
        Ok(())
    }
    /// Its piece of the linear layer `site`, which its `target_modules` select.
    fn linear(&self, _ctx: &mut Ctx, _site: &LinearSite) -> Result<Option<Arc<dyn LayerAdapter>>> {
        Ok(None)
    }
    /// The tensor a targeted norm uses for `param` instead of `base`.
    fn norm(
        &self,
        _ctx: &mut Ctx,
        _module: &str,
        _param: &str,
        _base: &Tensor,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Virtual-token embeddings before the input.
    fn prompt(
        &self,
        _ctx: &mut Ctx,
        _hidden: usize,
        _table: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Keys and values before every layer's own.
    fn prefix(
        &self,
        _ctx: &mut Ctx,
        _layers: usize,
        _heads: usize,
        _head_dim: usize,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// What it is called in messages.
    fn what(&self) -> &'static str;
    /// Whether the adapter folds into weights (virtual tokens do not).
    fn merges(&self) -> bool {
        true
    }
    /// Folds the adapter into the parameters of one adapted module (or, `f.undo`, back out).
    fn fold(&self, _f: &mut Fold) -> Result<()> {
        Ok(())
    }
}

/// A method at work on the store for one adapter.
pub struct Ctx<'a> {
    pub store: &'a mut ParamStore,
    pub adapter: &'a RegisteredAdapter,
}

impl Ctx<'_> {
    /// The adapter's tensor `key` of shape `dims`: the store's, else (for an adapter not read
    /// from a file) initialised with `init`. An adapter read from a file must hold it.
    pub fn param(&mut self, key: &str, dims: &[usize], init: Init) -> Result<Tensor> {
        let strict = self.adapter.source.as_deref();
        let store = &mut *self.store;
        if let (Some(src), false, None) = (strict, store.vars().contains_key(key), store.shapes()) {
            return Err(Error::format(
                src,
                format!(
                    "the adapter has no tensor for {} ({}), which its target_modules select in this model: is it an adapter for another base model?",
                    super::keys::file_key(key),
                    key.split('.').rev().nth(1).unwrap_or(key)
                ),
            ));
        }
        store
            .get_or_init(key, dims, init)
            .map_err(|e| match (e, strict) {
                (Error::Format { msg, .. } | Error::Config(msg), Some(src)) => Error::format(
                    src,
                    format!("{msg}: is this an adapter for another base model?"),
                ),
                (e, _) => e,
            })
    }

    /// Whether the store lacks `key` and should make it (not read from a file, not shapes).
    pub fn is_new(&self, key: &str) -> bool {
        !self.store.vars().contains_key(key)
            && self.store.shapes().is_none()
            && self.adapter.source.is_none()
    }
}

/// One adapted module during a merge (or its undoing).
pub struct Fold<'a> {
    pub store: &'a ParamStore,
    pub config: &'a PeftConfig,
    pub name: &'a str,
    pub module: &'a str,
    pub info: &'a AdaptedModule,
    pub undo: bool,
    /// Values kept by earlier merges (read when undoing).
    pub saved: &'a BTreeMap<(String, String), Tensor>,
    /// New parameter values by key.
    pub updates: Vec<(String, Tensor)>,
    /// Values to keep for undoing this merge.
    pub keep: Vec<((String, String), Tensor)>,
}

impl Fold<'_> {
    /// Parameter `key`, detached, if the store holds it.
    pub fn get(&self, key: &str) -> Option<Tensor> {
        self.store.vars().get(key).map(|v| v.as_tensor().detach())
    }

    /// The module's weight as `[out, in]`, if it has one.
    pub fn weight(&self) -> Result<Option<Tensor>> {
        let Some(w) = self.get(&format!("{}.weight", self.module)) else {
            return Ok(None);
        };
        Ok(Some(if self.info.in_out { w.t()? } else { w }))
    }

    /// Records the module's new weight (given `[out, in]`).
    pub fn set_weight(&mut self, w: Tensor) -> Result<()> {
        let w = if self.info.in_out { w.t()? } else { w };
        self.updates
            .push((format!("{}.weight", self.module), w.contiguous()?));
        Ok(())
    }
}
