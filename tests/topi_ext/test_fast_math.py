"""topi_ext/fast_math: float32 exp, sigmoid, tanh and erf as vectorizable arithmetic.

Accuracy against float64 references (numpy's exp and tanh, ``math.erf``) over a dense sweep of the float range
and its edges, computed by the compiled, vectorized code: exp within 1e-7 relative where the result is a normal
float (under 1 ulp) and within 2^-149 absolute where it is subnormal; sigmoid within 2e-7 relative (2.3 ulp)
where it is normal and 2^-126 absolute below; tanh within 2e-7 relative (1.4 ulp); erf within 5e-7 absolute
and relative (4.9 ulp); inf, -inf and nan as IEEE gives them. Whole models (conv + SiLU / GELU / sigmoid,
EfficientNet's squeeze-excite) against PyTorch: max|out - ref| <= 1e-4 · max|ref|."""

import math
import re

import numpy as np
import pytest
import torch
import tvm
from tvm import s_tir, te, tirx
from tvm_ffi.structural import structural_visit
from torch import nn

import reforge
from reforge import backends
from reforge.codegen import assembly
from reforge.topi_ext.fast_math import erf_f32, exp_f32, sigmoid_f32, tanh_f32, vectorizable_math
from tests.helpers import quiet_torch_export

TINY = float(np.finfo(np.float32).tiny)
LIBM_CALL = re.compile(r"\b(expf|erff|tanhf)\b")  # the math library's scalar functions, as the assembly names them
DIVISION = re.compile(r"\bvdiv[ps]s\s+(.*)")  # a float division's operands (AT&T syntax)
SPECIALS = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-30, -1e-30, 1e-45, 88.72, 88.7229, 88.73, 89.0, 100.0,
                     -87.33, -87.34, -103.9, -104.0, -150.0, 3e38, -3e38], np.float32)


def sweep() -> np.ndarray:
    """Every float32 from -110 to 95 in 2^20 steps, the normal powers of ten and the special values."""
    decades = np.float32(10.0) ** np.arange(-37, 39, dtype=np.float32)
    return np.concatenate([np.linspace(-110, 95, 1 << 20, dtype=np.float32), decades, -decades, SPECIALS])


def vectorized(approx, n: int) -> tvm.IRModule:
    """``y[i] = approx(x[i])`` over ``n`` floats with the loop split by 16 and its inner part vectorized."""
    src = te.placeholder((n,), "float32", name="x")
    out = te.compute((n,), lambda i: approx(src[i]), name="y")
    sch = s_tir.Schedule(te.create_prim_func([src, out]))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 16])[1])
    return sch.mod


def run(approx, x: np.ndarray, rewrite: bool = False) -> np.ndarray:
    """``approx`` over ``x``, compiled for the x86 target with the loop vectorized by 16 lanes (``rewrite``: after
    ``vectorizable_math``, as the build runs it)."""
    n = x.size
    mod = vectorized(approx, n)
    if rewrite:
        mod = tvm.IRModule({"main": vectorizable_math(mod["main"])})
    lib = tvm.compile(mod, target=backends.get("x86").tvm_target)
    result = tvm.runtime.tensor(np.zeros(n, "float32"))
    lib["main"](tvm.runtime.tensor(np.ascontiguousarray(x)), result)
    return result.numpy()


def test_exp_over_the_float_range():
    x = sweep()
    got = run(exp_f32, x)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64))
    normal = (ref >= TINY) & (ref <= np.finfo(np.float32).max)
    assert np.max(np.abs(got[normal] - ref[normal]) / ref[normal]) <= 1e-7
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
    assert np.max(np.abs(got[normal] - ref[normal]) / ref[normal]) <= 2e-7
    assert np.max(np.abs(got[~normal & ~np.isnan(x)] - ref[~normal & ~np.isnan(x)])) <= TINY
    assert got[x == np.inf] == 1 and got[x == -np.inf] == 0 and np.isnan(got[np.isnan(x)]).all()


def test_tanh_over_the_float_range():
    x = sweep()
    got = run(tanh_f32, x)
    ref = np.tanh(x.astype(np.float64))
    normal = ~np.isnan(x) & (np.abs(ref) >= TINY)
    assert np.max(np.abs(got[normal] - ref[normal]) / np.abs(ref[normal])) <= 2e-7
    assert np.max(np.abs(got[~normal & ~np.isnan(x)] - ref[~normal & ~np.isnan(x)])) <= TINY
    assert got[x == np.inf] == 1 and got[x == -np.inf] == -1 and np.isnan(got[np.isnan(x)]).all()


def test_erf_over_the_float_range():
    x = sweep()
    got = run(erf_f32, x)
    ref = np.array([math.erf(v) for v in x.astype(np.float64)])
    finite = ~np.isnan(x)
    assert np.max(np.abs(got[finite] - ref[finite])) <= 5e-7
    normal = finite & (np.abs(ref) >= TINY)
    assert np.max(np.abs(got[normal] - ref[normal]) / np.abs(ref[normal])) <= 5e-7
    assert got[x == np.inf] == 1 and got[x == -np.inf] == -1 and np.isnan(got[np.isnan(x)]).all()


@pytest.mark.parametrize("approx", [exp_f32, sigmoid_f32, tanh_f32, erf_f32], ids=["exp", "sigmoid", "tanh", "erf"])
def test_approximations_stay_16_lane_vectors(approx):
    """TVM's VectorizeLoop turns the loop into 16-lane vector expressions (a call it cannot vectorize, such as
    ``tirx.isnan``, makes it run the loop scalar, which LLVM then vectorizes at its preferred 8 lanes)."""
    mod = vectorized(approx, 64)
    for lower in (s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque(),
                  s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(), tirx.transform.VectorizeLoop()):
        mod = lower(mod)
    seen = []

    def loop(node, visitor):
        seen.append(int(node.extent))
        visitor.default_visit(node)

    structural_visit(mod["main"].body, [(tirx.BufferStore, lambda store, _v: seen.append(str(store.value.ty))),
                                        (tirx.For, loop)])
    assert seen == [4, "float32x16"]  # one loop over the vectors, storing 16 lanes


@pytest.mark.parametrize("c", [6.0, 3.0, 7.0, -1.4142135, 1e-30])
def test_division_by_a_constant_is_a_multiplication(c):
    """x / c (hardswish's / 6, GELU's / √2) becomes x · (1 / c): no division left, within 2^-22 relative."""
    x = te.placeholder((8,), "float32", name="x")
    script = vectorizable_math(te.create_prim_func([x, te.compute((8,), lambda i: x[i] / c)])).script()
    assert " / " not in script and " * " in script
    x = sweep()
    normal = x[np.isfinite(x) & (np.abs(x / np.float64(c)) >= TINY) & (np.abs(x / np.float64(c)) <= 3e38)]
    ref = normal.astype(np.float64) / c
    got = run(lambda v: v / te.const(c, "float32"), normal, rewrite=True)
    assert np.max(np.abs(got - ref) / np.abs(ref)) <= 2.0 ** -22


def test_only_float32_calls_are_replaced():
    """float32 exp / sigmoid / tanh / erf become arithmetic; a float64 exp and other calls (log) stay calls."""
    x32, x64 = te.placeholder((8,), "float32", name="a"), te.placeholder((8,), "float64", name="b")
    outs = [te.compute((8,), lambda i: te.exp(x32[i]) + te.sigmoid(x32[i]) + te.erf(x32[i]) + te.tanh(x32[i])
                       + te.log(x32[i])), te.compute((8,), lambda i: te.exp(x64[i]))]
    script = vectorizable_math(te.create_prim_func([x32, x64, *outs])).script()
    assert "T.sigmoid" not in script and "T.erf" not in script and "T.tanh" not in script
    assert script.count("T.exp(") == 1 and "T.exp(b[" in script and "T.log(a[" in script


def assert_16_lane_divisions(asm: str) -> None:
    """The assembly divides (sigmoid's 1 / (1 + e^-x), erf's p / q), on zmm registers only: 16 lanes."""
    divisions = DIVISION.findall(asm)
    assert divisions and all(re.fullmatch(r"(%zmm\d+, ){2}%zmm\d+", d.strip()) for d in divisions), divisions


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


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu-tanh", "sigmoid", "squeeze-excite"])
def test_models_with_exp_erf_and_tanh_match_pytorch(name, tmp_path):
    """Convs with SiLU, GELU (erf, and tanh) and sigmoid epilogues, inputs scaled to reach |x| ~ 50 (exp's, erf's
    and tanh's clamped ranges), compiled for x86 without a math-library call left in the fused functions."""
    torch.manual_seed(0)
    acts = {"silu": nn.SiLU(), "gelu": nn.GELU(), "gelu-tanh": nn.GELU(approximate="tanh"), "sigmoid": nn.Sigmoid()}
    module = SqueezeExcite(16) if name == "squeeze-excite" else nn.Sequential(nn.Conv2d(16, 64, 1), acts[name])
    x = torch.randn(1, 16, 14, 14) * 10
    path = str(tmp_path / "m.onnx")
    with quiet_torch_export():
        torch.onnx.export(module.eval(), (x,), path, input_names=["x"], opset_version=17, dynamo=False)
    art = reforge.compile(path, "x86")
    got = art.runner.run([x.numpy()])[0]
    ref = module(x).detach().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    asm = assembly(art.executable)
    assert not LIBM_CALL.search(asm)
    assert_16_lane_divisions(asm)


CONV_RULES = {  # id: (conv, the CPU rule that schedules its function)
    "1x1": (lambda: nn.Conv2d(32, 64, 1), "conv2d_nchwc"),
    "3x3-stride-2": (lambda: nn.Conv2d(32, 64, 3, stride=2, padding=1), "conv2d_nchwc"),
    "winograd": (lambda: nn.Conv2d(32, 32, 3, padding=1), "winograd_nchwc"),
    "depthwise": (lambda: nn.Conv2d(32, 32, 3, padding=1, groups=32), "depthwise_nchwc"),
    "grouped": (lambda: nn.Conv2d(64, 64, 3, padding=1, groups=4), "grouped_conv2d_nchwc"),
}


def export(module: nn.Module, x: torch.Tensor, path: str) -> str:
    with quiet_torch_export():
        torch.onnx.export(module.eval(), (x,), path, input_names=["x"], opset_version=17, dynamo=False)
    return path


@pytest.mark.parametrize("rule", CONV_RULES)
@pytest.mark.parametrize("act", ["silu", "hardswish"])
def test_every_conv_rule_has_a_16_lane_epilogue(rule, act, tmp_path):
    """Each conv rule with a SiLU or hardswish after the conv, at AVX-512's 16-lane channel block: the sigmoid's
    division runs on zmm registers only (16 lanes, no scalar or 8-lane code), hardswish has no division (its
    / 6 a multiplication), no math-library call; the network matches PyTorch."""
    torch.manual_seed(0)
    conv, expected = CONV_RULES[rule]
    module = nn.Sequential(conv(), nn.SiLU() if act == "silu" else nn.Hardswish())
    x = torch.randn(1, module[0].in_channels, 14, 14) * 4
    art = reforge.compile(export(module, x, str(tmp_path / "m.onnx")), "x86")
    assert expected in art.manifest["build"]["schedules"], art.manifest["build"]["schedules"]
    ref = module(x).detach().numpy()
    assert np.abs(art.runner.run([x.numpy()])[0] - ref).max() <= 1e-4 * np.abs(ref).max()
    asm = assembly(art.executable)
    assert not LIBM_CALL.search(asm)
    if act == "silu":
        assert_16_lane_divisions(asm)
    else:
        assert not DIVISION.findall(asm)
