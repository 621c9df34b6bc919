"""Channel moves in the blocked layout: ShuffleNet-V2's channel split, concat and shuffle
(reshape → transpose → reshape) between blocked convs, checked against onnxruntime (RTOL) and built
with only the two layout transforms of the block's edges; moves that are no channel permutation
or split off-block keep their meaning."""

from __future__ import annotations

import torch
from torch import nn

from .families import ShuffleStage, blocked_edges_only, compile_and_check, export, kernels, make


def test_shufflenet_stage_stays_blocked(tmp_path):
    shape = (1, 16, 16, 16)
    path, _ = blocked_edges_only(make(ShuffleStage(groups=4)), shape, tmp_path / "shufflenet.onnx")
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
