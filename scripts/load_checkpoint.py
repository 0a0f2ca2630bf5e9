#!/usr/bin/env python3
"""Load a ringtrain checkpoint in PyTorch, to show that one framework's file is the
other's: `safetensors.torch.load_file` reads it as it is, and an MLP built the way
`ringtrain::zoo::mlp` builds it (nn.Sequential of Linear and activation layers, so the
same names: 0.weight, 0.bias, 2.weight, ...) takes it with `load_state_dict(strict=True)`.
Not a test; CI does not run it.

    pip install torch safetensors
    python3 scripts/load_checkpoint.py model.safetensors            # names, shapes, metadata
    python3 scripts/load_checkpoint.py model.safetensors --mlp 784,512,256,10
    python3 scripts/load_checkpoint.py runs/mlp/epoch-0010-step-00000630.safetensors \
        --mlp 784,512,256,10 --prefix model.     # a training run's: model and optimizer

Buffers load too: a BatchNorm2d's running_mean, running_var and num_batches_tracked
(stored as f32; load_state_dict copies it into PyTorch's int64 buffer).
"""

import argparse

from safetensors import safe_open
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--mlp", help="layer widths, input first: build nn.Sequential MLP and load into it")
    ap.add_argument("--activation", default="ReLU", help="torch.nn activation class between layers")
    ap.add_argument("--prefix", default="", help="load only the tensors under this prefix, without it (model.)")
    args = ap.parse_args()

    tensors = load_file(args.path)
    with safe_open(args.path, framework="pt") as f:
        metadata = f.metadata() or {}
    for name, t in sorted(tensors.items()):
        print(f"{name:24} {str(tuple(t.shape)):16} {t.dtype}")
    for key, value in sorted(metadata.items()):
        print(f"metadata {key} = {value}")

    if args.prefix:
        tensors = {k[len(args.prefix):]: v for k, v in tensors.items() if k.startswith(args.prefix)}
        if not tensors:
            raise SystemExit(f"no tensor names start with {args.prefix!r}")

    if args.mlp:
        import torch.nn as nn

        widths = [int(w) for w in args.mlp.split(",")]
        layers = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(a, b))
            if i + 2 < len(widths):
                layers.append(getattr(nn, args.activation)())
        model = nn.Sequential(*layers)
        model.load_state_dict(tensors, strict=True)
        print(f"loaded into {model}")


if __name__ == "__main__":
    main()
