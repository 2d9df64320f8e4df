//! Parameter-efficient fine-tuning against Hugging Face PEFT 0.21.2: adapters PEFT made load
//! here with its logits (and gradients), files written here are PEFT's, the trainable-parameter
//! line is PEFT's, merging is exact; adapter runs train, resume and reload. Fixtures by
//! tests/fixtures/make_peft_fixtures.py; tests/fixtures/check_peft_load.py checks the other
//! direction (an adapter this crate trained, loaded by PEFT).

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::{assert_close, fixture, max_abs};
use ferroformer::io::safetensors;
use ferroformer::models::{self, CausalModel};
use ferroformer::nn::ParamStore;
use ferroformer::peft::{adapter_io, PeftConfig, PeftType, Targets};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (case, base model fixture)
const CASES: &[(&str, &str)] = &[
    ("llama-lora", "llama-tiny"),
    ("llama-lora-all", "llama-tiny"),
    ("llama-dora", "llama-tiny"),
    ("gpt2-lora", "gpt2-tiny"),
    ("llama-ia3", "llama-tiny"),
    ("llama-lntuning", "llama-tiny"),
];

/// Prompt tuning: PEFT's logits include the virtual positions (first); ours are the input's.
#[test]
fn prompt_tuning_made_by_peft_gives_its_logits() {
    let e = expected("llama-prompt");
    let p = with_adapter("llama-prompt", "llama-tiny");
    let logits = p.model.forward(&ids(&e), None, None).unwrap();
    let want = e["logits"].narrow(1, 3, 7).unwrap();
    assert_logits("prompt", &logits, &want);
    // Generation with a cache: the first call carries the virtual tokens, later ones continue.
    let mut caches = p.model.new_caches();
    let x = ids(&e);
    let a = p
        .model
        .forward(&x.narrow(1, 0, 4).unwrap(), Some(&mut caches), None)
        .unwrap();
    let b = p
        .model
        .forward(&x.narrow(1, 4, 3).unwrap(), Some(&mut caches), None)
        .unwrap();
    assert_logits("prompt cached", &Tensor::cat(&[a, b], 1).unwrap(), &want);
    let mut m = p;
    let e = m.store.merge_adapter("default").unwrap_err().to_string();
    assert!(e.contains("prompt tuning"), "{e}");
}

/// Prefix tuning: PEFT's per-layer key/value layout (GQA: the key/value heads), unrotated
/// prefix keys, the input's positions after the prefix; with a cache too.
#[test]
fn prefix_tuning_made_by_peft_gives_its_logits() {
    let e = expected("llama-prefix");
    let p = with_adapter("llama-prefix", "llama-tiny");
    let x = ids(&e);
    assert_logits(
        "prefix",
        &p.model.forward(&x, None, None).unwrap(),
        &e["logits"],
    );
    let mut caches = p.model.new_caches();
    let a = p
        .model
        .forward(&x.narrow(1, 0, 4).unwrap(), Some(&mut caches), None)
        .unwrap();
    let b = p
        .model
        .forward(&x.narrow(1, 4, 3).unwrap(), Some(&mut caches), None)
        .unwrap();
    assert_logits(
        "prefix cached",
        &Tensor::cat(&[a, b], 1).unwrap(),
        &e["logits"],
    );
}

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
    let specs: Vec<(String, PathBuf)> = adapters
        .iter()
        .map(|(n, d)| (n.to_string(), d.clone()))
        .collect();
    let model = ferroformer::peft::adapter_io::apply(model, &mut store, &specs)?;
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
        if !e.contains_key("merged_logits") {
            continue;
        }

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
    let l = logits
        .narrow(1, 0, t - 1)
        .unwrap()
        .reshape((b * (t - 1), v))
        .unwrap();
    let y = x.narrow(1, 1, t - 1).unwrap().reshape(b * (t - 1)).unwrap();
    ferroformer::objective::clm::cross_entropy(&l, &y).unwrap()
}

#[test]
fn adapter_gradients_match_peft() {
    for (case, base) in CASES.iter().filter(|(c, _)| !c.contains("lntuning")) {
        let e = expected(case);
        if !e.contains_key("loss") {
            panic!("{case}: fixture has no gradients; run make_peft_fixtures.py");
        }
        let mut p = with_adapter(case, base);
        p.store.freeze_all_but_adapters().unwrap();
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
            assert_close(
                &format!("{case} grad {file_key}"),
                got,
                want,
                1e-4,
                1e-5 * scale,
            );
            n += 1;
        }
        let want_n = e.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(n, want_n, "{case}: trainable tensors");
    }
}

#[test]
fn saved_adapters_are_the_files_peft_writes() {
    for (case, base) in CASES.iter().chain(&[
        ("llama-prompt", "llama-tiny"),
        ("llama-prefix", "llama-tiny"),
    ]) {
        let p = with_adapter(case, base);
        let d = tempfile::tempdir().unwrap();
        adapter_io::save_adapter(&p.store, "default", d.path(), Some("base")).unwrap();
        let ours =
            safetensors::load(&d.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
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
            &std::fs::read_to_string(fixture(&format!("peft/{case}/adapter_config.json"))).unwrap(),
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
            "num_virtual_tokens",
            "token_dim",
            "num_attention_heads",
            "num_layers",
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
    let mut lora = PeftConfig::lora(
        8,
        8.0,
        Targets::List(vec!["q_proj".into(), "v_proj".into()]),
    );
    let mut ia3 = lora.clone();
    ia3.peft_type = PeftType::Ia3;
    ia3.target_modules = Targets::List(vec![]);
    ia3.fill_default_targets("llama").unwrap();
    let mut all = lora.clone();
    all.target_modules = Targets::Pattern("all-linear".into());
    lora.task_type = Some("CAUSAL_LM".into());
    for (name, cfg) in [
        ("lora_r8_q_v", lora),
        ("ia3_default", ia3),
        ("lora_r8_all_linear", all),
    ] {
        let mut store = ferroformer::nn::ParamStore::new_init(&Device::Cpu, 0);
        let arch = ferroformer::models::ArchConfig::new(config.clone()).unwrap();
        CausalModel::new(&arch, &mut store).unwrap();
        store.add_adapter("default", cfg, None).unwrap();
        CausalModel::new(&arch, &mut store).unwrap();
        store.freeze_all_but_adapters().unwrap();
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
    assert!(
        e.contains("gpt2-lora") && e.contains("another base model"),
        "{e}"
    );
    // The same module names with other sizes: the shape error names the module.
    let d = tempfile::tempdir().unwrap();
    let src = fixture("peft/llama-lora");
    std::fs::copy(
        src.join("adapter_config.json"),
        d.path().join("adapter_config.json"),
    )
    .unwrap();
    let mut t = safetensors::load(&src.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    t.insert(
        k.into(),
        Tensor::zeros((4, 48), DType::F32, &Device::Cpu).unwrap(),
    );
    safetensors::save(&d.path().join("adapter_model.safetensors"), &t).unwrap();
    let e = load("llama-tiny", d.path());
    assert!(
        e.contains("q_proj.lora_A") && e.contains("[4, 48]") && e.contains("another base"),
        "{e}"
    );
    // An unknown peft_type names itself and the file.
    let cfg = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    std::fs::write(
        d.path().join("adapter_config.json"),
        cfg.replace("\"LORA\"", "\"BOFT\""),
    )
    .unwrap();
    let e = load("llama-tiny", d.path());
    assert!(
        e.contains("BOFT") && e.contains("adapter_config.json"),
        "{e}"
    );
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
    assert_logits(
        "one",
        &p.model.forward(&x, None, None).unwrap(),
        &e1["logits"],
    );
    p.store.peft().set_active(&["two"]).unwrap();
    assert_logits(
        "two",
        &p.model.forward(&x, None, None).unwrap(),
        &e2["logits"],
    );
    p.store.peft().set_active(&[]).unwrap();
    let plain = p.model.forward(&x, None, None).unwrap();
    let diff = (plain - &e1["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(
        diff.to_scalar::<f32>().unwrap() > 1e-2,
        "no adapter must differ"
    );
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
    let loss = (proj.forward(x.as_tensor()).unwrap() * &c)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    let got = g.get(x.as_tensor()).unwrap();
    // d/dx sum(c * x W^T) = c W.
    let want = c.matmul(&deq).unwrap();
    assert_close("dx", got, &want, 1e-5, 1e-5);
    let _ = D::Minus1;
}

/// Writes `expected.safetensors` in `adapter` (`input_ids` i64, `logits`) for base + adapter.
fn export_logits(base: &Path, adapter: &Path, x: &Tensor) {
    let (model, mut store) = models::load_dir(base, &Device::Cpu).unwrap();
    let model = ferroformer::peft::adapter_io::apply(
        model,
        &mut store,
        &[("default".into(), adapter.to_path_buf())],
    )
    .unwrap();
    let logits = model.forward(x, None, None).unwrap();
    let mut out = BTreeMap::new();
    out.insert("input_ids".to_string(), x.to_dtype(DType::I64).unwrap());
    out.insert("logits".to_string(), logits);
    safetensors::save(&adapter.join("expected.safetensors"), &out).unwrap();
}

/// Interop on real models (run by hand, see tests/fixtures/check_peft_load.py):
/// `FERROFORMER_PEFT_CHECK=BASE_DIR:ADAPTER_DIR cargo test --release --test peft -- --ignored`
/// compares base + adapter with `ADAPTER_DIR/expected.safetensors` when it exists (an adapter
/// PEFT made), else writes it (an adapter made here, for the script).
#[test]
#[ignore]
fn interop_check_on_given_model() {
    let spec =
        std::env::var("FERROFORMER_PEFT_CHECK").expect("FERROFORMER_PEFT_CHECK=BASE:ADAPTER");
    let (base, adapter) = spec.split_once(':').unwrap();
    let (base, adapter) = (Path::new(base), Path::new(adapter));
    let path = adapter.join("expected.safetensors");
    if !path.exists() {
        let x = Tensor::new(&[[1u32, 500, 9000, 13, 2, 700, 11, 42]], &Device::Cpu).unwrap();
        export_logits(base, adapter, &x);
        eprintln!("wrote {}", path.display());
        return;
    }
    let e = safetensors::load(&path, &Device::Cpu).unwrap();
    let (model, mut store) = models::load_dir(base, &Device::Cpu).unwrap();
    let model = ferroformer::peft::adapter_io::apply(
        model,
        &mut store,
        &[("default".into(), adapter.to_path_buf())],
    )
    .unwrap();
    let logits = model.forward(&ids(&e), None, None).unwrap();
    let diff = (logits - &e["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    let diff = diff.to_scalar::<f32>().unwrap() as f64;
    eprintln!("max |diff| {diff:e}, max |logit| {}", max_abs(&e["logits"]));
    assert!(diff <= 1e-5 * max_abs(&e["logits"]).max(1.0));
}

mod cli {
    use super::common::{fails_with, ff, small_corpus, stdout_of};
    use super::*;

    fn base_model(dir: &Path) -> PathBuf {
        super::common::llama_tiny_base(dir)
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
        assert!(
            run.join("adapter_model.safetensors").is_file()
                && !run.join("model.safetensors").exists()
        );
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
        stdout_of(
            ff().args(["convert", "--merge-adapter", &run_s, "--to"])
                .arg(&merged),
        );
        let merged_ppl = ppl(&["--model", &merged.display().to_string()]);
        let plain = ppl(&["--model", &b]);
        assert!((with - as_model).abs() < 1e-9, "{with} {as_model}");
        assert!(
            (with - merged_ppl).abs() < 1e-4 * with,
            "{with} {merged_ppl}"
        );
        assert!(
            with < plain,
            "training on the text lowers its perplexity: {with} vs {plain}"
        );

        // For tests/fixtures/check_peft_load.py (PEFT loading this adapter): the adapter and
        // our logits for fixed ids, in FERROFORMER_PEFT_EXPORT when set.
        let export = std::env::var_os("FERROFORMER_PEFT_EXPORT")
            .map(PathBuf::from)
            .unwrap_or(d.path().join("export"));
        std::fs::create_dir_all(&export).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(run.join(f), export.join(f)).unwrap();
        }
        let x = Tensor::new(
            &[[1u32, 5, 9, 13, 2, 7, 11], [3, 4, 8, 20, 25, 6, 10]],
            &Device::Cpu,
        )
        .unwrap();
        export_logits(&base, &export, &x);
    }

    /// Every method trains through `finetune` (only its own tensors), and its run directory
    /// loads as a model that scores the text differently from the base.
    #[test]
    fn every_method_trains_and_reloads() {
        let d = tempfile::tempdir().unwrap();
        let base = base_model(d.path());
        let b = base.display().to_string();
        let methods = [
            ("ia3", "[peft]\npeft_type = \"IA3\"", 2 * (32 + 32 + 112)),
            ("ln", "[peft]\npeft_type = \"LN_TUNING\"", 2 * 2 * 64 + 64),
            ("prompt", "[peft]\npeft_type = \"PROMPT_TUNING\"\nnum_virtual_tokens = 4\nprompt_tuning_init = \"TEXT\"\nprompt_tuning_init_text = \"the king\"", 4 * 64),
            ("prefix", "[peft]\npeft_type = \"PREFIX_TUNING\"\nnum_virtual_tokens = 3", 3 * 2 * 2 * 2 * 16),
            ("dora", "[peft]\nr = 2\nuse_dora = true\ntarget_modules = \"all-linear\"", 2 * (2 * (64 + 64) + 64 + 2 * (64 + 32) + 32 + 2 * (64 + 32) + 32 + 2 * (64 + 64) + 64 + 2 * (64 + 112) + 112 + 2 * (64 + 112) + 112 + 2 * (112 + 64) + 64)),
        ];
        let text = d.path().join("m/ia3/corpus.txt");
        let mut scores = vec![];
        for (name, extra, trainable) in methods {
            let dir = d.path().join("m").join(name);
            let r = recipe(&dir, 6, extra);
            stdout_of(ff().args(["finetune", "--from", &b, "--recipe"]).arg(&r));
            let run = dir.join("run");
            let st: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(run.join("checkpoint-6/trainer_state.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(st["trainable"]["trainable_params"], trainable, "{name}");
            let out = stdout_of(
                ff().args(["--json", "eval", "perplexity", "--model"])
                    .arg(&run)
                    .arg("--text")
                    .arg(&text),
            );
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            scores.push((name, v["perplexity"].as_f64().unwrap()));
        }
        let out = stdout_of(
            ff().args(["--json", "eval", "perplexity", "--model", &b, "--text"])
                .arg(&text),
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let plain = v["perplexity"].as_f64().unwrap();
        for (name, ppl) in scores {
            // Random virtual tokens start off worse than none; 6 steps need not repair that.
            if matches!(name, "prefix") {
                assert!(
                    (ppl - plain).abs() > 1e-3 * plain,
                    "{name}: {ppl} vs base {plain}"
                );
            } else {
                assert!(ppl < plain, "{name}: {ppl} vs base {plain}");
            }
        }
    }

    #[test]
    fn peft_options_that_match_nothing_or_are_unknown_fail() {
        let d = tempfile::tempdir().unwrap();
        let r = recipe(d.path(), 2, "");
        let base = base_model(d.path());
        let finetune = |args: &[&str]| {
            let mut c = ff();
            c.args(["finetune", "--from"])
                .arg(&base)
                .arg("--recipe")
                .arg(&r)
                .args(args);
            c
        };
        let cases: [(&[&str], &[&str]); 4] = [
            (
                &["--peft", "lora", "--set", "peft.target_modules=[\"query\"]"],
                &["match no linear layer", "q_proj", "down_proj"],
            ),
            (&["--peft", "boft"], &["boft", "LORA"]),
            (
                &["--peft", "lora", "--set", "peft.rank=4"],
                &["unknown peft keys", "rank"],
            ),
            (&["--peft", "prompt_tuning"], &["num_virtual_tokens"]),
        ];
        for (args, needles) in cases {
            fails_with(&mut finetune(args), needles);
        }
        // A missing adapter directory is named.
        fails_with(
            ff().args(["eval", "perplexity", "--model"])
                .arg(&base)
                .args(["--adapter", "/nonexistent/adapter", "--text"])
                .arg(d.path().join("corpus.txt")),
            &["/nonexistent/adapter", "adapter_config.json"],
        );
    }
}
