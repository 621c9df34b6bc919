"""The test zoo pruned by PyTorch's own ``torch.nn.utils.prune`` and compiled from ONNX, against onnxruntime.

Networks: ``vgg_ish`` (conv-BN-ReLU chains, max pooling, a two-layer classifier), ``resnet_ish`` (residual basic
blocks around a strided conv) and ``MobileBlock`` (1×1 expand, 3×3 depthwise, 1×1 project). Methods, each at two
ratios, on every conv and linear: l1_unstructured, global_unstructured, ln_structured on dim 0 (whole filters) and
on dim 1 (whole input-channel slices); then ``prune.remove``, so the ONNX file (TorchScript exporter) holds weights
full of zeros, as pruned models are shipped.

Checked on every case: the passes up to prune-channels (fold-masks, fold-constants, fold-batchnorm, prune-channels)
give the module whose output matches onnxruntime on the same ONNX file within rtol 1e-5 (max|out - ref| <= 1e-5 *
max|ref|: folded constants re-associate floats), and the (out, in) channels of every conv after prune-channels
equal the live channels counted here in numpy from PyTorch's weights and BatchNorm statistics alone
(``*_live``; the rules: a channel class is removed when its producers' filters are all zero, or when every
reader's slice of it is zero, to a fixpoint). The 90 % unstructured cases are also compiled whole at -O2 for x86
(prune-channels and sparse kernels included) and run against onnxruntime at the same tolerance.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import reforge
from reforge import backends, frontend
from reforge.passes import registry
from reforge.passes.prune_channels import conv_channels
from reforge.pipeline import run_passes
from reforge.verify import run_module
from tests.helpers import (MobileBlock, max_rel_err, mobile_live, prunable, randomize_bn, resnet_ish, resnet_live,
                           seed_of, to_onnx, vgg_ish, vgg_live)

RTOL = 1e-5
PASSES = registry.select(passes=["fold-masks", "prune-channels"])


def prune_net(net: nn.Module, method: str, amount: float) -> None:
    """``method`` at ``amount`` on every conv and linear (global_unstructured: one threshold over all), made
    permanent with ``prune.remove``."""
    layers = prunable(net)
    if method == "global_unstructured":
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured,
                                  amount=amount)
    for m in layers:
        if method == "l1_unstructured":
            prune.l1_unstructured(m, "weight", amount=amount)
        elif method.startswith("ln_structured"):
            prune.ln_structured(m, "weight", amount=amount, n=2, dim=int(method[-1]))
        prune.remove(m, "weight")


NETS = {  # name: (make, input shape, live channels)
    "VGG-BN": (vgg_ish, (2, 3, 16, 16), lambda net: vgg_live([m.weight.detach().numpy() for m in prunable(net)])),
    "ResNet": (resnet_ish, (2, 3, 16, 16),
               lambda net: resnet_live([m.weight.detach().numpy() for m in prunable(net)])),
    "MobileNet": (MobileBlock, (2, 3, 12, 12), mobile_live),
}
METHODS = {"l1_unstructured": (0.5, 0.9), "global_unstructured": (0.5, 0.9), "ln_structured-dim0": (0.25, 0.5),
           "ln_structured-dim1": (0.25, 0.5)}
CASES = [(n, m, a) for n in NETS for m, amounts in METHODS.items() for a in amounts]


def onnxruntime(model, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def pruned_case(net_name: str, method: str, amount: float):
    torch.manual_seed(seed_of(f"{net_name}{method}{amount}"))
    make, shape, _ = NETS[net_name]
    net = randomize_bn(make()).eval()
    prune_net(net, method, amount)
    x = torch.randn(*shape)
    model = to_onnx(net, x)
    return net, model, x.numpy(), onnxruntime(model, x.numpy())


@pytest.mark.parametrize("net_name,method,amount", CASES)
def test_pruned_zoo_exact_with_live_channels(net_name: str, method: str, amount: float):
    net, model, x, ref = pruned_case(net_name, method, amount)
    imported = frontend.load(model)
    mod, records = run_passes(imported.mod, PASSES)
    assert max_rel_err(run_module(mod, [x], backends.get("x86"))[0], ref) <= RTOL
    expected = NETS[net_name][2](net)
    assert conv_channels(mod["main"]) == expected
    report = records[-1].report.to_json()
    if expected != conv_channels(imported.mod["main"]):  # something was removed: the report says so
        assert report["rewrites"] and report["macs"][1] < report["macs"][0]
    else:
        assert report["rewrites"] == {}


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("method", ["l1_unstructured", "global_unstructured"])
def test_pruned_zoo_compiled_at_O2(net_name: str, method: str):
    """The whole -O2 pipeline for x86 on 90 % unstructured pruning (prune-channels, then
    the sparse pass where a layer reaches its crossover), built with reforge's schedules, against onnxruntime."""
    _, model, x, ref = pruned_case(net_name, method, 0.9)
    art = reforge.compile(model, target="x86")
    assert max_rel_err(list(art.run({"x": x}).values())[0], ref) <= RTOL
    sparse = next(p for p in art.manifest["passes"] if p["name"] == "sparse")
    schedules = art.manifest["build"]["schedules"]
    assert sparse["rewrites"] and schedules.get("sparse_conv2d_nchwc", 0) + schedules.get("sparse_dense", 0) >= 1
