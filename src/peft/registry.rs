//! The adapters a parameter store holds and the methods behind them. [`PeftRegistry`] is the
//! store's [`AdapterHook`]: as a model is built it asks each adapter's [`Method`] (one file
//! each: `lora`, `ia3`, `ln_tuning`, `prompt_tuning`, `prefix_tuning`) for what that method
//! puts on a layer, a norm or before the input; merging asks the method how its adapter
//! folds into the weights.

use super::adapter::{AdaptedModule, Adapters, Switch};
use super::config::{BiasMode, PeftConfig, PeftType};
use super::keys::{param_name, split_param_name, PROMPT};
use super::method::{Ctx, Fold, Method, RegisteredAdapter};
use crate::nn::adapter::{LinearAdapter, LinearSite};
use crate::nn::store::AdapterHook;
use crate::nn::store::ParamStore;
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Every method.
pub static METHODS: &[&dyn Method] = &[
    &super::lora::LORA,
    &super::ia3::IA3,
    &super::ln_tuning::LN_TUNING,
    &super::prompt_tuning::PROMPT_TUNING,
    &super::prefix_tuning::PREFIX_TUNING,
];

impl PeftConfig {
    /// Checks the values (and, for a recipe, that no key is unknown): the options every method
    /// shares, then the method's own.
    pub fn validate(&self, strict: bool) -> Result<()> {
        self.check_common(strict)?;
        self.peft_type.method().validate(self)
    }
}

impl PeftType {
    /// The method of this type.
    pub fn method(self) -> &'static dyn Method {
        *METHODS
            .iter()
            .find(|m| m.peft_type() == self)
            .expect("every PeftType has a method")
    }
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

    /// Unloads adapter `name`: its registration and tensors go; models built from the store
    /// afterwards no longer carry it (rebuild them). An adapter that replaced base values
    /// (`modules_to_save`, biases) cannot be taken out: the base's own are gone.
    pub fn remove_adapter(&mut self, name: &str) -> Result<()> {
        let Some(a) = self.peft().get(name) else {
            return Err(Error::Config(format!("no adapter named {name:?}")));
        };
        if a.config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_empty())
            || a.config.bias != super::BiasMode::None
        {
            return Err(Error::Config(format!(
                "adapter {name:?} replaced base parameters (modules_to_save or biases) and cannot be unloaded"
            )));
        }
        let keys: Vec<String> = self
            .vars()
            .keys()
            .filter(|k| split_param_name(k).is_some_and(|(_, _, n)| n == name))
            .cloned()
            .collect();
        for k in keys {
            self.remove(&k);
        }
        let frozen = self
            .frozen()
            .iter()
            .filter(|k| self.vars().contains_key(*k))
            .cloned()
            .collect();
        self.freeze(&frozen)?;
        let reg = self.peft_mut();
        reg.adapters.retain(|a| a.name != name);
        reg.saved.retain(|(n, _), _| n != name);
        reg.switch
            .lock()
            .expect("adapter state")
            .active
            .retain(|n| n != name);
        if reg.adapters.is_empty() {
            reg.modules.clear();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_one_method_and_its_kinds_are_named() {
        for t in [
            PeftType::Lora,
            PeftType::Ia3,
            PeftType::LnTuning,
            PeftType::PromptTuning,
            PeftType::PrefixTuning,
        ] {
            assert_eq!(METHODS.iter().filter(|m| m.peft_type() == t).count(), 1);
        }
        let mut kinds: Vec<&str> = METHODS
            .iter()
            .flat_map(|m| m.kinds().iter().copied())
            .filter(|k| *k != PROMPT)
            .collect();
        kinds.sort();
        let mut named = super::super::keys::KINDS.to_vec();
        named.sort();
        assert_eq!(kinds, named);
    }
}
