"""Activations of the mobile CNN families in the blocked layout, fused into their conv's epilogue:
ReLU6 (ONNX ``Clip``, or a ``Max`` / ``Min`` pair), hardswish, hardsigmoid, SiLU, sigmoid, GELU
(erf and tanh forms) and leaky ReLU. Each block is checked against onnxruntime (RTOL) and built with the two
layout transforms of its edges only, its activations inside the conv kernels (no elementwise
kernel of their own)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import reforge

from .families import (RTOL, ConvAct, InvertedResidual, MaxMinReLU6, SiLU, blocked_edges_only, kernels,
                       make, relative_error)

BLOCKS = {  # id: (block, input shape, the fused operators each activation leaves in a conv kernel's name)
    "relu6": (lambda: InvertedResidual(act=nn.ReLU6), (1, 32, 12, 12), "maximum_minimum"),
    "relu6-max-min": (lambda: InvertedResidual(act=MaxMinReLU6), (1, 32, 12, 12), "maximum_minimum"),
    "hardswish": (lambda: InvertedResidual(act=nn.Hardswish), (1, 32, 12, 12), "maximum_minimum_divide_multiply"),
    "hardsigmoid": (lambda: ConvAct(act=nn.Hardsigmoid), (1, 16, 12, 12), "maximum_minimum"),
    "silu": (lambda: InvertedResidual(act=nn.SiLU), (1, 32, 12, 12), "sigmoid_multiply"),
    "silu-spelled": (lambda: ConvAct(act=SiLU), (1, 16, 12, 12), "sigmoid_multiply"),
    "sigmoid": (lambda: ConvAct(act=nn.Sigmoid), (1, 16, 12, 12), "sigmoid"),
    "gelu": (lambda: ConvAct(act=nn.GELU), (1, 16, 12, 12), "erf"),
    "gelu-tanh": (lambda: ConvAct(act=lambda: nn.GELU(approximate="tanh")), (1, 16, 12, 12), "tanh"),
    "leakyrelu": (lambda: ConvAct(act=lambda: nn.LeakyReLU(0.1)), (1, 16, 12, 12), "multiply_maximum"),
}


def _activation_kernels(names: list[str], fused: str) -> int:
    """How many conv kernels fused the activation (their names without numbers hold ``fused``); every
    kernel is a conv or a layout transform."""
    others = [n for n in names if not n.startswith("te_layout_transform")]
    assert all(n.startswith(("fused_conv2d", "fused_depthwise")) for n in others), names
    return sum(fused in re.sub(r"\d+", "", n) for n in others)  # fused_conv2d_nchwc1_add1_maximum1_minimum1


@pytest.mark.parametrize("name", BLOCKS)
def test_activation_stays_blocked_and_fuses_into_its_conv(name, tmp_path):
    make_block, shape, fused = BLOCKS[name]
    path, _ = blocked_edges_only(make(make_block()), shape, tmp_path / f"{name}.onnx")
    assert _activation_kernels(kernels(path), fused) == 2


@pytest.mark.parametrize("act", [nn.ReLU6, nn.Hardswish], ids=["relu6", "hardswish"])
def test_torch_import_clip_stays_blocked(act):
    """torch.export's route spells ReLU6 and hardswish with Relax's ``clip``: blocked and fused too."""
    block, shape = make(InvertedResidual(act=act)), (1, 32, 12, 12)
    art = reforge.compile(block, target="x86", input_shapes={"x": shape})
    assert art.manifest["build"]["layout_transforms"] == 2, art.manifest["build"]
    x = torch.randn(shape)
    with torch.no_grad():
        ref = block(x).numpy()
    assert relative_error(art.run({"x": x.numpy()})["output0"], ref) <= RTOL
    assert _activation_kernels(kernels(block, {"x": shape}), "maximum_minimum") == 2


@pytest.mark.parametrize("act,gate", [(nn.SiLU, nn.Sigmoid), (nn.Hardswish, nn.Hardsigmoid)],
                         ids=["efficientnet", "mobilenet-v3"])
def test_squeeze_excite_stays_blocked(act, gate, tmp_path):
    """MBConv with squeeze-excite: the global pool reads the blocked map, the gate's 1×1 convs run on the
    1×1 map in NCHW[x]c with their ReLU / gate fused, the gate's multiply fused into the second one."""
    shape = (1, 32, 12, 12)
    path, _ = blocked_edges_only(make(InvertedResidual(act=act, se_gate=gate)), shape, tmp_path / "mbconv.onnx")
    names = [n for n in kernels(path) if not n.startswith("te_layout_transform")]
    assert [n for n in names if not n.startswith(("fused_conv2d", "fused_depthwise"))] == ["mean"], names
    assert len(names) == 6, names  # 5 convs (expand, depthwise, the gate's two, project) and the pool: all fused
