"""PyTorch's fp32 matmul rate on the training model's shapes (compare examples/matmul.rs).
    ~/.cache/ferroformer-ref/bin/python bench/matmul.py"""
import time
import torch

torch.set_num_threads(2)
for m, k, n in [(2048, 384, 1152), (2048, 384, 1536), (2048, 1536, 384), (2048, 384, 8192)]:
    a = torch.rand(m, k)
    for transposed in (False, True):
        b = torch.rand(n, k).t() if transposed else torch.rand(k, n)
        ts = []
        for i in range(8):
            t0 = time.perf_counter()
            a @ b
            if i >= 2:
                ts.append(time.perf_counter() - t0)
        ts.sort()
        print(f"{m}x{k} @ {k}x{n}{' (rhs transposed)' if transposed else ''}: "
              f"{2 * m * k * n / ts[len(ts) // 2] / 1e9:.0f} GFLOP/s")
