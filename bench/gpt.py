"""A lean nanoGPT-style GPT-2 in PyTorch, matching ferroformer's `models/gpt2.rs` exactly:
biases everywhere, pre-norm blocks, learned positions, tied head, GPT-2 initialisation,
AdamW with no decay on biases, norms and embeddings. Shared by the bench scripts."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, h, act):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(c, eps=1e-5)
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c, eps=1e-5)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)
        self.act = act

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=self.act))


class GPT(nn.Module):
    def __init__(self, vocab, n_pos, c, n_layer, h, act="none", tied=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(n_pos, c)
        self.h = nn.ModuleList([Block(c, h, act) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(c, eps=1e-5)
        self.lm_head = None if tied else nn.Linear(c, vocab, bias=False)
        for n, p in self.named_parameters():
            if n.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in n:
                nn.init.ones_(p)
            elif n.endswith("c_proj.weight") or n.endswith("mlp_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx, targets=None):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.h:
            x = blk(x)
        x = self.ln_f(x)
        logits = x @ (self.wte.weight if self.lm_head is None else self.lm_head.weight).t()
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def optimizer(self, lr, wd, betas, eps=1e-8):
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            (no_decay if p.dim() < 2 or n.startswith("wte") or n.startswith("wpe") else decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=lr, betas=betas, eps=eps)
