//! bf16 mixed precision: the rounding against the `half` crate's, and every bf16 product
//! kernel this CPU runs against an f64 product of the bf16-rounded inputs.

use ferroformer::nn::kernels::bf16::{self, Kernel};
use ferroformer::nn::kernels::gemm::{View, ViewMut};
use half::bf16 as Bf16;

mod common;

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ferroformer::rng::Rng::new(seed);
    (0..len).map(|_| rng.normal() as f32).collect()
}

/// Round to nearest even, as `half` (an implementation nobody here wrote) does it, on normal
/// numbers, exact ties both ways, subnormals, infinities, the largest finite values and NaN.
#[test]
fn rounding_matches_half() {
    let mut xs: Vec<f32> = values(100_000, 1).into_iter().map(|v| v * 1e3).collect();
    for bits in [
        0x3f80_8000u32, // 1 + half an ulp: tie, rounds down to even
        0x3f81_8000,    // tie, rounds up to even
        0x3f80_7fff,
        0x3f80_8001,
        0x0000_0001, // smallest subnormal
        0x807f_ffff, // largest negative subnormal
        0x7f7f_ffff, // f32::MAX rounds to infinity
        0x7f80_0000,
        0xff80_0000,
        0x0000_0000,
        0x8000_0000,
    ] {
        xs.push(f32::from_bits(bits));
    }
    for x in xs {
        let want = Bf16::from_f32(x).to_bits() as u32;
        assert_eq!(bf16::bf16_bits(x), want, "{x:e} ({:#010x})", x.to_bits());
    }
    for nan in [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001)] {
        assert!(bf16::round(nan).is_nan());
    }
}

/// `(a, a^T storage?)` views and the naive f64 product of rounded inputs.
#[allow(clippy::too_many_arguments)]
fn check_product(kernel: Kernel, m: usize, k: usize, n: usize, a_t: bool, b_t: bool, acc: bool) {
    let a = values(m * k, (m * 31 + k) as u64);
    let b = values(k * n, (k * 17 + n) as u64);
    // Stored transposed where asked, with a row stride wider than the rows.
    let (ars, brs) = (
        if a_t { m + 3 } else { k + 5 },
        if b_t { k + 2 } else { n + 1 },
    );
    let mut abuf = vec![f32::NAN; if a_t { k * ars } else { m * ars }];
    let mut bbuf = vec![f32::NAN; if b_t { n * brs } else { k * brs }];
    for i in 0..m {
        for p in 0..k {
            let at = if a_t { p * ars + i } else { i * ars + p };
            abuf[at] = a[i * k + p];
        }
    }
    for p in 0..k {
        for j in 0..n {
            let at = if b_t { j * brs + p } else { p * brs + j };
            bbuf[at] = b[p * n + j];
        }
    }
    let av = if a_t {
        View::rows(&abuf, k, m, ars).t()
    } else {
        View::rows(&abuf, m, k, ars)
    };
    let bv = if b_t {
        View::rows(&bbuf, n, k, brs).t()
    } else {
        View::rows(&bbuf, k, n, brs)
    };
    let drs = n + 7;
    let init = 0.25f32;
    let mut out = vec![init; m * drs];
    bf16::matmul_with(
        kernel,
        ViewMut::rows(&mut out, m, n, drs),
        av,
        bv,
        acc,
        true,
    );
    for i in 0..m {
        for j in 0..n {
            let (mut want, mut scale) = (if acc { init as f64 } else { 0.0 }, 1e-30f64);
            for p in 0..k {
                let x = bf16::round(a[i * k + p]) as f64 * bf16::round(b[p * n + j]) as f64;
                want += x;
                scale += x.abs();
            }
            let got = out[i * drs + j] as f64;
            // f32 accumulation of k exact products: a few units of f32 rounding per term.
            let tol = 4.0 * f32::EPSILON as f64 * scale * (k as f64).sqrt().max(1.0) + 1e-7;
            assert!(
                (got - want).abs() <= tol,
                "{kernel:?} {m}x{k}x{n} a_t={a_t} b_t={b_t} acc={acc}: [{i},{j}] {got} vs {want}"
            );
        }
        // Padding between rows is untouched.
        for j in n..drs.min(out.len() - i * drs) {
            assert_eq!(out[i * drs + j], init);
        }
    }
}

#[test]
fn every_kernel_matches_f64_on_rounded_inputs() {
    let kernels = Kernel::available();
    assert!(kernels.contains(&Kernel::Portable));
    for kernel in kernels {
        // Edges of every blocking: one row or column, odd depths (a lone last pair), depths
        // past one packed block, more rows than one block, more columns than one tile.
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 40),
            (13, 3, 33),
            (37, 255, 70),
            (12, 257, 32),
            (150, 300, 65),
            (300, 64, 5),
            (5, 600, 130),
        ] {
            for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
                for acc in [false, true] {
                    check_product(kernel, m, k, n, a_t, b_t, acc);
                }
            }
        }
    }
}

/// A weight held in bf16 gives exactly the product of the same weight in f32.
#[test]
fn bf16_weights_equal_rounded_f32_weights() {
    let (m, k, n) = (29, 77, 45);
    let x = values(m * k, 3);
    let w = values(n * k, 4);
    let w16 = bf16::to_bf16(&w);
    for kernel in Kernel::available() {
        let xv = View::rows(&x, m, k, k);
        let mut y32 = vec![0f32; m * n];
        let mut y16 = vec![0f32; m * n];
        let (w32, w16v) = (View::rows(&w, n, k, k).t(), View::rows(&w16, n, k, k).t());
        let d32 = ViewMut::rows(&mut y32, m, n, n);
        bf16::matmul_with(kernel, d32, xv, w32, false, false);
        let d16 = ViewMut::rows(&mut y16, m, n, n);
        bf16::matmul_with(kernel, d16, xv, w16v, false, false);
        assert_eq!(y32, y16, "{kernel:?}");
    }
}

fn rounded(t: &candle_core::Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&v| bf16::round(v) as f64)
        .collect()
}

/// `a [m, k] @ b [k, n]` in f64.
fn mm(a: &[f64], b: &[f64], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                out[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    out
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols)
        .map(|i| a[(i % rows) * cols + i / rows])
        .collect()
}

fn assert_near(what: &str, got: &candle_core::Tensor, want: &[f64], k: usize) {
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    // f32 accumulation of k exact bf16 products.
    let tol = 8.0 * f32::EPSILON as f64 * scale * (k as f64).sqrt();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

/// The fused linear op under bf16 precision, both weight orientations (GPT-2 Conv1D and
/// `nn.Linear`): the output and the gradients of input, weight and bias are the f64 products
/// of the bf16-rounded operands (the incoming gradient rounded too), accumulated in f32.
#[test]
fn linear_layer_in_bf16_matches_f64_of_rounded_operands() {
    use candle_core::{Device, Tensor, Var};
    use ferroformer::nn::kernels::bf16::Precision;
    let (n, d_in, d_out) = (37, 70, 45);
    for in_out in [false, true] {
        let x = Var::from_vec(values(n * d_in, 11), (n, d_in), &Device::Cpu).unwrap();
        let wdims = if in_out { (d_in, d_out) } else { (d_out, d_in) };
        let w = Var::from_vec(values(d_in * d_out, 12), wdims, &Device::Cpu).unwrap();
        let b = Var::from_vec(values(d_out, 13), d_out, &Device::Cpu).unwrap();
        let g = Tensor::from_vec(values(n * d_out, 14), (n, d_out), &Device::Cpu).unwrap();
        let y = {
            let _bf16 = bf16::enable(Precision::Bf16);
            ferroformer::nn::kernels::linear::linear(x.as_tensor(), w.as_tensor(), Some(&b), in_out)
                .unwrap()
                .expect("fused on CPU")
        };
        // Backward runs outside the guard: ops keep the precision they were built with.
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (xr, gr) = (rounded(x.as_tensor()), rounded(&g));
        // The weight as [in, out].
        let wr = if in_out {
            rounded(w.as_tensor())
        } else {
            transpose(&rounded(w.as_tensor()), d_out, d_in)
        };
        let bias: Vec<f64> = b
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mut want_y = mm(&xr, &wr, (n, d_in, d_out));
        for (i, v) in want_y.iter_mut().enumerate() {
            *v += bias[i % d_out];
        }
        assert_near("y", &y, &want_y, d_in);
        let want_dx = mm(&gr, &transpose(&wr, d_in, d_out), (n, d_out, d_in));
        assert_near("dx", grads.get(&x).unwrap(), &want_dx, d_out);
        let dw_in_out = mm(&transpose(&xr, n, d_in), &gr, (d_in, n, d_out));
        let want_dw = if in_out {
            dw_in_out
        } else {
            transpose(&dw_in_out, d_in, d_out)
        };
        assert_near("dW", grads.get(&w).unwrap(), &want_dw, n);
        let gs: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let want_db: Vec<f64> = (0..d_out)
            .map(|j| (0..n).map(|i| gs[i * d_out + j] as f64).sum())
            .collect();
        assert_near("db", grads.get(&b).unwrap(), &want_db, n);
    }
}

/// A frozen weight held in bf16 gives the same output and input gradient as the f32 weight
/// under bf16 precision.
#[test]
fn linear_layer_with_a_bf16_weight_equals_bf16_precision() {
    use candle_core::{DType, Device, Var};
    use ferroformer::nn::kernels::bf16::Precision;
    let (n, d_in, d_out) = (19, 64, 33);
    let x = Var::from_vec(values(n * d_in, 21), (n, d_in), &Device::Cpu).unwrap();
    let w = Var::from_vec(values(d_in * d_out, 22), (d_out, d_in), &Device::Cpu)
        .unwrap()
        .as_tensor()
        .detach();
    let w16 = w.to_dtype(DType::BF16).unwrap();
    let run = |w: &candle_core::Tensor| {
        let _bf16 = bf16::enable(Precision::Bf16);
        let y = ferroformer::nn::kernels::linear::linear(x.as_tensor(), w, None, false)
            .unwrap()
            .expect("fused on CPU");
        let dx = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        (y, dx.get(&x).unwrap().clone())
    };
    let (y32, dx32) = run(&w);
    let (y16, dx16) = run(&w16);
    assert_eq!(y16.dtype(), DType::F32);
    let v = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&y32), v(&y16));
    assert_eq!(v(&dx32), v(&dx16));
}

/// Per-step training losses and the final validation loss of a run of `recipe` with
/// `overrides`, in f32 and in bf16, and the bf16 trainer (for its store).
fn f32_and_bf16_runs(
    dir: &std::path::Path,
    recipe: &str,
    overrides: &[String],
    steps: usize,
) -> [(Vec<f64>, f64); 2] {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("recipe.toml");
    std::fs::write(&path, recipe).unwrap();
    ["f32", "bf16"].map(|p| {
        let mut ov = overrides.to_vec();
        ov.push(format!("train.precision={p:?}"));
        ov.push(format!(
            "train.out_dir={:?}",
            dir.join(p).display().to_string()
        ));
        let recipe = ferroformer::tasks::load_recipe(&path, &ov).unwrap();
        let mut trainer =
            ferroformer::tasks::prepare(recipe, false, &candle_core::Device::Cpu).unwrap();
        let losses: Vec<f64> = (0..steps)
            .map(|_| trainer.train_step().unwrap().loss)
            .collect();
        let val = trainer.evaluate().unwrap().val_loss.unwrap();
        if p == "bf16" {
            let held = trainer
                .store()
                .vars()
                .values()
                .filter(|v| v.dtype() == candle_core::DType::BF16)
                .count();
            let lora = overrides.iter().any(|o| o.contains("LORA"));
            assert_eq!(
                held > 0,
                lora,
                "frozen base matrices held in bf16 under PEFT only"
            );
        }
        (losses, val)
    })
}

/// bf16 loss curves stay within `step_tol` (relative) of f32's at every step, and the final
/// validation loss within `val_tol`; the curves also differ (bf16 was in effect).
fn assert_tracks(what: &str, runs: &[(Vec<f64>, f64); 2], step_tol: f64, val_tol: f64) {
    let [(l32, v32), (l16, v16)] = runs;
    eprintln!("{what}: f32 {l32:?} val {v32}\n{what}: bf16 {l16:?} val {v16}");
    for (i, (a, b)) in l32.iter().zip(l16).enumerate() {
        assert!(
            (a - b).abs() <= step_tol * a.abs(),
            "{what}: step {} loss {b} in bf16 vs {a} in f32",
            i + 1
        );
    }
    assert!(l32 != l16, "{what}: bf16 changed nothing");
    assert!(
        (v32 - v16).abs() <= val_tol * v32,
        "{what}: val loss {v16} in bf16 vs {v32} in f32"
    );
}

/// Pre-training a small GPT from scratch: bf16's loss curve tracks f32's within 2% at every
/// step and ends within 1% on validation. (The demo itself, 2000 steps on Shakespeare, ends
/// within 0.05%: bench/RESULTS.md.)
#[test]
fn pretraining_in_bf16_tracks_f32() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, common::small_corpus(300)).unwrap();
    let recipe = common::tiny_recipe(&corpus, &d.path().join("unused"), 30);
    let runs = f32_and_bf16_runs(d.path(), &recipe, &[], 30);
    assert_tracks("tiny GPT", &runs, 0.02, 0.01);
}

/// LoRA fine-tuning of SmolLM2-135M (real weights) on Hamlet: with bf16 the frozen base
/// matrices are held in bf16, and the loss curve tracks f32 within 1% at every step.
#[test]
fn lora_finetuning_in_bf16_tracks_f32() {
    let d = tempfile::tempdir().unwrap();
    let recipe = r#"name = "smol-lora"
[data]
corpus = ["asset:shakespeare/hamlet_gut.txt"]
val_fraction = 0.05
[model]
init = "smollm2-135m-instruct"
architecture = "llama"
[peft]
peft_type = "LORA"
r = 8
lora_alpha = 16
target_modules = ["q_proj", "v_proj"]
[train]
steps = 8
batch_size = 2
context = 64
lr = 2e-3
min_lr = 2e-4
warmup_steps = 1
eval_interval = 8
eval_iters = 2
log_interval = 1
seed = 3
"#;
    let runs = f32_and_bf16_runs(d.path(), recipe, &["peft.peft_type=\"LORA\"".into()], 8);
    assert_tracks("SmolLM2 LoRA", &runs, 0.01, 0.01);
}

/// A precision we do not have, or a bf16 kernel the CPU lacks, is a clear error naming it.
#[test]
fn bad_precision_settings_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let out = out.to_str().unwrap();
    common::fails_with(
        common::ff().args(["demo", "--out", out, "--set", "train.precision=\"fp16\""]),
        &["train.precision", "fp16", "expected `f32` or `bf16`"],
    );
    common::fails_with(
        common::ff().env("FERROFORMER_BF16_KERNEL", "amx").args([
            "demo",
            "--out",
            out,
            "--set",
            "train.precision=\"bf16\"",
        ]),
        &[
            "FERROFORMER_BF16_KERNEL=amx",
            "expected dot, fma or portable",
        ],
    );
}
