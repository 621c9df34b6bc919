"""fold-batchnorm on every spelling exporters produce, checked against onnxruntime / PyTorch.

Each ONNX case is a small graph built with onnx.helper (opset 17) with random weights and
randomized BatchNorm statistics (gamma includes negative entries). The module runs through
fold-constants (its prerequisite) and fold-batchnorm, is built for the host and compared with
onnxruntime (graph optimizations off) at rtol 1e-4: max|out - ref| <= 1e-4 * max|ref|.
Every case also states exactly which rewrites the pass reports and which operators remain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import reforge
from reforge.passes import FoldBatchNorm, FoldConstants
from tests.helpers import Stats, make_params, max_rel_err, randomize_bn, seed_of

RTOL = 1e-4  # max|out - ref| / max|ref|, the tolerance the registry gives fold-batchnorm
N = helper.make_node


# ----------------------------------------------------------------------------- case table


def bn(x: str, y: str, p: str = "bn", eps: float = 1e-5):
    return N("BatchNormalization", [x, f"{p}_g", f"{p}_b", f"{p}_m", f"{p}_v"], [y], epsilon=eps)


def nonzero(*shape):
    """Marker in a params spec: random values with |v| in [0.5, 2] (divisors)."""
    return lambda rng: rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


@dataclass(frozen=True)
class Case:
    id: str
    nodes: list
    inputs: dict
    params: dict
    rewrites: dict  # p.report.rewrites, exactly
    ops: dict  # graph_stats(mod).ops after the pass, exactly
    outputs: tuple = ("y",)
    note: str | None = None  # a substring expected in p.report.notes


X4, X3, X2 = (2, 4, 6, 6), (2, 4, 9), (3, 6)
PRE_CONV = {"batchnorm as affine": 1, "affine into preceding conv": 2}
PRE_DENSE = {"batchnorm as affine": 1, "affine into preceding dense": 2}
FOLLOW_CONV = {"batchnorm as affine": 1, "affine into following conv": 2}
CONV_ADD = {"nn.conv2d": 1, "add": 1}
MATMUL_ADD = {"matmul": 1, "add": 1}
PAD1 = [1, 1, 1, 1]

CASES = [
    Case("conv-bn", [N("Conv", ["x", "W"], ["h"], pads=PAD1), bn("h", "y")],
         {"x": X4}, {"W": (6, 4, 3, 3), "bn": Stats(6)}, PRE_CONV, CONV_ADD),
    Case("conv+bias-bn", [N("Conv", ["x", "W", "B"], ["h"], pads=PAD1), bn("h", "y")],
         {"x": X4}, {"W": (6, 4, 3, 3), "B": (6,), "bn": Stats(6)}, PRE_CONV, CONV_ADD),
    Case("conv-bn-strided-dilated", [N("Conv", ["x", "W", "B"], ["h"], pads=[2, 1, 2, 1], strides=[2, 1],
                                       dilations=[2, 2]), bn("h", "y")],
         {"x": X4}, {"W": (6, 4, 3, 3), "B": (6,), "bn": Stats(6)}, PRE_CONV, CONV_ADD),
    Case("conv1d-bn1d", [N("Conv", ["x", "W"], ["h"], pads=[1, 1]), bn("h", "y")],
         {"x": X3}, {"W": (6, 4, 3), "bn": Stats(6)}, PRE_CONV, {"nn.conv1d": 1, "add": 1}),
    Case("grouped-conv-bn", [N("Conv", ["x", "W"], ["h"], pads=PAD1, group=2), bn("h", "y")],
         {"x": X4}, {"W": (6, 2, 3, 3), "bn": Stats(6)}, PRE_CONV, CONV_ADD),
    Case("depthwise-conv-bn", [N("Conv", ["x", "W", "B"], ["h"], pads=PAD1, group=4), bn("h", "y")],
         {"x": X4}, {"W": (8, 1, 3, 3), "B": (8,), "bn": Stats(8)}, PRE_CONV, CONV_ADD),
    Case("gemm-transB+bias-bn", [N("Gemm", ["x", "W", "B"], ["h"], transB=1), bn("h", "y")],
         {"x": X2}, {"W": (5, 6), "B": (5,), "bn": Stats(5)}, PRE_DENSE, MATMUL_ADD),
    Case("gemm-transB-bn", [N("Gemm", ["x", "W"], ["h"], transB=1), bn("h", "y")],
         {"x": X2}, {"W": (5, 6), "bn": Stats(5)}, PRE_DENSE, MATMUL_ADD),
    Case("matmul+add-bn", [N("MatMul", ["x", "W"], ["m"]), N("Add", ["m", "B"], ["h"]), bn("h", "y")],
         {"x": X2}, {"W": (6, 5), "B": (5,), "bn": Stats(5)}, PRE_DENSE, MATMUL_ADD),
    Case("lone-bn-stays-affine", [bn("x", "y")],
         {"x": X4}, {"bn": Stats(4)}, {"batchnorm as affine": 1}, {"multiply": 1, "add": 1}),
    Case("bn-conv1x1", [bn("x", "h"), N("Conv", ["h", "W"], ["y"])],
         {"x": X4}, {"W": (6, 4, 1, 1), "bn": Stats(4)}, FOLLOW_CONV, CONV_ADD),
    Case("bn-grouped-conv3x3-unpadded", [bn("x", "h"), N("Conv", ["h", "W"], ["y"], group=2)],
         {"x": X4}, {"W": (6, 2, 3, 3), "bn": Stats(4)}, FOLLOW_CONV, CONV_ADD),
    Case("bn-conv3x3-padded", [bn("x", "h"), N("Conv", ["h", "W"], ["y"], pads=PAD1)],
         {"x": X4}, {"W": (6, 4, 3, 3), "bn": Stats(4)}, {"batchnorm as affine": 1},
         {"multiply": 1, "add": 1, "nn.conv2d": 1}, note="zero-padded conv"),
    Case("bn-gemm", [bn("x", "h"), N("Gemm", ["h", "W", "B"], ["y"], transB=1)],
         {"x": X2}, {"W": (5, 6), "B": (5,), "bn": Stats(6)},
         {"batchnorm as affine": 1, "affine into following dense": 2, "affine into preceding dense": 1},
         MATMUL_ADD),
    Case("conv-bn-bn", [N("Conv", ["x", "W"], ["h"], pads=PAD1), bn("h", "h2"), bn("h2", "y", "bn2")],
         {"x": X4}, {"W": (6, 4, 3, 3), "bn": Stats(6), "bn2": Stats(6)},
         {"batchnorm as affine": 2, "affine into preceding conv": 4}, CONV_ADD),
    Case("shared-conv+bias-not-folded",
         [N("Conv", ["x", "W", "B"], ["h"], pads=PAD1), bn("h", "y"), N("Relu", ["h"], ["z"])],
         {"x": X4}, {"W": (6, 4, 3, 3), "B": (6,), "bn": Stats(6)}, {"batchnorm as affine": 1},
         {"nn.conv2d": 1, "add": 2, "multiply": 1, "nn.relu": 1}, outputs=("y", "z")),
    Case("shared-conv-output-not-folded", [N("Conv", ["x", "W"], ["h"], pads=PAD1), bn("h", "y")],
         {"x": X4}, {"W": (6, 4, 3, 3), "bn": Stats(6)}, {"batchnorm as affine": 1},
         {"nn.conv2d": 1, "multiply": 1, "add": 1}, outputs=("y", "h")),
    Case("conv-mul-scalar-dropconnect", [N("Conv", ["x", "W"], ["h"], pads=PAD1), N("Mul", ["h", "p"], ["y"])],
         {"x": X4}, {"W": (6, 4, 3, 3), "p": np.float32(0.8)}, {"affine into preceding conv": 1}, CONV_ADD),
    Case("conv-div-sub-per-channel",
         [N("Conv", ["x", "W"], ["h"], pads=PAD1), N("Div", ["h", "d"], ["h2"]), N("Sub", ["h2", "s"], ["y"])],
         {"x": X4}, {"W": (6, 4, 3, 3), "d": nonzero(1, 6, 1, 1), "s": (6, 1, 1)},
         {"affine into preceding conv": 2}, CONV_ADD),
    # constants that are not per-output-channel, or not x·c / x + c, must stay
    Case("conv-mul-spatial-not-folded", [N("Conv", ["x", "W"], ["h"], pads=PAD1), N("Mul", ["h", "c"], ["y"])],
         {"x": X4}, {"W": (6, 4, 3, 3), "c": (6, 6)}, {}, {"nn.conv2d": 1, "multiply": 1}),
    Case("conv-const-minus-x-not-folded",
         [N("Conv", ["x", "W"], ["h"], pads=PAD1), N("Sub", ["c", "h"], ["y"])],
         {"x": X4}, {"W": (6, 4, 3, 3), "c": (6, 1, 1)}, {}, {"nn.conv2d": 1, "subtract": 1}),
]


def check_outputs(outs, refs, rtol=RTOL):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        assert np.all(np.isfinite(out))
        err = max_rel_err(out, ref)
        assert err <= rtol, f"max|err| / max|ref| = {err:.3g} > {rtol}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fold_onnx(case: Case, harness):
    rng = np.random.default_rng(seed_of(case.id))
    model = harness.model(case.nodes, case.inputs, make_params(case.params, rng), case.outputs)
    res = harness.rewrite(model, FoldConstants, FoldBatchNorm)

    assert dict(res.report.rewrites) == case.rewrites
    assert res.ops_after == case.ops
    if case.note:
        assert any(case.note in n for n in res.report.notes), res.report.notes

    feeds = harness.random_feeds(res.imported, rng)
    check_outputs(harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds))


# ----------------------------------------------------------------------------- PyTorch spellings


TORCH_CASES = [  # id, module factory, input shape, expected rewrites, ops after
    ("Conv2d-BatchNorm2d", lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)),
     (1, 3, 8, 8), PRE_CONV, CONV_ADD),
    ("Conv2d(groups=3,bias)-BatchNorm2d", lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, groups=3),
                                                                nn.BatchNorm2d(6)),
     (1, 3, 8, 8), PRE_CONV, CONV_ADD),
    ("Conv1d-BatchNorm1d", lambda: nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6)),
     (2, 3, 9), PRE_CONV, {"nn.conv1d": 1, "add": 1}),
    ("Linear-BatchNorm1d", lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)),
     (2, 5), PRE_DENSE, MATMUL_ADD),
]


@pytest.mark.parametrize("name,make,shape,rewrites,ops", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_fold_torch_export(name, make: Callable[[], nn.Module], shape, rewrites, ops, harness):
    """torch.export spellings (bias as reshape + add, Linear as permute_dims + matmul + add),
    against the PyTorch module itself."""
    torch.manual_seed(seed_of(name))
    x = torch.randn(shape)
    res = harness.rewrite(randomize_bn(make()), FoldConstants, FoldBatchNorm, example_inputs=(x,))
    assert dict(res.report.rewrites) == rewrites
    assert res.ops_after == ops
    feeds = {res.imported.inputs[0].name: x.numpy()}
    check_outputs(harness.run(res.mod, res.imported, feeds), res.imported.reference(feeds))


# ----------------------------------------------------------------------------- non-finite statistics


@pytest.mark.parametrize("after_conv", [False, True], ids=["lone-bn", "conv-bn"])
def test_nonfinite_scale_is_not_folded(after_conv: bool, harness):
    """running_var = -epsilon makes var + eps exactly 0 in float32 and float64: channel 0 gets an
    infinite scale, channel 1 (gamma = 0) a NaN one. The pass must leave the BatchNorm alone."""
    eps = np.float32(1e-5)
    assert float(np.float32(-eps)) + float(eps) == 0.0  # the cancellation the test relies on
    rng = np.random.default_rng(seed_of(f"nonfinite{after_conv}"))
    c = 6 if after_conv else 4
    params = make_params({"W": (6, 4, 3, 3), "bn": Stats(c)} if after_conv else {"bn": Stats(c)}, rng)
    params["bn_v"][:2] = -eps
    params["bn_g"][1] = 0.0
    nodes = [N("Conv", ["x", "W"], ["h"], pads=PAD1), bn("h", "y", eps=float(eps))] if after_conv \
        else [bn("x", "y", eps=float(eps))]
    model = harness.model(nodes, {"x": X4}, params)

    with np.errstate(divide="ignore", invalid="ignore"):
        res = harness.rewrite(model, FoldConstants, FoldBatchNorm)
    assert res.report.total == 0
    assert any("not finite" in n for n in res.report.notes), res.report.notes
    assert res.ops_after == ({"nn.conv2d": 1, "nn.batch_norm": 1} if after_conv else {"nn.batch_norm": 1})

    feeds = harness.random_feeds(res.imported, rng)
    out = harness.run(res.mod, res.imported, feeds)[0]
    ref = harness.onnxruntime(model, feeds)[0]
    unfolded = harness.run(res.imported.mod, res.imported, feeds)[0]
    # onnxruntime and TVM's own batch_norm lowering disagree on inf vs NaN inside a non-finite
    # channel (x·inf + (-inf) vs (x - μ)/0), so positions are compared, not the kind of non-finite.
    assert not np.isfinite(ref[:, :2]).any()
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ref))
    fin = np.isfinite(ref)
    assert np.abs(out[fin] - ref[fin]).max() <= RTOL * np.abs(ref[fin]).max()
    np.testing.assert_array_equal(out, unfolded)  # bit for bit what the unrewritten module computes


# ----------------------------------------------------------------------------- through reforge.compile


def test_compile_pipeline_folds_and_verifies(harness):
    """Conv-BN-Relu-Dropout-Conv1x1(+bias)-BN-Mul(0.8) through reforge.compile(verify=True)."""
    rng = np.random.default_rng(seed_of("pipeline"))
    nodes = [N("Conv", ["x", "W"], ["a"], pads=PAD1), bn("a", "b"), N("Relu", ["b"], ["c"]),
             N("Dropout", ["c", "ratio"], ["d"]), N("Conv", ["d", "W2", "B2"], ["e"]), bn("e", "f", "bn2"),
             N("Mul", ["f", "p"], ["y"])]
    params = make_params({"W": (6, 4, 3, 3), "bn": Stats(6), "W2": (5, 6, 1, 1), "B2": (5,), "bn2": Stats(5),
                          "p": np.float32(0.8)}, rng)
    params["ratio"] = np.float32(0.3)
    model = harness.model(nodes, {"x": X4}, params)

    art = reforge.compile(model, passes=["remove-noops", "fold-batchnorm"], verify=True)
    passes = art.manifest["passes"]
    assert [p["name"] for p in passes] == ["remove-noops", "fold-constants", "fold-batchnorm"]
    assert art.manifest["verification"]["passed"]
    assert passes[-1]["after"]["ops"] == {"nn.conv2d": 2, "add": 2, "nn.relu": 1}
    feeds = {"x": rng.standard_normal(X4).astype(np.float32)}
    check_outputs(list(art.run(feeds).values()), harness.onnxruntime(model, feeds))
