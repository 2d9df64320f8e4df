"""TransE in PyTorch: the reference for `ferroformer semnet embed` (src/semnet/transe.rs) on the
same split with the same settings. Prints progress to stderr and one JSON line to stdout:
    {"valid": {queries, mrr, mean_rank, hits1, hits3, hits10}, "test": {...},
     "train_seconds", "rank_seconds", "steps", "threads", "final_loss", "config": {...},
     "versions": {...}}

    ~/.cache/ferroformer-ref/bin/python bench/transe_torch.py --split DIR [--dim 100 --norm 1
        --margin 6.0 --lr 0.01 --batch 1024 --steps 10000 --seed 0 --threads 2]
        [--warmup N] [--log-every 1000] [--rank-limit N] [--save DIR]

DIR holds train.txt, valid.txt, test.txt (head<TAB>relation<TAB>tail); entities and relations
are numbered in order of first appearance reading train, valid, then test (KgSplit::load).

The model, as transe.rs:
  E [n_entities, dim], R [n_relations, dim], uniform on +-6/sqrt(dim) (float32), each R row
  then scaled to unit L2 norm (Bordes et al.'s initialisation);
  d(h, r, t) = || E[h]/||E[h]||_2 + R[r] - E[t]/||E[t]||_2 ||_p, p = 1 or 2;
  loss = mean relu(margin + d(pos) - d(neg)); each negative replaces the head (odds 1/2) or the
  tail by a uniformly drawn other entity.
Training: Adam (0.9, 0.999, 1e-8, no weight decay, dense gradients), lr * (step+1)/(warmup+1)
for step < warmup (warmup default min(steps/100, 100), as `semnet embed`), then lr constant;
batches are consecutive slices of a stream of per-epoch random permutations of the training
triples (a batch may straddle two epochs, as the Rust trainer's epoch_indices). The random
streams (init, permutations, corruption) are torch's, not ferroformer's: same distributions,
different draws.
Ranking (filtered, both directions): the true tail among all entities by d(h, r, e), the true
head by d(e, r, t); an entity other than the truth that makes a known triple (train, valid or
test) is left out; rank = 1 + #closer + #equally-close/2; MRR = mean 1/rank, Hits@k = fraction
of ranks <= k, mean rank. Distances of a chunk of queries against all normalised entities with
torch.cdist (float32, no matmul shortcut for p = 2).
--save DIR writes model.safetensors (entity_embeddings.weight, relation_embeddings.weight) and
config.json as transe.rs's save_dir, so `ferroformer` can rank the PyTorch model.
"""
import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch


def load_split(d):
    ents, rels = {}, {}
    sets = {}
    for name in ("train", "valid", "test"):
        path = os.path.join(d, name + ".txt")
        out = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                x = [s.strip() for s in line.rstrip("\n").split("\t")]
                if len(x) != 3 or any(not s for s in x):
                    sys.exit(f"{path}: line {i + 1}: expected head<TAB>relation<TAB>tail")
                h = ents.setdefault(x[0], len(ents))
                r = rels.setdefault(x[1], len(rels))
                t = ents.setdefault(x[2], len(ents))
                out.append((h, r, t))
        sets[name] = torch.tensor(out, dtype=torch.long).reshape(-1, 3)
    if len(sets["train"]) == 0:
        sys.exit(f"{d}/train.txt: no training triples")
    return sets, ents, rels


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def distance(E, R, h, r, t, p):
    diff = unit(E[h]) + R[r] - unit(E[t])
    return diff.abs().sum(-1) if p == 1 else diff.pow(2).sum(-1).sqrt()


def corrupt(pos, n_ent, g):
    n = len(pos)
    head = torch.randint(0, 2, (n,), generator=g) == 0
    e = torch.randint(0, n_ent - 1, (n,), generator=g)
    old = torch.where(head, pos[:, 0], pos[:, 2])
    e = e + (e >= old).long()  # any entity but the true one
    neg = pos.clone()
    neg[:, 0] = torch.where(head, e, pos[:, 0])
    neg[:, 2] = torch.where(head, pos[:, 2], e)
    return neg


@torch.no_grad()
def rank(E, R, triples, known, p, chunk=256):
    """Filtered ranks of `triples` (tail, then head, for each): a Ranking dict."""
    U = unit(E)
    tails, heads = defaultdict(list), defaultdict(list)
    for h, r, t in known:
        tails[(h, r)].append(t)
        heads[(r, t)].append(h)
    ranks = []
    for s in range(0, len(triples), chunk):
        tr = triples[s : s + chunk]
        h, r, t = tr[:, 0], tr[:, 1], tr[:, 2]
        per = []
        # Tail: q = h + r vs candidates e; head: ||e + r - t|| = ||e - (t - r)||.
        for q, truth, filt in (
            (U[h] + R[r], t, [tails[(a, b)] for a, b in zip(h.tolist(), r.tolist())]),
            (U[t] - R[r], h, [heads[(b, c)] for b, c in zip(r.tolist(), t.tolist())]),
        ):
            d = torch.cdist(q, U, p=float(p), compute_mode="donot_use_mm_for_euclid_dist")
            dt = d.gather(1, truth[:, None])
            rows = torch.tensor([i for i, f in enumerate(filt) for _ in f], dtype=torch.long)
            cols = torch.tensor([k for f in filt for k in f], dtype=torch.long)
            d[rows, cols] = float("inf")  # known ones, the truth among them
            d[torch.arange(len(q)), truth] = float("inf")
            less = (d < dt).sum(1).double()
            equal = (d == dt).sum(1).double()
            per.append(1.0 + less + equal / 2.0)
        ranks.append(torch.stack(per, 1).reshape(-1))  # tail_0, head_0, tail_1, ...
    x = torch.cat(ranks)
    return {
        "queries": len(x),
        "mrr": (1.0 / x).mean().item(),
        "mean_rank": x.mean().item(),
        "hits1": (x <= 1).double().mean().item(),
        "hits3": (x <= 3).double().mean().item(),
        "hits10": (x <= 10).double().mean().item(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", required=True)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--norm", type=int, default=1, choices=(1, 2))
    ap.add_argument("--margin", type=float, default=6.0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=None, help="default min(steps/100, 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=1000)
    ap.add_argument("--rank-limit", type=int, default=None, help="rank only the first N valid/test triples")
    ap.add_argument("--save", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed + 1)
    warmup = min(a.steps // 100, 100) if a.warmup is None else a.warmup

    sets, ents, rels = load_split(a.split)
    train = sets["train"]
    n_ent, n_rel, n = len(ents), len(rels), len(train)
    print(f"{n_ent} entities, {n_rel} relations; {n} train, {len(sets['valid'])} valid, "
          f"{len(sets['test'])} test triples", file=sys.stderr)

    b = 6.0 / a.dim**0.5
    E = torch.empty(n_ent, a.dim).uniform_(-b, b).requires_grad_(True)
    R = torch.empty(n_rel, a.dim).uniform_(-b, b)
    R = (R / R.norm(dim=-1, keepdim=True)).requires_grad_(True)  # the paper's unit-norm init
    opt = torch.optim.Adam([E, R], lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    perm, perm_epoch = None, -1
    t0 = time.perf_counter()
    window, last = [], float("nan")
    for step in range(a.steps):
        lr = a.lr * (step + 1) / (warmup + 1) if step < warmup else a.lr
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = []
        for k in range(step * a.batch, (step + 1) * a.batch):
            if k // n != perm_epoch:
                perm_epoch = k // n
                perm = torch.randperm(n, generator=g).tolist()
            idx.append(perm[k % n])
        pos = train[idx]
        neg = corrupt(pos, n_ent, g)
        dp = distance(E, R, pos[:, 0], pos[:, 1], pos[:, 2], a.norm)
        dn = distance(E, R, neg[:, 0], neg[:, 1], neg[:, 2], a.norm)
        loss = torch.relu(a.margin + dp - dn).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if (step + 1) % a.log_every == 0 or step + 1 == a.steps:
            last = sum(window) / len(window)
            print(f"step {step + 1}/{a.steps}: loss {last:.5f} (mean of {len(window)}), lr {lr:.3g}, "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
            window = []
    train_seconds = time.perf_counter() - t0

    E, R = E.detach(), R.detach()
    if a.save:
        from safetensors.torch import save_file

        os.makedirs(a.save, exist_ok=True)
        save_file({"entity_embeddings.weight": E.contiguous(), "relation_embeddings.weight": R.contiguous()},
                  os.path.join(a.save, "model.safetensors"))
        cfg = {"model_type": "transe", "n_entities": n_ent, "n_relations": n_rel, "dim": a.dim,
               "norm": a.norm, "margin": a.margin}
        with open(os.path.join(a.save, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        for name, m in (("entities.txt", ents), ("relations.txt", rels)):
            with open(os.path.join(a.save, name), "w", encoding="utf-8") as f:
                f.write("\n".join(m) + "\n")

    known = [tuple(x) for s in sets.values() for x in s.tolist()]
    t1 = time.perf_counter()
    res = {}
    for name in ("valid", "test"):
        tr = sets[name][: a.rank_limit] if a.rank_limit else sets[name]
        res[name] = rank(E, R, tr, known, a.norm) if len(tr) else None
    rank_seconds = time.perf_counter() - t1
    res.update({
        "train_seconds": round(train_seconds, 3),
        "rank_seconds": round(rank_seconds, 3),
        "steps": a.steps,
        "threads": a.threads,
        "final_loss": last,
        "config": {"dim": a.dim, "norm": a.norm, "margin": a.margin, "lr": a.lr, "warmup": warmup,
                   "batch": a.batch, "seed": a.seed, "n_entities": n_ent, "n_relations": n_rel,
                   "split": a.split},
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    })
    print(json.dumps(res))


if __name__ == "__main__":
    main()
