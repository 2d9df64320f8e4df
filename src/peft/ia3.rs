//! IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
//! In-Context Learning"): learned vectors that scale a layer's output elementwise, or, for the
//! feed-forward targets (`feedforward_modules`), its input; they start at one. Merging scales
//! the weight's rows (and an output-scaled layer's bias) or columns.

use super::adapter::LayerAdapter;
use super::config::{PeftConfig, PeftType};
use super::keys::param_name;
use super::method::{Ctx, Fold, Method};
use crate::nn::adapter::{Base, LinearSite};
use crate::nn::store::Init;
use crate::Result;
use candle_core::Tensor;
use std::sync::Arc;

pub struct Ia3Method;
pub static IA3: Ia3Method = Ia3Method;

impl PeftConfig {
    /// Whether the target's input rather than its output is scaled.
    pub fn is_feedforward(&self, path: &str) -> bool {
        self.feedforward_modules
            .as_ref()
            .is_some_and(|f| f.matches(path))
    }
}

/// IA3's vector on one layer: `[out, 1]` scaling the output, or `[1, in]` scaling the input.
#[derive(Clone, Debug)]
pub struct Ia3 {
    pub scale: Tensor,
    pub feedforward: bool,
}

impl Method for Ia3Method {
    fn peft_type(&self) -> PeftType {
        PeftType::Ia3
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["ia3_l"]
    }

    fn what(&self) -> &'static str {
        "IA3"
    }

    fn validate(&self, cfg: &PeftConfig) -> Result<()> {
        if let Some(ff) = &cfg.feedforward_modules {
            ff.compile()?;
        }
        Ok(())
    }

    fn linear(&self, ctx: &mut Ctx, site: &LinearSite) -> Result<Option<Arc<dyn LayerAdapter>>> {
        let feedforward = ctx.adapter.config.is_feedforward(site.module);
        let dims = if feedforward {
            [1, site.d_in]
        } else {
            [site.d_out, 1]
        };
        let key = param_name(site.module, "ia3_l", &ctx.adapter.name);
        let scale = ctx.param(&key, &dims, Init::Ones)?;
        Ok(Some(Arc::new(Ia3 { scale, feedforward })))
    }

    fn fold(&self, f: &mut Fold) -> Result<()> {
        let Some(l) = f.get(&param_name(f.module, "ia3_l", f.name)) else {
            return Ok(());
        };
        let Some(w) = f.weight()? else {
            return Ok(());
        };
        if l.dim(0)? > 1 {
            // Output scaling also scales the bias.
            let bkey = format!("{}.bias", f.module);
            if let Some(bias) = f.get(&bkey) {
                let lb = l.flatten_all()?;
                let nb = if f.undo {
                    bias.div(&lb)?
                } else {
                    bias.mul(&lb)?
                };
                f.updates.push((bkey, nb));
            }
        }
        let new_w = if f.undo {
            w.broadcast_div(&l)?
        } else {
            w.broadcast_mul(&l)?
        };
        f.set_weight(new_w)
    }
}

impl LayerAdapter for Ia3 {
    fn input(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(if self.feedforward {
            Some(x.broadcast_mul(&self.scale)?)
        } else {
            None
        })
    }

    fn output(&self, _x: &Tensor, y: Tensor, _base: &Base, _seed: Option<u64>) -> Result<Tensor> {
        Ok(if self.feedforward {
            y
        } else {
            y.broadcast_mul(&self.scale.t()?)?
        })
    }
}
