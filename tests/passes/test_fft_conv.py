"""fft-conv: large-kernel convs become the FFT graph; small kernels, strided and grouped convs stay.

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

from .conftest import max_rel_err, seed_of

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
    model = conv_model(harness, 16, 16, 32, k, [k // 2] * 4, rng)
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


def test_off_by_default_and_on_request(monkeypatch):
    """Off at -O2; on request, built for x86 with the default schedules and run against PyTorch (both
    convs forced onto the FFT path, so the 3×3 one goes through the full build too)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 11, padding=5), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(1, 3, 20, 21)
    art = reforge.compile(net, example_inputs=(x,))
    assert "fft-conv" not in [p["name"] for p in art.manifest["passes"]]
    forced = dataclasses.replace(registry.PASSES["fft-conv"], make=lambda: FFTConv(policy="always"))
    monkeypatch.setitem(registry.PASSES, "fft-conv", forced)
    art = reforge.compile(net, example_inputs=(x,), enable_passes=["fft-conv"])
    record = next(p for p in art.manifest["passes"] if p["name"] == "fft-conv")
    assert sum(record["rewrites"].values()) == 2 and record["after"]["ops"].get("nn.conv2d", 0) == 0
    with torch.no_grad():
        ref = net(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert max_rel_err(out, ref) <= RTOL
