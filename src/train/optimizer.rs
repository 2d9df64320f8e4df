//! AdamW (Loshchilov & Hutter, 2019): Adam with weight decay decoupled from the gradient,
//! computed exactly as `torch.optim.AdamW` (single-tensor path), so runs match PyTorch's.
//!
//! On CPU the update is one fused pass over parameter, gradient and both moments (the moments
//! live in plain vectors); elsewhere it is a composition of tensor ops. Both are tested against
//! PyTorch.

use crate::io::safetensors;
use crate::multiversion;
use crate::nn::{kernels, ParamStore};
use crate::{Error, Result};
use candle_core::{backprop::GradStore, CpuStorage, Storage, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Gradients by parameter name.
pub type Grads = BTreeMap<String, Tensor>;

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether a parameter is exempt from weight decay: biases, norm gains and other vectors, and
/// the embedding tables each model family names (see [`crate::models::Family::no_decay`]).
pub fn no_decay(name: &str, rank: usize) -> bool {
    crate::models::registry::no_decay(name, rank)
}

enum Moments {
    /// Device tensors, updated by composed ops.
    Tensors { m: Tensor, v: Tensor },
    /// CPU vectors, updated in place by the fused kernel.
    Cpu { m: Vec<f32>, v: Vec<f32> },
}

/// Scalars of one update, shared by every parameter.
#[derive(Clone, Copy)]
struct Coeffs {
    decay: f32,
    /// `1 - beta1`, computed in f64 as PyTorch does (in f32 it would differ in the last bit).
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    grad_scale: f32,
}

multiversion! {
    fn fused_update(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], out: &mut [f32], c: Coeffs) {
        for i in 0..p.len() {
            let g = g[i] * c.grad_scale;
            let mi = m[i] + (g - m[i]) * c.one_minus_beta1;
            let vi = v[i] * c.beta2 + g * g * c.one_minus_beta2;
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() / c.bc2_sqrt + c.eps;
            out[i] = p[i] * c.decay - c.step_size * (mi / denom);
        }
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => Err(Error::Training(
            "fused AdamW needs contiguous f32 CPU tensors".into(),
        )),
    }
}

/// AdamW with its state: first and second moments per parameter, and the step count.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    /// Parameter-name fragments exempt from weight decay besides the model families' (a
    /// training task's own tables).
    pub no_decay: Vec<&'static str>,
    state: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            no_decay: vec![],
            state: BTreeMap::new(),
        }
    }

    /// One update of every trainable parameter in `store` that has a gradient in `grads`,
    /// with the gradients multiplied by `grad_scale` first (clipping folds in here).
    pub fn step(
        &mut self,
        store: &ParamStore,
        grads: &Grads,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (name, var) in store.trainable() {
            let Some(g) = grads.get(name) else {
                continue;
            };
            let exempt =
                no_decay(name, var.rank()) || self.no_decay.iter().any(|f| name.contains(f));
            let decay = if !exempt && c.weight_decay != 0.0 {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let fused = kernels::fused(var.device()) && var.dtype() == candle_core::DType::F32;
            let st = self.state.entry(name.clone()).or_insert_with(|| {
                let n = var.elem_count();
                if fused {
                    Moments::Cpu {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    let z = var.as_tensor().zeros_like().expect("zeros");
                    Moments::Tensors { m: z.clone(), v: z }
                }
            });
            match st {
                Moments::Cpu { m, v } => {
                    let coeffs = Coeffs {
                        decay: decay as f32,
                        one_minus_beta1: (1.0 - c.beta1) as f32,
                        beta2: c.beta2 as f32,
                        one_minus_beta2: (1.0 - c.beta2) as f32,
                        step_size: step_size as f32,
                        bc2_sqrt: bc2_sqrt as f32,
                        eps: c.eps as f32,
                        grad_scale: grad_scale as f32,
                    };
                    let g = g.contiguous()?;
                    let mut out = vec![0f32; var.elem_count()];
                    with_cpu_f32(var.as_tensor(), |p| {
                        with_cpu_f32(&g, |g| fused_update(p, g, m, v, &mut out, coeffs))
                    })??;
                    var.set(&Tensor::from_vec(out, var.shape(), var.device())?)?;
                }
                Moments::Tensors { m, v } => {
                    let g = &(g.detach() * grad_scale)?;
                    let p = (var.as_tensor().detach() * decay)?;
                    // torch: exp_avg.lerp_(grad, 1 - beta1), i.e. m + (1 - beta1) (g - m).
                    let m2 = (&*m + ((g - &*m)? * (1.0 - c.beta1))?)?;
                    let v2 = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((v2.sqrt()? / bc2_sqrt)? + c.eps)?;
                    var.set(&(p - (m2.div(&denom)? * step_size)?)?)?;
                    *m = m2;
                    *v = v2;
                }
            }
        }
        Ok(())
    }

    /// Saves the moments as `optimizer.safetensors` (`<param>.exp_avg`, `<param>.exp_avg_sq`).
    pub fn save(&self, path: &Path, store: &ParamStore) -> Result<()> {
        let mut t = BTreeMap::new();
        for (k, s) in &self.state {
            let (m, v) = match s {
                Moments::Tensors { m, v } => (m.clone(), v.clone()),
                Moments::Cpu { m, v } => {
                    let var = store
                        .vars()
                        .get(k)
                        .ok_or_else(|| Error::Training(format!("no parameter {k}")))?;
                    (
                        Tensor::from_slice(m, var.shape(), var.device())?,
                        Tensor::from_slice(v, var.shape(), var.device())?,
                    )
                }
            };
            t.insert(format!("{k}.exp_avg"), m);
            t.insert(format!("{k}.exp_avg_sq"), v);
        }
        safetensors::save(path, &t)
    }

    /// Restores moments saved by [`AdamW::save`]; `step` comes from the trainer state.
    pub fn load(&mut self, path: &Path, store: &ParamStore, step: u64) -> Result<()> {
        let mut t = safetensors::load(path, store.device())?;
        self.state.clear();
        for (name, var) in store.trainable() {
            let m = t.remove(&format!("{name}.exp_avg"));
            let v = t.remove(&format!("{name}.exp_avg_sq"));
            match (m, v) {
                (Some(m), Some(v)) => {
                    if m.dims() != var.dims() || v.dims() != var.dims() {
                        return Err(Error::format(
                            path,
                            format!("moments of {name} have the wrong shape"),
                        ));
                    }
                    let st =
                        if kernels::fused(var.device()) && var.dtype() == candle_core::DType::F32 {
                            Moments::Cpu {
                                m: m.flatten_all()?.to_vec1()?,
                                v: v.flatten_all()?.to_vec1()?,
                            }
                        } else {
                            Moments::Tensors { m, v }
                        };
                    self.state.insert(name.clone(), st);
                }
                (None, None) if step == 0 => {}
                _ => {
                    return Err(Error::format(
                        path,
                        format!("no optimizer state for parameter {name}"),
                    ))
                }
            }
        }
        if let Some(k) = t.keys().next() {
            return Err(Error::format(
                path,
                format!("optimizer state for unknown parameter {k}"),
            ));
        }
        self.step = step;
        Ok(())
    }
}

/// Sum of gradients over micro-batches (gradient accumulation), keyed by parameter name.
#[derive(Default)]
pub struct GradAccumulator {
    grads: Grads,
}

impl GradAccumulator {
    /// Adds the gradients of the trainable parameters from one backward pass.
    pub fn add(&mut self, store: &ParamStore, grads: &GradStore) -> Result<()> {
        for (name, var) in store.trainable() {
            if let Some(g) = grads.get(var.as_tensor()) {
                // Gradients carry the op graph that produced them, which references every
                // activation of the step; detach so nothing keeps that graph alive.
                let g = g.detach();
                let sum = match self.grads.remove(name) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                self.grads.insert(name.clone(), sum);
            }
        }
        Ok(())
    }

    /// The global L2 norm of all gradients.
    pub fn global_norm(&self) -> Result<f64> {
        let mut total = 0f64;
        for g in self.grads.values() {
            total += if kernels::fused(g.device()) && g.dtype() == candle_core::DType::F32 {
                let g = g.contiguous()?;
                with_cpu_f32(&g, |s| {
                    s.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()
                })?
            } else {
                g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64
            };
        }
        Ok(total.sqrt())
    }

    /// The factor `torch.nn.utils.clip_grad_norm_` would scale the gradients by to bring
    /// their global norm to at most `max_norm` (1 when already below), and the norm itself.
    pub fn clip_scale(&self, max_norm: f64) -> Result<(f64, f64)> {
        let norm = self.global_norm()?;
        let coef = max_norm / (norm + 1e-6);
        Ok((coef.min(1.0), norm))
    }

    /// The accumulated gradients by parameter name.
    pub fn grads(&self) -> &Grads {
        &self.grads
    }
}
