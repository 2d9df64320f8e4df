#!/usr/bin/env bash
# Generation from a GGUF model, side by side with llama.cpp on the same file and machine:
# ferroformer on the quantized path (--quantized) and on the dequantized f32 path, and
# llama.cpp (llama-cpp-python, built from source), alternating RUNS times; medians.
# Protocol (all three): 32-token prompt from the same text, 128 greedy new tokens, 2 threads.
#   bench/gguf_generate.sh [RUNS] [GGUF]   (GGUF default: the smollm2-135m-instruct asset)
# Needs: a release build, and llama-cpp-python in the reference venv:
#   nice ~/.cache/ferroformer-ref/bin/pip install llama-cpp-python
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
FF=${FF:-target/release/ferroformer}
PY=${PY:-$HOME/.cache/ferroformer-ref/bin/python}
GGUF=${2:-$("$FF" --quiet fetch smollm2-135m-instruct)/SmolLM2-135M-Instruct.Q4_1.gguf}
q=(); f=(); l=()
for i in $(seq "$RUNS"); do
  q+=("$("$FF" --quiet --threads 2 --json bench generate --model "$GGUF" --quantized | tail -n 1)")
  f+=("$("$FF" --quiet --threads 2 --json bench generate --model "$GGUF" | tail -n 1)")
  l+=("$("$PY" bench/llamacpp_generate.py --gguf "$GGUF" --threads 2 | tail -n 1)")
  echo "run $i: quantized ${q[-1]}"; echo "run $i: f32       ${f[-1]}"; echo "run $i: llama.cpp ${l[-1]}"
done
python3 - "${q[@]}" -- "${f[@]}" -- "${l[@]}" <<'PYEOF'
import json, statistics, sys
groups, cur = [], []
for a in sys.argv[1:]:
    if a == "--":
        groups.append(cur); cur = []
    else:
        cur.append(json.loads(a))
groups.append(cur)
names = ["ferroformer --quantized", "ferroformer f32", "llama.cpp"]
base = statistics.median(x["tokens_per_s"] for x in groups[2])
print(f"{'':26} {'gen tok/s':>10} {'prompt tok/s':>13} {'peak RSS MB':>12} {'vs llama.cpp':>13}")
for n, g in zip(names, groups):
    t = statistics.median(x["tokens_per_s"] for x in g)
    p = statistics.median(x["prompt_tokens_per_s"] for x in g)
    m = max(x["peak_rss_mb"] for x in g)
    print(f"{n:26} {t:10.1f} {p:13.0f} {m:12.0f} {t / base:12.2f}x")
PYEOF
