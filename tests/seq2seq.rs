//! The encoder-decoder Transformer against transformers' `MarianMTModel` (fixture marian-tiny,
//! made by tests/fixtures/make_marian_fixtures.py): sinusoidal table, encoder output, decoder
//! states and logits with padding, cached decoding, and greedy generation.

mod common;
use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture};
use ferroformer::io::safetensors;
use ferroformer::models::marian::{self, Marian};

fn load() -> (Marian, std::collections::BTreeMap<String, Tensor>) {
    let dev = Device::Cpu;
    let (model, _) = marian::load_dir(&fixture("marian-tiny"), &dev).unwrap();
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
    let mask = Marian::source_mask(&e["attention_mask"]).unwrap();
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

/// The fixtures' decoding settings, 10 new tokens at most: Marian's processors (pad banned, end
/// forced at the limit, renormalised) and none.
fn marian_and_plain(
    mean: ferroformer::infer::translate::EnsembleMean,
) -> (
    ferroformer::infer::translate::DecodeOptions,
    ferroformer::infer::translate::DecodeOptions,
) {
    let marian = ferroformer::infer::translate::DecodeOptions {
        max_new_tokens: 10,
        num_beams: 1,
        ban_pad: true,
        forced_eos: true,
        renormalize: true,
        ensemble_mean: mean,
        ..Default::default()
    };
    let plain = ferroformer::infer::translate::DecodeOptions {
        ban_pad: false,
        forced_eos: false,
        renormalize: false,
        ..marian.clone()
    };
    (marian, plain)
}

/// Greedy and beam search against transformers' `generate` on the same inputs: tokens (and
/// beam scores) with Marian's processors (pad banned, end forced at the limit, renormalised)
/// and without; early stopping on and off; beam 1 equals greedy; beam search never scores
/// below greedy.
#[test]
fn decoding_matches_transformers_generate() {
    use ferroformer::infer::translate::{decode, decode_beam, DecodeOptions};
    let (model, e) = load();
    let src = e["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &e["attention_mask"];
    let rows = |name: &str| -> Vec<Vec<u32>> {
        e[name]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    };
    let (marian, plain) = marian_and_plain(Default::default());
    let check = |opts: &DecodeOptions, name: &str, fill: u32| {
        let got = decode(&model, &src, Some(mask), opts).unwrap();
        let want = rows(name);
        for (g, w) in got.iter().zip(&want) {
            let n = g.tokens.len();
            assert_eq!(g.tokens[..], w[1..1 + n], "{name}: {got:?} vs {want:?}");
            assert!(w[1 + n..].iter().all(|&t| t == fill), "{name}: {w:?}");
        }
        got
    };
    let greedy = check(&marian, "generated", 0);
    check(&plain, "generated_plain", 0);
    let beam = |base: &DecodeOptions, early: bool| DecodeOptions {
        num_beams: 4,
        early_stopping: early,
        ..base.clone()
    };
    for (opts, name) in [
        (beam(&marian, false), "beam4"),
        (beam(&plain, false), "beam4_plain"),
        (beam(&marian, true), "beam4_es"),
    ] {
        let got = check(&opts, &format!("generated_{name}"), 1);
        let scores: Vec<f32> = e[&format!("sequences_scores_{name}")].to_vec1().unwrap();
        for (g, s) in got.iter().zip(&scores) {
            assert!(
                (g.score - s).abs() < 1e-4,
                "{name}: score {} vs {s}",
                g.score
            );
        }
    }
    // Beam 1 is greedy; a wider beam never finds a worse (length-normalised) hypothesis.
    let one = decode(&model, &src, Some(mask), &beam(&marian, false)).unwrap();
    let b1 = decode_beam(
        &[&model],
        &src,
        Some(mask),
        &DecodeOptions {
            num_beams: 1,
            ..marian.clone()
        },
    )
    .unwrap();
    assert_eq!(
        b1.iter().map(|h| &h.tokens).collect::<Vec<_>>(),
        greedy.iter().map(|h| &h.tokens).collect::<Vec<_>>()
    );
    for (bm, g) in one.iter().zip(&greedy) {
        let greedy_norm = g.score / g.tokens.len() as f32;
        assert!(
            bm.score >= greedy_norm - 1e-5,
            "{} < {greedy_norm}",
            bm.score
        );
    }
}

/// Two models as one ensemble (marian-tiny and marian-tiny-b, another depth) against the
/// PyTorch reference in marian-tiny-b/ensemble.safetensors, for both ways of combining them
/// (mean probability, mean log-probability): teacher-forced log-probabilities, greedy tokens and
/// scores with and without Marian's processors. A model ensembled with itself decodes as alone;
/// ensemble beam 1 equals greedy, beam 4 never scores below it and its score is the
/// teacher-forced ensemble score of its tokens; models with other vocabularies are refused.
#[test]
fn ensemble_decoding_matches_pytorch() {
    use ferroformer::infer::translate::{
        decode, decode_beam, decode_ensemble, log_probs, DecodeOptions, EnsembleMean,
    };
    let dev = Device::Cpu;
    let (a, e) = load();
    let (b, _) = marian::load_dir(&fixture("marian-tiny-b"), &dev).unwrap();
    let x = safetensors::load(&fixture("marian-tiny-b/ensemble.safetensors"), &dev).unwrap();
    let src = e["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &e["attention_mask"];
    let tgt = e["decoder_input_ids"].to_dtype(DType::U32).unwrap();
    let ens = [&a, &b];
    let rows = |t: &Tensor| -> Vec<Vec<u32>> { t.to_dtype(DType::U32).unwrap().to_vec2().unwrap() };
    for (mean, key) in [
        (EnsembleMean::Probability, "prob"),
        (EnsembleMean::Log, "log"),
    ] {
        let lp = log_probs(&ens, &src, Some(mask), &tgt, mean).unwrap();
        assert_close(key, &lp, &x[&format!("log_probs_{key}")], 1e-4, 1e-5);
        let (marian, plain) = marian_and_plain(mean);
        for (opts, name) in [(&marian, ""), (&plain, "_plain")] {
            let got = decode_ensemble(&ens, &src, Some(mask), opts).unwrap();
            let want = rows(&x[&format!("generated_{key}{name}")]);
            let scores: Vec<f32> = x[&format!("scores_{key}{name}")].to_vec1().unwrap();
            for ((g, w), s) in got.iter().zip(&want).zip(&scores) {
                let n = g.tokens.len();
                assert_eq!(
                    g.tokens[..],
                    w[1..1 + n],
                    "{key}{name}: {got:?} vs {want:?}"
                );
                assert!(w[1 + n..].iter().all(|&t| t == 0), "{w:?}");
                assert!((g.score - s).abs() <= 1e-4 * s.abs(), "{} vs {s}", g.score);
            }
        }
        // The fixture's ensemble decides unlike either model alone.
        for tag in ["a", "b"] {
            assert_ne!(
                rows(&x[&format!("generated_{tag}")]),
                rows(&x[&format!("generated_{key}")]),
                "{tag}"
            );
        }
        // A model with itself: the same tokens and scores as alone.
        let alone = decode(&a, &src, Some(mask), &marian).unwrap();
        let twice = decode_ensemble(&[&a, &a], &src, Some(mask), &marian).unwrap();
        for (t, o) in twice.iter().zip(&alone) {
            assert_eq!(t.tokens, o.tokens);
            assert!((t.score - o.score).abs() <= 1e-5 * o.score.abs().max(1.0));
        }
        // Beam search over the ensemble: beam 1 is its greedy.
        let greedy = decode_ensemble(&ens, &src, Some(mask), &marian).unwrap();
        let opts = DecodeOptions {
            num_beams: 1,
            ..marian.clone()
        };
        let b1 = decode_beam(&ens, &src, Some(mask), &opts).unwrap();
        assert_eq!(
            b1.iter().map(|h| &h.tokens).collect::<Vec<_>>(),
            greedy.iter().map(|h| &h.tokens).collect::<Vec<_>>()
        );
        let beam4 = DecodeOptions {
            num_beams: 4,
            ..plain.clone()
        };
        let greedy_plain = decode_ensemble(&ens, &src, Some(mask), &plain).unwrap();
        let best = decode_ensemble(&ens, &src, Some(mask), &beam4).unwrap();
        for (r, (bm, g)) in best.iter().zip(&greedy_plain).enumerate() {
            assert!(bm.score >= g.score / g.tokens.len() as f32 - 1e-5);
            // Its score recomputed teacher-forced from the full (uncached) ensemble log-probs.
            let mut dec = vec![0u32];
            dec.extend(&bm.tokens[..bm.tokens.len() - 1]);
            let dec = Tensor::new(dec.as_slice(), &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let one_src = src.narrow(0, r, 1).unwrap();
            let one_mask = mask.narrow(0, r, 1).unwrap();
            let lp: Vec<Vec<f32>> = log_probs(&ens, &one_src, Some(&one_mask), &dec, mean)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            let total: f32 = bm
                .tokens
                .iter()
                .zip(&lp)
                .map(|(&t, row)| row[t as usize])
                .sum();
            let want = total / bm.tokens.len() as f32;
            assert!(
                (bm.score - want).abs() <= 1e-4 * want.abs(),
                "{} vs {want}",
                bm.score
            );
        }
    }
    // Another target vocabulary cannot join.
    let (g2p, _) = marian::load_dir(&fixture("marian-tiny-g2p"), &dev).unwrap();
    let opts = DecodeOptions::default();
    let err = decode_ensemble(&[&a, &g2p], &src, Some(mask), &opts).unwrap_err();
    assert!(err.to_string().contains("vocabular"), "{err}");
}

/// Bidirectional rescoring: `sequence_log_probs` against the log-softmax of transformers'
/// logits (fixture marian-tiny, its labels); the n-best lists of beam search (best first, the
/// best as `decode_beam`'s, each score the teacher-forced one / length); and the winner of
/// `decode_ids_bidirectional` recomputed by hand (the candidate of the two n-best lists, the
/// backward one turned around, with the highest mean of the models' sequence log-probabilities,
/// each model reading it in its own direction). One direction alone is plain decoding.
#[test]
fn bidirectional_rescoring_picks_the_best_mean_candidate() {
    use ferroformer::infer::translate::{
        decode_beam, decode_ids, decode_ids_bidirectional, decode_ids_nbest, decode_nbest,
        sequence_log_probs,
    };
    let dev = Device::Cpu;
    let (a, e) = load();
    let (b, _) = marian::load_dir(&fixture("marian-tiny-b"), &dev).unwrap();
    let eos = a.config.eos_token_id;
    let ids: Vec<Vec<u32>> = e["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let lens: Vec<i64> = e["attention_mask"].sum(1).unwrap().to_vec1().unwrap();
    let srcs: Vec<Vec<u32>> = ids
        .iter()
        .zip(&lens)
        .map(|(r, &n)| r[..n as usize].to_vec())
        .collect();
    // Against transformers: the fixture's labels (-100 at padding) under its logits.
    let labels: Vec<Vec<i64>> = e["labels"].to_vec2().unwrap();
    let logits: Vec<Vec<Vec<f32>>> = e["logits"].to_vec3().unwrap();
    let targets: Vec<Vec<u32>> = labels
        .iter()
        .map(|r| r.iter().filter(|&&l| l >= 0).map(|&l| l as u32).collect())
        .collect();
    let got = sequence_log_probs(&a, &srcs, &targets).unwrap();
    for (i, t) in targets.iter().enumerate() {
        let want: f32 = t
            .iter()
            .zip(&logits[i])
            .map(|(&y, row)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
                row[y as usize] - lse
            })
            .sum();
        assert!(
            (got[i] - want).abs() <= 1e-4 * want.abs(),
            "{} vs {want}",
            got[i]
        );
    }
    let (_, plain) = marian_and_plain(Default::default());
    let opts = ferroformer::infer::translate::DecodeOptions {
        num_beams: 4,
        ..plain
    };
    let with_eos = |t: &[u32]| t.iter().copied().chain([eos]).collect::<Vec<u32>>();
    let turned = |t: &[u32]| t.iter().rev().copied().collect::<Vec<u32>>();
    // n-best lists: best first, the best is decode_beam's, scores are sequence log-probs / length.
    let src = e["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &e["attention_mask"];
    let nbest = decode_nbest(&[&a], &src, Some(mask), &opts).unwrap();
    let best = decode_beam(&[&a], &src, Some(mask), &opts).unwrap();
    for (r, (n, bm)) in nbest.iter().zip(&best).enumerate() {
        assert!(n.len() > 1 && n.len() <= 4, "{n:?}");
        assert_eq!(n[0], *bm);
        assert!(n.windows(2).all(|w| w[0].score >= w[1].score), "{n:?}");
        for h in n {
            let lp = sequence_log_probs(
                &a,
                std::slice::from_ref(&srcs[r]),
                std::slice::from_ref(&h.tokens),
            )
            .unwrap()[0];
            let want = lp / h.tokens.len() as f32;
            assert!(
                (h.score - want).abs() <= 1e-4 * want.abs(),
                "{} vs {want}",
                h.score
            );
        }
    }
    // a left to right, b right to left (b was not trained so; the arithmetic is the same).
    let fwd = decode_ids_nbest(&[&a], &srcs, &opts).unwrap();
    let bwd = decode_ids_nbest(&[&b], &srcs, &opts).unwrap();
    let got = decode_ids_bidirectional(&[&a], &[&b], &srcs, &opts).unwrap();
    let mut differs = false;
    for (r, src) in srcs.iter().enumerate() {
        let mut cands: Vec<Vec<u32>> = fwd[r].iter().map(|(t, _)| t.clone()).collect();
        for (t, _) in &bwd[r] {
            if !cands.contains(&turned(t)) {
                cands.push(turned(t));
            }
        }
        let score = |c: &Vec<u32>| {
            let one = |m: &Marian, t: Vec<u32>| {
                sequence_log_probs(m, std::slice::from_ref(src), &[t]).unwrap()[0]
            };
            (one(&a, with_eos(c)) + one(&b, with_eos(&turned(c)))) / 2.0 / (c.len() + 1) as f32
        };
        let scores: Vec<f32> = cands.iter().map(score).collect();
        let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            (got[r].1 - top).abs() <= 1e-4 * top.abs(),
            "{} vs {top}",
            got[r].1
        );
        let i = cands
            .iter()
            .position(|c| *c == got[r].0)
            .expect("a candidate wins");
        assert!((scores[i] - top).abs() <= 1e-5 * top.abs());
        differs |= got[r].0 != fwd[r][0].0;
    }
    assert!(
        differs,
        "the fixture should show rescoring change an output"
    );
    // One direction alone: plain decoding (the backward one turned around).
    assert_eq!(
        decode_ids_bidirectional(&[&a], &[], &srcs, &opts).unwrap(),
        decode_ids(&[&a], &srcs, &opts).unwrap()
    );
    let back = decode_ids_bidirectional(&[], &[&b], &srcs, &opts).unwrap();
    for (g, w) in back.iter().zip(decode_ids(&[&b], &srcs, &opts).unwrap()) {
        assert_eq!(g.0, turned(&w.0));
        assert_eq!(g.1, w.1);
    }
}

/// The teacher-forced loss against transformers' `MarianMTModel(..., labels=...)` (-100 at a
/// padded position) and PyTorch's `cross_entropy(..., label_smoothing=0.1)`; our padded batch
/// of the same pairs gives the same decoder inputs.
#[test]
fn loss_matches_transformers_with_label_smoothing() {
    use ferroformer::objective::seq2seq::{pad_batch, pair_loss, Pair, PairBatch};
    let (model, e) = load();
    let labels: Vec<Vec<i64>> = e["labels"].to_vec2().unwrap();
    let batch = PairBatch {
        src: e["input_ids"].to_dtype(DType::U32).unwrap(),
        src_mask: e["attention_mask"].to_dtype(DType::U32).unwrap(),
        dec_in: e["decoder_input_ids"].to_dtype(DType::U32).unwrap(),
        labels: labels
            .iter()
            .flatten()
            .map(|&l| (l >= 0).then_some(l as u32))
            .collect(),
    };
    for (eps, key) in [(0.0, "loss"), (0.1, "loss_ls01")] {
        let (loss, n) = pair_loss(&model, &batch, eps, None).unwrap();
        assert_eq!(n, 9);
        let got = loss.to_scalar::<f32>().unwrap();
        let want = e[key].to_vec1::<f32>().unwrap()[0];
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{key}: {got} vs {want}"
        );
    }
    // The same pairs through pad_batch.
    let src: Vec<Vec<u32>> = e["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mask: Vec<Vec<u32>> = e["attention_mask"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let pairs: Vec<Pair> = (0..2)
        .map(|i| Pair {
            src: src[i]
                .iter()
                .zip(&mask[i])
                .filter(|(_, &m)| m == 1)
                .map(|(&s, _)| s)
                .collect(),
            tgt: labels[i]
                .iter()
                .filter(|&&l| l >= 0)
                .map(|&l| l as u32)
                .collect(),
        })
        .collect();
    let ours = pad_batch(&[&pairs[0], &pairs[1]], 0, 0, &Device::Cpu).unwrap();
    assert_eq!(
        ours.dec_in.to_vec2::<u32>().unwrap(),
        e["decoder_input_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    );
    assert_eq!(ours.labels, batch.labels);
}

/// One training step's loss (label smoothing 0.1) and the gradient of every trainable tensor
/// against PyTorch autograd through transformers' `MarianMTModel` (make_marian_fixtures.py
/// --only-grads): the shared-vocabulary fixture, and marian-tiny-g2p, the G2P recipe's layout
/// (separate source and target embeddings, target embedding tied to the output, ReLU).
#[test]
fn training_gradients_match_pytorch() {
    use ferroformer::objective::seq2seq::{pair_loss, PairBatch};
    let dev = Device::Cpu;
    for (dir, expected) in [
        ("marian-tiny", "marian-tiny/grads.safetensors"),
        ("marian-tiny-g2p", "marian-tiny-g2p/expected.safetensors"),
    ] {
        let (model, store) = marian::load_dir(&fixture(dir), &dev).unwrap();
        let inputs = safetensors::load(&fixture("marian-tiny/expected.safetensors"), &dev).unwrap();
        let e = safetensors::load(&fixture(expected), &dev).unwrap();
        let labels_t = e.get("labels").unwrap_or(&inputs["labels"]);
        let dec_in = e
            .get("decoder_input_ids")
            .unwrap_or(&inputs["decoder_input_ids"]);
        let labels: Vec<i64> = labels_t.flatten_all().unwrap().to_vec1().unwrap();
        let batch = PairBatch {
            src: inputs["input_ids"].to_dtype(DType::U32).unwrap(),
            src_mask: inputs["attention_mask"].to_dtype(DType::U32).unwrap(),
            dec_in: dec_in.to_dtype(DType::U32).unwrap(),
            labels: labels
                .iter()
                .map(|&l| (l >= 0).then_some(l as u32))
                .collect(),
        };
        // The fused kernels (attention over padded sources among them) and the plain
        // composition they stand beside.
        for plain in [false, true] {
            ferroformer::nn::kernels::set_plain(plain);
            let (loss, n) = pair_loss(&model, &batch, 0.1, None).unwrap();
            assert_eq!(n, 9);
            let got = loss.to_scalar::<f32>().unwrap();
            let want = e["train_loss"].to_vec1::<f32>().unwrap()[0];
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "{dir} (plain {plain}) loss {got} vs {want}"
            );
            let grads = loss.backward().unwrap();
            let mut n = 0;
            for (name, var) in store.vars() {
                let want = &e[&format!("grad.{name}")];
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{dir}: no gradient reached {name}"));
                // Absolute floor relative to the gradient's scale; the key-projection bias has
                // a zero gradient in exact arithmetic (softmax ignores a constant shift).
                assert_close(
                    &format!("{dir} (plain {plain}) grad {name}"),
                    g,
                    want,
                    1e-4,
                    (1e-5 * common::max_abs(want)).max(1e-6),
                );
                n += 1;
            }
            // transformers 5 leaves the loaded sinusoid tables trainable; here they stay fixed.
            let saved = e
                .keys()
                .filter(|k| k.starts_with("grad.") && !k.contains("embed_positions"))
                .count();
            assert_eq!(n, saved, "{dir}: every trainable tensor compared");
        }
        ferroformer::nn::kernels::set_plain(false);
    }
}
