//! GPT-2 model behaviour beyond the transformers parity: perplexity protocol, KV cache,
//! checkpoint key variants, save/load round trip, and clear errors for mismatched files.

mod common;
use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture};
use ferroformer::eval::perplexity;
use ferroformer::infer::generate::logits_no_cache;
use ferroformer::io::safetensors;
use ferroformer::models::Gpt2Config;
use ferroformer::models::{self, ArchConfig, CausalModel};
use std::collections::BTreeMap;

fn copy_fixture(name: &str, to: &std::path::Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), to.join(f)).unwrap();
    }
}

#[test]
fn perplexity_matches_transformers() {
    let dev = Device::Cpu;
    for name in ["gpt2-tiny", "gpt2-tiny-untied"] {
        let (model, _) = models::load_dir(&fixture(name), &dev).unwrap();
        let r = safetensors::load(&fixture(name).join("reference.safetensors"), &dev).unwrap();
        let ids: Vec<u32> = r["ppl_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: f64 = r["ppl_mean_nll"].to_vec1::<f64>().unwrap()[0];
        let tokens: i64 = r["ppl_tokens"].to_vec1::<i64>().unwrap()[0];
        let got = perplexity(&model, &ids, 8, None, &mut |_| {}).unwrap();
        assert_eq!(got.tokens as i64, tokens);
        assert!(
            ((got.mean_nll - want) / want).abs() < 1e-5,
            "{name}: {} vs {want}",
            got.mean_nll
        );
        assert!((got.perplexity - want.exp()).abs() / want.exp() < 1e-5);
    }
}

#[test]
fn kv_cache_gives_the_same_logits_as_full_recompute() {
    let dev = Device::Cpu;
    let (model, _) = models::load_dir(&fixture("gpt2-tiny"), &dev).unwrap();
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 96).collect();
    let mut caches = model.new_caches();
    // Prompt of 5 in one go, then one token at a time.
    let x = Tensor::new(&ids[..5], &dev).unwrap().unsqueeze(0).unwrap();
    model.forward(&x, Some(&mut caches), None).unwrap();
    for n in 5..ids.len() {
        let x = Tensor::new(&ids[n..n + 1], &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let cached = model
            .forward(&x, Some(&mut caches), None)
            .unwrap()
            .flatten_all()
            .unwrap();
        let full = logits_no_cache(&model, &ids[..=n]).unwrap();
        let full = Tensor::new(full.as_slice(), &dev).unwrap();
        assert_close(&format!("position {n}"), &cached, &full, 1e-5, 1e-6);
    }
}

#[test]
fn loads_original_checkpoint_key_layout() {
    // OpenAI-converted GPT-2 files lack the "transformer." prefix and carry attn.bias buffers.
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let tensors = safetensors::load(&fixture("gpt2-tiny/model.safetensors"), &dev).unwrap();
    let mut renamed = BTreeMap::new();
    for (k, t) in tensors {
        renamed.insert(k.trim_start_matches("transformer.").to_string(), t);
    }
    renamed.insert(
        "h.0.attn.bias".into(),
        Tensor::ones((1, 1, 32, 32), DType::F32, &dev).unwrap(),
    );
    safetensors::save(&dir.path().join("model.safetensors"), &renamed).unwrap();
    std::fs::copy(
        fixture("gpt2-tiny/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (a, _) = models::load_dir(dir.path(), &dev).unwrap();
    let (b, _) = models::load_dir(&fixture("gpt2-tiny"), &dev).unwrap();
    let ids = [1u32, 2, 3, 4];
    let la = Tensor::new(logits_no_cache(&a, &ids).unwrap().as_slice(), &dev).unwrap();
    let lb = Tensor::new(logits_no_cache(&b, &ids).unwrap().as_slice(), &dev).unwrap();
    assert_close("renamed keys", &la, &lb, 0.0, 0.0);
}

#[test]
fn save_then_load_round_trips_and_keeps_unknown_config_keys() {
    let dev = Device::Cpu;
    let mut cfg = Gpt2Config::new(50, 16, 24, 2, 3);
    cfg.position_encoding = "sinusoidal".into();
    cfg.extra.insert("my_key".into(), serde_json::json!("kept"));
    let arch = ArchConfig::new(cfg.clone()).unwrap();
    let (model, store) = CausalModel::init(&arch, &dev, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    models::save_dir(dir.path(), &arch, &store).unwrap();
    let (loaded, _) = models::load_dir(dir.path(), &dev).unwrap();
    assert_eq!(loaded.config(), arch);
    let ids = [5u32, 9, 1];
    let a = Tensor::new(logits_no_cache(&model, &ids).unwrap().as_slice(), &dev).unwrap();
    let b = Tensor::new(logits_no_cache(&loaded, &ids).unwrap().as_slice(), &dev).unwrap();
    assert_close("round trip", &a, &b, 0.0, 0.0);
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(
        text.contains("\"my_key\"") && text.contains("GPT2LMHeadModel"),
        "{text}"
    );
}

#[test]
fn mismatched_config_is_a_clear_error() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("gpt2-tiny", dir.path());
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();

    // Wider model than the weights.
    cfg["n_embd"] = serde_json::json!(64);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = models::load_dir(dir.path(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("shape") && e.contains("config.json"),
        "{e}"
    );

    // Fewer layers than the weights: leftover tensors are reported.
    cfg["n_embd"] = serde_json::json!(32);
    cfg["n_layer"] = serde_json::json!(1);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = models::load_dir(dir.path(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("not used") && e.contains("transformer.h.1"),
        "{e}"
    );

    // More layers than the weights: the missing tensor is named.
    cfg["n_layer"] = serde_json::json!(3);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = models::load_dir(dir.path(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing parameter transformer.h.2"), "{e}");

    // Not JSON at all / corrupt weights.
    std::fs::write(&cfg_path, "{ not json").unwrap();
    let e = models::load_dir(dir.path(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );
    copy_fixture("gpt2-tiny", dir.path());
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let e = models::load_dir(dir.path(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}
