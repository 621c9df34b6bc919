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
from reforge import frontend
from reforge.passes import registry
from reforge.passes.graph import bindings, const_value, is_const, op_name
from reforge.passes.prune_channels import CONSTANT, DEAD, conv_channels
from reforge.pipeline import run_passes
from reforge.report_format import compile_report
from reforge.targets import get_target
from reforge.verify import run_module

from .conftest import max_rel_err, seed_of
from .test_fold_batchnorm import randomize_bn
from .test_fold_masks import MobileBlock, resnet_ish, vgg_ish
from .test_merge_branches import conv_bn, to_onnx
from .test_remove_residual import BasicBlock, ResNet, skip_adds

RTOL = 1e-5
PASSES = registry.select(passes=["fold-masks", "prune-channels"])


def zero_filter(w: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
    """Per output channel (axis 0, PyTorch's layout): all its weights on the kept ``inputs`` (axis 1; all when
    None) are zero. Removed constant inputs are folded into the bias, so a filter that reads only them is zero."""
    w = w if inputs is None else w[:, inputs]
    return ~w.reshape(w.shape[0], -1).any(axis=1)


def read(w: np.ndarray, rows: np.ndarray, per_channel: int = 1) -> np.ndarray:
    """Per input channel of ``w`` (axis 1; ``per_channel`` consecutive columns each, a flatten's):
    a kept output row (``rows``) reads it with a nonzero weight."""
    kept = w[rows].reshape(int(rows.sum()), w.shape[1] // per_channel, per_channel * int(np.prod(w.shape[2:])))
    return kept.any(axis=(0, 2))


def weights(net: nn.Module) -> list[np.ndarray]:
    """PyTorch's effective weights of the convs and linears, in module order."""
    return [m.weight.detach().numpy() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def fixpoint(step, state: dict) -> dict:
    """Iterate ``step`` on the kept channels of each tensor until nothing changes; a tensor that would lose
    every channel keeps them all (the pass never empties a tensor)."""
    for _ in range(100):
        new = {k: v if v.any() else np.ones_like(v) for k, v in step(state).items()}
        if all(np.array_equal(new[k], state[k]) for k in state):
            return state
        state = new
    raise AssertionError("the live-channel count does not settle")


def run(net: nn.Module, x: torch.Tensor, route: str = "torch.export"):
    """Import ``net`` on ``route``, run the passes, compare with PyTorch (rtol 1e-5); return the
    prune-channels report (JSON) and the (out, in) channels of every conv after it."""
    net = net.eval()
    imported = frontend.load(to_onnx(net, x) if route == "onnx" else net, None,
                             None if route == "onnx" else (x,))
    mod, records = run_passes(imported.mod, PASSES)
    out = run_module(mod, [x.numpy()], get_target("x86"))[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert max_rel_err(out, ref) <= RTOL
    return records[-1].report.to_json(), conv_channels(mod["main"])


def ln_structured(layers: list[nn.Module], amount: float, dim: int) -> None:
    for m in layers:
        prune.ln_structured(m, "weight", amount=amount, n=2, dim=dim)


# ----------------------------------------------------------------------------- a VGG chain


def vgg_live(ws: list[np.ndarray]) -> list[tuple[int, int]]:
    """vgg_ish: c0 → c1 → pool → c2 → pool → flatten (4×4) → fc1 → fc2; every conv pads 1."""
    c0, c1, c2, fc1 = ws[:4]

    def step(k):
        k = dict(k)
        k[2] = ~zero_filter(c2, k[1]) & read(fc1, np.ones(fc1.shape[0], bool), 16)
        k[1] = ~zero_filter(c1, k[0]) & read(c2, k[2])
        k[0] = ~zero_filter(c0) & read(c1, k[1])
        return k

    k = fixpoint(step, {i: np.ones(w.shape[0], bool) for i, w in enumerate((c0, c1, c2))})
    n = [int(k[i].sum()) for i in range(3)]
    return [(n[0], 3), (n[1], n[0]), (n[2], n[1])]


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


def resnet_live(ws: list[np.ndarray]) -> list[tuple[int, int]]:
    """resnet_ish: stem s → block 1 (a, b; + the stream) → strided t → block 2 (a, b) → mean → fc. A stream
    channel is constant only when the filters of both its producers (s and b₁, or t and b₂) are zero."""
    s, a1, b1, t, a2, b2, fc = ws
    every = np.ones(fc.shape[0], bool)

    def step(k):
        k = dict(k)
        k["S2"] = ~(zero_filter(t, k["S1"]) & zero_filter(b2, k["I2"])) & (read(a2, k["I2"]) | read(fc, every))
        k["I2"] = ~zero_filter(a2, k["S2"]) & read(b2, k["S2"])
        k["S1"] = ~(zero_filter(s) & zero_filter(b1, k["I1"])) & (read(a1, k["I1"]) | read(t, k["S2"]))
        k["I1"] = ~zero_filter(a1, k["S1"]) & read(b1, k["S1"])
        return k

    k = fixpoint(step, {"S1": np.ones(8, bool), "I1": np.ones(8, bool), "S2": np.ones(16, bool),
                        "I2": np.ones(16, bool)})
    n = {key: int(v.sum()) for key, v in k.items()}
    return [(n["S1"], 3), (n["I1"], n["S1"]), (n["S1"], n["I1"]), (n["S2"], n["S1"]), (n["I2"], n["S2"]),
            (n["S2"], n["I2"])]


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
    out = run_module(mod, [x.numpy()], get_target("x86"))[0]
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


def bn_affine(block: nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) with BN(y) = s·y + t, from the BatchNorm's statistics (conv_bn's second module)."""
    bn = block[1]
    s = bn.weight.detach().numpy().astype(np.float64) / np.sqrt(bn.running_var.numpy().astype(np.float64) + bn.eps)
    return s, bn.bias.detach().numpy() - bn.running_mean.numpy() * s


def mobile_live(net: MobileBlock) -> list[tuple[int, int]]:
    """stem → expand (1×1) → depthwise 3×3 (pads 1) → project (1×1) → ReLU → mean → fc. A depthwise channel
    and the expand channel feeding it are one class. It is dead when the projection's kept rows do not read it; it is
    constant when the expand filter is zero on the kept stem channels and either the depthwise filter is zero or
    the expand channel's value is 0 (ReLU of its BatchNorm shift plus the removed constant stem channels it reads):
    a constant v ≠ 0 through the zero-padding depthwise conv is a map, not a constant."""
    stem, expand, dw, project = (m[0].weight.detach().numpy() for m in (net.stem, net.expand, net.dw, net.project))
    fc = net.fc.weight.detach().numpy()
    t_stem, (s_exp, t_exp) = bn_affine(net.stem)[1], bn_affine(net.expand)
    v_stem = np.where(zero_filter(stem), np.maximum(t_stem, 0), 0)  # a zero stem filter's channel value

    def step(k):
        k = dict(k)
        k["b"] = ~zero_filter(project, k["m"]) & read(fc, np.ones(fc.shape[0], bool))
        v_exp = np.maximum(s_exp * (expand[:, ~k["a"], 0, 0] @ v_stem[~k["a"]]) + t_exp, 0)
        constant = zero_filter(expand, k["a"]) & (zero_filter(dw) | (v_exp == 0))
        k["m"] = read(project, k["b"]) & ~constant
        k["a"] = ~zero_filter(stem) & read(expand, k["m"])
        return k

    k = fixpoint(step, {"a": np.ones(8, bool), "m": np.ones(16, bool), "b": np.ones(8, bool)})
    na, nm, nb = (int(k[key].sum()) for key in "amb")
    return [(na, 3), (nm, na), (nm, 1), (nb, nm)]


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
    out = run_module(mod, [x.numpy()], get_target("x86"))[0]
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
    p = ~zero_filter(ws["post"]) & read(ws["fc"], np.ones(10, bool))
    c = ~np.concatenate([zero_filter(ws["a"]), zero_filter(ws["b"])]) & read(ws["post"], p)
    s = ~zero_filter(ws["stem"]) & (read(ws["a"], c[:6]) | read(ws["b"], c[6:]))
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
        [read(a.weight.detach().numpy(), np.ones(6, bool)), read(b.weight.detach().numpy(), np.ones(6, bool))])
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
