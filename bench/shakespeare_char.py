"""The demo recipe (recipes/gpt-shakespeare-char.toml) in PyTorch, on the same data split:
the 42 *_gut.txt works sorted by name, joined with newlines, characters in code-point order
plus <unk> (85 tokens), first 90% for training. Same model, optimizer, schedule, clipping and
evaluation protocol (20 batches per split every 250 steps).

    ~/.cache/ferroformer-ref/bin/python bench/shakespeare_char.py ~/.cache/ferroformer/shakespeare
"""
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt import GPT  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(1337)
folder = sys.argv[1]
files = sorted(f for f in os.listdir(folder) if f.endswith("_gut.txt"))
text = "\n".join(open(os.path.join(folder, f), encoding="utf-8").read() for f in files)
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
vocab = len(chars) + 1
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
n = int(len(data) * 0.9)
train, val = data[:n], data[n:]
T, B, STEPS, LR, MIN_LR, WARMUP = 64, 12, 2000, 1e-3, 1e-4, 100


def batch(split, gen=None):
    ix = torch.randint(len(split) - T, (B,), generator=gen)
    x = torch.stack([split[i:i + T] for i in ix])
    y = torch.stack([split[i + 1:i + T + 1] for i in ix])
    return x, y


def lr_at(it):
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > STEPS:
        return MIN_LR
    r = (it - WARMUP) / (STEPS - WARMUP)
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * r)) * (LR - MIN_LR)


@torch.no_grad()
def evaluate(model):
    model.eval()
    out = {}
    for name, split, seed in (("train", train, 100), ("val", val, 101)):
        g = torch.Generator().manual_seed(seed)
        out[name] = sum(model(*batch(split, g)).item() for _ in range(20)) / 20
    model.train()
    return out


model = GPT(vocab, T, 128, 4, 4, act="none")
opt = model.optimizer(LR, 0.1, (0.9, 0.99))
train_time = 0.0
start = time.time()
for it in range(STEPS):
    t0 = time.time()
    for g in opt.param_groups:
        g["lr"] = lr_at(it)
    loss = model(*batch(train))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    train_time += time.time() - t0
    if (it + 1) % 250 == 0:
        ev = evaluate(model)
        print(json.dumps({"step": it + 1, "train_loss": ev["train"], "val_loss": ev["val"]}), flush=True)
wall = time.time() - start
print(json.dumps({"wall_s": wall, "train_s": train_time, "ms_per_step": 1000 * train_time / STEPS,
                  "vocab": vocab, "train_tokens": len(train), "val_tokens": len(val)}))
