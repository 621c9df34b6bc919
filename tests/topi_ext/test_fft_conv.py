"""FFT convolution (the tiled Relax DFT graph of topi_ext/fft_conv.py) against torch.nn.functional.conv2d.

Kernels 3..15, odd and even input sizes, tiles that do not divide the output, FFT sizes 16 / 32,
padding 0, "same" (the asymmetric (k − 1) // 2, k // 2 split for even k) and arbitrary asymmetric
pads, with a bias. Tolerance: max|out − ref| / max|ref| <= 1e-4 (float32 DFTs); the float64 numpy
twin of the graph to 1e-12. The channel mix operator alone against numpy (1e-5)."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from reforge import backends
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
        for h, w in ((16, 16), (19, 17), (40, 33)):
            for pad in ("0", "same", "asym"):
                yield k, h, w, pad


def padding(k, kind):
    return {"0": (0, 0, 0, 0), "same": ((k - 1) // 2, (k - 1) // 2, k // 2, k // 2), "asym": (1, 3, 0, 2)}[kind]


@pytest.mark.parametrize("k,h,w,pad", list(cases()))
@pytest.mark.parametrize("size", [16, 32])
def test_numpy_twin(k, h, w, pad, size):
    rng = np.random.default_rng(k * 100 + h)
    x, wt, b = rng.standard_normal((2, 3, h, w)), rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    p = padding(k, pad)
    assert rel_err(fft_conv.fft_conv2d_np(x, wt, p, b, l=size), torch_conv(x, wt, p, b)) <= 1e-12


def build(shape, wt, pad, bias, size=None):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(shape, "float32"))
    g = fft_conv.geometry(shape, wt.shape, pad)
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = fft_conv.emit_fft_conv2d(bb, xv, wt, pad, bias, tiling=size and fft_conv.Tiling(g, size))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=backends.get("x86").tvm_target)
    return relax.VirtualMachine(ex, tvm.cpu())


@pytest.mark.parametrize("k,h,w,pad", [c for c in cases() if c[1] == 19 or (c[0] in (3, 11) and c[3] != "asym")])
def test_relax_graph_matches_torch(k, h, w, pad):
    """FFT size 16 where the kernel allows (several tiles, the last one cropped), else the planned one."""
    rng = np.random.default_rng(k * 7 + w)
    x = rng.standard_normal((1, 5, h, w)).astype("float32")
    wt = rng.standard_normal((6, 5, k, k)).astype("float32")
    b = rng.standard_normal(6).astype("float32")
    p = padding(k, pad)
    vm = build(x.shape, wt, p, b, 16 if k < 16 // 2 else None)
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = torch_conv(x, wt, p, b)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= RTOL


# (channels, map, kernel, FFT size picked or None): benchmarks/fft_conv.py's rows (same padding, batch 1,
# 1 thread) with the choice its measurements allow (64 channels k = 7 and 16 channels k = 11: FFT 0.9-1.3x
# direct from run to run, left direct). Then 3×3 layers of common CNNs, all direct.
MEASURED = [(64, 64, 3, None), (64, 64, 5, None), (64, 64, 7, None), (64, 64, 11, 32), (64, 64, 15, 32),
            (256, 32, 3, None), (256, 32, 5, 16), (256, 32, 7, 16), (16, 32, 5, None), (16, 32, 11, None),
            (16, 32, 15, 32)]
THREE_BY_THREE = [(64, 56, 3, None), (128, 28, 3, None), (256, 14, 3, None), (512, 7, 3, None), (256, 56, 3, None),
                  (512, 28, 3, None)]


@pytest.mark.parametrize("c,h,k,size", MEASURED + THREE_BY_THREE)
def test_cost_model(c, h, k, size):
    g = fft_conv.geometry((1, c, h, h), (c, c, k, k), ((k - 1) // 2, (k - 1) // 2, k // 2, k // 2))
    t = fft_conv.prefer_fft(g)
    assert (t and t.l) == size
    assert t is None or t.spectrum_bytes <= fft_conv.MAX_SPECTRUM_BYTES


def test_spectrum_cap():
    """1024 channels, k = 7: every FFT size's spectra exceed the cap, so the conv stays direct."""
    g = fft_conv.geometry((1, 1024, 32, 32), (1024, 1024, 7, 7), (3, 3, 3, 3))
    assert all(fft_conv.Tiling(g, l).spectrum_bytes > fft_conv.MAX_SPECTRUM_BYTES for l in fft_conv.FFT_SIZES)
    assert fft_conv.plan_fft(g) is None and fft_conv.prefer_fft(g) is None


@pytest.mark.parametrize("q,p,c,o", [(4, 9, 64, 64), (3, 2, 5, 6), (2, 7, 16, 12)])
def test_mix_operator(q, p, c, o):
    """The scheduled channel mix: ``Re / Im`` of per-frequency complex products, vs numpy."""
    from reforge.topi_ext.operators import schedule_operator

    sch, _kind = schedule_operator(fft_conv.mix_prim_func(q, p, c, o), backends.get("x86").machine)
    lib = tvm.compile(sch.mod, target=backends.get("x86").tvm_target)
    rng = np.random.default_rng(q * p)
    x = rng.standard_normal((q, 2 * p, c)).astype("float32")
    k = rng.standard_normal((q, c, 2 * o)).astype("float32")
    out = tvm.runtime.tensor(np.zeros((q, 2, p, o), "float32"))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(fft_conv.pack_spectra(k)), out)
    z = (x[:, :p] + 1j * x[:, p:]).astype(np.complex128) @ (k[:, :, :o] + 1j * k[:, :, o:])
    assert rel_err(out.numpy(), np.stack([z.real, z.imag], axis=1)) <= 1e-5
