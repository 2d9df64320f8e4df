//! Qwen 2 and 2.5 (Qwen Team, 2024, "Qwen2 Technical Report"): Llama's decoder with biases on
//! the query, key and value projections, a large rotary base, and sliding-window attention on
//! the upper layers when `use_sliding_window` is set. Weight names and `config.json` are those
//! of transformers' `Qwen2ForCausalLM`; GGUF files of llama.cpp's `qwen2` architecture load too.

use super::decoder::DecoderSpec;
use super::decoder_config::{self as dc, DecoderConfig, Variant};
use super::family::{CausalSupport, Family, GgufSupport, Kind, PeftDefaults};
use crate::Result;

/// The Qwen 2 family.
pub static FAMILY: Family = Family {
    name: "qwen2",
    model_types: &["qwen2"],
    kind: Kind::Causal,
    hf_class: "Qwen2ForCausalLM",
    sequence_classification: Some("Qwen2ForSequenceClassification"),
    peft: PeftDefaults {
        lora: &["q_proj", "v_proj"],
        ia3: &["q_proj", "v_proj", "down_proj"],
        ia3_feedforward: &["down_proj"],
        ln_tuning: &["post_attention_layernorm"],
    },
    no_decay: &["embed_tokens"],
    causal: Some(CausalSupport {
        parse: dc::parse::<Qwen2>,
        from_sizes: dc::from_sizes::<Qwen2>,
        normalize_keys: super::llama::normalize_keys,
        gguf: Some(GgufSupport {
            architectures: &["qwen2"],
            config: |g| dc::checked(g, dc::from_gguf::<Qwen2>(g)?),
            tensor_name: |n| dc::gguf_tensor_name(n, dc::GGUF_BLOCK),
            transform: |_, _, q| Ok(q),
            export: None,
        }),
    }),
};

/// The Qwen 2 variant of the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Qwen2;

/// `config.json` of a Qwen 2 model.
pub type Qwen2Config = DecoderConfig<Qwen2>;

impl Variant for Qwen2 {
    fn family() -> &'static Family {
        &FAMILY
    }

    fn spec(c: &Qwen2Config) -> Result<DecoderSpec> {
        let mut s = c.base_spec()?;
        // Biases on q, k and v, none on the output projection, whatever `attention_bias` says.
        s.qkv_bias = true;
        s.o_bias = false;
        s.ropes = vec![c.rope_parameters("full_attention", 1e6)?];
        s.layer_types = sliding_layers(c)?;
        Ok(s)
    }
}

/// Qwen's sliding windows: none unless `use_sliding_window`; then the layers `layer_types`
/// names, or (older configs) those from `max_window_layers` up.
pub(crate) fn sliding_layers<V: Variant>(
    c: &DecoderConfig<V>,
) -> Result<Vec<super::decoder::LayerType>> {
    let window = c.extra_usize("sliding_window");
    let (true, Some(w)) = (c.extra_bool("use_sliding_window").unwrap_or(false), window) else {
        return Ok(DecoderSpec::global_layers(c.num_hidden_layers));
    };
    let sliding = match c.layer_types()? {
        Some(t) => t,
        None => {
            let first = c.extra_usize("max_window_layers").unwrap_or(28);
            (0..c.num_hidden_layers).map(|i| i >= first).collect()
        }
    };
    Ok(DecoderConfig::<V>::windowed_layers(&sliding, w, 0))
}
