"""prune-channels on networks pruned with PyTorch's own ``torch.nn.utils.prune.ln_structured`` (dim 0:
whole filters zeroed, dim 1: whole input-channel slices zeroed) at several ratios: a VGG-shaped
chain, a ResNet-shaped network with residual adds, a MobileNet-shaped block with a depthwise conv,
and a ResNet whose residuals remove-residual took out (RMNet), pruned through the former blocks.

Each network runs through the passes fold-masks (the pruning reparametrization is kept), fold-constants,
fold-batchnorm and prune-channels, and the module is compared with PyTorch at rtol 1e-5
(max|out - ref| <= 1e-5 * max|ref|; folded constants re-associate floats). The channel counts of every
conv after the pass equal the live channels counted here in numpy from PyTorch's weights alone, with
the network's topology written out by hand (a channel is removed when its filters are all zero on
every producer of its class, or when every reader's slice of it is zero, to a fixpoint).

Negative cases: a zero filter added to a live residual operand stays; a zero filter with a nonzero bias
read by a zero-padding conv is removed with an exact bias map (the border sees the padding's zeros).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import reforge
from reforge import backends, frontend
from reforge.passes import registry
from reforge.passes.graph import bindings, const_value, is_const, op_name
from reforge.passes.prune_channels import CONSTANT, DEAD, conv_channels
from reforge.pipeline import run_passes
from reforge.report_format import compile_report
from reforge.verify import run_module
from tests.helpers import (BasicBlock, MobileBlock, ResNet, channels_read, conv_bn, max_rel_err, mobile_live,
                           randomize_bn, resnet_ish, resnet_live, seed_of, skip_adds, to_onnx, vgg_ish, vgg_live,
                           zero_filter)

RTOL = 1e-5
PASSES = registry.select(passes=["fold-masks", "prune-channels"])


def weights(net: nn.Module) -> list[np.ndarray]:
    """PyTorch's effective weights of the convs and linears, in module order."""
    return [m.weight.detach().numpy() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def run(net: nn.Module, x: torch.Tensor, route: str = "torch.export"):
    """Import ``net`` on ``route``, run the passes, compare with PyTorch (rtol 1e-5); return the
    prune-channels report (JSON) and the (out, in) channels of every conv after it."""
    net = net.eval()
    imported = frontend.load(to_onnx(net, x) if route == "onnx" else net, None,
                             None if route == "onnx" else (x,))
    mod, records = run_passes(imported.mod, PASSES)
    out = run_module(mod, [x.numpy()], backends.get("x86"))[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert max_rel_err(out, ref) <= RTOL
    return records[-1].report.to_json(), conv_channels(mod["main"])


def ln_structured(layers: list[nn.Module], amount: float, dim: int) -> None:
    for m in layers:
        prune.ln_structured(m, "weight", amount=amount, n=2, dim=dim)


# ----------------------------------------------------------------------------- a VGG chain


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("dim", [0, 1])
def test_vgg_ln_structured(dim: int, amount: float):
    torch.manual_seed(seed_of(f"vgg{dim}{amount}"))
    net = randomize_bn(vgg_ish())
    ln_structured([m for m in net.modules() if isinstance(m, nn.Conv2d)], amount, dim)
    report, channels = run(net, torch.randn(2, 3, 16, 16))
    expected = vgg_live(weights(net))
    assert channels == expected
    assert report["rewrites"].get(CONSTANT if dim == 0 else DEAD, 0) > 0
    assert set(report["rewrites"]) <= {CONSTANT, DEAD}
    params, macs = report["params"], report["macs"]
    assert params[1] < params[0] and macs[1] < macs[0]
    changed = [f"conv2d {i + 1}" for i, (a, b) in enumerate(zip([(8, 3), (8, 8), (16, 8)], expected)) if a != b]
    assert [row["layer"] for row in report["layers"]] == changed


def test_vgg_from_onnx():
    """The same analysis on the TorchScript exporter's graph (Gemm after Flatten, BatchNormalization)."""
    torch.manual_seed(seed_of("vgg-onnx"))
    net = randomize_bn(vgg_ish())
    ln_structured([m for m in net.modules() if isinstance(m, nn.Conv2d)], 0.5, 0)
    _, channels = run(net, torch.randn(2, 3, 16, 16), route="onnx")
    assert channels == vgg_live(weights(net))


# ----------------------------------------------------------------------------- residual adds


@pytest.mark.parametrize("dim,amount", [(0, 0.5), (1, 0.5), (0, 0.75)])
def test_resnet_ln_structured(dim: int, amount: float):
    torch.manual_seed(seed_of(f"resnet{dim}{amount}"))
    net = randomize_bn(resnet_ish())
    ln_structured([m for m in net.modules() if isinstance(m, nn.Conv2d)], amount, dim)
    report, channels = run(net, torch.randn(2, 3, 16, 16))
    assert channels == resnet_live(weights(net))
    assert report["macs"][1] < report["macs"][0]


def test_zero_filter_added_to_a_live_operand_stays():
    """Block 1's second conv loses filter 3 (zeroed) but the stem's channel 3 is live: the sum is live,
    the channel stays in both producers, and the report says why."""
    torch.manual_seed(seed_of("residual-negative"))
    net = randomize_bn(resnet_ish())
    b1 = net[2].body[2][0]
    prune.custom_from_mask(b1, "weight", torch.ones_like(b1.weight).index_fill_(0, torch.tensor([3]), 0.0))
    assert zero_filter(b1.weight.detach().numpy())[3] and not zero_filter(net[0][0].weight.detach().numpy()).any()
    report, channels = run(net, torch.randn(2, 3, 16, 16))
    assert channels == [(8, 3), (8, 8), (8, 8), (16, 8), (16, 16), (16, 16)]
    assert report["rewrites"] == {}
    assert any("added to a live one" in note for note in report["notes"])


# ----------------------------------------------------------------------------- constants into padded readers


class ZeroFilterBias(nn.Module):
    """conv₁ (bias) → ReLU → conv₂ (``pad`` zero padding); conv₁'s filter 2 is zero and its bias 1.5, so
    channel 2 is the constant ReLU(1.5) = 1.5 everywhere, and conv₂'s border reads zero padding instead."""

    def __init__(self, pad: int, k: int):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, k, padding=pad)
        with torch.no_grad():
            self.c1.weight[2] = 0.0
            self.c1.bias[2] = 1.5

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def bias_maps(mod) -> list[np.ndarray]:
    """Constants of shape (1, O, H, W) added in ``main`` (an exact bias map)."""
    found = []
    for b in bindings(mod["main"]):
        if op_name(b.value) == "relax.add":
            found += [const_value(a) for a in b.value.args if is_const(a) and const_value(a).ndim == 4
                      and const_value(a).shape[2] > 1]
    return found


@pytest.mark.parametrize("pad,k", [(1, 3), (0, 3), (2, 5)])
def test_zero_filter_with_bias_into_a_padding_conv_keeps_the_border_exact(pad: int, k: int):
    torch.manual_seed(seed_of(f"border{pad}{k}"))
    net = ZeroFilterBias(pad, k).eval()
    x = torch.randn(2, 3, 9, 9)
    imported = frontend.load(net, None, (x,))
    mod, records = run_passes(imported.mod, PASSES)
    out = run_module(mod, [x.numpy()], backends.get("x86"))[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert max_rel_err(out, ref) <= RTOL
    assert conv_channels(mod["main"]) == [(5, 3), (5, 5)]
    assert records[-1].report.rewrites == {CONSTANT: 1}
    maps = bias_maps(mod)
    if pad:  # the border taps read padding: a (1, 5, H, W) map whose border differs from its interior
        assert len(maps) == 1 and maps[0].shape == (1, 5, 9 + 2 * pad - k + 1, 9 + 2 * pad - k + 1)
        assert not np.allclose(maps[0][:, :, 0, 0], maps[0][:, :, maps[0].shape[2] // 2, maps[0].shape[3] // 2])
    else:  # unpadded: the constant is a per-channel bias
        assert maps == []


# ----------------------------------------------------------------------------- depthwise convs


@pytest.mark.parametrize("dim", [0, 1])
def test_depthwise_channels_die_with_their_input(dim: int):
    """dim 1: the projection's zero input slices kill depthwise channels and the expand filters feeding them;
    dim 0: zero stem / projection filters are constants folded into the 1×1 expand and the classifier."""
    torch.manual_seed(seed_of(f"mobile{dim}"))
    net = randomize_bn(MobileBlock())
    stem, expand, project = (m[0] for m in (net.stem, net.expand, net.project))
    ln_structured([expand, project] if dim == 1 else [stem, project], 0.5, dim)
    _, channels = run(net, torch.randn(2, 3, 12, 12))
    assert channels == mobile_live(net)
    (na, _), (nm, _), _, (nb, _) = channels
    assert (nm < 16) if dim == 1 else (na < 8 and nb < 8)


# ----------------------------------------------------------------------------- RMNet


def test_rm_resnet_pruned_through_former_blocks():
    """A ResNet (basic blocks, identity and projection shortcuts) with half the filters of every block's first
    conv zeroed: remove-residual makes each block a plain chain (reserved channels carry the input),
    then prune-channels removes the zeroed filters' constant channels from inside the former blocks."""
    torch.manual_seed(seed_of("rmnet"))
    net = randomize_bn(ResNet(BasicBlock, [1, 1], base=8))
    firsts = [blk.body[0][0] for blk in net.body]
    ln_structured(firsts, 0.5, 0)
    x = torch.randn(1, 3, 32, 32)
    imported = frontend.load(net.eval(), None, (x,))
    names = registry.select(passes=["fold-masks", "remove-residual", "prune-channels"])
    mod, records = run_passes(imported.mod, names)
    assert skip_adds(mod) == 0
    out = run_module(mod, [x.numpy()], backends.get("x86"))[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert max_rel_err(out, ref) <= RTOL
    live = [int((~zero_filter(w.weight.detach().numpy())).sum()) for w in firsts]
    assert live == [4, 8]
    # stem; per block: conv1' = C_in reserved + live inner channels, conv2' reads them all
    assert conv_channels(mod["main"]) == [(8, 3), (8 + live[0], 8), (8, 8 + live[0]), (8 + live[1], 8),
                                          (16, 8 + live[1])]
    assert records[-1].report.rewrites == {CONSTANT: 4 + 8}


# ----------------------------------------------------------------------------- concats


class TwoBranches(nn.Module):
    """Inception-style: a stem, a 1×1 and a 3×3 branch concatenated along channels, a 3×3 conv over both."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = conv_bn(3, 8, 3, 1, 1), conv_bn(8, 6, 1), conv_bn(8, 6, 3, 1, 1)
        self.post, self.fc = conv_bn(12, 8, 3, 1, 1), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.relu(self.post(x)).mean((2, 3)))


def test_concat_channels_map_to_their_branch():
    """Zero filters in the branches (dim 0) and zero input slices of the conv after the concat (dim 1): each
    concatenated channel is its branch's, removed from that branch and from the reader."""
    torch.manual_seed(seed_of("concat"))
    net = randomize_bn(TwoBranches())
    stem, a, b, post = (m[0] for m in (net.stem, net.a, net.b, net.post))
    ln_structured([a, b], 0.34, 0)
    ln_structured([post], 0.34, 1)
    report, channels = run(net, torch.randn(2, 3, 10, 10))
    ws = {name: m.weight.detach().numpy() for name, m in (("stem", stem), ("a", a), ("b", b), ("post", post),
                                                          ("fc", net.fc))}
    p = ~zero_filter(ws["post"]) & channels_read(ws["fc"], np.ones(10, bool))
    c = ~np.concatenate([zero_filter(ws["a"]), zero_filter(ws["b"])]) & channels_read(ws["post"], p)
    s = ~zero_filter(ws["stem"]) & (channels_read(ws["a"], c[:6]) | channels_read(ws["b"], c[6:]))
    ns, na, nb, n_post = int(s.sum()), int(c[:6].sum()), int(c[6:].sum()), int(p.sum())
    assert channels == [(ns, 3), (na, ns), (nb, ns), (n_post, na + nb)]
    assert na + nb < 12 and set(report["rewrites"]) == {CONSTANT, DEAD}


class SplitHalves(nn.Module):
    """A conv's output split in two halves along channels, each through its own conv, summed."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = conv_bn(3, 8, 3, 1, 1), conv_bn(4, 6, 3, 1, 1), conv_bn(4, 6, 1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        lo, hi = torch.split(torch.relu(self.stem(x)), 4, dim=1)
        return self.fc(torch.relu(self.a(lo) + self.b(hi)).mean((2, 3)))


def test_split_items_map_to_their_channels():
    torch.manual_seed(seed_of("split"))
    net = randomize_bn(SplitHalves())
    stem, a, b = (m[0] for m in (net.stem, net.a, net.b))
    ln_structured([stem], 0.25, 0)
    ln_structured([a, b], 0.5, 1)
    _, channels = run(net, torch.randn(2, 3, 10, 10))
    s = ~zero_filter(stem.weight.detach().numpy()) & np.concatenate(
        [channels_read(a.weight.detach().numpy(), np.ones(6, bool)),
         channels_read(b.weight.detach().numpy(), np.ones(6, bool))])
    lo, hi = int(s[:4].sum()), int(s[4:].sum())
    assert channels == [(lo + hi, 3), (6, lo), (6, hi)]
    assert lo + hi < 8


def test_compile_reports_channels_per_layer():
    """-O2 on x86 runs prune-channels by default: the built module (reforge's schedules) is verified against
    PyTorch stage by stage, and the report lists each conv's channels and multiply-adds before and after."""
    torch.manual_seed(seed_of("compile"))
    net = randomize_bn(vgg_ish())
    ln_structured([m for m in net.modules() if isinstance(m, nn.Conv2d)], 0.5, 0)
    art = reforge.compile(net, example_inputs=(torch.randn(1, 3, 16, 16),), verify=True)
    assert art.manifest["verification"]["passed"]
    record = next(p for p in art.manifest["passes"] if p["name"] == "prune-channels")
    assert record["layers"][0] == {"layer": "conv2d 1", "out_channels": "8 -> 4", "in_channels": "3 -> 3",
                                   "macs": f"{8 * 27 * 256} -> {4 * 27 * 256}"}
    assert record["macs"][1] < record["macs"][0]
    assert "prune-channels: conv2d 2: out_channels 8 -> 4, in_channels 8 -> 4" in compile_report(art.manifest)
