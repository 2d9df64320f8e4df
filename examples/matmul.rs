//! The matrix-multiply rate of `nn::kernels::gemm::matmul` on the shapes models train with,
//! beside what the CPU can do: the peak of f32 FMAs and of AVX512-BF16 dot products per core,
//! and the same products with bf16 operands (`nn::kernels::bf16`) on each kernel the CPU runs.
//! `bench/matmul.py` measures PyTorch on the same shapes.
//!
//! `cargo run --release --example matmul [THREADS]` (default 2)

use ferroformer::nn::kernels::bf16::{self, Kernel};
use ferroformer::nn::kernels::gemm::{matmul, View, ViewMut};
use std::time::Instant;

/// `(m, k, n)`, the name, and whether the right side is stored transposed (`x W^T` with an
/// `[out, in]` weight) or the left side is (`dy^T x`, a weight gradient).
fn shapes() -> Vec<(String, usize, usize, usize, bool, bool)> {
    let mut v = vec![];
    // The GPT bench config (6 layers, 384 dims, batch 8 x 256, vocab 8192).
    for (m, k, n) in [
        (2048, 384, 1152),
        (2048, 384, 1536),
        (2048, 1536, 384),
        (2048, 384, 8192),
    ] {
        for bt in [false, true] {
            v.push((format!("gpt {m}x{k} @ {k}x{n}"), m, k, n, false, bt));
        }
    }
    // SmolLM2-135M at batch 4 x 256: forward x W^T, input gradient dy W, weight gradient dy^T x.
    let t = 1024;
    for (name, d_in, d_out) in [
        ("q/o_proj", 576, 576),
        ("k/v_proj", 576, 192),
        ("gate/up_proj", 576, 1536),
        ("down_proj", 1536, 576),
        ("lm_head", 576, 49152),
    ] {
        v.push((
            format!("smollm2 {name} forward"),
            t,
            d_in,
            d_out,
            false,
            true,
        ));
        v.push((format!("smollm2 {name} dx"), t, d_out, d_in, false, false));
        v.push((format!("smollm2 {name} dW"), d_out, t, d_in, true, false));
    }
    v
}

/// Median GFLOP/s of `reps` products after two warm-up ones: f32, or bf16 operands with the
/// given kernel.
fn rate(
    m: usize,
    k: usize,
    n: usize,
    (a_t, b_t): (bool, bool),
    bf16: Option<Kernel>,
    reps: usize,
) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0f32; m * n];
    let av = if a_t {
        View::rows(&a, k, m, m).t()
    } else {
        View::rows(&a, m, k, k)
    };
    let bv = if b_t {
        View::rows(&b, n, k, k).t()
    } else {
        View::rows(&b, k, n, n)
    };
    let mut ts = vec![];
    for i in 0..reps + 2 {
        let t0 = Instant::now();
        let dst = ViewMut::rows(&mut c, m, n, n);
        match bf16 {
            None => matmul(dst, av, bv, false, true),
            Some(kernel) => bf16::matmul_with(kernel, dst, av, bv, false, true),
        }
        if i >= 2 {
            ts.push(t0.elapsed().as_secs_f64());
        }
    }
    ts.sort_by(f64::total_cmp);
    2.0 * (m * k * n) as f64 / ts[ts.len() / 2] / 1e9
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    match bf16::peaks() {
        Some((fma, dot)) => {
            println!("one core: f32 FMA {fma:.0} GFLOP/s, bf16 dot (vdpbf16ps) {dot:.0} GFLOP/s")
        }
        None => println!("one core: no AVX512-BF16"),
    }
    println!("bf16 products use the {:?} kernel", bf16::kernel());
    // FERROFORMER_BF16_KERNEL picks one kernel; otherwise all the CPU runs.
    let kernels = match std::env::var("FERROFORMER_BF16_KERNEL") {
        Ok(_) => vec![bf16::kernel().expect("FERROFORMER_BF16_KERNEL")],
        Err(_) => Kernel::available(),
    };
    println!(
        "GFLOP/s on {threads} threads (median of 6): f32, then bf16 operands with {}",
        kernels
            .iter()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, m, k, n, a_t, b_t) in shapes() {
        let t = if a_t { " (lhs transposed)" } else { "" };
        let u = if b_t { " (rhs transposed)" } else { "" };
        let mut line = format!("  {name}{t}{u}: {:.0}", rate(m, k, n, (a_t, b_t), None, 6));
        for &kernel in &kernels {
            line += &format!(" | {:.0}", rate(m, k, n, (a_t, b_t), Some(kernel), 6));
        }
        println!("{line}");
    }
}
