//! Branch-free f32 math that auto-vectorises (libm's scalar `expf`/`tanhf` calls were a
//! tenth of a training step): exp by range reduction and a degree-6 polynomial (Cephes'
//! `expf` coefficients, within 2 ulp on [-87, 88]), tanh and erf built on it.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x` for finite `x`; inputs below -87.3 give ~0 (1e-38), above 88.7 saturate.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest by the 1.5 * 2^23 trick (vectorises without a rounding instruction):
    // `t`'s low mantissa bits then hold `k` itself.
    let t = x * LOG2E + 12_582_912.0;
    let k = t - 12_582_912.0;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^k from `t`'s bits: integer ops only (`k as i32` saturates, which the compiler does
    // element by element).
    let n = (t.to_bits() as i32).wrapping_sub(0x4B40_0000) + 127;
    y * f32::from_bits((n << 23) as u32)
}

/// `tanh(x)` as `1 - 2 / (e^{2x} + 1)` (absolute error ~1e-7).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7 in exact arithmetic, below
/// 5e-7 evaluated in f32).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

// Reductions in 16 independent lanes: a float sum or max in one accumulator is a serial
// dependency chain the compiler may not reorder, so it would run one element at a time.
const LANES: usize = 16;

/// Sum of `x`.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Maximum of `x` (negative infinity for an empty slice).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    rest.iter().copied().fold(m, f32::max)
}

/// Dot product of `a` and `b` (same length).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Sum of squared deviations from `mean`.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_tanh_erf_accuracy() {
        let mut worst = [0f64; 3];
        let mut x: f64 = -20.0;
        while x < 20.0 {
            // Compare at the f32 input actually given, not at the unrounded x.
            let xf = x as f32 as f64;
            let e = super::exp(xf as f32) as f64;
            worst[0] = worst[0].max(((e - xf.exp()) / xf.exp()).abs());
            worst[1] = worst[1].max((super::tanh(xf as f32) as f64 - xf.tanh()).abs());
            x += 0.001_37;
        }
        // The whole range, where 2^k's exponent bits run from 1 to 254.
        let mut x: f64 = -87.0;
        while x < 88.0 {
            let xf = x as f32 as f64;
            let e = super::exp(xf as f32) as f64;
            worst[0] = worst[0].max(((e - xf.exp()) / xf.exp()).abs());
            x += 0.001_37;
        }
        for i in 0..8000 {
            let x: f64 = -4.0 + i as f64 * 0.001;
            // Reference: the Taylor series in f64.
            let xf = x as f32 as f64;
            worst[2] = worst[2].max((super::erf(xf as f32) as f64 - erf_f64(xf)).abs());
        }
        assert!(worst[0] < 3e-7, "exp rel {}", worst[0]);
        assert!(worst[1] < 3e-7, "tanh abs {}", worst[1]);
        assert!(worst[2] < 5e-7, "erf abs {}", worst[2]);
    }

    /// erf in f64 by its Taylor series (|x| <= 4 needs ~60 terms for 1e-15).
    fn erf_f64(x: f64) -> f64 {
        let mut sum: f64 = 0.0;
        let mut term = x;
        let mut n: f64 = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
