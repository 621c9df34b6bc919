"""complex-conv: four real convs of a complex convolution become one conv over concat(xr, xi).

The block kernel is checked against ``torch.nn.functional.conv2d``; PyTorch complex conv layers
(channel halves of one tensor, or separate real / imaginary inputs) through torch.onnx and
torch.export compile to one conv where there were four; a general 2×2 block with four different
kernels merges too; blocks whose convs differ in padding, stride or kernel size stay, with the
reason in the report. Tolerance: max|out − ref| / max|ref| <= 1e-4 against PyTorch / onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn

import reforge
from reforge.passes import ComplexConv, FoldBatchNorm, FoldConstants
from reforge.passes.complex_conv import BLOCK, COMPLEX
from reforge.passes.kernel_algebra import block_kernel
from tests.helpers import max_rel_err, seed_of, to_onnx

RTOL = 1e-4
N = helper.make_node


def test_block_kernel_is_the_complex_product():
    rng = np.random.default_rng(0)
    a, b, c, d = (rng.standard_normal((5, 3, 3, 3)) for _ in range(4))
    xr, xi = (torch.from_numpy(rng.standard_normal((2, 3, 9, 9))) for _ in range(2))
    conv = lambda x, w: F.conv2d(x, torch.from_numpy(w), padding=1)  # noqa: E731
    merged = conv(torch.cat([xr, xi], 1), block_kernel([[a, -b], [c, d]]))
    ref = torch.cat([conv(xr, a) - conv(xi, b), conv(xr, c) + conv(xi, d)], 1)
    assert max_rel_err(merged.numpy(), ref.numpy()) <= 1e-12


class ComplexConv2d(nn.Module):
    """Deep Complex Networks' layer: ``(xr + i·xi) ∗ (Wr + i·Wi)`` with two real convs."""

    def __init__(self, c: int, o: int, k: int = 3, stride: int = 1, channels_in_one: bool = True,
                 imag_padding: int | None = None):
        super().__init__()
        self.re = nn.Conv2d(c, o, k, stride, padding=k // 2)
        self.im = nn.Conv2d(c, o, k, stride, padding=k // 2 if imag_padding is None else imag_padding)
        self.c, self.one = c, channels_in_one

    def forward(self, x, xi=None):
        xr, xi = (x[:, :self.c], x[:, self.c:]) if self.one else (x, xi)
        return torch.cat([self.re(xr) - self.im(xi), self.im(xr) + self.re(xi)], dim=1)


def complex_record(art) -> dict:
    return next(p for p in art.manifest["passes"] if p["name"] == "complex-conv")


def run_art(art, *inputs):
    return list(art.run({s["name"]: x.numpy() for s, x in zip(art.manifest["inputs"], inputs)}).values())[0]


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (1, 1)])
def test_complex_layer_becomes_one_conv(k, stride, exporter):
    torch.manual_seed(seed_of(f"{k}{stride}{exporter}"))
    module, x = ComplexConv2d(4, 6, k, stride).eval(), torch.randn(1, 8, 12, 12)
    model = to_onnx(module, x) if exporter == "onnx" else module
    art = reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))
    record = complex_record(art)
    assert record["rewrites"] == {COMPLEX: 1} and record["blocks"]["refused"] == {}
    assert record["before"]["ops"]["nn.conv2d"] == 4 and record["after"]["ops"]["nn.conv2d"] == 1
    assert not {"subtract", "concat", "strided_slice"} & set(record["after"]["ops"])  # x's halves read directly
    assert record["before"]["macs"] == record["after"]["macs"]
    with torch.no_grad():
        ref = module(x).numpy()
    assert max_rel_err(run_art(art, x), ref) <= RTOL


def test_separate_real_and_imaginary_inputs_are_concatenated():
    torch.manual_seed(5)
    module = ComplexConv2d(3, 4, channels_in_one=False).eval()
    xr, xi = torch.randn(2, 3, 10, 10), torch.randn(2, 3, 10, 10)
    art = reforge.compile(module, opt_level=2, example_inputs=(xr, xi))
    record = complex_record(art)
    assert record["rewrites"] == {COMPLEX: 1} and record["after"]["ops"]["nn.conv2d"] == 1
    assert record["after"]["ops"]["concat"] == 1  # the input, once; the outputs' concat is the conv itself
    with torch.no_grad():
        ref = module(xr, xi).numpy()
    assert max_rel_err(run_art(art, xr, xi), ref) <= RTOL


def block_graph(imag_conv: dict | None = None, kernels: tuple[int, ...] = (3, 3, 3, 3)):
    """ONNX: ``concat(conv(xr, A) − conv(xi, B), conv(xr, C) + conv(xi, D))``, four independent kernels
    with biases; ``imag_conv`` overrides the attributes of C (e.g. another padding)."""
    rng = np.random.default_rng(sum(kernels))
    nodes, params = [], {}
    for name, src, k in zip("abcd", ["xr", "xi", "xr", "xi"], kernels):
        params[f"w{name}"] = rng.standard_normal((4, 3, k, k)).astype("float32")
        params[f"b{name}"] = rng.standard_normal(4).astype("float32")
        attrs = dict(pads=[k // 2] * 4)
        if name == "c" and imag_conv:
            attrs.update(imag_conv)
        nodes.append(N("Conv", [src, f"w{name}", f"b{name}"], [name], **attrs))
    nodes += [N("Sub", ["a", "b"], ["re"]), N("Add", ["c", "d"], ["im"]), N("Concat", ["re", "im"], ["y"], axis=1)]
    return nodes, {"xr": (1, 3, 9, 9), "xi": (1, 3, 9, 9)}, params


CASES = [  # (name, graph kwargs, rewritten, refusal reason fragment)
    ("general 2×2 block", {}, True, None),
    ("padding differs", dict(imag_conv=dict(pads=[0, 0, 2, 2])), False, "strides, padding or dilation"),
    ("dilation differs", dict(imag_conv=dict(dilations=[2, 2], pads=[2, 2, 2, 2])), False, "or dilation"),
    ("kernel differs", dict(kernels=(3, 3, 1, 3)), False, "differ in kernel size"),
]


@pytest.mark.parametrize("name,kwargs,rewritten,reason", CASES, ids=[c[0] for c in CASES])
def test_onnx_blocks_and_refusals(name, kwargs, rewritten, reason, harness):
    model = harness.model(*block_graph(**kwargs))
    res = harness.rewrite(model, FoldConstants, FoldBatchNorm, ComplexConv)
    assert res.ops_after["nn.conv2d"] == (1 if rewritten else 4)
    if rewritten:
        assert res.report.rewrites == {BLOCK: 1}
    else:
        assert res.report.total == 0 and sum(res.report.refused.values()) == 1
        assert any(reason in note for note in res.report.notes), res.report.notes
    rng = np.random.default_rng(seed_of(name))
    feeds = harness.random_feeds(res.imported, rng)
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert max_rel_err(out[0], ref[0]) <= RTOL


def test_partial_product_read_elsewhere_is_refused(harness):
    nodes, inputs, params = block_graph()
    nodes[-1] = N("Concat", ["re", "im", "a"], ["y"], axis=1)  # conv(xr, A) is an output of its own too
    model = harness.model(nodes, inputs, params)
    res = harness.rewrite(model, FoldConstants, FoldBatchNorm, ComplexConv)
    assert res.report.total == 0 and res.ops_after["nn.conv2d"] == 4
    assert any("read elsewhere" in note for note in res.report.notes), res.report.notes
