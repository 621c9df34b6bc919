"""merge-branches on the training-time blocks of the Rep* papers, written from each paper in
PyTorch (random weights, randomized BatchNorm statistics, eval mode), and on blocks it must leave
alone.

Every family block goes through both exporters (torch.onnx, legacy TorchScript exporter, opset 17;
and torch.export) and ``reforge.compile`` at -O2 (fold-constants, fold-batchnorm, then
merge-branches). The built module is compared with the PyTorch module itself at rtol 1e-5
(max|out - ref| <= 1e-5 * max|ref|), and the conv2d count after merge-branches must be the
family's deploy form. Blocks the pass must keep are checked against onnxruntime at the same
tolerance, with their conv count unchanged and the reason in the report.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

import reforge
from reforge.passes import FoldBatchNorm, FoldConstants, MergeBranches
from tests.helpers import Harness, Stats, conv_bn, make_params, max_rel_err, randomize_bn, seed_of, to_onnx

RTOL = 1e-5  # max|out - ref| / max|ref| against PyTorch / onnxruntime
N = helper.make_node


# ----------------------------------------------------------------------------- the families


class RepVGGBlock(nn.Module):
    """Ding et al., RepVGG (CVPR 2021): BN(3×3) + BN(1×1) + BN(x) (identity only for stride 1 and
    cin == cout), then ReLU. Deploy form: one 3×3 conv."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.dense = conv_bn(cin, cout, 3, stride, 1, groups)
        self.pointwise = conv_bn(cin, cout, 1, stride, 0, groups)
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x):
        y = self.dense(x) + self.pointwise(x)
        return torch.relu(y if self.identity is None else y + self.identity(x))


class RepVGGNet(nn.Module):
    """A small RepVGG-A-style network: stride-2 blocks open each stage, then global pooling and a
    classifier. Deploy form: one conv per block."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(RepVGGBlock(3, 8, 2), RepVGGBlock(8, 8), RepVGGBlock(8, 16, 2), RepVGGBlock(16, 16))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class ACBlock(nn.Module):
    """Ding et al., ACNet (ICCV 2019): BN(3×3) + BN(1×3) + BN(3×1), the asymmetric kernels padded
    to land on the square kernel's centre row / column. Deploy form: one 3×3 conv."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.square = conv_bn(cin, cout, 3, stride, 1)
        self.hor = conv_bn(cin, cout, (1, 3), stride, (0, 1))
        self.ver = conv_bn(cin, cout, (3, 1), stride, (1, 0))

    def forward(self, x):
        return torch.relu(self.square(x) + self.hor(x) + self.ver(x))


class DiverseBranchBlock(nn.Module):
    """Ding et al., Diverse Branch Block (CVPR 2021): BN(k×k) + BN(1×1) + BN(avg(BN(1×1))) +
    BN(k×k(BN(1×1))). The paper's BNAndPadLayer pads the first BN's output with BN(0); a 1×1
    conv that itself pads by k//2 produces exactly that border (0 through the BN), so the
    k×k conv and the k×k average pooling after it run unpadded. Depthwise blocks average the
    input directly. Deploy form: one k×k conv."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__()
        p = k // 2
        self.origin = conv_bn(cin, cout, k, stride, p, groups)
        self.pointwise = conv_bn(cin, cout, 1, stride, 0, groups) if groups < cout else None
        if groups < cout:
            self.avg = nn.Sequential(conv_bn(cin, cout, 1, 1, p, groups), nn.AvgPool2d(k, stride, 0),
                                     nn.BatchNorm2d(cout))
        else:
            self.avg = nn.Sequential(nn.AvgPool2d(k, stride, p), nn.BatchNorm2d(cout))
        mid = cin if groups < cout else 2 * cin
        self.one_k = nn.Sequential(conv_bn(cin, mid, 1, 1, p, groups), conv_bn(mid, cout, k, stride, 0, groups))

    def forward(self, x):
        y = self.origin(x) + self.avg(x) + self.one_k(x)
        return torch.relu(y if self.pointwise is None else y + self.pointwise(x))


class MobileOneBlock(nn.Module):
    """Vasu et al., MobileOne (CVPR 2023): k over-parameterized BN(conv) branches + a BN(1×1)
    "scale" branch (for k×k > 1) + a BN identity (stride 1, cin == cout), then ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, branches: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(conv_bn(cin, cout, kernel, stride, kernel // 2, groups) for _ in range(branches))
        self.scale = conv_bn(cin, cout, 1, stride, 0, groups) if kernel > 1 else None
        self.skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x):
        y = sum(conv(x) for conv in self.convs)
        y = y if self.scale is None else y + self.scale(x)
        return torch.relu(y if self.skip is None else y + self.skip(x))


class MobileOneUnit(nn.Module):
    """A MobileOne stage: a depthwise 3×3 block, then a pointwise 1×1 block. Deploy form: 2 convs."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = MobileOneBlock(cin, cin, 3, stride, groups=cin)
        self.pointwise = MobileOneBlock(cin, cout, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class RepGhostModule(nn.Module):
    """Chen et al., RepGhost (2022): primary BN(1×1)+ReLU, then the cheap depthwise BN(3×3) plus a
    BN identity branch on the same features, summed before the ReLU. Deploy form: 2 convs."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.primary = nn.Sequential(conv_bn(cin, cout, 1), nn.ReLU())
        self.cheap = conv_bn(cout, cout, 3, 1, 1, groups=cout)
        self.fusion_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        x1 = self.primary(x)
        return torch.relu(self.cheap(x1) + self.fusion_bn(x1))


FAMILIES = [  # id, block factory, input shape, conv2d count in the deploy form
    ("RepVGG", lambda: RepVGGBlock(8, 8), (2, 8, 10, 10), 1),
    ("RepVGG-stride2-groups2", lambda: RepVGGBlock(8, 16, stride=2, groups=2), (2, 8, 10, 10), 1),
    ("RepVGG-net", RepVGGNet, (2, 3, 16, 16), 4),
    ("ACNet", lambda: ACBlock(6, 8), (2, 6, 9, 9), 1),
    ("ACNet-stride2", lambda: ACBlock(6, 8, stride=2), (2, 6, 10, 10), 1),
    ("DBB", lambda: DiverseBranchBlock(6, 8), (2, 6, 9, 9), 1),
    ("DBB-k5-stride2", lambda: DiverseBranchBlock(6, 8, k=5, stride=2), (2, 6, 12, 12), 1),
    ("DBB-depthwise", lambda: DiverseBranchBlock(8, 8, groups=8), (2, 8, 9, 9), 1),
    ("MobileOne", lambda: MobileOneUnit(8, 16), (2, 8, 10, 10), 2),
    ("MobileOne-stride2", lambda: MobileOneUnit(8, 16, stride=2), (2, 8, 10, 10), 2),
    ("RepGhost", lambda: RepGhostModule(6, 12), (2, 6, 9, 9), 2),
]


def merge_record(art) -> dict:
    return next(p for p in art.manifest["passes"] if p["name"] == "merge-branches")


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("name,make,shape,deploy_convs", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_block_reaches_its_deploy_form(name: str, make: Callable[[], nn.Module], shape, deploy_convs: int,
                                              exporter: str):
    torch.manual_seed(seed_of(name))
    block = randomize_bn(make())
    x = torch.randn(shape)
    model = to_onnx(block, x) if exporter == "onnx" else block
    art = reforge.compile(model, opt_level=2, example_inputs=None if exporter == "onnx" else (x,))

    record = merge_record(art)
    assert record["after"]["ops"]["nn.conv2d"] == deploy_convs
    assert record["rewrites"]["parallel branches merged"] >= 1
    assert all("nonlinearity" in reason for reason in record["blocks"]["refused"])  # MobileOne: dw -> relu -> pw
    assert record["macs"][1] <= record["macs"][0] and record["params"][1] < record["params"][0]

    with torch.no_grad():
        ref = block(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert out.shape == ref.shape
    err = max_rel_err(out, ref)
    assert err <= RTOL, f"max|err| / max|ref| = {err:.3g} > {RTOL}"


# ----------------------------------------------------------------------------- what must stay


X = (2, 4, 8, 8)
PAD1 = [1, 1, 1, 1]


def bn_node(x: str, y: str, p: str):
    return N("BatchNormalization", [x, f"{p}_g", f"{p}_b", f"{p}_m", f"{p}_v"], [y])


KEPT = [  # id, nodes, params spec, conv2d count (before = after), reason (a substring of a note)
    ("misaligned-1x3-right-padded",
     [N("Conv", ["x", "W3"], ["a"], pads=PAD1), N("Conv", ["x", "W13"], ["b"], pads=[0, 0, 0, 2]),
      N("Add", ["a", "b"], ["y"])],
     {"W3": (6, 4, 3, 3), "W13": (6, 4, 1, 3)}, 2, "does not align"),
    ("asymmetric-SAME-stride2",
     [N("Conv", ["x", "W3", "B3"], ["a"], pads=[0, 0, 1, 1], strides=[2, 2]),
      N("Conv", ["x", "W1", "B1"], ["b"], strides=[2, 2]), N("Add", ["a", "b"], ["y"])],
     {"W3": (6, 4, 3, 3), "B3": (6,), "W1": (6, 4, 1, 1), "B1": (6,)}, 2, "does not align"),
    ("different-dilations",
     [N("Conv", ["x", "Wa"], ["a"], pads=PAD1), N("Conv", ["x", "Wb"], ["b"], pads=[2, 2, 2, 2], dilations=[2, 2]),
      N("Add", ["a", "b"], ["y"])],
     {"Wa": (4, 4, 3, 3), "Wb": (4, 4, 3, 3)}, 2, "different dilations"),
    ("depthwise-3x3-plus-dense-1x1-costs-more",
     [N("Conv", ["x", "Wd"], ["a"], pads=PAD1, group=4), N("Conv", ["x", "W1"], ["b"]), N("Add", ["a", "b"], ["y"])],
     {"Wd": (4, 1, 3, 3), "W1": (4, 4, 1, 1)}, 2, "more multiply-adds"),
    ("avgpool-without-padding-in-count",
     [N("Conv", ["x", "W3"], ["a"], pads=PAD1),
      N("AveragePool", ["x"], ["p"], kernel_shape=[3, 3], pads=PAD1, count_include_pad=0), N("Add", ["a", "p"], ["y"])],
     {"W3": (4, 4, 3, 3)}, 1, "padding out of the count"),
    ("relu-between-convs",
     [N("Conv", ["x", "W1", "B1"], ["a"]), N("Relu", ["a"], ["r"]), N("Conv", ["r", "W3"], ["y"], pads=PAD1)],
     {"W1": (6, 4, 1, 1), "B1": (6,), "W3": (6, 6, 3, 3)}, 2, "nn.relu"),
    ("DBB-1x1-bn-then-zero-padded-3x3",
     [N("Conv", ["x", "W1"], ["a"]), bn_node("a", "b", "bn"), N("Conv", ["b", "W3"], ["y"], pads=PAD1)],
     {"W1": (6, 4, 1, 1), "bn": Stats(6), "W3": (6, 6, 3, 3)}, 2, "bias is nonzero"),
]


def model_of(nodes, spec: dict, rng, shape=X) -> onnx.ModelProto:
    return Harness.model(nodes, {"x": shape}, make_params(spec, rng))


@pytest.mark.parametrize("case_id,nodes,spec,convs,reason", KEPT, ids=[k[0] for k in KEPT])
def test_block_that_cannot_be_proven_exact_is_kept(case_id, nodes, spec, convs, reason, harness):
    rng = np.random.default_rng(seed_of(case_id))
    model = model_of(nodes, spec, rng)
    res = harness.rewrite(model, FoldConstants, FoldBatchNorm, MergeBranches)
    assert res.ops_before["nn.conv2d"] == res.ops_after["nn.conv2d"] == convs
    assert res.report.total == 0
    assert any(reason in n for n in res.report.notes), res.report.notes
    assert sum(res.report.refused.values()) == 1
    assert res.report.to_json()["blocks"] == {"found": 1, "rewritten": 0, "refused": dict(res.report.refused)}

    feeds = harness.random_feeds(res.imported, rng)
    err = max_rel_err(harness.run(res.mod, res.imported, feeds)[0], harness.onnxruntime(model, feeds)[0])
    assert err <= RTOL


SUMS = [  # id, nodes, params spec: parallel branches that merge into one conv
    ("dilated-3x3-plus-1x1-plus-identity",
     [N("Conv", ["x", "W3", "B3"], ["a"], pads=[2, 2, 2, 2], dilations=[2, 2]), N("Conv", ["x", "W1"], ["b"]),
      N("Add", ["a", "b"], ["c"]), N("Add", ["x", "c"], ["y"])],
     {"W3": (4, 4, 3, 3), "B3": (4,), "W1": (4, 4, 1, 1)}),
    ("grouped-5x5-plus-depthwise-3x3-plus-avgpool",
     [N("Conv", ["x", "W5"], ["a"], pads=[2, 2, 2, 2], group=2), N("Conv", ["x", "Wd"], ["b"], pads=PAD1, group=4),
      N("AveragePool", ["x"], ["p"], kernel_shape=[3, 3], pads=PAD1, count_include_pad=1),
      N("Add", ["a", "b"], ["c"]), N("Add", ["c", "p"], ["y"])],
     {"W5": (4, 2, 5, 5), "Wd": (4, 1, 3, 3)}),
]


@pytest.mark.parametrize("case_id,nodes,spec", SUMS, ids=[m[0] for m in SUMS])
def test_parallel_branches_merge(case_id, nodes, spec, harness):
    rng = np.random.default_rng(seed_of(case_id))
    model = model_of(nodes, spec, rng)
    res = harness.rewrite(model, FoldConstants, FoldBatchNorm, MergeBranches)
    assert dict(res.report.rewrites) == {"parallel branches merged": 1}
    assert res.ops_after == ({"nn.conv2d": 1, "add": 1} if "B3" in spec else {"nn.conv2d": 1})
    feeds = harness.random_feeds(res.imported, rng)
    err = max_rel_err(harness.run(res.mod, res.imported, feeds)[0], harness.onnxruntime(model, feeds)[0])
    assert err <= RTOL


# ----------------------------------------------------------------------------- sequential pairs that merge


MERGED = [  # id, nodes, params spec
    ("1x1-no-bias-then-zero-padded-3x3",
     [N("Conv", ["x", "W1"], ["a"]), N("Conv", ["a", "W3", "B3"], ["y"], pads=PAD1)],
     {"W1": (4, 4, 1, 1), "W3": (6, 4, 3, 3), "B3": (6,)}),
    ("3x3-bias-stride2-then-1x1",
     [N("Conv", ["x", "W3", "B3"], ["a"], pads=PAD1, strides=[2, 2]), N("Conv", ["a", "W1", "B1"], ["y"])],
     {"W3": (4, 4, 3, 3), "B3": (4,), "W1": (4, 4, 1, 1), "B1": (4,)}),
    ("1x1-bias-padded-then-unpadded-3x3-grouped",
     [N("Conv", ["x", "W1", "B1"], ["a"], pads=PAD1, group=2), N("Conv", ["a", "W3"], ["y"], group=2)],
     {"W1": (4, 2, 1, 1), "B1": (4,), "W3": (6, 2, 3, 3)}),
]


@pytest.mark.parametrize("case_id,nodes,spec", MERGED, ids=[m[0] for m in MERGED])
def test_sequential_pair_merges(case_id, nodes, spec, harness):
    rng = np.random.default_rng(seed_of(case_id))
    model = model_of(nodes, spec, rng)
    res = harness.rewrite(model, FoldConstants, FoldBatchNorm, MergeBranches)
    assert dict(res.report.rewrites) == {"sequential convs merged": 1}
    assert res.ops_after["nn.conv2d"] == 1
    feeds = harness.random_feeds(res.imported, rng)
    err = max_rel_err(harness.run(res.mod, res.imported, feeds)[0], harness.onnxruntime(model, feeds)[0])
    assert err <= RTOL


def test_low_rank_pair_is_not_expanded(harness):
    """A 1×1 bottleneck 16 -> 2 -> 16 composed would cost 256 multiply-adds per pixel instead of 64."""
    rng = np.random.default_rng(seed_of("low-rank"))
    nodes = [N("Conv", ["x", "W1"], ["a"]), N("Conv", ["a", "W2"], ["y"])]
    model = model_of(nodes, {"W1": (2, 16, 1, 1), "W2": (16, 2, 1, 1)}, rng, (1, 16, 4, 4))
    res = harness.rewrite(model, FoldConstants, FoldBatchNorm, MergeBranches)
    assert res.ops_after["nn.conv2d"] == 2
    assert any("more multiply-adds" in n for n in res.report.notes), res.report.notes
