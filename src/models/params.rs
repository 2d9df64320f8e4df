//! Parameter accounting: counts per module, a "124M"-style size name, the memory a training
//! run needs and the FLOPs per token.

use crate::models::{ArchConfig, Gpt2Config};
use crate::Result;
use serde::Serialize;
use std::collections::BTreeMap;

/// A model's parameters, counted.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ParamReport {
    pub total: usize,
    pub trainable: usize,
    /// Human size name, e.g. "124M", "1.6B".
    pub size: String,
    /// Count per top-level module (`transformer.wte`, `transformer.h.0`, ..., `lm_head`; for
    /// Llama `model.embed_tokens`, `model.layers.0`, ...).
    pub modules: BTreeMap<String, usize>,
    /// Count per kind of sub-module inside one block (`attn`, `mlp`, `ln_1`, `ln_2`; for Llama
    /// `self_attn`, `mlp`, `input_layernorm`, `post_attention_layernorm`).
    pub per_block: BTreeMap<String, usize>,
    /// Parameters that take part in matrix multiplies (the weights of every linear map and the
    /// output projection), the `N` of the `6N` FLOPs rule.
    pub matmul_params: usize,
    pub flops_per_token: Flops,
    pub memory: Memory,
}

/// FLOPs per token at full context (forward, and forward + backward for training), counting
/// a multiply-add as 2: `2 N_matmul + 4 L C T` forward (the last term is attention's scores and
/// weighted sum), training three times that (as in nanoGPT's MFU estimate and PaLM appendix B).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flops {
    pub context: usize,
    pub forward: f64,
    pub train: f64,
}

/// Bytes for training in f32 with AdamW: weights, gradients, two moments, and an estimate of
/// the activations kept for the backward pass at the given batch and context.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Memory {
    pub batch: usize,
    pub context: usize,
    pub weights: u64,
    pub gradients: u64,
    pub adamw_moments: u64,
    pub activations: u64,
    pub total: u64,
}

/// "124M"-style name of a parameter count.
pub fn size_name(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        let s = format!("{:.1}", n / 1e9);
        format!("{}B", s.trim_end_matches(".0"))
    } else if n >= 1e6 {
        format!("{:.0}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

fn module_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["transformer", "h", i, ..] => format!("transformer.h.{i}"),
        ["model", "layers", i, ..] => format!("model.layers.{i}"),
        [top @ ("transformer" | "model"), m, ..] => format!("{top}.{m}"),
        [m, ..] => m.to_string(),
        [] => String::new(),
    }
}

/// Counts the parameters of a GPT-2 config (nothing is allocated). `frozen` names parameters
/// excluded from training.
pub fn gpt2_report(
    config: &Gpt2Config,
    batch: usize,
    context: Option<usize>,
    frozen: &dyn Fn(&str) -> bool,
) -> Result<ParamReport> {
    report(&ArchConfig::new(config.clone())?, batch, context, frozen)
}

/// Counts the parameters of any causal-LM config (nothing is allocated).
pub fn report(
    config: &ArchConfig,
    batch: usize,
    context: Option<usize>,
    frozen: &dyn Fn(&str) -> bool,
) -> Result<ParamReport> {
    let shapes = config.param_shapes()?;
    let (n_layer, n_embd, n_head) = (
        config.num_layers(),
        config.hidden_size(),
        config.num_heads(),
    );
    // The blocks' common prefix (`transformer.h.`, `model.layers.`): what precedes the first
    // numeric segment.
    let block = shapes
        .keys()
        .find_map(|k| {
            let i = k.split('.').position(|p| p.parse::<usize>().is_ok())?;
            let n: usize = k.split('.').take(i).map(|p| p.len() + 1).sum();
            Some(k[..n].to_string())
        })
        .unwrap_or_default();
    let block = block.as_str();
    let first_block = format!("{block}0.");
    let mut modules = BTreeMap::new();
    let mut per_block = BTreeMap::new();
    let (mut total, mut trainable, mut matmul) = (0usize, 0usize, 0usize);
    for (name, dims) in &shapes {
        let n: usize = dims.iter().product();
        total += n;
        if !frozen(name) {
            trainable += n;
        }
        *modules.entry(module_of(name)).or_insert(0) += n;
        if let Some(rest) = name.strip_prefix(first_block.as_str()) {
            let kind = rest.split('.').next().unwrap_or(rest).to_string();
            *per_block.entry(kind).or_insert(0) += n;
        }
        if dims.len() == 2 && name.starts_with(block) {
            matmul += n;
        }
    }
    // The output projection is a matmul whether or not it shares the embedding's weights.
    matmul += config.vocab_size() * n_embd;
    let t = context.unwrap_or(config.max_positions());
    let (l, c) = (n_layer as f64, n_embd as f64);
    let forward = 2.0 * matmul as f64 + 4.0 * l * c * t as f64;
    let weights = 4 * total as u64;
    let trainable_bytes = 4 * trainable as u64;
    // Per layer and token, about 34 C values plus 5 h T attention values (Korthikanti et al.,
    // 2022, counted in 2-byte units; doubled here for f32), plus the logits.
    let per_layer = (34.0 * c + 5.0 * n_head as f64 * t as f64) * 2.0;
    let activations =
        (batch as f64 * t as f64 * (l * per_layer + 8.0 * config.vocab_size() as f64)) as u64;
    let memory = Memory {
        batch,
        context: t,
        weights,
        gradients: trainable_bytes,
        adamw_moments: 2 * trainable_bytes,
        activations,
        total: weights + 3 * trainable_bytes + activations,
    };
    Ok(ParamReport {
        total,
        trainable,
        size: size_name(total),
        modules,
        per_block,
        matmul_params: matmul,
        flops_per_token: Flops {
            context: t,
            forward,
            train: 3.0 * forward,
        },
        memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_sizes_match_transformers() {
        // sum(p.numel() for p in GPT2LMHeadModel(GPT2Config.from_pretrained(name)).parameters())
        for (name, want, size) in [
            ("gpt2", 124_439_808, "124M"),
            ("gpt2-medium", 354_823_168, "355M"),
            ("gpt2-large", 774_030_080, "774M"),
            ("gpt2-xl", 1_557_611_200, "1.6B"),
        ] {
            let r = gpt2_report(&Gpt2Config::named(name).unwrap(), 1, None, &|_| false).unwrap();
            assert_eq!(r.total, want, "{name}");
            assert_eq!(r.size, size);
            assert_eq!(r.modules.values().sum::<usize>(), want);
        }
    }

    /// SmolLM2-135M (Llama, GQA, tied): transformers' `sum(p.numel() for p in
    /// model.parameters())` is 134,515,008.
    #[test]
    fn llama_count_matches_transformers() {
        let mut c = crate::models::LlamaConfig::new(49152, 576, 1536, 30, 9, 3, 8192);
        c.tie_word_embeddings = true;
        let r = report(&ArchConfig::new(c).unwrap(), 1, Some(2048), &|_| false).unwrap();
        assert_eq!(r.total, 134_515_008);
        assert_eq!(r.size, "135M");
        assert!(r.modules.contains_key("model.layers.29"));
        assert_eq!(r.per_block["self_attn"], 2 * 576 * 576 + 2 * 576 * 192);
    }

    #[test]
    fn size_names() {
        assert_eq!(size_name(124_439_808), "124M");
        assert_eq!(size_name(22_700_000), "23M");
        assert_eq!(size_name(1_500_000_000), "1.5B");
        assert_eq!(size_name(2_000_000_000), "2B");
        assert_eq!(size_name(812), "812");
    }
}
