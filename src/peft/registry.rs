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
    /// Values kept to undo a merge: DoRA row norms, LayerNorm-tuned norms.
    saved: BTreeMap<(String, String), Tensor>,
}

impl PeftRegistry {
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

/// The kinds of adapter tensor, as they appear in a key.
pub const KINDS: &[&str] = &["lora_A", "lora_B", "lora_magnitude_vector", "ia3_l", LN];

/// Splits a store key into (module, kind, adapter) when it is an adapter tensor (a prompt's
/// module is `prompt_embeddings`).
pub fn split_param_name(key: &str) -> Option<(&str, &str, &str)> {
    if let Some(adapter) = key.strip_prefix("prompt_embeddings.") {
        return Some((PROMPT, PROMPT, adapter));
    }
    KINDS.iter().find_map(|kind| {
        let i = key.find(&format!(".{kind}."))?;
        let rest = &key[i + kind.len() + 2..];
        let adapter = rest
            .strip_suffix(".weight")
            .or_else(|| rest.strip_suffix(".bias"))
            .unwrap_or(rest);
        Some((&key[..i], *kind, adapter))
    })
}

fn vars_has(store: &ParamStore, a: &str, b: &str) -> bool {
    store.vars().contains_key(a) || store.vars().contains_key(b)
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
            .filter(|a| a.config.peft_type.wraps_linear() && a.config.targets(module))
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
                PeftType::LnTuning | PeftType::PromptTuning | PeftType::PrefixTuning => {
                    unreachable!("filtered: not a linear-layer method")
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

    /// LayerNorm tuning: the tensor a norm at `module` uses for its `param` (`weight` or
    /// `bias`): the active LN-tuning adapter's trained copy when one targets the norm (created
    /// from `base` if new), else `base`. (Switching between LN-tuning adapters rebuilds the
    /// model.)
    pub fn ln_tuned(&mut self, module: &str, param: &str, base: Tensor) -> Result<Tensor> {
        let Some(RegisteredAdapter { name, source, .. }) = self
            .peft()
            .active_of(PeftType::LnTuning, |a| a.config.targets(module))
        else {
            return Ok(base);
        };
        let key = ln_param_name(module, &name, param);
        if !self.vars().contains_key(&key) && self.shapes().is_none() && source.is_none() {
            self.insert(&key, base.detach().copy()?)?;
        }
        let t = self.adapter_param(&key, base.dims(), Init::Ones, source.as_deref())?;
        let has_bias = param == "bias";
        let entry = self
            .peft_mut()
            .modules
            .entry(module.to_string())
            .or_default();
        entry.has_bias |= has_bias;
        Ok(t)
    }

    /// Prompt tuning: the active prompt-tuning adapter's virtual-token embeddings
    /// `[num_virtual_tokens, hidden]` (created as its `prompt_tuning_init` says if new, rows of
    /// `table` for SAMPLE_VOCAB), or `None`.
    pub fn prompt_for(&mut self, hidden: usize, table: Option<&Tensor>) -> Result<Option<Tensor>> {
        let Some(a) = self.peft().active_of(PeftType::PromptTuning, |_| true) else {
            return Ok(None);
        };
        let n = a.config.num_virtual_tokens.unwrap_or(0);
        let key = param_name(PROMPT, PROMPT, &a.name);
        let missing = !self.vars().contains_key(&key) && self.shapes().is_none();
        if missing && a.source.is_none() {
            if let (Some("SAMPLE_VOCAB"), Some(table)) =
                (a.config.prompt_tuning_init.as_deref(), table)
            {
                let vocab = table.dim(0)? as u64;
                let mut rng = crate::rng::Rng::new(vocab);
                let rows: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
                let idx = Tensor::new(rows.as_slice(), table.device())?;
                self.insert(&key, table.detach().index_select(&idx, 0)?)?;
            }
        }
        let t = self.adapter_param(&key, &[n, hidden], Init::Normal(1.0), a.source.as_deref())?;
        self.peft_mut()
            .modules
            .insert(PROMPT.to_string(), AdaptedModule::default());
        Ok(Some(t))
    }

    /// Prefix tuning: the active prefix-tuning adapter's keys and values for `layers` layers
    /// of `heads` key/value heads of width `head_dim`, as PEFT lays them out: `[n,
    /// layers * 2 * heads * head_dim]`, column `((layer * 2 + kv) * heads + head) * head_dim +
    /// i` (kv 0 the key, 1 the value), initialised N(0, 1) as PEFT's embedding.
    pub fn prefix_for(
        &mut self,
        layers: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Option<Tensor>> {
        let Some(a) = self.peft().active_of(PeftType::PrefixTuning, |_| true) else {
            return Ok(None);
        };
        let n = a.config.num_virtual_tokens.unwrap_or(0);
        let key = param_name(PROMPT, PROMPT, &a.name);
        let width = layers * 2 * heads * head_dim;
        let t = self.adapter_param(&key, &[n, width], Init::Normal(1.0), a.source.as_deref())?;
        let reg = self.peft_mut();
        // What PEFT needs to lay the tensor out again (GQA: the key/value heads).
        if let Some(cfg) = reg
            .adapters
            .iter_mut()
            .find(|r| r.name == a.name)
            .map(|r| &mut r.config)
        {
            cfg.token_dim = Some(heads * head_dim);
            cfg.other
                .insert("num_layers".into(), serde_json::json!(layers));
            cfg.other
                .insert("num_attention_heads".into(), serde_json::json!(heads));
            cfg.other.insert(
                "encoder_hidden_size".into(),
                serde_json::json!(heads * head_dim),
            );
            cfg.other
                .insert("num_transformer_submodules".into(), serde_json::json!(1));
            cfg.other
                .insert("prefix_projection".into(), serde_json::json!(false));
        }
        reg.modules
            .insert(PROMPT.to_string(), AdaptedModule::default());
        Ok(Some(t))
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
        self.get_or_init(key, dims, init)
            .map_err(|e| match (e, strict) {
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
        if adapter.config.peft_type.virtual_tokens() {
            return Err(Error::Config(format!(
                "adapter {name:?} is {}: virtual tokens cannot be merged into weights",
                if adapter.config.peft_type == PeftType::PromptTuning {
                    "prompt tuning"
                } else {
                    "prefix tuning"
                }
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
        let modules: Vec<(String, AdaptedModule)> = reg
            .modules
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some((m, _)) = modules.iter().find(|(k, m)| {
            m.quantized
                && vars_has(
                    self,
                    &param_name(k, "lora_A", name),
                    &param_name(k, "ia3_l", name),
                )
        }) {
            return Err(Error::Config(format!(
                "{m} is quantized: merging needs the base weights in f32 (load the GGUF file without --quantized)"
            )));
        }
        let vars = self.vars();
        let t = |k: &str| vars.get(k).map(|v| v.as_tensor().detach());
        let mut updates = Vec::new();
        let mut norms = Vec::new();
        for (module, info) in &modules {
            // LayerNorm tuning: the base takes the trained copy's values (kept to undo).
            for param in ["weight", "bias"] {
                let Some(copy) = t(&ln_param_name(module, name, param)) else {
                    continue;
                };
                let base_key = format!("{module}.{param}");
                let saved = (name.to_string(), base_key.clone());
                if undo {
                    let orig = self.peft().saved.get(&saved).cloned().ok_or_else(|| {
                        Error::Config(format!("{base_key}: no saved value to restore"))
                    })?;
                    updates.push((base_key, orig));
                } else if let Some(orig) = t(&base_key) {
                    norms.push((saved, orig.copy()?));
                    updates.push((base_key, copy));
                }
            }
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
                            let norm = self.peft().saved.get(&key).cloned().ok_or_else(|| {
                                Error::Config(format!("{module}: no DoRA norms saved"))
                            })?;
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
        reg.saved.extend(norms);
        let mut st = reg.switch.lock().expect("adapter state");
        if undo {
            st.merged.retain(|n| n != name);
        } else {
            st.merged.push(name.to_string());
        }
        Ok(())
    }
}
