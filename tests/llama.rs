//! Llama against transformers (fixtures made by tests/fixtures/make_llama_fixtures.py): tiny
//! random `LlamaForCausalLM` checkpoints (GQA and tied/MHA) from safetensors, and the real
//! SmolLM2-135M-Instruct GGUF (asset `smollm2-135m-instruct`) as transformers dequantizes it:
//! logits, tokenizer ids, chat template, greedy chat continuation; then GGUF -> Hugging Face
//! directory -> ferroformer round trip, the quantized path, and bad input.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, compare, fixture, max_abs};
use ferroformer::infer::pretrained::PretrainedCausalLm;
use ferroformer::io::safetensors;
use ferroformer::models::{self, CausalModel};
use ferroformer::objective::CausalLm;
use ferroformer::text::chat::Message;
use std::path::PathBuf;
use std::sync::OnceLock;

fn tiny(name: &str) {
    let dev = Device::Cpu;
    let dir = fixture(name);
    let (model, _store) = models::load_dir(&dir, &dev).unwrap();
    assert_eq!(model.model_type(), "llama");
    let expected = safetensors::load(&dir.join("expected.safetensors"), &dev).unwrap();
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let logits = model.forward(&ids, None, None).unwrap();
    assert_close(
        &format!("{name} logits"),
        &logits,
        &expected["logits"],
        1e-4,
        1e-5,
    );
    // The cached path (used by generation) gives the same logits token by token.
    let row = ids.get(0).unwrap();
    let t = row.dim(0).unwrap();
    let mut caches = model.new_caches();
    let mut last = vec![];
    for i in 0..t {
        let x = row.narrow(0, i, 1).unwrap().unsqueeze(0).unwrap();
        last.push(model.forward(&x, Some(&mut caches), None).unwrap());
    }
    let cached = Tensor::cat(&last, 1).unwrap();
    assert_close(
        &format!("{name} cached logits"),
        &cached,
        &expected["logits"].get(0).unwrap().unsqueeze(0).unwrap(),
        1e-4,
        1e-5,
    );
}

/// The kernel mode is process-wide, so everything that switches it runs in this one test.
#[test]
fn tiny_llama_matches_transformers_fused_and_plain() {
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        tiny("llama-tiny");
        tiny("llama-tiny-tied");
    }
    fused_and_plain_gradients_agree();
    ferroformer::nn::kernels::set_plain(false);
}

/// Gradients of the fused path (RoPE kernel, packed GQA attention, fused head + loss) equal
/// those of the plain composition of candle ops.
fn fused_and_plain_gradients_agree() {
    let dev = Device::Cpu;
    let dir = fixture("llama-tiny");
    let expected = safetensors::load(&dir.join("expected.safetensors"), &dev).unwrap();
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let t = ids.dim(1).unwrap();
    let (x, y) = (
        ids.narrow(1, 0, t - 1).unwrap(),
        ids.narrow(1, 1, t - 1).unwrap(),
    );
    let mut results = vec![];
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        let (model, store) = models::load_dir(&dir, &dev).unwrap();
        let loss = CausalLm::train_loss(&model, &x, &y, None).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<(String, Tensor)> = store
            .vars()
            .iter()
            .map(|(k, v): (&String, &Var)| (k.clone(), grads.get(v.as_tensor()).unwrap().clone()))
            .collect();
        results.push((loss.to_scalar::<f32>().unwrap(), g));
    }
    ferroformer::nn::kernels::set_plain(false);
    let ((l0, g0), (l1, g1)) = (&results[0], &results[1]);
    assert!((l0 - l1).abs() < 1e-5 * l1.abs(), "loss {l0} vs {l1}");
    for ((k, a), (_, b)) in g0.iter().zip(g1) {
        let scale = max_abs(b);
        assert_close(&format!("grad {k}"), a, b, 1e-4, 1e-5 * scale.max(1e-6));
    }
}

fn smollm2_path() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        ferroformer::assets::ensure("smollm2-135m-instruct")
            .unwrap()
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
    })
    .clone()
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

/// Logits of the fixture's 64-token prompt at its stored positions and vocabulary entries.
fn sampled_logits(model: &CausalModel) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let e = safetensors::load(&fixture("smollm2/expected.safetensors"), &dev).unwrap();
    let ids = e["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&ids, None, None).unwrap().squeeze(0).unwrap();
    let pos = e["positions"].to_dtype(DType::U32).unwrap();
    let vocab = e["vocab_idx"].to_dtype(DType::U32).unwrap();
    let got = logits
        .index_select(&pos, 0)
        .unwrap()
        .index_select(&vocab, 1)
        .unwrap();
    (got, e["logits"].clone())
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let p = PretrainedCausalLm::from_gguf(&smollm2_path(), &Device::Cpu, false).unwrap();

    // Logits of the dequantized f32 model within 1e-4 relative (absolute floor 1e-5 of the
    // logit scale, for entries near zero).
    let (got, want) = sampled_logits(&p.model);
    let scale = max_abs(&want);
    assert_close("smollm2 logits", &got, &want, 1e-4, 1e-5 * scale);

    // Tokenizer: identical ids and decoding on varied text. The reference is llama.cpp's
    // tokenization, which applies the GGUF's `tokenizer.ggml.pre = "smollm"` (digits split
    // one by one, as SmolLM2's own tokenizer.json does); transformers' GGUF converter ignores
    // it and differs only where a space precedes a non-ASCII numeral (one case, recorded).
    for case in json("smollm2/tokenizer_cases.json").as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids_llamacpp"].clone()).unwrap();
        if case["same_as_llamacpp"].as_bool().unwrap() {
            assert_eq!(case["ids"], case["ids_llamacpp"]);
        }
        assert_eq!(p.tokenizer.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(
            p.tokenizer.decode(&want).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decoding of {text:?}"
        );
    }

    // Chat template: the same text and ids as apply_chat_template.
    let chat = json("smollm2/chat.json");
    let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let rendered = p.chat().unwrap().render(&messages, true).unwrap();
    assert_eq!(rendered, chat["rendered"].as_str().unwrap());
    let prompt: Vec<u32> = serde_json::from_value(chat["prompt_ids"].clone()).unwrap();
    assert_eq!(p.tokenizer.encode(&rendered).unwrap(), prompt);

    // Greedy continuation: token for token (transformers was run without stopping at EOS).
    let want: Vec<u32> = serde_json::from_value(chat["output_ids"].clone()).unwrap();
    let cfg = ferroformer::infer::generate::SamplingConfig {
        max_tokens: want.len(),
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };
    let got =
        ferroformer::infer::generate::generate_ids(&p.model, &prompt, &cfg, &[], &mut |_| Ok(true))
            .unwrap();
    assert_eq!(got, want);
    // With the model's stop tokens, the reply ends at the end of the turn.
    let stop = p.stop_tokens();
    assert!(stop.contains(&p.tokenizer.token_id("<|im_end|>").unwrap()));
    let reply =
        ferroformer::infer::generate::generate_ids(&p.model, &prompt, &cfg, &stop, &mut |_| {
            Ok(true)
        })
        .unwrap();
    assert_eq!(
        p.tokenizer.decode(&reply).unwrap(),
        "The capital of France is Paris."
    );
}

#[test]
fn smollm2_round_trip_through_hf_directory() {
    let dev = Device::Cpu;
    let p = PretrainedCausalLm::from_gguf(&smollm2_path(), &dev, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    p.save_dir(dir.path()).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f} written");
    }
    let q = PretrainedCausalLm::load(dir.path().to_str().unwrap(), &dev, false).unwrap();
    // The weights come back bit for bit; the logits agree to f32 kernel differences (another
    // test in this binary may switch the kernels to the plain path meanwhile).
    let (pa, qa) = (p.store.tensors(), q.store.tensors());
    assert_eq!(pa.keys().collect::<Vec<_>>(), qa.keys().collect::<Vec<_>>());
    for (k, t) in &pa {
        assert_close(&format!("round-trip {k}"), &qa[k], t, 0.0, 0.0);
    }
    let (a, _) = sampled_logits(&p.model);
    let (b, _) = sampled_logits(&q.model);
    let scale = max_abs(&a);
    assert_close("round-trip logits", &b, &a, 1e-4, 1e-5 * scale);
    assert_eq!(q.chat_template, p.chat_template);
    assert_eq!(q.special, p.special);
    let text = "Numbers 3.14159 and 1234567890, code `fn main() {}` — café 👩‍👩‍👧";
    assert_eq!(
        q.tokenizer.encode(text).unwrap(),
        p.tokenizer.encode(text).unwrap()
    );
}

/// The quantized path multiplies Q4_1/Q8_0 weights directly (with activations quantized to
/// 8 bits, as llama.cpp does): close to the dequantized f32 model, not equal.
#[test]
fn smollm2_quantized_path_tracks_f32() {
    let dev = Device::Cpu;
    let q = PretrainedCausalLm::from_gguf(&smollm2_path(), &dev, true).unwrap();
    assert!(q.quantized);
    let (got, want) = sampled_logits(&q.model);
    let scale = max_abs(&want);
    let (diff, _) = compare(&got, &want, 0.0, 1.0);
    // 8-bit activations: llama.cpp on this file differs from transformers by up to 2% of
    // the scale (0.57 of 27.4).
    assert!(diff < 0.03 * scale, "max |diff| {diff} vs scale {scale}");
    // Same top token at every stored position.
    let top = |t: &Tensor| t.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(top(&got), top(&want));
    assert!(q.save_dir(tempfile::tempdir().unwrap().path()).is_err());
}

fn err_of<T>(r: ferroformer::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_gguf_and_directories_give_clear_errors() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(smollm2_path()).unwrap();

    // Truncated: the header parses, a tensor runs past the end.
    let trunc = tmp.path().join("truncated.gguf");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(PretrainedCausalLm::from_gguf(&trunc, &dev, false));
    assert!(e.contains("truncated.gguf") && e.contains("tensor"), "{e}");
    // Cut inside the header.
    std::fs::write(&trunc, &bytes[..1000]).unwrap();
    let e = err_of(PretrainedCausalLm::from_gguf(&trunc, &dev, false));
    assert!(e.contains("truncated.gguf") && e.contains("GGUF"), "{e}");

    // Unknown quantization type: patch the first tensor's ggml type to 99.
    let g = ferroformer::io::gguf::Gguf::open(&smollm2_path()).unwrap();
    let name = g.content.tensor_infos.keys().min().unwrap().clone();
    drop(g);
    let at = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    // name, n_dims (u32), dims (u64 each), then the type (u32).
    let n_dims = u32::from_le_bytes(
        bytes[at + name.len()..at + name.len() + 4]
            .try_into()
            .unwrap(),
    );
    let ty = at + name.len() + 4 + 8 * n_dims as usize;
    let mut bad = bytes.clone();
    bad[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    let badq = tmp.path().join("badtype.gguf");
    std::fs::write(&badq, &bad).unwrap();
    let e = err_of(PretrainedCausalLm::from_gguf(&badq, &dev, false));
    assert!(e.contains("badtype.gguf") && e.contains("99"), "{e}");

    // Not a GGUF at all.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"hello, not a model").unwrap();
    let e = err_of(PretrainedCausalLm::from_gguf(&junk, &dev, false));
    assert!(e.contains("junk.gguf"), "{e}");

    // A directory whose config does not match its weights.
    let mismatch = tmp.path().join("mismatch");
    std::fs::create_dir(&mismatch).unwrap();
    std::fs::copy(
        fixture("llama-tiny/model.safetensors"),
        mismatch.join("model.safetensors"),
    )
    .unwrap();
    let mut cfg = json("llama-tiny/config.json");
    cfg["intermediate_size"] = serde_json::json!(128);
    std::fs::write(mismatch.join("config.json"), cfg.to_string()).unwrap();
    let e = err_of(models::load_dir(&mismatch, &dev));
    assert!(
        e.contains("model.safetensors") && e.contains("config.json") && e.contains("mlp"),
        "{e}"
    );

    // Unsupported model_type names it and what is supported.
    cfg["intermediate_size"] = json("llama-tiny/config.json")["intermediate_size"].clone();
    cfg["model_type"] = serde_json::json!("mamba");
    std::fs::write(mismatch.join("config.json"), cfg.to_string()).unwrap();
    let e = err_of(models::load_dir(&mismatch, &dev));
    assert!(e.contains("mamba") && e.contains("llama"), "{e}");

    // Missing tokenizer: the fixture directory has weights but no tokenizer.json.
    let e = err_of(PretrainedCausalLm::from_dir(&fixture("llama-tiny"), &dev));
    assert!(e.contains("tokenizer.json"), "{e}");

    // --quantized on a safetensors directory.
    let e = err_of(PretrainedCausalLm::load(
        fixture("llama-tiny").to_str().unwrap(),
        &dev,
        true,
    ));
    assert!(e.contains("quantized"), "{e}");
}

/// llama.cpp's layout, built here from a random Llama: names mapped to llama.cpp's, query and
/// key rows permuted as its converter does, matrices in F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and
/// the K-quants Q2_K..Q6_K, norms F32, a minimal tokenizer in the metadata. Loading it must give exactly the
/// model built from the same dequantized weights in transformers' layout (f32 path), and
/// close logits on the quantized path (candle's K-quant matmuls).
#[test]
fn synthetic_gguf_with_k_quants_loads_like_its_weights() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use ferroformer::models::{ArchConfig, LlamaConfig};
    let dev = Device::Cpu;
    let (vocab, hidden, ffn, heads, kv) = (64usize, 256usize, 512usize, 4usize, 2usize);
    let mut cfg = LlamaConfig::new(vocab, hidden, ffn, 2, heads, kv, 64);
    cfg.tie_word_embeddings = true;
    let arch = ArchConfig::new(cfg).unwrap();
    let (_, store) = CausalModel::init(&arch, &dev, 5).unwrap();
    let d = hidden / heads;
    let gguf_name = |hf: &str| -> String {
        let map = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
        ];
        if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
            return g.to_string();
        }
        let rest = hf.strip_prefix("model.layers.").unwrap();
        let (layer, part) = rest.split_once('.').unwrap();
        let part = part.strip_suffix(".weight").unwrap();
        let g = match part {
            "input_layernorm" => "attn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "post_attention_layernorm" => "ffn_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            other => panic!("{other}"),
        };
        format!("blk.{layer}.{g}.weight")
    };
    // llama.cpp's convert: w.reshape(h, 2, d/2, in).swapaxes(1, 2).reshape(rows, in).
    let permute = |w: &Tensor, h: usize| -> Tensor {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((h, 2, d / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    };
    let mut qtensors: Vec<(String, QTensor)> = vec![];
    let mut reference = std::collections::BTreeMap::new();
    // Every matrix type llama.cpp files commonly hold, one per matrix in turn.
    let types = [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::F16,
        GgmlDType::Q5K,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
    ];
    let mut matrices = 0;
    for (name, var) in store.vars() {
        let w = var.as_tensor().clone();
        let dtype = if w.rank() == 1 {
            GgmlDType::F32
        } else if name.contains("embed") {
            GgmlDType::Q8_0
        } else {
            matrices += 1;
            types[(matrices - 1) % types.len()]
        };
        // Row permutation commutes with row-wise quantization: the reference quantizes the
        // transformers layout, the file the permuted one.
        let q_ref = QTensor::quantize(&w, dtype).unwrap();
        reference.insert(name.clone(), q_ref.dequantize(&dev).unwrap());
        let stored = if name.ends_with("q_proj.weight") {
            permute(&w, heads)
        } else if name.ends_with("k_proj.weight") {
            permute(&w, kv)
        } else {
            w
        };
        qtensors.push((gguf_name(name), QTensor::quantize(&stored, dtype).unwrap()));
    }
    use gguf_file::Value as V;
    let tokens: Vec<V> = (0..vocab).map(|i| V::String(format!("t{i}"))).collect();
    let meta: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.context_length", V::U32(64)),
        ("llama.embedding_length", V::U32(hidden as u32)),
        ("llama.block_count", V::U32(2)),
        ("llama.feed_forward_length", V::U32(ffn as u32)),
        ("llama.attention.head_count", V::U32(heads as u32)),
        ("llama.attention.head_count_kv", V::U32(kv as u32)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        ("tokenizer.ggml.tokens", V::Array(tokens)),
        ("tokenizer.ggml.merges", V::Array(vec![])),
        ("tokenizer.ggml.eos_token_id", V::U32(0)),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny-kquants.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, q)| (k.as_str(), q)).collect();
    gguf_file::write(&mut f, &meta_refs, &t_refs).unwrap();
    drop(f);

    assert!(matrices >= types.len(), "every type is used");
    let ids = Tensor::new(&[[3u32, 17, 42, 5, 63, 0, 9, 21]], &dev).unwrap();
    let (want_model, _) = models::from_tensors(
        &arch,
        reference,
        &dev,
        std::path::Path::new("reference"),
        std::path::Path::new("config"),
    )
    .unwrap();
    let want = want_model.forward(&ids, None, None).unwrap();

    let p = PretrainedCausalLm::from_gguf(&path, &dev, false).unwrap();
    let config = p.model.config();
    let c = config.downcast_ref::<LlamaConfig>().expect("llama");
    assert_eq!(
        (c.num_key_value_heads, c.tie_word_embeddings),
        (Some(kv), true)
    );
    assert_eq!(p.special.eos, Some(0));
    let got = p.model.forward(&ids, None, None).unwrap();
    assert_close("GGUF (K-quants, f32 path) logits", &got, &want, 1e-5, 1e-6);

    let q = PretrainedCausalLm::from_gguf(&path, &dev, true).unwrap();
    assert!(q.quantized);
    let got = q.model.forward(&ids, None, None).unwrap();
    let scale = max_abs(&want);
    let (diff, _) = compare(&got, &want, 0.0, 1.0);
    assert!(
        diff < 0.05 * scale,
        "quantized path: max |diff| {diff}, scale {scale}"
    );
}
