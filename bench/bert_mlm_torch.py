"""The masked-LM pre-training recipe (recipes/bert-mlm.toml) in PyTorch / Hugging Face
transformers, on the very tokens ferroformer trained on, and one held-out masked set on which
both the model trained here and ferroformer's model are evaluated. Prints one JSON line:
    {"torch": {"steps", "train_seconds", "tokens_per_s", "final_train_loss", "eval": {...}},
     "ferroformer": {"eval": {...}, "train_seconds", "tokens_per_s", ...},
     "eval_set": {"batches", "sequences", "masked_tokens", "seed"}, "versions": {...}}

    ~/.cache/ferroformer-ref/bin/python bench/bert_mlm_torch.py --run runs/bert-mlm \
        [--steps N] [--threads 2] [--eval-batches 50] [--eval-seed 1234] [--attn sdpa|eager]
        [--head full|masked] [--ferroformer-model DIR] [--skip-train] [--json out.json]

Everything comes from ferroformer's run directory (--run): the resolved recipe (recipe.toml),
the model config (config.json), the tokenizer (tokenizer.json) and the encoded corpus
(data/tokens.bin: a flat little-endian u16 or u32 array, see data/tokens.json). The first
floor(n * (1 - data.val_fraction)) tokens are for training, the rest for validation.

Same model: BertForMaskedLM(BertConfig.from_pretrained(run)), transformers' own initialisation
under torch.manual_seed(train.seed), float32, dropout as configured. Same batches: [CLS] +
(context - 2) consecutive tokens from a uniformly random start in the split + [SEP], no padding.
Same masking, by transformers' DataCollatorForLanguageModeling (mlm.probability of the non-special
tokens chosen; of those mlm.mask_fraction [MASK], mlm.random_fraction a random id of the whole
vocabulary, the rest unchanged; loss at the chosen positions only). Same optimizer: AdamW(lr,
(beta1, beta2), eps) with weight decay on rank >= 2 non-embedding tensors only (the decoder is
tied to the word embeddings), clip_grad_norm_(grad_clip), linear warmup then cosine decay to
min_lr at decay_steps (default: steps). `steps` optimizer steps of grad_accum * batch_size
sequences. The training loop (batch sampling and masking included, evaluation excluded) is timed;
tokens_per_s = batch_size * grad_accum * context * steps / train_seconds. --head full (default)
is the stock forward (logits at every position, as transformers computes the MLM loss);
--head masked runs the MLM head only on the chosen positions, as ferroformer does (same loss,
less compute).

Held-out set: --eval-batches batches of batch_size sequences from the validation split, window
starts drawn by a torch.Generator seeded with --eval-seed, masked once by a collator seeded with
--eval-seed + 1; the identical tensors are fed to both models (eval mode, no_grad). Reported per
model: accuracy (argmax == original token over the chosen positions), loss (mean masked-token
cross-entropy in nats over all chosen positions of the set, token-weighted), perplexity
(exp(loss)) and masked_tokens. ferroformer's model is loaded with
BertForMaskedLM.from_pretrained(--ferroformer-model, default --run: the run directory's model,
refreshed at every checkpoint); any missing, unexpected or mismatched key is an error. Its
training time and throughput come from the run's metrics.jsonl (elapsed_s excludes evaluation;
tokens_per_s = tokens_seen / elapsed_s of the last logged step; tokens_per_s_recent = mean of the
last 10 logged windows).
"""
import argparse
import json
import math
import os
import platform
import sys
import time
import tomllib

import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("--run", default="runs/bert-mlm", help="ferroformer run directory")
p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's train.steps)")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--eval-batches", type=int, default=50)
p.add_argument("--eval-seed", type=int, default=1234)
p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
p.add_argument("--head", default="full", choices=["full", "masked"])
p.add_argument("--ferroformer-model", help="ferroformer model directory (default: --run)")
p.add_argument("--skip-train", action="store_true", help="only evaluate ferroformer's model")
p.add_argument("--log-interval", type=int, default=50)
p.add_argument("--json", help="also write the summary to this file")
a = p.parse_args()

torch.set_num_threads(a.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerFast,
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---- recipe, tokenizer, data ------------------------------------------------------------------
run = a.run
with open(os.path.join(run, "recipe.toml"), "rb") as f:
    recipe = tomllib.load(f)
tr, mlm_cfg = recipe["train"], recipe.get("mlm", {})
steps = a.steps if a.steps is not None else tr["steps"]
B, T = tr["batch_size"], tr["context"]
accum = tr.get("grad_accum", 1)
warmup = tr["warmup_steps"]
decay_steps = tr.get("decay_steps", steps)
seed = tr["seed"]
if mlm_cfg.get("whole_word", False):
    sys.exit("whole-word masking is not supported by this script")

tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(run, "tokenizer.json"),
                              cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                              mask_token="[MASK]", unk_token="[UNK]")
CLS, SEP = tok.cls_token_id, tok.sep_token_id
# The collator never chooses a token its tokenizer calls special: [CLS] and [SEP] must be.
assert tok.get_special_tokens_mask([CLS, 10, SEP], already_has_special_tokens=True) == [1, 0, 1]


def collator(s):
    return DataCollatorForLanguageModeling(
        tokenizer=tok, mlm_probability=mlm_cfg.get("probability", 0.15),
        mask_replace_prob=mlm_cfg.get("mask_fraction", 0.8),
        random_replace_prob=mlm_cfg.get("random_fraction", 0.1), seed=s)


with open(os.path.join(run, "data", "tokens.json")) as f:
    meta = json.load(f)
dtype = "<u2" if meta["bytes_per_token"] == 2 else "<u4"
data = np.fromfile(os.path.join(run, "data", "tokens.bin"), dtype=dtype)
assert len(data) == meta["tokens"], (len(data), meta["tokens"])
data = torch.from_numpy(data.astype(np.int64))
n_train = int(len(data) * (1.0 - recipe["data"]["val_fraction"]))
train_split, val_split = data[:n_train], data[n_train:]
W = T - 2  # corpus tokens per sequence


def windows(split, n, gen):
    """n sequences [CLS] + W tokens from a uniformly random start + [SEP]."""
    starts = torch.randint(len(split) + 1 - W, (n,), generator=gen)
    body = torch.stack([split[s:s + W] for s in starts.tolist()])
    return torch.cat([torch.full((n, 1), CLS), body, torch.full((n, 1), SEP)], dim=1)


def masked_batch(split, n, gen, coll):
    b = coll(list(windows(split, n, gen)))  # a list of 1-D tensors: stacked, then masked
    return b["input_ids"], b["labels"]


def lr_at(it):
    lr, min_lr = tr["lr"], tr["min_lr"]
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_steps or decay_steps <= warmup:
        return min_lr
    ratio = (it - warmup) / (decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def mlm_loss(model, x, y, head):
    if head == "full":
        return model(input_ids=x, labels=y).loss
    h = model.bert(input_ids=x).last_hidden_state
    chosen = y != -100
    return torch.nn.functional.cross_entropy(model.cls(h[chosen]), y[chosen])


# ---- the held-out masked set (identical for both models) --------------------------------------
eval_gen = torch.Generator().manual_seed(a.eval_seed)
eval_coll = collator(a.eval_seed + 1)
eval_set = [masked_batch(val_split, B, eval_gen, eval_coll) for _ in range(a.eval_batches)]
for x, y in eval_set:  # special tokens are never chosen
    assert (y[:, 0] == -100).all() and (y[:, -1] == -100).all()
    assert (x[:, 0] == CLS).all() and (x[:, -1] == SEP).all()
eval_masked = sum(int((y != -100).sum()) for _, y in eval_set)


@torch.no_grad()
def evaluate(model):
    was_training = model.training
    model.eval()
    nll, count, correct = 0.0, 0, 0
    for x, y in eval_set:
        h = model.bert(input_ids=x).last_hidden_state
        chosen = y != -100
        logits = model.cls(h[chosen]).float()
        target = y[chosen]
        nll += torch.nn.functional.cross_entropy(logits, target, reduction="sum").double().item()
        correct += int((logits.argmax(-1) == target).sum())
        count += len(target)
    model.train(was_training)
    loss = nll / count
    return {"accuracy": round(correct / count, 5), "loss": round(loss, 5),
            "perplexity": round(math.exp(loss), 3), "masked_tokens": count}


out = {}

# ---- training in PyTorch ----------------------------------------------------------------------
if not a.skip_train:
    config = BertConfig.from_pretrained(run)
    config._attn_implementation = a.attn
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).float()
    assert model.config._attn_implementation == a.attn, model.config._attn_implementation
    if config.tie_word_embeddings:
        assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    model.train()
    decay, no_decay = [], []
    for name, prm in model.named_parameters():  # tied tensors appear once
        (no_decay if prm.dim() < 2 or "embeddings" in name else decay).append(prm)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tr["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tr["lr"], betas=(tr["beta1"], tr["beta2"]), eps=tr["eps"])
    train_gen = torch.Generator().manual_seed(seed)
    train_coll = collator(seed + 1)
    n_params = sum(prm.numel() for prm in model.parameters())
    log(f"torch: {n_params} parameters, {steps} steps of {accum}x{B}x{T} tokens, attn {a.attn}, "
        f"head {a.head}, {a.threads} threads")
    losses, train_s = [], 0.0
    for it in range(steps):
        t0 = time.perf_counter()
        lr = lr_at(it)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(accum):
            x, y = masked_batch(train_split, B, train_gen, train_coll)
            loss = mlm_loss(model, x, y, a.head) / accum
            loss.backward()
            step_loss += loss.item()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tr["grad_clip"])
        opt.step()
        train_s += time.perf_counter() - t0
        losses.append(step_loss)
        if (it + 1) % a.log_interval == 0 or it + 1 == steps:
            log(json.dumps({"step": it + 1, "loss": round(step_loss, 4), "lr": lr,
                            "grad_norm": round(float(gnorm), 4), "train_s": round(train_s, 1)}))
    tokens = steps * accum * B * T
    t0 = time.perf_counter()
    ev = evaluate(model)
    log(f"torch eval: {ev} ({time.perf_counter() - t0:.1f}s)")
    out["torch"] = {
        "steps": steps, "train_seconds": round(train_s, 2), "train_minutes": round(train_s / 60, 2),
        "tokens_per_s": round(tokens / train_s, 1),
        "final_train_loss": round(sum(losses[-10:]) / len(losses[-10:]), 5),
        "attn": a.attn, "head": a.head, "threads": a.threads, "parameters": n_params, "eval": ev,
    }
    del model, opt

# ---- ferroformer's trained model --------------------------------------------------------------
ff_dir = a.ferroformer_model or run
if os.path.exists(os.path.join(ff_dir, "model.safetensors")):
    ff, info = BertForMaskedLM.from_pretrained(ff_dir, attn_implementation=a.attn,
                                               dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"loading {ff_dir} with BertForMaskedLM.from_pretrained: {bad}")
    if ff.config.tie_word_embeddings:
        assert (ff.cls.predictions.decoder.weight.data_ptr()
                == ff.bert.embeddings.word_embeddings.weight.data_ptr()), "decoder not tied"
    ev = evaluate(ff)
    log(f"ferroformer eval: {ev}")
    rec = {"model_dir": ff_dir, "eval": ev}
    # The step of the model: the run directory's model is the newest checkpoint's.
    state = os.path.join(ff_dir, "trainer_state.json")
    if not os.path.exists(state):
        ck = sorted((int(d.split("-")[1]), d) for d in os.listdir(ff_dir)
                    if d.startswith("checkpoint-") and d.split("-")[1].isdigit()
                    and os.path.exists(os.path.join(ff_dir, d, "trainer_state.json")))
        state = os.path.join(ff_dir, ck[-1][1], "trainer_state.json") if ck else None
    if state:
        with open(state) as f:
            rec["model_step"] = json.load(f)["step"]
    metrics = os.path.join(run, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        logs = [r for r in recs if "tokens_per_s" in r]
        evals = [r for r in recs if "val_loss" in r]
        if logs:
            last = logs[-1]
            recent = [r["tokens_per_s"] for r in logs[-10:]]
            rec.update({
                "steps_logged": last["step"], "train_seconds": round(last["elapsed_s"], 2),
                "train_minutes": round(last["elapsed_s"] / 60, 2),
                "tokens_per_s": round(last["tokens_seen"] / last["elapsed_s"], 1),
                "tokens_per_s_recent": round(sum(recent) / len(recent), 1),
                "last_logged_train_loss": round(last["loss"], 5),
            })
        if evals:
            e = evals[-1]
            rec["own_eval"] = {k: e.get(k) for k in ("step", "val_loss", "val_accuracy")}
    out["ferroformer"] = rec
else:
    log(f"no model.safetensors in {ff_dir}: ferroformer's model not evaluated")

out["eval_set"] = {"batches": a.eval_batches, "sequences": a.eval_batches * B, "context": T,
                   "masked_tokens": eval_masked, "seed": a.eval_seed,
                   "val_tokens": len(val_split), "train_tokens": len(train_split)}
out["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                   "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
line = json.dumps(out)
print(line)
if a.json:
    with open(a.json, "w") as f:
        f.write(line + "\n")
