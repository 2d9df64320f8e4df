//! The rate of decode attention (`nn::kernels::decode_attention`) in a serving step on
//! SmolLM2-135M's shapes: 16 sequences of about 120 positions, 9 query heads over 3 key/value
//! heads of 64, 30 layers each over its own caches (read from memory, as in serving).
//!
//! `cargo run --release --example decode_attention [ROWS] [POSITIONS]` (default 16 120)

use candle_core::{Device, Tensor};
use ferroformer::nn::kernels::decode_attention::DecodeAttention;
use ferroformer::nn::KvCache;
use std::time::Instant;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let rows = args.next().unwrap_or(16);
    let n = args.next().unwrap_or(120);
    let (h, kvh, d, layers) = (9, 3, 64, 30);
    let dev = Device::Cpu;
    let ops: Vec<DecodeAttention> = (0..layers)
        .map(|_| {
            let kv = (0..rows)
                .map(|r| {
                    let mut cache = KvCache::default();
                    // Appended twice, so the views are strided as a growing cache's are.
                    let mut views = None;
                    for part in [n - 1, 1] {
                        let k = Tensor::randn(0f32, 1.0, (1, kvh, part, d), &dev).unwrap();
                        let v = Tensor::randn(0f32, 1.0, (1, kvh, part, d), &dev).unwrap();
                        views = Some(cache.append(&k, &v).unwrap());
                    }
                    let _ = r;
                    views.unwrap()
                })
                .collect();
            DecodeAttention {
                kv,
                n_head: h,
                scale: 0.125,
                softcap: None,
                window: None,
            }
        })
        .collect();
    let q = Tensor::randn(0f32, 1.0, (rows, h, 1, d), &dev).unwrap();
    let mut best = f64::MAX;
    for _ in 0..50 {
        let start = Instant::now();
        for op in &ops {
            std::hint::black_box(q.apply_op1(op.clone()).unwrap());
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{rows} rows x {n} positions, {layers} layers: {:.2} ms a step (best of 50)",
        best * 1e3
    );
}
