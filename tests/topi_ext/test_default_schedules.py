"""Default schedules through reforge.compile: every layer shape a CNN has, against PyTorch, and the
build report saying which rule scheduled what. Tolerance: max|err| <= 1e-4 * max|ref|."""

import numpy as np
import pytest
import torch
from torch import nn

import reforge
from reforge import backends
from reforge.topi_ext.layouts import grouped_blocks


class Block(nn.Module):
    """conv-BN-ReLU, a residual add, max and average pooling, a grouped and a depthwise conv,
    a conv1d and a dense head: one of each kind of fused function."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Conv2d(16, 16, 3, 1, 1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.grouped = nn.Conv2d(16, 24, 3, 1, 1, groups=4)
        self.depthwise = nn.Conv2d(24, 24, 3, 1, 1, groups=24)
        self.head = nn.Linear(24, 10)

    def forward(self, image):
        y = self.stem(image)
        y = torch.relu(self.body(y) + y)
        y = self.depthwise(self.grouped(self.pool(y)))
        return self.head(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


class Signal(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(4, 16, 9, padding=4), nn.ReLU(), nn.AvgPool1d(2),
                                  nn.Conv1d(16, 16, 5, groups=16), nn.ReLU())

    def forward(self, signal):
        return self.conv(signal).mean(-1)


@pytest.mark.parametrize("module, name, shape", [(Block, "image", (2, 3, 33, 31)), (Signal, "signal", (1, 4, 100))])
def test_scheduled_model_matches_torch(module, name, shape):
    torch.manual_seed(0)
    net = module().eval()
    art = reforge.compile(net, input_shapes={name: shape})
    rules = art.manifest["build"]["schedules"]
    assert rules.get("none", 0) == 0, rules  # every fused function got a schedule
    if module is Block:
        # the layout policy at this CPU's lanes: the stem and body convs and the depthwise conv blocked (16 and 24
        # channels hold blocks of >= 4), the grouped conv where its groups fit the blocks around it (AVX-512's
        # blocks of 16 and 12 channels, not AVX2's 8), the dense a matmul
        grouped = grouped_blocks(16, 24, 4, backends.get("x86").vector_lanes()) is not None
        blocked = {"conv2d_nchwc": 2, "depthwise_nchwc": 1, "matmul": 1}
        blocked |= {"grouped_conv2d_nchwc": 1} if grouped else {}
        assert {k: v for k, v in rules.items() if k != "generic"} == blocked, rules
        # one transform into the blocked layout at the input, one out of it before the pooled head; a grouped conv
        # left in NCHW takes one each way around it
        assert art.manifest["build"]["layout_transforms"] == (2 if grouped else 4), art.manifest["build"]
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = art.run({name: x})["output0"]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
