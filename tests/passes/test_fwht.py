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
from reforge.passes.hadamard import match_hadamard, sequency_perm, walsh
from tests.helpers import max_rel_err, seed_of, to_onnx

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
    m = match_hadamard(H(n)[:, perm] * d * s)  # columns scaled: (x @ H) ⊙ d folded into the matrix
    assert m.kind == "column-scaled permuted Hadamard"
    np.testing.assert_allclose(H(n)[:, m.perm] * m.scale * m.out_scale, H(n)[:, perm] * d * s, rtol=1e-7)
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
    elif case == "two magnitudes":  # neither rows nor columns scaled
        w[3, 3] *= 2
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


class SmoothWHTLayer(nn.Module):
    """The 1-D WHT layer with the smooth threshold of Pan, Badawi & Cetin (CVPR-W 2021, ACM TECS 2022):
    ``y = H·S(H·x/√N)/√N``, ``S(z) = tanh(w⊙z)·relu(|w⊙z| − T)``, w and T per coefficient."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("h", torch.from_numpy(H(n) / np.float32(np.sqrt(n))))
        self.w = nn.Parameter(torch.rand(n) + 0.5)
        self.t = nn.Parameter(torch.rand(n) * 0.5)

    def forward(self, x):
        z = torch.matmul(x, self.h) * self.w
        return torch.matmul(torch.tanh(z) * torch.relu(torch.abs(z) - self.t), self.h)


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
def test_smooth_wht_layer_compiles_to_two_transforms(exporter):
    """fold-batchnorm folds w into the first matrix's columns (H·diag(w)): a column-scaled transform,
    then the smooth threshold fused into its epilogue."""
    torch.manual_seed(5)
    module, x = SmoothWHTLayer(256).eval(), torch.randn(8, 256)
    model = to_onnx(module, x) if exporter == "onnx" else module
    art = reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))
    record = next(p for p in art.manifest["passes"] if p["name"] == "fwht")
    assert record["rewrites"] == {"column-scaled natural Hadamard": 1, "natural Hadamard": 1,
                                  "smooth threshold fused": 1}
    assert record["after"]["ops"] == {"call_tir": 2, "reshape": 4}
    with torch.no_grad():
        ref = module(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert (np.abs(module.h.numpy().T @ out.T) < 1e-5).any()  # some coefficients thresholded away
    assert max_rel_err(out, ref) <= RTOL


@pytest.mark.parametrize("kind", ["scaled", "prescaled", "conv"])
def test_smooth_threshold_is_fused(kind, harness):
    """``tanh(u)·relu(|u| − T)`` on ``u = w ⊙ z`` (w per coefficient, kept as a Mul: no fold-batchnorm
    here), on ``u = z`` itself (z already scaled), and on a 1×1 conv's output."""
    n = 64
    rng = np.random.default_rng(seed_of(kind))
    t = rng.uniform(0, 1, (n, 1, 1) if kind == "conv" else n).astype("float32")
    w = rng.uniform(0.5, 1.5, (n, 1, 1) if kind == "conv" else n).astype("float32")
    h = H(n) / np.float32(np.sqrt(n))
    first = N("Conv", ["x", "h"], ["z"]) if kind == "conv" else N("MatMul", ["x", "h"], ["z"])
    scale = [] if kind == "prescaled" else [N("Mul", ["z", "w"], ["u"])]
    u = "z" if kind == "prescaled" else "u"
    nodes = [first, *scale, N("Tanh", [u], ["g"]), N("Abs", [u], ["a"]), N("Sub", ["a", "t"], ["d"]),
             N("Relu", ["d"], ["r"]), N("Mul", ["g", "r"], ["y"])]
    params = {"h": h.reshape(n, n, 1, 1) if kind == "conv" else h, "t": t, **({} if kind == "prescaled" else {"w": w})}
    model = harness.model(nodes, {"x": (1, n, 3, 4) if kind == "conv" else (5, n)}, params)
    res = harness.rewrite(model, FoldConstants, FastWHT)
    assert res.report.rewrites["smooth threshold fused"] == 1
    assert res.ops_after == {"call_tir": 1, "reshape": 2}
    feeds = harness.random_feeds(res.imported, rng)
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert (ref[0] == 0).sum() > 0
    assert max_rel_err(out[0], ref[0]) <= RTOL


# ----------------------------------------------------------------------------- 2-D WHT


class WHT2D(nn.Module):
    """``H_a·X·H_bᵀ / √(ab)`` per channel of an NCHW tensor (the 2-D WHT of Pan et al.'s block-WHT
    layers), the right factor in sequency order."""

    def __init__(self, a: int, b: int):
        super().__init__()
        self.register_buffer("left", torch.from_numpy(H(a) / np.float32(np.sqrt(a))))
        self.register_buffer("right", torch.from_numpy(walsh(b).astype("float32") / np.float32(np.sqrt(b))))

    def forward(self, x):
        return torch.matmul(torch.matmul(self.left, x), self.right.T)


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
def test_2d_wht_becomes_two_transforms(exporter, harness):
    torch.manual_seed(6)
    module, x = WHT2D(16, 32).eval(), torch.randn(2, 3, 16, 32)
    model = to_onnx(module, x) if exporter == "onnx" else module
    art = reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))
    record = next(p for p in art.manifest["passes"] if p["name"] == "fwht")
    assert record["rewrites"] == {"left-product natural Hadamard": 1, "sequency Hadamard": 1}
    assert record["after"]["ops"].get("matmul", 0) == 0 and record["after"]["ops"]["call_tir"] == 2
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    # scipy: H_16 · X · W_32ᵀ per channel, in float64
    want = np.einsum("ik,nckl,jl->ncij", scipy.linalg.hadamard(16), x.numpy().astype(np.float64), walsh(32))
    assert max_rel_err(out, want / np.sqrt(16 * 32)) <= RTOL
    ref = harness.onnxruntime(model, {"x": x.numpy()})[0] if exporter == "onnx" else module(x).detach().numpy()
    assert max_rel_err(out, ref) <= RTOL


# ----------------------------------------------------------------------------- butterfly spelling
# Realistic PyTorch FWHTs (the way a model writes the transform without a matrix), each exported
# as log2 N stages of slices, a ± b and concat.


def fwht_interleaved(u):
    """Pairs (x[2i], x[2i+1]) on a trailing axis, normalized (HazyResearch's hadamard_transform_torch):
    strided slices ::2 / 1::2, cat on the last axis."""
    m = int(np.log2(u.shape[-1]))
    x = u[..., None]
    for _ in range(m):
        x = torch.cat((x[..., ::2, :] + x[..., 1::2, :], x[..., ::2, :] - x[..., 1::2, :]), dim=-1)
    return x.squeeze(-2) / 2 ** (m / 2)


def fwht_view(x):
    """The classic iterative loop: view(-1, N/2h, 2, h), (a + b, a − b) stacked (take / expand / concat)."""
    shape, n, h = x.shape, x.shape[-1], 1
    while h < n:
        y = x.reshape(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        x = torch.stack((a + b, a - b), dim=2).reshape(shape)
        h *= 2
    return x


def fwht_split(x):
    """A [B, 2, 2, …, 2] view, split into halves along each axis in turn (torch.split; torch.chunk's
    ONNX export computes the sizes with Shape / Gather, which the ONNX importer rejects)."""
    shape, m = x.shape, int(np.log2(x.shape[-1]))
    y = x.reshape(-1, *([2] * m))
    for d in range(1, m + 1):
        a, b = torch.split(y, 1, dim=d)
        y = torch.cat((a + b, a - b), dim=d)
    return y.reshape(shape)


def fwht_halves(x, wrong_first: bool = False, flip_last: bool = False):
    """Halves slices (x[:h], x[h:]) per block, h = N/2 down to 1. ``wrong_first``: the first stage
    computes (a + b, a + b); ``flip_last``: the last one (a + b, b − a)."""
    shape, n = x.shape, x.shape[-1]
    h = n // 2
    while h >= 1:
        y = x.reshape(-1, n // (2 * h), 2 * h)
        a, b = y[..., :h], y[..., h:]
        second = a + b if wrong_first and 2 * h == n else b - a if flip_last and h == 1 else a - b
        x = torch.cat((a + b, second), dim=-1).reshape(shape)
        h //= 2
    return x


def fwht_halves_walsh(x):
    """fwht_halves gathered into sequency order (index_select)."""
    return torch.index_select(fwht_halves(x), -1, torch.from_numpy(sequency_perm(int(x.shape[-1]))))


def fwht_rows(x):
    """Along the H axis of NCHW (the 2-D WHT's column pass): transpose, interleaved pairs, transpose back."""
    return fwht_interleaved(x.transpose(-1, -2)).transpose(-1, -2)


class Butterfly(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


BUTTERFLIES = {  # name: (function, input shape, matrix the output equals x times, report kind)
    "interleaved": (fwht_interleaved, (4, 64), H(64) / 8, "butterfly natural Hadamard"),
    "interleaved-1024": (fwht_interleaved, (2, 1024), H(1024) / 32, "butterfly natural Hadamard"),
    "view": (fwht_view, (3, 128), H(128), "butterfly natural Hadamard"),
    "split": (fwht_split, (5, 32), H(32), "butterfly natural Hadamard"),
    "halves-walsh": (fwht_halves_walsh, (4, 64), walsh(64).T, "butterfly sequency Hadamard"),
    "rows-nchw": (fwht_rows, (2, 3, 16, 5), H(16) / 4, "butterfly natural Hadamard"),
    "flipped-last-stage": (lambda v: fwht_halves(v, flip_last=True), (3, 32), H(32) * np.tile([1, -1], 16),
                           "butterfly column-scaled natural Hadamard"),
}
CHAIN_OPS = ("strided_slice", "take", "split", "concat", "add", "subtract", "expand_dims", "squeeze",
             "permute_dims", "index_select")


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("name", BUTTERFLIES)
def test_butterfly_chain_becomes_one_transform(name, exporter, harness):
    """Against scipy's matrix, and against onnxruntime on the exported graph (torch.onnx) or PyTorch
    (torch.export); max|out − ref| / max|ref| <= 1e-5."""
    fn, shape, matrix, kind = BUTTERFLIES[name]
    torch.manual_seed(seed_of(name))
    module, x = Butterfly(fn).eval(), torch.randn(*shape)
    model = to_onnx(module, x) if exporter == "onnx" else module
    art = reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))
    record = next(p for p in art.manifest["passes"] if p["name"] == "fwht")
    assert record["rewrites"] == {kind: 1}, record["notes"]
    ops = record["after"]["ops"]
    assert ops["call_tir"] == 1 and not any(ops.get(op, 0) for op in CHAIN_OPS), ops  # the chain is gone
    assert art.manifest["build"]["schedules"].get("wht") == 1
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    axis = 2 if name == "rows-nchw" else -1
    want = np.moveaxis(np.moveaxis(x.numpy().astype(np.float64), axis, -1) @ matrix, -1, axis)
    assert max_rel_err(out, want) <= RTOL
    ref = harness.onnxruntime(model, {"x": x.numpy()})[0] if exporter == "onnx" else module(x).numpy()
    assert max_rel_err(out, ref) <= RTOL


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
def test_butterfly_chain_with_a_wrong_sign_is_refused(exporter, harness):
    """The first stage computes (a + b, a + b) (the bug in phy710/Block-Walsh-Hadamard-Transform-Layer-
    Speed-Test's fwht2_add.py): the chain is left whole, with the reason in the report, and the
    refused chain builds (each stage read twice stays materialized, see topi_ext/schedules/cpu.py) and
    agrees with onnxruntime / PyTorch: max|out − ref| / max|ref| <= 1e-5."""
    module, x = Butterfly(lambda v: fwht_halves(v, wrong_first=True)).eval(), torch.randn(4, 32)
    model = to_onnx(module, x) if exporter == "onnx" else module
    example = {} if exporter == "onnx" else {"example_inputs": (x,)}
    res = harness.rewrite(model, FoldConstants, FastWHT, **example)
    assert res.report.total == 0
    assert any("5-stage butterfly chain" in note and "non-orthogonal column pairs" in note
               and "not a Sylvester Hadamard matrix" in note for note in res.report.notes), res.report.notes
    assert res.ops_after["concat"] == 5
    assert res.ops_after.get("call_tir", 0) == 0
    art = reforge.compile(model, opt_level=2, **example)
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    ref = harness.onnxruntime(model, {"x": x.numpy()})[0] if exporter == "onnx" else module(x).numpy()
    assert max_rel_err(out, ref) <= RTOL


@pytest.mark.parametrize("case", ["random signs", "rows permuted"])
def test_non_hadamard_sign_matrix_is_refused(case, harness):
    """A random ±c matrix, and H with its rows permuted (orthogonal ±c, a Hadamard matrix, but not
    Sylvester's in any column order: x·P·H is not a permuted FWHT output), stay dense with a note."""
    rng = np.random.default_rng(seed_of(case))
    w = np.where(rng.random((32, 32)) < 0.5, -1, 1).astype("float32") if case == "random signs" \
        else H(32)[rng.permutation(32)]
    model = harness.model([N("MatMul", ["x", "w"], ["y"])], {"x": (3, 32)}, {"w": w * 0.25})
    res = harness.rewrite(model, FoldConstants, FastWHT)
    assert res.report.total == 0 and res.ops_after["matmul"] == 1
    pairs = "0 non-orthogonal" if case == "rows permuted" else "non-orthogonal"
    assert any("±0.25 matrix" in note and pairs in note and "not a Sylvester Hadamard matrix" in note
               for note in res.report.notes), res.report.notes
