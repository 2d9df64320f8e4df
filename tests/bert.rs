//! BERT against transformers (fixtures made by tests/fixtures/make_bert_fixtures.py): a tiny
//! random `BertForMaskedLM` (MLM logits and hidden states with padding and token types) and a
//! tiny `BertModel` with its pooler.

mod common;
use candle_core::{DType, Device};
use common::{assert_close, fixture};
use ferroformer::io::safetensors;
use ferroformer::models::bert;

fn check(name: &str) {
    let dev = Device::Cpu;
    let dir = fixture(name);
    let (model, _) = bert::load_dir(&dir, &dev).unwrap();
    let e = safetensors::load(&dir.join("expected.safetensors"), &dev).unwrap();
    let ids = e["input_ids"].to_dtype(DType::U32).unwrap();
    let h = model
        .forward(
            &ids,
            Some(&e["token_type_ids"]),
            Some(&e["attention_mask"]),
            None,
        )
        .unwrap();
    assert_close(
        &format!("{name} hidden"),
        &h,
        &e["last_hidden_state"],
        1e-4,
        1e-5,
    );
    if let Some(want) = e.get("logits") {
        let logits = model.mlm_logits(&h).unwrap();
        assert_close(&format!("{name} MLM logits"), &logits, want, 1e-4, 1e-5);
    }
    if let Some(want) = e.get("pooler_output") {
        let pooled = model.pool(&h).unwrap();
        assert_close(&format!("{name} pooler"), &pooled, want, 1e-4, 1e-5);
    }
}

#[test]
fn tiny_bert_matches_transformers_fused_and_plain() {
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        check("bert-tiny");
        check("bert-tiny-pooler");
    }
    ferroformer::nn::kernels::set_plain(false);
}

/// The masked-LM training loss and every parameter's gradient against transformers'
/// `BertForMaskedLM(..., labels=...)` + `loss.backward()` (fixture bert-tiny-train, made by
/// make_bert_fixtures.py --only-new): the loss over the 5 labelled positions, with the tied
/// decoder's contribution in the word-embedding gradient.
#[test]
fn mlm_loss_and_gradients_match_transformers() {
    use ferroformer::objective::mlm::{MaskedLm, MaskingConfig, MlmBatch};
    let dev = Device::Cpu;
    let (model, store) = bert::load_dir(&fixture("bert-tiny"), &dev).unwrap();
    let e = safetensors::load(&fixture("bert-tiny-train/expected.safetensors"), &dev).unwrap();
    let labels: Vec<i64> = e["labels"].flatten_all().unwrap().to_vec1().unwrap();
    let batch = MlmBatch {
        inputs: e["input_ids"].to_dtype(DType::U32).unwrap(),
        labels: labels
            .iter()
            .map(|&l| (l >= 0).then_some(l as u32))
            .collect(),
    };
    let tok = ferroformer::text::tokenizer::Tokenizer::load(&fixture(
        "bert-tiny-fillmask/tokenizer.json",
    ))
    .unwrap();
    let objective = MaskedLm::new(&tok, MaskingConfig::default()).unwrap();
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        let out = objective.loss(&model, &batch, None).unwrap();
        assert_eq!(out.count, 5);
        let got = out.loss.to_scalar::<f32>().unwrap() as f64;
        let want = e["loss"].to_vec1::<f32>().unwrap()[0] as f64;
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "loss {got} vs {want}"
        );
        let grads = out.loss.backward().unwrap();
        let mut n = 0;
        for (name, var) in store.vars() {
            let want = &e[&format!("grad.{name}")];
            let g = grads.get(var.as_tensor()).unwrap();
            // Absolute floor relative to the gradient's scale (entries are sums of many small
            // terms), and 1e-6 for the key bias, whose gradient is zero in exact arithmetic
            // (softmax ignores a constant shift) and rounding noise in both.
            assert_close(
                &format!("grad {name} (plain {plain})"),
                g,
                want,
                1e-4,
                (1e-5 * common::max_abs(want)).max(1e-6),
            );
            n += 1;
        }
        assert_eq!(n, 42);
    }
    ferroformer::nn::kernels::set_plain(false);
}

/// `fill-mask` against transformers' fill-mask pipeline on a tiny random BertForMaskedLM with
/// a 100-token WordPiece vocabulary: the same ids, candidates, scores, token strings and filled
/// sequences, for one mask and for two.
#[test]
fn fill_mask_matches_transformers_pipeline() {
    use ferroformer::infer::fill_mask::FillMask;
    let dir = fixture("bert-tiny-fillmask");
    let fm = FillMask::load(&dir, &Device::Cpu).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let k = want["top_k"].as_u64().unwrap() as usize;
    for case in want["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let ours: Vec<u64> = fm
            .tokenizer
            .encode_special(text)
            .unwrap()
            .iter()
            .map(|&i| i as u64)
            .collect();
        assert_eq!(ours, ids, "{text}");
        let got = fm.fill(text, k).unwrap();
        let expected: Vec<serde_json::Value> = if got.len() == 1 {
            vec![case["result"].clone()]
        } else {
            case["result"].as_array().unwrap().clone()
        };
        assert_eq!(got.len(), expected.len());
        for (g, w) in got.iter().zip(&expected) {
            let w = w.as_array().unwrap();
            assert_eq!(g.len(), w.len());
            for (c, x) in g.iter().zip(w) {
                assert_eq!(c.token as u64, x["token"].as_u64().unwrap(), "{text}");
                assert_eq!(c.token_str, x["token_str"].as_str().unwrap());
                assert_eq!(c.sequence, x["sequence"].as_str().unwrap());
                let s = x["score"].as_f64().unwrap();
                assert!(
                    (c.score as f64 - s).abs() <= 1e-5 * s,
                    "{text}: {} vs {s}",
                    c.score
                );
            }
        }
    }
    // Bad input: no mask, too long, a model without the MLM head.
    let e = fm.fill("the cat sat", 5).unwrap_err().to_string();
    assert!(e.contains("[MASK]"), "{e}");
    let long = format!("{} [MASK]", "the ".repeat(100));
    let e = fm.fill(&long, 5).unwrap_err().to_string();
    assert!(e.contains("at most 64"), "{e}");
    let e = FillMask::load(&fixture("bert-tiny-pooler"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no masked-LM head"), "{e}");
}
