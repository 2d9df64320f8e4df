//! Fine-tuning: freezing (gradients and AdamW steps of a partly frozen model against PyTorch
//! with `requires_grad=False`), sequence classification heads against transformers'
//! `*ForSequenceClassification`, classification metrics against scikit-learn, and the engine
//! fine-tuning a classifier with a frozen encoder. Fixtures: tests/fixtures/
//! make_finetune_fixtures.py.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, max_abs};
use ferroformer::io::safetensors;
use ferroformer::models::sequence_classifier::{self, Pooling};
use ferroformer::models::{self, CausalModel};
use ferroformer::peft::{frozen_names, FreezeSpec};
use ferroformer::train::{AdamW, AdamWConfig, GradAccumulator};
use std::collections::BTreeMap;

fn scalar(t: &Tensor) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64
}

/// Gradient tolerance: 1e-4 relative with an absolute floor at 1e-5 of the tensor's scale
/// (entries are sums of many small terms).
fn assert_grad(what: &str, got: &Tensor, want: &Tensor) {
    assert_close(what, got, want, 1e-4, (1e-5 * max_abs(want)).max(1e-7));
}

#[test]
fn partly_frozen_llama_matches_pytorch_requires_grad_false() {
    let dev = Device::Cpu;
    let e = safetensors::load(&fixture("llama-tiny/frozen.safetensors"), &dev).unwrap();
    let x = e["x"].to_dtype(DType::U32).unwrap();
    let y = e["y"].to_dtype(DType::U32).unwrap();
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        let (model, mut store) = models::load_dir(&fixture("llama-tiny"), &dev).unwrap();
        let before = store.tensors();
        let names: Vec<&str> = before.keys().map(String::as_str).collect();
        let spec = FreezeSpec {
            freeze: vec![
                "embed_tokens".into(),
                "layers.0".into(),
                "*input_layernorm*".into(),
            ],
            train_only: vec![],
        };
        let frozen = frozen_names(&names, &spec).unwrap();
        assert_eq!(frozen.len(), 11);
        store.freeze(&frozen).unwrap();
        let model = CausalModel::new(&model.config(), &mut store).unwrap();
        let trainable: Vec<String> = store.trainable().map(|(k, _)| k.clone()).collect();
        let want_grads: Vec<String> = e
            .keys()
            .filter_map(|k| k.strip_prefix("grad.").map(str::to_string))
            .collect();
        assert_eq!(trainable, want_grads);
        let count = store.trainable_count();
        assert_eq!(
            count.trainable_params,
            trainable
                .iter()
                .map(|k| store.vars()[k].elem_count())
                .sum::<usize>()
        );

        let mut opt = AdamW::new(AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        });
        let losses: Vec<f32> = e["step_losses"].to_vec1().unwrap();
        for (step, &want_loss) in losses.iter().enumerate() {
            let loss = ferroformer::objective::CausalLm::loss(&model, &x, &y, None).unwrap();
            let got = loss.to_scalar::<f32>().unwrap();
            assert!(
                (got - want_loss).abs() <= 1e-5 * want_loss.abs(),
                "step {step} loss {got} vs {want_loss} (plain {plain})"
            );
            let mut acc = GradAccumulator::default();
            acc.add(&store, &loss.backward().unwrap()).unwrap();
            // Gradients exist for the trainable parameters only.
            let keys: Vec<&String> = acc.grads().keys().collect();
            assert_eq!(keys, trainable.iter().collect::<Vec<_>>());
            if step == 0 {
                assert!((got as f64 - scalar(&e["loss"])).abs() < 1e-5 * scalar(&e["loss"]));
                for (name, g) in acc.grads() {
                    assert_grad(
                        &format!("grad {name} (plain {plain})"),
                        g,
                        &e[&format!("grad.{name}")],
                    );
                }
            }
            opt.step(&store, acc.grads(), 1e-2, 1.0).unwrap();
        }
        // Frozen parameters are bit-identical; the others follow PyTorch's AdamW.
        for (name, var) in store.vars() {
            let now = var.as_tensor();
            if frozen.contains(name) {
                let a: Vec<f32> = now.flatten_all().unwrap().to_vec1().unwrap();
                let b: Vec<f32> = before[name].flatten_all().unwrap().to_vec1().unwrap();
                assert!(a == b, "frozen {name} changed (plain {plain})");
            } else {
                assert_close(
                    &format!("after {name} (plain {plain})"),
                    now,
                    &e[&format!("after.{name}")],
                    1e-4,
                    // Two steps of lr 1e-2: 1e-5 is a thousandth of a step.
                    1e-5,
                );
            }
        }
        // The optimizer holds moments for the trainable parameters only.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        opt.save(&path, &store).unwrap();
        let saved = safetensors::load(&path, &dev).unwrap();
        let mut moment_of: Vec<String> = saved
            .keys()
            .filter_map(|k| k.strip_suffix(".exp_avg").map(str::to_string))
            .collect();
        moment_of.sort();
        assert_eq!(moment_of, trainable);
        assert_eq!(saved.len(), 2 * trainable.len());
    }
    ferroformer::nn::kernels::set_plain(false);
}

/// Loads a `*ForSequenceClassification` fixture and checks logits, loss and every gradient.
fn check_seqcls(name: &str, pooling: Option<Pooling>, logits_key: &str, grads: bool) {
    let dev = Device::Cpu;
    let e = safetensors::load(&fixture(&format!("{name}/expected.safetensors")), &dev).unwrap();
    let ids = e["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = e["attention_mask"].to_dtype(DType::U32).unwrap();
    let labels: Vec<u32> = e["labels"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        let (model, store) =
            sequence_classifier::load_dir(&fixture(name), &dev, None, pooling, 0).unwrap();
        let logits = model.logits(&ids, &mask, None).unwrap();
        assert_close(
            &format!("{name} {logits_key} (plain {plain})"),
            &logits,
            &e[logits_key],
            1e-4,
            1e-5,
        );
        if !grads {
            continue;
        }
        let rows: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        let lens: Vec<u32> = mask.sum(1).unwrap().to_vec1().unwrap();
        let seqs: Vec<&[u32]> = rows
            .iter()
            .zip(&lens)
            .map(|(r, &n)| &r[..n as usize])
            .collect();
        let (loss, _) =
            ferroformer::infer::classify::text_loss(&model, &seqs, &labels, 0.0, None).unwrap();
        let want = scalar(&e["loss"]);
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{name} loss {got} vs {want}"
        );
        let g = loss.backward().unwrap();
        let mut n = 0;
        for (k, var) in store.vars() {
            let want = &e[&format!("grad.{k}")];
            match g.get(var.as_tensor()) {
                Some(got) => assert_grad(&format!("{name} grad {k} (plain {plain})"), got, want),
                // Parameters the loss does not reach (embedding rows never used are still
                // reached; only an unused pooler is not) must have zero gradient in PyTorch.
                None => assert_eq!(max_abs(want), 0.0, "{name}: no gradient for {k}"),
            }
            n += 1;
        }
        assert_eq!(n, e.keys().filter(|k| k.starts_with("grad.")).count());
    }
    ferroformer::nn::kernels::set_plain(false);
}

#[test]
fn bert_sequence_classification_matches_transformers() {
    check_seqcls("bert-tiny-seqcls", None, "logits", true);
    // Mean pooling (sentence-transformers' way) over the same weights, by hand in PyTorch.
    check_seqcls(
        "bert-tiny-seqcls",
        Some(Pooling::Mean),
        "mean_logits",
        false,
    );
}

#[test]
fn decoder_sequence_classification_matches_transformers() {
    check_seqcls("llama-tiny-seqcls", None, "logits", true);
    check_seqcls("gpt2-tiny-seqcls", None, "logits", true);
}

#[test]
fn classifier_directories_round_trip() {
    let dev = Device::Cpu;
    for name in ["bert-tiny-seqcls", "llama-tiny-seqcls", "gpt2-tiny-seqcls"] {
        let (model, store) =
            sequence_classifier::load_dir(&fixture(name), &dev, None, None, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        sequence_classifier::save_dir(dir.path(), &model, &store).unwrap();
        let (again, store2) =
            sequence_classifier::load_dir(dir.path(), &dev, None, None, 0).unwrap();
        assert_eq!(again.labels, model.labels);
        assert_eq!(again.pooling, model.pooling);
        let a: BTreeMap<String, Tensor> = store.tensors();
        let b: BTreeMap<String, Tensor> = store2.tensors();
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        let cfg: serde_json::Value =
            ferroformer::io::read_json(&dir.path().join("config.json")).unwrap();
        let arch = cfg["architectures"][0].as_str().unwrap();
        assert!(arch.ends_with("ForSequenceClassification"), "{arch}");
        // A label the classifier does not know is an error naming its classes.
        let bad = vec!["neg".to_string(), "sarcastic".to_string()];
        let e = sequence_classifier::load_dir(dir.path(), &dev, Some(&bad), None, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sarcastic") && e.contains("config.json"), "{e}");
    }
}

#[test]
fn metrics_match_scikit_learn() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("metrics.json")).unwrap()).unwrap();
    for c in cases {
        let nums = |k: &str| -> Vec<f64> {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let y_true: Vec<u32> = nums("y_true").iter().map(|&v| v as u32).collect();
        let y_pred: Vec<usize> = nums("y_pred").iter().map(|&v| v as usize).collect();
        let classes: Vec<String> = nums("labels").iter().map(|v| v.to_string()).collect();
        let s = ferroformer::infer::classify::scores(&y_pred, &y_true, classes);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.accuracy, c["accuracy"].as_f64().unwrap()));
        assert!(close(s.macro_f1, c["macro_f1"].as_f64().unwrap()));
        for (k, got) in [
            ("f1", &s.f1),
            ("precision", &s.precision),
            ("recall", &s.recall),
        ] {
            for (a, b) in got.iter().zip(nums(k)) {
                assert!(close(*a, b), "{k}: {a} vs {b}");
            }
        }
        let want: Vec<Vec<usize>> = serde_json::from_value(c["confusion"].clone()).unwrap();
        assert_eq!(s.confusion, want);
    }
}

mod cli {
    use super::common::fixture;
    use super::common::{fails_with, ff, stdout_of as run_ok};
    use std::path::Path;

    /// 80 short reviews over the tiny fixture vocabulary: "good"/"happy" ones are pos,
    /// "bad"/"sad" ones neg, with filler words drawn by a fixed rule.
    fn reviews(path: &Path) {
        let fill = ["the", "cat", "dog", "day"];
        let mut s = String::new();
        for i in 0..80 {
            let (label, word) = match i % 4 {
                0 => ("pos", "good"),
                1 => ("neg", "bad"),
                2 => ("pos", "happy"),
                _ => ("neg", "sad"),
            };
            let a = fill[(i * 7) % fill.len()];
            let b = fill[(i * 3 + 1) % fill.len()];
            s += &format!("__label__{label} {a} {word} {b} .\n");
        }
        std::fs::write(path, s).unwrap();
    }

    fn recipe(data: &Path, out: &Path) -> String {
        format!(
            r#"name = "tiny-classify"
objective = "classify"
[data]
corpus = [{data:?}]
folds = 2
split_seed = 3
[model]
init = {init:?}
architecture = "bert"
pooling = "mean"
[train]
out_dir = {out:?}
steps = 100
batch_size = 8
context = 16
lr = 2e-2
min_lr = 2e-3
warmup_steps = 2
weight_decay = 0.0
eval_interval = 20
log_interval = 5
seed = 5
"#,
            init = fixture("bert-tiny-fillmask")
        )
    }

    #[test]
    fn finetune_a_classifier_with_a_frozen_encoder() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("reviews.txt");
        reviews(&data);
        let out = dir.path().join("run");
        let r = dir.path().join("r.toml");
        std::fs::write(&r, recipe(&data, &out)).unwrap();
        let r = r.to_str().unwrap();

        let stdout = run_ok(ff().args([
            "--json",
            "--quiet",
            "finetune",
            "--recipe",
            r,
            "--freeze",
            "bert.embeddings",
            "--freeze",
            "bert.encoder",
        ]));
        let cv: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(cv["folds"], 2);
        assert!(
            cv["mean_accuracy"].as_f64().unwrap() >= 0.9,
            "frozen-encoder accuracy {cv}"
        );
        assert!(out.join("cv.json").exists());
        let fold0 = out.join("fold-0");
        let state: serde_json::Value =
            ferroformer::io::read_json(&fold0.join("checkpoint-100/trainer_state.json")).unwrap();
        // Only the classifier (32 x 2 + 2) trains.
        assert_eq!(state["trainable"]["trainable_params"], 66);
        let dev = candle_core::Device::Cpu;
        let before = ferroformer::io::safetensors::load(
            &fixture("bert-tiny-fillmask/model.safetensors"),
            &dev,
        )
        .unwrap();
        let after =
            ferroformer::io::safetensors::load(&fold0.join("model.safetensors"), &dev).unwrap();
        for (k, t) in &after {
            let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            if k.starts_with("classifier.") {
                continue;
            }
            let b: Vec<f32> = before[k].flatten_all().unwrap().to_vec1().unwrap();
            assert!(a == b, "frozen {k} changed");
        }
        let cfg: serde_json::Value =
            ferroformer::io::read_json(&fold0.join("config.json")).unwrap();
        assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
        assert_eq!(cfg["id2label"]["1"], "pos");

        let line = run_ok(ff().args([
            "--json",
            "classify",
            "--model",
            fold0.to_str().unwrap(),
            "--text",
            "the happy dog .",
            "--text",
            "a sad night .",
        ]));
        let preds: Vec<serde_json::Value> = line
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(preds[0]["top"][0]["label"], "pos");
        assert_eq!(preds[1]["top"][0]["label"], "neg");

        // A label the trained classifier never saw.
        let odd = dir.path().join("odd.txt");
        std::fs::write(
            &odd,
            "__label__neutral the cat .\n__label__pos a good day .\n",
        )
        .unwrap();
        fails_with(
            ff().args([
                "finetune",
                "--from",
                fold0.to_str().unwrap(),
                "--recipe",
                r,
                "--set",
                &format!("data.corpus=[{:?}]", odd.to_str().unwrap()),
                "--set",
                "data.folds=0",
                "--set",
                &format!(
                    "train.out_dir={:?}",
                    dir.path().join("odd").to_str().unwrap()
                ),
            ]),
            &["neutral", "config.json"],
        );
    }

    #[test]
    fn freeze_patterns_that_match_nothing_or_everything_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("reviews.txt");
        reviews(&data);
        let r = dir.path().join("r.toml");
        std::fs::write(&r, recipe(&data, &dir.path().join("run"))).unwrap();
        let r = r.to_str().unwrap();
        fails_with(
            ff().args(["finetune", "--recipe", r, "--freeze", "bert.encoderr"]),
            &["matches no parameter", "bert.encoder"],
        );
        fails_with(
            ff().args(["finetune", "--recipe", r, "--freeze", "*"]),
            &["every parameter"],
        );
        fails_with(
            ff().args(["finetune", "--recipe", r, "--train-only", "layers.0-1"]),
            &["matches no parameter", "layer"],
        );
    }
}

mod engine {
    use super::common::{fixture, small_corpus, tiny_recipe};
    use candle_core::Device;
    use ferroformer::train::{Outcome, Recipe, Trainer};
    use std::path::Path;

    fn classify_recipe(data: &Path, out: &Path, steps: usize) -> String {
        format!(
            r#"name = "resume-classify"
objective = "classify"
[data]
corpus = [{data:?}]
folds = 2
fold = 0
[model]
init = {init:?}
architecture = "bert"
pooling = "cls"
[train]
out_dir = {out:?}
steps = {steps}
decay_steps = 20
batch_size = 4
grad_accum = 2
context = 16
lr = 1e-2
min_lr = 1e-3
warmup_steps = 2
eval_interval = 5
log_interval = 1
seed = 9
freeze = ["bert.embeddings", "layer.0"]
"#,
            init = fixture("bert-tiny-fillmask")
        )
    }

    fn train(recipe: &str, resume: bool) -> Trainer {
        let r = Recipe::parse(recipe, &[], Path::new("t.toml")).unwrap();
        let mut t = ferroformer::tasks::prepare(r, resume, &Device::Cpu).unwrap();
        assert_eq!(t.run(false, &mut |_| {}).unwrap(), Outcome::Finished);
        t
    }

    /// A fine-tuning run with frozen layers (and a fresh pooler and head) interrupted at step
    /// 10 and resumed to 20 ends bit for bit where the uninterrupted run does; frozen weights
    /// never move.
    #[test]
    fn frozen_finetuning_resumes_exactly() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("reviews.txt");
        let mut s = String::new();
        for i in 0..24 {
            let (l, w) = if i % 2 == 0 {
                ("pos", "good")
            } else {
                ("neg", "bad")
            };
            s += &format!("__label__{l} the {w} dog .\n");
        }
        std::fs::write(&data, s).unwrap();
        let a = train(&classify_recipe(&data, &d.path().join("a"), 20), false);
        train(&classify_recipe(&data, &d.path().join("b"), 10), false);
        let b = train(&classify_recipe(&data, &d.path().join("b"), 20), true);
        let key = |t: &Trainer| {
            let s = &t.state;
            (
                s.step,
                s.data_rng,
                s.dropout_rng,
                s.tokens_seen,
                s.best_val_loss,
                s.trainable,
            )
        };
        assert_eq!(key(&a), key(&b));
        let (ta, tb) = (a.store.tensors(), b.store.tensors());
        let before = ferroformer::io::safetensors::load(
            &fixture("bert-tiny-fillmask/model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (k, t) in &ta {
            assert!(flat(t) == flat(&tb[k]), "{k} differs after resume");
            if k.starts_with("bert.embeddings") || k.contains("layer.0.") {
                assert!(flat(t) == flat(&before[k]), "frozen {k} moved");
            } else if let Some(orig) = before.get(k) {
                assert!(flat(t) != flat(orig), "trainable {k} did not move");
            }
        }
        let count = a.state.trainable.unwrap();
        assert!(count.trainable_params < count.all_params);
    }

    /// `data.val_files` holds whole files out: validation is exactly their tokens.
    #[test]
    fn held_out_files_are_the_validation_split() {
        let d = tempfile::tempdir().unwrap();
        let corpus = d.path().join("corpus");
        std::fs::create_dir(&corpus).unwrap();
        let text = small_corpus(300);
        let third = text.len() / 3;
        std::fs::write(corpus.join("a.txt"), &text[..third]).unwrap();
        std::fs::write(corpus.join("b.txt"), &text[third..2 * third]).unwrap();
        std::fs::write(corpus.join("c.txt"), &text[2 * third..]).unwrap();
        let recipe = tiny_recipe(&corpus, &d.path().join("run"), 1);
        let r = Recipe::parse(
            &recipe,
            &["data.val_files=[\"b.*\"]".into()],
            Path::new("t.toml"),
        )
        .unwrap();
        let t = ferroformer::tasks::prepare(r, false, &Device::Cpu).unwrap();
        let clm: &ferroformer::tasks::clm::Clm =
            t.task.as_any().downcast_ref().expect("a token run");
        let ferroformer::tasks::text::Tokens { shard, train, val } = &clm.tokens;
        // The char tokenizer: one token per character; b.txt is last, after a newline.
        let b_chars = text[third..2 * third].chars().count();
        assert_eq!(val.len(), b_chars);
        assert_eq!(val.end, shard.len());
        assert_eq!(train.len() + val.len(), shard.len());
        for (set, needle) in [
            ("data.val_files=[\"z*\"]", "matches no corpus file"),
            ("data.val_files=[\"*.txt\"]", "nothing is left"),
        ] {
            let r = Recipe::parse(&recipe, &[set.into()], Path::new("t.toml")).unwrap();
            let e = ferroformer::tasks::prepare(r, false, &Device::Cpu)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}

/// SmolLM2-135M-Instruct's GGUF file fine-tuned for two steps with all but its last layer
/// frozen: the run directory is a Hugging Face directory that keeps the chat template and
/// special tokens, and loads for evaluation.
#[test]
fn gguf_model_finetunes_with_frozen_layers_into_a_hf_directory() {
    use common::{ff, small_corpus, stdout_of};
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, small_corpus(200)).unwrap();
    let run = d.path().join("run");
    let recipe = d.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"name = "smol"
[data]
corpus = [{corpus:?}]
[model]
architecture = "llama"
[train]
out_dir = {run:?}
steps = 2
batch_size = 1
context = 32
lr = 1e-4
min_lr = 1e-5
warmup_steps = 1
eval_interval = 2
eval_iters = 1
"#
        ),
    )
    .unwrap();
    let out = stdout_of(ff().args([
        "--json",
        "--quiet",
        "finetune",
        "--from",
        "smollm2-135m-instruct",
        "--recipe",
        recipe.to_str().unwrap(),
        "--train-only",
        "layers.29",
    ]));
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["step"], 2);
    let t = &summary["trainable"];
    assert!(t["trainable_params"].as_u64().unwrap() < t["all_params"].as_u64().unwrap() / 20);
    let tc: serde_json::Value =
        ferroformer::io::read_json(&run.join("tokenizer_config.json")).unwrap();
    assert!(tc["chat_template"].as_str().unwrap().contains("im_start"));
    let cfg: serde_json::Value = ferroformer::io::read_json(&run.join("config.json")).unwrap();
    assert!(cfg["eos_token_id"].is_number(), "{cfg}");
    assert!(run.join("checkpoint-2/generation_config.json").exists());
    let ppl = stdout_of(ff().args([
        "--json",
        "--quiet",
        "eval",
        "perplexity",
        "--model",
        run.to_str().unwrap(),
        "--text",
        corpus.to_str().unwrap(),
        "--max-tokens",
        "64",
        "--context",
        "32",
    ]));
    let p: serde_json::Value = serde_json::from_str(ppl.lines().last().unwrap()).unwrap();
    assert!(p["perplexity"].as_f64().unwrap().is_finite());
}
