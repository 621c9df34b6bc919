"""Grouped 3×3 convs (ResNeXt-50 32×4d, RegNetX / RegNetY-400MF) and ResNeXt bottleneck blocks:
reforge's blocked grouped conv against the NCHW path it replaced and onnxruntime.

    .venv/bin/python benchmarks/grouped.py [--threads 1] [--rounds 20] [--target x86] [--onnx NET.onnx ...]

Each layer is a one-layer ONNX model (grouped 3×3 conv, bias, ReLU; a block: 1×1 - grouped 3×3 -
1×1 with BatchNorm, ReLU and the residual add), timed end to end, NCHW in and out, the three
runtimes interleaved in one process (``rounds`` turns of 5 runs each; medians; at 1 thread the
process's CPU time of each run, which a machine shared with other work does not inflate as it does
the wall time):
- ``NCHW path``: reforge with grouped convs left in NCHW (TVM's legalization, the generic
  schedule, layout transforms around them), as before the blocked grouped conv;
- ``blocked``: reforge as it is (``grouped_conv2d_nchwc``);
- ``onnxruntime``.
``conv`` columns: the grouped conv's kernel alone in each reforge build (``reforge run --profile``).
``--onnx``: whole networks too (torchvision's resnext50_32x4d, regnet_x_400mf exported to ONNX), the
``conv`` columns then the sum of their grouped convs' kernels.
``--baseline block-diagonal``: the first column is reforge with groups narrower than the block run
on the block-diagonal kernel (k − 1 zero products in k) instead of the rotated form, the kernel
before it; ``--only`` picks layers by name. ``--target x86-avx2`` builds reforge's code for AVX2 (8 lanes, ymm) on the machine at hand, whatever
its ISA (onnxruntime picks its own kernels). Writes ``benchmarks/results/grouped.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from unittest import mock

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reforge  # noqa: E402
from reforge import build  # noqa: E402
from reforge.bench import onnxruntime_runner, set_threads  # noqa: E402
from reforge.execution import time_calls  # noqa: E402
from reforge.topi_ext import grouped_nchwc  # noqa: E402
from reforge.topi_ext.layouts import blocked_conv2d_layouts  # noqa: E402

from benchmarks.results import write_table  # noqa: E402

LAYERS = [  # name, channels, groups, input size, stride
    ("ResNeXt-50 stage 1", 128, 32, 56, 1), ("ResNeXt-50 stage 2", 256, 32, 28, 1),
    ("ResNeXt-50 stage 3", 512, 32, 14, 1), ("ResNeXt-50 stage 4", 1024, 32, 7, 1),
    ("RegNetX-400MF stage 2", 64, 4, 28, 1), ("RegNetX-400MF stage 3", 160, 10, 14, 1),
    ("RegNetX-400MF stage 4", 384, 24, 7, 1), ("RegNetY-400MF stage 1", 48, 6, 56, 1),
    ("RegNetY-400MF stage 3", 208, 26, 14, 1),
]
BLOCKS = [("ResNeXt-50 block, stage 1", 256, 128, 56), ("ResNeXt-50 block, stage 3", 1024, 512, 14)]  # in, width, size


class Bottleneck(nn.Module):
    """ResNeXt's bottleneck: 1×1 → grouped 3×3 (32 groups) → 1×1, each with BatchNorm, ReLU after the
    first two and after the identity residual add."""

    def __init__(self, channels: int, width: int, groups: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, 1, 1, groups=groups, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.relu(self.body(x) + x)


def nchw_grouped_policy(lanes: int, blocks=None):
    """The layout policy with grouped convs (not depthwise) left in NCHW: the path before this kernel."""
    choose = blocked_conv2d_layouts(lanes, blocks)

    def old(call):
        if call.op.name == "relax.nn.conv2d" and int(call.attrs.groups) > 1:
            out_ch, in_ch = (int(d) for d in call.args[1].ty.shape.values[:2])
            if not (in_ch == 1 and int(call.attrs.groups) == out_ch):
                return {"relax.nn.conv2d": ["NCHW", "OIHW"]}
        return choose(call)

    return old


def compile_both(path: str, target: str, baseline: str = "nchw"):
    """reforge's build of ``path`` with the grouped conv in NCHW (or, ``baseline`` "block-diagonal",
    without the rotated form) and as it is."""
    if baseline == "nchw":
        with mock.patch.object(build, "blocked_conv2d_layouts", nchw_grouped_policy):
            old = reforge.compile(path, target)
        assert "grouped_conv2d_nchwc" not in old.manifest["build"]["schedules"], old.manifest["build"]
    else:
        with mock.patch.object(grouped_nchwc, "rotated_group_width", lambda _call: None):
            old = reforge.compile(path, target)
    new = reforge.compile(path, target)
    assert new.manifest["build"]["schedules"].get("grouped_conv2d_nchwc", 0) >= 1, new.manifest["build"]
    return old, new


def grouped_kernels_ms(art, x: np.ndarray, repeat: int) -> float:
    """The grouped convs' kernels, median ms per run: blocked, those named grouped; in NCHW, TVM's
    conv2d functions (the blocked 1×1 convs are named conv2d_nchwc...; a network's dense convs
    are all blocked)."""
    kernels = art.runner.profile([x], repeat).kernels
    grouped = [k for k in kernels if "grouped" in k.name] or [k for k in kernels if "conv2d" in k.name
                                                              and "nchwc" not in k.name]
    return sum(k.ms for k in grouped)


def measure_layer(module: nn.Module, shape: tuple, threads: int, rounds: int, target: str,
                  baseline: str = "nchw") -> dict[str, float]:
    x = torch.randn(*shape)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "layer.onnx")
        torch.onnx.export(module, (x,), path, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
        return measure(path, x.numpy(), threads, rounds, target, baseline)


def measure(path: str, x: np.ndarray, threads: int, rounds: int, target: str,
            baseline: str = "nchw") -> dict[str, float]:
    old, new = compile_both(path, target, baseline)
    ort_run = onnxruntime_runner(path, new.imported, threads)
    feeds, arrays = {"x": x}, [x]
    ref = ort_run(feeds)[0]
    for art in (old, new):
        got = art.runner.run(arrays)[0]
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    runners = {"old": lambda: old.runner.run(arrays), "new": lambda: new.runner.run(arrays),
               "ort": lambda: ort_run(feeds)}
    clock = time.process_time if threads == 1 else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            times[name] += time_calls(fn, 5, warmup=1, clock=clock)
    result = {name: statistics.median(t) for name, t in times.items()}
    result["old conv"], result["new conv"] = grouped_kernels_ms(old, x, 10), grouped_kernels_ms(new, x, 10)
    return result


def row(name: str, r: dict[str, float]) -> str:
    return (f"| {name} | {r['old']:.3f} | {r['new']:.3f} | {r['ort']:.3f} | {r['old'] / r['new']:.2f}x | "
            f"{r['ort'] / r['new']:.2f}x | {r['old conv']:.3f} | {r['new conv']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--target", default="x86", help="reforge's target: x86 (this machine), x86-avx2")
    parser.add_argument("--onnx", nargs="*", default=[], help="whole networks (1×3×224×224 input) to add")
    parser.add_argument("--only-onnx", action="store_true", help="skip the layers and blocks")
    parser.add_argument("--baseline", default="nchw", choices=["nchw", "block-diagonal"],
                        help="the first column: grouped convs in NCHW, or narrow groups on the block-diagonal kernel")
    parser.add_argument("--only", nargs="*", default=None, help="layers / blocks whose name starts with one of these")
    args = parser.parse_args()
    picked = lambda name: args.only is None or any(name.startswith(p) for p in args.only)  # noqa: E731
    old = {"nchw": "NCHW path", "block-diagonal": "block-diagonal"}[args.baseline]
    set_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.onnx's legacy-exporter notice
    torch.manual_seed(0)
    lines = [f"| layer | {old} ms | blocked ms | onnxruntime ms | blocked vs {old} | blocked vs onnxruntime "
             f"| {old} conv ms | blocked conv ms |", "|---|---|---|---|---|---|---|---|"]
    for name, channels, groups, size, stride in [] if args.only_onnx else filter(lambda l: picked(l[0]), LAYERS):
        layer = nn.Sequential(nn.Conv2d(channels, channels, 3, stride, 1, groups=groups), nn.ReLU()).eval()
        lines.append(row(f"{name}: {channels}ch {size}², {groups} groups of {channels // groups}",
                         measure_layer(layer, (1, channels, size, size), args.threads, args.rounds, args.target,
                                       args.baseline)))
        print(lines[-1], flush=True)
    for name, channels, width, size in [] if args.only_onnx else filter(lambda b: picked(b[0]), BLOCKS):
        block = Bottleneck(channels, width)
        for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        lines.append(row(f"{name}: {channels}ch {size}², width {width}",
                         measure_layer(block.eval(), (1, channels, size, size), args.threads, args.rounds,
                                       args.target, args.baseline)))
        print(lines[-1], flush=True)
    for path in args.onnx:
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
        lines.append(row(os.path.basename(path), measure(path, x, args.threads, args.rounds, args.target,
                                                         args.baseline)))
        print(lines[-1], flush=True)
    path = write_table("grouped", f"Grouped 3×3 convs, ResNeXt blocks and networks, reforge target {args.target}, "
                       f"{args.threads} thread(s), against {old}, median ms", "\n".join(lines),
                       note=f"{os.cpu_count()} cores on the machine, shared with other work (the line above counts the "
                       "cores this process may use once its threads are set). "
                       f"Interleaved in one process, {args.rounds} rounds of 5 runs; models NCHW in and out; "
                       + ("process CPU ms a run (1 thread)" if args.threads == 1 else "wall ms") + "; conv columns "
                       "(kernels alone, from the profiler) wall ms.")
    print(path)


if __name__ == "__main__":
    main()
