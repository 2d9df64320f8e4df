//! Gemma 2 (Gemma Team, 2024, "Gemma 2: Improving Open Language Models at a Practical Size"):
//! Llama's decoder with a GeGLU feed-forward (tanh GELU), norms that scale by `1 + weight`,
//! embeddings multiplied by `sqrt(hidden)`, a norm after each sub-layer as well as before
//! (`post_attention_layernorm`, `pre_`/`post_feedforward_layernorm`), scores scaled by
//! `query_pre_attn_scalar ^ -0.5` and soft-capped (`cap * tanh(x / cap)`) like the final
//! logits, and local (sliding-window) layers alternating with global ones. Weight names and
//! `config.json` are those of transformers' `Gemma2ForCausalLM`; GGUF files of llama.cpp's
//! `gemma2` architecture load too (their norms stored as `1 + weight`).

use super::causal::CausalConfig;
use super::decoder::DecoderSpec;
use super::decoder_config::{self as dc, DecoderConfig, Variant};
use super::family::{CausalSupport, Family, GgufSupport, Kind, PeftDefaults};
use crate::io::gguf::Gguf;
use crate::Result;
use candle_core::quantized::{GgmlDType, QTensor};
use serde_json::json;

/// The Gemma 2 family.
pub static FAMILY: Family = Family {
    name: "gemma2",
    model_types: &["gemma2"],
    kind: Kind::Causal,
    hf_class: "Gemma2ForCausalLM",
    sequence_classification: Some("Gemma2ForSequenceClassification"),
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
        parse: dc::parse::<Gemma2>,
        from_sizes: dc::from_sizes::<Gemma2>,
        normalize_keys: super::llama::normalize_keys,
        gguf: Some(GgufSupport {
            architectures: &["gemma2"],
            config: |g| {
                let mut c = dc::from_gguf::<Gemma2>(g)?;
                gguf_common(g, &mut c, 2)?;
                let k = |n: &str| format!("gemma2.{n}");
                for (key, default) in [
                    ("attn_logit_softcapping", 50.0),
                    ("final_logit_softcapping", 30.0),
                ] {
                    c.extra
                        .insert(key.into(), json!(g.f64(&k(key))?.unwrap_or(default)));
                }
                dc::checked(g, c)
            },
            tensor_name,
            transform: unit_offset_norms,
            export: None,
        }),
    }),
};

/// The Gemma 2 variant of the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gemma2;

/// `config.json` of a Gemma 2 model.
pub type Gemma2Config = DecoderConfig<Gemma2>;

impl Variant for Gemma2 {
    const TIED_BY_DEFAULT: bool = true;

    fn family() -> &'static Family {
        &FAMILY
    }

    fn fresh(c: &mut DecoderConfig<Self>) {
        super::gemma2::fresh_keys(c);
    }

    fn spec(c: &Gemma2Config) -> Result<DecoderSpec> {
        let mut s = gemma_spec(c, 2, vec![c.rope_parameters("full_attention", 10000.0)?])?;
        s.attn_softcap = softcap(c, "attn_logit_softcapping", 50.0);
        s.final_softcap = softcap(c, "final_logit_softcapping", 30.0);
        Ok(s)
    }
}

/// A soft-cap: the config's value (`null`: none), or Gemma 2's default.
fn softcap<V: Variant>(c: &DecoderConfig<V>, key: &str, default: f64) -> Option<f64> {
    match c.extra.get(key) {
        Some(v) => v.as_f64(),
        None => Some(default),
    }
}

/// What Gemma 2 and 3 share: the Llama layout with unit-offset norms, embeddings scaled by
/// `sqrt(hidden)`, sandwich norms, tanh GeGLU, `query_pre_attn_scalar`, and sliding-window
/// layers (`layer_types`, else one global layer in every `pattern`); global layers rotate
/// with the first of `ropes`, local ones with the last.
pub(crate) fn gemma_spec<V: Variant>(
    c: &DecoderConfig<V>,
    pattern: usize,
    ropes: Vec<(f64, crate::nn::RopeScaling)>,
) -> Result<DecoderSpec> {
    let mut s = c.base_spec()?;
    s.ropes = ropes;
    s.head_dim = c.head_dim.unwrap_or(256);
    s.unit_offset_norms = true;
    s.sandwich_norms = true;
    s.activation = c.activation("gelu_pytorch_tanh")?;
    s.embed_scale = Some((c.hidden_size as f64).sqrt());
    let scalar = c.extra_f64("query_pre_attn_scalar").unwrap_or(256.0);
    if scalar != s.head_dim as f64 {
        s.query_scale = Some(scalar.powf(-0.5));
    }
    let sliding = match c.layer_types()? {
        Some(t) => t,
        None => (0..c.num_hidden_layers)
            .map(|i| (i + 1) % pattern != 0)
            .collect(),
    };
    let window = c.extra_usize("sliding_window").unwrap_or(4096);
    s.layer_types = DecoderConfig::<V>::windowed_layers(&sliding, window, s.ropes.len() - 1);
    Ok(s)
}

/// A fresh Gemma's own keys: scores scaled by the head width, tanh GELU.
pub(crate) fn fresh_keys<V: Variant>(c: &mut DecoderConfig<V>) {
    c.extra
        .insert("query_pre_attn_scalar".into(), json!(c.head_dim()));
    c.extra
        .insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
}

/// llama.cpp's names of a Gemma block's tensors (its `ffn_norm` is the pre-feed-forward norm).
pub(crate) const GGUF_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
];

pub(crate) fn tensor_name(name: &str) -> Option<String> {
    dc::gguf_tensor_name(name, GGUF_BLOCK)
}

/// llama.cpp's converter stores Gemma's norms as `1 + weight`; this takes the 1 back off.
pub(crate) fn unit_offset_norms(_: &dyn CausalConfig, hf: &str, q: QTensor) -> Result<QTensor> {
    if !hf.ends_with("norm.weight") {
        return Ok(q);
    }
    let w = (q.dequantize(&q.device())? - 1.0)?;
    Ok(QTensor::quantize(&w, GgmlDType::F32)?)
}

/// The Gemma keys llama.cpp does not store, written as transformers names them: the head width
/// (`attention.key_length`), the window, the local/global pattern (one global layer in every
/// `pattern`, unless the file says), `query_pre_attn_scalar` (hidden / heads for the 27B
/// models, else the head width, as llama.cpp), and the activation.
pub(crate) fn gguf_common<V: Variant>(
    g: &Gguf,
    c: &mut DecoderConfig<V>,
    pattern: usize,
) -> Result<()> {
    let arch = g.architecture()?.to_string();
    let k = |n: &str| format!("{arch}.{n}");
    c.head_dim = Some(c.head_dim());
    let window = g.opt_usize(&k("attention.sliding_window"))?.unwrap_or(4096);
    let pattern = g
        .opt_usize(&k("attention.sliding_window_pattern"))?
        .unwrap_or(pattern)
        .max(1);
    let layer_types: Vec<&str> = (0..c.num_hidden_layers)
        .map(|i| {
            if (i + 1) % pattern != 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let big = matches!(
        (arch.as_str(), c.num_hidden_layers),
        ("gemma2", 46) | ("gemma3", 62)
    );
    let scalar = if big {
        c.hidden_size / c.num_attention_heads.max(1)
    } else {
        c.head_dim()
    };
    for (key, v) in [
        ("sliding_window", json!(window)),
        ("layer_types", json!(layer_types)),
        ("query_pre_attn_scalar", json!(scalar)),
        ("hidden_activation", json!("gelu_pytorch_tanh")),
    ] {
        c.extra.insert(key.into(), v);
    }
    Ok(())
}
