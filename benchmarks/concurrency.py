"""Throughput of one loaded artifact called from 1, 2 and 4 Python threads at once, against one
onnxruntime session called the same way.

    .venv/bin/python benchmarks/concurrency.py [--seconds 2] [--rounds 3]

Each configuration runs its callers for ``seconds`` and counts the calls they finish; the
configurations take turns, round after round, and the table gives each one's median calls per second.
``1 caller, 1 thread`` is the unit of scaling: N callers on N cores should reach N times its rate
(reforge runs overlapping calls single-threaded, so N callers keep one core each). Models: the demo
(examples/smallcnn.onnx, about half a millisecond) and four 3x3 convolutions of 64 channels at 56x56
(about a gigaflop, where the kernels dominate the per-call overhead).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reforge  # noqa: E402
from benchmarks.results import publish  # noqa: E402
from reforge.threads import default_threads  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conv_stack(layers: int = 4, channels: int = 64, size: int = 56) -> bytes:
    """``layers`` x (3x3 conv, pad 1, ReLU) on a 1 x channels x size x size input."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((channels, channels, 3, 3)) / (3 * channels ** 0.5)).astype("float32")
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               [1, channels, size, size])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def rate(call, callers: int, seconds: float) -> tuple[float, float]:
    """Calls per second that ``callers`` threads, each calling ``call`` in a loop, finish together, and
    calls per CPU second of this process (which other load on the machine changes less)."""
    done = [0] * callers
    start, stop = threading.Barrier(callers + 1), threading.Event()

    def loop(k: int) -> None:
        start.wait()
        while not stop.is_set():
            call()
            done[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    began, cpu = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - began), sum(done) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--note", default="", help="a line on the conditions, e.g. other load on the machine")
    args = parser.parse_args()
    cores = default_threads()
    with open(os.path.join(ROOT, "examples", "smallcnn.onnx"), "rb") as f:
        models = {"smallcnn (demo)": f.read(), "4 x conv3x3 64ch 56x56": conv_stack()}
    rows = ["| model | runtime | callers | threads per call | calls/s | x one caller on 1 thread | calls/CPU-s |",
            "|---|---|---:|---|---:|---:|---:|"]
    for title, onnx_bytes in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(onnx_bytes)
            tar = reforge.compile(path).save(os.path.join(tmp, "model.tar"))
            one, every = reforge.load(tar, threads=1), reforge.load(tar)
        x = {s.name: s.random(np.random.default_rng(0)) for s in one.inputs}
        sessions = {}
        for n in (1, 0):  # 0: onnxruntime's default, every core
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = n
            sessions[n] = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        feed = dict(x)
        configs = {("reforge", 1, "1"): lambda: one.run(x),
                   **{("reforge", c, f"{cores} alone, 1 when overlapping"): (lambda: every.run(x)) for c in (1, 2, 4)},
                   ("onnxruntime", 1, "1"): lambda: sessions[1].run(None, feed),
                   **{("onnxruntime", c, f"default ({cores})"): (lambda: sessions[0].run(None, feed))
                      for c in (1, 2, 4)}}
        for call in configs.values():
            call()  # warm up
        samples = {key: [] for key in configs}
        for _ in range(args.rounds):
            for (runtime, callers, _), call in configs.items():
                samples[(runtime, callers, _)].append(rate(call, callers, args.seconds))
        for runtime in ("reforge", "onnxruntime"):
            unit = statistics.median(r for r, _ in samples[(runtime, 1, "1")])
            for (rt, callers, per_call), runs in samples.items():
                if rt == runtime:
                    r, c = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
                    rows.append(f"| {title} | {runtime} | {callers} | {per_call} | {r:.0f} | {r / unit:.2f} "
                                f"| {c:.0f} |")
    note = (f"{args.rounds} rounds of {args.seconds:g} s per configuration, interleaved; median calls/s. "
            "One loaded artifact (one onnxruntime session) shared by every caller. calls/CPU-s: calls per second of "
            "this process's CPU time (all its threads), the cost of a call whatever else runs. " + args.note)
    publish("concurrency", "throughput of concurrent callers", "\n".join(rows), note)


if __name__ == "__main__":
    main()
