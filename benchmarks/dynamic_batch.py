"""Throughput of one --max-batch artifact at batch 1, 4, 5 and 8 against onnxruntime on the same
dynamic-batch ONNX file, and the batch-1 cost of the buckets against the static artifact.

    .venv/bin/python benchmarks/dynamic_batch.py [--size 224] [--max-batch 8] [--threads 1] [--rounds 3]

ResNet-18 (benchmarks/imagenet_shapes.py, random weights and BatchNorm statistics) exported once with
a dynamic batch axis (``dynamic_axes``). reforge compiles that file with ``--max-batch`` (buckets 1,
2, 4, 8: batch 5 runs as 4 + 1) and, for batch 1, also at the static shape 1x3xSxS; onnxruntime runs
the same file. Every call is a whole user call (inputs in, outputs out: ``Artifact.run``,
``InferenceSession.run``), timed ``repeat`` times per round; the runtimes take turns within each
round, and the table gives the median over all rounds: wall time, and this process's CPU time, which
other load on the machine changes less (it does not count the time the process waits for a core).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.imagenet_shapes import ResNet18  # noqa: E402
from benchmarks.results import markdown_table, publish  # noqa: E402
import reforge  # noqa: E402
from reforge.bench import set_threads  # noqa: E402
from tests.zoo import randomize_batchnorm  # noqa: E402

BATCHES = (1, 4, 5, 8)


def export(path: str, size: int) -> None:
    torch.manual_seed(0)
    net = randomize_batchnorm(ResNet18()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, size, size),), path, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


def onnxruntime_session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def timed(call, repeat: int) -> list[tuple[float, float]]:
    """(wall ms, process CPU ms) of ``repeat`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        times.append(((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image side (default 224)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes (default 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per runtime and batch in each round")
    parser.add_argument("--note", default="", help="a line on the conditions, e.g. other load on the machine")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet18_dynamic.onnx")
        export(path, args.size)
        began = time.perf_counter()
        bucketed = reforge.load(reforge.compile(path, max_batch=args.max_batch).save(os.path.join(tmp, "b.tar")),
                                threads=threads)
        bucketed_s = time.perf_counter() - began
        began = time.perf_counter()
        static = reforge.load(reforge.compile(path, input_shapes={"image": (1, 3, args.size, args.size)}).save(
            os.path.join(tmp, "s.tar")), threads=threads)
        static_s = time.perf_counter() - began
        session = onnxruntime_session(path, threads)
    images = np.random.default_rng(0).standard_normal((args.max_batch, 3, args.size, args.size)).astype("float32")
    batches = [b for b in BATCHES if b <= args.max_batch]
    calls = {}
    for b in batches:
        x = images[:b]
        calls[("reforge --max-batch", b)] = lambda x=x: bucketed.run({"image": x})
        calls[("onnxruntime", b)] = lambda x=x: session.run(None, {"image": x})
    calls[("reforge static 1x3xSxS", 1)] = lambda: static.run({"image": images[:1]})
    samples = {key: [] for key in calls}
    for _ in range(args.rounds):
        for key, call in calls.items():
            samples[key] += timed(call, args.repeat)
    ms = {key: statistics.median(w for w, _ in t) for key, t in samples.items()}
    cpu = {key: statistics.median(c for _, c in t) for key, t in samples.items()}
    rows = [[runtime, str(b), f"{ms[(runtime, b)]:.1f}", f"{1e3 * b / ms[(runtime, b)]:.1f}",
             f"{ms[('onnxruntime', b)] / ms[(runtime, b)]:.2f}", f"{cpu[(runtime, b)]:.1f}",
             f"{1e3 * b / cpu[(runtime, b)]:.1f}", f"{cpu[('onnxruntime', b)] / cpu[(runtime, b)]:.2f}"]
            for runtime, b in calls]
    table = markdown_table(["runtime", "batch", "ms per call", "images/s", "x onnxruntime", "CPU ms per call",
                            "images per CPU-s", "x onnxruntime (CPU)"], rows)
    one = cpu[("reforge --max-batch", 1)] / cpu[("reforge static 1x3xSxS", 1)]
    note = (f"ResNet-18 at {args.size}x{args.size}, one dynamic-batch ONNX file; {threads} thread(s) in both "
            f"runtimes; {args.rounds} rounds x {args.repeat} calls, interleaved; median. CPU: this process's CPU "
            f"time. Batch 1, CPU time of the --max-batch artifact / the static artifact: {one:.3f}. Compile: "
            f"--max-batch {args.max_batch} {bucketed_s:.0f} s (buckets {', '.join(map(str, bucketed.batch.buckets))}), "
            f"static {static_s:.0f} s. " + args.note)
    publish("dynamic_batch", "batch buckets against onnxruntime", table, note)


if __name__ == "__main__":
    main()
