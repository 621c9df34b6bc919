"""sparse in the blocked layout: pruned residual blocks (1×1 reduce, 3×3 with stride / padding, 1×1 expand,
bias, ReLU, residual add, channels that block by 16 on AVX-512 and by 4) compiled for x86 with the pass
forced on every conv: each conv's bias, ReLU and residual add run in the sparse kernel's epilogue, the
kernels read and write NCHW[x]c, the build keeps exactly the layout transforms of the dense build (the
network's input and output), and the result matches onnxruntime (graph optimizations off) to 1e-5
(max|out − ref| / max|ref|). A conv read twice keeps its epilogue apart; the pass leaves an unpruned
network untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm
from onnx import helper

import reforge
from reforge.passes import FoldConstants, Sparse, registry

from tests.helpers import max_rel_err, seed_of

RTOL = 1e-5


def pruned(rng, shape, sparsity):
    w = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype("float32")
    w[rng.random(shape) < sparsity] = 0
    return w


def bottleneck(harness, rng, c: int, width: int, sparsity: float, size: int = 9, dense_tail: bool = False):
    """x → relu(conv1x1 + b) → relu(conv3x3 + b) → conv1x1 + b → + x → relu → relu(conv3x3 s2 + b)
    [→ relu(conv3x3 + b) with no zeros, a conv the sparse pass leaves dense]."""
    p = {f"w{i}": pruned(rng, shape, sparsity) for i, shape in
         enumerate([(width, c, 1, 1), (width, width, 3, 3), (c, width, 1, 1), (c, c, 3, 3)])}
    if dense_tail:
        p["w4"] = pruned(rng, (c, c, 3, 3), 0.0)
    p.update({f"b{i}": rng.standard_normal(w.shape[0]).astype("float32") for i, w in enumerate(p.values())})
    tail = [helper.make_node("Relu", ["h3"], ["y"])]
    if dense_tail:
        tail = [helper.make_node("Relu", ["h3"], ["r3"]),
                helper.make_node("Conv", ["r3", "w4", "b4"], ["h4"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["h4"], ["y"])]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["h0"]), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["r1"]), helper.make_node("Conv", ["r1", "w2", "b2"], ["h2"]),
             helper.make_node("Add", ["h2", "x"], ["s"]), helper.make_node("Relu", ["s"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["h3"], pads=[1, 0, 1, 1], strides=[2, 2]), *tail]
    return harness.model(nodes, {"x": (1, c, size, size)}, p)


def forced():
    """The registry with sparse making every eligible layer with zeros sparse (its default would follow the
    crossovers; the pruned weights here hold at least 50 % zeros, a dense one none)."""
    return dataclasses.replace(registry.PASSES["sparse"], make=lambda **_: Sparse(min_sparsity=0.3))


@pytest.mark.parametrize("c, width, sparsity, dense_tail", [(32, 16, 0.9, False), (48, 16, 0.5, False),
                                                            (12, 8, 0.99, False), (32, 16, 1.0, False),
                                                            (32, 16, 0.9, True)])
def test_bottleneck_runs_blocked_and_exact(harness, monkeypatch, c, width, sparsity, dense_tail):
    """A dense conv after the sparse ones (dense_tail) reads the last one's blocked output directly too."""
    rng = np.random.default_rng(seed_of(f"blocked-{c}-{width}-{sparsity}-{dense_tail}"))
    model = bottleneck(harness, rng, c, width, sparsity, dense_tail=dense_tail)
    monkeypatch.setitem(registry.PASSES, "sparse", forced())
    art = reforge.compile(model, enable_passes=["sparse"], disable_passes=["prune-channels"])
    dense = reforge.compile(model, disable_passes=["prune-channels"])
    record = next(p for p in art.manifest["passes"] if p["name"] == "sparse")
    assert record["rewrites"]["conv 1x1 to sparse"] == 2 and record["rewrites"]["conv kxk to sparse"] == 2
    assert record["rewrites"]["bias fused into a sparse conv"] == 4
    assert record["rewrites"]["relu fused into a sparse conv"] == 4
    assert record["rewrites"]["add fused into a sparse conv"] == 1
    assert record["after"]["ops"].get("nn.conv2d", 0) == record["after"]["ops"].get("nn.relu", 0) == int(dense_tail)
    build = art.manifest["build"]
    assert build["schedules"]["sparse_conv2d_nchwc"] == 4 and build["layout"] == dense.manifest["build"]["layout"]
    # the first sparse conv reads the NCHW input as it is (the residual add reads it blocked: one transform), the
    # last writes the NCHW output; a dense tail's output is transformed
    assert build["layout_transforms"] == 1 + int(dense_tail)
    x = rng.standard_normal((1, c, 9, 9)).astype("float32")
    assert max_rel_err(art.run({"x": x})["y"], harness.onnxruntime(model, {"x": x})[0]) <= RTOL


def test_conv_read_twice_keeps_its_epilogue_apart(harness):
    """h is read by the ReLU and by the output: the ReLU stays a separate operator, both outputs exact."""
    rng = np.random.default_rng(seed_of("read-twice"))
    w = pruned(rng, (16, 16, 1, 1), 0.9)
    model = harness.model([helper.make_node("Conv", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                          {"x": (1, 16, 5, 7)}, {"w": w}, outputs=("y", "h"))
    res = harness.rewrite(model, FoldConstants, lambda: Sparse(min_sparsity=0))
    assert res.report.total == 1 and res.ops_after["nn.relu"] == 1
    feeds = harness.random_feeds(res.imported, rng)
    for out, ref in zip(harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)):
        assert max_rel_err(out, ref) <= RTOL


def test_dense_network_untouched(harness):
    """No weight reaches a crossover: the module is the same object structurally, nothing reported but notes."""
    rng = np.random.default_rng(seed_of("dense-net"))
    model = bottleneck(harness, rng, 32, 16, 0.0)
    folded = harness.rewrite(model, FoldConstants)
    res = harness.rewrite(model, FoldConstants, Sparse)
    assert res.report.total == 0
    tvm.ir.assert_structural_equal(res.mod, folded.mod)


@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
def test_pooling_between_sparse_convs_runs_blocked(harness, monkeypatch, pool):
    """sparse conv → pooling (3×3, stride 2, padding 1) → sparse conv: the pooling runs in the blocked layout
    (ConvertLayout leaves it in NCHW, as no conv precedes it to its eyes) and the sparse convs read the network's
    NCHW input and write its NCHW output as they are, so the build has no layout transform; exact against
    onnxruntime."""
    rng = np.random.default_rng(seed_of(f"pool-{pool}"))
    p = {"w0": pruned(rng, (32, 16, 1, 1), 0.9), "w1": pruned(rng, (16, 32, 3, 3), 0.9)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"]), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node(pool, ["r0"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "w1"], ["y"], pads=[1, 1, 1, 1])]
    model = harness.model(nodes, {"x": (1, 16, 11, 12)}, p)
    monkeypatch.setitem(registry.PASSES, "sparse", forced())
    art = reforge.compile(model, enable_passes=["sparse"], disable_passes=["prune-channels"])
    assert art.manifest["build"]["schedules"]["sparse_conv2d_nchwc"] == 2
    assert art.manifest["build"]["layout_transforms"] == 0
    x = rng.standard_normal((1, 16, 11, 12)).astype("float32")
    assert max_rel_err(art.run({"x": x})["y"], harness.onnxruntime(model, {"x": x})[0]) <= RTOL
