"""fwht: Hadamard products become the fast Walsh-Hadamard transform.

Matrix recognition is checked on every spelling (natural, scaled, negative scale, sequency, permuted
columns, zero-padded, block-diagonal) and on near misses it must refuse. End to end: ONNX graphs
(MatMul, Gemm with bias, 1×1 Conv) and PyTorch modules (a Linear with Hadamard weights,
``torch.matmul`` by a Hadamard constant) through torch.onnx and torch.export; the rewritten graph has
the WHT call and no dense matmul / conv left, and its output matches the reference, onnxruntime
(graph optimizations off) or PyTorch, within max|out − ref| / max|ref| <= 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from onnx import helper
from torch import nn

import reforge
from reforge.passes import FastWHT, FoldConstants
from reforge.passes.fwht import match_hadamard
from reforge.topi_ext.wht import sequency_perm, walsh

from .conftest import max_rel_err, seed_of
from .test_merge_branches import to_onnx

RTOL = 1e-5
N = helper.make_node


def H(n):
    return scipy.linalg.hadamard(n).astype("float32")


# ----------------------------------------------------------------------------- recognition


def test_spellings_are_recognized():
    n = 64
    m = match_hadamard(H(n))
    assert (m.n, m.k, m.scale, m.blocks, m.order) == (n, n, 1.0, 1, "natural")
    s = np.float32(1 / np.sqrt(n))
    assert match_hadamard(H(n) * s).scale == s
    assert match_hadamard(H(n) * -3).scale == -3
    m = match_hadamard(walsh(n).astype("float32") * s)
    assert m.order == "sequency" and np.array_equal(m.perm, sequency_perm(n))
    perm = np.random.default_rng(0).permutation(n)
    m = match_hadamard(H(n)[:, perm])
    assert m.order == "permuted" and np.array_equal(m.perm, perm)
    m = match_hadamard(H(128)[:100, :90])
    assert (m.n, m.k, len(m.perm), m.order) == (128, 100, 90, "zero-padded")
    d = np.random.default_rng(1).uniform(-2, 2, n).astype("float32")
    w = d[:, None] * H(n)[:, perm]
    m = match_hadamard(w)
    assert m.scale == 1 and m.kind == "row-scaled permuted Hadamard"
    np.testing.assert_array_equal(m.in_scale[:, None] * H(n)[:, m.perm], w)  # (d, perm) is not unique
    assert match_hadamard(np.where(d[:, None] > 0, 0, d[:, None]) * H(n)) is None  # zero rows
    block = np.kron(np.eye(4, dtype="float32"), H(16) * 0.25)
    m = match_hadamard(block)
    assert (m.n, m.blocks, m.scale, m.kind) == (16, 4, 0.25, "natural block Hadamard")


@pytest.mark.parametrize("case", ["flipped entry", "random signs", "two magnitudes", "rows permuted", "zero column",
                                  "unequal blocks"])
def test_near_misses_are_refused(case):
    rng = np.random.default_rng(seed_of(case))
    w = H(32)
    if case == "flipped entry":
        w[5, 7] *= -1
    elif case == "random signs":
        w = np.where(rng.random((32, 32)) < 0.5, -1, 1).astype("float32")
    elif case == "two magnitudes":
        w[:, 3] *= 2
    elif case == "rows permuted":
        w = w[rng.permutation(32)]
    elif case == "zero column":
        w[:, 4] = 0
    else:
        w = np.kron(np.eye(2, dtype="float32"), H(16))
        w[16:, 16:] *= 2
    assert match_hadamard(w) is None


# ----------------------------------------------------------------------------- ONNX graphs


def onnx_case(kind: str, n: int, rng):
    """(nodes, inputs, params) of a graph ``y = f(x)`` with a Hadamard constant."""
    s = np.float32(1 / np.sqrt(n))
    if kind == "matmul":
        return [N("MatMul", ["x", "w"], ["y"])], {"x": (3, 5, n)}, {"w": H(n) * s}
    if kind == "matmul-sequency":
        return [N("MatMul", ["x", "w"], ["y"])], {"x": (4, n)}, {"w": walsh(n).astype("float32")}
    if kind == "gemm-bias":  # a Linear: y = x Wᵀ + b
        return ([N("Gemm", ["x", "w", "b"], ["y"], transB=1)], {"x": (6, n)},
                {"w": H(n) * -2, "b": rng.standard_normal(n).astype("float32")})
    if kind == "matmul-padded":
        k = n - n // 4 + 1
        return [N("MatMul", ["x", "w"], ["y"])], {"x": (2, k)}, {"w": H(n)[:k, :k] * s}
    if kind == "matmul-rowscaled":
        return [N("MatMul", ["x", "w"], ["y"])], {"x": (3, n)}, {"w": rng.uniform(0.5, 2, (n, 1)).astype("float32") * H(n)}
    if kind == "matmul-block":
        return [N("MatMul", ["x", "w"], ["y"])], {"x": (2, 4 * n)}, {"w": np.kron(np.eye(4, dtype="float32"), H(n))}
    if kind == "conv1x1":
        w = (H(n) * s).reshape(n, n, 1, 1)
        return [N("Conv", ["x", "w"], ["y"])], {"x": (1, n, 5, 6)}, {"w": w}
    raise ValueError(kind)


CASES = [(kind, n) for kind in ["matmul", "matmul-sequency", "gemm-bias", "conv1x1"] for n in (8, 64, 1024)] + [
    ("matmul-padded", 128), ("matmul-block", 16), ("matmul-rowscaled", 256)]


@pytest.mark.parametrize("kind,n", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_onnx_hadamard_products_become_wht(kind, n, harness):
    rng = np.random.default_rng(seed_of(f"{kind}{n}"))
    nodes, inputs, params = onnx_case(kind, n, rng)
    model = harness.model(nodes, inputs, params)
    res = harness.rewrite(model, FoldConstants, lambda: FastWHT(min_n=8))  # N = 8 is below the default MIN_N
    assert res.report.total == 1, res.report.notes
    assert res.ops_after.get("matmul", 0) == 0 and res.ops_after.get("nn.conv2d", 0) == 0
    assert res.ops_after["call_tir"] == 1
    assert any(getattr(f, "attrs", None) is not None and f.attrs.get("reforge.op") == "wht"
               for _, f in res.mod.functions_items())
    feeds = harness.random_feeds(res.imported, rng)
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert out[0].shape == ref[0].shape
    assert max_rel_err(out[0], ref[0]) <= RTOL


def test_small_and_non_hadamard_products_stay_dense(harness):
    rng = np.random.default_rng(1)
    nodes = [N("MatMul", ["x", "w4"], ["a"]), N("MatMul", ["a", "r"], ["y"])]
    model = harness.model(nodes, {"x": (2, 8)}, {"w4": H(8), "r": rng.standard_normal((8, 8)).astype("float32")})
    res = harness.rewrite(model, FoldConstants, FastWHT)
    assert res.report.total == 0 and res.ops_after["matmul"] == 2
    assert any("crossover" in note for note in res.report.notes)


# ----------------------------------------------------------------------------- PyTorch, through reforge.compile


class HadamardLinear(nn.Module):
    def __init__(self, n: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(n, n, bias=bias)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(H(n) / np.sqrt(n)))

    def forward(self, x):
        return torch.relu(self.fc(x))


class HadamardMatmul(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("h", torch.from_numpy(walsh(n).astype("float32")))

    def forward(self, x):
        return torch.matmul(x, self.h) * 0.5


MODULES = [("linear", 16), ("linear-bias", 256), ("matmul", 32), ("matmul", 1024)]


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("name,n", MODULES, ids=[f"{m}-{n}" for m, n in MODULES])
def test_torch_modules_compile_to_wht(name, n, exporter):
    torch.manual_seed(seed_of(name))
    module = (HadamardMatmul(n) if name == "matmul" else HadamardLinear(n, name == "linear-bias")).eval()
    x = torch.randn(4, n)
    model = to_onnx(module, x) if exporter == "onnx" else module
    art = reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))
    record = next(p for p in art.manifest["passes"] if p["name"] == "fwht")
    assert sum(record["rewrites"].values()) == 1
    assert record["after"]["ops"].get("matmul", 0) == 0
    assert art.manifest["build"]["schedules"].get("wht") == 1  # the x86 WHT schedule ran
    with torch.no_grad():
        ref = module(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert max_rel_err(out, ref) <= RTOL


# ----------------------------------------------------------------------------- soft threshold


def threshold_graph(kind: str, n: int, rng, extra_use: bool = False):
    """``sign(z)·relu(|z| − T)`` on ``z = x @ H`` (or a 1×1 conv), T a scalar or per coefficient."""
    if kind == "conv":
        w, x, t = (H(n) / np.sqrt(n)).reshape(n, n, 1, 1), (1, n, 3, 4), rng.uniform(0, 1, (n, 1, 1))
        first = N("Conv", ["x", "w"], ["z"])
    else:
        w, x = H(n) / np.float32(np.sqrt(n)), (5, n)
        t = rng.uniform(0, 1, n) if kind == "vector" else np.float32(0.5)
        first = N("MatMul", ["x", "w"], ["z"])
    nodes = [first, N("Sign", ["z"], ["s"]), N("Abs", ["z"], ["a"]), N("Sub", ["a", "t"], ["d"]),
             N("Relu", ["d"], ["r"]), N("Mul", ["s", "r"], ["y"] if not extra_use else ["m"])]
    if extra_use:
        nodes.append(N("Add", ["m", "z"], ["y"]))
    return nodes, {"x": x}, {"w": np.asarray(w, "float32"), "t": np.asarray(t, "float32")}


@pytest.mark.parametrize("kind", ["scalar", "vector", "conv"])
def test_soft_threshold_is_fused(kind, harness):
    rng = np.random.default_rng(seed_of(kind))
    model = harness.model(*threshold_graph(kind, 64, rng))
    res = harness.rewrite(model, FoldConstants, FastWHT)
    assert res.report.rewrites["soft threshold fused"] == 1
    for op in ("sign", "abs", "nn.relu", "multiply", "subtract", "matmul", "nn.conv2d"):
        assert res.ops_after.get(op, 0) == 0, op
    feeds = harness.random_feeds(res.imported, rng)
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert (ref[0] == 0).sum() > 0  # some coefficients thresholded away
    assert max_rel_err(out[0], ref[0]) <= RTOL


def test_soft_threshold_of_a_shared_output_is_not_fused(harness):
    rng = np.random.default_rng(7)
    model = harness.model(*threshold_graph("scalar", 32, rng, extra_use=True))
    res = harness.rewrite(model, FoldConstants, FastWHT)
    assert res.report.total == 1 and "soft threshold fused" not in res.report.rewrites
    feeds = harness.random_feeds(res.imported, rng)
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert max_rel_err(out[0], ref[0]) <= RTOL


class WHTLayer(nn.Module):
    """Pan et al.'s 1-D WHT layer: ``y = H·S_T(v ⊙ H·x)/N + x`` along the features (sign·relu form)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("h", torch.from_numpy(H(n)))
        self.v = nn.Parameter(torch.rand(n) + 0.5)
        self.t = nn.Parameter(torch.rand(n) * 0.5)

    def forward(self, x):
        z = torch.matmul(x, self.h)
        z = torch.sign(z) * torch.relu(torch.abs(z) - self.t)
        return torch.matmul(z * self.v, self.h) / self.h.shape[0] + x


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
def test_wht_layer_compiles_to_two_transforms(exporter):
    torch.manual_seed(3)
    module, x = WHTLayer(128).eval(), torch.randn(8, 128) * 4
    model = to_onnx(module, x) if exporter == "onnx" else module
    art = reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))
    record = next(p for p in art.manifest["passes"] if p["name"] == "fwht")
    # the second matrix arrives as diag(v / N)·H: fold-batchnorm folded the v ⊙ and the 1/N into it
    assert record["rewrites"]["natural Hadamard"] == 1 and record["rewrites"]["row-scaled natural Hadamard"] == 1
    assert record["rewrites"]["soft threshold fused"] == 1
    assert record["after"]["ops"].get("matmul", 0) == 0
    with torch.no_grad():
        ref = module(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert max_rel_err(out, ref) <= RTOL
