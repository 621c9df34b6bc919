"""Cost of the exact ternary activation (Sign(0) = 0) and of k-bit activations against the ±1 kernel:
one binary 3x3 conv (pad 1, batch 1), the same packed weights, int32 dot products out, one thread.

    .venv/bin/python benchmarks/bitserial_planes.py [--repeat 100] [--rounds 3]

``±1``: one plane, ``popcount(A xor W)`` per word; ``ternary``: a sign and a mask plane, one loop
with ``popcount((S xor W) and M)`` per word and ``popcount(M)`` shared by the channels; ``k-bit``: k
planes weighted 2^b. Each round times
every variant (median of --repeat calls); the table shows each variant's best round and its ratio to ±1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TVM_NUM_THREADS", "1")

import tvm  # noqa: E402
from tvm import te  # noqa: E402

from benchmarks.results import publish  # noqa: E402
from reforge import backends  # noqa: E402
from reforge.execution import time_calls  # noqa: E402
from reforge.topi_ext import bitserial as bs  # noqa: E402
from reforge.topi_ext.schedules.bitserial import schedule_bitserial_conv2d  # noqa: E402

LAYERS = [(256, 14), (128, 28)]  # channels in = out, height = width
WORD = "uint64"
VARIANTS = [("±1", 1, False), ("ternary", 2, True), ("2-bit", 2, False), ("3-bit", 3, False)]


def runner(c: int, h: int, planes: int, ternary: bool, target, rng):
    """A built conv on random packed inputs of ``planes`` planes; returns the zero-argument call."""
    x = rng.integers(-1, 2, (1, c, h, h)).astype("float32") if ternary or planes == 1 else \
        rng.integers(0, 2 ** planes, (1, c, h, h)).astype("float32")
    w = rng.standard_normal((c, c, 3, 3)).astype("float32")
    pad = (1, 1, 1, 1)
    packed_x = bs.pack_activations_np(x, 1 if ternary else planes, WORD, ternary=ternary)
    packed_w = bs.pack_conv_weights(w, WORD)
    table = bs.border_table(packed_w, c, bs.ConvGeometry(h, h, 3, 3, (1, 1), pad), planes, ternary)
    data = te.placeholder(packed_x.shape, WORD, "data")
    weight = te.placeholder(packed_w.shape, WORD, "weight")
    border = None if table is None else te.placeholder(table.shape, "int32", "border")
    out = bs.bitserial_conv2d(data, weight, border, (1, 1), pad, ternary=ternary)
    func = schedule_bitserial_conv2d(te.create_prim_func([t for t in (data, weight, border, out) if t is not None]),
                                     bs.accumulator_lanes(target, WORD))
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (packed_x, packed_w, table) if a is not None]
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "int32"), dev)
    return lambda: lib["main"](*args, res)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    target = backends.get("x86")
    tvm.get_global_func("runtime.config_threadpool")(1, 1)
    machine = f"target {target.name}: mcpu={target.tvm_target.mcpu}"
    print(machine)
    lines = ["| layer | " + " | ".join(name for name, _, _ in VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for c, h in LAYERS:
        rng = np.random.default_rng(c)
        runners = {name: runner(c, h, planes, ternary, target, rng) for name, planes, ternary in VARIANTS}
        rounds = [{name: statistics.median(time_calls(fn, args.repeat, warmup=5)) for name, fn in runners.items()}
                  for _ in range(args.rounds)]
        best = {name: min(r[name] for r in rounds) for name in runners}
        base = best["±1"]
        cells = [f"{best[name]:.3f} ({best[name] / base:.2f}x)" for name, _, _ in VARIANTS]
        lines.append(f"| {c}→{c} @{h}x{h} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    timing = f"ms, median of {args.repeat} calls, best of {args.rounds} rounds; (Nx) = variant / ±1"
    publish("bitserial_planes", "±1, ternary and k-bit activations, 1 thread", "\n".join(lines),
            f"{machine}; {timing}")


if __name__ == "__main__":
    main()
