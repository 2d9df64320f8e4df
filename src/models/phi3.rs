//! Phi-3 (Abdin et al., 2024, "Phi-3 Technical Report"): Llama's decoder with the query, key
//! and value projections fused into one `qkv_proj` matrix (rows: queries, keys, values) and the
//! gate and up projections into one `gate_up_proj` (rows: gate, then up), and sliding-window
//! attention on every layer when `sliding_window` is set. LoRA targets these fused modules
//! under their own names, as PEFT does (PEFT has no default for Phi-3; ours is `qkv_proj`, as
//! PEFT's for the fused projection of CodeGen). Weight names and `config.json` are those of
//! transformers' `Phi3ForCausalLM`; GGUF files of llama.cpp's `phi3` architecture load too.

use super::decoder::DecoderSpec;
use super::decoder_config::{self as dc, DecoderConfig, Variant};
use super::family::{CausalSupport, Family, GgufSupport, Kind, PeftDefaults};
use crate::{Error, Result};

/// The Phi-3 family.
pub static FAMILY: Family = Family {
    name: "phi3",
    model_types: &["phi3"],
    kind: Kind::Causal,
    hf_class: "Phi3ForCausalLM",
    sequence_classification: Some("Phi3ForSequenceClassification"),
    peft: PeftDefaults {
        lora: &["qkv_proj"],
        ia3: &["qkv_proj", "down_proj"],
        ia3_feedforward: &["down_proj"],
        ln_tuning: &["input_layernorm", "post_attention_layernorm", "norm"],
    },
    no_decay: &["embed_tokens"],
    causal: Some(CausalSupport {
        parse: dc::parse::<Phi3>,
        from_sizes: dc::from_sizes::<Phi3>,
        normalize_keys: super::llama::normalize_keys,
        gguf: Some(GgufSupport {
            architectures: &["phi3"],
            // llama.cpp (and transformers reading GGUF) run Phi-3 files without a window.
            config: |g| dc::checked(g, dc::from_gguf::<Phi3>(g)?),
            tensor_name: |n| {
                dc::gguf_tensor_name(
                    n,
                    &[
                        ("attn_norm", "input_layernorm"),
                        ("attn_qkv", "self_attn.qkv_proj"),
                        ("attn_output", "self_attn.o_proj"),
                        ("ffn_norm", "post_attention_layernorm"),
                        ("ffn_up", "mlp.gate_up_proj"),
                        ("ffn_down", "mlp.down_proj"),
                    ],
                )
            },
            transform: |_, _, q| Ok(q),
            export: None,
        }),
    }),
};

/// The Phi-3 variant of the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phi3;

/// `config.json` of a Phi-3 model.
pub type Phi3Config = DecoderConfig<Phi3>;

impl Variant for Phi3 {
    fn family() -> &'static Family {
        &FAMILY
    }

    fn spec(c: &Phi3Config) -> Result<DecoderSpec> {
        let partial = c
            .extra
            .get("rope_parameters")
            .and_then(|p| p.get("partial_rotary_factor"))
            .or_else(|| c.extra.get("partial_rotary_factor"))
            .and_then(|v| v.as_f64())
            .unwrap_or(1.0);
        if partial != 1.0 {
            return Err(Error::Config(format!(
                "partial_rotary_factor {partial}: partial rotary embedding (Phi-4-mini) is not supported"
            )));
        }
        let mut s = c.base_spec()?;
        s.fused_qkv = true;
        s.fused_gate_up = true;
        s.qkv_bias = false;
        s.o_bias = false;
        if let Some(w) = c.extra_usize("sliding_window").filter(|&w| w > 0) {
            let all = vec![true; c.num_hidden_layers];
            s.layer_types = Phi3Config::windowed_layers(&all, w, 0);
        }
        Ok(s)
    }
}
