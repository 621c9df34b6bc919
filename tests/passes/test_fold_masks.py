"""fold-masks: every spelling of a masked weight becomes one constant weight, through ONNX from both
torch exporters (TorchScript, opset 17, no constant folding; dynamo, ``optimize=False``) and through
``torch.export`` (the ``nn.Module`` itself, and a saved .pt2 for the SCL layer).

Spellings: PyTorch's own pruning reparametrization (``torch.nn.utils.prune``: l1_unstructured,
ln_structured on dim 0 and dim 1, global_unstructured, each leaving ``weight_orig * weight_mask``),
an SCL layer written from the paper (``W ⊙ step(M)``, M a trainable parameter) with the step spelled
``M > 0``, ``(M > 0).float()``, ``(M >= 0)``, ``heaviside(M, 0)``, and stored masks (bool / uint8 /
float buffers) applied by ``*``, ``.float()`` and ``torch.where(mask, W, 0)``.

Checked: after fold-masks alone no mask arithmetic is left (op histogram); every conv weight is
bit-for-bit PyTorch's effective weight ``W ⊙ mask``; the per-layer sparsity the report states equals
the fraction of zeros numpy counts in PyTorch's weights; the module's output matches the reference
(PyTorch, or onnxruntime on the ONNX file) within rtol 1e-5 (max|out - ref| <= 1e-5 * max|ref|).
The TorchScript exporter has no ``heaviside`` (torch raises UnsupportedOperatorError): that case runs
through the dynamo exporter and torch.export only.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn
from tvm import relax

import reforge
from reforge import frontend
from reforge.passes.fold_masks import FoldMasks
from reforge.passes.graph import const_value, op_name, ops_histogram
from reforge.report_format import compile_report
from tests.helpers import (MobileBlock, max_rel_err, prunable, quiet_torch_export, randomize_bn, resnet_ish, seed_of,
                           to_onnx, vgg_ish)

RTOL = 1e-5
ROUTES = ["onnx", "onnx-dynamo", "torch.export"]
MASK_OPS = {"multiply", "where", "greater", "greater_equal", "less", "less_equal", "equal", "not_equal",
            "logical_and", "logical_or", "logical_not", "isnan", "astype", "full"}


def to_onnx_dynamo(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    with quiet_torch_export(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), dynamo=True, optimize=False, input_names=["x"], output_names=["y"])
    return program.model_proto


def export(module: nn.Module, x: torch.Tensor, route: str, folder=None):
    """What reforge receives on ``route``: an ONNX model, the module (torch.export) or a .pt2 path."""
    if route == "onnx":
        return to_onnx(module, x)
    if route == "onnx-dynamo":
        return to_onnx_dynamo(module, x)
    if route == "pt2":
        path = str(folder / "model.pt2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(torch.export.export(module, (x,)), path)
        return path
    return module


def conv_weights(mod) -> list[np.ndarray]:
    """The constant weights of the conv2d calls in ``main``, in program order."""
    found = []

    @relax.expr_functor.visitor
    class _Convs(relax.PyExprVisitor):
        def visit_call_(self, call):
            if op_name(call) == "relax.nn.conv2d":
                found.append(const_value(call.args[1]))
            for a in call.args:
                self.visit_expr(a)

    _Convs().visit_expr(mod["main"])
    return found


def zero_filters(w: np.ndarray) -> int:
    """Output channels (axis 0, PyTorch's layout for convs and linears) whose weights are all zero."""
    return int(np.sum(~w.reshape(w.shape[0], -1).any(axis=1)))


def check_folded(module: nn.Module, x: torch.Tensor, route: str, harness, weights: list[np.ndarray],
                 folder=None):
    """Import ``module`` on ``route``, run fold-masks, and check what the module docstring states;
    ``weights`` are PyTorch's effective weights (``W ⊙ mask``) of the convs and linears in program
    order. Returns the pass report and the imported model."""
    imported = frontend.load(export(module.eval(), x, route, folder), None,
                             (x,) if route == "torch.export" else None)
    pass_ = FoldMasks()
    mod = pass_(imported.mod)
    left = {k: v for k, v in ops_histogram(mod).items() if k in MASK_OPS}
    assert left == {}, f"mask arithmetic left after fold-masks: {left}"
    convs, folded = [w for w in weights if w.ndim == 4], conv_weights(mod)
    assert len(folded) == len(convs)
    for got, want in zip(folded, convs):  # bit-for-bit PyTorch's W ⊙ mask
        assert got.dtype == want.dtype and np.array_equal(got, want)
    rows, holding = pass_.report.layers, [w for w in weights if not w.all()]  # the layers that hold zeros
    assert [r["sparsity"] for r in rows] == [round(float(np.mean(w == 0)), 6) for w in holding]
    assert [r["zero_filters"] for r in rows] == [zero_filters(w) for w in holding]
    feeds = {s.name: np.random.default_rng(seed_of(route)).standard_normal(s.shape).astype(s.dtype)
             for s in imported.inputs}
    out, ref = harness.run(mod, imported, feeds), imported.reference(feeds)
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        assert max_rel_err(o, r) <= RTOL
    return pass_.report, imported


# ----------------------------------------------------------------------------- SCL spellings


STEPS = {  # the masked weight each spelling computes from a weight w, logits m and a stored bool mask b
    "W*(M>0)": lambda w, m, b: w * (m > 0),
    "W*(M>0).float()": lambda w, m, b: w * (m > 0).float(),
    "W*step(M)": lambda w, m, b: w * (m >= 0).to(w.dtype),
    "W*heaviside(M)": lambda w, m, b: w * torch.heaviside(m, torch.zeros(())),
    "where(mask,W,0)": lambda w, m, b: torch.where(b, w, 0.0),
    "where(uint8,W,0)": lambda w, m, b: torch.where(b.to(torch.uint8).bool(), w, torch.zeros(())),
    "W*mask.float()": lambda w, m, b: w * b.float(),
    "W*uint8": lambda w, m, b: w * b.to(torch.uint8),
    "W*float-mask": lambda w, m, b: w * b.to(torch.float32),
}


class SCLLayer(nn.Module):
    """Sparse Connection Learning: the layer's weight is ``W ⊙ step(M)``, M trained alongside W (here
    random, with exact zeros among its entries so ``M > 0`` and ``M >= 0`` differ); ``spelling``
    picks how the step and the product are written. A stored bool mask (the step frozen) feeds the
    spellings that read a buffer."""

    def __init__(self, shape: tuple[int, ...], spelling: str, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape) / np.sqrt(np.prod(shape[1:])))
        logits = torch.randn(shape)
        logits[torch.rand(shape) < 0.1] = 0.0
        self.mask_logits = nn.Parameter(logits)
        self.register_buffer("stored", torch.randn(shape) > 0.3)
        self.bias = nn.Parameter(torch.randn(shape[0]) * 0.1) if bias else None
        self.step = STEPS[spelling]

    def masked_weight(self) -> torch.Tensor:
        return self.step(self.weight, self.mask_logits, self.stored)

    def forward(self, x):
        w = self.masked_weight()
        return F.linear(x, w, self.bias) if w.ndim == 2 else F.conv2d(x, w, self.bias, padding=1)


class SCLNet(nn.Module):
    """Two SCL 3×3 convs (the second without bias: the dynamo exporter builds its zero bias from the
    masked weight's shape) and an SCL classifier."""

    def __init__(self, spelling: str):
        super().__init__()
        self.c1 = SCLLayer((8, 3, 3, 3), spelling)
        self.c2 = SCLLayer((8, 8, 3, 3), spelling, bias=False)
        self.fc = SCLLayer((5, 8), spelling)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


@pytest.mark.parametrize("spelling,route", [(s, r) for s in STEPS for r in ROUTES]
                         + [("W*(M>0)", "pt2"), ("W*heaviside(M)", "pt2")])
def test_scl_spellings_fold(spelling: str, route: str, harness, tmp_path):
    if route == "onnx" and spelling == "W*heaviside(M)":
        with pytest.raises(torch.onnx.errors.UnsupportedOperatorError):  # not reforge's limit: torch's
            to_onnx(SCLNet(spelling).eval(), torch.randn(1, 3, 8, 8))
        return
    torch.manual_seed(seed_of(spelling))
    net = SCLNet(spelling).eval()
    weights = [layer.masked_weight().detach().numpy() for layer in (net.c1, net.c2, net.fc)]
    assert all(0 < np.mean(w == 0) < 1 for w in weights)
    report, imported = check_folded(net, torch.randn(1, 3, 8, 8), route, harness, weights, tmp_path)
    if route in ("torch.export", "pt2"):  # the program carries the arithmetic; the pass folds it
        left = {k for k, v in ops_histogram(imported.mod).items() if k in MASK_OPS}
        assert left and report.total == 3
    else:  # TVM's ONNX importer evaluated the constant nodes while reading them
        assert report.total == 0


# ----------------------------------------------------------------------------- PyTorch's pruning


METHODS = {  # torch.nn.utils.prune on every conv and linear, the reparametrization kept (no prune.remove)
    "l1_unstructured": lambda layers: [prune.l1_unstructured(m, "weight", amount=0.6) for m in layers],
    "ln_structured-dim0": lambda layers: [prune.ln_structured(m, "weight", amount=0.5, n=2, dim=0) for m in layers],
    "ln_structured-dim1": lambda layers: [prune.ln_structured(m, "weight", amount=0.5, n=2, dim=1) for m in layers],
    "global_unstructured": lambda layers: prune.global_unstructured(
        [(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=0.8),
}
NETS = {"ResNet-ish": resnet_ish, "VGG-ish": vgg_ish, "MobileNet-ish": MobileBlock}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("net_name", list(NETS))
def test_pytorch_pruning_folds(net_name: str, method: str, route: str, harness):
    torch.manual_seed(seed_of(net_name + method))
    net = randomize_bn(NETS[net_name]())
    layers = prunable(net)
    METHODS[method](layers)
    assert all(hasattr(m, "weight_orig") and hasattr(m, "weight_mask") for m in layers)
    weights = [m.weight.detach().numpy() for m in layers]  # the pruning hook's weight_orig * weight_mask
    if method == "ln_structured-dim0":
        assert all(zero_filters(w) == w.shape[0] // 2 for w in weights)
    report, imported = check_folded(net, torch.randn(2, 3, 16, 16), route, harness, weights)
    if route == "torch.export":
        assert report.rewrites == {"masked weights folded": len(layers)}


def test_compile_reports_sparsity_per_layer():
    """The -O2 pipeline (fold-masks on by default) on a pruned VGG from torch.export: verified stage by
    stage against PyTorch, and the compile report lists each pruned layer's sparsity."""
    torch.manual_seed(seed_of("compile"))
    net = randomize_bn(vgg_ish())
    layers = prunable(net)
    METHODS["global_unstructured"](layers)
    weights = [m.weight.detach().numpy() for m in layers]
    art = reforge.compile(net, example_inputs=(torch.randn(1, 3, 16, 16),), verify=True)
    assert art.manifest["verification"]["passed"]
    record = next(p for p in art.manifest["passes"] if p["name"] == "fold-masks")
    assert record["rewrites"] == {"masked weights folded": len(layers)}
    assert [r["sparsity"] for r in record["layers"]] == [round(float(np.mean(w == 0)), 6) for w in weights]
    assert not MASK_OPS & set(record["after"]["ops"])
    text = compile_report(art.manifest)
    first = record["layers"][0]
    assert f"layers:\n  fold-masks: conv2d 1: shape [8, 3, 3, 3], sparsity {first['sparsity']}, zero_filters " in text
