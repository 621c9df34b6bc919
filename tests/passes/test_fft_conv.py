"""fft-conv: large-kernel convs become the FFT graph; small kernels, strided and grouped convs stay;
on at -O2 where the cost model picks it, off with --disable-pass, never on the 3×3 example model.

Reference: onnxruntime (graph optimizations off) on the same ONNX graph, or the PyTorch module;
tolerance max|out − ref| / max|ref| <= 1e-4 (float32 DFTs)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import reforge
from reforge.passes import FFTConv, FoldConstants, registry
from tests.helpers import SMALLCNN, max_rel_err, seed_of

RTOL = 1e-4
N = helper.make_node


def conv_model(harness, c, o, h, k, pads, rng, strides=(1, 1), group=1, bias=True):
    params = {"w": (rng.standard_normal((o, c // group, k, k)) / k).astype("float32")}
    inputs = ["x", "w"]
    if bias:
        params["b"] = rng.standard_normal(o).astype("float32")
        inputs.append("b")
    node = N("Conv", inputs, ["y"], pads=list(pads), strides=list(strides), group=group)
    return harness.model([node], {"x": (1, c, h, h + 1)}, params)


@pytest.mark.parametrize("k,pads", [(3, [1, 1, 1, 1]), (4, [1, 1, 2, 2]), (7, [0, 0, 0, 0]), (15, [7, 7, 7, 7])])
def test_forced_rewrite_matches_onnxruntime(k, pads, harness):
    rng = np.random.default_rng(seed_of(f"fft{k}"))
    model = conv_model(harness, 4, 6, 18, k, pads, rng)
    res = harness.rewrite(model, FoldConstants, lambda: FFTConv(policy="always"))
    assert res.report.total == 1 and res.ops_after.get("nn.conv2d", 0) == 0
    feeds = harness.random_feeds(res.imported, rng)
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert max_rel_err(out[0], ref[0]) <= RTOL


@pytest.mark.parametrize("k,rewritten", [(3, False), (5, False), (15, True)])
def test_cost_model_picks_large_kernels(k, rewritten, harness):
    rng = np.random.default_rng(seed_of(f"cost{k}"))
    model = conv_model(harness, 64, 64, 32, k, [k // 2] * 4, rng)
    res = harness.rewrite(model, FoldConstants, FFTConv)
    assert (res.report.total == 1) is rewritten
    if not rewritten:
        assert res.ops_after["nn.conv2d"] == 1 and res.report.notes


@pytest.mark.parametrize("case", ["strided", "grouped"])
def test_strided_and_grouped_convs_stay(case, harness):
    rng = np.random.default_rng(seed_of(case))
    kw = dict(strides=(2, 2)) if case == "strided" else dict(group=2)
    model = conv_model(harness, 4, 4, 16, 11, [5] * 4, rng, **kw)
    res = harness.rewrite(model, FoldConstants, lambda: FFTConv(policy="always"))
    assert res.report.total == 0 and res.ops_after["nn.conv2d"] == 1


def test_on_at_O2_matches_onnxruntime_and_disable_turns_it_off():
    """-O2 rewrites the 11×11 conv (the cost model picks it), leaves the 3×3 one direct; built for x86
    with the default schedules and run against onnxruntime; --disable-pass fft-conv keeps both direct."""
    from onnx import TensorProto, numpy_helper
    import onnxruntime as ort

    rng = np.random.default_rng(seed_of("fft-O2"))
    w1 = (rng.standard_normal((64, 64, 11, 11)) / 88).astype("float32")
    w2 = (rng.standard_normal((8, 64, 3, 3)) / 24).astype("float32")
    b1 = rng.standard_normal(64).astype("float32")
    nodes = [N("Conv", ["x", "w1", "b1"], ["h"], pads=[5, 5, 5, 5]), N("Relu", ["h"], ["r"]),
             N("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "fft", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 48, 47])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 48, 47])],
                              [numpy_helper.from_array(v, n) for n, v in (("w1", w1), ("w2", w2), ("b1", b1))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((1, 64, 48, 47)).astype("float32")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    art = reforge.compile(model)
    record = next(p for p in art.manifest["passes"] if p["name"] == "fft-conv")
    assert record["rewrites"] == {"conv 11x11 to FFT (L = 64)": 1} and record["after"]["ops"]["nn.conv2d"] == 1
    assert max_rel_err(list(art.run({"x": x}).values())[0], ref) <= RTOL
    off = reforge.compile(model, disable_passes=["fft-conv"])
    assert "fft-conv" not in [p["name"] for p in off.manifest["passes"]]


def test_O2_leaves_the_3x3_example_model_unchanged():
    """The example CNN (3×3 convs only): fft-conv runs at -O2 and rewrites nothing."""
    art = reforge.compile(SMALLCNN)
    record = next(p for p in art.manifest["passes"] if p["name"] == "fft-conv")
    assert not record["rewrites"] and record["after"]["ops"] == record["before"]["ops"]


def test_forced_on_request_matches_torch(monkeypatch):
    """Both convs forced onto the FFT path (the 3×3 one too), built for x86 and run against PyTorch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 11, padding=5), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(1, 3, 20, 21)
    forced = dataclasses.replace(registry.PASSES["fft-conv"], make=lambda: FFTConv(policy="always"))
    monkeypatch.setitem(registry.PASSES, "fft-conv", forced)
    art = reforge.compile(net, example_inputs=(x,), enable_passes=["fft-conv"])
    record = next(p for p in art.manifest["passes"] if p["name"] == "fft-conv")
    assert sum(record["rewrites"].values()) == 2 and record["after"]["ops"].get("nn.conv2d", 0) == 0
    with torch.no_grad():
        ref = net(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert max_rel_err(out, ref) <= RTOL
