//! The parameter store: every trainable tensor of a model, by its Hugging Face key.
//!
//! Models are built by asking the store for each parameter by name and shape. A fresh model
//! gets initialised values (from a seeded RNG, so a seed fixes the whole model); a loaded model
//! gets the checkpoint's tensors and an error for any missing or mis-shaped one.

use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, BTreeSet};

/// How a parameter is initialised when the store does not hold it yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
}

/// Named model parameters, iterated in key order (which makes optimizer state and
/// initialisation deterministic).
pub struct ParamStore {
    vars: BTreeMap<String, Var>,
    device: Device,
    rng: Rng,
    allow_init: bool,
    /// Shape-only mode: record what a model asks for without allocating it.
    shapes: Option<BTreeMap<String, Vec<usize>>>,
    /// Where loaded tensors came from, for error messages.
    source: Option<std::path::PathBuf>,
    /// Parameters handed out as constants: no gradient, no optimizer state.
    frozen: BTreeSet<String>,
}

impl ParamStore {
    /// An empty store that initialises parameters on request from `seed`.
    pub fn new_init(device: &Device, seed: u64) -> Self {
        ParamStore {
            vars: BTreeMap::new(),
            device: device.clone(),
            rng: Rng::new(seed),
            allow_init: true,
            shapes: None,
            source: None,
            frozen: BTreeSet::new(),
        }
    }

    /// A store that only records the name and shape of each parameter a model requests and
    /// hands out zero-stride views of one scalar, so even a 1.5B-parameter model "builds" in
    /// no memory (for parameter accounting).
    pub fn new_shapes() -> Self {
        let mut s = Self::new_init(&Device::Cpu, 0);
        s.shapes = Some(BTreeMap::new());
        s
    }

    /// The shapes recorded in shape-only mode.
    pub fn shapes(&self) -> Option<&BTreeMap<String, Vec<usize>>> {
        self.shapes.as_ref()
    }

    /// A store holding `tensors` (converted to f32 variables); requesting anything else fails.
    pub fn from_tensors(
        tensors: BTreeMap<String, Tensor>,
        device: &Device,
        source: Option<&std::path::Path>,
    ) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for (k, t) in tensors {
            let t = t.to_dtype(DType::F32)?.to_device(device)?;
            vars.insert(k, Var::from_tensor(&t)?);
        }
        Ok(ParamStore {
            vars,
            device: device.clone(),
            rng: Rng::new(0),
            allow_init: false,
            shapes: None,
            source: source.map(|p| p.to_path_buf()),
            frozen: BTreeSet::new(),
        })
    }

    /// From now on, parameters the store does not hold are initialised (from `seed`) instead
    /// of being an error: for adding a new head to a loaded model.
    pub fn allow_init(&mut self, seed: u64) {
        self.allow_init = true;
        self.rng = Rng::new(seed);
    }

    fn err(&self, msg: String) -> Error {
        match &self.source {
            Some(p) => Error::format(p, msg),
            None => Error::Config(msg),
        }
    }

    /// The parameter `name` with shape `dims`, initialised with `init` if the store may do so.
    pub fn get(&mut self, name: &str, dims: &[usize], init: Init) -> Result<Tensor> {
        if let Some(shapes) = &mut self.shapes {
            shapes.insert(name.to_string(), dims.to_vec());
            return Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(dims)?);
        }
        if let Some(v) = self.vars.get(name) {
            if v.dims() != dims {
                return Err(self.err(format!(
                    "parameter {name} has shape {:?} but the configuration needs {:?}",
                    v.dims(),
                    dims
                )));
            }
            // A frozen parameter is a detached view of the same storage: backpropagation
            // stops at it, so no gradient is computed or held for it.
            return Ok(if self.frozen.contains(name) {
                v.as_tensor().detach()
            } else {
                v.as_tensor().clone()
            });
        }
        if !self.allow_init {
            return Err(self.err(format!("missing parameter {name} (shape {dims:?})")));
        }
        let n: usize = dims.iter().product();
        let data: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| (self.rng.normal() * std) as f32).collect(),
        };
        let var = Var::from_tensor(&Tensor::from_vec(data, dims, &self.device)?)?;
        let t = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(t)
    }

    /// After building a model from loaded tensors: the keys the model did not ask for.
    pub fn unused(&self, used: &[String]) -> Vec<String> {
        self.vars
            .keys()
            .filter(|k| !used.contains(k))
            .cloned()
            .collect()
    }

    /// Removes a parameter (used to drop checkpoint entries a model ignores, such as a tied head).
    pub fn remove(&mut self, name: &str) -> Option<Var> {
        self.vars.remove(name)
    }

    /// All parameters by name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Freezes `names` (they must be held): from now on [`ParamStore::get`] hands them out
    /// as constants and [`ParamStore::trainable`] skips them. Models built before this call
    /// still hold the trainable tensors; build them again from the store.
    pub fn freeze(&mut self, names: &BTreeSet<String>) -> Result<()> {
        if let Some(missing) = names.iter().find(|n| !self.vars.contains_key(*n)) {
            return Err(self.err(format!("cannot freeze {missing}: no such parameter")));
        }
        self.frozen = names.clone();
        Ok(())
    }

    /// The frozen parameters' names.
    pub fn frozen(&self) -> &BTreeSet<String> {
        &self.frozen
    }

    /// The parameters the optimizer updates, by name (all but the frozen ones).
    pub fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter().filter(|(k, _)| !self.frozen.contains(*k))
    }

    /// Trainable and total numbers of scalar parameters.
    pub fn trainable_count(&self) -> crate::peft::TrainableCount {
        crate::peft::TrainableCount {
            trainable_params: self.trainable().map(|(_, v)| v.elem_count()).sum(),
            all_params: self.numel(),
        }
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A snapshot of all tensors (for saving).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}
