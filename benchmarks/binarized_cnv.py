"""A binarized VGG-style CIFAR-10 net (CNV-w1a1 shape) end to end: reforge -O2 (binarize pass: bit-serial
operators, BatchNorm + sign fused into thresholds) against onnxruntime on the same ONNX file, in this
process, at 1 and 2 threads.

    .venv/bin/python benchmarks/binarized_cnv.py [--repeat 100] [--rounds 3] [--threads 1 2]

Net: 3x3 convs 64-64 | pool | 128-128 | pool | 256-256 | pool (padding 1, 32x32 input), each followed by
BatchNorm and sign; dense 4096-512-512-10 with BatchNorm + sign between. The first conv sees the float
image (float weights), the last dense writes float logits; every other layer has sign() on its
weights and its input (torch.sign, exported to ONNX with opset 17). Each round times both runtimes
(median of --repeat calls); the table shows each one's best round. (Nx) = onnxruntime / reforge.
The exported graph applies Sign to the weight initializers at every run (exporters do not fold
it); the second onnxruntime column runs the same net with the ±1 weights stored instead.
The outputs are compared too (max |Δ|; the logits are integer dot products plus a float BatchNorm).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# TVM sizes its thread pool once, from TVM_NUM_THREADS (see benchmarks/bitserial.py)
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count()))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.results import publish  # noqa: E402
import reforge  # noqa: E402
from reforge.bench import set_threads  # noqa: E402
from reforge.execution import time_calls  # noqa: E402


PRESIGNED = False  # True: the weights are stored as ±1 (no Sign on them in the ONNX graph)


def wsign(w):
    return w if PRESIGNED else torch.sign(w)


class BinaryConv(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(torch.sign(x), wsign(self.weight), padding=1)


class BinaryLinear(nn.Linear):
    def forward(self, x):
        return F.linear(torch.sign(x), wsign(self.weight))


class CNV(nn.Module):
    def __init__(self):
        super().__init__()
        chans = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
        self.convs = nn.ModuleList([nn.Conv2d(3, 64, 3, padding=1, bias=False)] +
                                   [BinaryConv(i, o, 3, bias=False) for i, o in chans[1:]])
        self.cbn = nn.ModuleList([nn.BatchNorm2d(o) for _, o in chans])
        self.fcs = nn.ModuleList([BinaryLinear(4096, 512, bias=False), BinaryLinear(512, 512, bias=False),
                                  BinaryLinear(512, 10, bias=False)])
        self.fbn = nn.ModuleList([nn.BatchNorm1d(512), nn.BatchNorm1d(512), nn.BatchNorm1d(10)])

    def forward(self, x):
        for i, (conv, bn) in enumerate(zip(self.convs, self.cbn)):
            x = torch.sign(bn(conv(x)))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        for fc, bn in zip(self.fcs[:-1], self.fbn[:-1]):
            x = torch.sign(bn(fc(x)))
        return self.fbn[-1](self.fcs[-1](x))


def cnv_onnx(seed: int = 0, presigned: bool = False) -> bytes:
    """The ONNX file; ``presigned``: the same net with Sign(W) computed once into the initializers."""
    global PRESIGNED
    torch.manual_seed(seed)
    net = CNV()
    PRESIGNED = presigned
    if presigned:
        for m in (*net.convs[1:], *net.fcs):
            m.weight.data = torch.sign(m.weight.data)
    for m in net.modules():  # trained-looking statistics: thresholds inside the dot products' range
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-10, 10)
            m.running_var.uniform_(1, 50)
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    net.eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), buf, input_names=["x"], output_names=["y"],
                      dynamo=False, opset_version=17)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, presigned = cnv_onnx(), cnv_onnx(presigned=True)
    art = reforge.compile(onnx.load_from_string(model), "x86", opt_level=2)
    rec = next(p for p in art.manifest["passes"] if p["name"] == "binarize")
    rewrites = f"binarize: {rec['rewrites']}, thresholds {rec['thresholds']}, refused {rec['blocks']['refused']}"
    print(rewrites)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype("float32")
    ours_out = list(art.run({"x": x}).values())[0]
    rows = []
    for threads in args.threads:
        set_threads(threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        pre = ort.InferenceSession(presigned, opts, providers=["CPUExecutionProvider"])
        ref = sess.run(None, {"x": x})[0]
        assert np.array_equal(ref, pre.run(None, {"x": x})[0])
        runners = {"reforge": lambda: art.run({"x": x}), "onnxruntime": lambda: sess.run(None, {"x": x}),
                   "presigned": lambda: pre.run(None, {"x": x})}
        rounds = [{name: statistics.median(time_calls(fn, args.repeat, warmup=10)) for name, fn in runners.items()}
                  for _ in range(args.rounds)]
        best = {name: min(r[name] for r in rounds) for name in runners}
        r = best["reforge"]
        rows.append(f"| CNV-w1a1 1x3x32x32 | {threads} | {r:.3f} | {best['onnxruntime']:.3f} "
                    f"({best['onnxruntime'] / r:.1f}x) | {best['presigned']:.3f} ({best['presigned'] / r:.1f}x) | "
                    f"{np.abs(ours_out - ref).max():.2g} |")
        print(rows[-1], flush=True)
    timing = f"ms, median of {args.repeat} calls, best of {args.rounds} rounds"
    table = "\n".join(["| model | threads | reforge -O2 | onnxruntime (ratio) | onnxruntime, Sign(W) folded (ratio) "
                       "| max abs diff |", "|---|---|---|---|---|---|", *rows])
    publish("binarized_cnv", "CNV-w1a1 end to end", table, f"{rewrites}; {timing}")


if __name__ == "__main__":
    main()
