//! Hugging Face model directories, for every family: `config.json` plus `model.safetensors`
//! or the shards of `model.safetensors.index.json`. One shard loader (a tensor in two shards is
//! an error), one checked build (every tensor used, every parameter present, errors naming
//! both files), one writer.

use crate::io::{read_json, safetensors, write_json_atomic};
use crate::nn::ParamStore;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The weight files of a model directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(Error::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in this model directory",
        ));
    }
    let v: serde_json::Value = read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(&index, "no \"weight_map\" object"))?;
    let mut files: Vec<String> = map
        .values()
        .map(|f| {
            f.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::format(&index, "weight_map values must be file names"))
        })
        .collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(&f);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::format(
                    &index,
                    format!("lists shard {f}, which is missing"),
                ))
            }
        })
        .collect()
}

/// All tensors of a model directory, by name (shards merged).
pub fn load_weights(dir: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let mut all = BTreeMap::new();
    for f in weight_files(dir)? {
        for (k, t) in safetensors::load(&f, device)? {
            if all.insert(k.clone(), t).is_some() {
                return Err(Error::format(
                    &f,
                    format!("tensor {k} appears in two shards"),
                ));
            }
        }
    }
    Ok(all)
}

/// A model directory: its `config.json`, read; its weights, read on request.
pub struct ModelDir {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: serde_json::Value,
}

/// A model directory's weights.
pub struct Weights {
    /// The first weight file, named in errors about the weights.
    pub source: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
}

impl ModelDir {
    /// Reads `dir`'s `config.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::format(dir, "no config.json in this model directory"));
        }
        let config = read_json(&config_path)?;
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            config_path,
            config,
        })
    }

    /// The config as `T`, validated, naming the file in any error.
    pub fn parse_config<T: serde::de::DeserializeOwned>(
        &self,
        validate: impl Fn(&T) -> Result<()>,
    ) -> Result<T> {
        let cfg: T = serde_json::from_value(self.config.clone())
            .map_err(|e| Error::format(&self.config_path, e.to_string()))?;
        validate(&cfg).map_err(|e| Error::format(&self.config_path, e.to_string()))?;
        Ok(cfg)
    }

    /// The weights (every shard).
    pub fn weights(&self, device: &Device) -> Result<Weights> {
        let source = weight_files(&self.dir)?.swap_remove(0);
        Ok(Weights {
            source,
            tensors: load_weights(&self.dir, device)?,
        })
    }

    /// Builds the model with `build` from `weights` (see [`build_checked`]).
    pub fn build<M>(
        &self,
        weights: Weights,
        device: &Device,
        build: impl Fn(&mut ParamStore) -> Result<M>,
    ) -> Result<(M, ParamStore)> {
        build_checked(
            weights.tensors,
            device,
            &weights.source,
            &self.config_path,
            build,
        )
    }
}

/// Builds a model with `build` from `tensors` (read from `source`): every parameter must be
/// there with its shape and every tensor must be used, with errors naming both `source` and
/// the configuration that describes the model. `build` runs twice, the second time on a
/// shape-only store to learn the parameter names.
pub fn build_checked<M>(
    tensors: BTreeMap<String, Tensor>,
    device: &Device,
    source: &Path,
    described_by: &Path,
    build: impl Fn(&mut ParamStore) -> Result<M>,
) -> Result<(M, ParamStore)> {
    let mut store = ParamStore::from_tensors(tensors, device, Some(source))?;
    let model = build(&mut store).map_err(|e| mismatch(e, described_by))?;
    let used: Vec<String> = param_shapes(|s| build(s).map(|_| ()))?
        .into_keys()
        .collect();
    check_all_used(&store, &used, source, &described_by.display().to_string())?;
    Ok((model, store))
}

/// The parameter names and shapes `build` asks for, without allocating them.
pub fn param_shapes(
    build: impl FnOnce(&mut ParamStore) -> Result<()>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut store = ParamStore::new_shapes();
    build(&mut store)?;
    Ok(store.shapes().cloned().unwrap_or_default())
}

/// A freshly initialised model (from `seed`) and its parameter store.
pub fn init<M>(
    device: &Device,
    seed: u64,
    build: impl FnOnce(&mut ParamStore) -> Result<M>,
) -> Result<(M, ParamStore)> {
    let mut store = ParamStore::new_init(device, seed);
    let model = build(&mut store)?;
    Ok((model, store))
}

/// Saves `config.json` and `model.safetensors` into `dir` (created if needed), atomically each.
pub fn save_dir(dir: &Path, config: &serde_json::Value, store: &ParamStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    safetensors::save(&dir.join("model.safetensors"), &store.tensors())?;
    write_json_atomic(&dir.join("config.json"), config)
}

/// After building a model from loaded tensors: an error naming both files when an error says
/// the weights do not fit the config.
pub(crate) fn mismatch(e: Error, config_path: &Path) -> Error {
    match e {
        Error::Format { path, msg } => Error::format(
            path,
            format!(
                "{msg} (does {} match these weights?)",
                config_path.display()
            ),
        ),
        e => e,
    }
}

/// Fails when `store` holds tensors the model did not ask for (`used`).
pub(crate) fn check_all_used(
    store: &ParamStore,
    used: &[String],
    source: &Path,
    described_by: &str,
) -> Result<()> {
    let unused = store.unused(used);
    match unused.first() {
        None => Ok(()),
        Some(first) => Err(Error::format(
            source,
            format!(
                "{} tensors not used by the model described in {described_by} (first: {first}); the config does not match the weights",
                unused.len()
            ),
        )),
    }
}

/// A causal LM family's `config.json` parser: `T` from the JSON (the family is chosen by then).
pub(crate) fn parse<T>(v: serde_json::Value) -> Result<Box<dyn super::CausalConfig>>
where
    T: serde::de::DeserializeOwned + super::CausalConfig,
{
    let kind = v
        .get("model_type")
        .and_then(|t| t.as_str())
        .unwrap_or("?")
        .to_string();
    let c: T = serde_json::from_value(v)
        .map_err(|e| Error::Config(format!("invalid {kind} config: {e}")))?;
    Ok(Box::new(c))
}

/// Reads a `config.json` into `T` and validates it, naming the file in any error.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl Fn(&T) -> Result<()>,
) -> Result<T> {
    let cfg: T = read_json(path)?;
    validate(&cfg).map_err(|e| Error::format(path, e.to_string()))?;
    Ok(cfg)
}

/// `config` as the JSON transformers reads, with `architectures` (kept if the config already
/// names one, unless `replace`).
pub(crate) fn config_json<T: serde::Serialize>(
    config: &T,
    architecture: &str,
    replace: bool,
) -> serde_json::Value {
    let mut v = serde_json::to_value(config).expect("config serialises");
    let obj = v.as_object_mut().expect("a config is an object");
    if replace || !obj.contains_key("architectures") {
        obj.insert("architectures".into(), serde_json::json!([architecture]));
    }
    v
}

/// The checks every config shares: its `model_type` among the family's, and positive sizes.
pub(crate) fn check_sizes(
    model_type: &str,
    family: &super::Family,
    sizes: &[(&str, usize)],
) -> Result<()> {
    if !family.model_types.contains(&model_type) {
        return Err(Error::Config(format!(
            "model_type is {model_type:?}, expected {:?}",
            family.model_type()
        )));
    }
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return Err(Error::Config(format!("{name} must be positive")));
    }
    Ok(())
}

/// [`check_sizes`] plus a width the heads divide (encoders).
pub(crate) fn check_encoder_sizes(
    model_type: &str,
    family: &super::Family,
    sizes: &[(&str, usize)],
    hidden: usize,
    heads: usize,
) -> Result<()> {
    check_sizes(model_type, family, sizes)?;
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::Config(format!(
            "hidden_size ({hidden}) must be divisible by num_attention_heads ({heads})"
        )));
    }
    Ok(())
}
