"""Writes tests/fixtures/gpt_reference.safetensors: a small GPT's weights (GPT-2's names
and layouts), a batch of token ids and targets, PyTorch's logits, loss, every gradient,
and the losses of 5 AdamW steps. tests/gpt_reference.rs checks ringtrain against it, as
llm.c checks itself against PyTorch.

    python3 scripts/gpt_reference.py   # needs torch, safetensors, numpy

The model is written out here (nanoGPT-shaped, Hugging Face's Conv1D weight layout
[in, out]) rather than taken from a library, so the file says exactly what is compared.
"""

import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

VOCAB, BLOCK, LAYERS, HEADS, D = 11, 8, 2, 2, 16
BATCH = 3
STEPS = 5
LR, BETAS, EPS, WD = 1e-2, (0.9, 0.95), 1e-8, 0.1

torch.manual_seed(1234)
torch.use_deterministic_algorithms(True)


def param(*shape, std=0.02):
    return torch.nn.Parameter(torch.randn(*shape, dtype=torch.float64) * std)


def build():
    p = {
        "transformer.wte.weight": param(VOCAB, D),
        "transformer.wpe.weight": param(BLOCK, D),
        "transformer.ln_f.weight": torch.nn.Parameter(1 + 0.1 * torch.randn(D, dtype=torch.float64)),
        "transformer.ln_f.bias": param(D, std=0.1),
    }
    for i in range(LAYERS):
        h = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            p[h + ln + ".weight"] = torch.nn.Parameter(1 + 0.1 * torch.randn(D, dtype=torch.float64))
            p[h + ln + ".bias"] = param(D, std=0.1)
        # Larger than GPT-2's 0.02 so the attention is far from uniform and every path
        # carries signal into the comparison.
        p[h + "attn.c_attn.weight"] = param(D, 3 * D, std=0.3)
        p[h + "attn.c_attn.bias"] = param(3 * D, std=0.1)
        p[h + "attn.c_proj.weight"] = param(D, D, std=0.2)
        p[h + "attn.c_proj.bias"] = param(D, std=0.1)
        p[h + "mlp.c_fc.weight"] = param(D, 4 * D, std=0.2)
        p[h + "mlp.c_fc.bias"] = param(4 * D, std=0.1)
        p[h + "mlp.c_proj.weight"] = param(4 * D, D, std=0.1)
        p[h + "mlp.c_proj.bias"] = param(D, std=0.1)
    return p


def forward(p, ids):
    b, t = ids.shape
    x = p["transformer.wte.weight"][ids] + p["transformer.wpe.weight"][torch.arange(t)]
    hd = D // HEADS
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(LAYERS):
        h = f"transformer.h.{i}."
        a = F.layer_norm(x, (D,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], 1e-5)
        qkv = a @ p[h + "attn.c_attn.weight"] + p[h + "attn.c_attn.bias"]
        q, k, v = qkv.split(D, dim=2)
        q, k, v = (z.view(b, t, HEADS, hd).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, D)
        x = x + y @ p[h + "attn.c_proj.weight"] + p[h + "attn.c_proj.bias"]
        m = F.layer_norm(x, (D,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], 1e-5)
        m = F.gelu(m @ p[h + "mlp.c_fc.weight"] + p[h + "mlp.c_fc.bias"], approximate="tanh")
        x = x + m @ p[h + "mlp.c_proj.weight"] + p[h + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (D,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], 1e-5)
    return x @ p["transformer.wte.weight"].T  # lm_head tied to wte


def main():
    p = build()
    ids = torch.randint(0, VOCAB, (BATCH, BLOCK))
    targets = torch.randint(0, VOCAB, (BATCH, BLOCK))
    # Weights are made in float64, then rounded to float32: both sides start from the
    # same float32 values, and the reference itself runs in float64.
    for v in p.values():
        v.data = v.data.float().double()
    out = {k: v.detach().float().clone() for k, v in p.items()}
    logits = forward(p, ids)
    loss = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))
    loss.backward()
    out["ids"] = ids.to(torch.int32)
    out["targets"] = targets.to(torch.int32)
    out["logits"] = logits.detach().float()
    out["loss"] = loss.detach().float().reshape(1)
    for k, v in p.items():
        out["grad." + k] = v.grad.float()
    # AdamW from these weights, in float32 as ringtrain runs it.
    p32 = {k: torch.nn.Parameter(v.detach().float().clone()) for k, v in p.items()}
    opt = torch.optim.AdamW(p32.values(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        logits = forward(p32, ids)
        l = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))
        l.backward()
        opt.step()
        losses.append(l.item())
    out["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "gpt_reference.safetensors")
    save_file(out, path, metadata={
        "vocab": str(VOCAB), "block": str(BLOCK), "layers": str(LAYERS), "heads": str(HEADS),
        "d_model": str(D), "lr": str(LR), "beta1": str(BETAS[0]), "beta2": str(BETAS[1]),
        "eps": str(EPS), "weight_decay": str(WD), "torch": torch.__version__,
    })
    print(f"wrote {path}: loss {loss.item():.6f}, AdamW losses {losses}")


if __name__ == "__main__":
    main()
