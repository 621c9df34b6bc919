"""drop-padding-taps: taps that read only padding are dropped (DeepLab's ASPP at rates 24 / 36 on 14×14 becomes a
1×1 conv), convs whose taps mostly read padding split into a sum over the outputs each tap reaches; convs whose
taps all reach the map for some output stay as they are.

Reference: onnxruntime (graph optimizations off) on the same ONNX graph, or the PyTorch module for the compiled
ASPP block; tolerance max|out − ref| / max|ref| <= 1e-5 (the rewrite only leaves out products with zeros, so
only the order of the sums differs), 1e-4 for the whole -O2 pipeline against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import reforge
from reforge.passes import DropPaddingTaps, registry
from reforge.passes.graph import op_name
from reforge.passes.padding_taps import DROPPED, MAX_TERMS, SPLIT, axis_options, tap_runs
from tests.helpers import first_output, max_rel_err, pass_record, randomize_bn, seed_of, to_onnx

RTOL = 1e-5
N = helper.make_node


def conv_model(harness, rng, c, o, hw, k, dilation, pads, strides=(1, 1), group=1, weight_input=False):
    """One ONNX Conv with bias; the weight an initializer, or a graph input (``weight_input``)."""
    w = (rng.standard_normal((o, c // group, *k)) / np.sqrt(c * k[0] * k[1] / group)).astype("float32")
    params = {"b": rng.standard_normal(o).astype("float32")}
    inputs = {"x": (1, c, *hw)}
    if weight_input:
        inputs["w"] = w.shape
    else:
        params["w"] = w
    node = N("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(k), dilations=list(dilation), pads=list(pads),
             strides=list(strides), group=group)
    return harness.model([node], inputs, params)


def check(harness, model, rng):
    res = harness.rewrite(model, DropPaddingTaps)
    feeds = harness.random_feeds(res.imported, rng)
    out, ref = harness.run(res.mod, res.imported, feeds), harness.onnxruntime(model, feeds)
    assert out[0].shape == ref[0].shape
    assert max_rel_err(out[0], ref[0]) <= RTOL
    return res


def conv_kernels(mod) -> list[tuple[int, ...]]:
    """The kernel shapes of every conv2d in ``mod``'s main function, in graph order."""
    return [tuple(int(v) for v in b.value.args[1].ty.shape.values)
            for block in mod["main"].body.blocks for b in block.bindings if op_name(b.value) == "relax.nn.conv2d"]


@pytest.mark.parametrize("case,c,o,hw,k,dilation,pads,strides,group,kernels", [
    # ASPP at rates 36 / 24 on a 14×14 map: only the centre tap reads the map, a 1×1 conv
    ("aspp36", 16, 8, (14, 14), (3, 3), (36, 36), (36, 36, 36, 36), (1, 1), 1, [(8, 16, 1, 1)]),
    ("aspp24", 16, 8, (14, 13), (3, 3), (24, 24), (24, 24, 24, 24), (1, 1), 1, [(8, 16, 1, 1)]),
    # rows drop to the centre tap, columns (33 wide, rate 12: 75 of 99 products inside) keep all three and stay
    # whole: a 1×3 conv with column padding 12
    ("rows-only", 8, 8, (9, 33), (3, 3), (24, 12), (24, 12, 24, 12), (1, 1), 1, [(8, 8, 1, 3)]),
    # asymmetric padding: the top tap reads only padding, the bottom one is kept (its padding stays >= 0); the
    # middle tap reaches 8 of 20 rows, too many to split for
    ("asymmetric", 8, 4, (20, 10), (3, 3), (12, 1), (24, 1, 0, 1), (1, 1), 1, [(4, 8, 2, 3)]),
    # strided, and depthwise
    ("strided", 8, 8, (15, 15), (3, 3), (20, 20), (20, 20, 20, 20), (2, 2), 1, [(8, 8, 1, 1)]),
    ("depthwise", 16, 16, (7, 7), (5, 5), (8, 8), (16, 16, 16, 16), (1, 1), 16, [(16, 1, 1, 1)]),
    ("grouped", 8, 8, (6, 6), (3, 3), (6, 6), (6, 6, 6, 6), (1, 1), 2, [(8, 4, 1, 1)]),
])
def test_padding_taps_dropped(case, c, o, hw, k, dilation, pads, strides, group, kernels, harness):
    rng = np.random.default_rng(seed_of(f"taps-{case}"))
    res = check(harness, conv_model(harness, rng, c, o, hw, k, dilation, pads, strides, group), rng)
    assert dict(res.report.rewrites) == {DROPPED: 1}
    assert conv_kernels(res.mod) == kernels


@pytest.mark.parametrize("case,hw,k,dilation,pads,terms", [
    # ASPP at rate 12 on 14×14: the outer taps reach the map from 2 rows / columns at each border (18 % of products)
    ("aspp12", (14, 14), (3, 3), (12, 12), (12, 12, 12, 12), 9),
    # ASPP at rate 24 on 33×33 (DeepLab at 520²): the outer taps reach 9 of 33 rows (27 %)
    ("aspp24-33", (33, 33), (3, 3), (24, 24), (24, 24, 24, 24), 9),
    # rows split, columns (3×3 with padding 1) not: 3 terms over whole rows
    ("rows", (14, 40), (3, 3), (12, 1), (12, 1, 12, 1), 3),
    # rows: each of the 5 taps reaches other outputs (1, 4, 7, 4, 1 of 7: 17 of 35 products); columns 19 of 27:
    # both would be 15 terms, so rows only
    ("5x3", (7, 9), (5, 3), (3, 4), (6, 4, 6, 4), 5),
    ("5x5", (7, 7), (5, 5), (3, 3), (6, 6, 6, 6), 5),  # 5 runs an axis: 25 terms, one axis split
])
def test_mostly_padding_convs_split(case, hw, k, dilation, pads, terms, harness):
    rng = np.random.default_rng(seed_of(f"split-{case}"))
    res = check(harness, conv_model(harness, rng, 8, 8, hw, k, dilation, pads), rng)
    assert dict(res.report.rewrites) == {SPLIT: 1}
    assert len(conv_kernels(res.mod)) == terms <= MAX_TERMS
    assert bool(res.report.notes) is (case in ("5x3", "5x5"))  # both axes' split left out: too many terms


@pytest.mark.parametrize("case,hw,k,dilation,pads,strides,group", [
    ("3x3", (14, 14), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # every tap reaches the map for some outputs, and splitting would not halve the work
    ("dilated2", (14, 14), (3, 3), (2, 2), (2, 2, 2, 2), (1, 1), 1),
    ("mobilenet-dw", (14, 14), (5, 5), (2, 2), (4, 4, 4, 4), (1, 1), 8),  # DeepLab's backbone, depthwise
    ("dilated4", (14, 14), (3, 3), (4, 4), (4, 4, 4, 4), (1, 1), 1),  # 34 of 42 products an axis
    ("strided", (14, 14), (3, 3), (1, 1), (1, 1, 1, 1), (2, 2), 1),
])
def test_taps_partly_inside_the_map_stay(case, hw, k, dilation, pads, strides, group, harness):
    rng = np.random.default_rng(seed_of(f"stay-{case}"))
    res = check(harness, conv_model(harness, rng, 8, 8, hw, k, dilation, pads, strides, group), rng)
    assert res.report.total == 0
    assert conv_kernels(res.mod) == [(8, 8 // group, *k)]
    assert not res.report.notes


def test_computed_weight_is_sliced(harness):
    """A weight that is not a constant (a graph input) is sliced in the graph."""
    rng = np.random.default_rng(seed_of("taps-weight-input"))
    model = conv_model(harness, rng, 8, 4, (10, 10), (3, 3), (12, 12), (12, 12, 12, 12), weight_input=True)
    res = check(harness, model, rng)
    assert dict(res.report.rewrites) == {DROPPED: 1} and res.ops_after.get("strided_slice", 0) == 1


def test_runs_keep_every_product_inside_the_map_once():
    """Every (output, tap) pair that reads inside the map is in exactly one run; split runs hold no other pair and
    read inside the input; a dropped run's padding stays >= 0. For each axis option and for the tap runs."""
    for n, k, s, d, p, q in [(14, 3, 1, 12, 12, 12), (14, 5, 1, 2, 4, 4), (9, 5, 2, 3, 6, 6), (14, 3, 1, 36, 36, 36),
                             (7, 3, 1, 6, 6, 6), (10, 3, 1, 12, 12, 0), (5, 7, 1, 1, 3, 3), (11, 3, 3, 5, 5, 5),
                             (33, 3, 1, 24, 24, 24)]:
        m = (n + p + q - (k - 1) * d - 1) // s + 1
        for runs in [*axis_options(n, m, k, s, d, (p, q)), tap_runs(n, m, k, s, d, p)]:
            inside = {(y, t) for y in range(m) for t in range(k) if 0 <= y * s + t * d - p < n}
            covered = [(y, t) for r in runs for y in range(r.out_start, r.out_stop)
                       for t in range(r.tap_lo, r.tap_hi + 1)]
            assert inside <= set(covered) and len(covered) == len(set(covered))
            for r in runs:
                assert min(r.pad) >= 0 and 0 <= r.in_start < r.in_stop <= n
                if r.pad == (0, 0) and (r.in_start, r.in_stop) != (0, n) or len(runs) > 1:
                    assert set(covered) == inside
                    assert (r.in_start, r.in_stop) == (r.out_start * s + r.tap_lo * d - p,
                                                       (r.out_stop - 1) * s + r.tap_hi * d - p + 1)


class ASPP(nn.Module):
    """DeepLab-V3's ASPP head (torchvision's layout) at rates 12 / 24 / 36: 1×1, three dilated 3×3 convs and the
    image pool, concatenated and projected; after a 1×1 conv standing for the backbone's last layer."""

    def __init__(self, c: int, o: int):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU())
        self.branches = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())]
            + [nn.Sequential(nn.Conv2d(c, o, 3, padding=r, dilation=r, bias=False), nn.BatchNorm2d(o), nn.ReLU())
               for r in (12, 24, 36)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(5 * o, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    def forward(self, x):
        x = self.backbone(x)
        pooled = nn.functional.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def test_aspp_block_at_O2_matches_pytorch():
    """The ASPP head on a 14×14 map compiled at -O2 (blocked layout): rates 24 and 36 become 1×1 convs, rate 12
    splits into 9 terms, its slices and pads on blocked tensors; against PyTorch (1e-4)."""
    torch.manual_seed(seed_of("aspp-O2"))
    net = randomize_bn(ASPP(32, 16)).eval()
    x = torch.randn(1, 32, 14, 14)
    art = reforge.compile(to_onnx(net, x))
    record = pass_record(art, "drop-padding-taps")
    assert record["rewrites"] == {DROPPED: 2, SPLIT: 1}
    # the split conv's input windows and padded terms run on the blocked tensors: the only layout transforms
    # are the network's input and output
    assert art.manifest["build"]["layout_transforms"] == 2
    with torch.no_grad():
        ref = net(x).numpy()
    assert max_rel_err(first_output(art, x.numpy()), ref) <= 1e-4
    assert "drop-padding-taps" in registry.select(2) and "drop-padding-taps" not in registry.select(1)
