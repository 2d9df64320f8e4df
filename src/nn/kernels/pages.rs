//! Huge-page storage for weights read once per generated token.
//!
//! Generation streams every quantized weight once per token. On 4 KiB pages that is a TLB
//! miss every 4 KiB, and under a hypervisor each miss walks two page tables: on our 2-vCPU
//! VM a decode step's products took 1.2-1.7x as long on 4 KiB pages as on 2 MiB ones
//! (`cargo run --release --example qmatmul`). Blocks are therefore copied into 2 MiB-aligned
//! chunks that the kernel is asked to back with huge pages (`madvise(MADV_HUGEPAGE)`, which
//! Linux honours in its default `madvise` mode), many matrices to a chunk, since one matrix
//! is often smaller than a huge page.

use std::alloc::Layout;
use std::ops::{Deref, Range};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

const HUGE: usize = 2 << 20;
/// Chunks are at least this large (virtual; only the pages written become resident).
const CHUNK: usize = 32 << 20;
/// Slices start on cache lines, and take whole ones.
const LINE: usize = 64;

struct Chunk {
    base: NonNull<u8>,
    layout: Layout,
    /// Free byte ranges, sorted and coalesced: a freed slice's space is reused (a model's
    /// stacked projections replace the separate ones loaded first).
    free: Mutex<Vec<Range<usize>>>,
}

// SAFETY: the chunk is plain memory; each byte range belongs to one `Pages` at a time, which
// gives out only shared access once filled.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new(size: usize) -> Option<Chunk> {
        let layout = Layout::from_size_align(size.div_ceil(HUGE) * HUGE, HUGE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        #[cfg(target_os = "linux")]
        // SAFETY: the range is this allocation, page-aligned. A refusal (THP off) only
        // leaves the default pages.
        unsafe {
            libc::madvise(base.as_ptr().cast(), layout.size(), libc::MADV_HUGEPAGE);
        }
        Some(Chunk {
            base,
            free: Mutex::new(std::iter::once(0..layout.size()).collect()),
            layout,
        })
    }

    /// The first free range of `bytes` (a multiple of [`LINE`]), taken.
    fn take(&self, bytes: usize) -> Option<usize> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let i = free.iter().position(|r| r.len() >= bytes)?;
        let start = free[i].start;
        free[i].start += bytes;
        if free[i].is_empty() {
            free.remove(i);
        }
        Some(start)
    }

    fn give_back(&self, r: Range<usize>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let i = free.partition_point(|f| f.start < r.start);
        free.insert(i, r);
        // Merge with the neighbours it touches.
        if i + 1 < free.len() && free[i].end == free[i + 1].start {
            free[i].end = free.remove(i + 1).end;
        }
        if i > 0 && free[i - 1].end == free[i].start {
            free[i - 1].end = free.remove(i).end;
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `Chunk::new` with this layout.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// Every chunk still in use; one is freed when its last slice is.
static CHUNKS: Mutex<Vec<Weak<Chunk>>> = Mutex::new(Vec::new());

/// An immutable slice of `T` on huge pages (in a chunk it shares with other slices).
pub struct Pages<T> {
    chunk: Option<Arc<Chunk>>,
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: the slice is never written after construction.
unsafe impl<T: Sync> Send for Pages<T> {}
unsafe impl<T: Sync> Sync for Pages<T> {}

/// Takes `bytes` (a multiple of [`LINE`]) from a chunk with room, or a new one.
fn reserve(bytes: usize) -> (Arc<Chunk>, usize) {
    let mut chunks = CHUNKS.lock().unwrap_or_else(|e| e.into_inner());
    chunks.retain(|c| c.strong_count() > 0);
    let found = chunks
        .iter()
        .filter_map(Weak::upgrade)
        .find_map(|c| c.take(bytes).map(|o| (c, o)));
    found.unwrap_or_else(|| {
        let c = Chunk::new(bytes.max(CHUNK))
            .or_else(|| Chunk::new(bytes))
            .map(Arc::new)
            .unwrap_or_else(|| {
                std::alloc::handle_alloc_error(
                    Layout::from_size_align(bytes, HUGE).unwrap_or(Layout::new::<u8>()),
                )
            });
        chunks.push(Arc::downgrade(&c));
        let o = c.take(bytes).expect("a new chunk holds the slice");
        (c, o)
    })
}

impl<T: Copy> Pages<T> {
    /// `f(0), f(1), ... f(len - 1)`, written in place (no copy of the whole on the heap).
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> T) -> Pages<T> {
        assert!(std::mem::align_of::<T>() <= LINE);
        let bytes = (len * std::mem::size_of::<T>()).next_multiple_of(LINE);
        if bytes == 0 {
            return Pages {
                chunk: None,
                ptr: NonNull::dangling(),
                len: 0,
            };
        }
        let (chunk, offset) = reserve(bytes);
        // SAFETY: `offset .. offset + bytes` lies inside the chunk, is aligned for `T`, and
        // was taken by nobody else; every element is written before the slice is made (a
        // panic in `f` leaves the range taken, never read).
        let ptr = unsafe {
            let dst = chunk.base.as_ptr().add(offset).cast::<T>();
            for i in 0..len {
                dst.add(i).write(f(i));
            }
            NonNull::new_unchecked(dst)
        };
        Pages {
            chunk: Some(chunk),
            ptr,
            len,
        }
    }

    /// A copy of `src`.
    pub fn copy_of(src: &[T]) -> Pages<T> {
        Pages::from_fn(src.len(), |i| src[i])
    }
}

impl<T> Drop for Pages<T> {
    fn drop(&mut self) {
        if let Some(c) = &self.chunk {
            let start = self.ptr.as_ptr() as usize - c.base.as_ptr() as usize;
            let bytes = (self.len * std::mem::size_of::<T>()).next_multiple_of(LINE);
            c.give_back(start..start + bytes);
        }
    }
}

impl<T> Deref for Pages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `len` initialised values kept alive by the chunk.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pages({} values)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_keep_their_values() {
        let a: Vec<u32> = (0..1000).collect();
        let b: Vec<u16> = (0..3).collect();
        let (pa, pb) = (Pages::copy_of(&a), Pages::copy_of(&b));
        let big: Vec<u8> = vec![7; CHUNK + 5];
        let pc = Pages::copy_of(&big);
        assert_eq!(&pa[..], &a[..]);
        assert_eq!(&pb[..], &b[..]);
        assert_eq!(pc.len(), big.len());
        assert!(pc.iter().all(|&v| v == 7));
        assert_eq!(pb.as_ptr() as usize % LINE, 0);
        drop(pa);
        let pd = Pages::copy_of(&a[..500]);
        assert_eq!(&pb[..], &b[..]);
        assert_eq!(&pd[..], &a[..500]);
        assert!(Pages::<u8>::copy_of(&[]).is_empty());
    }

    #[test]
    fn freed_ranges_are_reused_and_coalesce() {
        let c = Chunk::new(HUGE).unwrap();
        let (x, y, z) = (
            c.take(64).unwrap(),
            c.take(128).unwrap(),
            c.take(64).unwrap(),
        );
        c.give_back(y..y + 128);
        assert_eq!(c.take(64), Some(y));
        c.give_back(y..y + 64);
        c.give_back(x..x + 64);
        c.give_back(z..z + 64);
        let free = c.free.lock().unwrap();
        assert_eq!((free.len(), free[0].clone()), (1, 0..HUGE));
    }
}
