"""SiLU / sigmoid / GELU epilogues with exp and erf as vectorizable arithmetic (``topi_ext/fast_math``) against
the math library's scalar calls, and onnxruntime.

    .venv/bin/python benchmarks/fast_math.py [--rounds 15] [--target x86]

Each case is a small ONNX model (PyTorch export, random weights), NCHW in and out, timed end to end at 1 thread
(the process's CPU time of each call, which other work on a shared machine does not inflate as it does the wall
time), the three runtimes interleaved in one process (``rounds`` turns of 5 calls; medians):
- ``scalar``: reforge with the calls left to the math library (``vectorizable_math_module`` off);
- ``vector``: reforge as it is;
- ``onnxruntime``.
Cases: a 1×1 conv 64→256 at 28² with SiLU, GELU or sigmoid after it; an EfficientNet MBConv block (1×1
expand 4x, SiLU; 3×3 depthwise, SiLU; squeeze-excite with SiLU and a sigmoid gate; 1×1 project; residual) at
40 channels, 28²; a ConvNeXt block (7×7 depthwise, LayerNorm over channels, 1×1 4x with GELU, 1×1, layer scale,
residual) at 96 channels, 28². Writes ``benchmarks/results/fast_math.md``.
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
from benchmarks.results import markdown_table, publish  # noqa: E402
from reforge import build  # noqa: E402
from reforge.bench import onnxruntime_runner, set_threads  # noqa: E402
from reforge.execution import time_calls  # noqa: E402


class MBConv(nn.Module):
    """EfficientNet's inverted residual with squeeze-excite (Tan & Le, ICML 2019)."""

    def __init__(self, channels: int, expand: int = 4, squeeze: int = 4):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, channels // squeeze, 1), nn.SiLU(),
                                nn.Conv2d(channels // squeeze, hidden, 1), nn.Sigmoid())
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        return x + self.project(y * self.se(y))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block (Liu et al., CVPR 2022): depthwise 7×7, LayerNorm, pointwise MLP with GELU."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.scale = nn.Parameter(torch.rand(channels))

    def forward(self, x):
        y = self.mlp(self.norm(self.depthwise(x).permute(0, 2, 3, 1))) * self.scale
        return x + y.permute(0, 3, 1, 2)


def cases() -> dict[str, tuple[nn.Module, tuple]]:
    def conv(act):
        return nn.Sequential(nn.Conv2d(64, 256, 1), act)

    return {"1×1 conv 64→256, 28², SiLU": (conv(nn.SiLU()), (1, 64, 28, 28)),
            "1×1 conv 64→256, 28², GELU": (conv(nn.GELU()), (1, 64, 28, 28)),
            "1×1 conv 64→256, 28², sigmoid": (conv(nn.Sigmoid()), (1, 64, 28, 28)),
            "MBConv + SE, 40 ch, 28²": (MBConv(40), (1, 40, 28, 28)),
            "ConvNeXt block, 96 ch, 28²": (ConvNeXtBlock(96), (1, 96, 28, 28))}


def measure(module: nn.Module, shape: tuple, rounds: int, target: str) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "case.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (x,), path, input_names=["x"], output_names=["y"], opset_version=17,
                              dynamo=False)
        with mock.patch.object(build, "vectorizable_math_module", lambda mod: mod):
            scalar = reforge.compile(path, target)
        vector = reforge.compile(path, target)
        ort_run = onnxruntime_runner(path, vector.imported, 1, spin=False)
        feeds, arrays = {"x": x.numpy()}, [x.numpy()]
        ref = module(x).detach().numpy()
        for art in (scalar, vector):
            got = art.runner.run(arrays)[0]
            assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        runners = {"scalar": lambda: scalar.runner.run(arrays), "vector": lambda: vector.runner.run(arrays),
                   "ort": lambda: ort_run(feeds)}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(rounds):
            for name, fn in runners.items():
                times[name] += time_calls(fn, 5, warmup=1, clock=time.process_time)
        return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()
    set_threads(1)
    rows = []
    for name, (module, shape) in cases().items():
        r = measure(module, shape, args.rounds, args.target)
        rows.append([name, f"{r['scalar']:.3f}", f"{r['vector']:.3f}", f"{r['ort']:.3f}",
                     f"{r['scalar'] / r['vector']:.2f}x", f"{r['ort'] / r['vector']:.2f}x"])
        print(rows[-1], flush=True)
    headers = ["case", "scalar calls ms", "vectorized ms", "onnxruntime ms", "vectorized speedup", "vs onnxruntime"]
    publish("fast_math", "exp / sigmoid / erf as vectorizable arithmetic in CPU epilogues, 1 thread",
            markdown_table(headers, rows),
            f"Medians of {args.rounds} interleaved rounds of 5 calls, process CPU time, target {args.target}.")


if __name__ == "__main__":
    main()
