"""Blocks whose branches split and concat channels in the blocked layout: GhostNet's Ghost module and
bottleneck (Han et al. 2020: a 1×1 conv makes half the channels, a cheap depthwise conv of those the
other half, concat, keep the first channels) and MixNet's MixConv (Tan & Le 2019: the channels split
into groups, one depthwise conv of another kernel size each, concat), CSPNet's stage (split, one half
through residual bottlenecks, concat) and DeepLab's ASPP (branches and a resized image pool, concat),
checked against onnxruntime (RTOL) and built with only the two layout transforms of the block's edges."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .families import SqueezeExcite, blocked_edges_only, conv_bn, kernels, make


class GhostModule(nn.Module):
    """``out`` channels as concat(primary, cheap(primary))[:, :out], primary a 1×1 conv of ⌈out / 2⌉ channels,
    cheap a 3×3 depthwise conv of it; ReLU after both where ``relu``."""

    def __init__(self, cin: int, out: int, relu: bool = True):
        super().__init__()
        init = -(-out // 2)
        act = [nn.ReLU()] if relu else []
        self.out = out
        self.primary = nn.Sequential(*conv_bn(cin, init), *act)
        self.cheap = nn.Sequential(*conv_bn(init, init, 3, groups=init), *act)

    def forward(self, x):
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, :self.out]


class GhostBottleneck(nn.Module):
    """Ghost module (ReLU) → squeeze-excite (hardsigmoid gate) → Ghost module (linear), identity shortcut."""

    def __init__(self, c: int = 32, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(GhostModule(c, hidden), SqueezeExcite(hidden, hidden // 4, nn.Hardsigmoid),
                                  GhostModule(hidden, c, relu=False))

    def forward(self, x):
        return x + self.body(x)


class MixConv(nn.Module):
    """Depthwise convs of kernel sizes ``sizes`` on equal channel groups of ``c``, concatenated."""

    def __init__(self, c: int, sizes: tuple[int, ...]):
        super().__init__()
        self.parts = [c // len(sizes)] * len(sizes)
        self.convs = nn.ModuleList(nn.Conv2d(p, p, k, 1, k // 2, groups=p, bias=False)
                                   for p, k in zip(self.parts, sizes))

    def forward(self, x):
        return torch.cat([conv(part) for conv, part in zip(self.convs, torch.split(x, self.parts, 1))], 1)


class MixBlock(nn.Module):
    """MixNet's inverted residual: 1×1 expansion, MixConv, BatchNorm, SiLU, 1×1 projection, shortcut."""

    def __init__(self, c: int = 32, hidden: int = 96, sizes: tuple[int, ...] = (3, 5, 7)):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(c, hidden), nn.SiLU(), MixConv(hidden, sizes), nn.BatchNorm2d(hidden),
                                  nn.SiLU(), *conv_bn(hidden, c))

    def forward(self, x):
        return x + self.body(x)


class CSPStage(nn.Module):
    """CSPNet's stage (Wang et al. 2019; timm's CSP-ResNet): a 1×1 conv, split in halves, one half through
    residual bottlenecks, concat with the other, a 1×1 conv; LeakyReLU(0.1) after each conv."""

    def __init__(self, c: int = 32):
        super().__init__()
        half = c // 2
        self.expand = nn.Sequential(*conv_bn(c, c), nn.LeakyReLU(0.1))
        self.bottleneck = nn.Sequential(*conv_bn(half, half // 2), nn.LeakyReLU(0.1),
                                        *conv_bn(half // 2, half, 3), nn.LeakyReLU(0.1))
        self.merge = nn.Sequential(*conv_bn(c, c), nn.LeakyReLU(0.1))

    def forward(self, x):
        keep, work = torch.split(self.expand(x), [x.shape[1] // 2] * 2, 1)
        return self.merge(torch.cat([keep, work + self.bottleneck(work)], 1))


class ASPP(nn.Module):
    """DeepLab-V3's atrous spatial pyramid pooling (Chen et al. 2017): a 1×1 conv, a dilated 3×3 conv and the
    image pool (global mean, 1×1 conv, bilinear resize back to the map), concatenated, a 1×1 conv."""

    def __init__(self, c: int = 32, branch: int = 16):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(*conv_bn(c, branch), nn.ReLU()),
                                       nn.Sequential(nn.Conv2d(c, branch, 3, padding=2, dilation=2, bias=False),
                                                     nn.BatchNorm2d(branch), nn.ReLU())])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, branch, 1), nn.ReLU())
        self.project = nn.Sequential(*conv_bn(3 * branch, c), nn.ReLU())

    def forward(self, x):
        pooled = nn.functional.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


BLOCKS = {  # id: (block, input shape, its depthwise convs)
    "ghost-bottleneck": (lambda: GhostBottleneck(32, 64), (1, 32, 12, 12), 2),
    # halves of 8 channels (NCHW8c) concatenated to 16, read by 16-channel convs and a residual add:
    # one block for all of them, not 8 and 16 (TVM cannot move a tensor between two blocks)
    "ghost-bottleneck-narrow": (lambda: GhostBottleneck(16, 16), (1, 16, 12, 12), 2),
    "csp-stage": (lambda: CSPStage(32), (1, 32, 12, 12), 0),
    # the pooled branch resized in the blocked layout (a conv first: the pool reads a blocked map, not the input)
    "aspp": (lambda: nn.Sequential(*conv_bn(16, 32), nn.ReLU(), ASPP(32)), (1, 16, 12, 12), 0),
    "mixconv-3-5-7": (lambda: MixBlock(32, 96, (3, 5, 7)), (1, 32, 12, 12), 3),
    "mixconv-3-5-7-9": (lambda: MixBlock(32, 128, (3, 5, 7, 9)), (1, 32, 12, 12), 4),
    # MixNet-S's split of 120 channels in 40s, off the block of 120 (15): blocks of 10 for all of them
    "mixconv-120-in-40s": (lambda: MixBlock(40, 120, (3, 5, 7)), (1, 40, 12, 12), 3),
}


@pytest.mark.parametrize("name", BLOCKS)
def test_branch_block_stays_blocked(name, tmp_path):
    make_block, shape, depthwise = BLOCKS[name]
    path, build = blocked_edges_only(make(make_block()), shape, tmp_path / f"{name}.onnx")
    assert build["schedules"].get("depthwise_nchwc", 0) == depthwise, build  # each branch's conv blocked
    # the activations, BatchNorms and the SE gate fused into convs and concats: no elementwise kernel
    kinds = ("fused_conv2d", "fused_depthwise", "depthwise_conv2d_nchwc", "concatenate", "fused_concatenate",
             "strided_slice", "fused_strided_slice", "fused_resize2d", "mean", "te_layout_transform")
    names = kernels(path)
    assert all(n.startswith(kinds) for n in names), names
