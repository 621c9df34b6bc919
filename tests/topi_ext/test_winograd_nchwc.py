"""Winograd F(2x2, 3x3) conv in NCHW[x]c under its default x86 schedule, against PyTorch's conv2d, and
its legalization inside a compiled model against onnxruntime.

Tolerance: max|out - ref| <= 1e-5 * max|ref| (fp32; the transforms' entries are 0, ±1, ±1/2, so the
result differs from a direct conv by rounding, about 5e-7 here)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tvm
from tvm import te

import reforge
from reforge import backends
from reforge.topi_ext import winograd_nchwc as winograd
from reforge.topi_ext.schedules.default import schedule_func
from tests.helpers import conv_relu_model

RTOL = 1e-5

CASES = [  # cin, cout, height, width, padding (t, l, b, r), batch
    (32, 32, 14, 14, (1, 1, 1, 1), 1),
    (48, 64, 13, 9, (1, 1, 1, 1), 1),  # odd output: the last tile row and column half used
    (32, 48, 7, 11, (0, 1, 1, 0), 1),  # asymmetric padding; 3 x 5 tiles, a partial register tile
    (64, 32, 8, 8, (0, 0, 0, 0), 2),  # no padding, batch 2
    (32, 32, 3, 3, (1, 1, 1, 1), 1),  # a map smaller than a tile pair
]


def run_op(target_name, cin, cout, height, width, padding, batch):
    target = backends.get(target_name)
    lanes = target.vector_lanes()
    rng = np.random.default_rng(cin + cout + height)
    x = rng.standard_normal((batch, cin, height, width)).astype("float32")
    w = rng.standard_normal((cout, cin, 3, 3)).astype("float32")
    blocked_x = x.reshape(batch, cin // lanes, lanes, height, width).transpose(0, 1, 3, 4, 2).copy()
    blocked_w = w.reshape(cout // lanes, lanes, cin // lanes, lanes, 3, 3).transpose(0, 2, 4, 5, 3, 1).copy()
    u = winograd.transform_kernel(blocked_w)
    data, weight = te.placeholder(blocked_x.shape, "float32", "data"), te.placeholder(u.shape, "float32", "u")
    out = winograd.conv2d_winograd_nchwc(data, weight, padding, "float32")
    func, rule = schedule_func(te.create_prim_func([data, weight, out]), target.machine)
    assert rule == "winograd_nchwc"
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target)
    t, l, b, r = padding
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(torch.from_numpy(x), (l, r, t, b)),
                                     torch.from_numpy(w)).numpy()
    return lib, (blocked_x, u), out, ref


@pytest.mark.parametrize("target_name", ["x86-avx2", "x86-avx512"])  # 8- and 16-lane blocks
@pytest.mark.parametrize("cin, cout, height, width, padding, batch", CASES)
def test_winograd_conv_matches_torch(target_name, cin, cout, height, width, padding, batch):
    """Every case is built for both vector widths; it runs where this CPU can (AVX2: everywhere CI runs)."""
    lib, arrays, out, ref = run_op(target_name, cin, cout, height, width, padding, batch)
    if not backends.get(target_name).runs_on_host_cpu():
        return
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    lib["main"](*(tvm.runtime.tensor(a) for a in arrays), result)
    got = result.numpy().transpose(0, 1, 4, 2, 3).reshape(ref.shape)
    assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max()


def test_kernel_transform_is_g_g_gt():
    """U[:, :, k, c] = G · g[k, c] · Gᵀ for every channel pair, in the blocked layout."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8, 3, 3)).astype("float32")  # O, C
    blocked = w.reshape(2, 8, 1, 8, 3, 3).transpose(0, 2, 4, 5, 3, 1)  # (O/8, C/8, 3, 3, 8i, 8o)
    u = winograd.transform_kernel(blocked)
    assert u.shape == (4, 4, 2, 1, 8, 8)
    for k, c in [(0, 0), (5, 7), (13, 2)]:
        want = winograd.G @ w[k, c].astype(np.float64) @ winograd.G.T
        np.testing.assert_allclose(u[:, :, k // 8, c // 8, c % 8, k % 8], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cin, cout, stride, kernel, rule", [
    (32, 64, 1, 3, "winograd_nchwc"),
    (32, 64, 2, 3, "conv2d_nchwc"),  # strided: direct
    (32, 64, 1, 1, "conv2d_nchwc"),  # 1x1: direct
    (16, 64, 1, 3, "conv2d_nchwc"),  # below MIN_CHANNELS input channels: direct
])
def test_a_model_legalizes_eligible_convs_to_winograd(tmp_path, cin, cout, stride, kernel, rule):
    """3x3 stride-1 convs with enough channels take the Winograd operator, with bias and ReLU fused
    into it (one function besides the two layout transforms); the output agrees with onnxruntime."""
    path = tmp_path / "conv.onnx"
    onnx.save(conv_relu_model(cin, cout, stride, kernel), path)
    art = reforge.compile(str(path), "x86-avx2")
    assert art.manifest["build"]["schedules"] == {rule: 1, "generic": 2}
    x = np.random.default_rng(1).standard_normal((1, cin, 12, 12)).astype("float32")
    (got,) = art.run({"x": x}).values()
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max()
