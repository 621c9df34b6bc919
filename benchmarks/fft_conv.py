"""FFT convolution vs direct convolution: one stride-1 'same' conv (batch 1) under onnxruntime, under
reforge -O2 (direct conv, blocked layout and default schedules) and under reforge -O2 with the
fft-conv pass forced onto it, in this process, on the same inputs, 1 thread by default.

    .venv/bin/python benchmarks/fft_conv.py [--layers 64:64:3 64:64:11] [--threads 1]

A layer is C:H:k (C channels in and out, H×H input, k×k kernel), optionally C:H:k:L to force the FFT
size L. (Nx) = runtime ms / reforge fft ms; then the FFT size L and tile T (outputs per tile side), and
what the pass's cost model picks (with its estimates, ms).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ["TVM_NUM_THREADS"] = _threads

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from benchmarks import onnx_conv  # noqa: E402
from benchmarks.results import publish  # noqa: E402
from reforge.bench import set_threads  # noqa: E402
from reforge.passes import FFTConv, registry  # noqa: E402
from reforge.topi_ext import fft_conv  # noqa: E402


def model(c: int, h: int, k: int, rng):
    w = (rng.standard_normal((c, c, k, k)) / (k * np.sqrt(c))).astype("float32")
    pads = [(k - 1) // 2, (k - 1) // 2, k // 2, k // 2]
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=pads)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, h, h])],
                              [numpy_helper.from_array(w, "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w, pads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["64:64:3", "64:64:5", "64:64:7", "64:64:11", "64:64:15",
                                                        "256:32:3", "256:32:5", "256:32:7", "16:32:5", "16:32:11",
                                                        "16:32:15"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    for layer in args.layers:
        c, h, k, *size = (int(v) for v in layer.split(":"))
        rng = np.random.default_rng(k)
        m, w, pads = model(c, h, k, rng)
        g = fft_conv.geometry((1, c, h, h), w.shape, pads)
        tiling = fft_conv.Tiling(g, size[0]) if size else fft_conv.plan_any(g)
        registry.PASSES["fft-conv"] = dataclasses.replace(registry.PASSES["fft-conv"],
                                                          make=lambda l=tiling.l: FFTConv(policy="always", size=l))
        x = rng.standard_normal((1, c, h, h)).astype("float32")
        r = onnx_conv.time_pass(m, x, args.threads, "fft-conv", ("reforge direct", "reforge fft"), 1e-4,
                                args.repeat, args.rounds)
        ours = r["reforge fft"]
        pick = fft_conv.prefer_fft(g)
        est = f"{fft_conv.direct_ns(g) / 1e6:.1f} / {fft_conv.fft_ns(tiling) / 1e6:.1f}"
        rows.append(f"| {c}→{c} @{h}² k={k} | {r['onnxruntime']:.2f} ({r['onnxruntime'] / ours:.2f}x) | "
                    f"{r['reforge direct']:.2f} ({r['reforge direct'] / ours:.2f}x) | {ours:.2f} | "
                    f"{tiling.l} / {tiling.th} | {'fft L=%d' % pick.l if pick else 'direct'} ({est}) |")
        print(rows[-1], flush=True)
    timing = f"ms, median of {args.repeat} calls, best of {args.rounds} rounds; (Nx) = runtime / reforge fft"
    table = "\n".join([
        "| layer | onnxruntime | reforge direct | reforge fft | FFT size / tile | cost model (est. direct / fft) |",
        "|---|---|---|---|---|---|", *rows])
    publish("fft_conv", f"FFT conv against the direct conv and onnxruntime, {args.threads} thread(s)", table,
            f"{timing}; {args.threads} thread(s)")


if __name__ == "__main__":
    main()
