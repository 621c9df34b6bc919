"""fuse-fplus: FPlus / PFPlus spellings become one elementwise operator fused into the conv before it.

The operator is checked against numpy's power form of the definition; PyTorch modules (the power
form, PFPlus with λ and μ, the where form both ways round, PFPlus's where form) through torch.onnx and torch.export
compile to one ``fplus`` call with no pow / sign / abs / where left; ONNX graphs on inputs with exact
zeros, and look-alikes that must stay (no − 1, other constants, μ < 0, another quotient), against
onnxruntime. Tolerance everywhere: max|out − ref| / max|ref| <= 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from onnx import helper
from torch import nn
from tvm import te

import reforge
from reforge import backends
from reforge.autotune.space import block_names
from reforge.build import BuildReport, fuse, fuse_nchw
from reforge.passes import FoldConstants, FuseFPlus
from reforge.topi_ext.fplus import OP, fplus, fplus_np
from tests.helpers import max_rel_err, seed_of, to_onnx

RTOL = 1e-5
N = helper.make_node


def with_zeros(shape, rng) -> np.ndarray:
    """N(0, 2²) draws with about a fifth of them exactly 0 (and one -0.0)."""
    x = (rng.standard_normal(shape) * 2).astype("float32")
    x[rng.random(shape) < 0.2] = 0
    x.reshape(-1)[0] = -0.0
    return x


# ----------------------------------------------------------------------------- the operator


@pytest.mark.parametrize("lam,mu", [(1.0, 1.0), (0.5, 2.0), (-1.5, 0.25)])
def test_operator_matches_numpy(lam, mu):
    rng = np.random.default_rng(seed_of(f"{lam}{mu}"))
    x = with_zeros((3, 7, 5), rng)
    xt = te.placeholder(x.shape, "float32", "x")
    lib = tvm.compile(te.create_prim_func([xt, fplus(xt, lam, mu)]), target="llvm")
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.empty_like(x), dev)
    lib["main"](tvm.runtime.tensor(x, dev), out)
    ref = fplus_np(x, lam, mu)
    assert max_rel_err(out.numpy(), ref) <= RTOL
    assert np.all(out.numpy()[x == 0] == 0)


# ----------------------------------------------------------------------------- PyTorch modules


class ConvFPlus(nn.Module):
    """conv → FPlus written one of the natural ways."""

    def __init__(self, form: str):
        super().__init__()
        self.conv, self.form = nn.Conv2d(3, 8, 3, padding=1), form

    def forward(self, x):
        y = self.conv(x)
        if self.form == "pow":
            return torch.pow(1 + torch.abs(y), torch.sign(y)) - 1
        if self.form == "pfplus":  # λ = 0.5, μ = 2
            return 0.5 * (torch.pow(1 + 2.0 * torch.abs(y), torch.sign(y)) - 1)
        if self.form == "where":
            return torch.where(y >= 0, y, y / (1 - y))
        if self.form.startswith("pfplus-where"):  # λ = 0.5, μ = 2; the condition on t = μy or on y
            t = 2.0 * y
            return 0.5 * torch.where((y if self.form.endswith("-y") else t) >= 0, t, t / (1 - t))
        return torch.where(y < 0, y / (1 - y), y)  # "where-lt"


FORMS = ["pow", "pfplus", "where", "where-lt", "pfplus-where", "pfplus-where-y"]


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("form", FORMS)
def test_torch_modules_compile_to_one_fplus(form, exporter):
    torch.manual_seed(seed_of(form))
    module, x = ConvFPlus(form).eval(), torch.randn(1, 3, 8, 8) * 2
    model = to_onnx(module, x) if exporter == "onnx" else module
    art = reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))
    record = next(p for p in art.manifest["passes"] if p["name"] == "fuse-fplus")
    assert record["blocks"] == {"found": 1, "rewritten": 1, "refused": {}}
    after = record["after"]["ops"]
    assert after["call_tir"] == 1 and after["nn.conv2d"] == 1
    assert not {"power", "sign", "abs", "where", "divide", "multiply"} & set(after)
    with torch.no_grad():
        ref = module(x).numpy()
    assert (ref < 0).any() and (ref > 0).any()
    assert art.manifest["build"]["schedules"]["conv2d_nchwc"] == 1  # conv + fplus fused: one blocked schedule
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert max_rel_err(out, ref) <= RTOL


def test_fplus_fuses_into_the_blocked_depthwise_epilogue():
    """x86: a depthwise conv runs in NCHW8c too, and fplus after it joins its fused function."""
    torch.manual_seed(5)
    module, x = ConvFPlus("where").eval(), torch.randn(1, 8, 8, 8) * 2
    module.conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    art = reforge.compile(module, opt_level=2, example_inputs=(x,))
    assert art.manifest["build"]["schedules"] == {"depthwise_nchwc": 1, "generic": 2}  # + layout in and out
    with torch.no_grad():
        ref = module(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert max_rel_err(out, ref) <= RTOL


class TwoConvs(nn.Module):
    """conv → FPlus (power form) → conv → FPlus (where form)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = ConvFPlus("pow"), ConvFPlus("where")
        self.second.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.second(self.first(x))


@pytest.mark.parametrize("target_name", ["x86", "cuda"])
def test_fplus_fuses_into_the_conv_epilogue(target_name):
    """op_pattern elementwise: FuseOps puts each fplus in its conv's fused function, both in the NCHW
    build (cuda) and after x86's blocked layouts (fplus moved past the layout transform)."""
    module, x = TwoConvs().eval(), torch.randn(1, 3, 8, 8)
    mod = FuseFPlus()(FoldConstants()(reforge.frontend.load(module, example_inputs=(x,)).mod))
    target = backends.get(target_name)
    with target.tvm_target:
        fused = fuse(mod, target, BuildReport()) if target_name == "x86" else fuse_nchw(mod, target)
    blocks = [block_names(f) for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    conv = "conv2d_nchwc" if target_name == "x86" else "conv2d_nchw"
    assert sum({conv, OP} <= b for b in blocks) == 2 and sum(OP in b for b in blocks) == 2, blocks
    assert sum("te_layout_transform" in b for b in blocks) == (2 if target_name == "x86" else 0)  # in and out


# ----------------------------------------------------------------------------- ONNX graphs, look-alikes


def power_graph(one: float = 1.0, minus: float | None = 1.0, mu: float | None = None):
    """``(one + μ|x|)^sign(x) − minus`` (no subtraction when ``minus`` is None)."""
    nodes = [N("Abs", ["x"], ["a"]), N("Sign", ["x"], ["s"])]
    params = {"one": np.float32(one)}
    if mu is not None:
        nodes.append(N("Mul", ["a", "mu"], ["am"]))
        params["mu"] = np.float32(mu)
    nodes += [N("Add", ["one", "am" if mu is not None else "a"], ["b"]),
              N("Pow", ["b", "s"], ["y" if minus is None else "p"])]
    if minus is not None:
        nodes.append(N("Sub", ["p", "minus"], ["y"]))
        params["minus"] = np.float32(minus)
    return nodes, {"x": (2, 4, 6, 6)}, params


def where_graph(one: float = 1.0, mu: float | None = None):
    """where(x >= 0, t, t / (one − t)) with t = x, or t = μ·x if ``mu`` is given."""
    t = "t" if mu is not None else "x"
    nodes = [N("Mul", ["x", "mu"], ["t"])] if mu is not None else []
    nodes += [N("GreaterOrEqual", ["x", "zero"], ["c"]), N("Sub", ["one", t], ["d"]), N("Div", [t, "d"], ["q"]),
              N("Where", ["c", t, "q"], ["y"])]
    params = {"zero": np.float32(0), "one": np.float32(one)}
    return nodes, {"x": (2, 4, 6, 6)}, {**params, **({"mu": np.float32(mu)} if mu is not None else {})}


CASES = [  # (name, graph, rewritten, refusal reason fragment)
    ("power", power_graph(), True, None),
    ("power-mu", power_graph(mu=3.0), True, None),
    ("where", where_graph(), True, None),
    ("no minus one", power_graph(minus=None), False, None),
    ("minus two", power_graph(minus=2.0), False, "c ≠ 1"),
    ("two plus", power_graph(one=2.0), False, "base is not 1 + μ|x|"),
    ("negative mu", power_graph(mu=-0.5), False, "needs μ > 0"),
    ("other quotient", where_graph(one=2.0), False, "d ≠ 1 − t"),
    ("where-mu", where_graph(mu=0.5), True, None),
    ("where negative mu", where_graph(mu=-0.5), False, "μx and x differ in sign"),
]


@pytest.mark.parametrize("name,graph,rewritten,reason", CASES, ids=[c[0] for c in CASES])
def test_onnx_graphs_and_look_alikes(name, graph, rewritten, reason, harness):
    rng = np.random.default_rng(seed_of(name))
    model = harness.model(*graph)
    res = harness.rewrite(model, FoldConstants, FuseFPlus)
    assert res.report.total == int(rewritten)
    assert res.ops_after.get("call_tir", 0) == int(rewritten)
    if reason is not None:
        assert any(reason in note for note in res.report.notes), res.report.notes
        assert sum(res.report.refused.values()) == 1
    feeds = {"x": with_zeros((2, 4, 6, 6), rng)}
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    finite = np.isfinite(ref[0])  # (1 − 0.5|x|)^sign(x) is NaN where the base is negative
    np.testing.assert_array_equal(np.isfinite(out[0]), finite)
    assert max_rel_err(out[0][finite], ref[0][finite]) <= RTOL
    if rewritten:
        assert np.all(out[0][feeds["x"] == 0] == 0)


def test_scale_of_a_shared_fplus_stays_a_multiply(harness):
    """``0.5·f`` where f = FPlus(x) is read twice: f becomes the operator, the multiply stays."""
    nodes, inputs, params = power_graph()
    nodes[-1] = N("Sub", ["p", "minus"], ["f"])
    nodes += [N("Mul", ["f", "half"], ["h"]), N("Add", ["h", "f"], ["y"])]
    model = harness.model(nodes, inputs, {**params, "half": np.float32(0.5)})
    res = harness.rewrite(model, FoldConstants, FuseFPlus)
    assert res.report.rewrites == {"power form": 1} and res.ops_after["multiply"] == 1
    feeds = {"x": with_zeros((2, 4, 6, 6), np.random.default_rng(11))}
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert max_rel_err(out[0], ref[0]) <= RTOL
