//! LayerNorm tuning (Zhao et al., 2023, "Tuning LayerNorm in Attention"): the targeted norms'
//! weights (and biases) train as copies kept beside the frozen originals, so adapters switch
//! without touching the base. Merging gives the base the trained values (kept to undo).

use super::config::PeftType;
use super::keys::ln_param_name;
use super::method::{Ctx, Fold, Method};
use crate::nn::store::Init;
use crate::{Error, Result};
use candle_core::Tensor;

pub struct LnTuningMethod;
pub static LN_TUNING: LnTuningMethod = LnTuningMethod;

impl Method for LnTuningMethod {
    fn peft_type(&self) -> PeftType {
        PeftType::LnTuning
    }

    fn kinds(&self) -> &'static [&'static str] {
        &[super::keys::LN]
    }

    fn what(&self) -> &'static str {
        "LayerNorm tuning"
    }

    /// The active adapter's copy of the norm's `param`, made from `base` if new. (Switching
    /// between LN-tuning adapters rebuilds the model.)
    fn norm(
        &self,
        ctx: &mut Ctx,
        module: &str,
        param: &str,
        base: &Tensor,
    ) -> Result<Option<Tensor>> {
        let key = ln_param_name(module, &ctx.adapter.name, param);
        if ctx.is_new(&key) {
            ctx.store.insert(&key, base.detach().copy()?)?;
        }
        ctx.param(&key, base.dims(), Init::Ones).map(Some)
    }

    fn fold(&self, f: &mut Fold) -> Result<()> {
        for param in ["weight", "bias"] {
            let Some(copy) = f.get(&ln_param_name(f.module, f.name, param)) else {
                continue;
            };
            let base_key = format!("{}.{param}", f.module);
            let saved = (f.name.to_string(), base_key.clone());
            if f.undo {
                let orig = f.saved.get(&saved).cloned().ok_or_else(|| {
                    Error::Config(format!("{base_key}: no saved value to restore"))
                })?;
                f.updates.push((base_key, orig));
            } else if let Some(orig) = f.get(&base_key) {
                f.keep.push((saved, orig.copy()?));
                f.updates.push((base_key, copy));
            }
        }
        Ok(())
    }
}
