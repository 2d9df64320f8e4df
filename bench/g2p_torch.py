"""The grapheme-to-phoneme recipe (recipes/g2p-cmudict.toml) in PyTorch: the same
encoder-decoder Transformer, trained with the same recipe on the same split of the CMU
Pronouncing Dictionary as a ferroformer run, then scored on the test words with the same greedy
decoding and the same word and phoneme error rates. Prints one JSON line:
    {"torch": {"steps", "train_seconds", "train_minutes", "pairs_per_s", "tokens_per_s",
               "target_tokens_per_s", "final_train_loss", "test": {"wer", "per", "n"},
               "decode_seconds", ...},
     "ferroformer": {"train_seconds", "tokens_per_s", "last_eval": {...}, ...},
     "data": {...}, "recipe": path, "versions": {...}}

    ~/.cache/ferroformer-ref/bin/python bench/g2p_torch.py --run runs/g2p-cmudict \
        [--recipe DIR/recipe.toml] [--data PATH/cmudict] [--steps N] [--threads 2]
        [--eval-words N] [--valid-every N] [--valid-words 512] [--decode-batch 256]
        [--log-interval 20] [--decay-embeddings] [--ferroformer-model [DIR]]
        [--skip-train] [--json out.json]

ferroformer's side of the comparison (same split, same test words):
    ferroformer eval seq2seq --model runs/g2p-cmudict --split test --json
or, with this script's decoding, --ferroformer-model (below).

From ferroformer's run directory (--run): the resolved recipe (recipe.toml), the split
(data/split.json: {"train", "valid", "test"} word lists, written when the run starts), the source
vocabulary (tokenizer.json: <pad> 0, </s> 1, <unk> 2, then one token per character of the
training words) and the target vocabulary (target_tokenizer.json: the same specials, then one
token per phoneme; written with the first checkpoint. Until then it is rebuilt as ferroformer
builds it: the sorted phonemes of the training words after the specials, with a warning). The
pronunciations come from the lexicon (--data, default: the recipe's data.corpus, asset:NAME
being $FERROFORMER_CACHE/NAME or ~/.cache/ferroformer/NAME): `word PH1 PH2 ... # comment`
lines, `word(2)` an alternate pronunciation of `word`; with data.stress = false the stress digits
are dropped and pronunciations that become equal merged, as ferroformer does.

Same data: source = the word's characters + </s>, target = its phonemes + </s>; one training
pair per (training word, pronunciation); batch_size pairs drawn with replacement per step
(torch.Generator seeded with train.seed) as ferroformer draws them (train.group_by_length, on by
default: from a random window of neighbours among the pairs sorted by length), padded with <pad>; decoder input = <pad> (the
start token) + the target without its last token; loss = cross-entropy with
train.label_smoothing over the non-padding target positions, averaged over them (with
group_by_length: summed and divided by batch_size * the mean training target length, so the
tokens of short-word and long-word batches weigh alike).

Same model (transformers' MarianMTModel as ferroformer builds it, post-norm): separate source
and target embeddings scaled by sqrt(d_model), plus fixed sinusoidal positions from 0 (sin in
the first half of the vector, cos in the second, angle pos / 10000^(2i/d_model)), then dropout;
n_layer nn.TransformerEncoderLayer / nn.TransformerDecoderLayer (post-norm, LayerNorm eps 1e-5,
dropout on each sub-layer's output before the residual, on the attention probabilities and after
the feed-forward activation) with no final LayerNorm on either stack; source padding masked in
encoder self-attention and in cross-attention, causal decoder self-attention; logits = h @
target_embeddings^T (tied; an untied lm_head when tie_word_embeddings is false) +
final_logits_bias. Initialisation under torch.manual_seed(train.seed): every Linear /
attention projection / embedding weight N(0, 0.02) (the embeddings' pad row 0 and, as
Marian's nn.Embedding(padding_idx=pad), never updated through lookups), biases and
final_logits_bias 0, LayerNorm 1 and 0. float32.

Same optimizer: AdamW(lr, (beta1, beta2), eps), decoupled weight decay on the tensors
ferroformer decays (src/train/optimizer.rs no_decay: not biases, LayerNorm parameters, the
embeddings (embed_tokens) or final_logits_bias; --decay-embeddings decays the last two, as
ferroformer did before that rule named Marian's tensors), clip_grad_norm_(grad_clip), linear warmup over warmup_steps then cosine
decay to min_lr at decay_steps (default: steps), one batch per step (grad_accum must be 1).
The training loop (batch sampling included, periodic validation excluded) is timed;
tokens_per_s counts the source and target tokens trained on (padding excluded), as
ferroformer's metrics.jsonl does; pairs_per_s = steps * batch_size / train_seconds;
target_tokens_per_s counts the target positions alone.

Same evaluation (as `ferroformer eval seq2seq`): batched greedy decoding of the test words (in
split.json's order; --eval-words N: the first N) from the start token <pad>, the argmax at each
step with <pad> banned, until </s> or n_positions tokens; characters unseen in training encode
as <unk>; a reference pronunciation holding a phoneme outside the target vocabulary can never
match. WER = the fraction of words whose output equals none of their pronunciations; PER = the
sum over words of the edit distance to the closest pronunciation over the sum of that
pronunciation's length (ties: the shorter). decode_seconds is this script's decoding, which
recomputes the decoder over the whole prefix at each step (no key/value cache, unlike
ferroformer's): not a fair speed comparison. --valid-every N prints the same rates on the first
--valid-words validation words every N steps (not timed).

--ferroformer-model [DIR] (DIR default: --run, whose model is the newest checkpoint's) also loads
ferroformer's saved model (config.json + model.safetensors, Marian names) into this script's
module and scores it on the same test words with the same decoding ("ferroformer": {"test",
"model_step", ...}); its vocabularies must be the ones used here. Any missing, unexpected or
mismatched tensor is an error. --skip-train scores only that model.
"""
import argparse
import json
import math
import os
import platform
import sys
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--run", default="runs/g2p-cmudict", help="ferroformer run directory")
p.add_argument("--recipe", help="the recipe (default: RUN/recipe.toml)")
p.add_argument("--data", help="the lexicon, cmudict.dict or its directory "
               "(default: the recipe's data.corpus)")
p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's train.steps)")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--eval-words", type=int, help="score only the first N test words")
p.add_argument("--valid-every", type=int, default=0,
               help="every N steps print greedy WER/PER on the first --valid-words valid words")
p.add_argument("--valid-words", type=int, default=512)
p.add_argument("--decode-batch", type=int, default=256, help="words decoded together")
p.add_argument("--log-interval", type=int, help="default: the recipe's train.log_interval")
p.add_argument("--decay-embeddings", action="store_true",
               help="decay the embeddings and final_logits_bias (ferroformer before its "
                    "no_decay rule named Marian's tensors)")
p.add_argument("--ferroformer-model", nargs="?", const="", metavar="DIR",
               help="also score ferroformer's model in DIR (no DIR: --run) on the test words")
p.add_argument("--skip-train", action="store_true", help="only score --ferroformer-model")
p.add_argument("--json", help="also write the summary to this file")
a = p.parse_args()
if a.skip_train and a.ferroformer_model is None:
    p.error("--skip-train needs --ferroformer-model")

torch.set_num_threads(a.threads)
PAD, EOS, UNK = 0, 1, 2  # Marian's ids, ferroformer's SEQ2SEQ_SPECIAL order


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---- recipe -----------------------------------------------------------------------------------
run = a.run
recipe_path = a.recipe or os.path.join(run, "recipe.toml")
with open(recipe_path, "rb") as f:
    recipe = tomllib.load(f)
if recipe.get("objective") != "seq2seq":
    sys.exit(f"{recipe_path}: objective is {recipe.get('objective')!r}, expected 'seq2seq'")
m_cfg, tr, d_cfg = recipe["model"], recipe["train"], recipe.get("data", {})
if tr.get("grad_accum", 1) != 1:
    sys.exit("train.grad_accum > 1 is not supported by this script")
steps = a.steps if a.steps is not None else tr["steps"]
B, context = tr["batch_size"], tr["context"]
warmup = tr["warmup_steps"]
decay_steps = tr.get("decay_steps", steps)  # ferroformer: decay_steps defaults to steps
seed = tr["seed"]
smoothing = tr.get("label_smoothing", 0.0)
group_by_length = tr.get("group_by_length", True)
GROUP_WINDOW = 16  # ferroformer's objective::seq2seq::GROUP_WINDOW
log_interval = a.log_interval or tr.get("log_interval", 20)
d_model, n_head, n_layer = m_cfg["n_embd"], m_cfg["n_head"], m_cfg["n_layer"]
ffn = m_cfg.get("intermediate_size") or 4 * d_model
n_positions = m_cfg.get("n_positions") or context
dropout = m_cfg.get("dropout", 0.0)
activation = m_cfg.get("activation_function", "relu")
if activation not in ("relu", "gelu"):  # ferroformer's "gelu" is the exact (erf) GELU
    sys.exit(f"activation_function {activation!r}: this script supports relu and gelu")
tie = m_cfg.get("tie_word_embeddings", True)


# ---- vocabularies, split, lexicon -------------------------------------------------------------
def read_vocab(path):
    """token -> id from a tokenizers JSON file (model.vocab plus added_tokens)."""
    with open(path) as f:
        j = json.load(f)
    vocab = dict(j["model"]["vocab"])
    for t in j.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    for tok, i in (("<pad>", PAD), ("</s>", EOS), ("<unk>", UNK)):
        if vocab.get(tok) != i:
            sys.exit(f"{path}: {tok} is {vocab.get(tok)}, expected {i}")
    if sorted(vocab.values()) != list(range(len(vocab))):
        sys.exit(f"{path}: the ids are not 0..{len(vocab) - 1}")
    return vocab


def cache_dir():
    return os.environ.get("FERROFORMER_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ferroformer")


def read_cmudict(path):
    """word -> [pronunciation (list of phonemes)], alternates `word(2)` merged, in file order."""
    if os.path.isdir(path):
        path = os.path.join(path, "cmudict.dict")
    lex = {}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            head, *phones = line.split()
            if not phones:
                sys.exit(f"{path}: line {n}: {head!r} has no pronunciation")
            i = head.find("(")
            word = head[:i] if i >= 0 and head.endswith(")") else head
            lex.setdefault(word, []).append(phones)
    return path, lex


with open(os.path.join(run, "data", "split.json")) as f:
    split = json.load(f)
data_arg = a.data or (d_cfg.get("corpus") or [None])[0]
if data_arg is None:
    sys.exit("the recipe names no corpus: pass --data")
if data_arg.startswith("asset:"):
    data_arg = os.path.join(cache_dir(), data_arg[len("asset:"):])
if not os.path.exists(data_arg):
    sys.exit(f"{data_arg}: no such lexicon (pass --data, or set FERROFORMER_CACHE)")
lex_path, lex = read_cmudict(data_arg)
if not d_cfg.get("stress", True):
    # ferroformer's Lexicon::without_stress: digits dropped, equal pronunciations merged.
    for w, prons in lex.items():
        merged = []
        for pron in prons:
            pron = [ph.rstrip("0123456789") for ph in pron]
            if pron not in merged:
                merged.append(pron)
        lex[w] = merged
parts = {k: split[k] for k in ("train", "valid", "test")}
in_split = set().union(*map(set, parts.values()))
missing = [w for w in in_split if w not in lex]
if missing:
    sys.exit(f"{len(missing)} words of split.json are not in {lex_path} (e.g. {missing[:3]}): "
             "another version of the lexicon?")
if len(in_split) != len(lex) or sum(map(len, parts.values())) != len(in_split):
    log(f"warning: split.json holds {len(in_split)} distinct words, {lex_path} {len(lex)}")

src_vocab = read_vocab(os.path.join(run, "tokenizer.json"))
train_chars = sorted({c for w in parts["train"] for c in w})
if sorted(t for t in src_vocab if t not in ("<pad>", "</s>", "<unk>")) != train_chars:
    log("warning: tokenizer.json's characters are not those of split.json's training words")
tgt_path = os.path.join(run, "target_tokenizer.json")
train_phones = sorted({ph for w in parts["train"] for pron in lex[w] for ph in pron})
if os.path.exists(tgt_path):
    tgt_vocab = read_vocab(tgt_path)
    if sorted(t for t in tgt_vocab if t not in ("<pad>", "</s>", "<unk>")) != train_phones:
        log("warning: target_tokenizer.json's phonemes are not those of the training words")
else:
    # ferroformer's Tokenizer::from_symbols over the BTreeSet of the training phonemes (byte
    # order, as Python sorts ASCII) after the specials.
    log(f"warning: no {tgt_path} (written with the first checkpoint): target vocabulary rebuilt "
        "from the training words as ferroformer builds it")
    tgt_vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": UNK}
    for ph in train_phones:
        tgt_vocab[ph] = len(tgt_vocab)
V_src, V_tgt = len(src_vocab), len(tgt_vocab)


def encode_src(word):
    ids = [src_vocab.get(c, UNK) for c in word] + [EOS]
    if len(ids) > n_positions:
        sys.exit(f"{word!r}: {len(ids)} tokens exceed the model's {n_positions} positions")
    return ids


def encode_ref(pron):
    """Target ids without </s>; a phoneme outside the vocabulary becomes -1 (never output)."""
    return [tgt_vocab.get(ph, -1) for ph in pron]


src_ids, tgt_ids = [], []
for w in parts["train"]:
    s = encode_src(w)
    assert UNK not in s, w
    for pron in lex[w]:
        t = [tgt_vocab[ph] for ph in pron] + [EOS]
        if len(t) > n_positions:
            sys.exit(f"{w!r}: {len(t)} tokens exceed the model's {n_positions} positions")
        src_ids.append(s)
        tgt_ids.append(t)
n_pairs = len(src_ids)
mean_target_len = sum(map(len, tgt_ids)) / n_pairs
if group_by_length:
    # ferroformer sorts the training pairs by (source, target) length, stably.
    order = sorted(range(n_pairs), key=lambda i: (len(src_ids[i]), len(tgt_ids[i])))
    src_ids = [src_ids[i] for i in order]
    tgt_ids = [tgt_ids[i] for i in order]


def padded(seqs):
    out = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
    return out


all_src, all_tgt = padded(src_ids), padded(tgt_ids)
src_len = torch.tensor([len(s) for s in src_ids])
tgt_len = torch.tensor([len(t) for t in tgt_ids])


def batch(gen):
    """batch_size pairs with replacement, each equally likely: source, decoder input, labels
    (0 = pad). With train.group_by_length (ferroformer's default) they come from a random
    window of GROUP_WINDOW * batch_size neighbours of the length-sorted pairs, wrapping
    around; otherwise uniformly from all pairs."""
    if group_by_length:
        window = min(GROUP_WINDOW * B, n_pairs)
        start = int(torch.randint(n_pairs, (1,), generator=gen))
        idx = (start + torch.randint(window, (B,), generator=gen)) % n_pairs
    else:
        idx = torch.randint(n_pairs, (B,), generator=gen)
    src = all_src[idx, :int(src_len[idx].max())]
    tgt = all_tgt[idx, :int(tgt_len[idx].max())]
    dec_in = torch.cat([torch.full((B, 1), PAD), tgt[:, :-1]], dim=1)
    return src, dec_in, tgt


def references(words):
    return [[encode_ref(pron) for pron in lex[w]] for w in words]


# ---- model ------------------------------------------------------------------------------------
def sinusoids(n, d):
    """[n, d] fixed positions: sin in the first half, cos in the second (Marian's layout)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(d // 2, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2.0 * i / d)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).float()


class G2PTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        # padding_idx as Marian: the pad row (also the decoder start token) starts at zero and
        # gets no gradient from lookups.
        self.enc_embed_tokens = nn.Embedding(V_src, d_model, padding_idx=PAD)
        self.dec_embed_tokens = nn.Embedding(V_tgt, d_model, padding_idx=PAD)
        self.register_buffer("positions", sinusoids(n_positions, d_model), persistent=False)
        self.scale = math.sqrt(d_model)
        self.drop = nn.Dropout(dropout)
        enc_layer = nn.TransformerEncoderLayer(
            d_model, n_head, ffn, dropout, activation=activation, layer_norm_eps=1e-5,
            batch_first=True, norm_first=False)
        dec_layer = nn.TransformerDecoderLayer(
            d_model, n_head, ffn, dropout, activation=activation, layer_norm_eps=1e-5,
            batch_first=True, norm_first=False)
        # norm=None: Marian's stacks have no final LayerNorm (nn.Transformer would add one).
        self.encoder = nn.TransformerEncoder(enc_layer, n_layer, norm=None,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec_layer, n_layer, norm=None)
        self.lm_head = None if tie else nn.Linear(d_model, V_tgt, bias=False)
        self.final_logits_bias = nn.Parameter(torch.zeros(1, V_tgt))
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, 0.0, 0.02)
                if getattr(mod, "padding_idx", None) is not None:
                    with torch.no_grad():
                        mod.weight[mod.padding_idx].zero_()
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.MultiheadAttention):  # q, k, v projections in one tensor
                nn.init.normal_(mod.in_proj_weight, 0.0, 0.02)
                nn.init.zeros_(mod.in_proj_bias)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def embed(self, table, ids):
        x = table(ids) * self.scale + self.positions[:ids.shape[1]]
        return self.drop(x)

    def encode(self, src):
        pad = src == PAD
        return self.encoder(self.embed(self.enc_embed_tokens, src), src_key_padding_mask=pad), pad

    def decode(self, dec_in, memory, src_pad):
        t = dec_in.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        return self.decoder(self.embed(self.dec_embed_tokens, dec_in), memory, tgt_mask=causal,
                            memory_key_padding_mask=src_pad, tgt_is_causal=True)

    def logits(self, h):
        w = self.dec_embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return h @ w.t() + self.final_logits_bias[0]


def pair_loss(model, src, dec_in, labels):
    memory, src_pad = model.encode(src)
    h = model.decode(dec_in, memory, src_pad)
    keep = labels != PAD
    return F.cross_entropy(model.logits(h[keep]), labels[keep], label_smoothing=smoothing)


@torch.no_grad()
def greedy(model, words):
    """Greedy outputs (target ids without </s>) of `words`, decode_batch at a time."""
    was_training = model.training
    model.eval()
    outs = []
    for i in range(0, len(words), a.decode_batch):
        chunk = words[i:i + a.decode_batch]
        src = padded([encode_src(w) for w in chunk])
        memory, src_pad = model.encode(src)
        n = len(chunk)
        dec = torch.full((n, 1), PAD)
        done = torch.zeros(n, dtype=torch.bool)
        toks = [[] for _ in range(n)]
        for _ in range(n_positions):  # at most n_positions tokens, </s> included
            logits = model.logits(model.decode(dec, memory, src_pad)[:, -1])
            logits[:, PAD] = float("-inf")
            best = logits.argmax(-1)
            for j in (~done).nonzero().flatten().tolist():
                toks[j].append(int(best[j]))
            done |= best == EOS
            if bool(done.all()):
                break
            dec = torch.cat([dec, torch.where(done, PAD, best)[:, None]], dim=1)
        outs.extend(t[:t.index(EOS)] if EOS in t else t for t in toks)
    model.train(was_training)
    return outs


def edit_distance(x, y):
    prev = list(range(len(y) + 1))
    for i, u in enumerate(x):
        cur = [i + 1] + [0] * len(y)
        for j, v in enumerate(y):
            cur[j + 1] = min(prev[j] + (u != v), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[-1]


def error_rates(outputs, refs):
    wrong = edits = length = 0
    for out, rs in zip(outputs, refs):
        dist, n = min(((edit_distance(out, r), len(r)) for r in rs), default=(len(out), 0))
        wrong += dist > 0
        edits += dist
        length += n
    n = len(outputs)
    return {"wer": round(wrong / n, 5) if n else 0.0,
            "per": round(edits / length, 5) if length else 0.0, "n": n}


def lr_at(it):
    lr, min_lr = tr["lr"], tr["min_lr"]
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_steps or decay_steps <= warmup:
        return min_lr
    ratio = (it - warmup) / (decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def exempt(name, prm):
    """ferroformer's no_decay(name, rank) on Marian's names."""
    if prm.dim() < 2:
        return True
    if not a.decay_embeddings and ("embed_tokens" in name or name == "final_logits_bias"):
        return True
    return any(s in name for s in ("wte", "wpe", "embeddings"))


def load_ferroformer(d):
    """ferroformer's Marian model directory in this script's module (strict)."""
    from safetensors.torch import load_file
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    want = {"model_type": "marian", "d_model": d_model, "encoder_layers": n_layer,
            "decoder_layers": n_layer, "encoder_attention_heads": n_head,
            "decoder_attention_heads": n_head, "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn,
            "max_position_embeddings": n_positions, "vocab_size": V_src,
            "decoder_vocab_size": V_tgt, "scale_embedding": True,
            "share_encoder_decoder_embeddings": False, "tie_word_embeddings": tie,
            "activation_function": activation, "pad_token_id": PAD, "eos_token_id": EOS,
            "decoder_start_token_id": PAD}
    bad = {k: (c.get(k), v) for k, v in want.items() if c.get(k) != v}
    if bad:
        sys.exit(f"{d}/config.json differs from the recipe (found, expected): {bad}")
    for name, v in (("tokenizer.json", src_vocab), ("target_tokenizer.json", tgt_vocab)):
        if read_vocab(os.path.join(d, name)) != v:
            sys.exit(f"{d}/{name} is not the vocabulary used here")
    sd = load_file(os.path.join(d, "model.safetensors"))
    if tie:
        sd.pop("lm_head.weight", None)
    sd = {k: v for k, v in sd.items() if not k.endswith("embed_positions.weight")}
    new = {"final_logits_bias": sd.pop("final_logits_bias", torch.zeros(1, V_tgt)),
           "enc_embed_tokens.weight": sd.pop("model.encoder.embed_tokens.weight", None),
           "dec_embed_tokens.weight": sd.pop("model.decoder.embed_tokens.weight", None)}
    if not tie:
        new["lm_head.weight"] = sd.pop("lm_head.weight", None)
    enc_names = {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2", "fc1": "linear1",
                 "fc2": "linear2", "self_attn.out_proj": "self_attn.out_proj"}
    dec_names = {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2",
                 "final_layer_norm": "norm3", "fc1": "linear1", "fc2": "linear2",
                 "self_attn.out_proj": "self_attn.out_proj",
                 "encoder_attn.out_proj": "multihead_attn.out_proj"}
    for side, names, attns in (("encoder", enc_names, {"self_attn": "self_attn"}),
                               ("decoder", dec_names, {"self_attn": "self_attn",
                                                       "encoder_attn": "multihead_attn"})):
        for i in range(n_layer):
            src_p, dst_p = f"model.{side}.layers.{i}.", f"{side}.layers.{i}."
            for ours, theirs in names.items():
                for wb in ("weight", "bias"):
                    new[f"{dst_p}{theirs}.{wb}"] = sd.pop(f"{src_p}{ours}.{wb}", None)
            for ours, theirs in attns.items():
                for wb, dst in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
                    qkv = [sd.pop(f"{src_p}{ours}.{x}_proj.{wb}", None) for x in "qkv"]
                    new[f"{dst_p}{theirs}.{dst}"] = (None if any(t is None for t in qkv)
                                                     else torch.cat(qkv, 0))
    missing = sorted(k for k, v in new.items() if v is None)
    if missing or sd:
        sys.exit(f"{d}/model.safetensors: missing {missing}, unexpected {sorted(sd)}")
    mod = G2PTransformer()
    mod.load_state_dict({k: v.float() for k, v in new.items()}, strict=True)
    return mod.eval()


out = {}
test_words = parts["test"][:a.eval_words] if a.eval_words is not None else parts["test"]
valid_words = parts["valid"][:a.valid_words]

# ---- training ---------------------------------------------------------------------------------
if not a.skip_train:
    torch.manual_seed(seed)
    model = G2PTransformer().float()
    model.train()
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (no_decay if exempt(name, prm) else decay).append(prm)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tr["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tr["lr"], betas=(tr["beta1"], tr["beta2"]), eps=tr["eps"])
    gen = torch.Generator().manual_seed(seed)
    n_params = sum(prm.numel() for prm in model.parameters())
    log(f"torch: {n_params} parameters, vocab {V_src} -> {V_tgt}, {n_pairs} training pairs of "
        f"{len(parts['train'])} words, {steps} steps of {B} pairs, {a.threads} threads")

    losses, train_s, tgt_tokens, tokens = [], 0.0, 0, 0
    for it in range(steps):
        t0 = time.perf_counter()
        lr = lr_at(it)
        for g in opt.param_groups:
            g["lr"] = lr
        src, dec_in, labels = batch(gen)
        opt.zero_grad(set_to_none=True)
        loss = pair_loss(model, src, dec_in, labels)
        if group_by_length:
            loss = loss * (int((labels != PAD).sum()) / (B * mean_target_len))
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tr["grad_clip"])
        opt.step()
        value = loss.item()
        train_s += time.perf_counter() - t0
        if not math.isfinite(value):
            sys.exit(f"loss is {value} at step {it + 1}")
        losses.append(value)
        tgt_tokens += int((labels != PAD).sum())
        tokens += int((src != PAD).sum()) + int((labels != PAD).sum())
        if (it + 1) % log_interval == 0 or it + 1 == steps:
            log(json.dumps({"step": it + 1, "loss": round(value, 4), "lr": lr,
                            "grad_norm": round(float(gnorm), 4), "train_s": round(train_s, 1)}))
        if a.valid_every and ((it + 1) % a.valid_every == 0 or it + 1 == steps):
            t1 = time.perf_counter()
            r = error_rates(greedy(model, valid_words), references(valid_words))
            log(json.dumps({"step": it + 1, "valid": r,
                            "decode_s": round(time.perf_counter() - t1, 1)}))

    t0 = time.perf_counter()
    test = error_rates(greedy(model, test_words), references(test_words))
    decode_s = time.perf_counter() - t0
    log(f"torch test: {test} ({decode_s:.1f}s)")
    tail = losses[-10:]
    out["torch"] = {
        "steps": steps, "train_seconds": round(train_s, 2),
        "train_minutes": round(train_s / 60, 2),
        "pairs_per_s": round(steps * B / max(train_s, 1e-9), 1),
        "tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
        "target_tokens_per_s": round(tgt_tokens / max(train_s, 1e-9), 1),
        "final_train_loss": round(sum(tail) / len(tail), 5) if tail else None,
        "test": test, "decode_seconds": round(decode_s, 2),
        "threads": a.threads, "parameters": n_params,
        "decay_embeddings": a.decay_embeddings,
    }
    del model, opt

# ---- ferroformer's run: its metrics.jsonl, and with --ferroformer-model its model -------------
rec = {}
if a.ferroformer_model is not None:
    ff_dir = a.ferroformer_model or run
    ff = load_ferroformer(ff_dir)
    t0 = time.perf_counter()
    ff_test = error_rates(greedy(ff, test_words), references(test_words))
    rec.update({"model_dir": ff_dir, "test": ff_test,
                "decode_seconds": round(time.perf_counter() - t0, 2)})
    log(f"ferroformer test (this script's decoding): {ff_test}")
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
metrics = os.path.join(run, "metrics.jsonl")
if os.path.exists(metrics):
    with open(metrics) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    logs = [r for r in recs if "tokens_per_s" in r]
    evals = [r for r in recs if "val_loss" in r]
    if logs:
        last = logs[-1]
        rec.update({"steps_logged": last["step"], "train_seconds": round(last["elapsed_s"], 2),
                    "train_minutes": round(last["elapsed_s"] / 60, 2),
                    "tokens_per_s": round(last["tokens_seen"] / last["elapsed_s"], 1),
                    "pairs_per_s": round(last["step"] * B / last["elapsed_s"], 1),
                    "last_logged_train_loss": round(last["loss"], 5)})
    if evals:
        e = evals[-1]
        rec["last_eval"] = {k: e.get(k) for k in
                            ("step", "val_loss", "val_wer", "val_per", "val_words")}
if rec:
    out["ferroformer"] = rec

out["data"] = {"lexicon": lex_path, "train_words": len(parts["train"]), "train_pairs": n_pairs,
               "valid_words": len(parts["valid"]), "test_words": len(parts["test"]),
               "scored_test_words": len(test_words), "source_vocab": V_src,
               "target_vocab": V_tgt}
out["recipe"] = recipe_path
out["versions"] = {"python": platform.python_version(), "torch": torch.__version__}
line = json.dumps(out)
print(line)
if a.json:
    with open(a.json, "w") as f:
        f.write(line + "\n")
