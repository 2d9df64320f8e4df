//! Qwen 3 (Qwen Team, 2025, "Qwen3 Technical Report"): Qwen 2's decoder without its q/k/v
//! biases (`attention_bias` decides, for the output projection too), with an RMSNorm on every
//! query and key head before the rotation, and a `head_dim` of its own (128 where
//! hidden / heads would give 64). Weight names and `config.json` are those of transformers'
//! `Qwen3ForCausalLM`; GGUF files of llama.cpp's `qwen3` architecture load too.

use super::decoder::DecoderSpec;
use super::decoder_config::{self as dc, DecoderConfig, Variant};
use super::family::{CausalSupport, Family, GgufSupport, Kind, PeftDefaults};
use crate::Result;

/// The Qwen 3 family.
pub static FAMILY: Family = Family {
    name: "qwen3",
    model_types: &["qwen3"],
    kind: Kind::Causal,
    hf_class: "Qwen3ForCausalLM",
    sequence_classification: Some("Qwen3ForSequenceClassification"),
    peft: PeftDefaults {
        lora: &["q_proj", "v_proj"],
        ia3: &["q_proj", "v_proj", "down_proj"],
        ia3_feedforward: &["down_proj"],
        ln_tuning: &["post_attention_layernorm"],
    },
    no_decay: &["embed_tokens"],
    causal: Some(CausalSupport {
        parse: dc::parse::<Qwen3>,
        from_sizes: dc::from_sizes::<Qwen3>,
        normalize_keys: super::llama::normalize_keys,
        gguf: Some(GgufSupport {
            architectures: &["qwen3"],
            config: |g| {
                let mut c = dc::from_gguf::<Qwen3>(g)?;
                // Qwen 3 always names its head width; keep it even when it equals hidden / heads.
                c.head_dim = Some(c.head_dim());
                dc::checked(g, c)
            },
            tensor_name: |n| {
                dc::gguf_tensor_name(n, dc::GGUF_BLOCK).or_else(|| {
                    dc::gguf_tensor_name(
                        n,
                        &[
                            ("attn_q_norm", "self_attn.q_norm"),
                            ("attn_k_norm", "self_attn.k_norm"),
                        ],
                    )
                })
            },
            transform: |_, _, q| Ok(q),
            export: None,
        }),
    }),
};

/// The Qwen 3 variant of the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Qwen3;

/// `config.json` of a Qwen 3 model.
pub type Qwen3Config = DecoderConfig<Qwen3>;

impl Variant for Qwen3 {
    fn family() -> &'static Family {
        &FAMILY
    }

    fn spec(c: &Qwen3Config) -> Result<DecoderSpec> {
        let mut s = c.base_spec()?;
        s.qk_norm = true;
        s.ropes = vec![c.rope_parameters("full_attention", 1e6)?];
        s.layer_types = super::qwen2::sliding_layers(c)?;
        Ok(s)
    }
}
