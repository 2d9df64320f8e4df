//! LoRA (Hu et al., 2021): a linear layer's output plus `scaling * B A x` with `A` `[r, in]`
//! (Kaiming-uniform) and `B` `[out, r]` (zero, so training starts from the base model),
//! `scaling = lora_alpha / r` (rsLoRA: `/ sqrt(r)`), dropout on the adapter's input. DoRA
//! (Liu et al., 2024) learns each output row's magnitude apart from its direction: the layer
//! becomes `m / ||W + s B A|| * (W + s B A) x`, the norm treated as a constant as PEFT does.
//! Merging adds `s B A` to the weight (DoRA: and rescales its rows), unmerging takes it out.

use super::adapter::LayerAdapter;
use super::config::{PeftConfig, PeftType};
use super::keys::param_name;
use super::method::{Ctx, Fold, Method};
use crate::nn::adapter::{Base, LinearSite};
use crate::nn::store::Init;
use crate::{Error, Result};
use candle_core::Tensor;
use std::sync::Arc;

pub struct LoraMethod;
pub static LORA: LoraMethod = LoraMethod;

impl PeftConfig {
    /// The rank and the update's scale for the module at `path` (pattern overrides applied).
    pub fn rank_and_scaling(&self, path: &str) -> (usize, f64) {
        let find = |keys: Vec<&String>| -> Option<String> {
            keys.into_iter()
                .find(|k| {
                    regex::Regex::new(&format!(r"^(.*\.)?(?:{k})$"))
                        .is_ok_and(|re| re.is_match(path))
                })
                .cloned()
        };
        let r = find(self.rank_pattern.keys().collect())
            .map(|k| self.rank_pattern[&k])
            .unwrap_or(self.r);
        let alpha = find(self.alpha_pattern.keys().collect())
            .map(|k| self.alpha_pattern[&k])
            .unwrap_or(self.lora_alpha);
        let scaling = if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        (r, scaling)
    }
}

/// LoRA's tensors on one layer.
#[derive(Clone, Debug)]
pub struct Lora {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub scaling: f64,
    pub dropout: f64,
    /// DoRA's per-output magnitude `[out]`.
    pub magnitude: Option<Tensor>,
}

impl Method for LoraMethod {
    fn peft_type(&self) -> PeftType {
        PeftType::Lora
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["lora_A", "lora_B", "lora_magnitude_vector"]
    }

    fn what(&self) -> &'static str {
        "LoRA"
    }

    fn validate(&self, cfg: &PeftConfig) -> Result<()> {
        if cfg.r == 0 {
            return Err(Error::Config("peft.r must be at least 1".into()));
        }
        Ok(())
    }

    fn linear(&self, ctx: &mut Ctx, site: &LinearSite) -> Result<Option<Arc<dyn LayerAdapter>>> {
        let (cfg, name, module) = (&ctx.adapter.config, ctx.adapter.name.clone(), site.module);
        let (r, scaling) = cfg.rank_and_scaling(module);
        let b_init = if cfg.init_lora_weights {
            Init::Zeros
        } else {
            Init::Uniform(1.0 / (r as f64).sqrt())
        };
        let (use_dora, dropout) = (cfg.use_dora, cfg.lora_dropout);
        let a = ctx.param(
            &param_name(module, "lora_A", &name),
            &[r, site.d_in],
            Init::Uniform(1.0 / (site.d_in as f64).sqrt()),
        )?;
        let b = ctx.param(
            &param_name(module, "lora_B", &name),
            &[site.d_out, r],
            b_init,
        )?;
        let magnitude = if use_dora {
            let key = param_name(module, "lora_magnitude_vector", &name);
            if !ctx.store.vars().contains_key(&key) && ctx.store.shapes().is_none() {
                // DoRA starts from the row norms of the adapted weight.
                let w = (site.weight)()?;
                let delta = (b.matmul(&a)? * scaling)?;
                let norm = (w + delta)?.sqr()?.sum(1)?.sqrt()?;
                ctx.store.insert(&key, norm)?;
            }
            Some(ctx.param(&key, &[site.d_out], Init::Ones)?)
        } else {
            None
        };
        Ok(Some(Arc::new(Lora {
            a,
            b,
            scaling,
            dropout,
            magnitude,
        })))
    }

    fn fold(&self, f: &mut Fold) -> Result<()> {
        let (module, name) = (f.module, f.name);
        let (Some(a), Some(b)) = (
            f.get(&param_name(module, "lora_A", name)),
            f.get(&param_name(module, "lora_B", name)),
        ) else {
            return Ok(());
        };
        let Some(w) = f.weight()? else {
            return Ok(());
        };
        let (_, s) = f.config.rank_and_scaling(module);
        let delta = (b.matmul(&a)? * s)?;
        let new_w = match f.get(&param_name(module, "lora_magnitude_vector", name)) {
            None if f.undo => (w - delta)?,
            None => (w + delta)?,
            Some(m) => {
                let m = m.unsqueeze(1)?;
                let key = (name.to_string(), module.to_string());
                if f.undo {
                    let norm =
                        f.saved.get(&key).cloned().ok_or_else(|| {
                            Error::Config(format!("{module}: no DoRA norms saved"))
                        })?;
                    (w.broadcast_mul(&norm.broadcast_div(&m)?)? - delta)?
                } else {
                    let v = (w + delta)?;
                    let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?;
                    f.keep.push((key, norm.clone()));
                    v.broadcast_mul(&m.broadcast_div(&norm)?)?
                }
            }
        };
        f.set_weight(new_w)
    }
}

/// `x @ w^T` for `x` `[n, in]`, `w` `[out, in]`, through the fused kernel where there is one.
fn mm(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match crate::nn::kernels::linear::linear(x, w, None, false)? {
        Some(y) => Ok(y),
        None => Ok(x.matmul(&w.t()?)?),
    }
}

/// DoRA's `m / ||W + s B A||` per output row, with the norm treated as a constant (as PEFT).
fn dora_scale(w: &Tensor, a: &Tensor, b: &Tensor, s: f64, m: &Tensor) -> Result<Tensor> {
    let delta = (b.detach().matmul(&a.detach())? * s)?;
    let norm = (w + delta)?.sqr()?.sum(1)?.sqrt()?.detach();
    Ok(m.broadcast_div(&norm)?)
}

impl LayerAdapter for Lora {
    fn dropout(&self) -> f64 {
        self.dropout
    }

    fn output(&self, x: &Tensor, y: Tensor, base: &Base, seed: Option<u64>) -> Result<Tensor> {
        let (a, b, scaling) = (&self.a, &self.b, self.scaling);
        if self.magnitude.is_none() {
            let drop = seed.map(|s| (self.dropout, s));
            if let Some(fused) = crate::nn::kernels::lora::lora_add(&y, x, a, b, scaling, drop)? {
                return Ok(fused);
            }
        }
        let mask = match seed {
            Some(s) => {
                let m = crate::nn::kernels::lora::dropout_mask(self.dropout, s, x.elem_count());
                Some(Tensor::from_vec(m, x.shape(), x.device())?)
            }
            None => None,
        };
        let xd = match &mask {
            Some(m) => (x * m)?,
            None => x.clone(),
        };
        let lora = (mm(&mm(&xd, a)?, b)? * scaling)?;
        Ok(match &self.magnitude {
            None => (y + lora)?,
            Some(m) => {
                let w = (base.weight)()?;
                let scale = dora_scale(&w, a, b, scaling, m)?.unsqueeze(0)?;
                // The base output without its bias, for the dropped input.
                let plain = match (&mask, base.bias) {
                    (None, Some(bias)) => y.broadcast_sub(bias)?,
                    (None, None) => y.clone(),
                    (Some(_), _) => mm(&xd, &w)?,
                };
                let dora =
                    (plain.broadcast_mul(&(&scale - 1.0)?)? + lora.broadcast_mul(&scale)?)?;
                (y + dora)?
            }
        })
    }
}
