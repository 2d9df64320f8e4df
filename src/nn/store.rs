//! The parameter store: every trainable tensor of a model, by its Hugging Face key.
//!
//! Models are built by asking the store for each parameter by name and shape. A fresh model
//! gets initialised values (from a seeded RNG, so a seed fixes the whole model); a loaded model
//! gets the checkpoint's tensors and an error for any missing or mis-shaped one.

use crate::nn::adapter::{LinearAdapter, LinearSite};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How a parameter is initialised when the store does not hold it yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// Uniform on `[-bound, bound)` (PyTorch's Kaiming-uniform with `a = sqrt(5)` is
    /// `bound = 1 / sqrt(fan_in)`).
    Uniform(f64),
    /// Normal with this standard deviation, one row (of a `[rows, dim]` table) zero: PyTorch's
    /// `nn.Embedding(..., padding_idx)` initialisation.
    NormalZeroRow(f64, usize),
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
    /// Matrices kept quantized (frozen), by key; models take a projection from here when it
    /// holds the key.
    quant: crate::nn::QuantWeights,
    /// What answers the model's questions about adapters as it is built (PEFT's registry).
    hook: Option<Box<dyn AdapterHook>>,
    /// The parameters models took as the weight of a linear map ([`ParamStore::matrix`]):
    /// those may be held in bf16 when frozen.
    linear_weights: BTreeSet<String>,
}

/// Trainable and total parameter counts, printed in PEFT's wording.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainableCount {
    pub trainable_params: usize,
    pub all_params: usize,
}

impl TrainableCount {
    pub fn percent(&self) -> f64 {
        if self.all_params == 0 {
            0.0
        } else {
            100.0 * self.trainable_params as f64 / self.all_params as f64
        }
    }
}

impl std::fmt::Display for TrainableCount {
    /// PEFT's `print_trainable_parameters` line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            thousands(self.trainable_params),
            thousands(self.all_params),
            self.percent()
        )
    }
}

/// `1234567` as `1,234,567` (Python's `{:,d}`).
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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
            quant: Default::default(),
            hook: None,
            linear_weights: BTreeSet::new(),
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
            quant: Default::default(),
            hook: None,
            linear_weights: BTreeSet::new(),
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
        self.init_param(name, dims, init)
    }

    fn init_param(&mut self, name: &str, dims: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| (self.rng.normal() * std) as f32).collect(),
            Init::NormalZeroRow(std, row) => {
                let mut v: Vec<f32> = (0..n).map(|_| (self.rng.normal() * std) as f32).collect();
                let dim = dims.get(1).copied().unwrap_or(1);
                if let Some(r) = v.get_mut(row * dim..(row + 1) * dim) {
                    r.fill(0.0);
                }
                v
            }
            Init::Uniform(b) => (0..n)
                .map(|_| ((self.rng.uniform() * 2.0 - 1.0) * b) as f32)
                .collect(),
        };
        self.insert(name, Tensor::from_vec(data, dims, &self.device)?)?;
        self.get(name, dims, init)
    }

    /// The weight of a linear map: as [`ParamStore::get`], and remembered as one, so that
    /// [`ParamStore::hold_frozen_matrices_in_bf16`] may hold it in bf16 (after which this
    /// returns the bf16 tensor, which the linear kernels multiply directly).
    pub fn matrix(&mut self, name: &str, dims: &[usize], init: Init) -> Result<Tensor> {
        let t = self.get(name, dims, init)?;
        if self.shapes.is_none() {
            self.linear_weights.insert(name.to_string());
        }
        Ok(t)
    }

    /// Holds the frozen weights of linear maps in bf16 (`train.precision = "bf16"` under
    /// PEFT: the base is never written back, and bf16 products round it anyway), halving
    /// their memory once models are rebuilt from the store. Returns how many were converted.
    pub fn hold_frozen_matrices_in_bf16(&mut self) -> Result<usize> {
        let mut n = 0;
        for name in self.frozen.intersection(&self.linear_weights) {
            if let Some(v) = self.vars.get_mut(name) {
                if v.dtype() == DType::F32 {
                    *v = Var::from_tensor(&v.as_tensor().to_dtype(DType::BF16)?)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// As [`ParamStore::get`], but initialising a missing parameter even in a loaded store
    /// (adapters added to a pretrained model).
    pub fn get_or_init(&mut self, name: &str, dims: &[usize], init: Init) -> Result<Tensor> {
        if self.shapes.is_some() || self.vars.contains_key(name) {
            return self.get(name, dims, init);
        }
        self.init_param(name, dims, init)
    }

    /// Adds (or replaces) parameter `name` with the value `t` (as f32 on the store's device).
    pub fn insert(&mut self, name: &str, t: Tensor) -> Result<()> {
        let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
        self.vars.insert(name.to_string(), Var::from_tensor(&t)?);
        Ok(())
    }

    /// Keeps `quant`'s matrices quantized: models built from the store take them from here.
    pub fn set_quantized(&mut self, quant: crate::nn::QuantWeights) {
        self.quant = quant;
    }

    /// The quantized matrices by key.
    pub fn quantized(&self) -> &crate::nn::QuantWeights {
        &self.quant
    }

    pub fn quantized_mut(&mut self) -> &mut crate::nn::QuantWeights {
        &mut self.quant
    }

    /// The adapter hook, if one is installed.
    pub fn hook(&self) -> Option<&(dyn AdapterHook + 'static)> {
        self.hook.as_deref()
    }

    pub fn hook_mut(&mut self) -> Option<&mut (dyn AdapterHook + 'static)> {
        self.hook.as_deref_mut()
    }

    pub fn set_hook(&mut self, hook: Box<dyn AdapterHook>) {
        self.hook = Some(hook);
    }

    pub fn take_hook(&mut self) -> Option<Box<dyn AdapterHook>> {
        self.hook.take()
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
    pub fn trainable_count(&self) -> TrainableCount {
        // Quantized matrices not also held dense count once, as PEFT counts a 4-bit base.
        let quantized: usize = self
            .quant
            .iter()
            .filter(|(k, _)| !self.vars.contains_key(*k))
            .map(|(_, q)| q.dims().iter().product::<usize>())
            .sum();
        TrainableCount {
            trainable_params: self.trainable().map(|(_, v)| v.elem_count()).sum(),
            all_params: self.numel() + quantized,
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

/// What a model asks of the store's adapters as it is built: its linear layers, norms and
/// virtual tokens ask the store; a store with a hook installed (PEFT's registry,
/// `crate::peft`) answers with the adapters that target them. `nn` defines the questions;
/// `peft` answers them.
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
