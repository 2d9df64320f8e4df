//! Adapter directories as Hugging Face PEFT reads and writes them: `adapter_config.json` and
//! `adapter_model.safetensors`, tensors keyed `base_model.model.<module path>.lora_A.weight`
//! (the adapter's name left out), plus the `modules_to_save` and trained biases under their
//! own keys.

use super::config::PeftConfig;
use super::keys::{
    file_key, ln_param_name, param_name, split_param_name, KINDS, LN, PREFIX, PROMPT,
};
use super::registry::trains;
use crate::io::{read_json, write_json_atomic};
use crate::nn::store::ParamStore;
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The store key of file key `k` (PEFT's prefix removed) for adapter `name`, when `k` names
/// an adapter tensor.
fn store_key(k: &str, name: &str) -> Option<String> {
    if k == PROMPT {
        return Some(param_name(PROMPT, PROMPT, name));
    }
    KINDS.iter().find_map(|&kind| {
        for (suffix, param) in [(".weight", "weight"), (".bias", "bias"), ("", "")] {
            let Some(module) = k
                .strip_suffix(suffix)
                .and_then(|s| s.strip_suffix(&format!(".{kind}")))
            else {
                continue;
            };
            return Some(match kind {
                LN if !param.is_empty() => ln_param_name(module, name, param),
                LN => return None,
                _ => param_name(module, kind, name),
            });
        }
        None
    })
}

/// Whether `dir` is an adapter directory.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

/// Reads an adapter directory's configuration.
pub fn read_config(dir: &Path) -> Result<PeftConfig> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(Error::format(
            dir,
            format!("not an adapter directory: no {CONFIG_FILE}"),
        ));
    }
    let cfg: PeftConfig = read_json(&path)?;
    cfg.validate(false)
        .map_err(|e| Error::format(&path, e.to_string()))?;
    Ok(cfg)
}

/// Registers the adapter in `dir` on `store` under `name` and puts its tensors there. Models
/// built from the store afterwards apply it. Its `modules_to_save` and biases replace the
/// base's values (so only one such adapter can be loaded at a time).
pub fn load_adapter(store: &mut ParamStore, dir: &Path, name: &str) -> Result<()> {
    let cfg = read_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(Error::format(dir, format!("no {WEIGHTS_FILE}")));
    }
    let tensors = crate::io::safetensors::load(&path, store.device())?;
    let replaces_base = tensors.keys().any(|k| {
        k.strip_prefix(PREFIX)
            .is_some_and(|k| store_key(k, name).is_none())
    });
    if replaces_base
        && store.peft().adapters.iter().any(|a| {
            a.config
                .modules_to_save
                .as_ref()
                .is_some_and(|m| !m.is_empty())
                || a.config.bias != super::BiasMode::None
        })
    {
        return Err(Error::format(
            dir,
            "another loaded adapter already replaces base modules (modules_to_save or biases); load one such adapter at a time",
        ));
    }
    let mut staged = Vec::new();
    for (key, t) in tensors {
        let Some(k) = key
            .strip_prefix(PREFIX)
            .or((key == PROMPT).then_some(PROMPT))
        else {
            return Err(Error::format(
                &path,
                format!("tensor {key} does not start with {PREFIX:?}: not a PEFT adapter file"),
            ));
        };
        if let Some(sk) = store_key(k, name) {
            staged.push((sk, t));
            continue;
        }
        // A module_to_save or a bias: it must fit the base parameter it replaces.
        let plain = k.replace(".base_layer.", ".");
        let k = plain.as_str();
        let Some(v) = store.vars().get(k) else {
            return Err(Error::format(
                &path,
                format!("tensor {key}: the base model has no parameter {k}; is this an adapter for another base model?"),
            ));
        };
        if v.dims() != t.dims() {
            return Err(Error::format(
                &path,
                format!(
                    "tensor {key} has shape {:?} but the base model's {k} has {:?}; is this an adapter for another base model?",
                    t.dims(),
                    v.dims()
                ),
            ));
        }
        staged.push((k.to_string(), t));
    }
    store.add_adapter(name, cfg, Some(dir.to_path_buf()))?;
    for (k, t) in staged {
        store.insert(&k, t)?;
    }
    Ok(())
}

/// `model` with PEFT adapter directories `(name, dir)` loaded into `store` and applied (the
/// first one active). On a frozen (inference) store the adapters are frozen too.
pub fn apply(
    model: crate::models::CausalModel,
    store: &mut ParamStore,
    adapters: &[(String, std::path::PathBuf)],
) -> Result<crate::models::CausalModel> {
    if adapters.is_empty() {
        return Ok(model);
    }
    for (name, dir) in adapters {
        load_adapter(store, dir, name)?;
    }
    if !store.frozen().is_empty() {
        let all = store.vars().keys().cloned().collect();
        store.freeze(&all)?;
    }
    let model = crate::models::CausalModel::new(&model.config(), store)?;
    check_adapters_used(store)?;
    Ok(model)
}

/// After a model was built from a store with adapters loaded from files: fails if an adapter
/// file held tensors for modules the model has no adapter on (an adapter for another model,
/// or target_modules that do not match).
pub fn check_adapters_used(store: &ParamStore) -> Result<()> {
    let reg = store.peft();
    for a in &reg.adapters {
        let Some(src) = &a.source else { continue };
        if let Some(k) = store.vars().keys().find(|k| {
            split_param_name(k).is_some_and(|(m, _, n)| n == a.name && !reg.modules.contains_key(m))
        }) {
            return Err(Error::format(
                src,
                format!(
                    "{} is for a module this model does not have or its target_modules do not select; is this an adapter for another base model?",
                    file_key(k)
                ),
            ));
        }
    }
    Ok(())
}

/// The store keys of what adapter `name` saves, each with its key in the adapter file.
pub fn adapter_keys(store: &ParamStore, name: &str) -> Result<Vec<(String, String)>> {
    let reg = store.peft();
    let a = reg
        .get(name)
        .ok_or_else(|| Error::Config(format!("no adapter named {name:?}")))?;
    let adapted: BTreeSet<String> = reg.modules.keys().cloned().collect();
    Ok(store
        .vars()
        .keys()
        .filter(|k| trains(&a.config, name, k, &adapted))
        .map(|k| {
            // A parameter of an adapted layer is its `base_layer`'s in PEFT's module tree.
            let key = match k.rsplit_once('.') {
                Some((m, p)) if split_param_name(k).is_none() && adapted.contains(m) => {
                    format!("{PREFIX}{m}.base_layer.{p}")
                }
                _ => file_key(k),
            };
            (k.clone(), key)
        })
        .collect())
}

/// The tensors saved for adapter `name`, by file key.
pub fn adapter_tensors(store: &ParamStore, name: &str) -> Result<BTreeMap<String, Tensor>> {
    Ok(adapter_keys(store, name)?
        .into_iter()
        .map(|(k, f)| (f, store.vars()[&k].as_tensor().clone()))
        .collect())
}

/// Writes adapter `name` as PEFT does: `adapter_config.json` (with `base_model` as
/// `base_model_name_or_path`) and `adapter_model.safetensors`, each atomically.
pub fn save_adapter(
    store: &ParamStore,
    name: &str,
    dir: &Path,
    base_model: Option<&str>,
) -> Result<()> {
    let tensors = adapter_tensors(store, name)?;
    let reg = store.peft();
    let mut cfg = reg.get(name).expect("checked").config.clone();
    if base_model.is_some() {
        cfg.base_model_name_or_path = base_model.map(str::to_string);
    }
    if cfg.peft_type.wraps_linear() {
        let conv1d = reg.modules.values().any(|m| m.in_out);
        cfg.other
            .insert("fan_in_fan_out".into(), serde_json::Value::Bool(conv1d));
    }
    if let (Some(t), super::PeftType::PromptTuning) = (tensors.get(PROMPT), cfg.peft_type) {
        cfg.token_dim = Some(t.dim(1)?);
        cfg.other
            .insert("num_transformer_submodules".into(), serde_json::json!(1));
    }
    cfg.other
        .insert("inference_mode".into(), serde_json::Value::Bool(true));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::io::safetensors::save(&dir.join(WEIGHTS_FILE), &tensors)?;
    write_json_atomic(&dir.join(CONFIG_FILE), &cfg)
}
