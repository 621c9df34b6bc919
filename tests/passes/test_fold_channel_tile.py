"""fold-channel-tile (Rep-BNN's RepConv rule) on RepConv-style blocks written in PyTorch: a feature map
repeated β times along channels (``repeat``, which torch.onnx exports as ``Tile`` and torch.export
keeps as ``tile``; or ``cat`` of the same tensor, an ONNX ``Concat``), optionally a per-channel affine,
then a conv. Random weights, randomized BatchNorm statistics, eval mode.

Each block goes through both exporters and ``reforge.compile`` at -O2; the built module is compared
with the PyTorch module at rtol 1e-5 (max|out - ref| <= 1e-5 * max|ref|). After the pass the tile is
gone (no tile / concat / call_tir left), one conv remains and its multiply-adds are 1/β of before.
Copies shifted differently before a zero-padding conv fold with a border-corrected bias map; those
cases are also checked against onnxruntime on the ONNX file at the same tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import reforge
from reforge.passes.fold_channel_tile import BORDER, FOLDED
from tests.helpers import Harness, max_rel_err, randomize_bn, seed_of, to_onnx

RTOL = 1e-5  # max|out - ref| / max|ref| against PyTorch


class RepConv(nn.Module):
    """Shi et al., Rep-BNN: x (C channels) repeated β times, an optional per-channel op on the βC
    channels, then a conv βC -> C_out.

    ``affine``: None; "scale" (a constant per-channel scale, different for every copy); "shift" (a
    constant per-channel add, different for every copy); "bn-shared" (a BatchNorm with the same
    statistics for every copy); "bn" (its own statistics per copy)."""

    def __init__(self, c: int, beta: int, cout: int, k: int = 3, affine: str | None = None, cat: bool = False,
                 stride: int = 1, dilation: int = 1):
        super().__init__()
        self.beta, self.cat, self.affine = beta, cat, affine
        self.conv = nn.Conv2d(beta * c, cout, k, stride, dilation * (k // 2), dilation)
        self.bn = nn.BatchNorm2d(beta * c) if affine in ("bn", "bn-shared") else None
        self.register_buffer("scale", torch.rand(beta * c) + 0.5)
        self.register_buffer("shift", torch.randn(beta * c))

    def share_bn_statistics(self):
        c = self.bn.num_features // self.beta
        for t in (self.bn.weight.data, self.bn.bias.data, self.bn.running_mean, self.bn.running_var):
            t.copy_(t[:c].repeat(self.beta))
        return self

    def forward(self, x):
        t = torch.cat([x] * self.beta, 1) if self.cat else x.repeat(1, self.beta, 1, 1)
        if self.affine == "scale":
            t = t * self.scale.reshape(1, -1, 1, 1)
        elif self.affine == "shift":
            t = t + self.shift.reshape(1, -1, 1, 1)
        elif self.bn is not None:
            t = self.bn(t)
        return self.conv(t)


def make(beta: int, k: int = 3, affine: str | None = None, cat: bool = False, stride: int = 1, dilation: int = 1):
    def build():
        block = randomize_bn(RepConv(6, beta, 8, k, affine, cat, stride, dilation))
        return block.share_bn_statistics() if affine == "bn-shared" else block
    return build


BLOCKS = [  # id, factory, rewrite
    ("repeat2", make(2), FOLDED),
    ("repeat4-scale-per-copy", make(4, affine="scale"), FOLDED),
    ("repeat2-bn-shared-3x3", make(2, affine="bn-shared"), FOLDED),
    ("repeat4-bn-per-copy-1x1", make(4, k=1, affine="bn"), FOLDED),
    ("cat4", make(4, cat=True), FOLDED),
    ("cat2-scale-per-copy", make(2, affine="scale", cat=True), FOLDED),
    # per-copy shifts before a zero-padding conv: the border sees the padded zeros, unshifted
    ("repeat2-bn-per-copy-3x3", make(2, affine="bn"), FOLDED + BORDER),
    ("repeat4-shift-per-copy-5x5-stride2", make(4, k=5, affine="shift", stride=2), FOLDED + BORDER),
    ("cat2-shift-per-copy-3x3-dilation2", make(2, affine="shift", cat=True, dilation=2), FOLDED + BORDER),
]


def record_of(art, name: str = "fold-channel-tile") -> dict:
    return next(p for p in art.manifest["passes"] if p["name"] == name)


def compile_block(block: nn.Module, x: torch.Tensor, exporter: str):
    model = to_onnx(block, x) if exporter == "onnx" else block
    return reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))


def check_output(art, block: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        ref = block(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    err = max_rel_err(out, ref)
    assert err <= RTOL, f"max|err| / max|ref| = {err:.3g} > {RTOL}"
    return out


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("name,factory,rewrite", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_tile_folds_into_the_conv(name, factory, rewrite, exporter):
    torch.manual_seed(seed_of(name))
    block = factory()
    x = torch.randn(2, 6, 9, 9)
    art = compile_block(block, x, exporter)
    record = record_of(art)
    assert record["rewrites"] == {rewrite: 1}
    ops = record_of(art, "dead-code")["after"]["ops"]
    assert ops["nn.conv2d"] == 1
    assert not {"tile", "concat", "call_tir", "broadcast_to"} & set(ops), ops
    assert record["macs"][1] * block.beta == record["macs"][0]
    out = check_output(art, block, x)
    if exporter == "onnx" and rewrite != FOLDED:
        err = max_rel_err(out, Harness.onnxruntime(to_onnx(block, x), {"x": x.numpy()})[0])
        assert err <= RTOL, f"against onnxruntime: max|err| / max|ref| = {err:.3g} > {RTOL}"


class ReActNetCopy(RepConv):
    """ReActNet's binary block input: every copy gets its own learnable bias before ``sign``, so
    the copies differ by a nonlinearity and the conv cannot read x once."""

    def __init__(self):
        super().__init__(6, 2, 8)
        self.move = nn.Parameter(torch.randn(1, 12, 1, 1))

    def forward(self, x):
        return self.conv(torch.sign(x.repeat(1, 2, 1, 1) + self.move))


KEPT = [  # id, factory, reason (a substring of the note)
    ("learnable-bias-then-sign", ReActNetCopy, "is not a per-channel affine"),
]


@pytest.mark.parametrize("case_id,factory,reason", KEPT, ids=[k[0] for k in KEPT])
def test_tile_that_cannot_be_folded_exactly_is_kept(case_id, factory, reason):
    torch.manual_seed(seed_of(case_id))
    block = randomize_bn(factory())
    x = torch.randn(2, 6, 9, 9)
    art = compile_block(block, x, "torch.export")
    record = record_of(art)
    assert record["rewrites"] == {}
    assert record["blocks"]["found"] == 1
    assert any(reason in n for n in record["notes"]), record["notes"]
    check_output(art, block, x)
