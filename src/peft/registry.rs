//! The adapters a parameter store holds: their configurations, the layers they wrap, and
//! merging them into the base weights and back out.

use super::adapter::{AdaptedModule, Adapter, Adapters, Switch};
use super::config::{BiasMode, PeftConfig, PeftType};
use crate::nn::store::{Init, ParamStore};
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

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
    /// DoRA: each merged layer's row norms before merging (to unmerge exactly).
    dora_norms: BTreeMap<(String, String), Tensor>,
}

/// A store key of an adapter tensor: `{module}.{kind}.{adapter}` plus `.weight` for the
/// `nn.Linear`-held ones (PEFT's in-memory names).
pub fn param_name(module: &str, kind: &str, adapter: &str) -> String {
    match kind {
        "ia3_l" => format!("{module}.{kind}.{adapter}"),
        _ => format!("{module}.{kind}.{adapter}.weight"),
    }
}

/// The kinds of adapter tensor, as they appear in a key.
pub const KINDS: &[&str] = &["lora_A", "lora_B", "lora_magnitude_vector", "ia3_l"];

/// Splits a store key into (module, kind, adapter) when it is an adapter tensor.
pub fn split_param_name(key: &str) -> Option<(&str, &str, &str)> {
    KINDS.iter().find_map(|kind| {
        let i = key.find(&format!(".{kind}."))?;
        let rest = &key[i + kind.len() + 2..];
        let adapter = rest.strip_suffix(".weight").unwrap_or(rest);
        Some((&key[..i], *kind, adapter))
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

impl ParamStore {
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

    /// The adapters for the linear layer at `module` (`[out, in]` weight, or `[in, out]` when
    /// `in_out`), creating their tensors if need be; `None` when no adapter targets it.
    /// `weight` yields the base weight as `[out, in]` (DoRA's magnitude starts at its norms).
    #[allow(clippy::too_many_arguments)]
    pub fn adapters_for(
        &mut self,
        module: &str,
        d_in: usize,
        d_out: usize,
        in_out: bool,
        quantized: bool,
        has_bias: bool,
        weight: &dyn Fn() -> Result<Tensor>,
    ) -> Result<Option<Adapters>> {
        let targeting: Vec<(String, PeftConfig, Option<PathBuf>)> = self
            .peft()
            .adapters
            .iter()
            .filter(|a| a.config.targets(module))
            .map(|a| (a.name.clone(), a.config.clone(), a.source.clone()))
            .collect();
        if targeting.is_empty() {
            return Ok(None);
        }
        let mut items = Vec::new();
        for (name, cfg, source) in targeting {
            let strict = source.as_deref();
            let adapter = match cfg.peft_type {
                PeftType::Lora => {
                    let (r, scaling) = cfg.rank_and_scaling(module);
                    let a = self.adapter_param(
                        &param_name(module, "lora_A", &name),
                        &[r, d_in],
                        Init::Uniform(1.0 / (d_in as f64).sqrt()),
                        strict,
                    )?;
                    let b_init = if cfg.init_lora_weights {
                        Init::Zeros
                    } else {
                        Init::Uniform(1.0 / (r as f64).sqrt())
                    };
                    let b = self.adapter_param(
                        &param_name(module, "lora_B", &name),
                        &[d_out, r],
                        b_init,
                        strict,
                    )?;
                    let magnitude = if cfg.use_dora {
                        let key = param_name(module, "lora_magnitude_vector", &name);
                        if !self.vars().contains_key(&key) && self.shapes().is_none() {
                            let w = weight()?;
                            let delta = (b.matmul(&a)? * scaling)?;
                            let norm = (w + delta)?.sqr()?.sum(1)?.sqrt()?;
                            self.adapter_value(&key, norm, strict)?;
                        }
                        Some(self.adapter_param(&key, &[d_out], Init::Ones, strict)?)
                    } else {
                        None
                    };
                    Adapter::Lora {
                        a,
                        b,
                        scaling,
                        dropout: cfg.lora_dropout,
                        magnitude,
                    }
                }
                PeftType::Ia3 => {
                    let feedforward = cfg.is_feedforward(module);
                    let dims = if feedforward { [1, d_in] } else { [d_out, 1] };
                    Adapter::Ia3 {
                        scale: self.adapter_param(
                            &param_name(module, "ia3_l", &name),
                            &dims,
                            Init::Ones,
                            strict,
                        )?,
                        feedforward,
                    }
                }
            };
            items.push((name, adapter));
        }
        let reg = self.peft_mut();
        reg.modules.insert(
            module.to_string(),
            AdaptedModule {
                in_out,
                quantized,
                has_bias,
            },
        );
        Ok(Some(Adapters {
            switch: reg.switch.clone(),
            items,
        }))
    }

    fn adapter_param(
        &mut self,
        key: &str,
        dims: &[usize],
        init: Init,
        strict: Option<&std::path::Path>,
    ) -> Result<Tensor> {
        if let (Some(src), false, None) = (strict, self.vars().contains_key(key), self.shapes()) {
            return Err(Error::format(
                src,
                format!(
                    "the adapter has no tensor for {} ({}), which its target_modules select in this model: is it an adapter for another base model?",
                    super::adapter_io::file_key(key),
                    key.split('.').rev().nth(1).unwrap_or(key)
                ),
            ));
        }
        self.get_or_init(key, dims, init).map_err(|e| match (e, strict) {
            (Error::Format { msg, .. } | Error::Config(msg), Some(src)) => Error::format(
                src,
                format!("{msg}: is this an adapter for another base model?"),
            ),
            (e, _) => e,
        })
    }

    fn adapter_value(
        &mut self,
        key: &str,
        value: Tensor,
        _strict: Option<&std::path::Path>,
    ) -> Result<()> {
        self.insert(key, value)
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

    /// Folds adapter `name` into the base weights (the model must have been built with it):
    /// its layers then skip it. Quantized layers cannot be merged into.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        self.fold(name, false)
    }

    /// PEFT's `merge_and_unload`: folds the active adapters into the base weights and drops
    /// every adapter, leaving a plain model's parameters (rebuild models from the store).
    pub fn merge_and_unload(&mut self) -> Result<()> {
        let active = self.peft().switch.lock().expect("adapter state").active.clone();
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
        if reg.get(name).is_none() {
            return Err(Error::Config(format!("no adapter named {name:?}")));
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
        let modules: Vec<(String, AdaptedModule)> = reg
            .modules
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some((m, _)) = modules.iter().find(|(_, m)| m.quantized) {
            return Err(Error::Config(format!(
                "{m} is quantized: merging needs the base weights in f32 (load the GGUF file without --quantized)"
            )));
        }
        let vars = self.vars();
        let t = |k: &str| vars.get(k).map(|v| v.as_tensor().detach());
        let mut updates = Vec::new();
        let mut norms = Vec::new();
        for (module, info) in &modules {
            let wkey = format!("{module}.weight");
            let Some(w0) = t(&wkey) else { continue };
            let w = if info.in_out { w0.t()? } else { w0.clone() };
            let lora = (
                t(&param_name(module, "lora_A", name)),
                t(&param_name(module, "lora_B", name)),
            );
            let ia3 = t(&param_name(module, "ia3_l", name));
            let new_w = if let (Some(a), Some(b)) = lora {
                let cfg = &self.peft().get(name).expect("checked").config;
                let (_, s) = cfg.rank_and_scaling(module);
                let delta = (b.matmul(&a)? * s)?;
                match t(&param_name(module, "lora_magnitude_vector", name)) {
                    None if undo => (w - delta)?,
                    None => (w + delta)?,
                    Some(m) => {
                        let m = m.unsqueeze(1)?;
                        let key = (name.to_string(), module.clone());
                        if undo {
                            let norm = self.peft().dora_norms.get(&key).cloned().ok_or_else(
                                || Error::Config(format!("{module}: no DoRA norms saved")),
                            )?;
                            (w.broadcast_mul(&norm.broadcast_div(&m)?)? - delta)?
                        } else {
                            let v = (w + delta)?;
                            let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?;
                            norms.push((key, norm.clone()));
                            v.broadcast_mul(&m.broadcast_div(&norm)?)?
                        }
                    }
                }
            } else if let Some(l) = ia3 {
                let bkey = format!("{module}.bias");
                if l.dim(0)? > 1 {
                    // Output scaling also scales the bias.
                    if let Some(bias) = t(&bkey) {
                        let lb = l.flatten_all()?;
                        let nb = if undo { bias.div(&lb)? } else { bias.mul(&lb)? };
                        updates.push((bkey, nb));
                    }
                }
                if undo {
                    w.broadcast_div(&l)?
                } else {
                    w.broadcast_mul(&l)?
                }
            } else {
                continue;
            };
            let new_w = if info.in_out { new_w.t()? } else { new_w };
            updates.push((wkey, new_w.contiguous()?));
        }
        for (k, v) in updates {
            self.vars()[&k].set(&v)?;
        }
        let reg = self.peft_mut();
        reg.dora_norms.extend(norms);
        let mut st = reg.switch.lock().expect("adapter state");
        if undo {
            st.merged.retain(|n| n != name);
        } else {
            st.merged.push(name.to_string());
        }
        Ok(())
    }
}
