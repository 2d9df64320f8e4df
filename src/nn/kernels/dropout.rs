//! Dropout as one op: `y = x * m`, where each mask value `m_i` (0 with probability `p`,
//! `1/(1-p)` otherwise) is a hash of a per-call seed and the element index. Nothing is stored
//! between forward and backward: the backward, `dx = dy * m`, is the same op on the gradient.
//! The composition it replaces (a mask tensor times `x`) cost a mask buffer, a multiply, and in
//! backward two multiplies and two accumulations (candle takes the gradient of both factors).

use super::{f32s, fused};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Whether element `i` is kept: SplitMix64's `i + 1`-th output from `seed` (its output mix is a
/// bijection, so the stream is as good as the generator's), top 32 bits against `threshold`.
#[inline(always)]
fn keep(seed: u64, i: u64, threshold: u64) -> bool {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 32 >= threshold
}

multiversion! {
    /// `y_j *= m(first + j)`.
    fn mask_in_place(y: &mut [f32], first: u64, seed: u64, threshold: u64, scale: f32) {
        for (j, y) in y.iter_mut().enumerate() {
            *y = if keep(seed, first + j as u64, threshold) { *y * scale } else { 0.0 };
        }
    }
}

/// Drop probability `p` in `[0, 1)` and the seed of this call's mask.
#[derive(Clone, Copy, Debug)]
pub struct DropoutOp {
    pub p: f64,
    pub seed: u64,
}

impl DropoutOp {
    fn threshold(&self) -> u64 {
        // p < 1, so this is below 2^32.
        (self.p * 4_294_967_296.0).round() as u64
    }

    fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p)) as f32
    }

    /// Multiplies `y` in place by the mask values of elements `first ..` (of the tensor this
    /// op's mask covers).
    pub(crate) fn apply_in_place(&self, y: &mut [f32], first: u64) {
        mask_in_place(y, first, self.seed, self.threshold(), self.scale());
    }

    /// `x * m` into `y`, in parallel (the mask does not depend on the split).
    fn run(&self, x: &[f32], y: &mut [f32]) {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (y, x))| {
                y.copy_from_slice(x);
                self.apply_in_place(y, (c * CHUNK) as u64);
            });
    }

    /// The mask itself, `[n]`: the reference path's factor.
    pub fn mask(&self, n: usize) -> Vec<f32> {
        let mut m = vec![0f32; n];
        self.run(&vec![1f32; n], &mut m);
        m
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        self.run(x, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// `x` times the mask of `op`: the fused op on CPU (f32), the mask tensor elsewhere.
pub fn dropout(x: &Tensor, op: DropoutOp) -> crate::Result<Tensor> {
    if fused(x.device()) && x.dtype() == candle_core::DType::F32 {
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    dropout_plain(x, op)
}

/// The reference composition: the same mask as a tensor, multiplied in.
pub fn dropout_plain(x: &Tensor, op: DropoutOp) -> crate::Result<Tensor> {
    let mask = Tensor::from_vec(
        op.mask(x.elem_count()),
        x.shape(),
        &candle_core::Device::Cpu,
    )?
    .to_device(x.device())?
    .to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_equals_the_mask_composition_forward_and_backward() {
        // Over several chunks, with a strided (transposed) input.
        let dev = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::randn(0f32, 1., (300, 200), &dev)
                .unwrap()
                .t()
                .unwrap(),
        )
        .unwrap();
        let w = Tensor::randn(0f32, 1., (200, 300), &dev).unwrap();
        let op = DropoutOp { p: 0.25, seed: 42 };
        let yf = dropout(&x, op).unwrap();
        let yp = dropout_plain(&x, op).unwrap();
        assert_eq!(
            yf.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            yp.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let gf = (yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (yp * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = |s: &candle_core::backprop::GradStore| {
            s.get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(g(&gf), g(&gp));
    }
}
