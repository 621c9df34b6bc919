"""topi_ext/fast_math: float32 exp, sigmoid and erf as vectorizable arithmetic.

Accuracy against float64 references (numpy's exp, ``math.erf``) over a dense sweep of the float range and its
edges, computed by the compiled, vectorized code: exp within 2e-7 relative where the result is a normal float
and within 2^-149 absolute where it is subnormal; sigmoid within 3e-7 relative; erf within 5e-7 absolute and
relative; inf, -inf and nan as IEEE gives them. Whole models (conv + SiLU / GELU / sigmoid, EfficientNet's
squeeze-excite) against PyTorch: max|out - ref| <= 1e-4 · max|ref|."""

import math
import re

import numpy as np
import pytest
import torch
import tvm
from tvm import s_tir, te
from torch import nn

import reforge
from reforge import backends
from reforge.topi_ext.fast_math import erf_f32, exp_f32, sigmoid_f32, vectorizable_math
from tests.helpers import quiet_torch_export

TINY = float(np.finfo(np.float32).tiny)
LIBM_CALL = re.compile(r"\b(expf|erff)\b")  # the math library's scalar functions, as the assembly names them
SPECIALS = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-30, -1e-30, 1e-45, 88.72, 88.7229, 88.73, 89.0, 100.0,
                     -87.33, -87.34, -103.9, -104.0, -150.0, 3e38, -3e38], np.float32)


def sweep() -> np.ndarray:
    """Every float32 from -110 to 95 in 2^20 steps, the normal powers of ten and the special values."""
    decades = np.float32(10.0) ** np.arange(-37, 39, dtype=np.float32)
    return np.concatenate([np.linspace(-110, 95, 1 << 20, dtype=np.float32), decades, -decades, SPECIALS])


def run(approx, x: np.ndarray) -> np.ndarray:
    """``approx`` over ``x``, compiled for the x86 target with the loop vectorized by 16 lanes."""
    n = x.size
    src = te.placeholder((n,), "float32", name="x")
    out = te.compute((n,), lambda i: approx(src[i]), name="y")
    sch = s_tir.Schedule(te.create_prim_func([src, out]))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 16])[1])
    lib = tvm.compile(sch.mod, target=backends.get("x86").tvm_target)
    result = tvm.runtime.tensor(np.zeros(n, "float32"))
    lib["main"](tvm.runtime.tensor(np.ascontiguousarray(x)), result)
    return result.numpy()


def test_exp_over_the_float_range():
    x = sweep()
    got = run(exp_f32, x)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64))
    normal = (ref >= TINY) & (ref <= np.finfo(np.float32).max)
    assert np.max(np.abs(got[normal] - ref[normal]) / ref[normal]) <= 2e-7
    subnormal = ref < TINY
    assert np.max(np.abs(got[subnormal] - ref[subnormal])) <= 2.0 ** -149
    overflow = ref > np.finfo(np.float32).max
    assert np.all(np.isposinf(got[overflow])) and overflow.sum() > 1000
    assert np.isnan(got[np.isnan(x)]).all() and (got[x == -np.inf] == 0).all()


def test_sigmoid_over_the_float_range():
    x = sweep()
    got = run(sigmoid_f32, x)
    with np.errstate(over="ignore"):
        ref = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert not np.isnan(got[~np.isnan(x)]).any()
    normal = ref >= TINY
    assert np.max(np.abs(got[normal] - ref[normal]) / ref[normal]) <= 3e-7
    assert np.max(np.abs(got[~normal & ~np.isnan(x)] - ref[~normal & ~np.isnan(x)])) <= TINY
    assert got[x == np.inf] == 1 and got[x == -np.inf] == 0 and np.isnan(got[np.isnan(x)]).all()


def test_erf_over_the_float_range():
    x = sweep()
    got = run(erf_f32, x)
    ref = np.array([math.erf(v) for v in x.astype(np.float64)])
    finite = ~np.isnan(x)
    assert np.max(np.abs(got[finite] - ref[finite])) <= 5e-7
    normal = finite & (np.abs(ref) >= TINY)
    assert np.max(np.abs(got[normal] - ref[normal]) / np.abs(ref[normal])) <= 5e-7
    assert got[x == np.inf] == 1 and got[x == -np.inf] == -1 and np.isnan(got[np.isnan(x)]).all()


def test_only_float32_calls_are_replaced():
    """float32 exp / sigmoid / erf become arithmetic; a float64 exp and other calls (tanh) stay calls."""
    x32, x64 = te.placeholder((8,), "float32", name="a"), te.placeholder((8,), "float64", name="b")
    outs = [te.compute((8,), lambda i: te.exp(x32[i]) + te.sigmoid(x32[i]) + te.erf(x32[i]) + te.tanh(x32[i])),
            te.compute((8,), lambda i: te.exp(x64[i]))]
    script = vectorizable_math(te.create_prim_func([x32, x64, *outs])).script()
    assert "T.sigmoid" not in script and "T.erf" not in script
    assert script.count("T.exp(") == 1 and "T.exp(b[" in script and "T.tanh(a[" in script


class SqueezeExcite(nn.Module):
    """EfficientNet's block tail: SiLU, then a sigmoid gate from the pooled channels (squeeze-excite)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 64, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(64, 16, 1), nn.SiLU(), nn.Conv2d(16, 64, 1),
                                  nn.Sigmoid())

    def forward(self, x):
        y = nn.functional.silu(self.conv(x))
        return y * self.gate(y)


@pytest.mark.parametrize("name", ["silu", "gelu", "sigmoid", "squeeze-excite"])
def test_models_with_exp_and_erf_match_pytorch(name, tmp_path):
    """Convs with SiLU, GELU (erf) and sigmoid epilogues, inputs scaled to reach |x| ~ 50 (exp's and erf's
    clamped ranges), compiled for x86 without a math-library call left in the fused functions."""
    torch.manual_seed(0)
    acts = {"silu": nn.SiLU(), "gelu": nn.GELU(), "sigmoid": nn.Sigmoid()}
    module = SqueezeExcite(16) if name == "squeeze-excite" else nn.Sequential(nn.Conv2d(16, 64, 1), acts[name])
    x = torch.randn(1, 16, 14, 14) * 10
    path = str(tmp_path / "m.onnx")
    with quiet_torch_export():
        torch.onnx.export(module.eval(), (x,), path, input_names=["x"], opset_version=17, dynamo=False)
    art = reforge.compile(path, "x86")
    got = art.runner.run([x.numpy()])[0]
    ref = module(x).detach().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert not LIBM_CALL.search(art.executable.mod.imports[0].inspect_source("asm"))
