//! Gemma 3 (Gemma Team, 2025, "Gemma 3 Technical Report"), text model: Gemma 2's layout with
//! an RMSNorm (`1 + weight`) on every query and key head instead of soft-capped scores, five
//! local (sliding-window) layers to each global one, and a rotary base of its own for the
//! local layers (`rope_local_base_freq`; transformers 5 nests both in `rope_parameters`).
//! Weight names and `config.json` are those of transformers' `Gemma3ForCausalLM`
//! (`model_type` `gemma3_text`); GGUF files of llama.cpp's `gemma3` architecture load too,
//! such as the asset `gemma3-270m`.

use super::decoder::DecoderSpec;
use super::decoder_config::{self as dc, DecoderConfig, Variant};
use super::family::{CausalSupport, Family, GgufSupport, Kind, PeftDefaults};
use super::gemma2::{gemma_spec, gguf_common, tensor_name, unit_offset_norms};
use crate::nn::RopeScaling;
use crate::Result;
use serde_json::json;

/// The Gemma 3 family.
pub static FAMILY: Family = Family {
    name: "gemma3",
    model_types: &["gemma3_text"],
    kind: Kind::Causal,
    hf_class: "Gemma3ForCausalLM",
    sequence_classification: Some("Gemma3TextForSequenceClassification"),
    peft: PeftDefaults {
        lora: &["q_proj", "v_proj"],
        ia3: &["q_proj", "v_proj", "down_proj"],
        ia3_feedforward: &["down_proj"],
        ln_tuning: &[
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "norm",
        ],
    },
    no_decay: &["embed_tokens"],
    causal: Some(CausalSupport {
        parse: dc::parse::<Gemma3>,
        from_sizes: dc::from_sizes::<Gemma3>,
        normalize_keys: super::llama::normalize_keys,
        gguf: Some(GgufSupport {
            architectures: &["gemma3"],
            config: |g| {
                let mut c = dc::from_gguf::<Gemma3>(g)?;
                gguf_common(g, &mut c, 6)?;
                let global = c.rope_theta.take().unwrap_or(1e6);
                let local = g.f64("gemma3.rope.freq_base_swa")?.unwrap_or(10000.0);
                let mut full = json!({"rope_type": "default", "rope_theta": global});
                if let Some(s) = c.rope_scaling.take() {
                    full = s;
                    full["rope_theta"] = json!(global);
                }
                c.extra.insert(
                    "rope_parameters".into(),
                    json!({
                        "full_attention": full,
                        "sliding_attention": {"rope_type": "default", "rope_theta": local},
                    }),
                );
                if let Some(cap) = g.f64("gemma3.final_logit_softcapping")? {
                    c.extra.insert("final_logit_softcapping".into(), json!(cap));
                }
                dc::checked(g, c)
            },
            tensor_name,
            transform: unit_offset_norms,
            export: None,
        }),
    }),
};

/// The Gemma 3 variant of the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gemma3;

/// `config.json` of a Gemma 3 text model.
pub type Gemma3Config = DecoderConfig<Gemma3>;

impl Variant for Gemma3 {
    const TIED_BY_DEFAULT: bool = true;

    fn family() -> &'static Family {
        &FAMILY
    }

    fn fresh(c: &mut DecoderConfig<Self>) {
        super::gemma2::fresh_keys(c);
    }

    fn spec(c: &Gemma3Config) -> Result<DecoderSpec> {
        // Global layers on table 0 (rope_theta, scaled), local ones on table 1.
        let global = c.rope_parameters("full_attention", 1e6)?;
        let nested = c
            .extra
            .get("rope_parameters")
            .and_then(|p| p.get("sliding_attention"))
            .is_some();
        let local = if nested {
            c.rope_parameters("sliding_attention", 10000.0)?
        } else {
            let base = c.extra_f64("rope_local_base_freq").unwrap_or(10000.0);
            (base, RopeScaling::None)
        };
        let mut s = gemma_spec(c, 6, vec![global, local])?;
        s.qk_norm = true;
        // Gemma 3 keeps `attn_logit_softcapping` in its config but never applies it.
        s.final_softcap = c.extra_f64("final_logit_softcapping");
        Ok(s)
    }
}
