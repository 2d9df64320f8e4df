//! How adapter tensors are named: in the parameter store (PEFT's in-memory names,
//! `{module}.lora_A.{adapter}.weight`) and in PEFT's files (`base_model.model.{module}.lora_A
//! .weight`, the adapter's name left out).

/// The prefix of every key in a PEFT adapter file.
pub const PREFIX: &str = "base_model.model.";

/// A store key of an adapter tensor: `{module}.{kind}.{adapter}` plus `.weight` for the
/// `nn.Linear`-held ones (PEFT's in-memory names); `prompt_embeddings.{adapter}` for a prompt.
pub fn param_name(module: &str, kind: &str, adapter: &str) -> String {
    match kind {
        "ia3_l" => format!("{module}.{kind}.{adapter}"),
        PROMPT => format!("{PROMPT}.{adapter}"),
        _ => format!("{module}.{kind}.{adapter}.weight"),
    }
}

/// The store key of LayerNorm tuning's copy of a norm's `param` (`weight` or `bias`).
pub fn ln_param_name(module: &str, adapter: &str, param: &str) -> String {
    format!("{module}.{LN}.{adapter}.{param}")
}

pub const LN: &str = "ln_tuning_layers";
pub const PROMPT: &str = "prompt_embeddings";

/// The kinds of adapter tensor that name a module in a key (a prompt's does not): every
/// method's `kinds` (a test in the registry keeps the two lists equal).
pub const KINDS: &[&str] = &["lora_A", "lora_B", "lora_magnitude_vector", "ia3_l", LN];

/// Splits a store key into (module, kind, adapter) when it is an adapter tensor (a prompt's
/// module is `prompt_embeddings`).
pub fn split_param_name(key: &str) -> Option<(&str, &'static str, &str)> {
    if let Some(adapter) = key.strip_prefix("prompt_embeddings.") {
        return Some((PROMPT, PROMPT, adapter));
    }
    KINDS.iter().find_map(|&kind| {
        let i = key.find(&format!(".{kind}."))?;
        let rest = &key[i + kind.len() + 2..];
        let adapter = rest
            .strip_suffix(".weight")
            .or_else(|| rest.strip_suffix(".bias"))
            .unwrap_or(rest);
        Some((&key[..i], kind, adapter))
    })
}

/// The file key of a store key: PEFT's prefix added, the adapter name taken out (and DoRA's
/// magnitude without `.weight`, as PEFT saves it).
pub fn file_key(store_key: &str) -> String {
    match split_param_name(store_key) {
        // A prompt is the prompt encoder's, not a module of the base model.
        Some((_, PROMPT, _)) => PROMPT.to_string(),
        Some((module, kind, _)) => {
            let suffix = match kind {
                "lora_magnitude_vector" | "ia3_l" => "",
                _ if store_key.ends_with(".bias") => ".bias",
                _ => ".weight",
            };
            format!("{PREFIX}{module}.{kind}{suffix}")
        }
        None => format!("{PREFIX}{store_key}"),
    }
}
