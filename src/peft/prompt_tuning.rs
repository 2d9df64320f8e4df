//! Prompt tuning (Lester et al., 2021): `num_virtual_tokens` learned embeddings put before
//! the input; initialised as PEFT does (`RANDOM`: N(0, 1); `SAMPLE_VOCAB`: random rows of the
//! embedding table; `TEXT`: the embeddings of `prompt_tuning_init_text`, repeated or cut).
//! Virtual tokens cannot be merged into weights. The models take them through
//! [`crate::nn::VirtualTokens`].

use super::config::{PeftConfig, PeftType};
use super::keys::{param_name, PROMPT};
use super::method::{Ctx, Method};
use crate::nn::store::{Init, ParamStore};
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::Tensor;

pub struct PromptTuningMethod;
pub static PROMPT_TUNING: PromptTuningMethod = PromptTuningMethod;

impl Method for PromptTuningMethod {
    fn peft_type(&self) -> PeftType {
        PeftType::PromptTuning
    }

    fn kinds(&self) -> &'static [&'static str] {
        &[PROMPT]
    }

    fn what(&self) -> &'static str {
        "prompt tuning"
    }

    fn merges(&self) -> bool {
        false
    }

    fn validate(&self, cfg: &PeftConfig) -> Result<()> {
        virtual_tokens(cfg)?;
        match cfg.prompt_tuning_init.as_deref().unwrap_or("RANDOM") {
            "RANDOM" | "SAMPLE_VOCAB" => Ok(()),
            "TEXT"
                if cfg
                    .prompt_tuning_init_text
                    .as_deref()
                    .is_some_and(|t| !t.is_empty()) =>
            {
                Ok(())
            }
            "TEXT" => Err(Error::Config(
                "prompt_tuning_init = \"TEXT\" needs prompt_tuning_init_text".into(),
            )),
            other => Err(Error::Config(format!(
                "prompt_tuning_init {other:?}: expected RANDOM, SAMPLE_VOCAB or TEXT"
            ))),
        }
    }

    /// `[num_virtual_tokens, hidden]`; rows of `table` for `SAMPLE_VOCAB`.
    fn prompt(
        &self,
        ctx: &mut Ctx,
        hidden: usize,
        table: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let a = ctx.adapter;
        let n = a.config.num_virtual_tokens.unwrap_or(0);
        let key = param_name(PROMPT, PROMPT, &a.name);
        if ctx.is_new(&key) {
            if let (Some("SAMPLE_VOCAB"), Some(table)) =
                (a.config.prompt_tuning_init.as_deref(), table)
            {
                let vocab = table.dim(0)? as u64;
                let mut rng = crate::rng::Rng::new(vocab);
                let rows: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
                let idx = Tensor::new(rows.as_slice(), table.device())?;
                ctx.store
                    .insert(&key, table.detach().index_select(&idx, 0)?)?;
            }
        }
        ctx.param(&key, &[n, hidden], Init::Normal(1.0)).map(Some)
    }
}

/// Prompt and prefix tuning need at least one virtual token.
pub(crate) fn virtual_tokens(cfg: &PeftConfig) -> Result<()> {
    if cfg.num_virtual_tokens.unwrap_or(0) == 0 {
        return Err(Error::Config(format!(
            "{:?} needs num_virtual_tokens >= 1",
            cfg.peft_type
        )));
    }
    Ok(())
}

/// `TEXT` initialisation (as PEFT): the embeddings of the text's tokens, repeated or cut to
/// `num_virtual_tokens`, as adapter `adapter`'s prompt.
pub fn init_from_text(
    store: &mut ParamStore,
    cfg: &PeftConfig,
    adapter: &str,
    text: &str,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let n = cfg.num_virtual_tokens.unwrap_or(0);
    let ids = tokenizer.encode(text)?;
    if ids.is_empty() {
        return Err(Error::Config(
            "prompt_tuning_init_text encodes to no tokens".into(),
        ));
    }
    let ids: Vec<u32> = ids.iter().cycle().take(n).copied().collect();
    let table = ["model.embed_tokens.weight", "transformer.wte.weight"]
        .iter()
        .find_map(|k| store.vars().get(*k))
        .ok_or_else(|| {
            Error::Config("prompt_tuning_init TEXT needs a dense token embedding table".into())
        })?
        .as_tensor()
        .detach();
    let rows = table.index_select(&Tensor::new(ids.as_slice(), table.device())?, 0)?;
    store.insert(&param_name(PROMPT, PROMPT, adapter), rows)
}
