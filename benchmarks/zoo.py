"""Latency of the test zoo's models: reforge -O2 against onnxruntime, PyTorch and reforge -O0,
each measured in this process on the same inputs (median of --repeat runs after warm-up).

    .venv/bin/python benchmarks/zoo.py [--threads 1] [--repeat 30]

The ONNX file each model is compiled from is exported by torch.onnx (BatchNorm kept);
onnxruntime runs that file, PyTorch runs the module, reforge -O0 compiles the same file
without rewriting. The table is also written to benchmarks/results/zoo.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reforge  # noqa: E402
from benchmarks.results import publish  # noqa: E402
from reforge.bench import Timing, baseline_runners, bench  # noqa: E402
from tests.zoo import MODELS  # noqa: E402


def export(entry, folder: str) -> str:
    path = os.path.join(folder, f"{entry.name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(entry.build(), (entry.example(),), path, input_names=[entry.input_name],
                          opset_version=17, dynamo=False, do_constant_folding=False)
    return path


def measure(entry, folder: str, threads: int, repeat: int) -> list[Timing]:
    path = export(entry, folder)
    art = reforge.compile(path)
    runners = baseline_runners(path, art.imported, ["onnxruntime"], threads)
    module = entry.build()

    def run_torch(feeds):
        with torch.no_grad():
            return [module(*(torch.from_numpy(a) for a in feeds.values())).numpy()]

    o0 = reforge.compile(path, opt_level=0)
    runners["torch"] = run_torch
    runners["reforge -O0"] = lambda feeds: o0.runner.run(list(feeds.values()))
    return bench(art, art.imported, runners, threads, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for entry in MODELS:
            results = {t.runtime: t for t in measure(entry, folder, args.threads, args.repeat)}
            ours = results["reforge"].median
            rows.append(f"| {entry.name} | {ours:.2f} | " + " | ".join(
                f"{results[b].median:.2f} ({results[b].median / ours:.2f}x)"
                for b in ("onnxruntime", "torch", "reforge -O0")) + " |")
            print(rows[-1], flush=True)
    note = f"{args.threads} thread(s), median of {args.repeat} runs; (Nx) = baseline time / reforge -O2 time"
    table = "\n".join(["| model | reforge -O2 ms | onnxruntime ms | PyTorch ms | reforge -O0 ms |",
                       "|---|---|---|---|---|", *rows])
    publish("zoo", f"zoo, {args.threads} thread(s), median of {args.repeat} runs", table, note)


if __name__ == "__main__":
    main()
