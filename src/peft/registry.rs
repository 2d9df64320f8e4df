//! The adapters a parameter store holds and the methods behind them. [`PeftRegistry`] is the
//! store's [`AdapterHook`]: as a model is built it asks each adapter's [`Method`] (one file
//! each: `lora`, `ia3`, `ln_tuning`, `prompt_tuning`, `prefix_tuning`) for what that method
//! puts on a layer, a norm or before the input; merging asks the method how its adapter
//! folds into the weights.

use super::adapter::{AdaptedModule, Adapters, LayerAdapter, Switch};
use super::config::{BiasMode, PeftConfig, PeftType};
use crate::nn::adapter::{AdapterHook, LinearAdapter, LinearSite};
use crate::nn::store::{Init, ParamStore};
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

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

/// Every method.
pub static METHODS: &[&dyn Method] = &[
    &super::lora::LORA,
    &super::ia3::IA3,
    &super::ln_tuning::LN_TUNING,
    &super::prompt_tuning::PROMPT_TUNING,
    &super::prefix_tuning::PREFIX_TUNING,
];

impl PeftType {
    /// The method of this type.
    pub fn method(self) -> &'static dyn Method {
        *METHODS
            .iter()
            .find(|m| m.peft_type() == self)
            .expect("every PeftType has a method")
    }
}

/// One named adapter.
#[derive(Debug, Clone)]
pub struct RegisteredAdapter {
    pub name: String,
    pub config: PeftConfig,
    /// The adapter directory it was read from: its tensors must then all be present.
    pub source: Option<PathBuf>,
}

/// What a store knows of its adapters.
#[derive(Debug, Default)]
pub struct PeftRegistry {
    pub adapters: Vec<RegisteredAdapter>,
    pub switch: Switch,
    /// The adapted layers, by module path.
    pub modules: BTreeMap<String, AdaptedModule>,
    /// Values kept to undo a merge: DoRA row norms, LayerNorm-tuned norms.
    pub saved: BTreeMap<(String, String), Tensor>,
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
                    super::adapter_io::file_key(key),
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

/// A store key of an adapter tensor: `{module}.{kind}.{adapter}` plus `.weight` for the
/// `nn.Linear`-held ones (PEFT's in-memory names); `prompt_embeddings.{adapter}` for a prompt.
pub fn param_name(module: &str, kind: &str, adapter: &str) -> String {
    match kind {
        "ia3_l" => format!("{module}.{kind}.{adapter}"),
        PROMPT => format!("{PROMPT}.{adapter}"),
        _ => format!("{module}.{kind}.{adapter}.weight"),
    }
}

/// The store key of LayerNorm tuning's copy of a norm's `param` (`weight` or `bias`).
pub fn ln_param_name(module: &str, adapter: &str, param: &str) -> String {
    format!("{module}.{LN}.{adapter}.{param}")
}

pub(crate) const LN: &str = "ln_tuning_layers";
pub(crate) const PROMPT: &str = "prompt_embeddings";

/// The kinds of adapter tensor that name a module in a key (a prompt's does not).
pub fn kinds() -> impl Iterator<Item = &'static str> {
    METHODS
        .iter()
        .flat_map(|m| m.kinds().iter().copied())
        .filter(|k| *k != PROMPT)
}

/// Splits a store key into (module, kind, adapter) when it is an adapter tensor (a prompt's
/// module is `prompt_embeddings`).
pub fn split_param_name(key: &str) -> Option<(&str, &'static str, &str)> {
    if let Some(adapter) = key.strip_prefix("prompt_embeddings.") {
        return Some((PROMPT, PROMPT, adapter));
    }
    kinds().find_map(|kind| {
        let i = key.find(&format!(".{kind}."))?;
        let rest = &key[i + kind.len() + 2..];
        let adapter = rest
            .strip_suffix(".weight")
            .or_else(|| rest.strip_suffix(".bias"))
            .unwrap_or(rest);
        Some((&key[..i], kind, adapter))
    })
}

impl PeftRegistry {
    pub fn get(&self, name: &str) -> Option<&RegisteredAdapter> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// Enables adapter dropout (drawing from `rng`) for the next forward passes, or
    /// disables it (`None`).
    pub fn set_dropout(&self, rng: Option<crate::rng::Rng>) {
        self.switch.lock().expect("adapter state").dropout = rng;
    }

    /// Makes `names` the applied adapters.
    pub fn set_active(&self, names: &[&str]) -> Result<()> {
        if let Some(n) = names.iter().find(|n| self.get(n).is_none()) {
            return Err(Error::Config(format!(
                "no adapter named {n:?} (loaded: {:?})",
                self.adapters.iter().map(|a| &a.name).collect::<Vec<_>>()
            )));
        }
        self.switch.lock().expect("adapter state").active =
            names.iter().map(|s| s.to_string()).collect();
        Ok(())
    }

    /// The first active adapter of `kind` that `accepts`.
    fn active_of(
        &self,
        kind: PeftType,
        accepts: impl Fn(&RegisteredAdapter) -> bool,
    ) -> Option<RegisteredAdapter> {
        let active = self.switch.lock().expect("adapter state").active.clone();
        self.adapters
            .iter()
            .find(|a| a.config.peft_type == kind && active.contains(&a.name) && accepts(a))
            .cloned()
    }
}

impl AdapterHook for PeftRegistry {
    fn linear(
        &mut self,
        store: &mut ParamStore,
        site: &LinearSite,
    ) -> Result<Option<Arc<dyn LinearAdapter>>> {
        let targeting: Vec<RegisteredAdapter> = self
            .adapters
            .iter()
            .filter(|a| a.config.peft_type.wraps_linear() && a.config.targets(site.module))
            .cloned()
            .collect();
        if targeting.is_empty() {
            return Ok(None);
        }
        let mut items = Vec::new();
        for a in &targeting {
            let mut ctx = Ctx { store, adapter: a };
            if let Some(piece) = a.config.peft_type.method().linear(&mut ctx, site)? {
                items.push((a.name.clone(), piece));
            }
        }
        self.modules.insert(
            site.module.to_string(),
            AdaptedModule {
                in_out: site.in_out,
                quantized: site.quantized,
                has_bias: site.has_bias,
            },
        );
        Ok(Some(Arc::new(Adapters {
            switch: self.switch.clone(),
            items,
        })))
    }

    fn norm(
        &mut self,
        store: &mut ParamStore,
        module: &str,
        param: &str,
        base: Tensor,
    ) -> Result<Tensor> {
        let Some(a) = self.active_of(PeftType::LnTuning, |a| a.config.targets(module)) else {
            return Ok(base);
        };
        let mut ctx = Ctx { store, adapter: &a };
        let Some(t) = PeftType::LnTuning
            .method()
            .norm(&mut ctx, module, param, &base)?
        else {
            return Ok(base);
        };
        let entry = self.modules.entry(module.to_string()).or_default();
        entry.has_bias |= param == "bias";
        Ok(t)
    }

    fn prompt(
        &mut self,
        store: &mut ParamStore,
        hidden: usize,
        table: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let Some(a) = self.active_of(PeftType::PromptTuning, |_| true) else {
            return Ok(None);
        };
        let mut ctx = Ctx { store, adapter: &a };
        let t = PeftType::PromptTuning
            .method()
            .prompt(&mut ctx, hidden, table)?;
        if t.is_some() {
            self.modules
                .insert(PROMPT.to_string(), AdaptedModule::default());
        }
        Ok(t)
    }

    fn prefix(
        &mut self,
        store: &mut ParamStore,
        layers: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Option<Tensor>> {
        let Some(mut a) = self.active_of(PeftType::PrefixTuning, |_| true) else {
            return Ok(None);
        };
        let t = {
            let mut ctx = Ctx { store, adapter: &a };
            PeftType::PrefixTuning
                .method()
                .prefix(&mut ctx, layers, heads, head_dim)?
        };
        super::prefix_tuning::record_layout(&mut a.config, layers, heads, head_dim);
        if let Some(r) = self.adapters.iter_mut().find(|r| r.name == a.name) {
            r.config = a.config;
        }
        self.modules
            .insert(PROMPT.to_string(), AdaptedModule::default());
        Ok(t)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// A parameter the trainer keeps trainable under adapter `cfg`: the adapter's own tensors,
/// the `modules_to_save`, and the biases `bias` selects.
pub fn trains(cfg: &PeftConfig, adapter: &str, key: &str, adapted: &BTreeSet<String>) -> bool {
    if let Some((_, _, a)) = split_param_name(key) {
        return a == adapter;
    }
    if cfg.saves_module_of(key) {
        return true;
    }
    match (cfg.bias, key.strip_suffix(".bias")) {
        (BiasMode::All, Some(_)) => true,
        (BiasMode::LoraOnly, Some(m)) => adapted.contains(m),
        _ => false,
    }
}

/// The registry of a store without adapters.
fn empty() -> &'static PeftRegistry {
    static EMPTY: std::sync::OnceLock<PeftRegistry> = std::sync::OnceLock::new();
    EMPTY.get_or_init(PeftRegistry::default)
}

impl ParamStore {
    /// The registered adapters (none when the store has no registry).
    pub fn peft(&self) -> &PeftRegistry {
        match self.hook().and_then(|h| h.as_any().downcast_ref()) {
            Some(reg) => reg,
            None => empty(),
        }
    }

    /// The registry, installed first if the store has none.
    pub fn peft_mut(&mut self) -> &mut PeftRegistry {
        let ours = self
            .hook()
            .is_some_and(|h| h.as_any().downcast_ref::<PeftRegistry>().is_some());
        if !ours {
            self.set_hook(Box::<PeftRegistry>::default());
        }
        self.hook_mut()
            .and_then(|h| h.as_any_mut().downcast_mut())
            .expect("installed above")
    }

    /// Registers adapter `name` (the first one registered becomes the active one). Models
    /// built from the store afterwards carry it on every layer it targets; its tensors are
    /// the store's (read from `source`, else initialised as PEFT does).
    pub fn add_adapter(
        &mut self,
        name: &str,
        config: PeftConfig,
        source: Option<PathBuf>,
    ) -> Result<()> {
        config.validate(false)?;
        if name.is_empty() || name.contains('.') {
            return Err(Error::Config(format!(
                "adapter name {name:?} must be non-empty and without dots"
            )));
        }
        let reg = self.peft_mut();
        if reg.get(name).is_some() {
            return Err(Error::Config(format!("adapter {name:?} is already loaded")));
        }
        let first = reg.adapters.is_empty();
        reg.adapters.push(RegisteredAdapter {
            name: name.to_string(),
            config,
            source,
        });
        if first {
            reg.switch.lock().expect("adapter state").active = vec![name.to_string()];
        }
        Ok(())
    }

    /// The parameters an adapter run trains, of those the store holds: each adapter's tensors,
    /// its `modules_to_save` and the biases its `bias` option selects.
    pub fn adapter_trainable(&self) -> BTreeSet<String> {
        let reg = self.peft();
        let adapted: BTreeSet<String> = reg.modules.keys().cloned().collect();
        self.vars()
            .keys()
            .filter(|k| {
                reg.adapters
                    .iter()
                    .any(|a| trains(&a.config, &a.name, k, &adapted))
            })
            .cloned()
            .collect()
    }

    /// Freezes everything the adapters do not train (see [`ParamStore::adapter_trainable`]);
    /// rebuild models from the store afterwards.
    pub fn freeze_all_but_adapters(&mut self) -> Result<()> {
        let trainable = self.adapter_trainable();
        let frozen = self
            .vars()
            .keys()
            .filter(|k| !trainable.contains(*k))
            .cloned()
            .collect();
        self.freeze(&frozen)
    }

    /// Folds adapter `name` into the base weights (the model must have been built with it):
    /// its layers then skip it. Quantized layers cannot be merged into.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        self.fold(name, false)
    }

    /// PEFT's `merge_and_unload`: folds the active adapters into the base weights and drops
    /// every adapter, leaving a plain model's parameters (rebuild models from the store).
    pub fn merge_and_unload(&mut self) -> Result<()> {
        let active = self
            .peft()
            .switch
            .lock()
            .expect("adapter state")
            .active
            .clone();
        for name in &active {
            self.merge_adapter(name)?;
        }
        let keys: Vec<String> = self
            .vars()
            .keys()
            .filter(|k| split_param_name(k).is_some())
            .cloned()
            .collect();
        for k in keys {
            self.remove(&k);
        }
        *self.peft_mut() = PeftRegistry::default();
        Ok(())
    }

    /// Takes a merged adapter back out of the base weights.
    pub fn unmerge_adapter(&mut self, name: &str) -> Result<()> {
        self.fold(name, true)
    }

    fn fold(&mut self, name: &str, undo: bool) -> Result<()> {
        let reg = self.peft();
        let Some(adapter) = reg.get(name) else {
            return Err(Error::Config(format!("no adapter named {name:?}")));
        };
        let method = adapter.config.peft_type.method();
        if !method.merges() {
            return Err(Error::Config(format!(
                "adapter {name:?} is {}: virtual tokens cannot be merged into weights",
                method.what()
            )));
        }
        let is_merged = reg
            .switch
            .lock()
            .expect("adapter state")
            .merged
            .contains(&name.to_string());
        if is_merged != undo {
            return Err(Error::Config(format!(
                "adapter {name:?} is {} merged",
                if undo { "not" } else { "already" }
            )));
        }
        let holds = |module: &str| {
            method
                .kinds()
                .iter()
                .any(|k| self.vars().contains_key(&param_name(module, k, name)))
        };
        if let Some((m, _)) = reg.modules.iter().find(|(k, m)| m.quantized && holds(k)) {
            return Err(Error::Config(format!(
                "{m} is quantized: merging needs the base weights in f32 (load the GGUF file without --quantized)"
            )));
        }
        let mut updates = Vec::new();
        let mut keep = Vec::new();
        for (module, info) in &reg.modules {
            let mut f = Fold {
                store: self,
                config: &adapter.config,
                name,
                module,
                info,
                undo,
                saved: &reg.saved,
                updates: vec![],
                keep: vec![],
            };
            method.fold(&mut f)?;
            updates.extend(f.updates);
            keep.extend(f.keep);
        }
        for (k, v) in updates {
            self.vars()[&k].set(&v)?;
        }
        let reg = self.peft_mut();
        reg.saved.extend(keep);
        let mut st = reg.switch.lock().expect("adapter state");
        if undo {
            st.merged.retain(|n| n != name);
        } else {
            st.merged.push(name.to_string());
        }
        Ok(())
    }
}
