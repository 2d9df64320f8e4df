//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::Tensor;
use std::path::PathBuf;

/// Path of a file under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Largest violation of `|a - b| <= rtol * |b| + atol` over all elements, as
/// `(max_abs_diff, worst_ratio)`; the check passes when `worst_ratio <= 1`.
pub fn compare(a: &Tensor, b: &Tensor, rtol: f64, atol: f64) -> (f64, f64) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let mut max_abs = 0f64;
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(&b) {
        let d = (*x as f64 - *y as f64).abs();
        max_abs = max_abs.max(d);
        worst = worst.max(d / (rtol * (*y as f64).abs() + atol));
    }
    (max_abs, worst)
}

/// Asserts `a` equals `b` within `rtol` relative (plus a tiny absolute floor for zeros).
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, rtol: f64, atol: f64) {
    let (max_abs, worst) = compare(a, b, rtol, atol);
    assert!(
        worst <= 1.0,
        "{what}: max |diff| {max_abs:e} exceeds rtol {rtol:e} / atol {atol:e} (worst ratio {worst:.3})"
    );
}
