//! The `ferroformer` command.

mod cli;

use clap::Parser;

/// Every tensor op allocates its output. By default glibc serves blocks over 128 KiB with mmap
/// and returns freed memory to the OS, so each training step paid page faults and page zeroing
/// for every activation. Keeping freed memory in the heap (measured: the demo recipe trains about
/// 20% faster) lets the next step reuse it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Blocks above the largest threshold (logits of a large vocabulary) would still be
        // mmapped; serve everything from the heap.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // Worker threads (matmul packing buffers) would otherwise get arenas of their own,
        // which glibc does trim.
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // -1 is the largest size_t: never trim (i32::MAX, 2 GiB, was still trimmed after
        // every step of a model whose activations exceed it, and re-faulted the next step).
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

fn main() {
    keep_freed_memory();
    let cli = cli::Cli::parse();
    // candle and rayon read the thread count from this variable when their pools start.
    let threads = cli.common.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // With the fused kernels, the heavy work (matmuls, kernels) runs on rayon's pool; candle's
    // own spinning pool is left only memory-bound adds and copies, and on a small machine its
    // threads mostly compete with rayon's (measured ~3% faster steps with one thread there).
    let plain = std::env::var("FERROFORMER_KERNELS")
        .map(|v| v == "plain")
        .unwrap_or(false);
    if !plain && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Run the command on a worker of the thread pool rather than on the main thread: every
    // parallel kernel called from outside the pool hands its work to the pool and sleeps
    // until woken, twice per op; for generation one token at a time (hundreds of small ops
    // per token) that hand-off cost more than the work (measured ~25% of the time in the
    // scheduler). Inside the pool, a small op runs inline and the other workers steal.
    // The pool is the global one, so threads of our own (the server's model threads) use
    // it too, hopping onto it once per step (`nn::kernels::on_pool`). `serve` itself stays
    // on the main thread: its HTTP runtime would otherwise hold a worker for good.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        // candle's backward walks the graph recursively; give it the main thread's room.
        .stack_size(64 << 20)
        .build_global();
    let result = match (pool, &cli.command) {
        (Ok(()), cli::Command::Serve(_)) | (Err(_), _) => cli::run(cli),
        (Ok(()), _) => rayon::scope(|_| cli::run(cli)),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
