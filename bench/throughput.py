"""Training and forward throughput of a GPT in PyTorch eager fp32, for side-by-side comparison
with `ferroformer`: the same architecture as models/gpt2.rs, random tokens, AdamW, median of
full steps after warm-up. Prints one JSON line.

    ~/.cache/ferroformer-ref/bin/python bench/throughput.py [--layers 6 --heads 6 --dim 384
        --context 256 --batch 8 --vocab 8192 --act tanh --steps 10]
        [--set train.precision="bf16"]

`--set train.precision="bf16"` runs forward and loss under
`torch.autocast("cpu", dtype=torch.bfloat16)`, as `ferroformer bench train` takes the same key;
other `--set` keys are accepted and ignored, so bench/compare.sh can pass one line to both.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt import GPT  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=6)
p.add_argument("--heads", type=int, default=6)
p.add_argument("--dim", type=int, default=384)
p.add_argument("--context", type=int, default=256)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--vocab", type=int, default=8192)
p.add_argument("--act", default="tanh", help="GELU form: tanh or none (exact)")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
a = p.parse_args()
precision = "f32"
for kv in a.set:
    key, _, value = kv.partition("=")
    if key == "train.precision":
        precision = value.strip("'\"")
if precision not in ("f32", "bf16"):
    raise SystemExit(f"train.precision {precision!r}: f32 or bf16")
autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
torch.set_num_threads(a.threads)
torch.manual_seed(0)
model = GPT(a.vocab, a.context, a.dim, a.layers, a.heads, act=a.act)
opt = model.optimizer(3e-4, 0.1, (0.9, 0.95))
x = torch.randint(0, a.vocab, (a.batch, a.context))
y = torch.randint(0, a.vocab, (a.batch, a.context))
times = []
for i in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    with autocast():
        loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if i >= a.warmup:
        times.append(time.perf_counter() - t0)
fwd = []
with torch.no_grad():
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with autocast():
            model(x)
        if i >= a.warmup:
            fwd.append(time.perf_counter() - t0)
tokens = a.batch * a.context
print(json.dumps({
    "impl": "pytorch", "torch": torch.__version__, "precision": precision,
    "tokens_per_s": tokens / statistics.median(times),
    "step_ms_median": 1000 * statistics.median(times),
    "forward_tokens_per_s": tokens / statistics.median(fwd),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "params": sum(p.numel() for p in model.parameters()),
}))
