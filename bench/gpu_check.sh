#!/usr/bin/env bash
# Built by bench/build_cuda.sh; run on the GPU machine from the repository root.
# GPU smoke check of the plain composition path (the fused kernels are CPU-only).
set -u
find_dir() { dirname "$(find / -name "$1" -not -path '*/proc/*' 2>/dev/null | head -1)"; }
export LD_LIBRARY_PATH="$(find_dir libcublas.so.13):$(find_dir libnvrtc.so.13):$(find_dir libcurand.so.10):${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi -L
B=${FF:-.gpu/ferroformer}
chmod +x $B
python3 - <<'PY'
import random
random.seed(0)
s=["the king","a fool","my lord","the queen","sweet love"]; v=["speaks of","dreams of","fears","loves"]; o=["the crown","a rose","the sea","the stars"]
open("/tmp/corpus.txt","w").write("".join(f"{random.choice(s)} {random.choice(v)} {random.choice(o)}.\n" for _ in range(3000)))
PY
cat > /tmp/r.toml <<'R'
name = "gpu-check"
[data]
corpus = ["/tmp/corpus.txt"]
tokenizer = "char"
[model]
n_layer = 2
n_head = 4
n_embd = 64
dropout = 0.1
[train]
out_dir = "/tmp/run-DEV"
steps = 60
batch_size = 8
context = 64
lr = 3e-3
min_lr = 3e-4
warmup_steps = 5
eval_interval = 30
eval_iters = 4
log_interval = 10
R
for dev in cpu cuda; do
  sed "s/DEV/$dev/" /tmp/r.toml > /tmp/r-$dev.toml
  echo "== pretrain on $dev"
  timeout 240 $B --device $dev --quiet --json pretrain --recipe /tmp/r-$dev.toml 2>&1 | tail -3
  grep -o '"loss":[0-9.]*' /tmp/run-$dev/metrics.jsonl | tr '\n' ' '; echo
done
echo "== eval perplexity (cpu vs cuda, same cuda-trained model)"
for dev in cpu cuda; do $B --device $dev --quiet eval perplexity --json --context 64 --model /tmp/run-cuda --text /tmp/corpus.txt | tail -1; done
echo "== generate greedy (cpu vs cuda)"
for dev in cpu cuda; do $B --device $dev --quiet generate --model /tmp/run-cuda --prompt "the king" --max-tokens 40 --temperature 0; done
echo "== bench train on cuda (6 layers, 384 dims, context 256, batch 8)"
timeout 120 $B --device cuda --json bench train --steps 10 --warmup 3 2>&1 | tail -2
echo "== bench generate on cuda"
timeout 120 $B --device cuda --json bench generate 2>&1 | tail -2
