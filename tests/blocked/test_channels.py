"""Channel moves in the blocked layout: ShuffleNet-V2's channel split, concat and shuffle
(reshape → transpose → reshape) between blocked convs, checked against onnxruntime (RTOL) and built
with only the two layout transforms of the block's edges; moves that are no channel permutation
or split off-block keep their meaning."""

from __future__ import annotations

import torch
from torch import nn

from .families import blocked_edges_only, compile_and_check, conv_bn, export, kernels, make


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet-V2's unit (Ma et al. 2018): split the channels in halves, one half through 1×1 →
    depthwise 3×3 → 1×1, concat, shuffle with two groups; ``stride`` 2 takes both halves from the
    whole input (a depthwise → 1×1 shortcut branch)."""

    def __init__(self, c: int = 64, stride: int = 1):
        super().__init__()
        half = c // 2
        self.stride = stride
        cin = c if stride == 2 else half
        self.branch = nn.Sequential(*conv_bn(cin, half), nn.ReLU(), *conv_bn(half, half, 3, stride, half),
                                    *conv_bn(half, half), nn.ReLU())
        if stride == 2:
            self.shortcut = nn.Sequential(*conv_bn(c, c, 3, 2, c), *conv_bn(c, half), nn.ReLU())

    def forward(self, x):
        if self.stride == 2:
            y = torch.cat([self.shortcut(x), self.branch(x)], 1)
        else:
            keep, work = torch.split(x, [x.shape[1] // 2] * 2, 1)
            y = torch.cat([keep, self.branch(work)], 1)
        return channel_shuffle(y, 2)


class Stage(nn.Module):
    """A stem conv, then ShuffleNet-V2 units (a strided one, then ``repeats`` stride-1 ones)."""

    def __init__(self, c: int = 64, repeats: int = 2, groups: int = 2):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(16, c), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(c, 2), *(ShuffleUnit(c) for _ in range(repeats)))
        self.groups = groups
        self.head = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.head(channel_shuffle(self.units(self.stem(x)), self.groups))


def test_shufflenet_stage_stays_blocked(tmp_path):
    shape = (1, 16, 16, 16)
    path, _ = blocked_edges_only(make(Stage(groups=4)), shape, tmp_path / "shufflenet.onnx")
    names = kernels(path)
    assert any(n.startswith("channel_permutation") for n in names), names  # the shuffles, as blocked gathers
    assert not any("take" in n or "transpose" in n or "reshape" in n for n in names), names


class OffBlockSplit(nn.Module):
    """A split at channel 24 of 64 (not a multiple of a 16-lane block), a spatial transpose of a square
    map (reshape / transpose back to the input's shape, not a channel permutation): correct, whatever
    the layout."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 1)
        self.left, self.right = nn.Conv2d(24, 32, 1), nn.Conv2d(40, 32, 1)

    def forward(self, x):
        a, b = torch.split(torch.relu(self.conv(x)), [24, 40], 1)
        y = torch.cat([self.left(a), self.right(b)], 1)
        return y.transpose(2, 3).reshape(1, 64, 12, 12)


def test_split_off_the_lane_block_and_spatial_transpose_keep_their_meaning(tmp_path):
    shape = (1, 64, 12, 12)
    build = compile_and_check(export(make(OffBlockSplit()), shape, tmp_path / "offblock.onnx"), shape)
    # the split's input and parts share a block of 8 (gcd 24, 40, 64), so the split falls on block boundaries
    assert build["layout_transforms"] == 2, build
