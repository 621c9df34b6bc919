"""The distinctive blocks of the CNN families deployed on CPUs, written in PyTorch after their papers
(shrunk), and the build checks they share: a block exported with torch.onnx (the TorchScript
exporter, opset 17: ReLU6 as ``Clip``, HardSwish / HardSigmoid as their own operators), compiled for
x86 at -O2, run against onnxruntime on random inputs, and its build read back (layout transforms,
the kernels it fused into)."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tvm import tirx

import reforge
from reforge import backends
from reforge.build import BuildReport, fuse
from reforge.frontend import load
from reforge.pipeline import run_passes

from tests.zoo import randomize_batchnorm

RTOL = 1e-4  # max |out - ref| <= RTOL * max |ref|, float32


class SiLU(nn.Module):
    """x · sigmoid(x), as EfficientNet's code spells it (torch.onnx: Sigmoid, Mul)."""

    def forward(self, x):
        return x * torch.sigmoid(x)


class MaxMinReLU6(nn.Module):
    """ReLU6 as a Max / Min pair (some exporters' spelling)."""

    def forward(self, x):
        return torch.minimum(torch.maximum(x, torch.tensor(0.0)), torch.tensor(6.0))


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class SqueezeExcite(nn.Module):
    """x · gate(W2 · relu(W1 · mean_hw(x) + b1) + b2) (Hu et al. 2018; MobileNet-V3's gate: hardsigmoid)."""

    def __init__(self, c: int, squeezed: int, gate=nn.Sigmoid):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, squeezed, 1), nn.ReLU(),
                                  nn.Conv2d(squeezed, c, 1), gate())

    def forward(self, x):
        return x * self.gate(x)


class InvertedResidual(nn.Module):
    """MobileNet-V2's block (Sandler et al. 2018): 1×1 expansion, 3×3 depthwise, 1×1 linear projection,
    identity shortcut; ``act`` ReLU6 (V2), hardswish (V3) or SiLU (EfficientNet), an optional
    squeeze-excite after the depthwise conv (MobileNet-V3, EfficientNet's MBConv)."""

    def __init__(self, c: int = 32, expand: int = 4, act=nn.ReLU6, se_gate=None):
        super().__init__()
        hidden = c * expand
        layers = [*conv_bn(c, hidden), act(), *conv_bn(hidden, hidden, 3, groups=hidden), act()]
        if se_gate is not None:
            layers.append(SqueezeExcite(hidden, hidden // 4, se_gate))
        self.body = nn.Sequential(*layers, *conv_bn(hidden, c))

    def forward(self, x):
        return x + self.body(x)


class ConvAct(nn.Module):
    """Two 3×3 conv + activation layers (one of them a Winograd conv in the x86 build)."""

    def __init__(self, c: int = 16, act=nn.ReLU):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), act(), nn.Conv2d(2 * c, 2 * c, 3, 2, 1), act())

    def forward(self, x):
        return self.body(x)


def make(block: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(block).eval()


def export(block: nn.Module, shape: tuple[int, ...], path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(block, (torch.randn(shape),), str(path), opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"])
    return str(path)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def compile_and_check(path: str, shape: tuple[int, ...], seed: int = 1) -> dict:
    """Compile the ONNX file for x86, run it against onnxruntime on random inputs (RTOL); its build report."""
    art = reforge.compile(path, target="x86")
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = art.run({"x": x})["y"]
    assert out.shape == ref.shape
    assert relative_error(out, ref) <= RTOL, relative_error(out, ref)
    return art.manifest["build"]


def blocked_edges_only(block: nn.Module, shape: tuple[int, ...], path) -> tuple[str, dict]:
    """Export ``block``, check it (:func:`compile_and_check`) and that its build has only the two layout
    transforms of its edges (into NCHW[x]c at the input, out of it at the output): (ONNX path, build)."""
    path = export(block, shape, path)
    build = compile_and_check(path, shape)
    assert build["layout_transforms"] == 2, build
    return path, build


def kernel_funcs(model, input_shapes: dict | None = None) -> dict[str, tirx.PrimFunc]:
    """The fused kernels of the x86 build of ``model`` at -O2, by name."""
    target = backends.get("x86")
    mod, _ = run_passes(load(model, input_shapes, None).mod, target.passes(2))
    with target.tvm_target:
        fused = fuse(mod, target, BuildReport())
    return {gv.name_hint: f for gv, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)}


def kernels(model, input_shapes: dict | None = None) -> list[str]:
    """The fused kernels' (PrimFunc) names of the x86 build of ``model`` at -O2."""
    return sorted(kernel_funcs(model, input_shapes))
