//! The training engine: an interrupted and resumed run reproduces the uninterrupted run
//! exactly (same losses, same weights), and checkpoints are complete and rotated.

mod common;
use candle_core::Device;
use common::{
    grey_shapes, letter_sound_lexicon, small_corpus, tiny_bert_mlm_recipe, tiny_recipe,
    tiny_seq2seq_recipe, tiny_vit_recipe,
};
use ferroformer::train::metrics::read_records;
use ferroformer::train::{checkpoint, Outcome, Recipe, Trainer};
use std::path::Path;

fn losses(run: &Path) -> Vec<(u64, f64)> {
    read_records(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("loss")?.as_f64()?)))
        .collect()
}

/// Asserts two trainers hold bit-identical parameters.
fn assert_same_weights(a: &Trainer, b: &Trainer) {
    for (k, v) in a.store.vars() {
        let w = &b.store.vars()[k];
        let diff = (v.as_tensor() - w.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(
            diff.to_scalar::<f32>().unwrap(),
            0.0,
            "{k} differs after resume"
        );
    }
}

fn train(recipe: &str, resume: bool) -> Trainer {
    let r = Recipe::parse(recipe, &[], Path::new("test.toml")).unwrap();
    let mut t = ferroformer::tasks::prepare(r, resume, &Device::Cpu).unwrap();
    assert_eq!(t.run(false, &mut |_| {}).unwrap(), Outcome::Finished);
    t
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, small_corpus(400)).unwrap();

    // Uninterrupted: 12 steps (with dropout and 2-way gradient accumulation, so the dropout and
    // data streams both have to be restored).
    let a_dir = d.path().join("a");
    let a = train(&tiny_recipe(&corpus, &a_dir, 12), false);

    // Interrupted after 6 steps (same schedule: decay_steps is fixed), then resumed to 12.
    let b_dir = d.path().join("b");
    train(&tiny_recipe(&corpus, &b_dir, 6), false);
    let b = train(&tiny_recipe(&corpus, &b_dir, 12), true);

    let (la, lb) = (losses(&a_dir), losses(&b_dir));
    assert_eq!(la.len(), 12);
    assert_eq!(la, lb, "loss sequences differ");
    assert_eq!(
        (
            a.state.step,
            a.state.data_rng,
            a.state.dropout_rng,
            a.state.tokens_seen
        ),
        (
            b.state.step,
            b.state.data_rng,
            b.state.dropout_rng,
            b.state.tokens_seen
        )
    );
    assert_same_weights(&a, &b);
    // Loss fell, checkpoints rotated to the newest two, run dir is a model dir.
    assert!(la[11].1 < la[0].1, "{la:?}");
    let ck: Vec<usize> = checkpoint::list_checkpoints(&b_dir)
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(ck, vec![8, 12]);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "recipe.toml",
        "loss.png",
        "metrics.jsonl",
    ] {
        assert!(b_dir.join(f).exists(), "{f} missing");
    }
    for f in [
        "optimizer.safetensors",
        "trainer_state.json",
        "model.safetensors",
    ] {
        assert!(b_dir.join("checkpoint-12").join(f).exists(), "{f} missing");
    }
    // A fresh run refuses to overwrite an existing one.
    let r = Recipe::parse(&tiny_recipe(&corpus, &b_dir, 12), &[], Path::new("t.toml")).unwrap();
    let e = ferroformer::tasks::prepare(r, false, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
}

/// Llama (RMSNorm, SwiGLU, RoPE, grouped-query attention) trains through the same engine,
/// resumes exactly, and its run directory is a Hugging Face Llama directory.
#[test]
fn llama_trains_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, small_corpus(400)).unwrap();
    let set: Vec<String> = [
        "model.architecture=\"llama\"",
        "model.n_kv_head=1",
        "model.dropout=0.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = |dir: &Path, steps: usize, resume: bool| {
        let r =
            Recipe::parse(&tiny_recipe(&corpus, dir, steps), &set, Path::new("t.toml")).unwrap();
        let mut t = ferroformer::tasks::prepare(r, resume, &Device::Cpu).unwrap();
        assert_eq!(t.run(false, &mut |_| {}).unwrap(), Outcome::Finished);
        t
    };
    let a_dir = d.path().join("a");
    run(&a_dir, 8, false);
    let b_dir = d.path().join("b");
    run(&b_dir, 4, false);
    run(&b_dir, 8, true);
    let (la, lb) = (losses(&a_dir), losses(&b_dir));
    assert_eq!(la.len(), 8);
    assert_eq!(la, lb, "loss sequences differ");
    assert!(la[7].1 < la[0].1, "{la:?}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["num_key_value_heads"], 1);
    let p =
        ferroformer::infer::pretrained::PretrainedCausalLm::from_dir(&b_dir, &Device::Cpu).unwrap();
    assert_eq!(p.model.model_type(), "llama");
}

/// A tiny BERT trained with masked language modelling on a WordPiece vocabulary trained on the
/// corpus: the loss falls, validation reports masked-token accuracy, an interrupted and
/// resumed run equals the uninterrupted one (masks included), and the run directory is a
/// BertForMaskedLM directory that fill-mask loads.
#[test]
fn bert_mlm_trains_resumes_and_fills_masks() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    // Rotations of a fixed word cycle: every masked word is determined by its neighbours, so
    // a working bidirectional encoder learns it (MLM learns slowly: a few hundred steps).
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
        "lambda", "mu",
    ];
    let text: String = (0..3000)
        .map(|i| {
            let k = (i * 7 + i / 12) % 12;
            let line: Vec<&str> = words[k..].iter().chain(&words[..k]).copied().collect();
            format!("{}.\n", line.join(" "))
        })
        .collect();
    std::fs::write(&corpus, text).unwrap();
    let recipe = |out: &Path, steps: usize| tiny_bert_mlm_recipe(&corpus, out, steps);
    let a_dir = d.path().join("a");
    let a = train(&recipe(&a_dir, 400), false);
    let b_dir = d.path().join("b");
    train(&recipe(&b_dir, 200), false);
    let b = train(&recipe(&b_dir, 400), true);
    let (la, lb) = (losses(&a_dir), losses(&b_dir));
    assert_eq!(la.len(), 400);
    assert_eq!(la, lb, "loss sequences differ");
    assert_same_weights(&a, &b);
    let evals: Vec<serde_json::Value> = read_records(&a_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.get("val_accuracy").is_some())
        .collect();
    assert_eq!(evals.len(), 4);
    let acc = |r: &serde_json::Value| r["val_accuracy"].as_f64().unwrap();
    let loss = |r: &serde_json::Value| r["val_loss"].as_f64().unwrap();
    assert!(loss(&evals[3]) < loss(&evals[0]) - 0.2, "{evals:?}");
    assert!(acc(&evals[3]) > acc(&evals[0]) + 0.1, "{evals:?}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForMaskedLM");
    let fm = ferroformer::infer::fill_mask::FillMask::load(&a_dir, &Device::Cpu).unwrap();
    let out = fm.fill("alpha beta [MASK] delta epsilon.", 3).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 3);
    assert!(out[0][0].score >= out[0][1].score && out[0][1].score >= out[0][2].score);
    let tc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a_dir.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tc["mask_token"], "[MASK]");
}

/// A tiny encoder-decoder learns a letter-to-sound rule from a CMUdict-format lexicon: error
/// rates fall, an interrupted and resumed run equals the uninterrupted one, and the run
/// directory is a Marian directory that decodes.
#[test]
fn seq2seq_trains_resumes_and_decodes() {
    let d = tempfile::tempdir().unwrap();
    let lex = d.path().join("lex");
    letter_sound_lexicon(&lex);
    let recipe = |out: &Path, steps: usize| tiny_seq2seq_recipe(&lex, out, steps);
    let a_dir = d.path().join("a");
    let a = train(&recipe(&a_dir, 400), false);
    let b_dir = d.path().join("b");
    train(&recipe(&b_dir, 200), false);
    let b = train(&recipe(&b_dir, 400), true);
    let (la, lb) = (losses(&a_dir), losses(&b_dir));
    assert_eq!(la.len(), 400);
    assert!(la[399].1 < la[0].1 - 1.0, "{la:?}");
    assert_eq!(la, lb, "loss sequences differ");
    assert_same_weights(&a, &b);
    let evals: Vec<serde_json::Value> = read_records(&a_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.get("val_wer").is_some())
        .collect();
    assert_eq!(evals.len(), 4);
    // The rule is learned: held-out words (10% with a second pronunciation, either counts)
    // come out right.
    let last = &evals[3];
    assert!(
        last["val_wer"].as_f64().unwrap() < 0.1 && last["val_per"].as_f64().unwrap() < 0.05,
        "{evals:?}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "MarianMTModel");
    let (model, _) = ferroformer::models::marian::load_dir(&a_dir, &Device::Cpu).unwrap();
    assert_eq!(model.config.decoder_vocab_size, Some(3 + 9));
    assert!(a_dir.join("target_tokenizer.json").exists());
}

/// A tiny ViT learns three kinds of 8x8 grey images from class folders (bright top, bottom or
/// left half, with noise) through the engine: validation accuracy each eval, a resumed run
/// equal to the uninterrupted one (epoch order and augmentation included), and a run
/// directory transformers reads as `ViTForImageClassification` with its preprocessing and the
/// confusion matrix.
#[test]
fn vit_trains_resumes_and_classifies() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("shapes");
    grey_shapes(&data);
    let recipe = |out: &Path, steps: usize| tiny_vit_recipe(&data, out, steps);
    let a_dir = d.path().join("a");
    let a = train(&recipe(&a_dir, 300), false);
    let b_dir = d.path().join("b");
    train(&recipe(&b_dir, 150), false);
    let b = train(&recipe(&b_dir, 300), true);
    assert_eq!(losses(&a_dir), losses(&b_dir), "loss sequences differ");
    assert_same_weights(&a, &b);
    let evals: Vec<serde_json::Value> = read_records(&a_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.get("val_accuracy").is_some())
        .collect();
    assert_eq!(evals.len(), 2);
    assert!(
        evals[1]["val_accuracy"].as_f64().unwrap() > 0.95,
        "{evals:?}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "ViTForImageClassification");
    assert_eq!(cfg["id2label"]["1"], "left");
    for f in [
        "preprocessor_config.json",
        "confusion.png",
        "confusion.json",
        "data/split.json",
    ] {
        assert!(a_dir.join(f).exists(), "{f} missing");
    }
    let (model, _) = ferroformer::models::vit::load_dir(&a_dir, &Device::Cpu).unwrap();
    let pre =
        ferroformer::data::images::Preprocessor::load(&a_dir.join("preprocessor_config.json"), 1)
            .unwrap();
    let top = ferroformer::infer::classify::classify_files(
        &model,
        &pre,
        &[data.join("top/0.png").as_path()],
        1,
    )
    .unwrap();
    assert_eq!(top[0].top[0].label, "top");
}
