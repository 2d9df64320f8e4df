//! Matrix products with llama.cpp-quantized weights (Q4_0, Q4_1, Q8_0) on x86 CPUs, for
//! generation from GGUF checkpoints. As llama.cpp does, each 32-value block of the activations
//! is quantized to 8 bits (scale `d`, integers `q`), so a block's dot product is one integer
//! multiply-add over 32 byte pairs (AVX-512 VNNI `vpdpbusd`, or AVX2 `vpmaddubsw`) and a scale.
//!
//! The weights are repacked once at load into blocks with the file's f16 scales, on huge
//! pages; Q4_0 becomes Q4_1 with minimum `-8 d`, so one kernel serves both:
//! `sum_j (n_j d_w + m_w) q_j d_x = d_w d_x sum_j n_j q_j + m_w (d_x sum_j q_j)`.
//! [`QWeight::matmul_reference`] is the scalar reference the SIMD path is tested against.
//!
//! Length: one kernel family; the AVX-512 and AVX2 variants of each block product sit side by
//! side so they are reviewed together, and the tests are a tenth of the file.

use super::f32s;
use super::pages::Pages;
use super::SendPtr;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;
use std::sync::Arc;

const QK: usize = 32;

/// A 4-bit block: value `j` is `n_j d + m`, with `n_j` in `0..16`; nibble `j` of byte `i`
/// holds `n_i` (low) and `n_{i+16}` (high). `d` and `m` are f16 bits, as in the GGUF file:
/// generation streams every weight once per token, so each byte of scale costs time (20
/// bytes a block instead of 24 with f32 scales).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct B4 {
    dm: [u16; 2],
    qs: [u8; 16],
}

/// An 8-bit block: value `j` is `q_j d`, `d` in f16 bits (34 bytes a block).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct B8 {
    d: u16,
    qs: [i8; 32],
}

impl B4 {
    fn d(&self) -> f32 {
        f16::from_bits(self.dm[0]).to_f32()
    }
    fn m(&self) -> f32 {
        f16::from_bits(self.dm[1]).to_f32()
    }
}

impl B8 {
    fn d(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
}

/// An activation block: `q_j d`, with `s = d sum_j q_j`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct XBlock {
    d: f32,
    s: f32,
    q: [i8; 32],
}

/// On huge pages: generation streams them all once per token (see `kernels::pages`).
#[derive(Debug)]
enum Blocks {
    Four(Pages<B4>),
    Eight(Pages<B8>),
}

impl Blocks {
    fn four(v: Vec<B4>) -> Blocks {
        Blocks::Four(Pages::copy_of(&v))
    }
    fn eight(v: Vec<B8>) -> Blocks {
        Blocks::Eight(Pages::copy_of(&v))
    }
}

/// A quantized `[rows, cols]` matrix (`nn.Linear` orientation) in the repacked layout.
#[derive(Clone, Debug)]
pub struct QWeight {
    pub rows: usize,
    pub cols: usize,
    /// Shared, so row ranges of a stacked matrix are views, not copies.
    blocks: Arc<Blocks>,
    /// This matrix's first row within `blocks`.
    first_row: usize,
}

fn f16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

impl QWeight {
    /// Repacks a candle `QTensor` of type Q4_0, Q4_1 or Q8_0; `None` for other types.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        let (rows, cols) = match q.shape().dims() {
            [r, c] => (*r, *c),
            _ => return Ok(None),
        };
        if !cols.is_multiple_of(QK) {
            return Ok(None);
        }
        let data = q.data()?;
        let n = rows * cols / QK;
        let size = match q.dtype() {
            GgmlDType::Q4_0 => 18,
            GgmlDType::Q4_1 => 20,
            GgmlDType::Q8_0 => 34,
            _ => return Ok(None),
        };
        if data.len() != n * size {
            candle_core::bail!(
                "quantized data holds {} bytes, expected {} ({n} blocks of {size})",
                data.len(),
                n * size
            );
        }
        // Written straight onto the huge pages, block by block.
        let at = |i: usize| &data[i * size..(i + 1) * size];
        let blocks = match q.dtype() {
            GgmlDType::Q4_0 => Blocks::Four(Pages::from_fn(n, |i| {
                let b = at(i);
                let d = f16_at(b, 0);
                // -8 d is exact in f16 unless it overflows, which GGUF's writers never
                // produce (|d| <= max|w| / 8).
                let m = f16::from_f32(-8.0 * f16::from_bits(d).to_f32()).to_bits();
                B4 {
                    dm: [d, m],
                    qs: b[2..18].try_into().expect("16 bytes"),
                }
            })),
            GgmlDType::Q4_1 => Blocks::Four(Pages::from_fn(n, |i| {
                let b = at(i);
                B4 {
                    dm: [f16_at(b, 0), f16_at(b, 2)],
                    qs: b[4..20].try_into().expect("16 bytes"),
                }
            })),
            _ => Blocks::Eight(Pages::from_fn(n, |i| {
                let b = at(i);
                B8 {
                    d: f16_at(b, 0),
                    qs: std::array::from_fn(|j| b[2 + j] as i8),
                }
            })),
        };
        Ok(Some(QWeight {
            rows,
            cols,
            blocks: Arc::new(blocks),
            first_row: 0,
        }))
    }

    /// The matrices stacked by rows (one product instead of several, for projections that
    /// read the same input); `None` unless all have the same width and block type.
    pub fn concat_rows(parts: &[&QWeight]) -> Option<QWeight> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        // Adjacent views of one matrix (a model rebuilt from stacked parts) stack for free.
        let adjacent = parts.windows(2).all(|w| {
            Arc::ptr_eq(&w[0].blocks, &w[1].blocks) && w[0].first_row + w[0].rows == w[1].first_row
        });
        if adjacent {
            return Some(QWeight {
                rows,
                cols,
                blocks: parts[0].blocks.clone(),
                first_row: parts[0].first_row,
            });
        }
        let nb = cols / QK;
        let range = |p: &QWeight| p.first_row * nb..(p.first_row + p.rows) * nb;
        let blocks = match parts[0].blocks.as_ref() {
            Blocks::Four(_) => Blocks::four(
                parts
                    .iter()
                    .map(|p| match p.blocks.as_ref() {
                        Blocks::Four(b) => Some(b[range(p)].iter().copied()),
                        Blocks::Eight(_) => None,
                    })
                    .collect::<Option<Vec<_>>>()?
                    .into_iter()
                    .flatten()
                    .collect(),
            ),
            Blocks::Eight(_) => Blocks::eight(
                parts
                    .iter()
                    .map(|p| match p.blocks.as_ref() {
                        Blocks::Eight(b) => Some(b[range(p)].iter().copied()),
                        Blocks::Four(_) => None,
                    })
                    .collect::<Option<Vec<_>>>()?
                    .into_iter()
                    .flatten()
                    .collect(),
            ),
        };
        Some(QWeight {
            rows,
            cols,
            blocks: Arc::new(blocks),
            first_row: 0,
        })
    }

    /// Row `r`, dequantized into `out` (`cols` values): embedding lookups from a quantized
    /// table.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        let w = (self.first_row + r) * nb..(self.first_row + r + 1) * nb;
        match self.blocks.as_ref() {
            Blocks::Four(b) => {
                for (blk, o) in b[w].iter().zip(out.chunks_exact_mut(QK)) {
                    let (d, m) = (blk.d(), blk.m());
                    for j in 0..16 {
                        o[j] = (blk.qs[j] & 15) as f32 * d + m;
                        o[j + 16] = (blk.qs[j] >> 4) as f32 * d + m;
                    }
                }
            }
            Blocks::Eight(b) => {
                for (blk, o) in b[w].iter().zip(out.chunks_exact_mut(QK)) {
                    let d = blk.d();
                    for (o, &q) in o.iter_mut().zip(&blk.qs) {
                        *o = q as f32 * d;
                    }
                }
            }
        }
    }

    /// Rows `start .. start + n` dequantized to f32 `[n, cols]`.
    pub fn dequantize_rows(&self, start: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(i, row)| self.dequantize_row(start + i, row));
        out
    }

    /// The whole matrix dequantized, `[rows, cols]`.
    pub fn dequantize(&self) -> candle_core::Tensor {
        let data = self.dequantize_rows(0, self.rows);
        candle_core::Tensor::from_vec(data, (self.rows, self.cols), &candle_core::Device::Cpu)
            .expect("sizes agree")
    }

    /// Rows `start .. start + n` as a view sharing this matrix's data.
    pub fn row_range(&self, start: usize, n: usize) -> Option<QWeight> {
        (start + n <= self.rows).then(|| QWeight {
            rows: n,
            cols: self.cols,
            blocks: self.blocks.clone(),
            first_row: self.first_row + start,
        })
    }

    /// `x` `[m, cols]` times the transposed weight: `[m, rows]`, with the SIMD kernel when
    /// the CPU has one.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(simd::kernel(), x, m)
    }

    fn matmul_with(&self, kernel: simd::Kernel, x: &[f32], m: usize) -> Vec<f32> {
        let xq = quantize(x);
        let nb = self.cols / QK;
        let eight = matches!(self.blocks.as_ref(), Blocks::Eight(_));
        let pairs = kernel.pairs(&xq, m, nb, eight);
        let mut out = vec![0f32; m * self.rows];
        let threads = rayon::current_num_threads().max(1);
        // Several tasks per thread, claimed as threads come free, so a thread that started
        // late or was interrupted does not hold up the product.
        let per_task = self.rows.div_ceil(threads * 8).clamp(16, 512);
        let dst = SendPtr(out.as_mut_ptr());
        // Each task owns a range of weight rows (each read once) for all m activation rows.
        super::team::par_for(self.rows.div_ceil(per_task), &|t| {
            let r0 = t * per_task;
            let r1 = (r0 + per_task).min(self.rows);
            let xr = |i: usize| &xq[i * nb..(i + 1) * nb];
            // SAFETY: tasks write disjoint entries (their own rows `r0..r1` of every output
            // row), all inside `out`, which outlives `par_for`.
            let put = |i: usize, r: usize, v: f32| unsafe { *dst.at(i * self.rows + r) = v };
            for r in r0..r1 {
                let w = (self.first_row + r) * nb..(self.first_row + r + 1) * nb;
                let mut i = 0;
                if let Some(p) = &pairs {
                    for g in 0..p.groups() {
                        let v = match self.blocks.as_ref() {
                            Blocks::Four(b) => p.four(&b[w.clone()], g),
                            Blocks::Eight(b) => p.eight(&b[w.clone()], g),
                        };
                        for (k, v) in v.into_iter().take(p.rows_in(g)).enumerate() {
                            put(p.first_row(g) + k, r, v);
                        }
                    }
                    i = 2 * p.pairs;
                }
                while i + 4 <= m {
                    let x4 = [xr(i), xr(i + 1), xr(i + 2), xr(i + 3)];
                    let v = match self.blocks.as_ref() {
                        Blocks::Four(b) => kernel.four4(&b[w.clone()], x4),
                        Blocks::Eight(b) => kernel.eight4(&b[w.clone()], x4),
                    };
                    for (k, v) in v.into_iter().enumerate() {
                        put(i + k, r, v);
                    }
                    i += 4;
                }
                for i in i..m {
                    put(
                        i,
                        r,
                        match self.blocks.as_ref() {
                            Blocks::Four(b) => kernel.four(&b[w.clone()], xr(i)),
                            Blocks::Eight(b) => kernel.eight(&b[w.clone()], xr(i)),
                        },
                    );
                }
            }
        });
        out
    }

    /// The scalar reference of [`QWeight::matmul`] (same activation quantization).
    pub fn matmul_reference(&self, x: &[f32], m: usize) -> Vec<f32> {
        let xq = quantize(x);
        let nb = self.cols / QK;
        let mut out = vec![0f32; m * self.rows];
        for i in 0..m {
            for r in 0..self.rows {
                let xr = &xq[i * nb..(i + 1) * nb];
                let w = (self.first_row + r) * nb..(self.first_row + r + 1) * nb;
                out[i * self.rows + r] = match self.blocks.as_ref() {
                    Blocks::Four(b) => scalar_four(&b[w], xr),
                    Blocks::Eight(b) => scalar_eight(&b[w], xr),
                };
            }
        }
        out
    }
}

/// Quantizes `x` (rows a multiple of 32 wide) into 8-bit blocks, rounding to nearest (ties
/// to even), with SIMD where the CPU has it (the same blocks either way).
pub fn quantize(x: &[f32]) -> Vec<XBlock> {
    let simd = simd::kernel();
    x.chunks_exact(QK).map(|v| simd.quantize(v)).collect()
}

fn scalar_quantize(v: &[f32]) -> XBlock {
    let amax = v.iter().fold(0f32, |a, &b| a.max(b.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; 32];
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(v) {
        *q = (v * inv).round_ties_even() as i8;
        sum += *q as i32;
    }
    XBlock {
        d,
        s: d * sum as f32,
        q,
    }
}

fn scalar_four(w: &[B4], x: &[XBlock]) -> f32 {
    let mut acc = 0f32;
    for (w, x) in w.iter().zip(x) {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (w.qs[j] & 15) as i32 * x.q[j] as i32;
            isum += (w.qs[j] >> 4) as i32 * x.q[j + 16] as i32;
        }
        acc += w.d() * x.d * isum as f32 + w.m() * x.s;
    }
    acc
}

fn scalar_eight(w: &[B8], x: &[XBlock]) -> f32 {
    let mut acc = 0f32;
    for (w, x) in w.iter().zip(x) {
        let isum: i32 =
            w.qs.iter()
                .zip(&x.q)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
        acc += w.d() * x.d * isum as f32;
    }
    acc
}

mod simd {
    use super::{scalar_eight, scalar_four, scalar_quantize, XBlock, B4, B8};

    /// The best row-dot implementation for this CPU.
    #[derive(Clone, Copy)]
    pub enum Kernel {
        #[cfg(target_arch = "x86_64")]
        Vnni,
        #[cfg(target_arch = "x86_64")]
        Avx2,
        Scalar,
    }

    /// Activation rows two by two for the 512-bit kernels, which multiply one weight block
    /// by two rows' blocks per instruction: block `i` of pair `p` (rows `2p`, `2p + 1`) at
    /// `q[p * nb + i]`, the rows' values interleaved four by four (`a0..a3 b0..b3 a4..`,
    /// so the scales of a pair are a 64-bit broadcast), plus 128 as unsigned bytes against
    /// 8-bit weights; the pair's two scales at `d[p * nb + i]`; the sums of block `i` of
    /// group `g`'s sixteen rows (pairs `8g .. 8g + 8`, zero past the last) at
    /// `s[g * nb + i]`. Made only where the CPU has AVX-512 VNNI.
    pub struct Pairs {
        q: Vec<[u8; 64]>,
        d: Vec<[f32; 2]>,
        s: Vec<[f32; 16]>,
        nb: usize,
        /// Rows `0 .. 2 * pairs` are here; an odd last row is not.
        pub pairs: usize,
    }

    /// Pairs in a group: one weight block is unpacked once for all of them.
    const GROUP: usize = 8;

    impl Pairs {
        pub fn groups(&self) -> usize {
            self.pairs.div_ceil(GROUP)
        }

        /// Rows of group `g` (the first is row `2 * GROUP * g`).
        pub fn rows_in(&self, g: usize) -> usize {
            (2 * (self.pairs - GROUP * g)).min(2 * GROUP)
        }

        /// The first row of group `g`.
        pub fn first_row(&self, g: usize) -> usize {
            2 * GROUP * g
        }

        /// Group `g`'s pairs, scales and sums, checked against a weight row of `nb` blocks.
        #[allow(clippy::type_complexity)]
        fn group(&self, g: usize, nb: usize) -> (&[[u8; 64]], &[[f32; 2]], &[[f32; 16]]) {
            assert!(nb == self.nb && g < self.groups());
            let pairs = GROUP * g..GROUP * g + self.rows_in(g) / 2;
            let range = pairs.start * nb..pairs.end * nb;
            (
                &self.q[range.clone()],
                &self.d[range],
                &self.s[g * nb..(g + 1) * nb],
            )
        }

        /// [`Kernel::four`] of one weight row against group `g`'s rows (entries past
        /// [`Pairs::rows_in`] are meaningless), summed as for one row alone.
        #[cfg(target_arch = "x86_64")]
        pub fn four(&self, w: &[B4], g: usize) -> [f32; 16] {
            let (q, d, s) = self.group(g, w.len());
            // SAFETY: `Pairs` exist only where the CPU has AVX-512 VNNI; `q` and `d` hold
            // the group's pairs of `w.len()` blocks each, `s` one entry per block.
            unsafe {
                match q.len() / w.len().max(1) {
                    8 => x86::four_pairs::<8>(w, q, d, s),
                    7 => x86::four_pairs::<7>(w, q, d, s),
                    6 => x86::four_pairs::<6>(w, q, d, s),
                    5 => x86::four_pairs::<5>(w, q, d, s),
                    4 => x86::four_pairs::<4>(w, q, d, s),
                    3 => x86::four_pairs::<3>(w, q, d, s),
                    2 => x86::four_pairs::<2>(w, q, d, s),
                    _ => x86::four_pairs::<1>(w, q, d, s),
                }
            }
        }

        /// [`Kernel::eight`] against group `g`'s rows, as [`Pairs::four`].
        #[cfg(target_arch = "x86_64")]
        pub fn eight(&self, w: &[B8], g: usize) -> [f32; 16] {
            let (q, d, _) = self.group(g, w.len());
            // SAFETY: as in `four`.
            unsafe {
                match q.len() / w.len().max(1) {
                    8 => x86::eight_pairs::<8>(w, q, d),
                    7 => x86::eight_pairs::<7>(w, q, d),
                    6 => x86::eight_pairs::<6>(w, q, d),
                    5 => x86::eight_pairs::<5>(w, q, d),
                    4 => x86::eight_pairs::<4>(w, q, d),
                    3 => x86::eight_pairs::<3>(w, q, d),
                    2 => x86::eight_pairs::<2>(w, q, d),
                    _ => x86::eight_pairs::<1>(w, q, d),
                }
            }
        }

        #[cfg(not(target_arch = "x86_64"))]
        pub fn four(&self, _: &[B4], _: usize) -> [f32; 16] {
            unreachable!("Pairs are only made on x86-64")
        }

        #[cfg(not(target_arch = "x86_64"))]
        pub fn eight(&self, _: &[B8], _: usize) -> [f32; 16] {
            unreachable!("Pairs are only made on x86-64")
        }
    }

    pub fn kernel() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Kernel::Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    impl Kernel {
        /// `x` (`m` rows of `nb` blocks) two rows by two for the 512-bit kernels, when this
        /// is the AVX-512 VNNI kernel and there are two rows or more; `eight` for 8-bit
        /// weights.
        pub fn pairs(self, x: &[XBlock], m: usize, nb: usize, eight: bool) -> Option<Pairs> {
            #[cfg(target_arch = "x86_64")]
            if matches!(self, Kernel::Vnni) && m >= 2 && nb > 0 {
                let pairs = m / 2;
                let flip = if eight { 0x80 } else { 0 };
                let mut q = vec![[0u8; 64]; pairs * nb];
                let mut d = vec![[0f32; 2]; pairs * nb];
                for (p, (q, d)) in q
                    .chunks_exact_mut(nb)
                    .zip(d.chunks_exact_mut(nb))
                    .enumerate()
                {
                    for (i, (q, d)) in q.iter_mut().zip(d).enumerate() {
                        let (a, b) = (&x[2 * p * nb + i], &x[(2 * p + 1) * nb + i]);
                        for (k, q) in q.chunks_exact_mut(8).enumerate() {
                            for j in 0..4 {
                                q[j] = a.q[4 * k + j] as u8 ^ flip;
                                q[4 + j] = b.q[4 * k + j] as u8 ^ flip;
                            }
                        }
                        *d = [a.d, b.d];
                    }
                }
                let mut s = vec![[0f32; 16]; pairs.div_ceil(GROUP) * nb];
                for r in 0..2 * pairs {
                    for i in 0..nb {
                        s[(r / (2 * GROUP)) * nb + i][r % (2 * GROUP)] = x[r * nb + i].s;
                    }
                }
                return Some(Pairs { q, d, s, nb, pairs });
            }
            let _ = (x, m, nb, eight);
            None
        }

        /// One block of 32 activations.
        pub fn quantize(self, v: &[f32]) -> XBlock {
            assert_eq!(v.len(), 32);
            match self {
                // SAFETY: the CPU has AVX2 (both variants); `v` holds 32 values.
                #[cfg(target_arch = "x86_64")]
                Kernel::Vnni | Kernel::Avx2 => unsafe { x86::quantize(v) },
                Kernel::Scalar => scalar_quantize(v),
            }
        }

        pub fn four(self, w: &[B4], x: &[XBlock]) -> f32 {
            match self {
                // SAFETY: the variant is chosen only when the CPU has these features.
                #[cfg(target_arch = "x86_64")]
                Kernel::Vnni => unsafe { x86::four_vnni(w, x) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::four_avx2(w, x) },
                Kernel::Scalar => scalar_four(w, x),
            }
        }

        /// [`Kernel::four`] of one weight row against four activation rows (each as long as
        /// the weight row).
        pub fn four4(self, w: &[B4], x: [&[XBlock]; 4]) -> [f32; 4] {
            assert!(x.iter().all(|r| r.len() >= w.len()));
            match self {
                // SAFETY: as above; every activation row holds as many blocks as `w`.
                #[cfg(target_arch = "x86_64")]
                Kernel::Vnni => unsafe { x86::four4_vnni(w, x) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::four4_avx2(w, x) },
                Kernel::Scalar => x.map(|x| scalar_four(w, x)),
            }
        }

        /// [`Kernel::eight`] against four activation rows.
        pub fn eight4(self, w: &[B8], x: [&[XBlock]; 4]) -> [f32; 4] {
            assert!(x.iter().all(|r| r.len() >= w.len()));
            match self {
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Kernel::Vnni => unsafe { x86::eight4_vnni(w, x) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::eight4_avx2(w, x) },
                Kernel::Scalar => x.map(|x| scalar_eight(w, x)),
            }
        }

        pub fn eight(self, w: &[B8], x: &[XBlock]) -> f32 {
            match self {
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Kernel::Vnni => unsafe { x86::eight_vnni(w, x) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::eight_avx2(w, x) },
                Kernel::Scalar => scalar_eight(w, x),
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use super::{XBlock, B4, B8};
        use std::arch::x86_64::*;

        /// Row `h` (0 or 1) of a pair's interleaved accumulators (row 0 in the even lanes),
        /// summed as [`hsum`] sums one row's eight lanes.
        #[target_feature(enable = "avx2,fma,f16c,avx512f")]
        #[inline]
        unsafe fn hsum_half(a: __m512, h: usize) -> f32 {
            let h = h as i32;
            let idx = _mm512_setr_epi32(
                h,
                2 + h,
                4 + h,
                6 + h,
                8 + h,
                10 + h,
                12 + h,
                14 + h,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            );
            hsum(_mm512_castps512_ps256(_mm512_permutexvar_ps(idx, a)))
        }

        /// Each 32-bit group of a weight block twice, to meet two interleaved rows.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn twice(w: __m256i) -> __m512i {
            let idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
            _mm512_permutexvar_epi32(idx, _mm512_castsi256_si512(w))
        }

        /// A pair's two scales `[a, b]`, eight times.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn pair_scales(d: &[f32; 2]) -> __m512 {
            _mm512_castpd_ps(_mm512_set1_pd(std::ptr::read_unaligned(
                d.as_ptr() as *const f64
            )))
        }

        // The paired kernels do, lane for lane, what `four_n` / `eight_n` do for each row
        // (the same products, roundings and order of sums, blocks alternating between two
        // accumulators), so a row's result is still the same batched or alone; each 512-bit
        // instruction works on two rows. The minimum terms of sixteen rows share a vector.
        /// [`four_n_vnni`] of one weight row against `P` pairs (see `super::Pairs`).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
        pub unsafe fn four_pairs<const P: usize>(
            w: &[B4],
            q: &[[u8; 64]],
            d: &[[f32; 2]],
            s: &[[f32; 16]],
        ) -> [f32; 16] {
            let nb = w.len();
            debug_assert!(q.len() >= P * nb && d.len() >= P * nb && s.len() >= nb);
            #[inline(always)]
            unsafe fn block<const P: usize>(
                w: &B4,
                (q, d, s): (&[[u8; 64]], &[[f32; 2]], &[f32; 16]),
                (i, nb): (usize, usize),
                acc: &mut [__m512; P],
                mins: &mut __m512,
            ) {
                let qs = _mm_loadu_si128(w.qs.as_ptr() as *const __m128i);
                let wv = _mm256_and_si256(
                    _mm256_set_m128i(_mm_srli_epi16(qs, 4), qs),
                    _mm256_set1_epi8(15),
                );
                let w2 = twice(wv);
                let bits = std::ptr::read_unaligned(w.dm.as_ptr() as *const i32);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
                let dw = _mm512_broadcastss_ps(dm);
                let mw = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
                *mins = _mm512_add_ps(*mins, _mm512_mul_ps(mw, _mm512_loadu_ps(s.as_ptr())));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let at = p * nb + i;
                    let xv = _mm512_loadu_si512(q.get_unchecked(at).as_ptr() as *const _);
                    let f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w2, xv));
                    let sc = _mm512_mul_ps(dw, pair_scales(d.get_unchecked(at)));
                    *acc = _mm512_fmadd_ps(sc, f, *acc);
                }
            }
            let (mut a0, mut a1) = ([_mm512_setzero_ps(); P], [_mm512_setzero_ps(); P]);
            let (mut m0, mut m1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut i = 0;
            while i + 1 < nb {
                let (s0, s1) = (s.get_unchecked(i), s.get_unchecked(i + 1));
                block(w.get_unchecked(i), (q, d, s0), (i, nb), &mut a0, &mut m0);
                block(
                    w.get_unchecked(i + 1),
                    (q, d, s1),
                    (i + 1, nb),
                    &mut a1,
                    &mut m1,
                );
                i += 2;
            }
            if i < nb {
                let si = s.get_unchecked(i);
                block(w.get_unchecked(i), (q, d, si), (i, nb), &mut a0, &mut m0);
            }
            let mut mins = [0f32; 16];
            _mm512_storeu_ps(mins.as_mut_ptr(), _mm512_add_ps(m0, m1));
            let mut out = [0f32; 16];
            for p in 0..P {
                let a = _mm512_add_ps(a0[p], a1[p]);
                for h in 0..2 {
                    out[2 * p + h] = hsum_half(a, h) + mins[2 * p + h];
                }
            }
            out
        }

        /// [`eight_n_vnni`] of one weight row against `P` pairs whose activations are stored
        /// plus 128: `sum (x + 128) w - 128 sum w` is `sum x w`, lane for lane.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
        pub unsafe fn eight_pairs<const P: usize>(
            w: &[B8],
            q: &[[u8; 64]],
            d: &[[f32; 2]],
        ) -> [f32; 16] {
            let nb = w.len();
            debug_assert!(q.len() >= P * nb && d.len() >= P * nb);
            #[inline(always)]
            unsafe fn block<const P: usize>(
                w: &B8,
                (q, d): (&[[u8; 64]], &[[f32; 2]]),
                (i, nb): (usize, usize),
                acc: &mut [__m512; P],
            ) {
                let w2 = twice(_mm256_loadu_si256(w.qs.as_ptr() as *const __m256i));
                let offset =
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), w2);
                let start = _mm512_sub_epi32(_mm512_setzero_si512(), offset);
                let dw = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(w.d as i32)));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let at = p * nb + i;
                    let xv = _mm512_loadu_si512(q.get_unchecked(at).as_ptr() as *const _);
                    let f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, xv, w2));
                    let sc = _mm512_mul_ps(dw, pair_scales(d.get_unchecked(at)));
                    *acc = _mm512_fmadd_ps(sc, f, *acc);
                }
            }
            let (mut a0, mut a1) = ([_mm512_setzero_ps(); P], [_mm512_setzero_ps(); P]);
            let mut i = 0;
            while i + 1 < nb {
                block(w.get_unchecked(i), (q, d), (i, nb), &mut a0);
                block(w.get_unchecked(i + 1), (q, d), (i + 1, nb), &mut a1);
                i += 2;
            }
            if i < nb {
                block(w.get_unchecked(i), (q, d), (i, nb), &mut a0);
            }
            let mut out = [0f32; 16];
            for p in 0..P {
                let a = _mm512_add_ps(a0[p], a1[p]);
                for h in 0..2 {
                    out[2 * p + h] = hsum_half(a, h);
                }
            }
            out
        }

        /// [`super::scalar_quantize`] of 32 values, as llama.cpp's `quantize_row_q8_1`
        /// does it: the same maximum, scale and products, and the conversion rounds to
        /// nearest even as `round_ties_even` does.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn quantize(v: &[f32]) -> XBlock {
            let p = v.as_ptr();
            let a = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let sign = _mm256_set1_ps(-0.0);
            let m = a.iter().fold(_mm256_setzero_ps(), |m, &a| {
                _mm256_max_ps(m, _mm256_andnot_ps(sign, a))
            });
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let d = amax / 127.0;
            let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let q = a.map(|a| _mm256_cvtps_epi32(_mm256_mul_ps(a, inv)));
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)));
            // The packs interleave 128-bit lanes; the permutation puts the values back in order.
            let b = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            let mut out = XBlock {
                d,
                s: d * sum as f32,
                q: [0; 32],
            };
            _mm256_storeu_si256(out.q.as_mut_ptr() as *mut __m256i, b);
            out
        }

        /// `sum` over groups of four of `a_u8 * b_i8`, as eight i32.
        #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
        #[inline]
        unsafe fn dot_vnni(a: __m256i, b: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b)
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn dot_avx2(a: __m256i, b: __m256i) -> __m256i {
            let p16 = _mm256_maddubs_epi16(a, b);
            _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }

        // Each row's blocks go alternately into two accumulators (and two sums of minimum
        // terms): one accumulator would chain every block's multiply-add on the last one's, a
        // 4-cycle latency per 32 weights, the bound on short rows. The kernels over N
        // activation rows unpack each weight block once for all N and sum each row in exactly
        // the order of N = 1, so a row's result does not depend on the rows batched with it.
        macro_rules! row_kernels {
            ($four:ident, $eight:ident, $four4:ident, $eight4:ident, $four_n:ident, $eight_n:ident, $dot:ident, $features:literal) => {
                #[target_feature(enable = $features)]
                unsafe fn $four_n<const N: usize>(w: &[B4], x: [&[XBlock]; N]) -> [f32; N] {
                    #[inline(always)]
                    unsafe fn unpack(w: &B4) -> __m256i {
                        let qs = _mm_loadu_si128(w.qs.as_ptr() as *const __m128i);
                        _mm256_and_si256(
                            _mm256_set_m128i(_mm_srli_epi16(qs, 4), qs),
                            _mm256_set1_epi8(15),
                        )
                    }
                    /// `[d, m]` of the block, in f32.
                    #[inline(always)]
                    unsafe fn dm(w: &B4) -> __m128 {
                        let bits = std::ptr::read_unaligned(w.dm.as_ptr() as *const i32);
                        _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
                    }
                    /// Adds the block's products to `acc` (scaled by `d_w d_x`) and its
                    /// minimum term `m_w s_x` to lane 1 of `mins`.
                    #[inline(always)]
                    unsafe fn add(
                        wv: __m256i,
                        dm: __m128,
                        x: &XBlock,
                        acc: __m256,
                        mins: __m128,
                    ) -> (__m256, __m128) {
                        let ds = _mm_castpd_ps(_mm_load_sd(&x.d as *const f32 as *const f64));
                        let sc = _mm_mul_ps(dm, ds);
                        let xv = _mm256_loadu_si256(x.q.as_ptr() as *const __m256i);
                        let p = _mm256_cvtepi32_ps($dot(wv, xv));
                        (
                            _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), p, acc),
                            _mm_add_ps(mins, sc),
                        )
                    }
                    let (mut a0, mut a1) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
                    let (mut m0, mut m1) = ([_mm_setzero_ps(); N], [_mm_setzero_ps(); N]);
                    let n = w.len();
                    let mut i = 0;
                    while i + 1 < n {
                        let (w0, w1) = (w.get_unchecked(i), w.get_unchecked(i + 1));
                        let (v0, v1) = (unpack(w0), unpack(w1));
                        let (s0, s1) = (dm(w0), dm(w1));
                        for r in 0..N {
                            let (x0, x1) = (x[r].get_unchecked(i), x[r].get_unchecked(i + 1));
                            (a0[r], m0[r]) = add(v0, s0, x0, a0[r], m0[r]);
                            (a1[r], m1[r]) = add(v1, s1, x1, a1[r], m1[r]);
                        }
                        i += 2;
                    }
                    if i < n {
                        let wi = w.get_unchecked(i);
                        let (v, s) = (unpack(wi), dm(wi));
                        for r in 0..N {
                            (a0[r], m0[r]) = add(v, s, x[r].get_unchecked(i), a0[r], m0[r]);
                        }
                    }
                    let mut out = [0f32; N];
                    for r in 0..N {
                        let mins = _mm_add_ps(m0[r], m1[r]);
                        out[r] = hsum(_mm256_add_ps(a0[r], a1[r]))
                            + _mm_cvtss_f32(_mm_movehdup_ps(mins));
                    }
                    out
                }

                #[target_feature(enable = $features)]
                unsafe fn $eight_n<const N: usize>(w: &[B8], x: [&[XBlock]; N]) -> [f32; N] {
                    #[inline(always)]
                    unsafe fn add(wv: __m256i, w: &B8, x: &XBlock, acc: __m256) -> __m256 {
                        let xv = _mm256_loadu_si256(x.q.as_ptr() as *const __m256i);
                        // |w| (unsigned) times x with w's sign: the same products.
                        let aw = _mm256_sign_epi8(wv, wv);
                        let sx = _mm256_sign_epi8(xv, wv);
                        let p = _mm256_cvtepi32_ps($dot(aw, sx));
                        let d = _mm_cvtph_ps(_mm_cvtsi32_si128(w.d as i32));
                        let sc = _mm_mul_ss(d, _mm_load_ss(&x.d));
                        _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), p, acc)
                    }
                    #[inline(always)]
                    unsafe fn load(w: &B8) -> __m256i {
                        _mm256_loadu_si256(w.qs.as_ptr() as *const __m256i)
                    }
                    let (mut a0, mut a1) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
                    let n = w.len();
                    let mut i = 0;
                    while i + 1 < n {
                        let (w0, w1) = (w.get_unchecked(i), w.get_unchecked(i + 1));
                        let (v0, v1) = (load(w0), load(w1));
                        for r in 0..N {
                            a0[r] = add(v0, w0, x[r].get_unchecked(i), a0[r]);
                            a1[r] = add(v1, w1, x[r].get_unchecked(i + 1), a1[r]);
                        }
                        i += 2;
                    }
                    if i < n {
                        let wi = w.get_unchecked(i);
                        let v = load(wi);
                        for r in 0..N {
                            a0[r] = add(v, wi, x[r].get_unchecked(i), a0[r]);
                        }
                    }
                    let mut out = [0f32; N];
                    for r in 0..N {
                        out[r] = hsum(_mm256_add_ps(a0[r], a1[r]));
                    }
                    out
                }

                #[target_feature(enable = $features)]
                pub unsafe fn $four(w: &[B4], x: &[XBlock]) -> f32 {
                    $four_n::<1>(w, [x])[0]
                }

                #[target_feature(enable = $features)]
                pub unsafe fn $four4(w: &[B4], x: [&[XBlock]; 4]) -> [f32; 4] {
                    $four_n::<4>(w, x)
                }

                #[target_feature(enable = $features)]
                pub unsafe fn $eight(w: &[B8], x: &[XBlock]) -> f32 {
                    $eight_n::<1>(w, [x])[0]
                }

                #[target_feature(enable = $features)]
                pub unsafe fn $eight4(w: &[B8], x: [&[XBlock]; 4]) -> [f32; 4] {
                    $eight_n::<4>(w, x)
                }
            };
        }

        row_kernels!(
            four_vnni,
            eight_vnni,
            four4_vnni,
            eight4_vnni,
            four_n_vnni,
            eight_n_vnni,
            dot_vnni,
            "avx2,fma,f16c,avx512vnni,avx512vl"
        );
        row_kernels!(
            four_avx2,
            eight_avx2,
            four4_avx2,
            eight4_avx2,
            four_n_avx2,
            eight_n_avx2,
            dot_avx2,
            "avx2,fma,f16c"
        );
    }
}

/// `x @ W^T` as a candle op. The quantized weight is frozen; the backward gives `x` its
/// gradient `dy W`, with `W` dequantized a block of rows at a time (so a large output head is
/// never held in f32 whole), which lets adapters below a quantized layer train (QLoRA).
///
/// With `dense` (set when a gradient will flow back through the product) the forward pass
/// multiplies in f32 by the dequantized weight too, a block of rows at a time, so forward and
/// backward are the same function; the inference path keeps llama.cpp's 8-bit activations.
#[derive(Clone, Debug)]
pub struct QMatMulOp {
    pub weight: Arc<QWeight>,
    pub dense: bool,
}

/// Rows of a quantized weight dequantized at once by the f32 paths.
const DEQUANT_ROWS: usize = 4096;

impl QWeight {
    /// `x` `[m, cols]` times the transposed weight in f32, dequantizing
    /// [`DEQUANT_ROWS`] rows at a time.
    pub fn matmul_dequantized(&self, x: &[f32], m: usize) -> Vec<f32> {
        use super::gemm::{matmul, View, ViewMut};
        let mut y = vec![0f32; m * self.rows];
        let mut start = 0;
        while start < self.rows {
            let n = DEQUANT_ROWS.min(self.rows - start);
            let block = self.dequantize_rows(start, n);
            let len = y.len() - start;
            matmul(
                ViewMut::rows(&mut y[start..start + len], m, n, self.rows),
                View::rows(x, m, self.cols, self.cols),
                View::rows(&block, n, self.cols, self.cols).t(),
                false,
                true,
            );
            start += n;
        }
        y
    }
}

impl CustomOp1 for QMatMulOp {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let dims = l.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != self.weight.cols {
            candle_core::bail!(
                "quantized-matmul: input width {k}, weight expects {}",
                self.weight.cols
            );
        }
        let m = x.len() / k.max(1);
        let y = if self.dense {
            self.weight.matmul_dequantized(x, m)
        } else {
            self.weight.matmul(x, m)
        };
        let mut out = dims.to_vec();
        *out.last_mut().expect("rank >= 1") = self.weight.rows;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(
        &self,
        arg: &candle_core::Tensor,
        _res: &candle_core::Tensor,
        grad: &candle_core::Tensor,
    ) -> candle_core::Result<Option<candle_core::Tensor>> {
        const CHUNK: usize = DEQUANT_ROWS;
        let w = &self.weight;
        let dy = grad.reshape(((), w.rows))?;
        let mut dx: Option<candle_core::Tensor> = None;
        let mut start = 0;
        while start < w.rows {
            let n = CHUNK.min(w.rows - start);
            let block = candle_core::Tensor::from_vec(
                w.dequantize_rows(start, n),
                (n, w.cols),
                arg.device(),
            )?;
            let part = dy.narrow(1, start, n)?.contiguous()?.matmul(&block)?;
            dx = Some(match dx {
                Some(acc) => (acc + part)?,
                None => part,
            });
            start += n;
        }
        Ok(Some(dx.expect("rows > 0").reshape(arg.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn weight(dtype: GgmlDType, rows: usize, cols: usize) -> (QTensor, Vec<f32>) {
        let mut rng = crate::rng::Rng::new(7);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let t = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
        (QTensor::quantize(&t, dtype).unwrap(), w)
    }

    /// SIMD equals the scalar reference, and both approximate the f32 product of the
    /// dequantized weights within the 8-bit activation rounding.
    #[test]
    fn simd_quantization_equals_the_scalar_one() {
        let mut rng = crate::rng::Rng::new(5);
        let mut x: Vec<f32> = (0..32 * 20).map(|_| rng.normal() as f32 * 3.0).collect();
        // A zero block, and one whose scale is 1 with halves to round (ties go to even).
        x[..32].fill(0.0);
        for (j, v) in x[32..64].iter_mut().enumerate() {
            *v = j as f32 - 15.5;
        }
        x[63] = -127.0;
        let k = simd::kernel();
        for v in x.chunks_exact(32) {
            let (a, b) = (k.quantize(v), scalar_quantize(v));
            assert_eq!((a.d, a.s, a.q), (b.d, b.s, b.q));
        }
        assert_eq!(scalar_quantize(&x[32..64]).q[..4], [-16, -14, -14, -12]);
    }

    #[test]
    fn simd_matches_reference_and_dequantized() {
        // m = 6: a group of four activation rows (one weight block for four) and two alone,
        // or (AVX-512 VNNI) three pairs; 16 and 11: two groups of four pairs, the second
        // short, and a row alone; rows of 3 and of 67 blocks (odd: one block left after the
        // blocks two by two).
        for (dtype, m, cols) in [
            (GgmlDType::Q4_0, 3, 96),
            (GgmlDType::Q4_1, 6, 96),
            (GgmlDType::Q8_0, 6, 96),
            (GgmlDType::Q4_1, 1, 96),
            (GgmlDType::Q4_1, 6, 67 * 32),
            (GgmlDType::Q8_0, 5, 67 * 32),
            (GgmlDType::Q4_1, 16, 96),
            (GgmlDType::Q8_0, 16, 67 * 32),
            (GgmlDType::Q4_0, 11, 67 * 32),
            (GgmlDType::Q8_0, 11, 96),
        ] {
            let rows = 37;
            let (q, _) = weight(dtype, rows, cols);
            let w = QWeight::from_qtensor(&q).unwrap().unwrap();
            let mut rng = crate::rng::Rng::new(3);
            let x: Vec<f32> = (0..m * cols).map(|_| rng.normal() as f32).collect();
            let reference = w.matmul_reference(&x, m);
            let deq: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // Sums in another order differ by a few ulps of the terms' total size.
            let mass = |i: usize, r: usize| -> f32 {
                (0..cols)
                    .map(|k| (x[i * cols + k] * deq[r * cols + k]).abs())
                    .sum()
            };
            let mut kernels = vec![simd::kernel(), simd::Kernel::Scalar];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(simd::Kernel::Avx2);
            }
            for k in kernels {
                let fast = w.matmul_with(k, &x, m);
                // Each activation row's result is the same, to the bit, batched or alone.
                for i in 0..m {
                    let alone = w.matmul_with(k, &x[i * cols..(i + 1) * cols], 1);
                    assert_eq!(
                        alone[..],
                        fast[i * rows..(i + 1) * rows],
                        "{dtype:?} row {i}"
                    );
                }
                for (j, (a, b)) in fast.iter().zip(&reference).enumerate() {
                    let tol = 4e-7 * mass(j / rows, j % rows);
                    assert!(
                        (a - b).abs() <= tol,
                        "{dtype:?}: {a} vs {b} (tolerance {tol:e})"
                    );
                }
            }
            for i in 0..m {
                for r in 0..rows {
                    let exact: f32 = (0..cols).map(|k| x[i * cols + k] * deq[r * cols + k]).sum();
                    let got = reference[i * rows + r];
                    // 8-bit activations: relative error about 1/254 per term.
                    assert!(
                        (got - exact).abs() < 0.05 * (cols as f32).sqrt(),
                        "{dtype:?}: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn other_types_are_left_to_candle() {
        let (q, _) = weight(GgmlDType::Q4K, 4, 256);
        assert!(QWeight::from_qtensor(&q).unwrap().is_none());
    }
}
