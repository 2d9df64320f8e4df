//! Mistral (Jiang et al., 2023, "Mistral 7B"): Llama's decoder with sliding-window attention
//! (each token sees the `sliding_window` latest positions, itself included), in training, in
//! perplexity windows and through the KV cache. Weight names and `config.json` are those of
//! transformers' `MistralForCausalLM`. llama.cpp converts Mistral checkpoints to its `llama`
//! architecture (same tensors, no window), so their GGUF files load through the Llama family,
//! as transformers loads them too.

use super::decoder::DecoderSpec;
use super::decoder_config::{self as dc, DecoderConfig, Variant};
use super::family::{CausalSupport, Family, Kind, PeftDefaults};
use crate::Result;

/// The Mistral family.
pub static FAMILY: Family = Family {
    name: "mistral",
    model_types: &["mistral"],
    kind: Kind::Causal,
    hf_class: "MistralForCausalLM",
    sequence_classification: Some("MistralForSequenceClassification"),
    peft: PeftDefaults {
        lora: &["q_proj", "v_proj"],
        ia3: &["k_proj", "v_proj", "down_proj"],
        ia3_feedforward: &["down_proj"],
        ln_tuning: &["input_layernorm", "post_attention_layernorm", "norm"],
    },
    no_decay: &["embed_tokens"],
    causal: Some(CausalSupport {
        parse: dc::parse::<Mistral>,
        from_sizes: dc::from_sizes::<Mistral>,
        normalize_keys: super::llama::normalize_keys,
        gguf: None,
    }),
};

/// The Mistral variant of the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mistral;

/// `config.json` of a Mistral model.
pub type MistralConfig = DecoderConfig<Mistral>;

impl Variant for Mistral {
    fn family() -> &'static Family {
        &FAMILY
    }

    fn spec(c: &MistralConfig) -> Result<DecoderSpec> {
        let mut s = c.base_spec()?;
        // No attention biases in Mistral.
        s.qkv_bias = false;
        s.o_bias = false;
        if let Some(w) = c.extra_usize("sliding_window") {
            let all = vec![true; c.num_hidden_layers];
            s.layer_types = MistralConfig::windowed_layers(&all, w, 0);
        }
        Ok(s)
    }
}
