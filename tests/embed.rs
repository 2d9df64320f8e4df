//! all-MiniLM-L6-v2 (asset `all-minilm-l6-v2`) against transformers' BertTokenizerFast and
//! sentence-transformers (fixture made by tests/fixtures/make_bert_fixtures.py): token ids,
//! truncation at max_seq_length, embeddings of 50 varied sentences (one over 256 tokens),
//! and batching with padding equal to one sentence at a time.

mod common;
use candle_core::Device;
use common::fixture;
use ferroformer::infer::embed::{cosine, Pooling, SentenceEncoder};
use ferroformer::io::safetensors;

#[test]
fn minilm_matches_sentence_transformers() {
    let dir = ferroformer::assets::ensure("all-minilm-l6-v2").unwrap();
    let enc = SentenceEncoder::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(
        (enc.pooling, enc.normalize, enc.max_len),
        (Pooling::Mean, true, 256)
    );
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("minilm/sentences.json")).unwrap())
            .unwrap();
    let sentences = fx["sentences"].as_array().unwrap();
    assert_eq!(sentences.len(), 50);
    let mut texts = vec![];
    let mut truncated = 0;
    for s in sentences {
        let text = s["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(s["ids"].clone()).unwrap();
        let cut: Vec<u32> = serde_json::from_value(s["ids_truncated"].clone()).unwrap();
        assert_eq!(
            enc.tokenizer.encode_special(text).unwrap(),
            ids,
            "ids of {text:?}"
        );
        let t = enc.tokenize(text).unwrap();
        assert_eq!(t.ids, cut, "truncated ids of {text:?}");
        truncated += usize::from(t.dropped > 0);
        texts.push(text);
    }
    assert!(truncated >= 1, "the set has an over-long sentence");

    let want = safetensors::load(&fixture("minilm/embeddings.safetensors"), &Device::Cpu).unwrap()
        ["embeddings"]
        .to_vec2::<f32>()
        .unwrap();
    let batched = enc.embed(&texts, 16).unwrap();
    for (i, (got, want)) in batched.iter().zip(&want).enumerate() {
        let c = cosine(got, want);
        assert!(c >= 0.99999, "sentence {i}: cosine {c}");
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
    }
    // Padding does not change a sentence's embedding.
    for (i, text) in texts.iter().enumerate().step_by(7) {
        let alone = &enc.embed(&[text], 1).unwrap()[0];
        let d = alone
            .iter()
            .zip(&batched[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "sentence {i}: batched vs alone differ by {d}");
    }
}
