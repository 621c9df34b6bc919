"""Binary 3x3 convs (pad 1, batch 1): reforge's bit-serial operator against onnxruntime fp32 Conv and
int8 QLinearConv of the same shape, in this process, at 1 and 2 threads (median of --repeat runs).

    .venv/bin/python benchmarks/bitserial.py [--repeat 200] [--rounds 3] [--threads 1 2]

reforge rows: ``xnor`` takes packed ±1 activations ``[N, H, W, 1, CW]`` and writes the int32 dot
products (NHWC), border-corrected for the zero padding; ``xnor+sign`` writes the thresholded sign bits
packed again (what runs between two binary layers); ``pack`` is the activation pack of the float
input (paid once at the first binary layer). Each round times every runtime (median of --repeat calls),
one after the other; the table shows each runtime's best round, which on a shared machine filters out
the rounds another process slowed down. (Nx) = baseline ms / reforge xnor ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# TVM sizes its thread pool once, from TVM_NUM_THREADS (default: half the logical CPUs, i.e. 1 on
# this 2-vCPU VM); config_threadpool can lower the count later but not raise it past that
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count()))

import tvm  # noqa: E402
from tvm import te  # noqa: E402

from benchmarks import onnx_conv  # noqa: E402
from benchmarks.results import publish  # noqa: E402
from reforge import backends  # noqa: E402
from reforge.execution import time_calls  # noqa: E402
from reforge.topi_ext import bitserial as bs  # noqa: E402
from reforge.topi_ext.schedules.bitserial import schedule_bitpack, schedule_bitserial_conv2d  # noqa: E402

LAYERS = [(256, 14), (64, 56)]  # channels in = out, height = width
WORD = "uint64"


def ort_runner(c: int, h: int, int8: bool, threads: int, x: np.ndarray, rng):
    w = rng.integers(-127, 128, (c, c, 3, 3)).astype("int8") if int8 else \
        rng.standard_normal((c, c, 3, 3)).astype("float32")
    sess = onnx_conv.session(onnx_conv.conv_model([1, c, h, h], w), threads)
    feed = {"x": (np.clip(x * 40 + 128, 0, 255).astype("uint8") if int8 else x)}
    return lambda: sess.run(None, feed)


def reforge_runners(c: int, h: int, x: np.ndarray, rng, target) -> dict:
    w = rng.standard_normal((c, c, 3, 3)).astype("float32")
    packed_x, packed_w = bs.pack_activations_np(x, 1, WORD), bs.pack_conv_weights(w, WORD)
    pad = (1, 1, 1, 1)
    table = bs.border_table(packed_w, c, bs.ConvGeometry(h, h, 3, 3, (1, 1), pad))
    thr = rng.integers(-20, 20, c).astype("int32")
    data = te.placeholder(packed_x.shape, WORD, "data")
    weight = te.placeholder(packed_w.shape, WORD, "weight")
    border = te.placeholder(table.shape, "int32", "border")
    threshold = te.placeholder((c,), "int32", "threshold")
    lanes = bs.accumulator_lanes(target, WORD)
    dev = tvm.cpu()

    def build(args, out, schedule):
        lib = tvm.compile(tvm.IRModule({"main": schedule(te.create_prim_func([*args, out]))}),
                          target=target.tvm_target)
        res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)), dev)
        return lib, res

    conv = lambda f: schedule_bitserial_conv2d(f, lanes)  # noqa: E731
    xnor, xnor_out = build([data, weight, border], bs.bitserial_conv2d(data, weight, border, (1, 1), pad), conv)
    sign, sign_out = build([data, weight, border, threshold],
                           bs.bitserial_conv2d(data, weight, border, (1, 1), pad, threshold=threshold), conv)
    xf = te.placeholder(x.shape, "float32", "x")
    pack, pack_out = build([xf], bs.bitpack(xf, 1, WORD), schedule_bitpack)
    tx, tw, tt, tthr, tf = (tvm.runtime.tensor(a, dev) for a in (packed_x, packed_w, table, thr, x))
    xnor["main"](tx, tw, tt, xnor_out)
    return {
        "reforge xnor": lambda: xnor["main"](tx, tw, tt, xnor_out),
        "reforge xnor+sign": lambda: sign["main"](tx, tw, tt, tthr, sign_out),
        "reforge pack": lambda: pack["main"](tf, pack_out),
    }, xnor.mod.inspect_source("asm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    target = backends.get("x86")
    machine = f"target {target.name}: mcpu={target.tvm_target.mcpu}, features {sorted(target.features)}"
    print(machine)
    rows = []
    for threads in args.threads:
        tvm.get_global_func("runtime.config_threadpool")(1, threads)  # the pool was sized to all CPUs above
        for c, h in LAYERS:
            rng = np.random.default_rng(c)
            x = rng.standard_normal((1, c, h, h)).astype("float32")
            runners, asm = reforge_runners(c, h, x, rng, target)
            runners["onnxruntime fp32"] = ort_runner(c, h, False, threads, x, rng)
            runners["onnxruntime int8"] = ort_runner(c, h, True, threads, x, rng)
            rounds = []
            for _ in range(args.rounds):
                rounds.append({name: statistics.median(time_calls(fn, args.repeat, warmup=10))
                               for name, fn in runners.items()})
            r = {name: min(rnd[name] for rnd in rounds) for name in runners}  # each runtime's best round
            ours = r["reforge xnor"]
            fp32, int8 = r["onnxruntime fp32"], r["onnxruntime int8"]
            rows.append(f"| {c}→{c} @{h}x{h} | {threads} | {ours:.3f} | {r['reforge xnor+sign']:.3f} | "
                        f"{r['reforge pack']:.3f} | {fp32:.3f} ({fp32 / ours:.1f}x) | "
                        f"{int8:.3f} ({int8 / ours:.1f}x) |")
            print(rows[-1], flush=True)
    popcounts = (f"asm of the xnor kernel: vpshufb={asm.count('vpshufb')}, vpsadbw={asm.count('vpsadbw')}, "
                 f"vpopcntq={asm.count('vpopcntq')}, scalar popcnt={asm.count(chr(9) + 'popcnt')}")
    timing = f"ms, median of {args.repeat} calls, best of {args.rounds} rounds; (Nx) = baseline / reforge xnor"
    table = "\n".join([
        "| layer | threads | reforge xnor | reforge xnor+sign | reforge pack | onnxruntime fp32 | onnxruntime int8 |",
        "|---|---|---|---|---|---|---|", *rows])
    publish("bitserial", "binary 3x3 conv against onnxruntime fp32 and int8", table,
            f"{machine}; {popcounts}; {timing}")


if __name__ == "__main__":
    main()
