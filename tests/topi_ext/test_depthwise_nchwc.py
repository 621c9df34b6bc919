"""Depthwise conv2d in NCHW[b]c under its default x86 schedule, against PyTorch's grouped conv2d.

Tolerance: max|out - ref| <= 1e-5 * max|ref| (fp32; the same taps, summed in the same order up to FMA
rounding)."""

import math
import re

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, te, topi

import reforge
from reforge import backends
from reforge.topi_ext.depthwise_nchwc import depthwise_conv2d_nchwc
from reforge.topi_ext.layouts import blocked_conv2d_layouts, channel_block
from reforge.topi_ext.schedules.default import schedule_func
from reforge.topi_ext.schedules.helpers import PARALLEL_MIN_WORK

from tests.helpers import DEPTHWISE_CONVS, mobilenet_style

RTOL = 1e-5


def pack_data(x: np.ndarray, b: int) -> np.ndarray:
    """NCHW -> NCHW[b]c."""
    n, c, h, w = x.shape
    return x.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2).copy()


def pack_depthwise_kernel(w: np.ndarray, b: int) -> np.ndarray:
    """(C, 1, kh, kw) -> OIHW1i[b]o, shape (C/b, 1, kh, kw, 1, b)."""
    c, _, kh, kw = w.shape
    return w.reshape(c // b, b, 1, kh, kw, 1).transpose(0, 2, 3, 4, 5, 1).copy()


def bias_relu_depthwise(channels: int, b: int, size: int, k: int, stride: int, pad: int, dil: int):
    """The TE function relu(depthwise(data, kernel) + bias) in NCHW[b]c, and its tensors."""
    data = te.placeholder((1, channels // b, size, size, b), name="data")
    kernel = te.placeholder((channels // b, 1, k, k, 1, b), name="kernel")
    bias = te.placeholder((1, channels // b, 1, 1, b), name="bias")
    conv = depthwise_conv2d_nchwc(data, kernel, (stride, stride), (pad,) * 4, (dil, dil), "float32")
    out = topi.nn.relu(topi.add(conv, bias))
    return te.create_prim_func([data, kernel, bias, out]), [int(d) for d in out.shape]


CASES = [  # channels, size, kernel, stride, padding, dilation
    *[(c, 12, 3, 1, 1, 1) for c in (8, 16, 24, 32, 12, 20, 4)],  # with 8 lanes: 12 -> block 6, 20 -> 5, 4 -> 4
    *[(16, 13, k, s, p, 1) for k in (3, 5, 7) for s in (1, 2) for p in (0, 1, 2)],
    (16, 15, 3, 1, 2, 2), (24, 16, 5, 2, 4, 2), (12, 11, 3, 1, 1, 2),  # dilation 2
    (32, 56, 3, 1, 1, 1), (32, 60, 3, 1, 0, 1),  # above PARALLEL_MIN_WORK: threads, with and without padding
]


@pytest.mark.parametrize("channels, size, k, stride, pad, dil", CASES)
def test_scheduled_depthwise_bias_relu_matches_torch(channels, size, k, stride, pad, dil):
    target = backends.get("x86")
    lanes = target.vector_lanes()
    b = channel_block(channels, lanes)
    func, out_shape = bias_relu_depthwise(channels, b, size, k, stride, pad, dil)
    scheduled, rule = schedule_func(func, target.machine)
    assert rule == "depthwise_nchwc"
    script = scheduled.script()
    assert 'T.sblock("T_add")' not in script and 'T.sblock("T_relu")' not in script  # epilogue in the tile
    assert ("T.parallel" in script) == (math.prod(out_shape) * k * k >= PARALLEL_MIN_WORK)
    rng = np.random.default_rng(channels * 1000 + k * 100 + stride * 10 + pad)
    x = rng.standard_normal((1, channels, size, size)).astype("float32")
    w = rng.standard_normal((channels, 1, k, k)).astype("float32")
    bias = rng.standard_normal(channels).astype("float32")
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=target.tvm_target)
    result = tvm.runtime.tensor(np.zeros(out_shape, "float32"))
    lib["main"](tvm.runtime.tensor(pack_data(x, b)), tvm.runtime.tensor(pack_depthwise_kernel(w, b)),
                tvm.runtime.tensor(pack_data(bias.reshape(1, channels, 1, 1), b)), result)
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias),
                                                stride=stride, padding=pad, dilation=dil, groups=channels)).numpy()
    got = result.numpy().transpose(0, 1, 4, 2, 3).reshape(ref.shape)
    assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max()


def test_inner_loop_is_vector_fma():
    """AVX2 code (compiled, not run) of a 3x3 depthwise conv: ymm FMAs, one per kernel tap and output
    column of the tile."""
    target = backends.get("x86-avx2")
    lanes = target.vector_lanes()
    assert lanes == 8
    func, _ = bias_relu_depthwise(32, 8, 28, 3, 1, 1, 1)
    scheduled, rule = schedule_func(func, target.machine)
    assert rule == "depthwise_nchwc"
    asm = tvm.compile(tvm.IRModule({"main": scheduled}), target=target.tvm_target).mod.inspect_source("asm")
    fmas = re.findall(r"vfmadd\d+ps\s+[^\n]*%ymm", asm)  # register or memory first operand
    assert len(fmas) >= 9 * 7  # 9 taps x a 7-column register tile (28 = 4 x 7)
    assert not re.search(r"vfmadd\d+ss", asm)  # no scalar FMA


def test_layout_policy_blocks_depthwise_with_multiplier_one():
    choose = blocked_conv2d_layouts(8)
    x = relax.Var("x", relax.TensorType((1, 24, 8, 8), "float32"))

    def depthwise(channels, multiplier=1):
        xc = relax.Var("x", relax.TensorType((1, channels, 8, 8), "float32"))
        w = relax.const(np.zeros((channels * multiplier, 1, 3, 3), "float32"))
        return relax.op.nn.conv2d(xc, w, padding=1, groups=channels)

    assert choose(depthwise(24)) == {"relax.nn.conv2d": ["NCHW8c", "OIHW1i8o", "NCHW8c"]}
    assert choose(depthwise(12)) == {"relax.nn.conv2d": ["NCHW6c", "OIHW1i6o", "NCHW6c"]}  # largest divisor <= 8
    assert choose(depthwise(9)) == {"relax.nn.conv2d": ["NCHW", "OIHW"]}  # block 3: below a useful vector
    assert choose(depthwise(8, multiplier=2)) == {"relax.nn.conv2d": ["NCHW", "OIHW"]}  # lanes would cross
    grouped = relax.op.nn.conv2d(x, relax.const(np.zeros((24, 6, 3, 3), "float32")), padding=1, groups=4)
    assert choose(grouped) == {"relax.nn.conv2d": ["NCHW", "OIHW"]}


def test_mobilenet_style_model_compiles_to_blocked_depthwise():
    net = mobilenet_style()
    shape = (1, 3, 40, 40)
    art = reforge.compile(net, target="x86", input_shapes={"image": shape})
    build = art.manifest["build"]
    assert build["schedules"].get("depthwise_nchwc") == DEPTHWISE_CONVS, build["schedules"]
    assert build["schedules"].get("none", 0) == 0
    # one transform into the blocked layout at the input, one out of it before the pooled head:
    # none around the depthwise convs (before this rule: two per depthwise conv)
    assert build["layout_transforms"] <= 2, build
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = art.run({"image": x})["output0"]
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()


class DepthwiseResidual(torch.nn.Module):
    """relu(depthwise(x) + x): the residual add and ReLU fuse into the depthwise conv's function."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


def test_residual_epilogue_fuses_into_blocked_depthwise():
    torch.manual_seed(0)
    net, shape = DepthwiseResidual().eval(), (1, 16, 20, 20)
    art = reforge.compile(net, target="x86", input_shapes={"x": shape})
    # the conv with add + ReLU, and the two layout transforms at the edges: nothing else
    assert art.manifest["build"]["schedules"] == {"depthwise_nchwc": 1, "generic": 2}
    x = np.random.default_rng(3).standard_normal(shape).astype("float32")
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = art.run({"x": x})["output0"]
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()
