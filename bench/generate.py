"""Greedy generation throughput in PyTorch eager fp32 with transformers' GPT2LMHeadModel and
its KV cache, on the same model size and protocol as `ferroformer bench generate`: a random
prompt, the first token's time is the prompt (prefill) time, the rest per-token decode time;
median of repeats after one untimed. Prints one JSON line.

    ~/.cache/ferroformer-ref/bin/python bench/generate.py [--prompt-tokens 32 --new-tokens 128]
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=6)
p.add_argument("--heads", type=int, default=6)
p.add_argument("--dim", type=int, default=384)
p.add_argument("--vocab", type=int, default=8192)
p.add_argument("--positions", type=int, default=1024)
p.add_argument("--prompt-tokens", type=int, default=32)
p.add_argument("--new-tokens", type=int, default=128)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = GPT2Config(vocab_size=a.vocab, n_positions=a.positions, n_embd=a.dim, n_layer=a.layers,
                 n_head=a.heads, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0)
model = GPT2LMHeadModel(cfg).eval()
prompt = torch.randint(0, a.vocab, (1, a.prompt_tokens))
prefill, decode = [], []
with torch.no_grad():
    for i in range(a.repeats + 1):
        t0 = time.perf_counter()
        out = model(prompt, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t1 = time.perf_counter()
        for _ in range(a.new_tokens - 1):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        if i > 0:
            prefill.append(t1 - t0)
            decode.append((t2 - t1) / (a.new_tokens - 1))
print(json.dumps({
    "impl": "pytorch", "prompt_tokens_per_s": a.prompt_tokens / statistics.median(prefill),
    "tokens_per_s": 1 / statistics.median(decode),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "params": sum(p.numel() for p in model.parameters()),
}))
