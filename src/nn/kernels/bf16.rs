//! bf16 mixed precision (`train.precision = "bf16"`): matrix products take bf16 operands and
//! accumulate in f32, as PyTorch's `autocast(dtype=bfloat16)` does for linear layers; the
//! output, master weights, optimizer state, norms, softmax and the loss stay f32.
//!
//! Operands are rounded to bf16 (to nearest, ties to even) while they are packed for the
//! product, from f32 or from weights already held in bf16. A product of two bf16 numbers is
//! exact in f32, so all kernels below compute the same sums, up to the order of additions.
//! One is picked once per process, at run time:
//! - [`Kernel::Dot`]: AVX512-BF16 `vdpbf16ps`, two `k` per 32-bit lane, where the CPU has it
//!   and a short timing shows it out-running f32 FMAs by a clear margin;
//! - [`Kernel::Fma`]: AVX-512 f32 FMAs over the rounded operands, where `vdpbf16ps` is missing
//!   or slower: on the Sapphire Rapids cores of our 2-vCPU machine it issues at half the FMA
//!   rate (about 95 against 190 GFLOP/s per core), so there bf16 buys memory, not speed;
//! - [`Kernel::Portable`]: the same tile in plain Rust (AVX2 or scalar) elsewhere.
//!
//! `FERROFORMER_BF16_KERNEL=dot|fma|portable` overrides the choice (an unsupported one is
//! refused with a message). Each kernel is tested against an f64 product of the rounded
//! inputs (`tests/bf16.rs`).

use super::gemm::{check, View, ViewMut};
use half::bf16;
use std::cell::Cell;
use std::sync::OnceLock;

/// The precision of matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands (the default).
    #[default]
    F32,
    /// bf16 operands, f32 accumulation.
    Bf16,
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision ops built on this thread use for their products (set by the trainer around
/// its steps; ops record it when they are built, so their backward uses the same).
pub fn current() -> Precision {
    CURRENT.with(|c| c.get())
}

/// Restores the previous precision when dropped.
pub struct Guard(Precision);

impl Drop for Guard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Products of ops built on this thread use `p` until the guard is dropped.
pub fn enable(p: Precision) -> Guard {
    Guard(CURRENT.with(|c| c.replace(p)))
}

/// The bf16 bit pattern nearest `x` (ties to even); NaN stays NaN (quiet).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

/// `x` rounded to the nearest bf16, as f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// An element a product can read: its bf16 bit pattern.
pub trait Elem: Copy + Send + Sync {
    fn bits(self) -> u32;
    /// The view itself when it holds f32 (which f32 products can take).
    fn as_f32(v: View<'_, Self>) -> Option<View<'_, f32>>;
}

impl Elem for f32 {
    #[inline(always)]
    fn bits(self) -> u32 {
        bf16_bits(self)
    }
    fn as_f32(v: View<'_, f32>) -> Option<View<'_, f32>> {
        Some(v)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
    fn as_f32(_: View<'_, bf16>) -> Option<View<'_, f32>> {
        None
    }
}

/// `dst (+)= a @ b` in precision `p`: f32 products by [`super::gemm::matmul`], bf16 ones (and
/// any with an operand held in bf16) by [`matmul`]. For ops, whose errors are candle's.
pub fn product<A: Elem, B: Elem>(
    p: Precision,
    dst: ViewMut,
    a: View<A>,
    b: View<B>,
    accumulate: bool,
    parallel: bool,
) -> candle_core::Result<()> {
    if p == Precision::F32 {
        if let (Some(a), Some(b)) = (A::as_f32(a), B::as_f32(b)) {
            super::gemm::matmul(dst, a, b, accumulate, parallel);
            return Ok(());
        }
    }
    matmul(dst, a, b, accumulate, parallel).map_err(candle_core::Error::wrap)
}

/// The inner kernel of bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Dot,
    Fma,
    Portable,
}

impl Kernel {
    /// Whether the running CPU can execute this kernel.
    pub fn supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Fma => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Dot => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every kernel this CPU can run.
    pub fn available() -> Vec<Kernel> {
        [Kernel::Dot, Kernel::Fma, Kernel::Portable]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    fn parse(s: &str) -> Option<Kernel> {
        match s {
            "dot" => Some(Kernel::Dot),
            "fma" => Some(Kernel::Fma),
            "portable" => Some(Kernel::Portable),
            _ => None,
        }
    }

    /// Two `k` per packed 32-bit word (the `vdpbf16ps` layout) rather than one f32.
    fn pairs(self) -> bool {
        self == Kernel::Dot
    }
}

/// The kernel bf16 products use in this process: `FERROFORMER_BF16_KERNEL` if set, else the
/// fastest the CPU has (`vdpbf16ps` only where a short timing shows it beats f32 FMAs).
pub fn kernel() -> crate::Result<Kernel> {
    static CHOSEN: OnceLock<Result<Kernel, String>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| match std::env::var("FERROFORMER_BF16_KERNEL") {
            Ok(v) => match Kernel::parse(&v) {
                Some(k) if k.supported() => Ok(k),
                Some(k) => Err(format!(
                    "FERROFORMER_BF16_KERNEL={v}: this CPU cannot run the {k:?} kernel"
                )),
                None => Err(format!(
                    "FERROFORMER_BF16_KERNEL={v}: expected dot, fma or portable"
                )),
            },
            Err(_) => Ok(fastest()),
        })
        .clone()
        .map_err(crate::Error::Config)
}

fn fastest() -> Kernel {
    if Kernel::Fma.supported() {
        #[cfg(target_arch = "x86_64")]
        if Kernel::Dot.supported() {
            // A clear margin: where `vdpbf16ps` runs at full rate it doubles the FMA's flops.
            let (fma, dot) = x86::peaks();
            if dot > 1.25 * fma {
                return Kernel::Dot;
            }
        }
        return Kernel::Fma;
    }
    Kernel::Portable
}

/// Rows and columns of the register tile.
const MR: usize = 12;
const NR: usize = 32;
/// Most depth packed at once (even, for `vdpbf16ps` pairs). Deep enough that model shapes
/// take one pass, so each output tile is written once from registers: a `KC x NR` strip of B
/// and a block of A then sit in L2, which feeds the kernel fast enough (a step of `k` loads
/// 176 bytes for 24 FMAs, 12 cycles).
const KC: usize = 2048;
/// Row stride of A packed by rows: not a multiple of 4 KiB, so the 12 rows the kernel reads
/// side by side do not collide in L1's sets.
const AS: usize = KC + 16;
/// Columns of B packed at once (a `KC x NC` panel stays in L2/L3 while every row block of
/// A passes over it).
const NC: usize = 4096;
/// Most rows of A in one block (packed per task, kept in L2).
const MC: usize = 144;

/// `dst (+)= a @ b` with bf16 operands and f32 accumulation. Multi-threaded when `parallel`.
pub fn matmul<A: Elem, B: Elem>(
    dst: ViewMut,
    a: View<A>,
    b: View<B>,
    accumulate: bool,
    parallel: bool,
) -> crate::Result<()> {
    let k = kernel()?;
    matmul_with(k, dst, a, b, accumulate, parallel);
    Ok(())
}

/// [`matmul`] with a given kernel (which the CPU must support).
pub fn matmul_with<A: Elem, B: Elem>(
    kernel: Kernel,
    dst: ViewMut,
    a: View<A>,
    b: View<B>,
    accumulate: bool,
    parallel: bool,
) {
    use rayon::prelude::*;
    assert!(kernel.supported(), "bf16 kernel {kernel:?} not supported");
    let mut dst = dst;
    if !check(&mut dst, &a, &b, accumulate) {
        return;
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    // Row blocks: enough for every thread, none above MC rows, whole tiles where possible.
    let blocks = m.div_ceil(MC).max(threads.min(m.div_ceil(MR)));
    let mc = m.div_ceil(blocks).div_ceil(MR) * MR;
    let words = |len: usize| if kernel.pairs() { len.div_ceil(2) } else { len };
    let (drs, dcs) = (dst.rs, dst.cs);
    let out = SharedOut(dst.data.as_mut_ptr(), dst.data.len());
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let strips = nc.div_ceil(NR);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let strip_len = words(kc) * NR;
            let blen = strips * strip_len;
            let mut bpack = take_buffer(&BPACK, blen);
            let pack_b = |(t, dstrip): (usize, &mut [u32])| {
                pack_b_strip(
                    kernel,
                    &b,
                    pc,
                    kc,
                    jc + t * NR,
                    (nc - t * NR).min(NR),
                    dstrip,
                )
            };
            if threads > 1 && strips > 1 {
                bpack[..blen]
                    .par_chunks_mut(strip_len)
                    .enumerate()
                    .for_each(pack_b);
            } else {
                bpack[..blen]
                    .chunks_mut(strip_len)
                    .enumerate()
                    .for_each(pack_b);
            }
            let overwrite = pc == 0 && !accumulate;
            let packed_b = &bpack;
            // Row-major A is packed row by row (a straight copy), and the kernel reads its rows
            // at fixed offsets; other layouts are packed a column of the strip at a time.
            let a_rows = !kernel.pairs() && a.cs == 1;
            let alen = if a_rows { MR * AS } else { MR * words(KC) };
            let block = |ic: usize| {
                let rows = mc.min(m - ic);
                let alen_all = rows.div_ceil(MR) * alen;
                let mut apack = take_buffer(&APACK, alen_all);
                for (s, astrip) in apack[..alen_all].chunks_mut(alen).enumerate() {
                    let r = (rows - s * MR).min(MR);
                    pack_a_strip(kernel, &a, (ic + s * MR, r), (pc, kc), a_rows, astrip);
                }
                let mut tile = [0f32; MR * NR];
                for t in 0..strips {
                    let bstrip = &packed_b[t * strip_len..(t + 1) * strip_len];
                    let cols = (nc - t * NR).min(NR);
                    for (s, astrip) in apack[..alen_all].chunks(alen).enumerate() {
                        let r = (rows - s * MR).min(MR);
                        let at = (ic + s * MR, jc + t * NR);
                        if r == MR && cols == NR && dcs == 1 {
                            // A whole tile of a row-major output: the kernel adds into it.
                            // SAFETY: blocks cover disjoint rows of `dst`, whose view was
                            // checked to lie inside its slice; `out` outlives the loop.
                            let c = unsafe { out.0.add(at.0 * drs + at.1) };
                            run_tile(kernel, kc, (astrip, a_rows), bstrip, (c, drs, overwrite));
                        } else {
                            run_tile(
                                kernel,
                                kc,
                                (astrip, a_rows),
                                bstrip,
                                (tile.as_mut_ptr(), NR, true),
                            );
                            // SAFETY: as above.
                            unsafe { out.add_tile(&tile, at, (r, cols), (drs, dcs), overwrite) };
                        }
                    }
                }
                give_back(&APACK, apack);
            };
            if threads > 1 && blocks > 1 {
                (0..blocks).into_par_iter().for_each(|bi| block(bi * mc));
            } else {
                (0..blocks).for_each(|bi| block(bi * mc));
            }
            give_back(&BPACK, bpack);
        }
    }
}

thread_local! {
    /// Packing buffers, kept per thread between products: packing writes every word the
    /// kernel reads (padding included), so they are never zeroed.
    static APACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    static BPACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

type Buffer = std::thread::LocalKey<std::cell::RefCell<Vec<u32>>>;

/// This thread's buffer, at least `len` long.
fn take_buffer(key: &'static Buffer, len: usize) -> Vec<u32> {
    let mut v = key.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if v.len() < len {
        v.resize(len, 0);
    }
    v
}

fn give_back(key: &'static Buffer, v: Vec<u32>) {
    key.with(|b| *b.borrow_mut() = v);
}

/// The output buffer, shared by tasks that write disjoint row blocks.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32, usize);
// SAFETY: tasks write disjoint elements (see `add_tile`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Writes (or adds) the `rows x cols` corner of `tile` at `(i0, j0)` of the output.
    ///
    /// # Safety
    /// The elements written lie in the checked output view, and no other task writes them.
    unsafe fn add_tile(
        self,
        tile: &[f32; MR * NR],
        (i0, j0): (usize, usize),
        (rows, cols): (usize, usize),
        (rs, cs): (usize, usize),
        overwrite: bool,
    ) {
        for i in 0..rows {
            let src = &tile[i * NR..i * NR + cols];
            if cs == 1 {
                let start = (i0 + i) * rs + j0;
                debug_assert!(start + cols <= self.1);
                let row = std::slice::from_raw_parts_mut(self.0.add(start), cols);
                if overwrite {
                    row.copy_from_slice(src);
                } else {
                    row.iter_mut().zip(src).for_each(|(o, v)| *o += v);
                }
            } else {
                for (j, &v) in src.iter().enumerate() {
                    let at = (i0 + i) * rs + (j0 + j) * cs;
                    debug_assert!(at < self.1);
                    let o = &mut *self.0.add(at);
                    *o = if overwrite { v } else { *o + v };
                }
            }
        }
    }
}

/// Packs rows `i0 .. i0 + rows` (at most MR) and depth `p0 .. p0 + kc` of `a` for the kernel:
/// with `by_rows`, row `i` at `i * AS` (a copy of row-major data); otherwise per `k` (or pair
/// of `k`) MR words. Missing rows and the odd last `k` of a pair are zero.
fn pack_a_strip<A: Elem>(
    kernel: Kernel,
    a: &View<A>,
    (i0, rows): (usize, usize),
    (p0, kc): (usize, usize),
    by_rows: bool,
    out: &mut [u32],
) {
    let at = |i: usize, p: usize| a.data[(i0 + i) * a.rs + (p0 + p) * a.cs].bits();
    if by_rows {
        for i in 0..MR {
            let o = &mut out[i * AS..i * AS + kc];
            if i < rows {
                let row = &a.data[(i0 + i) * a.rs + p0..][..kc];
                for (o, v) in o.iter_mut().zip(row) {
                    *o = v.bits() << 16;
                }
            } else {
                o.fill(0);
            }
        }
        return;
    }
    let kw = if kernel.pairs() { kc.div_ceil(2) } else { kc };
    for q in 0..kw {
        out[q * MR + rows..(q + 1) * MR].fill(0);
    }
    if kernel.pairs() {
        for i in 0..rows {
            for q in 0..kc / 2 {
                out[q * MR + i] = at(i, 2 * q) | at(i, 2 * q + 1) << 16;
            }
            if kc % 2 == 1 {
                out[(kc / 2) * MR + i] = at(i, kc - 1);
            }
        }
    } else if a.rs == 1 {
        for p in 0..kc {
            let col = &a.data[(p0 + p) * a.cs + i0..][..rows];
            for (o, v) in out[p * MR..p * MR + rows].iter_mut().zip(col) {
                *o = v.bits() << 16;
            }
        }
    } else {
        for p in 0..kc {
            for i in 0..rows {
                out[p * MR + i] = at(i, p) << 16;
            }
        }
    }
}

/// Packs columns `j0 .. j0 + cols` (at most NR) and depth `p0 .. p0 + kc` of `b`: per `k` (or
/// pair of `k`), NR words.
fn pack_b_strip<B: Elem>(
    kernel: Kernel,
    b: &View<B>,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    out: &mut [u32],
) {
    let at = |p: usize, j: usize| b.data[(p0 + p) * b.rs + (j0 + j) * b.cs].bits();
    let kw = if kernel.pairs() { kc.div_ceil(2) } else { kc };
    if cols < NR {
        for q in 0..kw {
            out[q * NR + cols..(q + 1) * NR].fill(0);
        }
    }
    if kernel.pairs() {
        for q in 0..kw {
            let second = 2 * q + 1 < kc;
            for j in 0..cols {
                let hi = if second { at(2 * q + 1, j) } else { 0 };
                out[q * NR + j] = at(2 * q, j) | hi << 16;
            }
        }
    } else if b.cs == 1 {
        for p in 0..kc {
            let row = &b.data[(p0 + p) * b.rs + j0..][..cols];
            for (o, v) in out[p * NR..p * NR + cols].iter_mut().zip(row) {
                *o = v.bits() << 16;
            }
        }
    } else {
        for j in 0..cols {
            for p in 0..kc {
                out[p * NR + j] = at(p, j) << 16;
            }
        }
    }
}

/// The output of a tile: its first element, row stride, and whether to overwrite (rather
/// than add to) what is there.
type TileOut = (*mut f32, usize, bool);

/// `C (+)= A_strip @ B_strip` over the packed depth (`a_rows`: A packed row by row) for an
/// `MR x NR` tile of `C` with unit column stride.
fn run_tile(kernel: Kernel, kc: usize, (a, a_rows): (&[u32], bool), b: &[u32], c: TileOut) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_with` checked the CPU supports the kernel; the strips hold
        // `kc` (or `kc / 2` pairs) rows of MR and NR words, or MR rows of AS; `c` is a tile
        // no other task writes.
        Kernel::Fma if a_rows => unsafe { x86::tile_fma::<AS, 1>(kc, a, b, c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kernel::Fma => unsafe { x86::tile_fma::<1, MR>(kc, a, b, c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kernel::Dot => unsafe { x86::tile_dot(kc.div_ceil(2), a, b, c) },
        _ => {
            let mut tile = [0f32; MR * NR];
            let strides = if a_rows { (AS, 1) } else { (1, MR) };
            tile_portable(kc, a, strides, b, &mut tile);
            let (ptr, rs, overwrite) = c;
            for (i, row) in tile.chunks(NR).enumerate() {
                // SAFETY: the tile lies in the output (see above).
                let out = unsafe { std::slice::from_raw_parts_mut(ptr.add(i * rs), NR) };
                for (o, v) in out.iter_mut().zip(row) {
                    *o = if overwrite { *v } else { *o + v };
                }
            }
        }
    }
}

crate::multiversion! {
    /// The tile in plain Rust over f32 bit patterns; A's element `(i, p)` at `i * si + p * sp`.
    fn tile_portable(kc: usize, a: &[u32], strides: (usize, usize), b: &[u32], tile: &mut [f32; MR * NR]) {
        let (si, sp) = strides;
        tile.fill(0.0);
        for p in 0..kc {
            let bp = &b[p * NR..(p + 1) * NR];
            for i in 0..MR {
                let ai = f32::from_bits(a[i * si + p * sp]);
                for (o, &w) in tile[i * NR..(i + 1) * NR].iter_mut().zip(bp) {
                    *o += ai * f32::from_bits(w);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{TileOut, MR, NR};
    use std::arch::x86_64::*;

    /// Writes (or adds) the accumulators to the tile.
    #[inline(always)]
    unsafe fn store(c: &[__m512; 2 * MR], (ptr, rs, overwrite): TileOut) {
        for (i, v) in c.iter().enumerate() {
            let at = ptr.add((i / 2) * rs + (i % 2) * 16);
            let v = if overwrite {
                *v
            } else {
                _mm512_add_ps(*v, _mm512_loadu_ps(at))
            };
            _mm512_storeu_ps(at, v);
        }
    }

    /// f32 FMAs: 12 rows x 2 vectors of 16 columns in 24 registers; A's element `(i, p)` at
    /// `i * SI + p * SP` (constant offsets from one pointer).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_fma<const SI: usize, const SP: usize>(
        kc: usize,
        a: &[u32],
        b: &[u32],
        out: TileOut,
    ) {
        assert!(kc > 0 && a.len() > (MR - 1) * SI + (kc - 1) * SP && b.len() >= kc * NR);
        let (a, b) = (a.as_ptr() as *const f32, b.as_ptr() as *const f32);
        let mut c = [_mm512_setzero_ps(); 2 * MR];
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for i in 0..MR {
                let ai = _mm512_set1_ps(*a.add(i * SI + p * SP));
                c[2 * i] = _mm512_fmadd_ps(ai, b0, c[2 * i]);
                c[2 * i + 1] = _mm512_fmadd_ps(ai, b1, c[2 * i + 1]);
            }
        }
        store(&c, out);
    }

    /// `vdpbf16ps` over pairs of `k`: the same tile shape.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile_dot(kp: usize, a: &[u32], b: &[u32], out: TileOut) {
        assert!(a.len() >= kp * MR && b.len() >= kp * NR);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        let mut c = [_mm512_setzero_ps(); 2 * MR];
        for q in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16) as *const _));
            for i in 0..MR {
                let ai: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(q * MR + i) as i32));
                c[2 * i] = _mm512_dpbf16_ps(c[2 * i], ai, b0);
                c[2 * i + 1] = _mm512_dpbf16_ps(c[2 * i + 1], ai, b1);
            }
        }
        store(&c, out);
    }

    /// 12 independent accumulators so throughput, not latency, bounds the loop.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_loop(iters: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        // Opaque inputs, or the compiler evaluates the loop itself.
        let a = _mm512_set1_ps(std::hint::black_box(1.0001));
        let b = _mm512_set1_ps(std::hint::black_box(0.9999));
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(a, b, *r);
            }
        }
        acc.iter().map(|r| _mm512_reduce_add_ps(*r)).sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot_loop(iters: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let one: __m512bh =
            std::mem::transmute(_mm512_set1_epi32(std::hint::black_box(0x3f80_3f80)));
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_dpbf16_ps(*r, one, one);
            }
        }
        acc.iter().map(|r| _mm512_reduce_add_ps(*r)).sum()
    }

    /// One core's f32 FMA and `vdpbf16ps` rates in GFLOP/s: best of five short runs each,
    /// alternating, after a warm-up (a core's wide vector units power up slowly, so whichever
    /// ran first would look slower); about 10 ms in all. The CPU must have AVX512-BF16.
    pub fn peaks() -> (f64, f64) {
        let iters = 100_000;
        let time = |f: &dyn Fn() -> f32, flops: f64| {
            let t0 = std::time::Instant::now();
            std::hint::black_box(f());
            flops / t0.elapsed().as_secs_f64().max(1e-9) / 1e9
        };
        // SAFETY: the caller checked AVX512-F and AVX512-BF16.
        let fma = || unsafe { fma_loop(iters) };
        // SAFETY: as above.
        let dot = || unsafe { dot_loop(iters) };
        let (fma_flops, dot_flops) = ((iters * 12 * 32) as f64, (iters * 12 * 64) as f64);
        for _ in 0..4 {
            time(&fma, fma_flops);
        }
        let (mut best_fma, mut best_dot) = (0f64, 0f64);
        for _ in 0..5 {
            best_fma = best_fma.max(time(&fma, fma_flops));
            best_dot = best_dot.max(time(&dot, dot_flops));
        }
        (best_fma, best_dot)
    }
}

/// One core's f32 FMA and bf16 dot-product peaks (GFLOP/s) where the CPU has both.
pub fn peaks() -> Option<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    if Kernel::Dot.supported() {
        return Some(x86::peaks());
    }
    None
}

/// Rounds a weight to bf16 storage (weights held in bf16).
pub fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter()
        .map(|&v| bf16::from_bits(bf16_bits(v) as u16))
        .collect()
}
