#!/usr/bin/env python3
"""PyTorch's GPT training step on the shapes of ringtrain's gpt_bench example, as one
JSON line: the peer of docs/BENCHMARKS.md's GPT table. Run by scripts/bench_gpt.sh,
interleaved with ringtrain's own runs.

    python3 scripts/gpt_peer.py --threads 1 --vocab 94 --d-model 64 --layers 2 \
        --heads 4 --block 64 --batch 16 --steps 30

The model is GPT-2's block (pre-LayerNorm, fused qkv, causal
F.scaled_dot_product_attention, GELU tanh MLP, tied lm_head), trained with
torch.optim.AdamW (lr 1e-3, weight decay 0.1 on every parameter, as the bench does) on
a fixed random batch; a step is forward, cross-entropy, backward, optimizer step.
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, block, layers, heads, d):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def main():
    p = argparse.ArgumentParser()
    for name, default in [("threads", 1), ("vocab", 94), ("d-model", 64), ("layers", 2),
                          ("heads", 4), ("block", 64), ("batch", 16), ("steps", 30), ("warmup", 5)]:
        p.add_argument("--" + name, type=int, default=default)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Gpt(a.vocab, a.block, a.layers, a.heads, a.d_model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ids = torch.randint(0, a.vocab, (a.batch, a.block))
    targets = torch.randint(0, a.vocab, (a.batch, a.block))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(ids).view(-1, a.vocab), targets.view(-1))
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({
        "impl": "pytorch", "version": torch.__version__, "threads": a.threads,
        "shape": {"vocab": a.vocab, "d_model": a.d_model, "layers": a.layers, "heads": a.heads,
                  "block": a.block, "batch": a.batch},
        "median_ms": median * 1e3, "best_ms": times[0] * 1e3,
        "tokens_per_sec": a.batch * a.block / median,
    }))


if __name__ == "__main__":
    main()
