//! `y = x W (+ b)` as one op: the output rows start as the bias and the product accumulates
//! into them (no separate broadcast add), and backward produces `dx = dy W^T`, `dW` (in the
//! weight's own orientation) and `db` (column sums of `dy`) in one op, with transposes as
//! strided views rather than copies. Without a bias it serves the tied output projection.

use super::bf16::{product, Precision};
use super::gemm::{View, ViewMut};
use super::{data, f32s, fused, tracked, Data};
use crate::multiversion;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

multiversion! {
    fn add_rows(dy: &[f32], cols: usize, acc: &mut [f32]) {
        for row in dy.chunks_exact(cols) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    }
}

/// Fused affine map on `x` `[n, in]` with a bias; `in_out` says the weight is `[in, out]`
/// (GPT-2 Conv1D) rather than `[out, in]` (`nn.Linear`).
/// The products take bf16 operands with `precision` bf16 (see [`super::bf16`]), and always
/// when the weight is held in bf16.
#[derive(Clone, Copy, Debug)]
pub struct LinearOp {
    pub in_out: bool,
    pub precision: Precision,
}

/// The same without a bias.
#[derive(Clone, Copy, Debug)]
pub struct MatmulOp {
    pub in_out: bool,
    pub precision: Precision,
}

/// Backward of [`LinearOp`] / [`MatmulOp`]; computes only the gradients asked for.
struct LinearGrad {
    in_out: bool,
    precision: Precision,
    want_x: bool,
    want_w: bool,
    want_b: bool,
}

impl LinearGrad {
    /// The gradients `x`, `w` (and `b`) need, and the backward op computing them packed.
    fn for_args(
        (in_out, precision): (bool, Precision),
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
    ) -> Self {
        LinearGrad {
            in_out,
            precision,
            want_x: tracked(x),
            want_w: tracked(w),
            want_b: b.is_some_and(tracked),
        }
    }

    /// Splits the packed `[dx | dW | db]` (each present only if wanted).
    fn unpack(
        &self,
        packed: &Tensor,
        x: &Tensor,
        w: &Tensor,
        nb: usize,
    ) -> candle_core::Result<[Option<Tensor>; 3]> {
        let mut at = 0;
        let mut take = |want: bool, n: usize, shape: &candle_core::Shape| {
            if !want {
                return Ok(None);
            }
            let t = packed.narrow(0, at, n)?.reshape(shape)?;
            at += n;
            candle_core::Result::Ok(Some(t))
        };
        let dx = take(self.want_x, x.elem_count(), x.shape())?;
        let dw = take(self.want_w, w.elem_count(), w.shape())?;
        let db = take(self.want_b, nb, &candle_core::Shape::from(nb))?;
        Ok([dx, dw, db])
    }

    /// Runs the backward op, or returns no gradients when nothing needs one.
    fn run(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        nb: usize,
    ) -> candle_core::Result<[Option<Tensor>; 3]> {
        if !(self.want_x || self.want_w || self.want_b) {
            return Ok([None, None, None]);
        }
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, self)?;
        self.unpack(&packed, x, w, nb)
    }
}

/// The weight as an `[in, out]` view.
fn weight_view<T>(w: &[T], d_in: usize, d_out: usize, in_out: bool) -> View<'_, T> {
    if in_out {
        View::rows(w, d_in, d_out, d_out)
    } else {
        View::rows(w, d_out, d_in, d_in).t()
    }
}

fn dims(
    op: &str,
    lx: &Layout,
    lw: &Layout,
    in_out: bool,
) -> candle_core::Result<(usize, usize, usize)> {
    let (n, d_in) = lx.shape().dims2()?;
    let (a, b) = lw.shape().dims2()?;
    let (w_in, d_out) = if in_out { (a, b) } else { (b, a) };
    if w_in != d_in {
        candle_core::bail!("{op}: input has {d_in} features but the weight expects {w_in}");
    }
    Ok((n, d_in, d_out))
}

/// `x W` (+)= into `y` in `precision`, for an f32 or bf16 weight.
fn times_weight(
    precision: Precision,
    y: ViewMut,
    x: View,
    w: &Data,
    (d_in, d_out, in_out): (usize, usize, bool),
    accumulate: bool,
) -> candle_core::Result<()> {
    match w {
        Data::F32(w) => product(
            precision,
            y,
            x,
            weight_view(w, d_in, d_out, in_out),
            accumulate,
            true,
        ),
        Data::Bf16(w) => product(
            precision,
            y,
            x,
            weight_view(w, d_in, d_out, in_out),
            accumulate,
            true,
        ),
    }
}

fn forward(
    op: &str,
    (sx, lx): (&CpuStorage, &Layout),
    (sw, lw): (&CpuStorage, &Layout),
    bias: Option<(&CpuStorage, &Layout)>,
    (in_out, precision): (bool, Precision),
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (n, d_in, d_out) = dims(op, lx, lw, in_out)?;
    let x = f32s(sx, lx, op)?;
    let w = data(sw, lw, op)?;
    let mut y = match bias {
        Some((sb, lb)) => {
            let b = f32s(sb, lb, op)?;
            if b.len() != d_out {
                candle_core::bail!("{op}: bias has {} entries, expected {d_out}", b.len());
            }
            let mut y = Vec::with_capacity(n * d_out);
            for _ in 0..n {
                y.extend_from_slice(b);
            }
            y
        }
        None => vec![0f32; n * d_out],
    };
    times_weight(
        precision,
        ViewMut::rows(&mut y, n, d_out, d_out),
        View::rows(x, n, d_in, d_in),
        &w,
        (d_in, d_out, in_out),
        bias.is_some(),
    )?;
    Ok((CpuStorage::F32(y), Shape::from((n, d_out))))
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward(
            self.name(),
            (sx, lx),
            (sw, lw),
            Some((sb, lb)),
            (self.in_out, self.precision),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = LinearGrad::for_args((self.in_out, self.precision), x, w, Some(b)).run(
            x,
            w,
            grad,
            b.elem_count(),
        )?;
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for MatmulOp {
    fn name(&self) -> &'static str {
        "fused-matmul"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward(
            self.name(),
            (sx, lx),
            (sw, lw),
            None,
            (self.in_out, self.precision),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] =
            LinearGrad::for_args((self.in_out, self.precision), x, w, None).run(x, w, grad, 0)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
    }

    /// Returns `[dx | dW | db]`, each only if wanted.
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d_in, d_out) = dims(self.name(), lx, lw, self.in_out)?;
        let x = f32s(sx, lx, self.name())?;
        let w = data(sw, lw, self.name())?;
        let dy = f32s(sg, lg, self.name())?;
        let (nx, nw) = (
            if self.want_x { n * d_in } else { 0 },
            if self.want_w { d_in * d_out } else { 0 },
        );
        let len = nx + nw + if self.want_b { d_out } else { 0 };
        let mut out = vec![0f32; len];
        let (dx, rest) = out.split_at_mut(nx);
        let (dw, db) = rest.split_at_mut(nw);
        let dyv = View::rows(dy, n, d_out, d_out);
        let xv = View::rows(x, n, d_in, d_in);
        let p = self.precision;
        if self.want_x {
            // dx = dy W^T: the weight's transpose is the map from `out` to `in`.
            times_weight(
                p,
                ViewMut::rows(dx, n, d_in, d_in),
                dyv,
                &w,
                (d_out, d_in, !self.in_out),
                false,
            )?;
        }
        if self.want_w && self.in_out {
            product(
                p,
                ViewMut::rows(dw, d_in, d_out, d_out),
                xv.t(),
                dyv,
                false,
                true,
            )?;
        } else if self.want_w {
            product(
                p,
                ViewMut::rows(dw, d_out, d_in, d_in),
                dyv.t(),
                xv,
                false,
                true,
            )?;
        }
        if self.want_b {
            add_rows(dy, d_out, db);
        }
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `x W (+ b)` for 2-D `x` `[n, in]`, fused when the device allows it, else `None`.
pub fn linear(
    x2: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    in_out: bool,
) -> crate::Result<Option<Tensor>> {
    if !fused(x2.device()) || x2.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let (x2, w) = (x2.contiguous()?, w.contiguous()?);
    let precision = super::bf16::current();
    Ok(Some(match b {
        Some(b) => x2.apply_op3(&w, &b.contiguous()?, LinearOp { in_out, precision })?,
        None => x2.apply_op2(&w, MatmulOp { in_out, precision })?,
    }))
}
