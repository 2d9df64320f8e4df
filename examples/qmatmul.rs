//! The rate of the quantized products generation runs on (`nn::kernels::qmatmul`), one
//! activation row (a decode step) and several (continuous batching), on SmolLM2-135M's
//! shapes: billions of weights read per second, one thread and all.
//!
//! `cargo run --release --example qmatmul [THREADS]` (default 2)

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ferroformer::nn::kernels::qmatmul::QWeight;
use std::time::Instant;

fn weight(dtype: GgmlDType, rows: usize, cols: usize) -> QWeight {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05)
        .collect();
    let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
    QWeight::from_qtensor(&QTensor::quantize(&t, dtype).unwrap())
        .unwrap()
        .expect("a type the kernel takes")
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("THREADS"))
        .unwrap_or(2);
    let shapes = [
        ("qkv (stacked)", GgmlDType::Q4_1, 960, 576),
        ("o_proj", GgmlDType::Q4_1, 576, 576),
        ("gate+up (stacked)", GgmlDType::Q4_1, 3072, 576),
        ("down_proj", GgmlDType::Q4_1, 576, 1536),
        ("head (Q8_0)", GgmlDType::Q8_0, 49152, 576),
    ];
    for t in [1, threads] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        for m in [1, 4, 16] {
            for (name, dtype, rows, cols) in shapes {
                let w = weight(dtype, rows, cols);
                let x: Vec<f32> = (0..m * cols).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
                let reps = (2e9 / (rows * cols * m) as f64).clamp(3.0, 20000.0) as usize;
                pool.install(|| {
                    for _ in 0..reps / 10 + 1 {
                        std::hint::black_box(w.matmul(&x, m));
                    }
                    let start = Instant::now();
                    for _ in 0..reps {
                        std::hint::black_box(w.matmul(std::hint::black_box(&x), m));
                    }
                    let s = start.elapsed().as_secs_f64() / reps as f64;
                    println!(
                        "{t} thread(s) m={m:<2} {name:<18} {rows:>5}x{cols:<5} {:7.1} us  {:6.2} G weights/s",
                        s * 1e6,
                        (rows * cols) as f64 / s / 1e9
                    );
                });
            }
        }
        decode_step(t, &pool, &shapes);
    }
}

/// One decode step's products on a whole model's worth of distinct weights (30 layers, then
/// the head), so weights stream from memory as in generation instead of staying in cache.
fn decode_step(t: usize, pool: &rayon::ThreadPool, shapes: &[(&str, GgmlDType, usize, usize)]) {
    let (layers, head) = shapes.split_at(shapes.len() - 1);
    let mut ws: Vec<QWeight> = (0..30)
        .flat_map(|_| layers.iter().map(|&(_, d, r, c)| weight(d, r, c)))
        .collect();
    ws.push(weight(head[0].1, head[0].2, head[0].3));
    let xs: Vec<Vec<f32>> = ws
        .iter()
        .map(|w| (0..w.cols).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect())
        .collect();
    pool.install(|| {
        let mut best = f64::MAX;
        for _ in 0..100 {
            let start = Instant::now();
            ferroformer::nn::kernels::team::decode(|| {
                for (w, x) in ws.iter().zip(&xs) {
                    std::hint::black_box(w.matmul(std::hint::black_box(x), 1));
                }
            });
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{t} thread(s) decode step (30 layers + head, distinct weights, on the decode team): {:.2} ms, {:.0} steps/s",
            best * 1e3,
            1.0 / best
        );
    });
}
