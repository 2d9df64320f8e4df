//! A thin checked wrapper over the `gemm` crate (the same matrix-multiply kernels candle uses),
//! so fused ops can multiply strided views in place: transposes, head slices of a fused
//! q/k/v buffer, accumulation into an existing output, with no copies.

use gemm::Parallelism;

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`. Elements are
/// f32, or bf16 for weights held in bf16 (`train.precision = "bf16"`, see [`super::bf16`]).
#[derive(Clone, Copy)]
pub struct View<'a, T = f32> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// A writable strided matrix view.
pub struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

impl<'a, T> View<'a, T> {
    /// A row-major `rows x cols` matrix starting at `data[0]` with row stride `rs`.
    pub fn rows(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows `start .. start + n`.
    pub fn row_range(self, start: usize, n: usize) -> Self {
        View {
            data: &self.data[(start * self.rs).min(self.data.len())..],
            rows: n,
            ..self
        }
    }
}

impl<'a> ViewMut<'a> {
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize, rs: usize) -> Self {
        ViewMut {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }
}

crate::multiversion! {
    /// `out[j] (+)= a . b_j` for the contiguous rows `b_j` of `b` (`k` wide).
    fn dot_rows(a: &[f32], b: &[f32], k: usize, out: &mut [f32], accumulate: bool) {
        for (o, row) in out.iter_mut().zip(b.chunks(k)) {
            let v = super::math::dot(a, &row[..k]);
            *o = if accumulate { *o + v } else { v };
        }
    }
}

crate::multiversion! {
    /// `out (+)= sum_i a_i b_i` over the rows `b_i` of `b` (row stride `rs`, `out.len()` wide).
    fn axpy_rows(a: &[f32], b: &[f32], rs: usize, out: &mut [f32], accumulate: bool) {
        if !accumulate {
            out.iter_mut().for_each(|o| *o = 0.0);
        }
        let n = out.len();
        for (i, &ai) in a.iter().enumerate() {
            let row = &b[i * rs..i * rs + n];
            for (o, &v) in out.iter_mut().zip(row) {
                *o += ai * v;
            }
        }
    }
}

/// Matrix-vector products (a few rows of `a`, as in generation one token at a time): the
/// weight is streamed once, in place, split over threads by output columns. The general
/// kernel would first pack all of `b`, which for a large output projection costs more than
/// the product itself.
fn small_m(dst: &mut ViewMut, a: View, b: View, accumulate: bool, parallel: bool) -> bool {
    use rayon::prelude::*;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m > 4 || a.cs != 1 || dst.cs != 1 || !(b.rs == 1 || b.cs == 1) {
        return false;
    }
    let chunk = if parallel {
        n.div_ceil(rayon::current_num_threads() * 4).max(64)
    } else {
        n
    };
    let drs = dst.rs;
    for i in 0..m {
        let ai = &a.data[i * a.rs..i * a.rs + k];
        let out = &mut dst.data[i * drs..i * drs + n];
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
            let j0 = c * chunk;
            if b.rs == 1 {
                // Column j of b is the contiguous row j of a [n, k] matrix.
                let rows = &b.data[j0 * b.cs..];
                if b.cs == k {
                    dot_rows(ai, rows, k, out, accumulate);
                } else {
                    for (jj, o) in out.iter_mut().enumerate() {
                        let r = &rows[jj * b.cs..jj * b.cs + k];
                        let v = super::math::dot(ai, r);
                        *o = if accumulate { *o + v } else { v };
                    }
                }
            } else {
                axpy_rows(ai, &b.data[j0..], b.rs, out, accumulate);
            }
        });
    }
    true
}

/// `dst = a @ b^T` into a contiguous `[a.rows, b.rows]` buffer: attention scores `q k^T`, and
/// their gradient's `dy v^T`.
pub fn a_bt(dst: &mut [f32], a: View, b: View) {
    let (m, n) = (a.rows, b.rows);
    matmul(
        ViewMut::rows(&mut dst[..m * n], m, n, n),
        a,
        b.t(),
        false,
        false,
    );
}

/// Products this small (multiply-adds) run as plain loops: the gemm crate's packing and
/// dispatch cost about as much as ~50k multiply-adds, and attention over short sequences
/// (a 9-letter word: 9 x 9 scores of 32-wide heads) is thousands of such products per step.
const TINY: usize = 16 * 1024;

crate::multiversion! {
    /// `dst (+)= a @ b` as rows of `b` scaled and added into rows of `dst` (both contiguous).
    fn tiny_axpy(dst: &mut ViewMut, a: View, b: View, accumulate: bool) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        for i in 0..m {
            let out = &mut dst.data[i * dst.rs..i * dst.rs + n];
            if !accumulate {
                out.iter_mut().for_each(|o| *o = 0.0);
            }
            for p in 0..k {
                let alpha = a.data[i * a.rs + p * a.cs];
                let row = &b.data[p * b.rs..p * b.rs + n];
                for (o, &x) in out.iter_mut().zip(row) {
                    *o += alpha * x;
                }
            }
        }
    }
}

crate::multiversion! {
    /// `dst (+)= a @ b` as dot products of contiguous rows of `a` and columns of `b`.
    fn tiny_dot(dst: &mut ViewMut, a: View, b: View, accumulate: bool) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        for i in 0..m {
            let ai = &a.data[i * a.rs..i * a.rs + k];
            for j in 0..n {
                let v = super::math::dot(ai, &b.data[j * b.cs..j * b.cs + k]);
                let o = &mut dst.data[i * dst.rs + j * dst.cs];
                *o = if accumulate { *o + v } else { v };
            }
        }
    }
}

/// The loop form of a tiny product whose layout vectorises; false if none does.
fn tiny(dst: &mut ViewMut, a: View, b: View, accumulate: bool) -> bool {
    if a.rows * a.cols * b.cols > TINY {
        return false;
    }
    if b.cs == 1 && dst.cs == 1 {
        tiny_axpy(dst, a, b, accumulate);
        true
    } else if a.cs == 1 && b.rs == 1 {
        tiny_dot(dst, a, b, accumulate);
        true
    } else {
        false
    }
}

/// Checks that `dst = a @ b` is well formed and its views lie inside their slices; zeroes
/// (or leaves, with `accumulate`) `dst` and returns false when there is nothing to multiply.
pub(crate) fn check<A, B>(dst: &mut ViewMut, a: &View<A>, b: &View<B>, accumulate: bool) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    assert_eq!((dst.rows, dst.cols), (m, n), "matmul: output shape");
    assert!(
        extent(a.rows, a.cols, a.rs, a.cs) <= a.data.len(),
        "matmul: lhs view out of bounds"
    );
    assert!(
        extent(b.rows, b.cols, b.rs, b.cs) <= b.data.len(),
        "matmul: rhs view out of bounds"
    );
    assert!(
        extent(m, n, dst.rs, dst.cs) <= dst.data.len(),
        "matmul: dst view out of bounds"
    );
    if m == 0 || n == 0 {
        return false;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return false;
    }
    true
}

/// `dst = a @ b` (or `dst += a @ b` with `accumulate`). Multi-threaded when `parallel`.
pub fn matmul(dst: ViewMut, a: View, b: View, accumulate: bool, parallel: bool) {
    let mut dst = dst;
    if !check(&mut dst, &a, &b, accumulate) {
        return;
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if small_m(&mut dst, a, b, accumulate, parallel) || tiny(&mut dst, a, b, accumulate) {
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the three views were checked to lie inside their slices; `dst` is borrowed
    // mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_and_transposed_products() {
        // a: 3x4 inside a row stride of 6; b: used transposed.
        let a: Vec<f32> = (0..18).map(|v| v as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..20).map(|v| (v as f32).sin()).collect(); // 5x4 row-major
        let av = View::rows(&a, 3, 4, 6);
        let bv = View::rows(&b, 5, 4, 4).t(); // 4x5
        let mut c = vec![1.0f32; 15];
        matmul(ViewMut::rows(&mut c, 3, 5, 5), av, bv, true, false);
        for i in 0..3 {
            for j in 0..5 {
                let want: f32 = 1.0 + (0..4).map(|p| a[i * 6 + p] * b[j * 4 + p]).sum::<f32>();
                assert!((c[i * 5 + j] - want).abs() < 1e-5);
            }
        }
    }
}

#[cfg(test)]
mod tiny_tests {
    use super::*;

    /// The loop forms equal a naive product for every layout attention uses (rows of both,
    /// a transposed left side, a transposed right side; strided rows), with and without
    /// accumulation.
    #[test]
    fn tiny_products_match_naive() {
        let (m, k, n, stride) = (7, 9, 33, 40);
        let data = |len: usize, s: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * s % 17) as f32 - 8.0) * 0.1)
                .collect()
        };
        let a = data(m * stride, 7);
        let at = data(k * stride, 3); // a stored transposed: [k, m] rows
        let b = data(k * stride, 5);
        let bt = data(n * stride, 11); // b stored transposed: [n, k] rows
        let lefts = [
            (View::rows(&a, m, k, stride), false),
            (View::rows(&at, k, m, stride).t(), true),
        ];
        let rights = [
            (View::rows(&b, k, n, stride), false),
            (View::rows(&bt, n, k, stride).t(), true),
        ];
        for &(av, a_t) in &lefts {
            for &(bv, b_t) in &rights {
                for accumulate in [false, true] {
                    let mut out = vec![0.5f32; m * stride];
                    let mut dst = ViewMut::rows(&mut out, m, n, stride);
                    let ran = tiny(&mut dst, av, bv, accumulate);
                    // Both inputs transposed has no vectorising loop form (gemm takes it).
                    assert_eq!(ran, !(a_t && b_t));
                    if !ran {
                        continue;
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let want: f32 = (0..k)
                                .map(|p| {
                                    let x = if a_t {
                                        at[p * stride + i]
                                    } else {
                                        a[i * stride + p]
                                    };
                                    let y = if b_t {
                                        bt[j * stride + p]
                                    } else {
                                        b[p * stride + j]
                                    };
                                    x * y
                                })
                                .sum::<f32>()
                                + if accumulate { 0.5 } else { 0.0 };
                            let got = out[i * stride + j];
                            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod small_m_tests {
    use super::*;

    /// The matrix-vector path equals a naive product, for both weight orientations, with and
    /// without accumulation.
    #[test]
    fn small_m_matches_naive() {
        let (m, k, n) = (3, 37, 130);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let av = View::rows(&a, m, k, k);
        for transposed in [true, false] {
            // b = w^T with w [n, k] row-major, or b = w' [k, n] row-major.
            let wt: Vec<f32> = if transposed {
                w.clone()
            } else {
                (0..k * n).map(|i| w[(i % n) * k + i / n]).collect()
            };
            let b = if transposed {
                View::rows(&wt, n, k, k).t()
            } else {
                View::rows(&wt, k, n, n)
            };
            for accumulate in [false, true] {
                for parallel in [false, true] {
                    let mut out = vec![1f32; m * n];
                    assert!(small_m(
                        &mut ViewMut::rows(&mut out, m, n, n),
                        av,
                        b,
                        accumulate,
                        parallel
                    ));
                    for i in 0..m {
                        for j in 0..n {
                            let want: f32 =
                                (0..k).map(|p| a[i * k + p] * w[j * k + p]).sum::<f32>()
                                    + if accumulate { 1.0 } else { 0.0 };
                            let got = out[i * n + j];
                            assert!(
                                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                                "{got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
