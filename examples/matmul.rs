//! Matrix-multiply rate on the training model's shapes through the kernels' gemm wrapper
//! (plain and with a transposed operand), for comparison with `bench/matmul.py` (PyTorch).
//!     RAYON_NUM_THREADS=2 cargo run --release --example matmul
use ferroformer::nn::kernels::gemm::{matmul, View, ViewMut};
use std::time::Instant;

fn main() {
    let shapes = [
        (2048, 384, 1152),
        (2048, 384, 1536),
        (2048, 1536, 384),
        (2048, 384, 8192),
    ];
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let mut c = vec![0f32; m * n];
        for transposed in [false, true] {
            let bv = if transposed {
                View::rows(&b, n, k, k).t()
            } else {
                View::rows(&b, k, n, n)
            };
            let mut times = vec![];
            for i in 0..8 {
                let t0 = Instant::now();
                matmul(
                    ViewMut::rows(&mut c, m, n, n),
                    View::rows(&a, m, k, k),
                    bv,
                    false,
                    true,
                );
                if i >= 2 {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            let gflops = 2.0 * (m * k * n) as f64 / times[times.len() / 2] / 1e9;
            println!(
                "{m}x{k} @ {k}x{n}{}: {gflops:.0} GFLOP/s",
                if transposed { " (rhs transposed)" } else { "" }
            );
        }
    }
}
