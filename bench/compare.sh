#!/usr/bin/env bash
# Side by side: ferroformer vs PyTorch eager fp32 on the same GPT, alternating RUNS times
# (machines are noisy), then the ratio of medians.
#   bench/compare.sh [RUNS] [train|finetune|generate] [extra args for both, e.g. --batch 8 --context 256]
# train: bench/throughput.py vs `ferroformer bench train` (a fresh GPT); finetune:
# bench/finetune_torch.py (transformers + PEFT) vs `ferroformer bench train --model M ...`, e.g.
#   bench/compare.sh 3 finetune --model smollm2-135m-instruct --batch 4 --context 256 \
#       --peft lora --set peft.r=8 --set 'peft.target_modules=["q_proj","v_proj"]'
# generate: bench/generate.py (transformers GPT2LMHeadModel with its KV cache) vs
# `ferroformer bench generate`.
# Needs the reference venv (PY, default ~/.cache/ferroformer-ref/bin/python) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; shift || true
MODE=${1:-train}; shift || true
PY=${PY:-$HOME/.cache/ferroformer-ref/bin/python}
FF=${FF:-target/release/ferroformer}
case "$MODE" in
  train) script=bench/throughput.py; keys="tokens_per_s forward_tokens_per_s" ;;
  finetune) script=bench/finetune_torch.py; keys="tokens_per_s forward_tokens_per_s" ;;
  generate) script=bench/generate.py; keys="tokens_per_s prompt_tokens_per_s" ;;
  *) echo "mode must be train, finetune or generate" >&2; exit 2 ;;
esac
ours=(); theirs=()
for i in $(seq "$RUNS"); do
  sub=$MODE; [ "$MODE" = finetune ] && sub=train
  o=$("$FF" --threads 2 --json bench "$sub" "$@" | tail -n 1)
  t=$("$PY" "$script" --threads 2 "$@" 2>"${TMPDIR:-/tmp}/compare-pytorch.err" | tail -n 1)
  echo "run $i: ferroformer $o"
  echo "run $i: pytorch     $t"
  ours+=("$o"); theirs+=("$t")
done
python3 - "$keys" "${ours[@]}" -- "${theirs[@]}" <<'PYEOF'
import json, statistics, sys
keys = sys.argv[1].split(); args = sys.argv[2:]; k = args.index("--")
o = [json.loads(s) for s in args[:k]]; t = [json.loads(s) for s in args[k + 1:]]
for key in keys:
    a = statistics.median(x[key] for x in o); b = statistics.median(x[key] for x in t)
    print(f"{key}: ferroformer {a:.0f}, pytorch {b:.0f}, ratio {a / b:.2f}x")
a = max(x["peak_rss_mb"] for x in o); b = max(x["peak_rss_mb"] for x in t)
print(f"peak_rss_mb: ferroformer {a:.0f}, pytorch {b:.0f}, ratio {a / b:.2f}x")
PYEOF
