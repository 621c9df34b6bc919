"""LayerNorm over channels in the blocked layout: ConvNeXt's block (Liu et al. 2022: depthwise 7×7,
permute to channels-last, LayerNorm, Linear → GELU → Linear, layer scale, permute back, residual)
and the channels-first LayerNorm written with ReduceMean, checked against onnxruntime (RTOL) and built
with the two layout transforms of the edges; a map too narrow to block keeps them in NCHW, correct."""

from __future__ import annotations

import torch
from torch import nn

from .families import blocked_edges_only, compile_and_check, export, kernel_funcs, kernels, make


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int = 32):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(0.5 + torch.rand(c))

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pw2(nn.functional.gelu(self.pw1(y)))
        return x + y.permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    """LayerNorm over axis 1 of NCHW with mean and variance spelled out (ConvNeXt's channels-first form)."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(0.5 + torch.rand(c)), nn.Parameter(torch.randn(c)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


class ConvNeXtStage(nn.Module):
    """Two ConvNeXt blocks, then the downsampling layer (channels-first LayerNorm, 2×2 stride-2 conv)."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(ConvNeXtBlock(c), ConvNeXtBlock(c))
        self.down = nn.Sequential(LayerNorm2d(c), nn.Conv2d(c, 2 * c, 2, 2))

    def forward(self, x):
        return self.down(self.blocks(x))


def test_convnext_stage_layer_norm_over_channels_stays_blocked(tmp_path):
    shape = (1, 32, 14, 14)
    path, _ = blocked_edges_only(make(ConvNeXtStage(32)), shape, tmp_path / "convnext.onnx")
    names = [n for n in kernels(path) if not n.startswith("te_layout_transform")]
    norms = [n for n in names if n.startswith("channel_layer_norm")]
    assert norms, names  # its 3 norms (one kernel for the same shapes)
    # the rest are convs, Linear layers among them (their GELU, layer scale and residual fused)
    assert all(n.startswith(("fused_conv2d", "fused_depthwise")) for n in names if n not in norms), names


def test_layer_norm_over_channels_too_narrow_to_block(tmp_path):
    """3 channels: the depthwise convs and norms stay in NCHW (the widened Linear layers are blocked)."""
    shape = (1, 3, 14, 14)
    path = export(make(ConvNeXtStage(3)), shape, tmp_path / "convnext3.onnx")
    build = compile_and_check(path, shape)
    assert "depthwise_nchwc" not in build["schedules"], build  # 3-channel depthwise convs: below a block of 4
    funcs = kernel_funcs(path)
    norms = [f for name, f in funcs.items() if name.startswith("channel_layer_norm")]
    assert norms and all(len(f.params[0].shape) == 4 for f in norms), sorted(funcs)  # input NCHW, not NCHW[x]c
    widened = [name for name in funcs if name.startswith("fused_conv2d_nchwc") and "erf" in name]  # 3 -> 12, GELU
    assert widened, sorted(funcs)
