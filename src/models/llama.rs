//! Llama (Touvron et al., 2023, "LLaMA: Open and Efficient Foundation Language Models"): a
//! pre-norm decoder with RMSNorm, rotary position embedding, a SwiGLU feed-forward network
//! (Shazeer, 2020) and grouped-query attention (the [`Decoder`] in its plainest form). Weight
//! names and `config.json` are those of transformers' `LlamaForCausalLM`, so SmolLM2,
//! TinyLlama, Llama 2/3 and the like load unchanged, from safetensors or llama.cpp's GGUF
//! (whose `llama` architecture also holds Mistral's converted checkpoints).
//!
//! [`Decoder`]: super::decoder::Decoder

use super::causal::CausalConfig;
use super::decoder::DecoderSpec;
use super::decoder_config::{self as dc, DecoderConfig, Variant};
use super::family::{CausalSupport, Family, GgufExport, GgufSupport, Kind, PeftDefaults};
use crate::io::gguf::{permute_rotary, unpermute_qtensor, Gguf};
use crate::nn::Activation;
use crate::{Error, Result};
use candle_core::quantized::QTensor;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// The Llama family.
pub static FAMILY: Family = Family {
    name: "llama",
    model_types: &["llama"],
    kind: Kind::Causal,
    hf_class: "LlamaForCausalLM",
    sequence_classification: Some("LlamaForSequenceClassification"),
    peft: PeftDefaults {
        lora: &["q_proj", "v_proj"],
        ia3: &["k_proj", "v_proj", "down_proj"],
        ia3_feedforward: &["down_proj"],
        ln_tuning: &["input_layernorm", "post_attention_layernorm", "norm"],
    },
    no_decay: &["embed_tokens"],
    causal: Some(CausalSupport {
        parse: dc::parse::<Llama>,
        from_sizes: dc::from_sizes::<Llama>,
        normalize_keys,
        gguf: Some(GgufSupport {
            architectures: &["llama"],
            config: |g| dc::checked(g, from_gguf(g)?),
            tensor_name: |n| dc::gguf_tensor_name(n, dc::GGUF_BLOCK),
            transform: unpermute_query_key,
            export: Some(GgufExport {
                architecture: "llama",
                metadata: |c| dc::to_gguf(llama(c), "llama"),
                tensor_name: |hf| dc::gguf_export_name(hf, dc::GGUF_BLOCK),
                transform: permute_query_key,
            }),
        }),
    }),
};

/// The Llama variant of the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Llama;

/// `config.json` of a Llama model.
pub type LlamaConfig = DecoderConfig<Llama>;

impl Variant for Llama {
    fn family() -> &'static Family {
        &FAMILY
    }

    fn spec(c: &LlamaConfig) -> Result<DecoderSpec> {
        if c.activation("silu")? != Activation::Silu {
            return Err(Error::Config(format!(
                "hidden_act {:?}: Llama's SwiGLU feed-forward needs \"silu\"",
                c.hidden_act
            )));
        }
        c.base_spec()
    }
}

/// Older checkpoints carry rotary frequency buffers; they are not parameters.
pub(crate) fn normalize_keys(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(k, _)| !k.ends_with("rotary_emb.inv_freq"))
        .collect()
}

/// The `LlamaConfig` a GGUF file's metadata describes.
pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
    let mut c = dc::from_gguf::<Llama>(g)?;
    c.rope_theta = c.rope_theta.or(Some(10000.0));
    c.attention_bias = Some(g.has_tensor("blk.0.attn_q.bias"));
    c.mlp_bias = Some(g.has_tensor("blk.0.ffn_up.bias"));
    Ok(c)
}

fn llama(config: &dyn CausalConfig) -> &LlamaConfig {
    config
        .as_any()
        .downcast_ref::<LlamaConfig>()
        .expect("the Llama family reads a LlamaConfig")
}

/// What llama.cpp's converter does to Llama's query and key rows (the inverse of
/// [`unpermute_query_key`]).
fn permute_query_key(config: &dyn CausalConfig, hf: &str, w: Tensor) -> Result<Tensor> {
    let c = llama(config);
    if hf.ends_with("self_attn.q_proj.weight") {
        permute_rotary(&w, c.num_attention_heads)
    } else if hf.ends_with("self_attn.k_proj.weight") {
        permute_rotary(&w, c.kv_heads())
    } else {
        Ok(w)
    }
}

/// llama.cpp's converter interleaves the rotary halves of Llama's query and key rows (for its
/// `llama` architecture only); this restores transformers' order.
fn unpermute_query_key(config: &dyn CausalConfig, hf: &str, q: QTensor) -> Result<QTensor> {
    let c = llama(config);
    if hf.ends_with("self_attn.q_proj.weight") {
        unpermute_qtensor(&q, c.num_attention_heads)
    } else if hf.ends_with("self_attn.k_proj.weight") {
        unpermute_qtensor(&q, c.kv_heads())
    } else {
        Ok(q)
    }
}
