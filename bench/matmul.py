"""PyTorch's fp32 matmul rate on the shapes models train with (compare examples/matmul.rs,
which prints the same lines for ferroformer).
    ~/.cache/ferroformer-ref/bin/python bench/matmul.py [THREADS]"""
import sys
import time
import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)


def rate(m, k, n, a_t, b_t, reps=6):
    a = torch.rand(k, m).t() if a_t else torch.rand(m, k)
    b = torch.rand(n, k).t() if b_t else torch.rand(k, n)
    ts = []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        a @ b
        if i >= 2:
            ts.append(time.perf_counter() - t0)
    ts.sort()
    return 2 * m * k * n / ts[len(ts) // 2] / 1e9


shapes = []
for m, k, n in [(2048, 384, 1152), (2048, 384, 1536), (2048, 1536, 384), (2048, 384, 8192)]:
    for b_t in (False, True):
        shapes.append((f"gpt {m}x{k} @ {k}x{n}", m, k, n, False, b_t))
t = 1024
for name, d_in, d_out in [("q/o_proj", 576, 576), ("k/v_proj", 576, 192), ("gate/up_proj", 576, 1536),
                          ("down_proj", 1536, 576), ("lm_head", 576, 49152)]:
    shapes.append((f"smollm2 {name} forward", t, d_in, d_out, False, True))
    shapes.append((f"smollm2 {name} dx", t, d_out, d_in, False, False))
    shapes.append((f"smollm2 {name} dW", d_out, t, d_in, True, False))
print(f"matmul on {threads} threads (median of 6), torch {torch.__version__}:")
for name, m, k, n, a_t, b_t in shapes:
    lt = " (lhs transposed)" if a_t else ""
    rt = " (rhs transposed)" if b_t else ""
    print(f"  {name}{lt}{rt}: {rate(m, k, n, a_t, b_t):.0f} GFLOP/s")
