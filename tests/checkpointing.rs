//! Activation checkpointing (`train.gradient_checkpointing`) changes memory, not results: the
//! gradients of a training step with it equal those without, for every task the engine runs
//! (causal LM on GPT-2 and the Llama-style families, LoRA with adapter dropout, masked LM on
//! BERT, ViT classification, Marian sequence-to-sequence), with dropout on where the models
//! have it (the recomputed layers must draw the same masks), and for packed instruction rows.

mod common;
use candle_core::{Device, Tensor};
use common::{
    fixture, grey_shapes, letter_sound_lexicon, llama_tiny_base, small_corpus,
    tiny_bert_mlm_recipe, tiny_recipe, tiny_seq2seq_recipe, tiny_vit_recipe,
};
use ferroformer::nn::checkpoint;
use std::collections::BTreeMap;
use std::path::Path;

/// Both gradients are the same computation, so they agree to rounding: within 1e-6 of the
/// tensor's largest magnitude, or 1e-10 for gradients that are zero up to rounding (a key
/// projection's bias, which softmax's shift invariance cancels).
fn assert_same_grads(what: &str, a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: the same parameters have gradients"
    );
    assert!(!a.is_empty(), "{what}: some parameter trains");
    for (name, ga) in a {
        let gb = &b[name];
        let scale = ga
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = (ga - gb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-6 * scale + 1e-10,
            "{what}: {name} differs by {diff} (largest {scale})"
        );
    }
}

/// The first step's gradients (and loss) of `recipe` with `overrides`, with and without
/// checkpointing, each in its own run directory under `dir`.
fn step_gradients(dir: &Path, recipe: &str, overrides: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("recipe.toml");
    std::fs::write(&path, recipe).unwrap();
    let mut runs = vec![];
    for on in [false, true] {
        let mut ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        ov.push(format!("train.gradient_checkpointing={on}"));
        ov.push(format!(
            "train.out_dir={:?}",
            dir.join(format!("run-{on}")).display().to_string()
        ));
        let recipe = ferroformer::tasks::load_recipe(&path, &ov).unwrap();
        let mut trainer = ferroformer::tasks::prepare(recipe, false, &Device::Cpu).unwrap();
        let (acc, loss, _) = trainer.gradients().unwrap();
        assert_eq!(checkpoint::recomputed() > 0, on, "layers recomputed");
        runs.push((acc.grads().clone(), loss));
    }
    let what = format!("{} {overrides:?}", dir.display());
    assert_eq!(runs[0].1, runs[1].1, "{what}: the same loss");
    assert_same_grads(&what, &runs[0].0, &runs[1].0);
}

#[test]
fn causal_lm_gradients_equal_with_checkpointing() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, small_corpus(200)).unwrap();
    let recipe = tiny_recipe(&corpus, &d.path().join("unused"), 2);
    // GPT-2 with dropout 0.1 and two accumulated micro-batches.
    step_gradients(d.path(), &recipe, &[]);
    for arch in ["llama", "gemma2", "phi3", "qwen3"] {
        let sub = d.path().join(arch);
        let a = format!("model.architecture={arch:?}");
        step_gradients(
            &sub,
            &recipe,
            &[&a, "model.n_kv_head=1", "model.n_positions=128"],
        );
    }
    // LoRA with adapter dropout, and lower layers frozen under a trainable top.
    let sub = d.path().join("lora");
    let init = format!(
        "model.init={:?}",
        llama_tiny_base(&sub).display().to_string()
    );
    step_gradients(
        &sub,
        &recipe,
        &[
            &init,
            "peft.peft_type=\"LORA\"",
            "peft.r=4",
            "peft.lora_alpha=8",
            "peft.lora_dropout=0.2",
            "peft.target_modules=[\"q_proj\",\"v_proj\"]",
        ],
    );
    let sub = d.path().join("frozen");
    step_gradients(&sub, &recipe, &["train.freeze=[\"h.0\"]"]);
}

#[test]
fn masked_lm_image_and_seq2seq_gradients_equal_with_checkpointing() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, small_corpus(200)).unwrap();
    let unused = d.path().join("unused");
    let sub = d.path().join("bert");
    step_gradients(&sub, &tiny_bert_mlm_recipe(&corpus, &unused, 2), &[]);

    let images = d.path().join("shapes");
    grey_shapes(&images);
    let sub = d.path().join("vit");
    step_gradients(
        &sub,
        &tiny_vit_recipe(&images, &unused, 2),
        &["model.dropout=0.1"],
    );

    let lex = d.path().join("lex");
    letter_sound_lexicon(&lex);
    let sub = d.path().join("marian");
    step_gradients(
        &sub,
        &tiny_seq2seq_recipe(&lex, &unused, 2),
        &["model.dropout=0.1"],
    );
}

/// Packed instruction rows (the attention kept within each example) through the
/// checkpointed layers: Llama and GPT-2, the loss's gradients with and without.
#[test]
fn packed_rows_gradients_equal_with_checkpointing() {
    use ferroformer::objective::sft::{self, SftBatch, Tokenized};
    let dev = Device::Cpu;
    for dir in ["llama-tiny", "gpt2-tiny"] {
        let (model, store) = ferroformer::models::load_dir(&fixture(dir), &dev).unwrap();
        let exs: Vec<Tokenized> = (0..5)
            .map(|i| {
                let len = 4 + 3 * i;
                Tokenized {
                    ids: (0..len).map(|j| ((j * 7 + i * 13) % 90) as u32).collect(),
                    trained: (0..len).map(|j| j % 2 == 1 || j == len - 1).collect(),
                }
            })
            .collect();
        let lengths: Vec<usize> = exs.iter().map(|e| e.ids.len()).collect();
        let rows: Vec<Vec<&Tokenized>> = sft::pack_bfd(&lengths, 32)
            .iter()
            .map(|b| b.iter().map(|&i| &exs[i]).collect())
            .collect();
        let batch = SftBatch::new(&rows, true, 32, 0, &dev).unwrap();
        let mut runs = vec![];
        for on in [false, true] {
            let _guard = checkpoint::enable(on);
            let loss = sft::loss(&model, &batch, None, true).unwrap();
            let mut grads = loss.backward().unwrap();
            checkpoint::merge_param_grads(&mut grads).unwrap();
            assert_eq!(checkpoint::recomputed() > 0, on, "layers recomputed");
            let by_name: BTreeMap<String, Tensor> = store
                .trainable()
                .filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
                .collect();
            runs.push(by_name);
        }
        assert_same_grads(dir, &runs[0], &runs[1]);
    }
}

/// The switch is per thread and scoped: off by default, restored when the guard drops.
#[test]
fn checkpointing_is_scoped() {
    assert!(!checkpoint::active());
    {
        let _g = checkpoint::enable(true);
        assert!(checkpoint::active());
    }
    assert!(!checkpoint::active());
}
