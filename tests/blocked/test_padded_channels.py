"""Channel counts with no good block padded with zero channels (``passes/pad_channels.py``): ShuffleNet-V2's
58- and 116-channel halves (blocks of 2 and 4 on 16 lanes) in 64 and 128, their split (ONNX Split or
Slice), concat and shuffle (Reshape → Transpose → Reshape, as torchvision exports it) as gathers of the
padded tensors; checked against onnxruntime (RTOL) with only the two layout transforms of the block's
edges. Where a shuffled tensor is read by operators that do not keep zeros (sigmoid, x + 3, a grouped conv,
the output), they read the real channels only."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from tvm import relax

from reforge import backends
from reforge.build import blocked_layout, layout_forms
from reforge.frontend import load
from reforge.passes.graph import bindings, const_value, op_name, tensor_shape
from reforge.passes.pad_channels import narrow_block, pad_channels, padded_channels
from reforge.pipeline import run_passes

from .families import (ShuffleStage, ShuffleUnit, blocked_edges_only, channel_shuffle, compile_and_check, conv_bn,
                       export, kernels, make)

LANES = 16  # AVX-512's fp32 lanes: the layouts asserted here are built for them, whatever this machine has


def rewritten(path: str):
    """The -O2 x86 passes' module of the ONNX file at ``path``."""
    mod, _ = run_passes(load(path, None, None).mod, backends.get("x86").passes(2))
    return mod


def conv_layouts(path: str) -> set[str]:
    """The data layouts of the convs of the blocked layout at ``LANES`` lanes."""
    mod, _ = blocked_layout(rewritten(path), LANES)
    return {str(b.value.attrs.data_layout) for b in bindings(mod["main"]) if op_name(b.value) == "relax.nn.conv2d"}


def test_padded_counts():
    assert padded_channels(58, 16) == 64 and padded_channels(116, 16) == 128 and padded_channels(92, 16) == 96
    assert padded_channels(29, 8) == 32  # AVX2: 8 lanes
    # a block narrower than the lanes, padded for a little more work (1×1 convs, 1 thread, loaded Xeon: 440 in blocks
    # of 11 -> 448 in 16s 2.6x, 232 in 8s -> 240 1.4x, 104 in 13s -> 112 1.2x); where the pad costs more than a
    # quarter (24, 6, 36) or more than the lanes gain (a block of 15 is a vector of 8 lanes: 120 -> 128 pays), as they are
    assert padded_channels(232, 16) == 240 and padded_channels(440, 16) == 448 and padded_channels(104, 16) == 112
    assert padded_channels(120, 16) == 128 and padded_channels(24, 16) is None
    assert padded_channels(6, 16) is None and padded_channels(36, 16) is None and padded_channels(64, 16) is None
    # a block of 10 (LLVM splits it 8 + 2): padded, to an even number of vectors where that adds at most 1/16
    assert padded_channels(1000, 16) == 1024 and padded_channels(250, 16) == 256
    assert padded_channels(1000, 8) is None
    assert padded_channels(40, 8) is None and padded_channels(110, 8) == 112  # AVX2: 40 in blocks of 8; 110 in 5s
    assert narrow_block(58, 16) and not narrow_block(232, 16) and not narrow_block(440, 16)


class PooledClassifier(nn.Module):
    """SqueezeNet's head: a 1×1 conv to 250 classes (blocks of 10 on 16 lanes), ReLU, global average pool,
    flatten: the conv writes 256 channels in blocks of 16, the pooled values are gathered back to 250."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 250, 1)

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1), 1)


def test_a_pooled_head_of_1000_classes_style_runs_in_blocks_of_16(tmp_path):
    shape = (1, 32, 13, 13)
    path, _ = blocked_edges_only(make(PooledClassifier()), shape, tmp_path / "head.onnx")
    assert conv_layouts(path) == {"NCHW16c"}  # 250 alone: blocks of 10
    mod, _ = blocked_layout(rewritten(path), LANES)
    convs = [b.value for b in bindings(mod["main"]) if op_name(b.value) == "relax.nn.conv2d"]
    assert [int(tensor_shape(c)[1]) * int(tensor_shape(c)[4]) for c in convs] == [256]


@pytest.mark.parametrize("split", ["split", "slice"])
def test_shufflenet_halves_of_58_run_in_blocks_of_16(tmp_path, split):
    shape = (1, 16, 16, 16)
    path, _ = blocked_edges_only(make(ShuffleStage(116, split=split)), shape, tmp_path / f"shuffle_{split}.onnx")
    assert conv_layouts(path) == {"NCHW16c"}  # 58 alone would give blocks of 2
    names = kernels(path)
    assert any(n.startswith("channel_permutation") for n in names), names  # the shuffles, as blocked gathers
    assert not any("take" in n or "transpose" in n or "strided_slice" in n for n in names), names


class TwoStages(nn.Module):
    """ShuffleNet-V2's stage 3 → 4 boundary: units of 116-channel halves (padded to 128), then of 232 (blocks of
    8, padded to 240): the shuffle between them is a gather between padded 16-blocks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(16, 232), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(232, 2), ShuffleUnit(232), ShuffleUnit(464, 2, cin=232),
                                   ShuffleUnit(464))
        self.head = nn.Conv2d(464, 16, 1)

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


def test_stage_boundary_is_one_gather_between_blocks(tmp_path):
    shape = (1, 16, 16, 16)
    path, _ = blocked_edges_only(make(TwoStages()), shape, tmp_path / "stages.onnx")
    assert conv_layouts(path) == {"NCHW16c"}


class ZeroKeepingChain(nn.Module):
    """58 channels through the operators that keep zero channels: ReLU6 (Clip: max / min), a depthwise conv,
    tanh, max and average pooling, a per-channel scale and shift, a residual add; then a 1×1 conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(16, 58), nn.ReLU6())
        self.depthwise = nn.Sequential(*conv_bn(58, 58, 3, groups=58), nn.Tanh())
        self.pools = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1))
        self.scale, self.shift = nn.Parameter(torch.rand(1, 58, 1, 1) + 0.5), nn.Parameter(torch.randn(1, 58, 1, 1))
        self.head = nn.Conv2d(58, 16, 1)

    def forward(self, x):
        y = self.stem(x)
        z = self.pools(self.depthwise(y)) / self.scale - self.shift
        return self.head(torch.relu(z) + y)


def test_zero_channels_ride_through_the_operators_that_keep_them(tmp_path):
    shape = (1, 16, 12, 12)
    path = export(make(ZeroKeepingChain()), shape, tmp_path / "chain.onnx")
    compile_and_check(path, shape)
    assert conv_layouts(path) == {"NCHW16c"}  # 58 alone: blocks of 2, NCHW


class ShuffleReadByOthers(nn.Module):
    """A shuffle of a padded 116-channel concat read by operators that map zero elsewhere (sigmoid, +3), a
    grouped conv (groups 2: not depthwise) and the output, besides a 1×1 conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(16, 58), nn.ReLU())
        self.other = nn.Sequential(*conv_bn(16, 58), nn.ReLU())
        self.conv = nn.Conv2d(116, 16, 1)
        self.grouped = nn.Conv2d(116, 16, 3, padding=1, groups=2)

    def forward(self, x):
        y = channel_shuffle(torch.cat([self.stem(x), self.other(x)], 1), 2)
        gate = torch.sigmoid(y).mean(1, keepdim=True)  # the pad channels would add 0.5 each
        shifted = (y + 3.0).amax(1, keepdim=True)
        return torch.cat([self.conv(y) * gate + shifted, self.grouped(y), y], 1)


def test_shuffle_read_by_operators_that_do_not_keep_zeros(tmp_path):
    shape = (1, 16, 12, 12)
    path = export(make(ShuffleReadByOthers()), shape, tmp_path / "others.onnx")
    compile_and_check(path, shape)
    mod = pad_channels(layout_forms(rewritten(path)), LANES)
    calls = [b.value for b in bindings(mod["main"]) if isinstance(b.value, relax.Call)]
    nonzero_at_zero = [c for c in calls if op_name(c) == "relax.sigmoid"
                       or (op_name(c) == "relax.add" and _scalar(c.args[1]))]
    grouped = [c for c in calls if op_name(c) == "relax.nn.conv2d" and int(c.attrs.groups) == 2]
    assert len(nonzero_at_zero) == 2 and len(grouped) == 1
    assert all(tensor_shape(c.args[0])[1] == 116 for c in nonzero_at_zero + grouped)  # the real channels, not 128
    convs = [c for c in calls if op_name(c) == "relax.nn.conv2d"]
    assert [tensor_shape(c)[1] for c in convs[:2]] == [64, 64]  # the stems write padded halves


def _scalar(expr) -> bool:
    value = const_value(expr)
    return value is not None and value.size == 1


class WideBlockStages(nn.Module):
    """RegNet's residual stream of 440 channels (blocks of 11 on 16 lanes: padded to 448) through residual adds
    into a global average pool and a classifier; and MixNet's projection of 200 channels (blocks of 10) written
    as two 100-channel convs concatenated and added to a stream that is not padded: left unpadded (a gather of
    the real channels back out of the concat would cost more than the lanes gain)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(16, 440), nn.ReLU())
        self.block = nn.Sequential(*conv_bn(440, 440), nn.ReLU(), *conv_bn(440, 440))
        self.fc = nn.Linear(440, 10)
        self.halves = nn.ModuleList(nn.Sequential(*conv_bn(8, 100)) for _ in range(2))
        self.stream = nn.Conv2d(16, 200, 3, padding=1)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(y + self.block(y))
        pooled = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))
        mixed = torch.cat([h(part) for h, part in zip(self.halves, x.split(8, 1))], 1) + self.stream(x)
        return pooled.sum() + mixed.mean((2, 3), keepdim=True) * 0 + mixed


def test_wide_blocks_padded_where_no_reader_gathers_them_back(tmp_path):
    shape = (1, 16, 7, 7)
    path = export(make(WideBlockStages()), shape, tmp_path / "wide.onnx")
    compile_and_check(path, shape)
    mod = pad_channels(layout_forms(rewritten(path)), LANES)
    written = sorted(int(tensor_shape(b.value)[1]) for b in bindings(mod["main"]) if op_name(b.value) == "relax.nn.conv2d")
    assert written.count(448) == 3 and 440 not in written  # the stream of 440 in 16-blocks, pooled padded
    assert written.count(100) == 2 and 112 not in written  # the concatenated halves as they are
