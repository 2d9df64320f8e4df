//! Writing GGUF files: block encodings against llama.cpp's gguf-py, and SmolLM2 written in
//! each type and read back by our own loader (logits, tokenizer, chat template).

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use ferroformer::infer::generate::logits_no_cache;
use ferroformer::infer::gguf_export::{encode, GgufType};
use ferroformer::infer::pretrained::PretrainedCausalLm;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf-quants")
        .join(name)
}

/// F16, BF16, Q8_0, Q4_0 and Q4_1 blocks equal, byte for byte, those of gguf-py's quantizers
/// (ggml's reference ones) on a matrix with rows of different scales, a zero block, ties and a
/// constant block (tests/fixtures/make_gguf_quant_fixtures.py).
#[test]
fn blocks_equal_ggml_reference_quantizers() {
    let raw = std::fs::read(fixture("input.f32")).unwrap();
    let x: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let t = Tensor::from_vec(x, (8, 256), &Device::Cpu).unwrap();
    for (file, dtype) in [
        ("f16.bin", GgmlDType::F16),
        ("bf16.bin", GgmlDType::BF16),
        ("q8_0.bin", GgmlDType::Q8_0),
        ("q4_0.bin", GgmlDType::Q4_0),
        ("q4_1.bin", GgmlDType::Q4_1),
    ] {
        let want = std::fs::read(fixture(file)).unwrap();
        let got = encode(&t, dtype).unwrap();
        assert_eq!(got.len(), want.len(), "{file}");
        let diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(diff.is_none(), "{file}: first differing byte at {diff:?}");
    }
}

fn smollm2() -> PretrainedCausalLm {
    let path = ferroformer::assets::ensure("smollm2-135m-instruct")
        .unwrap()
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    PretrainedCausalLm::from_gguf(&path, &Device::Cpu, false).unwrap()
}

/// SmolLM2 written as f32, f16, q8_0 and q4_0 and loaded back: the same tokenizer ids, special
/// tokens and chat template; f32 logits equal, f16 within f16 rounding of the weights, the
/// quantized ones within their types' error and with the same top-1 token at every position.
#[test]
fn smollm2_round_trips_through_gguf() {
    let src = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let text = "The capital of France is Paris. 12345 éà!";
    let ids = src.tokenizer.encode(text).unwrap();
    let want = logits_no_cache(&src.model, &ids).unwrap();
    let vocab = src.model.config().vocab_size();
    // (type, tolerance: the difference's rms as a fraction of the logits' rms)
    for (ty, tol) in [
        (GgufType::F32, 1e-6f32),
        (GgufType::F16, 2e-3),
        (GgufType::Q8_0, 2e-2),
        // SmolLM2's asset is itself 4-bit (Q4_1); Q4_0's symmetric grid moves its weights
        // again. tests/gguf_llamacpp.py checks llama.cpp's own quantizer makes the same bytes.
        (GgufType::Q4_0, 0.35),
    ] {
        let path = dir.path().join(format!("s-{ty:?}.gguf"));
        src.save_gguf(&path, ty).unwrap();
        let back = PretrainedCausalLm::from_gguf(&path, &Device::Cpu, false).unwrap();
        assert_eq!(back.tokenizer.encode(text).unwrap(), ids, "{ty:?}");
        assert_eq!(back.special, src.special, "{ty:?}");
        assert_eq!(back.chat_template, src.chat_template, "{ty:?}");
        let got = logits_no_cache(&back.model, &ids).unwrap();
        assert_eq!(got.len(), want.len());
        // Root mean square of the differences, against that of the logits.
        let rms = |v: &mut dyn Iterator<Item = f32>| {
            let (s, n) = v.fold((0f64, 0usize), |(s, n), x| (s + (x as f64).powi(2), n + 1));
            (s / n as f64).sqrt() as f32
        };
        let scale = rms(&mut want.iter().copied());
        let err = rms(&mut got.iter().zip(&want).map(|(a, b)| a - b));
        eprintln!(
            "{ty:?}: rms difference {err} ({} of the logits' rms)",
            err / scale
        );
        assert!(
            err <= tol * scale,
            "{ty:?}: rms difference {err} > {tol} x {scale}"
        );
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        let top: Vec<usize> = want.chunks(vocab).map(argmax).collect();
        let top_back: Vec<usize> = got.chunks(vocab).map(argmax).collect();
        if ty != GgufType::Q4_0 {
            assert_eq!(top_back, top, "{ty:?}");
        } else {
            // 4-bit weights may move a close call; most positions keep their top token.
            let same = top.iter().zip(&top_back).filter(|(a, b)| a == b).count();
            assert!(
                same * 4 >= top.len() * 3,
                "{ty:?}: {same} of {} top-1 tokens",
                top.len()
            );
        }
    }
}

/// A quantized model cannot be written again, an unknown type is named, and a failed write
/// leaves nothing behind.
#[test]
fn bad_exports_are_refused() {
    let e = GgufType::parse("q3_x").unwrap_err();
    assert!(e.to_string().contains("q3_x"), "{e}");
    let path = ferroformer::assets::ensure("smollm2-135m-instruct")
        .unwrap()
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let q = PretrainedCausalLm::from_gguf(&path, &Device::Cpu, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = q
        .save_gguf(&dir.path().join("x.gguf"), GgufType::F16)
        .unwrap_err();
    assert!(e.to_string().contains("without --quantized"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The CLI's bad options name the problem before any model is loaded or file written.
#[test]
fn convert_rejects_bad_gguf_options() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferroformer"))
            .arg("--quiet")
            .arg("convert")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let gguf = dir.path().join("m.gguf");
    let gguf = gguf.to_str().unwrap();
    let e = run(&[
        "--from",
        "smollm2-135m-instruct",
        "--to",
        gguf,
        "--quantize",
        "q9_9",
    ]);
    assert!(e.contains("\"q9_9\"") && e.contains("q4_1"), "{e}");
    let out_dir = dir.path().join("hf");
    let e = run(&[
        "--from",
        "smollm2-135m-instruct",
        "--to",
        out_dir.to_str().unwrap(),
        "--quantize",
        "q8_0",
    ]);
    assert!(e.contains("--quantize applies to GGUF output"), "{e}");
    std::fs::write(gguf, b"precious").unwrap();
    let e = run(&["--from", "smollm2-135m-instruct", "--to", gguf]);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(gguf).unwrap(), b"precious");
}

/// A PEFT LoRA adapter on SmolLM2 written as llama.cpp's adapter file: the metadata, A as
/// is, B's rows in llama.cpp's rotary order (query) or as they are (value); with rsLoRA the
/// scale is folded into B and alpha written as 0. DoRA is refused, naming it.
#[test]
fn lora_adapters_are_written_for_llama_cpp() {
    use ferroformer::io::gguf::{permute_rotary, Gguf};
    let base = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let a_q = Tensor::randn(0f32, 1.0, (4, 576), &dev).unwrap();
    let b_q = Tensor::randn(0f32, 1.0, (576, 4), &dev).unwrap();
    let a_v = Tensor::randn(0f32, 1.0, (4, 576), &dev).unwrap();
    let b_v = Tensor::randn(0f32, 1.0, (192, 4), &dev).unwrap();
    let p = "base_model.model.model.layers.3.self_attn";
    let tensors = std::collections::HashMap::from([
        (format!("{p}.q_proj.lora_A.weight"), a_q.clone()),
        (format!("{p}.q_proj.lora_B.weight"), b_q.clone()),
        (format!("{p}.v_proj.lora_A.weight"), a_v.clone()),
        (format!("{p}.v_proj.lora_B.weight"), b_v.clone()),
    ]);
    candle_core::safetensors::save(&tensors, dir.path().join("adapter_model.safetensors")).unwrap();
    let config = |extra: &str| {
        std::fs::write(
            dir.path().join("adapter_config.json"),
            format!(
                r#"{{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                "base_model_name_or_path": "smollm2-135m-instruct"{extra}}}"#
            ),
        )
        .unwrap()
    };
    let read = |t: &str, g: &mut Gguf| {
        g.qtensor(t, &dev)
            .unwrap()
            .dequantize(&dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let out = dir.path().join("a.gguf");
    config("");
    base.save_adapter_gguf(dir.path(), &out, GgufType::F32)
        .unwrap();
    let mut g = Gguf::open(&out).unwrap();
    assert_eq!(g.str("general.type").unwrap(), "adapter");
    assert_eq!(g.str("adapter.type").unwrap(), "lora");
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.f64("adapter.lora.alpha").unwrap(), Some(8.0));
    assert_eq!(read("blk.3.attn_q.weight.lora_a", &mut g), flat(&a_q));
    assert_eq!(
        read("blk.3.attn_q.weight.lora_b", &mut g),
        flat(&permute_rotary(&b_q, 9).unwrap())
    );
    assert_eq!(read("blk.3.attn_v.weight.lora_a", &mut g), flat(&a_v));
    assert_eq!(read("blk.3.attn_v.weight.lora_b", &mut g), flat(&b_v));
    // rsLoRA: PEFT scales by alpha / sqrt(r) = 4; llama.cpp would take alpha / r.
    config(r#", "use_rslora": true"#);
    base.save_adapter_gguf(dir.path(), &out, GgufType::F32)
        .unwrap();
    let mut g = Gguf::open(&out).unwrap();
    assert_eq!(g.f64("adapter.lora.alpha").unwrap(), Some(0.0));
    assert_eq!(
        read("blk.3.attn_v.weight.lora_b", &mut g),
        flat(&(&b_v * 4.0).unwrap())
    );
    config(r#", "use_dora": true"#);
    let e = base
        .save_adapter_gguf(dir.path(), &dir.path().join("d.gguf"), GgufType::F32)
        .unwrap_err();
    assert!(e.to_string().contains("DoRA"), "{e}");
    assert!(!dir.path().join("d.gguf").exists());
}
