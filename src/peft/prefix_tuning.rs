//! Prefix tuning (Li & Liang, 2021): learned keys and values put before every layer's own,
//! `[num_virtual_tokens, layers * 2 * heads * head_dim]` laid out as PEFT does (column
//! `((layer * 2 + kv) * heads + head) * head_dim + i`, kv 0 the key, 1 the value), initialised
//! N(0, 1) as PEFT's embedding; learned directly (no `prefix_projection` MLP). Virtual tokens
//! cannot be merged into weights.

use super::config::{PeftConfig, PeftType};
use super::keys::{param_name, PROMPT};
use super::method::{Ctx, Method};
use crate::nn::store::Init;
use crate::{Error, Result};
use candle_core::Tensor;

pub struct PrefixTuningMethod;
pub static PREFIX_TUNING: PrefixTuningMethod = PrefixTuningMethod;

impl Method for PrefixTuningMethod {
    fn peft_type(&self) -> PeftType {
        PeftType::PrefixTuning
    }

    fn kinds(&self) -> &'static [&'static str] {
        &[PROMPT]
    }

    fn what(&self) -> &'static str {
        "prefix tuning"
    }

    fn merges(&self) -> bool {
        false
    }

    fn validate(&self, cfg: &PeftConfig) -> Result<()> {
        super::prompt_tuning::virtual_tokens(cfg)?;
        if cfg.other.get("prefix_projection") == Some(&serde_json::json!(true)) {
            return Err(Error::Config(
                "prefix_projection (an MLP producing the prefixes) is not supported; the prefixes are learned directly".into(),
            ));
        }
        Ok(())
    }

    fn prefix(
        &self,
        ctx: &mut Ctx,
        layers: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Option<Tensor>> {
        let n = ctx.adapter.config.num_virtual_tokens.unwrap_or(0);
        let key = param_name(PROMPT, PROMPT, &ctx.adapter.name);
        let width = layers * 2 * heads * head_dim;
        ctx.param(&key, &[n, width], Init::Normal(1.0)).map(Some)
    }
}

/// What PEFT needs in `adapter_config.json` to lay the prefix out again (GQA: the key/value
/// heads).
pub(crate) fn record_layout(cfg: &mut PeftConfig, layers: usize, heads: usize, head_dim: usize) {
    cfg.token_dim = Some(heads * head_dim);
    for (k, v) in [
        ("num_layers", serde_json::json!(layers)),
        ("num_attention_heads", serde_json::json!(heads)),
        ("encoder_hidden_size", serde_json::json!(heads * head_dim)),
        ("num_transformer_submodules", serde_json::json!(1)),
        ("prefix_projection", serde_json::json!(false)),
    ] {
        cfg.other.insert(k.into(), v);
    }
}
