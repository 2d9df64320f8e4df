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
