"""FFT convolution (the Relax DFT graph of topi_ext/fft_conv.py) against torch.nn.functional.conv2d.

Kernels 3..15, odd and even input sizes, padding 0 and "same" (k // 2 on both sides, and the
asymmetric (k − 1) // 2, k // 2 split for even k), with a bias. Tolerance: max|out − ref| / max|ref|
<= 1e-4 (float32 DFTs); the float64 numpy twin of the graph to 1e-12."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from reforge.targets import get_target
from reforge.topi_ext import fft_conv

RTOL = 1e-4


def torch_conv(x, w, pad, bias=None):
    t, l, b, r = pad
    xp = torch.nn.functional.pad(torch.from_numpy(x).double(), (l, r, t, b))
    return torch.nn.functional.conv2d(xp, torch.from_numpy(w).double(),
                                      None if bias is None else torch.from_numpy(bias).double()).numpy()


def rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def cases():
    for k in (3, 4, 5, 7, 8, 11, 15):
        for h, w in ((16, 16), (19, 17)):
            for pad in ("0", "same"):
                yield k, h, w, pad


def padding(k, kind):
    return (0, 0, 0, 0) if kind == "0" else ((k - 1) // 2, (k - 1) // 2, k // 2, k // 2)


@pytest.mark.parametrize("k,h,w,pad", list(cases()))
def test_numpy_twin(k, h, w, pad):
    rng = np.random.default_rng(k * 100 + h)
    x, wt, b = rng.standard_normal((2, 3, h, w)), rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    p = padding(k, pad)
    assert rel_err(fft_conv.fft_conv2d_np(x, wt, p, b), torch_conv(x, wt, p, b)) <= 1e-12


def build(shape, wt, pad, bias):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = fft_conv.emit_fft_conv2d(bb, xv, wt, pad, bias)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=get_target("x86").tvm_target)
    return relax.VirtualMachine(ex, tvm.cpu())


@pytest.mark.parametrize("k,h,w,pad", [c for c in cases() if c[1] == 19 or c[0] in (3, 11)])
def test_relax_graph_matches_torch(k, h, w, pad):
    rng = np.random.default_rng(k * 7 + w)
    x = rng.standard_normal((1, 5, h, w)).astype("float32")
    wt = rng.standard_normal((6, 5, k, k)).astype("float32")
    b = rng.standard_normal(6).astype("float32")
    p = padding(k, pad)
    vm = build(x.shape, wt, p, b)
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = torch_conv(x, wt, p, b)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= RTOL


@pytest.mark.parametrize("c,h,k,fft", [(64, 64, 3, False), (256, 56, 3, False), (512, 7, 3, False),
                                       (64, 64, 5, False), (64, 64, 7, False), (64, 64, 11, True),
                                       (64, 32, 11, True), (64, 32, 15, True), (256, 32, 5, False),
                                       (16, 32, 11, True), (16, 32, 15, True)])
def test_cost_model(c, h, k, fft):
    """The choices benchmarks/fft_conv.py measured on this CPU (same padding, batch 1, 1 thread)."""
    g = fft_conv.geometry((1, c, h, h), (c, c, k, k), ((k - 1) // 2, (k - 1) // 2, k // 2, k // 2))
    assert fft_conv.prefer_fft(g) is fft
