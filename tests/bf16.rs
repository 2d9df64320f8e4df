//! bf16 mixed precision: the rounding against the `half` crate's, and every bf16 product
//! kernel this CPU runs against an f64 product of the bf16-rounded inputs.

use ferroformer::nn::kernels::bf16::{self, Kernel};
use ferroformer::nn::kernels::gemm::{View, ViewMut};
use half::bf16 as Bf16;

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ferroformer::rng::Rng::new(seed);
    (0..len).map(|_| rng.normal() as f32).collect()
}

/// Round to nearest even, as `half` (an implementation nobody here wrote) does it, on normal
/// numbers, exact ties both ways, subnormals, infinities, the largest finite values and NaN.
#[test]
fn rounding_matches_half() {
    let mut xs: Vec<f32> = values(100_000, 1)
        .into_iter()
        .map(|v| v * 1e3)
        .collect();
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
    let (ars, brs) = (if a_t { m + 3 } else { k + 5 }, if b_t { k + 2 } else { n + 1 });
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
        let mut y32 = vec![0f32; m * n];
        let mut y16 = vec![0f32; m * n];
        let xv = View::rows(&x, m, k, k);
        bf16::matmul_with(
            kernel,
            ViewMut::rows(&mut y32, m, n, n),
            xv,
            View::rows(&w, n, k, k).t(),
            false,
            false,
        );
        bf16::matmul_with(
            kernel,
            ViewMut::rows(&mut y16, m, n, n),
            xv,
            View::rows(&w16, n, k, k).t(),
            false,
            false,
        );
        assert_eq!(y32, y16, "{kernel:?}");
    }
}
