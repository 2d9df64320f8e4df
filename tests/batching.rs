//! Continuous batching's decode step: several sequences, each at its own position with its own
//! KV cache, advanced by one token together (`CausalModel::hidden_rows`), give what each
//! gives alone through the ordinary cached path (itself tested against transformers).

mod common;

use candle_core::{Device, Tensor};
use common::{compare, fixture};
use ferroformer::infer::pretrained::PretrainedCausalLm;
use ferroformer::models::{self, CausalModel};
use ferroformer::nn::KvCache;

/// Prefills prompts of different lengths, then decodes `steps` tokens for all of them, once
/// batched and once row by row, comparing the hidden states of every step.
fn rows_match_alone(model: &CausalModel, rtol: f64) {
    let prompts: [&[u32]; 3] = [&[5, 9, 2, 7, 1, 3, 8], &[4], &[6, 2, 9, 9]];
    let dev = model.device().clone();
    let prefill = |p: &[u32]| -> Vec<KvCache> {
        let mut c = model.new_caches();
        let x = Tensor::new(p, &dev).unwrap().unsqueeze(0).unwrap();
        model.hidden(&x, Some(&mut c), None).unwrap();
        c
    };
    let mut batched: Vec<Vec<KvCache>> = prompts.iter().map(|p| prefill(p)).collect();
    let mut alone = batched.clone();
    let mut next = vec![3u32, 11, 0];
    for step in 0..4 {
        let h = model.hidden_rows(&next, &mut batched).unwrap();
        assert_eq!(h.dims()[..2], [3, 1]);
        for (r, cache) in alone.iter_mut().enumerate() {
            let x = Tensor::new(&[next[r]], &dev).unwrap().unsqueeze(0).unwrap();
            let want = model.hidden(&x, Some(cache), None).unwrap();
            let got = h.narrow(0, r, 1).unwrap();
            let (diff, worst) = compare(&got, &want, rtol, 1e-5);
            assert!(
                worst <= 1.0,
                "step {step} row {r}: max difference {diff} ({worst}x the tolerance)"
            );
            assert_eq!(batched[r][0].len(), cache[0].len());
        }
        next = next.iter().map(|t| (t * 7 + 5) % 13).collect();
    }
}

#[test]
fn decode_rows_equal_each_sequence_alone_in_every_family() {
    // Llama (plain GQA), Mistral (sliding window), Gemma 2 (window, soft-capping, query
    // scale, sandwich norms), Gemma 3 and Qwen 3 (query/key norms), Phi-3 (fused qkv).
    for name in [
        "llama-tiny",
        "mistral-tiny",
        "gemma2-tiny",
        "gemma3-tiny",
        "qwen2-tiny",
        "qwen3-tiny",
        "phi3-tiny",
        "gpt2-tiny",
    ] {
        let (model, _store) = models::load_dir(&fixture(name), &Device::Cpu).unwrap();
        rows_match_alone(&model, 1e-5);
    }
}

#[test]
fn decode_rows_of_a_quantized_model_equal_each_alone() {
    let path = ferroformer::assets::ensure("smollm2-135m-instruct")
        .unwrap()
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let p = PretrainedCausalLm::load(path.to_str().unwrap(), &Device::Cpu, true)
        .unwrap()
        .for_inference()
        .unwrap();
    // The quantized product quantizes each activation row alone and sums each row in the
    // same order whatever the batch: the rows agree exactly, up to the f32 matmuls of
    // attention.
    rows_match_alone(&p.model, 1e-5);
}

#[test]
fn decode_rows_reject_mismatched_inputs() {
    let (model, _store) = models::load_dir(&fixture("llama-tiny"), &Device::Cpu).unwrap();
    let mut caches = vec![model.new_caches()];
    let e = model.hidden_rows(&[1, 2], &mut caches).unwrap_err();
    assert!(e.to_string().contains("one token and one cache"), "{e}");
    let e = model.hidden_rows(&[100_000], &mut caches).unwrap_err();
    assert!(
        e.to_string().contains("outside the model's vocabulary"),
        "{e}"
    );
    let mut short = vec![vec![KvCache::default()]];
    assert!(model.hidden_rows(&[1], &mut short).is_err());
}
