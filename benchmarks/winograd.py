"""3x3 convs (stride 1, pad 1, batch 1): reforge's Winograd F(2x2, 3x3) operator against its direct
blocked conv and onnxruntime's Conv of the same shape, in this process, at 1 and 2 threads.

    .venv/bin/python benchmarks/winograd.py [--threads 1 2] [--target x86] [--rounds 3]

reforge's kernels run on NCHW[x]c tensors under their default schedules, timed with TVM's
``time_evaluator`` (min of 5 x 10 calls); onnxruntime (all graph optimizations) runs a one-Conv
model (min of 5 means of 10 calls). Each round times all three in turn; the table keeps each one's
best round. (Nx) = that runtime's ms / Winograd ms. The table is also written to
benchmarks/results/winograd.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count()))  # the pool is sized once, at first use

import tvm  # noqa: E402
from tvm import te  # noqa: E402

from benchmarks import onnx_conv  # noqa: E402
from benchmarks.results import publish  # noqa: E402
from reforge import backends  # noqa: E402
from reforge.topi_ext import winograd_nchwc as winograd  # noqa: E402
from reforge.topi_ext.conv2d_nchwc import conv2d_nchwc  # noqa: E402
from reforge.topi_ext.schedules.default import schedule_func  # noqa: E402

LAYERS = [(64, 56), (96, 28), (128, 28), (192, 14), (256, 14), (512, 7), (64, 112)]  # channels in = out, size


def onnxruntime_ms(x: np.ndarray, w: np.ndarray, threads: int) -> float:
    sess = onnx_conv.session(onnx_conv.conv_model(list(x.shape), w), threads)
    for _ in range(3):
        sess.run(None, {"x": x})
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            sess.run(None, {"x": x})
        best = min(best, (time.perf_counter() - start) / 10 * 1e3)
    return best


def reforge_kernels(x: np.ndarray, w: np.ndarray, target) -> dict:
    """Zero-argument timers (ms) of the Winograd and the direct blocked conv on ``x``, ``w``."""
    lanes, dev = target.vector_lanes(), tvm.cpu()
    c, o = w.shape[1], w.shape[0]
    blocked_x = x.reshape(1, c // lanes, lanes, *x.shape[2:]).transpose(0, 1, 3, 4, 2).copy()
    blocked_w = w.reshape(o // lanes, lanes, c // lanes, lanes, 3, 3).transpose(0, 2, 4, 5, 3, 1).copy()
    data = te.placeholder(blocked_x.shape, "float32", "data")
    timers = {}
    for name, weights, build in (
            ("winograd", winograd.transform_kernel(blocked_w),
             lambda k: winograd.conv2d_winograd_nchwc(data, k, (1, 1, 1, 1), "float32")),
            ("direct", blocked_w, lambda k: conv2d_nchwc(data, k, (1, 1), (1, 1, 1, 1), (1, 1), "float32"))):
        kernel = te.placeholder(weights.shape, "float32", "kernel")
        out = build(kernel)
        func, _rule = schedule_func(te.create_prim_func([data, kernel, out]), target.machine)
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target)
        args = [tvm.runtime.tensor(a, dev) for a in (blocked_x, weights)]
        args.append(tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"), dev))
        evaluator = lib.mod.time_evaluator("main", dev, number=10, repeat=5, min_repeat_ms=0)
        timers[name] = lambda evaluator=evaluator, args=args: min(evaluator(*args).results) * 1e3
    return timers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--target", default="x86")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    target = backends.get(args.target)
    machine = f"target {target.name}: mcpu={target.tvm_target.mcpu}, {target.vector_lanes()} lanes"
    print(machine)
    rows = []
    for threads in args.threads:
        tvm.get_global_func("runtime.config_threadpool")(1, threads)  # the pool was sized to all CPUs above
        for channels, size in LAYERS:
            rng = np.random.default_rng(channels + size)
            x = rng.standard_normal((1, channels, size, size)).astype("float32")
            w = rng.standard_normal((channels, channels, 3, 3)).astype("float32")
            timers = reforge_kernels(x, w, target)
            timers["onnxruntime"] = lambda: onnxruntime_ms(x, w, threads)
            best = {name: min(fn() for _ in range(args.rounds)) for name, fn in timers.items()}
            ours = best["winograd"]
            rows.append(f"| {channels}→{channels} @{size}x{size} | {threads} | {ours:.3f} | "
                        f"{best['direct']:.3f} ({best['direct'] / ours:.2f}x) | "
                        f"{best['onnxruntime']:.3f} ({best['onnxruntime'] / ours:.2f}x) |")
            print(rows[-1], flush=True)
    table = "\n".join(["| layer | threads | reforge Winograd | reforge direct | onnxruntime |", "|---|---|---|---|---|",
                       *rows])
    note = (f"{machine}; ms, min of 5 x 10 calls, best of {args.rounds} rounds; "
            "(Nx) = that runtime's ms / Winograd ms")
    publish("winograd", f"Winograd F(2x2, 3x3) against the direct conv and onnxruntime, {target.name}", table, note)


if __name__ == "__main__":
    main()
