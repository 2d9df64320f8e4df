//! Fused CPU kernels: candle custom ops with their own backward, each standing beside the
//! plain composition of ops it replaces (kept as the reference path and used on other
//! devices) and tested against it.
//!
//! Why: on CPU a training step's time goes less to the matrix multiplies than to the dozens of
//! element-wise passes around them, each allocating a fresh buffer. A fused op makes one pass
//! (forward) and one pass (backward) where the composition made many.
//!
//! The fused path is used on CPU unless `FERROFORMER_KERNELS=plain` is set (for A/B
//! measurements), or [`set_plain`] is called.

pub mod attention;
pub mod bf16;
pub mod cross_entropy;
pub mod decode_attention;
pub mod dropout;
pub mod gelu;
pub mod gemm;
pub mod glu;
pub mod layer_norm;
pub mod linear;
pub mod lora;
pub mod math;
pub mod mha;
pub mod ops;
pub mod pages;
pub mod qmatmul;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod team;

use candle_core::{CpuStorage, Device, Layout};
use std::sync::atomic::{AtomicU8, Ordering};

// 0: not read yet, 1: fused, 2: plain.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Runs `f` on a worker of rayon's global pool (inline when already on one): from a thread
/// of our own, every parallel kernel would otherwise hand its work over and sleep until
/// woken, twice per op; hopping once around a whole decode step saves hundreds of hand-offs.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Forces the plain composition everywhere (`true`) or restores the default (`false`).
pub fn set_plain(plain: bool) {
    MODE.store(if plain { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether fused kernels run for tensors on `device`.
pub fn fused(device: &Device) -> bool {
    if !device.is_cpu() {
        return false;
    }
    let mut m = MODE.load(Ordering::Relaxed);
    if m == 0 {
        let plain = std::env::var("FERROFORMER_KERNELS")
            .map(|v| v == "plain")
            .unwrap_or(false);
        m = if plain { 2 } else { 1 };
        MODE.store(m, Ordering::Relaxed);
    }
    m == 1
}

/// A pointer through which parallel tasks write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: users write disjoint elements only, while the buffer outlives the tasks.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}
impl SendPtr {
    /// # Safety
    /// `i` is inside the buffer and no other thread touches element `i` meanwhile.
    pub(crate) unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// Whether backpropagation needs a gradient for `t`: a trainable parameter, or computed from
/// one. Frozen parameters (and what is computed only from them) are not, so backward passes
/// skip their gradients instead of computing and discarding them.
pub(crate) fn tracked(t: &candle_core::Tensor) -> bool {
    t.track_op()
}

/// The contiguous f32 data of a CPU tensor.
pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: expected f32 input"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// A CPU tensor's contiguous data: f32, or bf16 for a weight held in bf16.
pub(crate) enum Data<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

/// The contiguous f32 or bf16 data of a CPU tensor.
pub(crate) fn data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<Data<'a>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    Ok(match s {
        CpuStorage::F32(v) => Data::F32(&v[a..b]),
        CpuStorage::BF16(v) => Data::Bf16(&v[a..b]),
        _ => candle_core::bail!("{op}: expected an f32 or bf16 input"),
    })
}

/// The contiguous u32 data of a CPU tensor.
pub(crate) fn u32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [u32]> {
    let data = match s {
        CpuStorage::U32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: expected u32 input"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Rows per parallel task so each task has at least ~32K elements of work.
pub(crate) fn rows_per_task(rows: usize, cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_work = (32 * 1024 / cols.max(1)).max(1);
    let by_threads = rows.div_ceil(threads * 4).max(1);
    by_work.max(by_threads.min(by_work * 16)).min(rows.max(1))
}

/// Backward of a row-wise op with parameter gradients: runs `row(r, dx_row, acc)` for every
/// row `r` of the `[n, c]` output `dx`, rows split over threads, each task summing its own
/// `acc_len` parameter-gradient values; writes the summed accumulators into `acc_out`.
pub(crate) fn rows_with_param_grads(
    dx: &mut [f32],
    c: usize,
    acc_out: &mut [f32],
    row: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    use rayon::prelude::*;
    let n = dx.len() / c.max(1);
    let rows = rows_per_task(n, c);
    let acc_len = acc_out.len();
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows * c)
        .enumerate()
        .map(|(ci, dx)| {
            let mut acc = vec![0f32; acc_len];
            for (k, dx) in dx.chunks_mut(c).enumerate() {
                row(ci * rows + k, dx, &mut acc);
            }
            acc
        })
        .collect();
    for p in partial {
        for (o, v) in acc_out.iter_mut().zip(&p) {
            *o += v;
        }
    }
}

/// Defines `fn $name(args) -> ret` whose body is compiled three times (AVX-512, AVX2+FMA, and
/// the baseline) and dispatched on the running CPU, so simple loops auto-vectorise to the
/// widest registers available without building for one machine only.
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v512($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v256($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU supports the features v512 was compiled for.
                    return unsafe { v512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for v256.
                    return unsafe { v256($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
