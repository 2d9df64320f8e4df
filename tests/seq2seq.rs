//! The encoder-decoder Transformer against transformers' `MarianMTModel` (fixture marian-tiny,
//! made by tests/fixtures/make_marian_fixtures.py): sinusoidal table, encoder output, decoder
//! states and logits with padding, cached decoding, and greedy generation.

mod common;
use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture};
use ferroformer::io::safetensors;
use ferroformer::models::seq2seq::{self, Seq2Seq};

fn load() -> (Seq2Seq, std::collections::BTreeMap<String, Tensor>) {
    let dev = Device::Cpu;
    let (model, _) = seq2seq::load_dir(&fixture("marian-tiny"), &dev).unwrap();
    let e = safetensors::load(&fixture("marian-tiny/expected.safetensors"), &dev).unwrap();
    (model, e)
}

#[test]
fn tiny_marian_matches_transformers() {
    let (model, e) = load();
    let table = ferroformer::nn::sinusoidal_table(
        64,
        32,
        ferroformer::nn::SinusoidLayout::Halves,
        &Device::Cpu,
    )
    .unwrap();
    assert_close("positions", &table, &e["embed_positions"], 0.0, 0.0);
    let src = e["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = Seq2Seq::source_mask(&e["attention_mask"]).unwrap();
    let tgt = e["decoder_input_ids"].to_dtype(DType::U32).unwrap();
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        let enc = model.encode(&src, Some(&mask), None).unwrap();
        assert_close("encoder", &enc, &e["encoder_last_hidden_state"], 1e-4, 1e-5);
        let h = model.decode(&tgt, &enc, Some(&mask), None, None).unwrap();
        assert_close("decoder", &h, &e["decoder_last_hidden_state"], 1e-4, 1e-5);
        let logits = model.logits(&h).unwrap();
        assert_close("logits", &logits, &e["logits"], 1e-4, 1e-5);
        // One token at a time through the caches gives the same logits.
        let mut caches = model.new_caches();
        let mut steps = vec![];
        for i in 0..tgt.dim(1).unwrap() {
            let t = tgt.narrow(1, i, 1).unwrap();
            let h = model
                .decode(&t, &enc, Some(&mask), Some(&mut caches), None)
                .unwrap();
            steps.push(model.logits(&h).unwrap());
        }
        let cached = Tensor::cat(&steps, 1).unwrap();
        assert_close("cached logits", &cached, &e["logits"], 1e-4, 1e-5);
    }
    ferroformer::nn::kernels::set_plain(false);
}
