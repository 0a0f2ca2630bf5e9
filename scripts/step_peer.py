#!/usr/bin/env python3
"""PyTorch's training step on the models and shapes of ringtrain's step_bench example, as
one JSON line in the same schema: the peer of docs/BENCHMARKS.md's step tables. Run by
scripts/compare.py and scripts/bench_gpt.sh, interleaved with ringtrain's own runs.

    python3 scripts/step_peer.py --model cnn --threads 1
    python3 scripts/step_peer.py --model gpt --threads 1 --vocab 94 --d-model 64 --layers 2 \
        --heads 4 --block 64 --batch 16 --steps 30

- mlp: 784-512-256-10 with ReLU; cnn: ringtrain's zoo::Cnn layer for layer (conv 3x3
  1->16, ReLU, max-pool 2, conv 3x3 16->32, ReLU, max-pool 2, 1568->128, ReLU, 128->10).
  Both on a fixed random batch of 128 rows of 784 values with labels i % 10, trained
  with torch.optim.SGD (lr 0.01, momentum 0.9), as step_bench does.
- gpt: GPT-2's block (pre-LayerNorm, fused qkv, causal F.scaled_dot_product_attention,
  GELU tanh MLP, tied lm_head), trained with torch.optim.AdamW (lr 1e-3, weight decay 0.1
  on every parameter, as the bench does) on a fixed random batch.

A step is forward, cross-entropy, backward, optimizer step, and reading the loss. With
`--precision bf16` the forward pass and the loss run under
`torch.autocast("cpu", dtype=torch.bfloat16)` (the backward follows the forward's dtypes),
as ringtrain's `--precision bf16` rounds the products' inputs.
"""

import contextlib

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


def autocast(precision):
    if precision == "f32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[precision]
    return torch.autocast("cpu", dtype=dtype)


def classifier(model, batch, precision):
    """The step of an image classifier on random rows, as step_bench's `classifier`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 784)
    labels = torch.arange(batch) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(precision):
            loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        return loss.item()

    return step, {"batch": batch}, batch, None


def gpt(a, batch):
    model = Gpt(a.vocab, a.block, a.layers, a.heads, a.d_model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ids = torch.randint(0, a.vocab, (batch, a.block))
    targets = torch.randint(0, a.vocab, (batch, a.block))

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(a.precision):
            loss = F.cross_entropy(model(ids).view(-1, a.vocab), targets.view(-1))
        loss.backward()
        opt.step()
        return loss.item()

    shape = {"vocab": a.vocab, "d_model": a.d_model, "layers": a.layers, "heads": a.heads,
             "block": a.block, "batch": batch}
    return step, shape, batch, batch * a.block


def mlp_model():
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def cnn_model():
    """ringtrain's zoo::Cnn::new((1, 28, 28), 10), layer for layer."""
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                         nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["mlp", "cnn", "gpt"], default="gpt")
    p.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--batch", type=int, default=None,
                   help="samples per step [default: 128 for mlp and cnn, 16 for gpt]")
    for name, default in [("threads", 1), ("vocab", 94), ("d-model", 64), ("layers", 2),
                          ("heads", 4), ("block", 64), ("steps", 30), ("warmup", 5)]:
        p.add_argument("--" + name, type=int, default=default)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model == "gpt":
        step, shape, samples, tokens = gpt(a, a.batch or 16)
    else:
        model = mlp_model() if a.model == "mlp" else cnn_model()
        step, shape, samples, tokens = classifier(model, a.batch or 128, a.precision)

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(max(a.steps, 1)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    line = {
        "impl": "pytorch", "version": torch.__version__, "model": a.model, "threads": a.threads,
        "precision": a.precision,
        "shape": shape, "median_ms": median * 1e3, "best_ms": times[0] * 1e3,
        "samples_per_sec": samples / median,
    }
    if tokens is not None:
        line["tokens_per_sec"] = tokens / median
    print(json.dumps(line))


if __name__ == "__main__":
    main()
