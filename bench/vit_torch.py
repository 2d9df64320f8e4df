"""The Vision Transformer recipe (recipes/vit-fashion-mnist.toml) in PyTorch + Hugging Face
transformers: the same ViT, trained with the same recipe on the same Fashion-MNIST images in the
same order with the same augmentation as a ferroformer run, then scored on the same validation
and test images. Prints one JSON line:
    {"torch": {"steps", "train_seconds", "train_minutes", "images_per_s", "final_train_loss",
               "last_train_loss", "evals": [{"step", "val_loss", "val_accuracy"}, ...],
               "test": {"accuracy", "loss", "n"}, "parameters", "threads", ...},
     "ferroformer": {"train_seconds", "images_per_s", "last_eval": {...}, "evals": [...],
                     "test": {...} (with --ferroformer-model), ...},
     "data": {...}, "recipe": path, "versions": {...}}

    ~/.cache/ferroformer-ref/bin/python bench/vit_torch.py [--run runs/vit-fashion-mnist]
        [--recipe recipes/vit-fashion-mnist.toml] [--data PATH/fashion-mnist] [--steps N]
        [--threads 2] [--device cpu] [--attn sdpa|eager] [--log-interval N] [--limit N]
        [--test-limit N] [--ferroformer-model [DIR]] [--skip-train] [--json out.json]
    ~/.cache/ferroformer-ref/bin/python bench/vit_torch.py --rng-check   # known answers, exit

A quick test (seconds): --threads 1 --limit 512 --steps 5 --test-limit 256.

ferroformer's side of the comparison:
    ferroformer pretrain --recipe recipes/vit-fashion-mnist.toml
    ferroformer eval accuracy --model runs/vit-fashion-mnist --split test
or, with this script's scoring, --ferroformer-model (below).

Data (--data, default: the recipe's data.corpus, asset:NAME being $FERROFORMER_CACHE/NAME or
~/.cache/ferroformer/NAME): train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (IDX files, 28x28 grey), as ferroformer
reads them. Class names: the recipe's data.labels.

ferroformer's random numbers are reproduced bit for bit (class Rng below: src/rng.rs's
SplitMix64 with 64-bit wraparound; uniform = (next_u64 >> 11) * 2^-53; below(n) = the high
64 bits of next_u64 * n; fork(stream) = state ^ stream * 0xD1B54A32D192ED03, one draw
discarded; Fisher-Yates shuffle from the end). --rng-check prints known answers to compare
with the Rust code.

Same split (src/data/images.rs split_indices): the 60,000 training images' indices shuffled by
Rng(data.split_seed); the last round(60000 * data.val_fraction) (round half away from zero) of
that order are held out for validation, the rest kept for training, each sorted. With --run, the
run's data/split.json ({"val": [held-out indices]}, written when a ferroformer run starts) must
equal this split, else the script stops.

Same training order (epoch_indices in src/train/trainer.rs): sample k = step * batch_size + j is
kept image perm_e[k % N] (N kept images, e = k // N), perm_e = 0..N shuffled by
Rng(train.seed).fork(1000 + e): every kept image once per epoch, a fresh permutation each epoch.
Same augmentation (src/data/images.rs augment), one generator for the whole run,
Rng(train.seed).fork(1), drawn image by image in batch order: dy = below(2 pad + 1) - pad,
dx = below(2 pad + 1) - pad, mirror = uniform() < flip (drawn only when flip > 0); output
(y, x) = input(y + dy, x' + dx) with x' = w - 1 - x when mirrored, else x; zero outside the
image (pad = augment.crop_padding, flip = augment.flip; nothing drawn when both are 0).
Same preprocessing (transformers' ViTImageProcessor as ferroformer saves it): pixel * (1/255),
then (x - mean) / std, computed in float64 and rounded to float32, mean and std (population,
one channel) of pixel / 255 over all the kept training images, summed in the same order as
ferroformer (so the same float64 values; with --limit, still over all kept images). No resize.

Same model: transformers' ViTForImageClassification(ViTConfig(hidden_size = n_embd,
num_hidden_layers = n_layer, num_attention_heads = n_head, intermediate_size (default
4 n_embd), hidden_act = activation_function ("gelu": the exact erf GELU),
hidden_dropout_prob = attention_probs_dropout_prob = dropout, layer_norm_eps =
layer_norm_epsilon, image_size 28, patch_size, num_channels 1, num_labels 10, qkv_bias,
initializer_range = init_std (default 0.02))): pre-norm encoder layers, class token, learned
positions, final LayerNorm, a linear classifier of the class token's state. float32. Attention
"sdpa" by default (--attn eager: transformers' eager attention; the same function, dropout 0).
Initialisation: transformers' own (post_init, under torch.manual_seed(train.seed)): every
Linear and the patch Conv2d weight N(0, initializer_range), their biases 0, LayerNorm 1 and 0,
cls_token and position_embeddings truncated normal (std initializer_range, cut at +-2, i.e.
in effect N(0, initializer_range)). ferroformer's is the same distribution (plain normal for
cls_token and position_embeddings) from its own generator, so the starting weights differ
(only in their draw).

Same loss: cross entropy of the logits with label_smoothing = train.label_smoothing, averaged
over the batch (torch's smoothing = ferroformer's smoothed_cross_entropy:
(1 - s) nll + s mean_c(-log p_c)).

Same optimizer: torch.optim.AdamW(lr, (beta1, beta2), eps (default 1e-8), weight_decay),
decoupled decay only on the tensors ferroformer decays (src/train/optimizer.rs no_decay): rank
>= 2 and not named *embeddings* unless *patch_embeddings* (cls_token and position_embeddings
not decayed, the patch projection's Conv2d weight decayed; biases and LayerNorm not decayed);
clip_grad_norm_(grad_clip) when grad_clip > 0; linear warmup over warmup_steps then cosine
decay to min_lr at decay_steps (default: steps, --steps included, as ferroformer's
--set train.steps=N) as src/train/schedule.rs; one batch of batch_size images per step
(grad_accum must be 1), train.steps steps (--steps overrides).
The training loop is timed, batch building (indices, augmentation, normalisation) included,
evaluation excluded, as ferroformer's elapsed_s; images_per_s = steps * batch_size /
train_seconds. This script caches each epoch's permutation (ferroformer recomputes it for each
batch, a shuffle of N indices per step).

Same evaluation (ferroformer's evaluate for images): every eval_interval steps and at the end,
the accuracy and mean loss (no smoothing) over ALL the validation images, in batches of
batch_size, model.eval(), no augmentation (printed on stderr, not timed); at the end the same
over the 10,000 test images (t10k; --test-limit N: the first N). Prediction = argmax of the
logits (the first of ties).

From ferroformer's run directory (--run DIR): data/split.json (checked, above); metrics.jsonl:
its training time, images per second, last logged loss and its validation accuracy at each
evaluation ("ferroformer"); recipe.toml: compared with the recipe used here (differences are
warned about and listed as "recipe_differs").
--ferroformer-model [DIR] (DIR default: --run) also loads ferroformer's saved model with
ViTForImageClassification.from_pretrained(DIR) (config.json + model.safetensors; any missing,
unexpected or mismatched tensor is an error) and scores it on the same validation and test
images with its own preprocessor_config.json (rescale by rescale_factor, normalise by its
image_mean / image_std; the images are already its size): a check that ferroformer's checkpoint
loads in transformers and scores there what ferroformer reports. It also runs transformers'
AutoImageProcessor from DIR on a few test images and reports the largest difference from this
script's inputs. --skip-train does only that.
"""
import argparse
import gzip
import json
import math
import os
import platform
import struct
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--recipe", default="recipes/vit-fashion-mnist.toml")
p.add_argument("--run", help="ferroformer's run directory (split.json, metrics.jsonl, model)")
p.add_argument("--data", help="the Fashion-MNIST folder (default: the recipe's data.corpus)")
p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's train.steps)")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--device", default="cpu", help="torch device (default cpu)")
p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa",
               help="transformers' attention implementation (default sdpa)")
p.add_argument("--log-interval", type=int, help="default: the recipe's train.log_interval")
p.add_argument("--limit", type=int, help="train on only the first N kept training images")
p.add_argument("--test-limit", type=int, help="score only the first N test images")
p.add_argument("--ferroformer-model", nargs="?", const="", metavar="DIR",
               help="also score ferroformer's model in DIR (no DIR: --run)")
p.add_argument("--skip-train", action="store_true", help="only score --ferroformer-model")
p.add_argument("--rng-check", action="store_true",
               help="print known answers of the reimplemented generator and exit")
p.add_argument("--json", help="also write the summary to this file")
a = p.parse_args()
if a.skip_train and a.ferroformer_model is None:
    p.error("--skip-train needs --ferroformer-model")
if a.ferroformer_model == "" and not a.run:
    p.error("--ferroformer-model without DIR needs --run")

torch.set_num_threads(a.threads)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---- ferroformer's generator (src/rng.rs) ----------------------------------------------------
M64 = (1 << 64) - 1


class Rng:
    """SplitMix64 exactly as ferroformer's Rng, state one u64."""

    def __init__(self, seed):
        self.state = (seed ^ 0x5851F42D4C957F2D) & M64

    def next_u64(self):
        s = (self.state + 0x9E3779B97F4A7C15) & M64
        self.state = s
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n):
        return (self.next_u64() * n) >> 64

    def fork(self, stream):
        r = Rng.__new__(Rng)
        r.state = self.state ^ ((stream * 0xD1B54A32D192ED03) & M64)
        r.next_u64()
        return r

    def shuffle(self, xs):
        """Fisher-Yates from the end, as Rng::shuffle (inlined next_u64 for speed)."""
        s = self.state
        for i in range(len(xs) - 1, 0, -1):
            s = (s + 0x9E3779B97F4A7C15) & M64
            z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            j = ((z ^ (z >> 31)) * (i + 1)) >> 64
            xs[i], xs[j] = xs[j], xs[i]
        self.state = s


def round_half_away(x):
    """Rust's f64::round for x >= 0."""
    r = math.floor(x)
    return r + 1 if x - r >= 0.5 else r


def split_indices(n, fraction, seed):
    """src/data/images.rs split_indices: (kept, held-out), each sorted."""
    order = list(range(n))
    Rng(seed).shuffle(order)
    n_held = min(int(round_half_away(n * fraction)), n)
    return sorted(order[:n - n_held]), sorted(order[n - n_held:])


def epoch_perm(n, seed, epoch):
    perm = list(range(n))
    Rng(seed).fork(1000 + epoch).shuffle(perm)
    return perm


if a.rng_check:
    r = Rng(1234)
    check = {"Rng(1234).next_u64 x5": [r.next_u64() for _ in range(5)]}
    check["then uniform x2"] = [r.uniform() for _ in range(2)]
    check["then below(10) x5"] = [r.below(10) for _ in range(5)]
    check["then state"] = r.state
    f = Rng(1337).fork(1)
    check["Rng(1337).fork(1): state"] = f.state
    check["Rng(1337).fork(1): [below(5), below(5), uniform()] x2 (two images' augmentation draws)"] = [
        f.below(5), f.below(5), f.uniform(), f.below(5), f.below(5), f.uniform()]
    xs = list(range(10))
    Rng(7).shuffle(xs)
    check["Rng(7).shuffle(0..10)"] = xs
    keep, held = split_indices(60000, 0.0833333333, 1234)
    check["split_indices(60000, 0.0833333333, 1234)"] = {
        "n_held": len(held), "held[:8]": held[:8], "held[-4:]": held[-4:],
        "sum(held)": sum(held)}
    perm = epoch_perm(len(keep), 1337, 0)
    check["Rng(1337).fork(1000).shuffle(0..55000)[:8]"] = perm[:8]
    check["Rng(1337).fork(1001).shuffle(0..55000)[:8]"] = epoch_perm(len(keep), 1337, 1)[:8]
    print(json.dumps(check))
    sys.exit(0)


# ---- recipe ------------------------------------------------------------------------------------
with open(a.recipe, "rb") as f:
    recipe = tomllib.load(f)
if recipe.get("objective") != "classify":
    sys.exit(f"{a.recipe}: objective is {recipe.get('objective')!r}, expected 'classify'")
m_cfg, tr = recipe["model"], recipe["train"]
d_cfg, aug_cfg = recipe.get("data", {}), recipe.get("augment", {})
if m_cfg.get("architecture") != "vit":
    sys.exit(f"{a.recipe}: model.architecture is {m_cfg.get('architecture')!r}, expected 'vit'")
if m_cfg.get("init"):
    sys.exit(f"{a.recipe}: model.init (starting from a model) is not supported here")
if tr.get("grad_accum", 1) != 1:
    sys.exit("train.grad_accum > 1 is not supported by this script")
steps = a.steps if a.steps is not None else tr["steps"]
B = tr["batch_size"]
warmup = tr["warmup_steps"]
decay_steps = tr.get("decay_steps", steps)  # ferroformer: defaults to train.steps
seed = tr.get("seed", 1337)
smoothing = tr.get("label_smoothing", 0.0)
grad_clip = tr.get("grad_clip", 1.0)
eval_interval = tr["eval_interval"]
log_interval = a.log_interval or tr.get("log_interval", 10)
pad, flip = aug_cfg.get("crop_padding", 0), aug_cfg.get("flip", 0.0)
val_fraction, split_seed = d_cfg.get("val_fraction", 0.1), d_cfg.get("split_seed", 1337)
labels_named = d_cfg.get("labels", [])


# ---- data --------------------------------------------------------------------------------------
def cache_dir():
    return os.environ.get("FERROFORMER_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ferroformer")


data_dir = a.data or (d_cfg.get("corpus") or [None])[0]
if data_dir is None:
    sys.exit("the recipe names no corpus: pass --data")
if data_dir.startswith("asset:"):
    data_dir = os.path.join(cache_dir(), data_dir[len("asset:"):])


def read_idx(stem, magic):
    """An IDX file `stem` or `stem.gz` of data_dir: (array, path)."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            break
    else:
        sys.exit(f"{data_dir}: no {stem}[.gz] (pass --data, or set FERROFORMER_CACHE)")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    (m,) = struct.unpack(">I", raw[:4])
    if m != magic:
        sys.exit(f"{path}: magic {m}, expected {magic}")
    nd = m & 0xFF
    dims = struct.unpack(">" + "I" * nd, raw[4:4 + 4 * nd])
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd)
    if arr.size != int(np.prod(dims)):
        sys.exit(f"{path}: {arr.size} bytes for dimensions {dims}")
    return arr.reshape(dims), path


def read_split(prefix):
    imgs, ip = read_idx(f"{prefix}-images-idx3-ubyte", 2051)
    labs, lp = read_idx(f"{prefix}-labels-idx1-ubyte", 2049)
    if len(imgs) != len(labs):
        sys.exit(f"{ip}: {len(imgs)} images but {lp}: {len(labs)} labels")
    return imgs, labs.astype(np.int64), ip


all_imgs, all_labels, train_path = read_split("train")
test_imgs, test_labels, test_path = read_split("t10k")
H, W = all_imgs.shape[1:]
if H != W:
    sys.exit(f"a ViT takes square images; these are {W}x{H}")
n_classes = len(labels_named) if labels_named else int(max(all_labels.max(), test_labels.max())) + 1
if max(all_labels.max(), test_labels.max()) >= n_classes:
    sys.exit(f"labels up to {max(all_labels.max(), test_labels.max())} for {n_classes} classes")

keep, held = split_indices(len(all_imgs), val_fraction, split_seed)
if a.run:
    sp = os.path.join(a.run, "data", "split.json")
    if os.path.exists(sp):
        with open(sp) as f:
            theirs = json.load(f)["val"]
        if theirs != held:
            diff = sorted(set(theirs) ^ set(held))
            sys.exit(f"{sp}: ferroformer held out {len(theirs)} images, this script {len(held)}; "
                     f"{len(diff)} differ (first: {diff[:10]}): the split is not reproduced")
        log(f"{sp}: same {len(held)} validation images")
    else:
        log(f"warning: {sp} not found: the split is not checked")
keep_imgs, keep_labels = all_imgs[keep], all_labels[keep]
val_imgs, val_labels = all_imgs[held], all_labels[held]
if a.test_limit is not None:
    test_imgs, test_labels = test_imgs[:a.test_limit], test_labels[:a.test_limit]


def channel_stats(imgs):
    """Mean and population std of pixel / 255, summed pixel by pixel in float64 in the same order
    as ImageSet::channel_stats (cumsum is sequential), so the very same float64 values."""
    flat = imgs.reshape(-1)
    s = q = 0.0
    chunk = 1 << 20
    for i in range(0, flat.size, chunk):
        x = flat[i:i + chunk].astype(np.float64) / 255.0
        s = float(np.cumsum(np.concatenate(([s], x)))[-1])
        q = float(np.cumsum(np.concatenate(([q], x * x)))[-1])
    n = float(max(flat.size, 1))
    mean = s / n
    std = max(math.sqrt(max(q / n - mean * mean, 0.0)), 1e-6)
    return mean, std


def make_lut(rescale, mean, std, do_rescale=True, do_normalize=True):
    """uint8 pixel -> float32 model input, as Preprocessor::apply (float64, then rounded)."""
    x = np.arange(256, dtype=np.float64)
    if do_rescale:
        x = x * rescale
    if do_normalize:
        x = (x - mean) / std
    return x.astype(np.float32)


mean, std = channel_stats(keep_imgs)
lut = make_lut(1.0 / 255.0, mean, std)
train_imgs, train_labels = keep_imgs, keep_labels
if a.limit is not None:
    train_imgs, train_labels = keep_imgs[:a.limit], keep_labels[:a.limit]
log(f"{data_dir}: {len(all_imgs)} training images ({len(keep)} kept, {len(held)} held out for "
    f"validation), {len(test_imgs)} test images, {n_classes} classes, {W}x{H}; "
    f"mean {mean:.6f} std {std:.6f}")


def inputs(imgs_u8, table):
    """[n, 1, H, W] float32 model input."""
    return torch.from_numpy(table[imgs_u8][:, None]).to(a.device)


def augment_batch(imgs, rng):
    """src/data/images.rs augment of each image in order, drawing from `rng`."""
    n = len(imgs)
    dy, dx, mirror = np.empty(n, np.int64), np.empty(n, np.int64), np.zeros(n, bool)
    for i in range(n):
        dy[i] = rng.below(2 * pad + 1) - pad
        dx[i] = rng.below(2 * pad + 1) - pad
        mirror[i] = flip > 0.0 and rng.uniform() < flip
    padded = np.zeros((n, H + 2 * pad, W + 2 * pad), np.uint8)
    padded[:, pad:pad + H, pad:pad + W] = imgs
    xs = np.where(mirror[:, None], np.arange(W)[::-1][None, :], np.arange(W)[None, :])
    rows = np.arange(H)[None, :] + dy[:, None] + pad                   # [n, H]
    cols = xs + dx[:, None] + pad                                        # [n, W]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


# ---- model, schedule, scoring ------------------------------------------------------------------
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402
import transformers  # noqa: E402

if labels_named:
    id2label = {i: s for i, s in enumerate(labels_named)}
else:
    id2label = {i: str(i) for i in range(n_classes)}
n_embd = m_cfg["n_embd"]
vit_config = dict(
    hidden_size=n_embd, num_hidden_layers=m_cfg["n_layer"], num_attention_heads=m_cfg["n_head"],
    intermediate_size=m_cfg.get("intermediate_size") or 4 * n_embd,
    hidden_act=m_cfg.get("activation_function", "gelu"),
    hidden_dropout_prob=m_cfg.get("dropout", 0.0),
    attention_probs_dropout_prob=m_cfg.get("dropout", 0.0),
    layer_norm_eps=m_cfg.get("layer_norm_epsilon", 1e-5), image_size=H,
    patch_size=m_cfg["patch_size"], num_channels=1, qkv_bias=True,
    initializer_range=m_cfg.get("init_std") or 0.02)
if H % vit_config["patch_size"]:
    sys.exit(f"model.patch_size {vit_config['patch_size']} does not divide the {H}-pixel images")


def lr_at(it):
    lr, min_lr = tr["lr"], tr["min_lr"]
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_steps or decay_steps <= warmup:
        return min_lr
    ratio = (it - warmup) / (decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def exempt(name, prm):
    """ferroformer's no_decay(name, rank)."""
    return (prm.dim() < 2 or "wte" in name or "wpe" in name
            or ("embeddings" in name and "patch_embeddings" not in name))


@torch.no_grad()
def score(model, imgs, labels, table):
    """Accuracy and mean loss (no smoothing) over all of imgs, batch_size at a time."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(imgs), B):
        x = inputs(imgs[i:i + B], table)
        y = torch.from_numpy(labels[i:i + B]).to(a.device)
        logits = model(pixel_values=x).logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    model.train(was_training)
    n = len(imgs)
    return {"accuracy": round(correct / n, 5) if n else None,
            "loss": round(loss_sum / n, 5) if n else None, "n": n}


out = {}

# ---- training ----------------------------------------------------------------------------------
if not a.skip_train:
    torch.manual_seed(seed)
    config = ViTConfig(**vit_config, id2label=id2label,
                       label2id={s: i for i, s in id2label.items()})
    model = ViTForImageClassification._from_config(config, attn_implementation=a.attn)
    model = model.float().to(a.device)
    model.train()
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (no_decay if exempt(name, prm) else decay).append(prm)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tr.get("weight_decay", 0.1)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tr["lr"], betas=(tr.get("beta1", 0.9), tr.get("beta2", 0.95)),
        eps=tr.get("eps", 1e-8))
    n_params = sum(prm.numel() for prm in model.parameters())
    n_decayed = sum(prm.numel() for prm in decay)
    N = len(train_imgs)
    log(f"torch: ViTForImageClassification ({model.config._attn_implementation}), {n_params} "
        f"parameters ({n_decayed} decayed), {steps} steps of {B} of {N} training images "
        f"({steps * B / N:.2f} epochs), augment pad {pad} flip {flip}, {a.threads} threads, "
        f"{a.device}")

    aug_rng = Rng(seed).fork(1)
    perm_epoch, perm = -1, None
    losses, evals, train_s = [], [], 0.0
    for it in range(steps):
        t0 = time.perf_counter()
        lr = lr_at(it)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = np.empty(B, np.int64)
        for j, k in enumerate(range(it * B, it * B + B)):
            if k // N != perm_epoch:
                perm_epoch = k // N
                perm = epoch_perm(N, seed, perm_epoch)
            idx[j] = perm[k % N]
        imgs = train_imgs[idx]
        if pad > 0 or flip > 0.0:
            imgs = augment_batch(imgs, aug_rng)
        x = inputs(imgs, lut)
        y = torch.from_numpy(train_labels[idx]).to(a.device)
        opt.zero_grad(set_to_none=True)
        logits = model(pixel_values=x).logits
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        opt.step()
        value = loss.item()
        train_s += time.perf_counter() - t0
        if not math.isfinite(value):
            sys.exit(f"loss is {value} at step {it + 1}")
        losses.append(value)
        if (it + 1) % log_interval == 0 or it + 1 == steps:
            log(json.dumps({"step": it + 1, "loss": round(value, 4), "lr": lr,
                            "grad_norm": round(float(gnorm), 4), "train_s": round(train_s, 1),
                            "images_per_s": round((it + 1) * B / max(train_s, 1e-9), 1)}))
        if (it + 1) % eval_interval == 0 or it + 1 == steps:
            t1 = time.perf_counter()
            v = score(model, val_imgs, val_labels, lut)
            e = {"step": it + 1, "val_loss": v["loss"], "val_accuracy": v["accuracy"]}
            evals.append(e)
            log(json.dumps({**e, "train_s": round(train_s, 1),
                            "eval_s": round(time.perf_counter() - t1, 1)}))

    t0 = time.perf_counter()
    test = score(model, test_imgs, test_labels, lut)
    log(f"torch test: {test} ({time.perf_counter() - t0:.1f}s)")
    tail = losses[-10:]
    out["torch"] = {
        "steps": steps, "train_seconds": round(train_s, 2),
        "train_minutes": round(train_s / 60, 2),
        "images_per_s": round(steps * B / max(train_s, 1e-9), 1),
        "final_train_loss": round(sum(tail) / len(tail), 5) if tail else None,
        "last_train_loss": round(losses[-1], 5) if losses else None,
        "evals": evals, "val_accuracy": evals[-1]["val_accuracy"] if evals else None,
        "test": test, "parameters": n_params, "decayed_parameters": n_decayed,
        "threads": a.threads, "device": a.device, "attn": model.config._attn_implementation,
        "train_images": N, "limit": a.limit,
    }
    del model, opt


# ---- ferroformer's run: metrics.jsonl, recipe.toml, and with --ferroformer-model its model ----
def load_ferroformer(d):
    """ferroformer's saved model in transformers, strictly, and its input table."""
    for f in ("config.json", "model.safetensors", "preprocessor_config.json"):
        if not os.path.exists(os.path.join(d, f)):
            sys.exit(f"{d}: no {f}")
    model, info = ViTForImageClassification.from_pretrained(
        d, attn_implementation=a.attn, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"{d}: transformers loaded it with {bad}")
    c = model.config
    want = {k: v for k, v in vit_config.items()}
    found = {k: getattr(c, k, None) for k in want}
    diff = {k: (found[k], want[k]) for k in want if found[k] != want[k]}
    if diff:
        log(f"warning: {d}/config.json differs from the recipe (found, expected): {diff}")
    if c.num_labels != n_classes:
        sys.exit(f"{d}: {c.num_labels} labels, the data has {n_classes}")
    with open(os.path.join(d, "preprocessor_config.json")) as f:
        pc = json.load(f)
    size = pc.get("size", {})
    if pc.get("do_resize", True) and (size.get("height"), size.get("width")) != (H, W):
        sys.exit(f"{d}/preprocessor_config.json resizes to {size}; only {H}x{W} is supported")
    m_, s_ = pc.get("image_mean", [0.5]), pc.get("image_std", [0.5])
    if len(m_) != 1 or len(s_) != 1:
        sys.exit(f"{d}/preprocessor_config.json: {len(m_)} means, {len(s_)} stds for 1 channel")
    table = make_lut(pc.get("rescale_factor", 1 / 255), m_[0], s_[0],
                     pc.get("do_rescale", True), pc.get("do_normalize", True))
    return model.float().to(a.device).eval(), pc, table


def processor_check(d, table):
    """transformers' own image processor from d on a few test images vs this script's inputs."""
    try:
        from transformers import AutoImageProcessor
        proc = AutoImageProcessor.from_pretrained(d)
        few = test_imgs[:64]
        got = proc(images=[im[:, :, None].copy() for im in few], return_tensors="pt",
                   input_data_format="channels_last")["pixel_values"].float()
        mine = torch.from_numpy(table[few][:, None])
        if tuple(got.shape) != tuple(mine.shape):
            return {"processor": type(proc).__name__, "error": f"shape {tuple(got.shape)}"}
        return {"processor": type(proc).__name__,
                "max_abs_diff": float((got - mine).abs().max()), "images": len(few)}
    except Exception as e:  # reported, not fatal: the scoring above does not depend on it
        return {"error": f"{type(e).__name__}: {e}"[:300]}


rec = {}
if a.ferroformer_model is not None:
    ff_dir = a.ferroformer_model or a.run
    ff, pc, ff_table = load_ferroformer(ff_dir)
    rec["model_dir"] = ff_dir
    rec["preprocessor"] = {"image_mean": pc.get("image_mean"), "image_std": pc.get("image_std"),
                           "same_as_here": pc.get("image_mean") == [mean]
                           and pc.get("image_std") == [std]}
    t0 = time.perf_counter()
    rec["val"] = score(ff, val_imgs, val_labels, ff_table)
    rec["test"] = score(ff, test_imgs, test_labels, ff_table)
    rec["score_seconds"] = round(time.perf_counter() - t0, 2)
    rec["processor_check"] = processor_check(ff_dir, ff_table)
    log(f"ferroformer model (transformers): val {rec['val']} test {rec['test']}; "
        f"processor check {rec['processor_check']}")
    state = os.path.join(ff_dir, "trainer_state.json")
    if not os.path.exists(state):  # a run directory: its model is the newest checkpoint's
        ck = sorted((int(x.split("-")[1]), x) for x in os.listdir(ff_dir)
                    if x.startswith("checkpoint-") and x.split("-")[1].isdigit()
                    and os.path.exists(os.path.join(ff_dir, x, "trainer_state.json")))
        state = os.path.join(ff_dir, ck[-1][1], "trainer_state.json") if ck else None
    if state:
        with open(state) as f:
            rec["model_step"] = json.load(f)["step"]
    del ff

if a.run:
    metrics = os.path.join(a.run, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        logs = [r for r in recs if "tokens_per_s" in r]
        evs = [r for r in recs if r.get("val_accuracy") is not None]
        if logs:
            last = logs[-1]
            el = max(last["elapsed_s"], 1e-9)
            rec.update({"steps_logged": last["step"], "train_seconds": round(el, 2),
                        "train_minutes": round(el / 60, 2),
                        "images_per_s": round(last["step"] * B / el, 1),
                        "last_logged_train_loss": round(last["loss"], 5)})
        if evs:
            rec["evals"] = [{"step": e["step"], "val_loss": e.get("val_loss"),
                             "val_accuracy": e["val_accuracy"]} for e in evs]
            e = evs[-1]
            rec["last_eval"] = {k: e.get(k) for k in ("step", "val_loss", "val_accuracy",
                                                      "elapsed_s")}
    else:
        log(f"warning: {metrics} not found")
    theirs_path = os.path.join(a.run, "recipe.toml")
    if os.path.exists(theirs_path):
        with open(theirs_path, "rb") as f:
            theirs = tomllib.load(f)
        # (section, key, ferroformer's default)
        keys = [("data", "val_fraction", 0.1), ("data", "split_seed", 1337),
                ("augment", "crop_padding", 0), ("augment", "flip", 0.0),
                ("model", "patch_size", None), ("model", "n_layer", None),
                ("model", "n_head", None), ("model", "n_embd", None),
                ("model", "intermediate_size", None), ("model", "activation_function", "gelu"),
                ("model", "dropout", 0.0), ("model", "layer_norm_epsilon", 1e-5),
                ("model", "init_std", None), ("train", "steps", None),
                ("train", "batch_size", None), ("train", "grad_accum", 1), ("train", "lr", None),
                ("train", "min_lr", None), ("train", "warmup_steps", None),
                ("train", "decay_steps", None), ("train", "weight_decay", 0.1),
                ("train", "beta1", 0.9), ("train", "beta2", 0.95), ("train", "eps", 1e-8),
                ("train", "grad_clip", 1.0), ("train", "label_smoothing", 0.0),
                ("train", "eval_interval", None), ("train", "seed", 1337)]
        differs = {}
        for sec, k, dflt in keys:
            mine_v = recipe.get(sec, {}).get(k, dflt)
            their_v = theirs.get(sec, {}).get(k, dflt)
            if k == "steps":
                mine_v = steps  # --steps included
            if k == "decay_steps":
                mine_v = mine_v if mine_v is not None else steps
                their_v = their_v if their_v is not None else theirs.get("train", {}).get("steps")
            if mine_v != their_v:
                differs[f"{sec}.{k}"] = {"run": their_v, "here": mine_v}
        if differs:
            log(f"warning: {theirs_path} differs from {a.recipe}: {differs}")
            rec["recipe_differs"] = differs
if rec:
    out["ferroformer"] = rec

out["data"] = {"dir": data_dir, "train_images": len(all_imgs), "kept": len(keep),
               "val": len(held), "test": len(test_imgs), "classes": n_classes,
               "mean": mean, "std": std,
               "split_checked": bool(a.run and os.path.exists(
                   os.path.join(a.run, "data", "split.json")))}
out["recipe"] = a.recipe
out["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                   "transformers": transformers.__version__, "numpy": np.__version__}
line = json.dumps(out)
print(line)
if a.json:
    with open(a.json, "w") as f:
        f.write(line + "\n")
