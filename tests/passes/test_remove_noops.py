"""remove-noops on the inference no-ops exporters leave, checked against onnxruntime.

Each case is a one- or two-node ONNX graph (opset 17 unless stated). The pass runs on the
imported module; the operator it targets must be gone (graph_stats ops), the report must name
the rewrite, and the built module must return exactly what onnxruntime returns (tolerance 0: a
removed no-op changes no bit). Negative cases that merely look like no-ops must stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from onnx import helper

from reforge.passes import RemoveNoops
from tests.helpers import seed_of

N = helper.make_node
X = (1, 4, 3, 5)
F32 = np.float32


@dataclass(frozen=True)
class Case:
    id: str
    nodes: list
    params: dict
    rewrites: dict  # p.report.rewrites, exactly ({} = nothing may be removed)
    before: str | None  # the Relax op the import produces for the no-op (None: the importer drops it)
    after: dict  # graph_stats(mod).ops after the pass, exactly
    outputs: tuple = ("y",)
    x: tuple = X
    opset: int = 17


CASES = [
    Case("dropout-ratio-input", [N("Dropout", ["x", "r"], ["y"])], {"r": F32(0.3)}, {"dropout": 1}, "nn.dropout", {}),
    Case("dropout-no-ratio", [N("Dropout", ["x"], ["y"])], {}, {"dropout": 1}, "nn.dropout", {}),
    Case("dropout-opset12-ratio", [N("Dropout", ["x", "r"], ["y"])], {"r": F32(0.5)}, {"dropout": 1},
         "nn.dropout", {}, opset=12),
    Case("dropout-mask-unused", [N("Dropout", ["x", "r"], ["y", "mask"])], {"r": F32(0.3)}, {"dropout": 1},
         "nn.dropout", {}),
    Case("dropout-mask-is-output", [N("Dropout", ["x", "r"], ["y", "mask"])], {"r": F32(0.3)}, {"dropout": 1},
         "nn.dropout", {"ones": 1}, outputs=("y", "mask")),
    Case("dropout-mask-used-in-graph", [N("Dropout", ["x"], ["d", "mask"]), N("Cast", ["mask"], ["m"], to=1),
                                        N("Mul", ["d", "m"], ["y"])], {}, {"dropout": 1, "astype": 1},
         "nn.dropout", {"ones": 1, "multiply": 1}),
    Case("identity", [N("Identity", ["x"], ["y"])], {}, {}, None, {}),
    Case("mul-ones-scalar", [N("Mul", ["x", "c"], ["y"])], {"c": F32(1)}, {"multiply by ones": 1}, "multiply", {}),
    Case("mul-ones-per-channel-first", [N("Mul", ["c", "x"], ["y"])], {"c": np.ones((4, 1, 1), F32)},
         {"multiply by ones": 1}, "multiply", {}),
    Case("add-zeros", [N("Add", ["x", "c"], ["y"])], {"c": np.zeros((1, 4, 1, 1), F32)}, {"add zeros": 1}, "add", {}),
    Case("div-one", [N("Div", ["x", "c"], ["y"])], {"c": F32(1)}, {"divide by ones": 1}, "divide", {}),
    Case("sub-zero", [N("Sub", ["x", "c"], ["y"])], {"c": np.zeros(5, F32)}, {"subtract zeros": 1}, "subtract", {}),
    Case("reshape-same-shape", [N("Reshape", ["x", "s"], ["y"])], {"s": np.array(X, np.int64)}, {"reshape": 1},
         "reshape", {}),
    Case("reshape-same-shape-0-and-minus-1", [N("Reshape", ["x", "s"], ["y"])], {"s": np.array([0, 4, -1, 5])},
         {"reshape": 1}, "reshape", {}),
    Case("cast-same-dtype", [N("Cast", ["x"], ["y"], to=1)], {}, {"astype": 1}, "astype", {}),
    Case("transpose-identity-perm", [N("Transpose", ["x"], ["y"], perm=[0, 1, 2, 3])], {}, {"permute_dims": 1},
         "permute_dims", {}),
    Case("slice-whole", [N("Slice", ["x", "b", "e", "a"], ["y"])],
         {"b": np.array([0]), "e": np.array([4]), "a": np.array([1])}, {"whole slice": 1}, "strided_slice", {}),
    Case("slice-whole-to-int-max", [N("Slice", ["x", "b", "e", "a", "s"], ["y"])],
         {"b": np.array([0, 0]), "e": np.array([2**63 - 1, 5]), "a": np.array([1, 3]), "s": np.array([1, 1])},
         {"whole slice": 1}, "strided_slice", {}),
    Case("concat-single-input", [N("Concat", ["x"], ["y"], axis=1)], {}, {"single-input concat": 1}, "concat", {}),
    Case("where-all-true", [N("Where", ["c", "x", "z"], ["y"])],
         {"c": np.ones(X, bool), "z": np.zeros(X, F32)}, {"all-true where": 1}, "where", {}),
    Case("where-all-true-scalar", [N("Where", ["c", "x", "z"], ["y"])], {"c": np.array(True), "z": F32(0)},
         {"all-true where": 1}, "where", {}),
    # look-alikes that change the result: nothing may be removed
    Case("keep-mul-half", [N("Mul", ["x", "c"], ["y"])], {"c": F32(0.5)}, {}, "multiply", {"multiply": 1}),
    Case("keep-reshape-changing-shape", [N("Reshape", ["x", "s"], ["y"])], {"s": np.array([1, 4, 15])}, {},
         "reshape", {"reshape": 1}),
    Case("keep-mul-ones-broadcasting-bigger", [N("Mul", ["x", "c"], ["y"])], {"c": np.ones((2, 1, 1, 5), F32)},
         {}, "multiply", {"multiply": 1}),
    Case("keep-zero-minus-x", [N("Sub", ["c", "x"], ["y"])], {"c": F32(0)}, {}, "subtract", {"subtract": 1}),
    Case("keep-one-over-x", [N("Div", ["c", "x"], ["y"])], {"c": F32(1)}, {}, "divide", {"divide": 1}),
    Case("keep-slice-reversed", [N("Slice", ["x", "b", "e", "a", "s"], ["y"])],
         {"b": np.array([-1]), "e": np.array([-2**63]), "a": np.array([1]), "s": np.array([-1])}, {},
         "strided_slice", {"strided_slice": 1}),
    Case("keep-slice-part", [N("Slice", ["x", "b", "e", "a"], ["y"])],
         {"b": np.array([1]), "e": np.array([4]), "a": np.array([1])}, {}, "strided_slice", {"strided_slice": 1}),
    Case("keep-transpose-swapping-axes", [N("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2])], {}, {},
         "permute_dims", {"permute_dims": 1}),
    Case("keep-where-partly-false", [N("Where", ["c", "x", "z"], ["y"])],
         {"c": np.array([True, False, True, True, True]), "z": np.zeros(X, F32)}, {}, "where", {"where": 1}),
    # ONNX Transpose without perm reverses the axes (Relax permute_dims axes=None); on a tensor
    # whose shape reads the same backwards it keeps the shape but is no identity.
    Case("keep-default-transpose-square", [N("Transpose", ["x"], ["y"])], {}, {}, "permute_dims",
         {"permute_dims": 1}, x=(4, 4)),
    Case("keep-default-transpose-palindromic-3d", [N("Transpose", ["x"], ["y"])], {}, {}, "permute_dims",
         {"permute_dims": 1}, x=(2, 3, 2)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_remove_noops(case: Case, harness):
    rng = np.random.default_rng(seed_of(case.id))
    model = harness.model(case.nodes, {"x": case.x}, case.params, case.outputs, opset=case.opset)
    res = harness.rewrite(model, RemoveNoops)

    feeds = harness.random_feeds(res.imported, rng)
    outs, refs = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        # exact; a bool reference (a Dropout mask, imported as float32 1.0) compares by value
        np.testing.assert_array_equal(out, ref.astype(out.dtype), strict=True)

    if case.before is not None:
        assert res.ops_before.get(case.before, 0) >= 1, res.ops_before  # the import kept the op
    assert dict(res.report.rewrites) == case.rewrites
    assert res.ops_after == case.after
