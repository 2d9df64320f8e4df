#!/usr/bin/env bash
# Side-by-side training throughput: ferroformer vs PyTorch eager fp32 on the same GPT,
# alternating RUNS times (machines are noisy), then the ratio of medians.
#   bench/compare.sh [RUNS] [extra args for both, e.g. --batch 8 --context 256]
# Needs the reference venv (PY, default ~/.cache/ferroformer-ref/bin/python) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; shift || true
PY=${PY:-$HOME/.cache/ferroformer-ref/bin/python}
FF=${FF:-target/release/ferroformer}
ours=(); theirs=()
for i in $(seq "$RUNS"); do
  o=$("$FF" --threads 2 --json bench train "$@" | tail -n 1)
  t=$("$PY" bench/throughput.py --threads 2 "$@" | tail -n 1)
  echo "run $i: ferroformer $o"
  echo "run $i: pytorch     $t"
  ours+=("$o"); theirs+=("$t")
done
python3 - "${ours[@]}" -- "${theirs[@]}" <<'PYEOF'
import json, statistics, sys
args = sys.argv[1:]; k = args.index("--")
o = [json.loads(s) for s in args[:k]]; t = [json.loads(s) for s in args[k + 1:]]
for key in ("tokens_per_s", "forward_tokens_per_s"):
    a = statistics.median(x[key] for x in o); b = statistics.median(x[key] for x in t)
    print(f"{key}: ferroformer {a:.0f}, pytorch {b:.0f}, ratio {a / b:.2f}x")
for key in ("peak_rss_mb",):
    a = max(x[key] for x in o); b = max(x[key] for x in t)
    print(f"{key}: ferroformer {a:.0f}, pytorch {b:.0f}")
PYEOF
