//! AdamW (Loshchilov & Hutter, 2019): Adam with weight decay decoupled from the gradient,
//! computed exactly as `torch.optim.AdamW` (single-tensor path), so runs match PyTorch's.

use crate::io::safetensors;
use crate::nn::ParamStore;
use crate::{Error, Result};
use candle_core::{backprop::GradStore, Tensor};

/// Gradients by parameter name.
pub type Grads = BTreeMap<String, Tensor>;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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

/// Whether a parameter is exempt from weight decay: biases, norm gains and embeddings (any
/// tensor of rank < 2, and the token/position tables).
pub fn no_decay(name: &str, rank: usize) -> bool {
    rank < 2 || name.contains("wte") || name.contains("wpe") || name.contains("embeddings")
}

struct Moments {
    m: Tensor,
    v: Tensor,
}

/// AdamW with its state: first and second moments per parameter, and the step count.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    state: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// One update of every trainable parameter in `store` that has a gradient in `grads`.
    pub fn step(&mut self, store: &ParamStore, grads: &Grads, lr: f64) -> Result<()> {
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
            let g = &g.detach();
            let st = match self.state.get_mut(name) {
                Some(s) => s,
                None => {
                    let z = var.as_tensor().zeros_like()?;
                    self.state
                        .insert(name.clone(), Moments { m: z.clone(), v: z });
                    self.state.get_mut(name).expect("just inserted")
                }
            };
            let mut p = var.as_tensor().detach();
            if !no_decay(name, var.rank()) && c.weight_decay != 0.0 {
                p = (p * (1.0 - lr * c.weight_decay))?;
            }
            // torch: exp_avg.lerp_(grad, 1 - beta1), i.e. m + (1 - beta1) (g - m).
            let m = (&st.m + ((g - &st.m)? * (1.0 - c.beta1))?)?;
            let v = ((&st.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let p = (p - (m.div(&denom)? * step_size)?)?;
            var.set(&p)?;
            st.m = m;
            st.v = v;
        }
        Ok(())
    }

    /// Saves the moments as `optimizer.safetensors` (`<param>.exp_avg`, `<param>.exp_avg_sq`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t = BTreeMap::new();
        for (k, s) in &self.state {
            t.insert(format!("{k}.exp_avg"), s.m.clone());
            t.insert(format!("{k}.exp_avg_sq"), s.v.clone());
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
                    self.state.insert(name.clone(), Moments { m, v });
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
    grads: BTreeMap<String, Tensor>,
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
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(total.sqrt())
    }

    /// Scales gradients so their global norm is at most `max_norm` (as
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    pub fn clip(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in self.grads.values_mut() {
                *g = (&*g * coef)?;
            }
        }
        Ok(norm)
    }

    /// The accumulated gradients by parameter name.
    pub fn grads(&self) -> &Grads {
        &self.grads
    }
}
