"""sparse: a small CNN pruned by torch.nn.utils.prune (l1_unstructured, then prune.remove) and exported
to ONNX runs its mostly-zero convs and dense layer as sparse operators at -O2, exact against
onnxruntime (graph optimizations off): max|out − ref| / max|ref| <= 1e-5; the pass report names every
layer with its sparsity and choice; layers below the measured crossover, grouped and dilated convs stay
dense; on by default at -O2 for x86 and arm (tests/reforge/test_arm.py runs it under qemu); the build report counts
the sparse kernels; an AVX2 build's kernels take 8-lane vectors."""

from __future__ import annotations


import numpy as np
import pytest
from onnx import helper

import reforge
from reforge import backends
from reforge.passes import FoldConstants, Sparse
from reforge.passes.sparse import CROSSOVER
from tests.helpers import max_rel_err, onnxruntime, pruned_onnx, seed_of, sparse_kernel_specs

RTOL = 1e-5


def sparse_record(art) -> dict:
    return next(p for p in art.manifest["passes"] if p["name"] == "sparse")


def test_pruned_net_at_O2_matches_onnxruntime():
    """90 % l1_unstructured, -O2: every conv and the dense layer sparse (>= every crossover), each conv's
    bias and ReLU in its epilogue. prune-channels is off here, so every layer keeps exactly 90 % zeros;
    with it (the default) zero filters and the input slices they leave unread are removed first, and what
    remains is still exact."""
    model = pruned_onnx(0.9, 0)
    x = np.random.default_rng(seed_of("sparse-net")).standard_normal((1, 3, 17, 19)).astype("float32")
    pruned = reforge.compile(model)
    assert next(p for p in pruned.manifest["passes"] if p["name"] == "prune-channels")["rewrites"]
    assert sparse_record(pruned)["rewrites"] and pruned.manifest["build"]["schedules"]["sparse_conv2d_nchwc"] >= 1
    assert max_rel_err(list(pruned.run({"x": x}).values())[0], onnxruntime(model, x)) <= RTOL
    art = reforge.compile(model, disable_passes=["prune-channels"])
    record = sparse_record(art)
    assert record["rewrites"] == {"conv kxk to sparse": 2, "conv 1x1 to sparse": 2, "dense to sparse": 1,
                                  "bias fused into a sparse conv": 4, "relu fused into a sparse conv": 4}
    assert record["after"]["ops"].get("nn.conv2d", 0) == 0
    schedules = art.manifest["build"]["schedules"]  # the build line counts the sparse kernels
    assert schedules["sparse_conv2d_nchwc"] == 4 and schedules["sparse_dense"] == 1
    layers = [n for n in record["notes"] if "zeros -> sparse" in n]
    assert len(layers) == 5 and all("90.0% zeros" in n for n in layers)  # every weight size a multiple of 10
    assert max_rel_err(list(art.run({"x": x}).values())[0], onnxruntime(model, x)) <= RTOL
    dense = reforge.compile(model, disable_passes=["sparse"])
    assert "sparse_conv2d_nchwc" not in dense.manifest["build"]["schedules"]
    # the 3-channel image is read by the first sparse conv in NCHW and the last writes NCHW for the classifier
    assert dense.manifest["build"]["layout_transforms"] == 2 and art.manifest["build"]["layout_transforms"] == 0


def test_avx2_build_takes_8_lane_kernels():
    """On an AVX2 CPU (x86-avx2: 16 ymm registers) the sparse convs take 8-lane vectors and blocks and tiles of 32
    positions (8 accumulators), not AVX-512's 16 and 64; the pruned net stays exact against onnxruntime."""
    model = pruned_onnx(0.9, 0)
    specs = sparse_kernel_specs(model, "x86-avx2")
    assert len(specs) == 4 and all(s.vector == 8 and s.width <= 32 for s in specs)
    assert all(s.vector == 16 and s.width <= 64 for s in sparse_kernel_specs(model, "x86"))
    art = reforge.compile(model, target="x86-avx2")
    assert art.manifest["build"]["schedules"]["sparse_conv2d_nchwc"] == 4
    x = np.random.default_rng(seed_of("sparse-avx2")).standard_normal((1, 3, 17, 19)).astype("float32")
    assert max_rel_err(list(art.run({"x": x}).values())[0], onnxruntime(model, x)) <= RTOL


def test_below_crossover_stays_dense():
    """50 % pruned: under every measured crossover, so every layer stays dense and the report says so."""
    assert min(CROSSOVER.values()) > 0.5
    art = reforge.compile(pruned_onnx(0.5, 1))
    record = sparse_record(art)
    assert record["rewrites"] == {}
    assert sum("50.0% zeros -> dense" in n for n in record["notes"]) == 5


@pytest.mark.parametrize("kind", ["grouped", "dilated"])
def test_grouped_and_dilated_convs_stay(kind, harness):
    rng = np.random.default_rng(seed_of(kind))
    w = rng.standard_normal((8, 4 if kind == "grouped" else 8, 3, 3)).astype("float32")
    w[rng.random(w.shape) < 0.95] = 0
    attrs = dict(group=2) if kind == "grouped" else dict(dilations=[2, 2])
    model = harness.model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 2, 2, 2], **attrs)],
                          {"x": (1, 8, 12, 12)}, {"w": w})
    res = harness.rewrite(model, FoldConstants, Sparse)
    assert res.report.total == 0 and res.ops_after["nn.conv2d"] == 1


def test_forced_on_odd_net_matches_onnxruntime(harness):
    """min_sparsity 0: a 0 %-sparse conv and an all-zero one rewritten too, still exact."""
    rng = np.random.default_rng(seed_of("forced"))
    w1 = rng.standard_normal((5, 3, 3, 3)).astype("float32")
    w2 = np.zeros((7, 5, 1, 1), "float32")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"])]
    model = harness.model(nodes, {"x": (1, 3, 11, 9)}, {"w1": w1, "w2": w2, "b2": rng.standard_normal(7)
                                                         .astype("float32")})
    res = harness.rewrite(model, FoldConstants, lambda: Sparse(min_sparsity=0))
    assert res.report.rewrites == {"conv kxk to sparse": 1, "conv 1x1 to sparse": 1, "relu fused into a sparse conv": 1,
                                   "bias fused into a sparse conv": 1}
    assert res.ops_after.get("nn.conv2d", 0) == 0
    feeds = harness.random_feeds(res.imported, rng)
    assert max_rel_err(harness.run(res.mod, res.imported, feeds)[0], harness.onnxruntime(model, feeds)[0]) <= RTOL


def test_default_on_x86_and_arm():
    """At -O2 on x86 (after fft-conv) and arm (after binarize: arm has no fft-conv), not below -O2 nor on the
    device targets."""
    for name, before in (("x86", "fft-conv"), ("arm", "binarize")):
        target = backends.get(name)
        assert all("sparse" not in target.passes(level) for level in (0, 1))
        names = target.passes(2)
        assert names[names.index("sparse") - 1] == before
    assert "sparse" not in backends.get("cuda").passes(2)
