"""Fast Walsh-Hadamard transform vs a dense Hadamard MatMul (or a 1×1 conv with a Hadamard weight, or
the butterfly a PyTorch fwht exports): the same ONNX graph under onnxruntime, under reforge -O2 without
the fwht pass (dense matmul / conv, or the butterfly's slices / adds / concats, under reforge's default
schedules) and under reforge -O2 (the fwht pass), in this process, on the same inputs, 1 thread by default.

    .venv/bin/python benchmarks/wht.py [--sizes 256 1024 4096] [--rows 64] [--conv | --butterfly] [--threads 1]

Each round times every runtime (median of --repeat calls), one after the other; the table shows each
runtime's best round (on a shared machine that filters out rounds another process slowed down).
(Nx) = runtime ms / reforge fwht ms. ``--sizes 4 8 16 32`` gives the small-N crossover the pass's
MIN_N comes from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# TVM sizes its thread pool once, from TVM_NUM_THREADS; set it before importing tvm
_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ["TVM_NUM_THREADS"] = _threads

import onnxruntime as ort  # noqa: E402
import scipy.linalg  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from benchmarks.results import publish  # noqa: E402
import reforge  # noqa: E402
from reforge.bench import set_threads  # noqa: E402
from reforge.passes import FastWHT, registry  # noqa: E402
from reforge.execution import time_calls  # noqa: E402


def butterfly(n: int, rows: int) -> tuple[list, list, list]:
    """log2 n stages over ``[rows, n]``: per block of 2h, (a + b, a − b) of its halves, then ``/ √n``
    (nodes, initializers, shape)."""
    nodes, inits, x, h = [], [], "x", n // 2

    def const(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    while h >= 1:
        s = f"s{h}"
        blocks = helper.make_node("Reshape", [x, const(f"{s}_shape", [rows, n // (2 * h), 2 * h])], [f"{s}_v"])
        a = helper.make_node("Slice", [f"{s}_v", const(f"{s}_0", [0]), const(f"{s}_h", [h]), const(f"{s}_ax", [2])],
                             [f"{s}_a"])
        b = helper.make_node("Slice", [f"{s}_v", f"{s}_h", const(f"{s}_2h", [2 * h]), f"{s}_ax"], [f"{s}_b"])
        add = helper.make_node("Add", [f"{s}_a", f"{s}_b"], [f"{s}_sum"])
        sub = helper.make_node("Sub", [f"{s}_a", f"{s}_b"], [f"{s}_diff"])
        cat = helper.make_node("Concat", [f"{s}_sum", f"{s}_diff"], [f"{s}_cat"], axis=2)
        back = helper.make_node("Reshape", [f"{s}_cat", const(f"{s}_back", [rows, n])], [f"{s}_out"])
        nodes += [blocks, a, b, add, sub, cat, back]
        x, h = f"{s}_out", h // 2
    nodes.append(helper.make_node("Mul", [x, const("scale", 1 / np.sqrt(n), np.float32)], ["y"]))
    return nodes, inits, [rows, n]


def model(n: int, rows: int, conv: bool, chain: bool = False):
    w = (scipy.linalg.hadamard(n) / np.sqrt(n)).astype("float32")
    if chain:
        nodes, inits, shape = butterfly(n, rows)
    elif conv:  # NCHW, channels mixed by H: 1×1 conv, 28×28
        shape = [1, n, 28, 28]
        node = helper.make_node("Conv", ["x", "w"], ["y"])
        w = w.reshape(n, n, 1, 1)
    else:
        shape = [rows, n]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    if not chain:
        nodes, inits = [node], [numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "hadamard", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, shape


def runners(n: int, rows: int, conv: bool, chain: bool, threads: int) -> dict:
    m, shape = model(n, rows, conv, chain)
    x = np.random.default_rng(n).standard_normal(shape).astype("float32")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    dense = reforge.compile(m, disable_passes=["fwht"])
    # rewrite every size, below the pass's MIN_N too, so that the small sizes show the crossover
    registry.PASSES["fwht"] = dataclasses.replace(registry.PASSES["fwht"], make=lambda: FastWHT(min_n=2))
    fast = reforge.compile(m)
    assert sum(next(p for p in fast.manifest["passes"] if p["name"] == "fwht")["rewrites"].values()) == 1
    for art in (dense, fast):
        out = list(art.run({"x": x}).values())[0]
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        assert err <= 1e-5, err
    args = [tvm.runtime.tensor(x)]  # the input copied to TVM once, as onnxruntime reads numpy in place
    dense_main, fast_main = dense.runner.vm["main"], fast.runner.vm["main"]
    return {"onnxruntime": lambda: sess.run(None, {"x": x}),
            "reforge dense": lambda: dense_main(*args),
            "reforge fwht": lambda: fast_main(*args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--rows", type=int, default=64)
    shapes = parser.add_mutually_exclusive_group()
    shapes.add_argument("--conv", action="store_true", help="1×1 conv over N channels at 28×28 instead")
    shapes.add_argument("--butterfly", action="store_true", help="the butterfly (log2 N stages) instead")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_threads(args.threads)
    shape = "1×N×28×28 conv1x1" if args.conv else f"{args.rows}×N butterfly" if args.butterfly else f"{args.rows}×N matmul"
    rows = []
    for n in args.sizes:
        fns = runners(n, args.rows, args.conv, args.butterfly, args.threads)
        rounds = [{name: statistics.median(time_calls(fn, args.repeat, warmup=5)) for name, fn in fns.items()}
                  for _ in range(args.rounds)]
        r = {name: min(rnd[name] for rnd in rounds) for name in fns}
        ours = r["reforge fwht"]
        rows.append(f"| {n} | {shape} | {args.threads} | {r['onnxruntime']:.4f} ({r['onnxruntime'] / ours:.1f}x) | "
                    f"{r['reforge dense']:.4f} ({r['reforge dense'] / ours:.1f}x) | {ours:.4f} |")
        print(rows[-1], flush=True)
    timing = f"ms, median of {args.repeat} calls, best of {args.rounds} rounds; (Nx) = runtime / reforge fwht"
    what = "butterfly" if args.butterfly else "dense"
    table = "\n".join([f"| N | shape | threads | onnxruntime {what} | reforge {what} (no fwht) | reforge fwht |",
                       "|---|---|---|---|---|---|", *rows])
    publish("wht", f"{shape}, {args.threads} thread(s)", table, timing)


if __name__ == "__main__":
    main()
