//! Parameter-efficient fine-tuning against Hugging Face PEFT 0.21.2: adapters PEFT made load
//! here with its logits (and gradients), files written here are PEFT's, the trainable-parameter
//! line is PEFT's, merging is exact; adapter runs train, resume and reload. Fixtures by
//! tests/fixtures/make_peft_fixtures.py; tests/fixtures/check_peft_load.py checks the other
//! direction (an adapter this crate trained, loaded by PEFT).

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::{assert_close, fixture, max_abs};
use ferroformer::io::safetensors;
use ferroformer::peft::{adapter_io, PeftConfig, PeftType, Targets};
use ferroformer::models::{self, CausalModel};
use ferroformer::nn::ParamStore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (case, base model fixture)
const CASES: &[(&str, &str)] = &[
    ("llama-lora", "llama-tiny"),
    ("llama-lora-all", "llama-tiny"),
    ("llama-dora", "llama-tiny"),
    ("gpt2-lora", "gpt2-tiny"),
    ("llama-ia3", "llama-tiny"),
];

fn expected(case: &str) -> BTreeMap<String, Tensor> {
    safetensors::load(
        &fixture(&format!("peft/{case}/expected.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

fn ids(e: &BTreeMap<String, Tensor>) -> Tensor {
    e["input_ids"].to_dtype(DType::U32).unwrap()
}

/// A model with its parameter store.
struct M {
    model: CausalModel,
    store: ParamStore,
}

/// Base model (a fixture directory) with adapters.
fn load(base: &str, adapters: &[(&str, PathBuf)]) -> ferroformer::Result<M> {
    let (model, mut store) = models::load_dir(&fixture(base), &Device::Cpu)?;
    let specs: Vec<(String, PathBuf)> =
        adapters.iter().map(|(n, d)| (n.to_string(), d.clone())).collect();
    let model = model.with_adapters(&mut store, &specs)?;
    Ok(M { model, store })
}

/// Base model and adapter, as a PEFT model would be (all parameters trainable).
fn with_adapter(case: &str, base: &str) -> M {
    load(base, &[("default", fixture(&format!("peft/{case}")))]).unwrap()
}

/// Logits within 1e-5 of the reference's scale (max |logit| about 5).
fn assert_logits(what: &str, got: &Tensor, want: &Tensor) {
    let scale = max_abs(want).max(1.0);
    assert_close(what, got, want, 0.0, 1e-5 * scale);
}

#[test]
fn adapters_made_by_peft_give_its_logits_and_merge_exactly() {
    for (case, base) in CASES {
        let e = expected(case);
        let mut p = with_adapter(case, base);
        let x = ids(&e);
        let logits = p.model.forward(&x, None, None).unwrap();
        assert_logits(&format!("{case} logits"), &logits, &e["logits"]);

        let before: BTreeMap<String, Vec<f32>> = p
            .store
            .tensors()
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        p.store.merge_adapter("default").unwrap();
        let merged = p.model.forward(&x, None, None).unwrap();
        assert_logits(&format!("{case} merged"), &merged, &e["merged_logits"]);
        assert_logits(&format!("{case} merged vs adapter"), &merged, &logits);
        p.store.unmerge_adapter("default").unwrap();
        for (k, t) in p.store.tensors() {
            let now: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let worst = now
                .iter()
                .zip(&before[&k])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-6, "{case}: {k} off by {worst:e} after unmerge");
        }
        let again = p.model.forward(&x, None, None).unwrap();
        assert_logits(&format!("{case} unmerged"), &again, &e["logits"]);
    }
}

/// The causal-LM loss transformers computes with `labels = input_ids`.
fn shifted_loss(p: &M, x: &Tensor) -> Tensor {
    let logits = p.model.forward(x, None, None).unwrap();
    let (b, t, v) = logits.dims3().unwrap();
    let l = logits.narrow(1, 0, t - 1).unwrap().reshape((b * (t - 1), v)).unwrap();
    let y = x.narrow(1, 1, t - 1).unwrap().reshape(b * (t - 1)).unwrap();
    ferroformer::objective::clm::cross_entropy(&l, &y).unwrap()
}

#[test]
fn adapter_gradients_match_peft() {
    for (case, base) in CASES {
        let e = expected(case);
        if !e.contains_key("loss") {
            panic!("{case}: fixture has no gradients; run make_peft_fixtures.py");
        }
        let mut p = with_adapter(case, base);
        let trainable = p.store.adapter_trainable();
        let frozen = p
            .store
            .vars()
            .keys()
            .filter(|k| !trainable.contains(*k))
            .cloned()
            .collect();
        p.store.freeze(&frozen).unwrap();
        p.model = CausalModel::new(&p.model.config(), &mut p.store).unwrap();
        let loss = shifted_loss(&p, &ids(&e));
        assert_close(&format!("{case} loss"), &loss, &e["loss"], 1e-5, 0.0);
        let grads = loss.backward().unwrap();
        let keys = adapter_io::adapter_keys(&p.store, "default").unwrap();
        let mut n = 0;
        for (store_key, file_key) in keys {
            let want = &e[&format!("grad.{file_key}")];
            let got = grads
                .get(p.store.vars()[&store_key].as_tensor())
                .unwrap_or_else(|| panic!("{case}: no gradient for {store_key}"));
            let scale = max_abs(want).max(1e-3);
            assert_close(&format!("{case} grad {file_key}"), got, want, 1e-4, 1e-5 * scale);
            n += 1;
        }
        let want_n = e.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(n, want_n, "{case}: trainable tensors");
    }
}

#[test]
fn saved_adapters_are_the_files_peft_writes() {
    for (case, base) in CASES {
        let p = with_adapter(case, base);
        let d = tempfile::tempdir().unwrap();
        adapter_io::save_adapter(&p.store, "default", d.path(), Some("base")).unwrap();
        let ours = safetensors::load(&d.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
        let theirs = safetensors::load(
            &fixture(&format!("peft/{case}/adapter_model.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{case}: keys"
        );
        for (k, t) in &theirs {
            assert_close(&format!("{case} {k}"), &ours[k], t, 0.0, 0.0);
        }
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("peft/{case}/adapter_config.json")))
                .unwrap(),
        )
        .unwrap();
        for key in [
            "peft_type",
            "r",
            "lora_alpha",
            "target_modules",
            "use_dora",
            "use_rslora",
            "bias",
            "fan_in_fan_out",
            "modules_to_save",
            "feedforward_modules",
            "task_type",
        ] {
            if let Some(w) = want.get(key) {
                assert_eq!(cfg.get(key), Some(w), "{case}: {key}");
            }
        }
        assert_eq!(cfg["base_model_name_or_path"], "base");
    }
}

/// A full-size SmolLM2-135M (random weights) with PEFT's configurations: the same line as
/// `print_trainable_parameters()`.
#[test]
fn trainable_line_equals_peft_for_smollm2() {
    let lines = std::fs::read_to_string(fixture("peft/smollm2_trainable.txt")).unwrap();
    let line = |name: &str| {
        lines
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}\t")))
            .unwrap()
            .to_string()
    };
    let config: ferroformer::models::llama::LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "tie_word_embeddings": true, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
        "rope_theta": 100000.0
    }))
    .unwrap();
    let mut lora = PeftConfig::lora(8, 8.0, Targets::List(vec!["q_proj".into(), "v_proj".into()]));
    let mut ia3 = lora.clone();
    ia3.peft_type = PeftType::Ia3;
    ia3.target_modules = Targets::List(vec![]);
    ia3.fill_default_targets("llama").unwrap();
    let mut all = lora.clone();
    all.target_modules = Targets::Pattern("all-linear".into());
    lora.task_type = Some("CAUSAL_LM".into());
    for (name, cfg) in [("lora_r8_q_v", lora), ("ia3_default", ia3), ("lora_r8_all_linear", all)] {
        let mut store = ferroformer::nn::ParamStore::new_init(&Device::Cpu, 0);
        ferroformer::models::Llama::new(&config, &mut store).unwrap();
        store.add_adapter("default", cfg, None).unwrap();
        ferroformer::models::Llama::new(&config, &mut store).unwrap();
        let trainable = store.adapter_trainable();
        let frozen = store
            .vars()
            .keys()
            .filter(|k| !trainable.contains(*k))
            .cloned()
            .collect();
        store.freeze(&frozen).unwrap();
        assert_eq!(store.trainable_count().to_string(), line(name), "{name}");
    }
}

/// An adapter for another model, an unknown method and a shape mismatch are clear errors.
#[test]
fn adapters_for_another_base_or_method_are_refused() {
    let load = |base: &str, dir: &Path| {
        load(base, &[("default", dir.to_path_buf())])
            .err()
            .expect("must fail")
            .to_string()
    };
    // GPT-2's adapter on Llama: its modules do not exist there.
    let e = load("llama-tiny", &fixture("peft/gpt2-lora"));
    assert!(e.contains("gpt2-lora") && e.contains("another base model"), "{e}");
    // The same module names with other sizes: the shape error names the module.
    let d = tempfile::tempdir().unwrap();
    let src = fixture("peft/llama-lora");
    std::fs::copy(src.join("adapter_config.json"), d.path().join("adapter_config.json")).unwrap();
    let mut t = safetensors::load(&src.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    t.insert(k.into(), Tensor::zeros((4, 48), DType::F32, &Device::Cpu).unwrap());
    safetensors::save(&d.path().join("adapter_model.safetensors"), &t).unwrap();
    let e = load("llama-tiny", d.path());
    assert!(e.contains("q_proj.lora_A") && e.contains("[4, 48]") && e.contains("another base"), "{e}");
    // An unknown peft_type names itself and the file.
    let cfg = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    std::fs::write(
        d.path().join("adapter_config.json"),
        cfg.replace("\"LORA\"", "\"BOFT\""),
    )
    .unwrap();
    let e = load("llama-tiny", d.path());
    assert!(e.contains("BOFT") && e.contains("adapter_config.json"), "{e}");
}

/// Two adapters side by side: each alone gives its logits; switching needs no rebuild.
#[test]
fn named_adapters_switch_at_inference() {
    let e1 = expected("llama-lora");
    let e2 = expected("llama-dora");
    let p = load(
        "llama-tiny",
        &[
            ("one", fixture("peft/llama-lora")),
            ("two", fixture("peft/llama-dora")),
        ],
    )
    .unwrap();
    let x = ids(&e1);
    assert_logits("one", &p.model.forward(&x, None, None).unwrap(), &e1["logits"]);
    p.store.peft().set_active(&["two"]).unwrap();
    assert_logits("two", &p.model.forward(&x, None, None).unwrap(), &e2["logits"]);
    p.store.peft().set_active(&[]).unwrap();
    let plain = p.model.forward(&x, None, None).unwrap();
    let diff = (plain - &e1["logits"]).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() > 1e-2, "no adapter must differ");
    assert!(p.store.peft().set_active(&["three"]).is_err());
}

/// The quantized matmul's gradient for its input is that of the dequantized weight.
#[test]
fn quantized_projection_passes_gradients_to_its_input() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use ferroformer::nn::linear::{Projection, QuantizedWeight};
    let mut rng = ferroformer::rng::Rng::new(5);
    let (rows, cols, n) = (48, 64, 5);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
    let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
    let deq = q.dequantize(&Device::Cpu).unwrap();
    let proj = Projection::Quantized {
        weight: QuantizedWeight::new(q).unwrap(),
        bias: None,
        adapters: None,
    };
    let x0: Vec<f32> = (0..n * cols).map(|_| rng.normal() as f32).collect();
    let x = candle_core::Var::from_vec(x0, (n, cols), &Device::Cpu).unwrap();
    let c: Vec<f32> = (0..n * rows).map(|_| rng.normal() as f32).collect();
    let c = Tensor::from_vec(c, (n, rows), &Device::Cpu).unwrap();
    let loss = (proj.forward(x.as_tensor()).unwrap() * &c).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let got = g.get(x.as_tensor()).unwrap();
    // d/dx sum(c * x W^T) = c W.
    let want = c.matmul(&deq).unwrap();
    assert_close("dx", got, &want, 1e-5, 1e-5);
    let _ = D::Minus1;
}

mod cli {
    use super::common::{fails_with, ff, fixture, small_corpus, stdout_of};
    use super::*;

    /// llama-tiny with a character tokenizer for the test corpus (its vocabulary fits the
    /// model's 96 ids).
    fn base_model(dir: &Path) -> PathBuf {
        let base = dir.join("base");
        std::fs::create_dir_all(&base).unwrap();
        for f in ["config.json", "model.safetensors", "generation_config.json"] {
            std::fs::copy(fixture("llama-tiny").join(f), base.join(f)).unwrap();
        }
        let corpus = small_corpus(400);
        let tok = ferroformer::tokenizer::Tokenizer::train_char([corpus.as_str()]).unwrap();
        assert!(tok.vocab_size() <= 96);
        tok.save(&base.join("tokenizer.json")).unwrap();
        base
    }

    fn recipe(dir: &Path, steps: usize, extra: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let corpus = dir.join("corpus.txt");
        std::fs::write(&corpus, small_corpus(400)).unwrap();
        let r = dir.join("r.toml");
        std::fs::write(
            &r,
            format!(
                r#"name = "lora"
[data]
corpus = [{corpus:?}]
val_fraction = 0.1
[model]
[train]
out_dir = {out:?}
steps = {steps}
batch_size = 2
context = 16
lr = 1e-2
min_lr = 1e-3
warmup_steps = 0
decay_steps = 10
eval_interval = 5
eval_iters = 2
log_interval = 1
checkpoint_interval = 5
seed = 3
{extra}
"#,
                out = dir.join("run")
            ),
        )
        .unwrap();
        r
    }

    /// `finetune --peft lora` trains only the adapter, writes PEFT's files, resumes exactly;
    /// the adapter directory loads as a model (its base applied), with `--adapter`, and
    /// merges into an equivalent plain model.
    #[test]
    fn lora_finetune_writes_a_peft_adapter_that_loads_merges_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        let base = base_model(d.path());
        let extra = "[peft]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.1\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\nuse_rslora = true";
        let r = recipe(d.path(), 10, extra);
        let args = |r: &Path| {
            vec![
                "finetune".to_string(),
                "--from".into(),
                base.display().to_string(),
                "--recipe".into(),
                r.display().to_string(),
            ]
        };
        let out = stdout_of(ff().args(args(&r)).arg("--peft").arg("lora"));
        let run = d.path().join("run");
        assert!(run.join("adapter_model.safetensors").is_file() && !run.join("model.safetensors").exists());
        assert!(run.join("checkpoint-10/adapter_config.json").is_file());
        let st: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("checkpoint-10/trainer_state.json")).unwrap(),
        )
        .unwrap();
        // 2 layers x (q 64->64, v 64->32, down 112->64) at r = 4.
        let want = 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4 + 4 * 112 + 64 * 4);
        assert_eq!(st["trainable"]["trainable_params"], want, "{out}");

        // Resume from step 5 ends where the straight run did (adapter dropout included).
        let r2 = recipe(&d.path().join("b"), 5, extra);
        stdout_of(ff().args(args(&r2)).arg("--peft").arg("lora"));
        let r2 = recipe(&d.path().join("b"), 10, extra);
        stdout_of(ff().args(args(&r2)).args(["--peft", "lora", "--resume"]));
        let a = safetensors::load(&run.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
        let b = safetensors::load(
            &d.path().join("b/run/adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        for (k, t) in &a {
            assert_close(k, &b[k], t, 0.0, 0.0);
        }

        // The adapter applied three ways gives the same perplexity; the base another.
        let text = d.path().join("corpus.txt");
        let ppl = |args: &[&str]| -> f64 {
            let out = stdout_of(
                ff().args(["--json", "eval", "perplexity"])
                    .args(args)
                    .arg("--text")
                    .arg(&text),
            );
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            v["perplexity"].as_f64().unwrap()
        };
        let b = base.display().to_string();
        let run_s = run.display().to_string();
        let with = ppl(&["--model", &b, "--adapter", &run_s]);
        let as_model = ppl(&["--model", &run_s]);
        let merged = d.path().join("merged");
        stdout_of(ff().args(["convert", "--merge-adapter", &run_s, "--to"]).arg(&merged));
        let merged_ppl = ppl(&["--model", &merged.display().to_string()]);
        let plain = ppl(&["--model", &b]);
        assert!((with - as_model).abs() < 1e-9, "{with} {as_model}");
        assert!((with - merged_ppl).abs() < 1e-4 * with, "{with} {merged_ppl}");
        assert!(with < plain, "training on the text lowers its perplexity: {with} vs {plain}");
    }

    #[test]
    fn peft_options_that_match_nothing_or_are_unknown_fail() {
        let d = tempfile::tempdir().unwrap();
        let r = recipe(d.path(), 2, "");
        let base = base_model(d.path());
        fails_with(
            ff().args(["finetune", "--peft", "lora", "--from"])
                .arg(&base)
                .arg("--recipe")
                .arg(&r)
                .args(["--set", "peft.target_modules=[\"query\"]"]),
            &["match no linear layer", "q_proj", "down_proj"],
        );
        fails_with(
            ff().args(["finetune", "--peft", "boft", "--from"])
                .arg(&base)
                .arg("--recipe")
                .arg(&r),
            &["boft", "LORA"],
        );
        fails_with(
            ff().args(["finetune", "--peft", "lora", "--from"])
                .arg(&base)
                .arg("--recipe")
                .arg(&r)
                .args(["--set", "peft.rank=4"]),
            &["unknown peft keys", "rank"],
        );
    }
}
