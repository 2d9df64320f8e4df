//! A thin checked wrapper over the `gemm` crate (the same matrix-multiply kernels candle uses),
//! so fused ops can multiply strided views in place: transposes, head slices of a fused
//! q/k/v buffer, accumulation into an existing output, with no copies.

use gemm::Parallelism;

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
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

impl<'a> View<'a> {
    /// A row-major `rows x cols` matrix starting at `data[0]` with row stride `rs`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
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

/// `dst = a @ b` (or `dst += a @ b` with `accumulate`). Multi-threaded when `parallel`.
pub fn matmul(dst: ViewMut, a: View, b: View, accumulate: bool, parallel: bool) {
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
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
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
