//! GPT-2 against transformers' GPT2LMHeadModel (fixtures made by tests/fixtures/make_fixtures.py):
//! logits, loss, and parameters after 3 AdamW steps (the llm.c pattern).

mod common;
use candle_core::{DType, Device};
use common::{assert_close, fixture};
use ferroformer::io::safetensors;
use ferroformer::models;
use ferroformer::objective::CausalLm;
use ferroformer::train::{AdamW, AdamWConfig, GradAccumulator};

fn check(name: &str) {
    let dev = Device::Cpu;
    let dir = fixture(name);
    let (model, store) = models::load_dir(&dir, &dev).unwrap();
    let reference = safetensors::load(&dir.join("reference.safetensors"), &dev).unwrap();
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let (b, t) = ids.dims2().unwrap();

    // Logits within 1e-4 (relative, with an absolute floor of 1e-5 for values near zero).
    let logits = model.forward(&ids, None, None).unwrap();
    assert_close(
        &format!("{name} logits"),
        &logits,
        &reference["logits"],
        1e-4,
        1e-5,
    );

    // transformers shifts labels inside the model; we feed shifted inputs/targets.
    let inputs = ids.narrow(1, 0, t - 1).unwrap();
    let targets = ids.narrow(1, 1, t - 1).unwrap();
    let loss = CausalLm::loss(&model, &inputs, &targets, None).unwrap();
    assert_close(
        &format!("{name} loss"),
        &loss.reshape(1).unwrap(),
        &reference["loss"],
        1e-5,
        0.0,
    );

    // Three AdamW steps with PyTorch's hyper-parameters and parameter groups.
    let first: std::collections::BTreeMap<String, Vec<f32>> = store
        .vars()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect();
    let mut opt = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    let mut losses = vec![];
    for _ in 0..3 {
        // The training loss (on CPU: the fused output projection + cross-entropy op).
        let loss = CausalLm::train_loss(&model, &inputs, &targets, None).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        if losses.len() == 1 {
            for (key, var) in store.vars() {
                let g = grads
                    .get(var.as_tensor())
                    .expect("every parameter has a gradient");
                assert_close(
                    &format!("{name} grad {key}"),
                    g,
                    &reference[&format!("grad.{key}")],
                    1e-4,
                    1e-7,
                );
            }
        }
        let mut acc = GradAccumulator::default();
        acc.add(&store, &grads).unwrap();
        opt.step(&store, acc.grads(), 1e-3, 1.0).unwrap();
    }
    let want: Vec<f32> = reference["step_losses"].to_vec1().unwrap();
    for (a, w) in losses.iter().zip(&want) {
        assert!(
            ((a - w) / w).abs() < 1e-5,
            "{name} step losses {losses:?} vs {want:?}"
        );
    }
    let mut checked = 0;
    // Adam divides by the root of the squared gradient, so where the true gradient is (nearly)
    // zero, f32 rounding noise on either side decides a step of up to lr. Such elements (first
    // gradient below 1e-6, e.g. the key bias, whose gradient is analytically zero because softmax
    // ignores a constant added to a row) are held only to 3 lr; every other element to 1e-5
    // relative of the value plus 1e-4 relative of the distance the three updates moved it (the
    // gradients themselves agree to 1e-4, and Adam passes that on to its step).
    let lr = 1e-3f64;
    let (mut tight, mut loose) = (0usize, 0usize);
    for (key, var) in store.vars() {
        let a: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let r: Vec<f32> = reference[&format!("after.{key}")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let g: Vec<f32> = reference[&format!("grad.{key}")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let before: Vec<f32> = first[key].clone();
        for i in 0..a.len() {
            let d = (a[i] as f64 - r[i] as f64).abs();
            let moved = (r[i] as f64 - before[i] as f64).abs();
            let tol = 1e-5 * (r[i] as f64).abs() + 1e-4 * moved + 1e-8;
            if d <= tol {
                tight += 1;
            } else {
                assert!(
                    g[i] != 0.0 && g[i].abs() < 1e-6 && d <= 3.0 * lr,
                    "{name} {key}[{i}] after 3 AdamW steps: {} vs torch {} (diff {d:e} > {tol:e}; moved {moved:e}; grad {:e})",
                    a[i], r[i], g[i]
                );
                loose += 1;
            }
        }
        checked += 1;
    }
    // Noise-dominated elements must be rare, or the test would prove little.
    assert!(
        loose * 200 < tight,
        "{name}: {loose} loose vs {tight} tight elements"
    );
    assert_eq!(checked, store.vars().len());
    assert!(checked > 20);
    assert_eq!(b, 2);
}

/// Both the fused CPU kernels (the default) and the plain composition (the path other devices
/// take) must match PyTorch. (Tests in this file may interleave the global switch; each path is
/// correct on its own, so a mix is too.)
fn check_both_paths(name: &str) {
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        check(name);
    }
    ferroformer::nn::kernels::set_plain(false);
}

#[test]
fn tied_gelu_new_matches_transformers() {
    check_both_paths("gpt2-tiny");
}

#[test]
fn untied_exact_gelu_matches_transformers() {
    check_both_paths("gpt2-tiny-untied");
}
