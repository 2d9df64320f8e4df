"""The PyTorch twin of `ferroformer bench train --model M`: fine-tuning steps of a real causal LM
with transformers (+ PEFT for adapters) on one random batch, AdamW, median of full steps after
warm-up. Takes the same arguments as the ferroformer command, so bench/compare.sh passes one
argument list to both. Prints one JSON line.

    ~/.cache/ferroformer-ref/bin/python bench/finetune_torch.py --model smollm2-135m-instruct \
        [--peft lora --set peft.r=8 --set 'peft.target_modules=["q_proj","v_proj"]'] \
        [--set train.precision="bf16"] [--set train.gradient_checkpointing=true] \
        [--batch 4 --context 256 --steps 10 --warmup 3 --threads 2]

--model: a .gguf file (loaded by transformers and dequantized to f32, as ferroformer loads
it), a Hugging Face directory, or an asset name (its file in $FERROFORMER_CACHE, default
~/.cache/ferroformer; `ferroformer fetch NAME` puts it there).
The run matches the ferroformer bench's defaults for a pretrained model (those of
recipes/domain-shakespeare.toml): AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay
0.01 on matrices only (biases, norms and embeddings exempt), gradient clipping at 1.0; no
dropout (the bench's models have none; PEFT's lora_dropout defaults to 0 too). `--set` keys:
peft.r, peft.lora_alpha, peft.lora_dropout, peft.target_modules (a list, or "all-linear"),
train.lr, train.weight_decay, train.beta1, train.beta2, train.grad_clip,
train.precision ("f32", or "bf16": the step under torch.autocast("cpu", dtype=torch.bfloat16)),
train.gradient_checkpointing. Anything else is an error.
peak_rss_mb: the process's peak resident memory during the steps (the count restarted after
loading with /proc/self/clear_refs, as ferroformer does), so loading is excluded on both sides.
"""
import argparse
import glob
import json
import os
import statistics
import time
import tomllib

import torch
import torch.nn.functional as F


def parse_set(items):
    out = {}
    for s in items:
        if "=" not in s:
            raise SystemExit(f"--set {s!r}: expected KEY=VALUE")
        k, v = s.split("=", 1)
        out[k.strip()] = tomllib.loads(f"v = {v}")["v"]
    return out


def resolve(model):
    if os.path.exists(model):
        return model
    root = os.environ.get("FERROFORMER_CACHE") or os.path.expanduser("~/.cache/ferroformer")
    found = sorted(glob.glob(os.path.join(root, model, "*.gguf")))
    if not found:
        raise SystemExit(f"--model {model!r}: not a path, and no .gguf under {root}/{model} "
                         f"(run `ferroformer fetch {model}`)")
    return found[0]


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--peft", default=None)
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    sets = parse_set(a.sets)
    known = {"peft.r", "peft.lora_alpha", "peft.lora_dropout", "peft.target_modules",
             "train.lr", "train.weight_decay", "train.beta1", "train.beta2", "train.grad_clip",
             "train.precision", "train.gradient_checkpointing"}
    unknown = sorted(set(sets) - known)
    if unknown:
        raise SystemExit(f"--set: not supported here: {unknown} (known: {sorted(known)})")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    from transformers import AutoModelForCausalLM

    path = resolve(a.model)
    if path.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path),
            dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False
    if sets.get("train.gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if a.peft is not None:
        if a.peft.lower() != "lora":
            raise SystemExit(f"--peft {a.peft}: only lora is wired up here")
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(task_type="CAUSAL_LM",
                         r=sets.get("peft.r", 8),
                         lora_alpha=sets.get("peft.lora_alpha", 8),
                         lora_dropout=sets.get("peft.lora_dropout", 0.0),
                         target_modules=sets.get("peft.target_modules", None))
        model = get_peft_model(model, cfg)
        if sets.get("train.gradient_checkpointing", False):
            model.enable_input_require_grads()
    model.train()
    trainable = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    decay = [q for n, q in trainable if q.dim() >= 2 and "embed" not in n]
    no_decay = [q for n, q in trainable if not (q.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": sets.get("train.weight_decay", 0.01)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=sets.get("train.lr", 1e-4),
        betas=(sets.get("train.beta1", 0.9), sets.get("train.beta2", 0.999)), eps=1e-8)
    clip = sets.get("train.grad_clip", 1.0)
    precision = sets.get("train.precision", "f32")
    if precision not in ("f32", "bf16"):
        raise SystemExit(f"train.precision {precision!r}: f32 or bf16")
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (a.batch, a.context), generator=g)
    y = torch.randint(0, vocab, (a.batch, a.context), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([q for _, q in trainable], clip)
        opt.step()
        return loss.item()

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    times, loss = [], float("nan")
    for _ in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mb()
    fwd = []
    with torch.no_grad():
        for _ in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                model(input_ids=x)
            fwd.append(time.perf_counter() - t0)
    tokens = a.batch * a.context
    import transformers
    out = {
        "impl": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
        "tokens_per_s": tokens / statistics.median(times[a.warmup:]),
        "step_ms_median": 1000 * statistics.median(times[a.warmup:]),
        "forward_tokens_per_s": tokens / statistics.median(fwd[a.warmup:]),
        "peak_rss_mb": peak,
        "params": sum(q.numel() for q in model.parameters()),
        "trainable_params": sum(q.numel() for _, q in trainable),
        "last_loss": loss,
        "step_ms": [1000 * t for t in times],
    }
    if a.peft is not None:
        import peft
        out["peft"] = peft.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
