"""ResNet-18 with and without remove-residual (RMNet reserve-and-merge), reforge on x86, untuned.

    .venv/bin/python benchmarks/rmnet.py [--size 224] [--threads 1] [--repeat 20]

The same ResNet-18 as benchmarks/imagenet_shapes.py (random weights and BatchNorm statistics),
exported to ONNX once; reforge compiles it at -O2 without and with ``--enable-pass
remove-residual`` (the x86 build runs the reserved channels as copies: passes/reserved_copies.py),
and, for comparison, with that lowering switched off (reserved channels as dense Dirac
multiplications). All run in this process on the same inputs, alternating rounds so drift in the
machine's speed hits all. Prints the median ms of each, the ratio, the MACs the pass reports and
the relative difference of the outputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import markdown_table, write_table  # noqa: E402
import reforge  # noqa: E402
import reforge.build  # noqa: E402
from reforge.bench import set_threads  # noqa: E402
from reforge.verify import compare  # noqa: E402
from benchmarks.imagenet_shapes import ResNet18  # noqa: E402
from tests.zoo import randomize_batchnorm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    module = randomize_batchnorm(ResNet18())
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "resnet18.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.randn(1, 3, args.size, args.size),), path, input_names=["image"],
                              opset_version=17, dynamo=False, do_constant_folding=False)
        plain = reforge.compile(path)
        rm = reforge.compile(path, enable_passes=["remove-residual"])
        lowering = reforge.build.reserved_channels_as_copies
        reforge.build.reserved_channels_as_copies = lambda mod: mod  # for comparison only: dense Dirac convs
        try:
            dense = reforge.compile(path, enable_passes=["remove-residual"])
        finally:
            reforge.build.reserved_channels_as_copies = lowering
    record = next(p for p in rm.manifest["passes"] if p["name"] == "remove-residual")
    feeds = plain.imported.random_inputs(0)
    arrays = list(feeds.values())
    _, rel = compare(rm.runner.run(arrays), plain.runner.run(arrays))
    _, rel_dense = compare(dense.runner.run(arrays), plain.runner.run(arrays))
    runs = {"residual": plain, "remove-residual": rm, "  dense reserved": dense}
    times = {name: [] for name in runs}
    for _ in range(args.rounds):  # alternate, so all see the same machine
        for name, art in runs.items():
            times[name] += art.runner.time(arrays, args.repeat)
    base = statistics.median(times["residual"])
    macs = record["macs"]
    print(f"ResNet-18 1x3x{args.size}x{args.size}, x86 -O2, untuned, {args.threads} thread(s), "
          f"median of {len(times['residual'])} runs each")
    print(f"remove-residual: {record['rewrites']}; MACs {macs[0] / 1e9:.3f} G -> {macs[1] / 1e9:.3f} G "
          f"({macs[1] / macs[0]:.2f}x); output vs residual model: {rel:.2g} relative ({rel_dense:.2g} dense)")
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:16s} {med:9.2f} ms  (min {min(ts):.2f})  {med / base:.2f}x")
        rows.append([name.strip(), f"{med:.2f}", f"{min(ts):.2f}", f"{med / base:.2f}x"])
    note = (f"median of {len(times['residual'])} runs each, alternating rounds; untuned. remove-residual: "
            f"{record['rewrites']}; MACs {macs[0] / 1e9:.3f} G -> {macs[1] / 1e9:.3f} G; output vs residual model: "
            f"{rel:.2g} relative ({rel_dense:.2g} dense)")
    table = markdown_table(["build", "median ms", "min ms", "/ residual"], rows)
    print(write_table("rmnet", f"ResNet-18 1x3x{args.size}x{args.size} with and without remove-residual, "
                      f"{args.threads} thread(s)", table, note))


if __name__ == "__main__":
    main()
