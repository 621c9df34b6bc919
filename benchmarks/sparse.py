"""Sparse kernels against reforge's dense kernels and onnxruntime: single layers (batch 1) with a
random unstructured fraction of their weights zeroed, under onnxruntime, reforge -O2 with the
sparse pass off (the blocked dense conv / packed dense) and reforge -O2 with the sparse pass forced
on, in this process, interleaved, on the same inputs, 1 thread by default.

    .venv/bin/python benchmarks/sparse.py [--layers conv:256:256:28:1 dense:1024:1000] [--sparsity 50 90]

A layer is conv:C:O:H:k (C→O channels, H×H map, k×k kernel, stride 1, same padding) or dense:K:N.
(Nx) = time / sparse time; the crossover is the lowest sparsity at which the sparse kernel won. The kernel
columns: the layer's kernel alone in each reforge build (the profiler's; the dense build reads and writes the
blocked layout, so a one-layer model of it also transforms its NCHW input and output, which a network does once).
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
from reforge.passes import Sparse, registry  # noqa: E402


def model(layer: str, sparsity: float, rng):
    """An ONNX model of one layer, its weight with ``sparsity`` of its entries zeroed at random; and its input."""
    kind, *dims = layer.split(":")
    if kind == "conv":
        c, o, h, k = (int(d) for d in dims)
        w = (rng.standard_normal((o, c, k, k)) / (k * np.sqrt(c))).astype("float32")
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[(k - 1) // 2, (k - 1) // 2, k // 2, k // 2])
        x_shape, y_shape = [1, c, h, h], [1, o, h, h]
    else:
        c, o = (int(d) for d in dims)
        w = (rng.standard_normal((c, o)) / np.sqrt(c)).astype("float32")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_shape, y_shape = [1, c], [1, o]
    w[rng.random(w.shape) < sparsity] = 0
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w, "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, rng.standard_normal(x_shape).astype("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["conv:256:256:28:1", "conv:256:256:14:1",
                                                        "conv:128:128:28:3", "dense:1024:1000"])
    parser.add_argument("--sparsity", nargs="+", type=int, default=[50, 70, 90, 95])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_threads(args.threads)
    registry.PASSES["sparse"] = dataclasses.replace(registry.PASSES["sparse"], make=lambda: Sparse(min_sparsity=0))
    rows = []
    for layer in args.layers:
        won = []
        for pct in args.sparsity:
            m, x = model(layer, pct / 100, np.random.default_rng(pct))
            kernels = {}
            r = onnx_conv.time_pass(m, x, args.threads, "sparse", ("reforge dense", "reforge sparse"), 1e-5,
                                    args.repeat, args.rounds, kernels)
            ours, ours_kernel = r["reforge sparse"], kernels["reforge sparse"]
            if ours < r["reforge dense"]:
                won.append(pct)
            rows.append(f"| {layer} | {pct} % | {r['onnxruntime']:.3f} ({r['onnxruntime'] / ours:.2f}x) | "
                        f"{r['reforge dense']:.3f} ({r['reforge dense'] / ours:.2f}x) | {ours:.3f} | "
                        f"{kernels['reforge dense']:.3f} ({kernels['reforge dense'] / ours_kernel:.2f}x) | "
                        f"{ours_kernel:.3f} |")
            print(rows[-1], flush=True)
        rows.append(f"| {layer} | crossover | sparse faster from {min(won) if won else '(never)'} % of the "
                    f"sparsities run | | | | |")
    timing = (f"ms, median of {args.repeat} calls, best of {args.rounds} interleaved rounds; (Nx) = time / "
              f"reforge sparse; {args.threads} thread(s); a shared machine loaded by other sessions")
    header = "| layer | sparsity | onnxruntime | reforge dense | reforge sparse | dense kernel | sparse kernel |"
    table = "\n".join([header, "|---|---|---|---|---|---|---|", *rows])
    publish("sparse", f"Sparse kernels against the dense kernels and onnxruntime, {args.threads} thread(s)",
            table, timing)


if __name__ == "__main__":
    main()
