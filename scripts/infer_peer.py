#!/usr/bin/env python3
"""Peer inference timings for `cargo run --release --example infer_bench -- --python ...`.

Loads a ringtrain f32 checkpoint (safetensors, PyTorch's names) into the same model in
PyTorch, and runs it in PyTorch eager or onnxruntime, f32 or int8 (dynamic quantization
of the linear layers, per output channel, as ringtrain's), timing each call at batch 1
and batch 64 on the same inputs. Prints one JSON object: latency percentiles per batch
size, rows per second, and the process's peak RSS.

    python scripts/infer_peer.py --checkpoint mlp.safetensors --model mlp \
        --hidden 512,256 --runtime torch --format int8 --threads 2
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np


def build(args):
    import torch
    from torch import nn
    from safetensors.torch import load_file

    if args.model == "mlp":
        widths = [784] + [int(h) for h in args.hidden.split(",") if h] + [10]
        layers = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers)
    else:

        class Cnn(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
                self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
                self.fc1 = nn.Linear(32 * 7 * 7, 128)
                self.fc2 = nn.Linear(128, 10)

            def forward(self, x):
                x = x.reshape(-1, 1, 28, 28)
                x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
                x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
                x = torch.relu(self.fc1(x.flatten(1)))
                return self.fc2(x)

        model = Cnn()
    model.load_state_dict(load_file(args.checkpoint), strict=True)
    return model.eval()


def runner(args, model, inputs):
    """A function of a batch's numpy rows giving its outputs as numpy."""
    import torch

    torch.set_num_threads(args.threads)
    if args.runtime == "torch":
        if args.format == "int8":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})

        def run(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return run
    import onnxruntime as ort

    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "model.onnx")
    torch.onnx.export(
        model,
        (torch.from_numpy(inputs[:1]),),
        path,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )
    if args.format == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = os.path.join(tmp, "model.int8.onnx")
        quantize_dynamic(path, q, weight_type=QuantType.QInt8, per_channel=True)
        path = q
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["y"], {"x": x})[0]


def time_calls(run, inputs, batch, calls):
    rows = len(inputs)
    for i in range(20):  # warm-up
        run(inputs[(i * batch) % (rows - batch) :][:batch])
    times = []
    for i in range(calls):
        x = inputs[(i * batch) % (rows - batch) :][:batch]
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    times = np.array(times) * 1e6
    return {
        "batch": batch,
        "p50_us": float(np.percentile(times, 50)),
        "p99_us": float(np.percentile(times, 99)),
        "rows_per_sec": batch * 1e6 / float(times.mean()),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", choices=["mlp", "cnn"], required=True)
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--runtime", choices=["torch", "onnxruntime"], required=True)
    p.add_argument("--format", choices=["f32", "int8"], required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--inputs", required=True, help="raw little-endian f32 rows of 784")
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args()
    inputs = np.fromfile(args.inputs, dtype="<f4").reshape(-1, 784)
    run = runner(args, build(args), inputs)
    results = [time_calls(run, inputs, b, args.calls if b == 1 else max(args.calls // 8, 50)) for b in (1, 64)]
    import torch

    print(
        json.dumps(
            {
                "runtime": "PyTorch eager" if args.runtime == "torch" else "onnxruntime",
                "version": torch.__version__ if args.runtime == "torch" else __import__("onnxruntime").__version__,
                "model": args.model,
                "format": args.format,
                "threads": args.threads,
                "results": results,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
