//! LoRA's update added to a layer's output as one op: `y = y_base + s B A drop(x)`.
//!
//! The composition (dropout mask, two matmuls, a scale, an add) keeps every intermediate
//! alive for backward in candle's graph: the mask, the dropped input, the scaled and unscaled
//! update, about five activations per adapted layer; with every linear layer of SmolLM2
//! adapted that is gigabytes. This op keeps none: its backward recomputes the small `[n, r]`
//! product and regenerates the dropout mask from a seed (a counter-based hash, so it is the
//! same mask). A and B travel packed in one tensor (`[A | B]` flattened, made by a `cat` whose
//! backward hands each its part), since a candle op takes at most three inputs.

use super::bf16::{product, Precision};
use super::gemm::{View, ViewMut};
use super::{f32s, tracked};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// `y_base + scaling * (drop(x) A^T) B^T` for `x` `[n, in]`, `y_base` `[n, out]`, the pack
/// `[A (r x in) | B (out x r)]`.
#[derive(Clone, Copy, Debug)]
pub struct LoraAddOp {
    pub r: usize,
    pub scaling: f32,
    /// Dropout probability and the mask's seed.
    pub dropout: Option<(f32, u64)>,
    /// The products' operands: bf16 under `train.precision = "bf16"`.
    pub precision: Precision,
}

/// A uniform number in `[0, 1)` from `(seed, i)` (splitmix64): the same mask in backward.
fn uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

impl LoraAddOp {
    /// The dropped input `x * mask / (1 - p)`, or `None` without dropout.
    fn dropped(&self, x: &[f32]) -> Option<Vec<f32>> {
        use rayon::prelude::*;
        let (p, seed) = self.dropout?;
        let keep = 1.0 / (1.0 - p);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .enumerate()
            .for_each(|(c, (o, x))| {
                for (j, (o, &v)) in o.iter_mut().zip(x).enumerate() {
                    let i = (c * 4096 + j) as u64;
                    *o = if uniform(seed, i) < p { 0.0 } else { v * keep };
                }
            });
        Some(out)
    }

    fn dims(&self, ly: &Layout, lx: &Layout, lp: &Layout) -> candle_core::Result<[usize; 3]> {
        let (n, d_out) = ly.shape().dims2()?;
        let (nx, d_in) = lx.shape().dims2()?;
        let np = lp.shape().elem_count();
        if nx != n || np != self.r * (d_in + d_out) {
            candle_core::bail!(
                "lora-add: output [{n}, {d_out}], input [{nx}, {d_in}], pack of {np} for rank {}",
                self.r
            );
        }
        Ok([n, d_in, d_out])
    }
}

/// `h = xd A^T` `[n, r]`.
fn down(
    p: Precision,
    xd: &[f32],
    a: &[f32],
    (n, d_in, r): (usize, usize, usize),
) -> candle_core::Result<Vec<f32>> {
    let mut h = vec![0f32; n * r];
    product(
        p,
        ViewMut::rows(&mut h, n, r, r),
        View::rows(xd, n, d_in, d_in),
        View::rows(a, r, d_in, d_in).t(),
        false,
        true,
    )?;
    Ok(h)
}

impl CustomOp3 for LoraAddOp {
    fn name(&self) -> &'static str {
        "lora-add"
    }

    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sx: &CpuStorage,
        lx: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [n, d_in, d_out] = self.dims(ly, lx, lp)?;
        let r = self.r;
        let (yb, x, p) = (
            f32s(sy, ly, self.name())?,
            f32s(sx, lx, self.name())?,
            f32s(sp, lp, self.name())?,
        );
        let (a, b) = p.split_at(r * d_in);
        let dropped = self.dropped(x);
        let mut h = down(
            self.precision,
            dropped.as_deref().unwrap_or(x),
            a,
            (n, d_in, r),
        )?;
        for v in &mut h {
            *v *= self.scaling;
        }
        let mut y = yb.to_vec();
        product(
            self.precision,
            ViewMut::rows(&mut y, n, d_out, d_out),
            View::rows(&h, n, r, r),
            View::rows(b, d_out, r, r).t(),
            true,
            true,
        )?;
        Ok((CpuStorage::F32(y), Shape::from((n, d_out))))
    }

    fn bwd(
        &self,
        y_base: &Tensor,
        x: &Tensor,
        pack: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_p) = (tracked(x), tracked(pack));
        let dy_base = tracked(y_base).then(|| grad.clone());
        if !(want_x || want_p) {
            return Ok((dy_base, None, None));
        }
        let (x, pack, grad) = (x.contiguous()?, pack.contiguous()?, grad.contiguous()?);
        let (n, d_in) = x.dims2()?;
        let d_out = grad.dim(1)?;
        let r = self.r;
        let (sx, lx) = x.storage_and_layout();
        let (sp, lp) = pack.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        use candle_core::Storage;
        let (Storage::Cpu(sx), Storage::Cpu(sp), Storage::Cpu(sg)) = (&*sx, &*sp, &*sg) else {
            candle_core::bail!("lora-add: expected CPU tensors");
        };
        let (xs, p, dy) = (
            f32s(sx, lx, self.name())?,
            f32s(sp, lp, self.name())?,
            f32s(sg, lg, self.name())?,
        );
        let (a, b) = p.split_at(r * d_in);
        let s = self.scaling;
        // dh = s dy B   [n, r]
        let mut dh = vec![0f32; n * r];
        product(
            self.precision,
            ViewMut::rows(&mut dh, n, r, r),
            View::rows(dy, n, d_out, d_out),
            View::rows(b, d_out, r, r),
            false,
            true,
        )?;
        for v in &mut dh {
            *v *= s;
        }
        let dx = if want_x {
            // dx = (dh A) * mask / (1 - p)
            let mut dx = vec![0f32; n * d_in];
            product(
                self.precision,
                ViewMut::rows(&mut dx, n, d_in, d_in),
                View::rows(&dh, n, r, r),
                View::rows(a, r, d_in, d_in),
                false,
                true,
            )?;
            if let Some((pr, seed)) = self.dropout {
                let keep = 1.0 / (1.0 - pr);
                for (i, v) in dx.iter_mut().enumerate() {
                    *v = if uniform(seed, i as u64) < pr {
                        0.0
                    } else {
                        *v * keep
                    };
                }
            }
            Some(Tensor::from_vec(dx, (n, d_in), x.device())?)
        } else {
            None
        };
        let dp = if want_p {
            let dropped = self.dropped(xs);
            let xd = dropped.as_deref().unwrap_or(xs);
            let mut dp = vec![0f32; p.len()];
            let (da, db) = dp.split_at_mut(r * d_in);
            // dA = dh^T xd   [r, in]
            product(
                self.precision,
                ViewMut::rows(da, r, d_in, d_in),
                View::rows(&dh, n, r, r).t(),
                View::rows(xd, n, d_in, d_in),
                false,
                true,
            )?;
            // dB = s dy^T h   [out, r]
            let mut h = down(self.precision, xd, a, (n, d_in, r))?;
            for v in &mut h {
                *v *= s;
            }
            product(
                self.precision,
                ViewMut::rows(db, d_out, r, r),
                View::rows(dy, n, d_out, d_out).t(),
                View::rows(&h, n, r, r),
                false,
                true,
            )?;
            Some(Tensor::from_vec(dp, pack.shape(), pack.device())?)
        } else {
            None
        };
        Ok((dy_base, dx, dp))
    }
}

/// `y_base + scaling * (drop(x) A^T) B^T` fused (CPU, f32), else `None`. `x` `[n, in]`.
pub fn lora_add(
    y_base: &Tensor,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
    dropout: Option<(f64, u64)>,
) -> crate::Result<Option<Tensor>> {
    if !super::fused(x.device()) || x.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let pack = Tensor::cat(&[a.flatten_all()?, b.flatten_all()?], 0)?;
    let op = LoraAddOp {
        r: a.dim(0)?,
        scaling: scaling as f32,
        dropout: dropout.map(|(p, s)| (p as f32, s)),
        precision: super::bf16::current(),
    };
    Ok(Some(y_base.contiguous()?.apply_op3(
        &x.contiguous()?,
        &pack,
        op,
    )?))
}

/// The dropout mask [`LoraAddOp`] applies for `(p, seed)` to `len` inputs (for the plain path
/// and tests): `0` or `1 / (1 - p)`.
pub fn dropout_mask(p: f64, seed: u64, len: usize) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    (0..len)
        .map(|i| {
            if uniform(seed, i as u64) < p as f32 {
                0.0
            } else {
                keep
            }
        })
        .collect()
}
