"""remove-residual (RMNet reserve-and-merge) on ResNet-18 and ResNet-50, written here in PyTorch
(torchvision's v1.5 layout: stride on the bottleneck's 3×3; random weights, randomized BatchNorm
statistics, eval mode), and on blocks it must leave alone.

Each network goes through both exporters (torch.onnx, legacy exporter, opset 17; torch.export) and
``reforge.compile(..., enable_passes=["remove-residual"])``. The built module is compared with the
PyTorch module itself at rtol 1e-5 (max|out - ref| <= 1e-5 * max|ref|); after the passes no add of
two non-constant tensors (a skip connection) is left, every block is rewritten and the report
states the multiply-adds before and after; the x86 build's copy lowering (reserved_copies.py)
brings the multiply-adds back to the residual network's. LeakyReLU networks whose block inputs may
be negative reserve a +x / -x pair; ELU(α) networks (ONNX ``Elu``, torch.export ``F.elu``, both
imported as ``−α·relu(1 − exp(x)) + relu(x)``) reserve ``x + α``, FPlus / PFPlus(λ, μ) networks
(fused by fuse-fplus first) ``x + λ`` (also checked against onnxruntime on the ONNX file). Blocks the pass must keep are checked at the same tolerance, with the reason in
the report.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import reforge
from reforge import backends, frontend
from reforge.passes.analysis import graph_stats
from reforge.passes.remove_residual import IDENTITY, OFFSET, PAIR, PROJECTION, dirac
from reforge.passes.reserved_copies import copy_rows, reserved_channels_as_copies
from reforge.pipeline import run_passes
from tests.helpers import BasicBlock, Harness, ResNet, conv_bn, max_rel_err, randomize_bn, seed_of, skip_adds, to_onnx

RTOL = 1e-5  # max|out - ref| / max|ref| against PyTorch


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__(cin, width, stride)
        self.body = nn.Sequential(conv_bn(cin, width, 1), nn.ReLU(), conv_bn(width, width, 3, stride, 1), nn.ReLU(),
                                  conv_bn(width, width * 4, 1))


NETS = [  # id, factory, input shape, blocks with identity / projection shortcut
    ("ResNet-18", lambda: ResNet(BasicBlock, [2, 2, 2, 2]), (1, 3, 64, 64), 5, 3),
    # ResNet-50's depth and shape, a quarter of its width (base 16): the reserved channels make its
    # bottlenecks ~10x the multiply-adds, and a test should stay fast
    ("ResNet-50/4", lambda: ResNet(Bottleneck, [3, 4, 6, 3], base=16), (1, 3, 64, 64), 12, 4),
]


def record_of(art, name: str = "remove-residual") -> dict:
    return next(p for p in art.manifest["passes"] if p["name"] == name)


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("name,make,shape,identity,projection", NETS, ids=[n[0] for n in NETS])
def test_resnet_becomes_a_plain_chain(name: str, make: Callable[[], nn.Module], shape, identity: int,
                                      projection: int, exporter: str):
    torch.manual_seed(seed_of(name))
    net = randomize_bn(make())
    x = torch.randn(shape)
    model = to_onnx(net, x) if exporter == "onnx" else net
    example = None if exporter == "onnx" else (x,)

    # drop-padding-taps off: its sums of unpadded convs (the last stage's small maps) are adds of their own
    names = backends.get("x86").passes(enable=["remove-residual"], disable=["drop-padding-taps"])
    imported = frontend.load(model, None, example)
    mod, records = run_passes(imported.mod, names)
    assert skip_adds(imported.mod) == identity + projection
    assert skip_adds(mod) == 0
    report = records[names.index("remove-residual")].report.to_json()
    assert report["rewrites"] == {IDENTITY: identity, PROJECTION: projection}
    assert report["blocks"] == {"found": identity + projection, "rewritten": identity + projection, "refused": {}}
    macs_before, macs_after = report["macs"]
    assert macs_after > macs_before  # dense reserved channels cost multiply-adds; the report says how many
    # the CPU build runs reserved channels as copies: the multiply-adds of the residual network again
    lowered = graph_stats(reserved_channels_as_copies(mod))
    assert lowered.macs == macs_before and "concat" not in lowered.ops

    art = reforge.compile(imported, enable_passes=["remove-residual"])  # the same import, not a second one
    assert record_of(art)["macs"] == [macs_before, macs_after]
    with torch.no_grad():
        ref = net(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    err = max_rel_err(out, ref)
    assert err <= RTOL, f"max|err| / max|ref| = {err:.3g} > {RTOL}"


# ----------------------------------------------------------------------------- what must stay


class AfterConv(nn.Module):
    """A basic block whose input is a conv + BatchNorm output (no ReLU): it can be negative, so the
    reserved channels would not survive the block's inner ReLU."""

    def __init__(self):
        super().__init__()
        self.pre = conv_bn(4, 8, 3, 1, 1)
        self.block = BasicBlock(8, 8)

    def forward(self, x):
        return self.block(self.pre(x))


class ClippedInside(nn.Module):
    """A basic block after a ReLU whose inner activation is ReLU6: it would clip reserved channels
    above 6, so the block stays."""

    def __init__(self):
        super().__init__()
        self.block = BasicBlock(4, 4)
        self.block.body[1] = nn.ReLU6()

    def forward(self, x):
        return self.block(torch.relu(x))


KEPT = [  # id, factory, input shape, exporter, reason (a substring of the note)
    ("input-after-conv-bn", AfterConv, (1, 4, 8, 8), "onnx", "no provable lower bound (it comes from add)"),
    ("input-is-the-model-input", lambda: BasicBlock(4, 4), (1, 4, 8, 8), "onnx", "a function parameter"),
    # (torch.onnx writes ReLU6 as a NaN-propagating Clip, imported as a kernel, not an activation)
    ("relu6-inside", ClippedInside, (1, 4, 8, 8), "torch.export", "clip between its convs would change"),
]


@pytest.mark.parametrize("case_id,make,shape,exporter,reason", KEPT, ids=[k[0] for k in KEPT])
def test_block_that_cannot_be_proven_exact_is_kept(case_id, make, shape, exporter, reason):
    torch.manual_seed(seed_of(case_id))
    net = randomize_bn(make())
    x = torch.randn(shape)
    model, example = (to_onnx(net, x), None) if exporter == "onnx" else (net, (x,))
    art = reforge.compile(model, example_inputs=example, enable_passes=["remove-residual"])
    record = record_of(art)
    assert record["rewrites"] == {}
    assert record["blocks"]["found"] == 1 and record["blocks"]["rewritten"] == 0
    assert any(reason in n for n in record["notes"]), record["notes"]
    assert record["macs"][0] == record["macs"][1]
    with torch.no_grad():
        ref = net(x).numpy()
    err = max_rel_err(list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0], ref)
    assert err <= RTOL


class LeakyNet(nn.Module):
    """Two blocks (identity, then strided with a projection) with LeakyReLU(0.1) everywhere, fed the
    raw input: no block input is non-negative, so each reserves a +x / -x pair."""

    def __init__(self, block: type[BasicBlock], relu_first: bool = False):
        super().__init__()
        self.relu_first = relu_first
        self.blocks = nn.ModuleList([block(8, 8 // block.expansion), block(8, 16 // block.expansion, 2)])
        for b in self.blocks:
            for i, m in enumerate(b.body):
                if isinstance(m, nn.ReLU):
                    b.body[i] = nn.LeakyReLU(0.1)

    def forward(self, x):
        x = torch.relu(x) if self.relu_first else x
        for b in self.blocks:
            x = nn.functional.leaky_relu(b.body(x) + b.shortcut(x), 0.1)
        return x


LEAKY = [  # id, factory, exporter, rewrites
    ("basic-pair", lambda: LeakyNet(BasicBlock), "onnx", {IDENTITY + PAIR: 1, PROJECTION + PAIR: 1}),
    ("basic-pair", lambda: LeakyNet(BasicBlock), "torch.export", {IDENTITY + PAIR: 1, PROJECTION + PAIR: 1}),
    ("bottleneck-pair", lambda: LeakyNet(Bottleneck), "torch.export", {IDENTITY + PAIR: 1, PROJECTION + PAIR: 1}),
    # after a ReLU the first block's input is >= 0: one reserved copy is enough; the second block's
    # input is a LeakyReLU output again
    ("basic-after-relu", lambda: LeakyNet(BasicBlock, relu_first=True), "onnx", {IDENTITY: 1, PROJECTION + PAIR: 1}),
]


@pytest.mark.parametrize("case_id,make,exporter,rewrites", LEAKY, ids=[f"{c[0]}-{c[2]}" for c in LEAKY])
def test_leaky_relu_blocks_reserve_a_pair(case_id, make, exporter, rewrites):
    torch.manual_seed(seed_of(case_id))
    net = randomize_bn(make())
    x = torch.randn(1, 8, 12, 12)
    model = to_onnx(net, x) if exporter == "onnx" else net
    art = reforge.compile(model, example_inputs=None if exporter == "onnx" else (x,), enable_passes=["remove-residual"])
    record = record_of(art)
    assert record["rewrites"] == rewrites
    assert "add" not in record["after"]["ops"] or record["after"]["ops"]["add"] == record["after"]["ops"]["nn.conv2d"]
    with torch.no_grad():
        ref = net(x).numpy()
    err = max_rel_err(list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0], ref)
    assert err <= RTOL, f"max|err| / max|ref| = {err:.3g} > {RTOL}"


class FPlus(nn.Module):
    """PFPlus ``λ·((1 + μ|x|)^sign(x) − 1)``, FPlus at λ = μ = 1 (written as torch.where)."""

    def __init__(self, lam: float = 1.0, mu: float = 1.0):
        super().__init__()
        self.lam, self.mu = lam, mu

    def forward(self, x):
        if self.lam == self.mu == 1.0:
            return torch.where(x >= 0, x, x / (1 - x))
        return self.lam * (torch.pow(1 + self.mu * torch.abs(x), torch.sign(x)) - 1)


class EluNet(nn.Module):
    """A stem (conv, BatchNorm, an activation, 3×3/2 max pooling), then an identity block and a strided
    block with a projection shortcut (basic or bottleneck), every activation ``inner`` inside the
    blocks and ``outer`` on the stem and after each skip add. ELU(α) outputs are ≥ −α: the blocks
    reserve x + α (FPlus: x + 1)."""

    def __init__(self, block: type[BasicBlock], inner: str = "elu", outer: str = "elu", alpha: float = 0.7):
        super().__init__()
        acts = {"elu": lambda: nn.ELU(alpha), "relu": nn.ReLU, "gelu": nn.GELU, "fplus": FPlus,
                "pfplus": lambda: FPlus(2.0, 0.5)}
        self.outer = acts[outer]()
        self.stem = nn.Sequential(conv_bn(3, 8, 3, 1, 1), acts[outer](), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.ModuleList([block(8, 8 // block.expansion), block(8, 16 // block.expansion, 2)])
        for b in self.blocks:
            for i, m in enumerate(b.body):
                if isinstance(m, nn.ReLU):
                    b.body[i] = acts[inner]()

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = self.outer(b.body(x) + b.shortcut(x))
        return x


ELU = [  # id, factory, exporter, rewrites
    ("basic-elu", lambda: EluNet(BasicBlock), "onnx", {IDENTITY + OFFSET: 1, PROJECTION + OFFSET: 1}),
    ("basic-elu", lambda: EluNet(BasicBlock), "torch.export", {IDENTITY + OFFSET: 1, PROJECTION + OFFSET: 1}),
    ("bottleneck-elu", lambda: EluNet(Bottleneck), "onnx", {IDENTITY + OFFSET: 1, PROJECTION + OFFSET: 1}),
    ("bottleneck-elu-alpha1", lambda: EluNet(Bottleneck, alpha=1.0), "torch.export",
     {IDENTITY + OFFSET: 1, PROJECTION + OFFSET: 1}),
    # ELU block inputs, ReLUs inside: x + α >= 0 passes the ReLUs too
    ("basic-elu-outside-relu-inside", lambda: EluNet(BasicBlock, inner="relu"), "onnx",
     {IDENTITY + OFFSET: 1, PROJECTION + OFFSET: 1}),
    # ReLU block inputs, ELUs inside: c = 0, nothing to offset
    ("basic-relu-outside-elu-inside", lambda: EluNet(BasicBlock, outer="relu"), "torch.export",
     {IDENTITY: 1, PROJECTION: 1}),
    # FPlus >= -1, the identity on [0, inf): one reforge operator after fuse-fplus
    ("basic-fplus", lambda: EluNet(BasicBlock, inner="fplus", outer="fplus"), "onnx",
     {IDENTITY + OFFSET: 1, PROJECTION + OFFSET: 1}),
    ("bottleneck-fplus", lambda: EluNet(Bottleneck, inner="fplus", outer="fplus"), "torch.export",
     {IDENTITY + OFFSET: 1, PROJECTION + OFFSET: 1}),
]


@pytest.mark.parametrize("case_id,make,exporter,rewrites", ELU, ids=[f"{c[0]}-{c[2]}" for c in ELU])
def test_elu_blocks_reserve_x_plus_alpha(case_id, make, exporter, rewrites):
    torch.manual_seed(seed_of(case_id))
    net = randomize_bn(make())
    x = torch.randn(1, 3, 16, 16) * 2
    model = to_onnx(net, x) if exporter == "onnx" else net
    imported = frontend.load(model, None, None if exporter == "onnx" else (x,))
    # drop-padding-taps off: its sums of unpadded convs (the last stage's small maps) are adds of their own
    names = backends.get("x86").passes(enable=["remove-residual"], disable=["drop-padding-taps"])
    mod, records = run_passes(imported.mod, names)
    assert skip_adds(imported.mod) == 2 and skip_adds(mod) == 0
    # the CPU build's copies (through ELUs too) bring the multiply-adds back to the residual network's
    macs_before = records[names.index("remove-residual")].report.to_json()["macs"][0]
    assert graph_stats(reserved_channels_as_copies(mod)).macs == macs_before
    art = reforge.compile(imported, enable_passes=["remove-residual"])
    assert record_of(art)["rewrites"] == rewrites
    with torch.no_grad():
        ref = net(x).numpy()
    out = list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0]
    assert (ref < 0).any() == (not isinstance(net.outer, nn.ReLU))  # outputs on the activation's negative side
    err = max_rel_err(out, ref)
    assert err <= RTOL, f"max|err| / max|ref| = {err:.3g} > {RTOL}"
    if exporter == "onnx":
        err = max_rel_err(out, Harness.onnxruntime(model, {"x": x.numpy()})[0])
        assert err <= RTOL, f"against onnxruntime: max|err| / max|ref| = {err:.3g} > {RTOL}"


KEPT_ELU = [  # id, factory, exporter, reason
    # no bound: the block reads a conv output
    ("elu-after-conv", lambda: nn.Sequential(conv_bn(3, 8, 3, 1, 1), EluNet(BasicBlock).blocks[0]), "onnx",
     "no provable lower bound (it comes from add)"),
    # GELU is not the identity on [0, inf) (torch.export keeps nn.gelu)
    ("gelu-inside", lambda: EluNet(BasicBlock, inner="gelu"), "torch.export", "gelu between its convs would change"),
    # PFPlus(λ = 2, μ = 1/2) inside: fold-batchnorm moves λ into the next conv, and the fplus(λ = 1,
    # μ = 1/2) left is t/2 for t >= 0, not the identity: it would halve the reserved channels
    ("pfplus-inside", lambda: EluNet(BasicBlock, inner="pfplus", outer="relu"), "onnx",
     "fplus between its convs would change"),
]


@pytest.mark.parametrize("case_id,make,exporter,reason", KEPT_ELU, ids=[k[0] for k in KEPT_ELU])
def test_elu_block_without_a_bound_is_kept(case_id, make, exporter, reason):
    torch.manual_seed(seed_of(case_id))
    net = randomize_bn(make())
    x = torch.randn(1, 3, 16, 16)
    model, example = (to_onnx(net, x), None) if exporter == "onnx" else (net, (x,))
    art = reforge.compile(model, example_inputs=example, enable_passes=["remove-residual"])
    record = record_of(art)
    assert not any(OFFSET in k for k in record["rewrites"])
    assert any(reason in n for n in record["notes"]), record["notes"]
    with torch.no_grad():
        ref = net(x).numpy()
    err = max_rel_err(list(art.run({art.manifest["inputs"][0]["name"]: x.numpy()}).values())[0], ref)
    assert err <= RTOL


def test_on_by_default_at_O2_only_for_the_fpga():
    fpga = backends.get("opencl-fpga")
    assert "remove-residual" in fpga.passes(opt_level=2)
    for name in ("x86", "arm", "cuda"):
        assert "remove-residual" not in backends.get(name).passes(opt_level=2)
    assert "remove-residual" not in fpga.passes(opt_level=1)
    assert "remove-residual" in backends.get("x86").passes(opt_level=2, enable=["remove-residual"])


def test_x86_O2_keeps_the_residual():
    torch.manual_seed(seed_of("x86-O2"))
    net = randomize_bn(nn.Sequential(nn.ReLU(), BasicBlock(4, 4)))
    x = torch.randn(1, 4, 8, 8)
    art = reforge.compile(to_onnx(net, x), opt_level=2)
    assert "remove-residual" not in [p["name"] for p in art.manifest["passes"]]
    assert record_of(art, "dead-code")["after"]["ops"]["add"] == 3  # two biases and the skip connection


def test_copy_rows_reads_only_exact_dirac_rows():
    w = np.concatenate([dirac(3, (3, 3)), np.zeros((2, 3, 3, 3))], axis=0)
    w[3:, :, 0, 0] = 1.0
    assert copy_rows(w) == 3
    w[1, 2, 0, 1] = 1e-7  # one stray tap: row 1 is no copy
    assert copy_rows(w) == 1
    w[0, 0, 1, 1] = 2.0  # a scaled centre tap is no copy either
    assert copy_rows(w) == 0


def test_fpga_O2_removes_the_residual():
    """-O2 for opencl-fpga runs remove-residual by default (its numbers are checked on x86 above;
    running the FPGA module needs an OpenCL device)."""
    torch.manual_seed(seed_of("fpga-O2"))
    net = randomize_bn(nn.Sequential(nn.ReLU(), BasicBlock(4, 4), BasicBlock(4, 8, 2)))
    x = torch.randn(1, 4, 8, 8)
    art = reforge.compile(to_onnx(net, x), target="opencl-fpga", opt_level=2)
    assert record_of(art)["rewrites"] == {IDENTITY: 1, PROJECTION: 1}
    ops = record_of(art, "dead-code")["after"]["ops"]
    assert ops["add"] == ops["nn.conv2d"] == 4  # the biases only: no skip connection left
