"""binarize: binarized conv / dense layers to bit-serial operators, through reforge.compile at -O2.

Models are small PyTorch nets in the spellings exporters produce (torch.sign, torch.where, the
straight-through detach trick, XNOR-Net scales, BatchNorm + sign between binary convs), exported to
ONNX (torch.onnx.export, opset 17, dynamo=False) and through torch.export.

References: onnxruntime on the exported ONNX model (graph optimizations off), and PyTorch for
torch.export. Tolerance: none (``assert_array_equal``) where the output is an integer dot product or
an integer-valued dense after thresholds; ``RTOL_EPILOGUE`` where a float scale epilogue follows the
binary layer (``α·d`` in float32 versus the float conv's rounded partial sums).
"""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reforge
from tests.helpers import (RTOL_EPILOGUE, BinConv, BinLinear, Chain, first_output, max_rel_err, onnxruntime,
                           pass_record, randomize_threshold_bn, seed_of, to_onnx)


def compile_both(module: nn.Module, x: torch.Tensor, exporter: str, verify: bool = False):
    """(artifact, reference output) for the ONNX export (onnxruntime) or torch.export (PyTorch)."""
    if exporter == "onnx":
        model = to_onnx(module, x, constant_folding=True)
        return reforge.compile(model, opt_level=2, verify=verify), onnxruntime(model, x.numpy())
    with torch.no_grad():
        ref = module(x).numpy()
    return reforge.compile(module, opt_level=2, example_inputs=(x,), verify=verify), ref


CASES = [  # id, module factory, input shape, bit-exact
    ("sign", lambda: BinConv(8, 16), (1, 8, 12, 12), True),
    ("where-stride2", lambda: BinConv(8, 16, stride=2, spelling="where"), (1, 8, 13, 13), True),
    ("sign-ste-unpadded", lambda: BinConv(70, 16, padding=0, spelling="sign-ste"), (2, 70, 9, 9), True),
    ("where-ste", lambda: BinConv(16, 8, spelling="where-ste"), (1, 16, 10, 10), True),
    ("xnor-scale", lambda: BinConv(16, 32, scale=True), (1, 16, 8, 8), False),
    ("presigned-weights", lambda: BinConv(16, 32, presigned=True), (1, 16, 8, 8), True),
    ("dense", lambda: nn.Sequential(BinLinear(200, 64), nn.BatchNorm1d(64), BinLinear(64, 10)), (1, 200), True),
]


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("name,make,shape,exact", CASES, ids=[c[0] for c in CASES])
def test_binary_layers_become_bitserial(name, make, shape, exact, exporter):
    torch.manual_seed(seed_of(name))
    module = randomize_threshold_bn(make())
    x = torch.randn(shape)
    art, ref = compile_both(module, x, exporter)
    rec = pass_record(art, "binarize")
    ops = rec["after"]["ops"]
    assert "nn.conv2d" not in ops and "matmul" not in ops, ops
    assert ops["call_tir"] >= 2 and rec["blocks"]["refused"] == {}
    assert rec["blocks"]["rewritten"] == (2 if name == "dense" else 1)
    out = first_output(art, x.numpy())
    if exact:
        np.testing.assert_array_equal(out, ref)
    else:
        assert max_rel_err(out, ref) <= RTOL_EPILOGUE


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("spelling", ["sign", "where-ste"])
def test_batchnorm_sign_between_binary_convs_becomes_a_threshold(spelling, exporter):
    torch.manual_seed(seed_of("chain" + spelling))
    module = randomize_threshold_bn(Chain(spelling))
    x = torch.randn(1, 8, 16, 16)
    verify = exporter == "onnx" and spelling == "sign"  # every pass checked on random inputs too (slow: once)
    art, ref = compile_both(module, x, exporter, verify=verify)
    rec = pass_record(art, "binarize")
    assert not verify or (rec["verify"]["ok"] and rec["verify"]["rel"] < 1e-6)
    assert rec["blocks"]["rewritten"] == 4 and rec["thresholds"] == 3
    assert rec["packed_pools"] == 1 and rec["packed_flattens"] == 1
    assert "nn.conv2d" not in rec["after"]["ops"] and "matmul" not in rec["after"]["ops"]
    np.testing.assert_array_equal(first_output(art, x.numpy()), ref)  # integer-valued: dense of ±1 + bias


@pytest.mark.parametrize("exporter", ["onnx", "torch.export"])
@pytest.mark.parametrize("spelling", ["sign", "where"])
def test_batchnorm_sign_between_binary_denses_becomes_a_threshold(spelling, exporter):
    """dense -> BN -> (sign) dense -> BN -> (sign) dense: each BN + sign becomes the previous dense's
    integer threshold, its output the packed input of the next dense (70 and 66 features: partial words)."""
    torch.manual_seed(seed_of("dense-chain" + spelling))
    module = randomize_threshold_bn(nn.Sequential(BinLinear(200, 70, spelling), nn.BatchNorm1d(70),
                                                  BinLinear(70, 66, spelling), nn.BatchNorm1d(66),
                                                  BinLinear(66, 10, spelling)))
    x = torch.randn(3, 200)
    art, ref = compile_both(module, x, exporter)
    rec = pass_record(art, "binarize")
    assert rec["blocks"]["rewritten"] == 3 and rec["thresholds"] == 2, rec
    assert "matmul" not in rec["after"]["ops"]
    np.testing.assert_array_equal(first_output(art, x.numpy()), ref)


ZERO_CASES = [  # id, module factory, input shape, expected rewrite
    ("sign", lambda: BinConv(8, 16), (1, 8, 12, 12), "conv -> bitserial_conv2d (sign, ternary)"),
    ("sign-ste-stride2", lambda: BinConv(70, 16, stride=2, spelling="sign-ste"), (1, 70, 9, 9),
     "conv -> bitserial_conv2d (sign-ste, ternary)"),
    ("where", lambda: BinConv(8, 16, spelling="where"), (1, 8, 12, 12), "conv -> bitserial_conv2d (where)"),
    ("dense-sign", lambda: BinLinear(200, 24), (2, 200), "dense -> bitserial_dense (sign, ternary)"),
]


@pytest.mark.parametrize("name,make,shape,rewrite", ZERO_CASES, ids=[c[0] for c in ZERO_CASES])
def test_exact_zeros_in_a_sign_input_are_exact(name, make, shape, rewrite):
    """ONNX Sign(0) = 0: a ``sign`` activation is packed ternary (planes x > 0, x != 0), so inputs with
    exact zeros give onnxruntime's result bit for bit; ``where(x >= 0, 1, -1)`` maps 0 to +1 and
    stays on the binary kernel."""
    torch.manual_seed(seed_of("zeros" + name))
    module = make()
    x = torch.randn(shape)
    x[torch.rand_like(x) < 0.3] = 0.0
    model = to_onnx(module, x, constant_folding=True)
    art = reforge.compile(model, opt_level=2)
    assert pass_record(art, "binarize")["rewrites"] == {rewrite: 1}
    np.testing.assert_array_equal(first_output(art, x.numpy()), onnxruntime(model, x.numpy()))


class FloatThenBinary(nn.Module):
    """A float conv + ReLU (exact zeros) read by a binary conv through ``sign``: packed ternary."""

    def __init__(self):
        super().__init__()
        self.conv, self.binary = nn.Conv2d(3, 64, 3, padding=1), BinConv(64, 16)

    def forward(self, x):
        return self.binary(torch.relu(self.conv(x)))


def test_a_pack_reads_the_blocked_float_conv():
    """The float conv runs in NCHW8c; the ternary pack of its output reads that layout directly (no
    layout_transform back to NCHW is left but the input's), bit for bit onnxruntime's result."""
    torch.manual_seed(seed_of("pack-blocked"))
    x, module = torch.randn(1, 3, 12, 12), FloatThenBinary().eval()
    with torch.no_grad():
        assert (torch.relu(module.conv(x)) == 0).any()  # the ternary planes see exact zeros
    model = to_onnx(module, x, constant_folding=True)
    art = reforge.compile(model, opt_level=2)
    assert pass_record(art, "binarize")["rewrites"] == {"conv -> bitserial_conv2d (sign, ternary)": 1}
    assert art.manifest["build"]["layout_transforms"] == 1, art.manifest["build"]  # NCHW -> NCHW3c of the image
    np.testing.assert_array_equal(first_output(art, x.numpy()), onnxruntime(model, x.numpy()))


class ReluConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 8, 3, 3))

    def forward(self, x):
        return F.conv2d(torch.relu(x), torch.sign(self.weight), padding=1)


@pytest.mark.parametrize("name,make,reason", [
    ("zero-weight", lambda: BinConv(8, 16), "exact 0"),
    ("relu-activation", ReluConv, "not a ±1, ternary or k-bit activation"),
])
def test_layers_left_in_float_are_reported(name, make, reason):
    torch.manual_seed(seed_of(name))
    module = make()
    if name == "zero-weight":
        module.weight.data[3, 2, 1, 1] = 0.0
    x = torch.randn(1, 8, 10, 10)
    model = to_onnx(module, x, constant_folding=True)
    art = reforge.compile(model, opt_level=2)
    rec = pass_record(art, "binarize")
    assert rec["blocks"]["rewritten"] == 0 and rec["after"]["ops"]["nn.conv2d"] == 1
    assert any(reason in r for r in rec["blocks"]["refused"]), rec["blocks"]
    assert max_rel_err(first_output(art, x.numpy()), onnxruntime(model, x.numpy())) <= 1e-5


def qonnx_conv(w: np.ndarray, act_scale: float, w_scale: float) -> onnx.ModelProto:
    """Brevitas-style QONNX: BipolarQuant on the input and on the weight initializer, then Conv."""
    from onnx import TensorProto, helper, numpy_helper

    q = "qonnx.custom_op.general"
    nodes = [helper.make_node("BipolarQuant", ["x", "xs"], ["xq"], name="qx", domain=q),
             helper.make_node("BipolarQuant", ["w", "ws"], ["wq"], name="qw", domain=q),
             helper.make_node("Conv", ["xq", "wq"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(act_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(w_scale, np.float32), "ws")]
    graph = helper.make_graph(nodes, "qonnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(q, 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("act_scale,w_scale", [(1.0, 1.0), (1.0, 0.25), (0.5, 0.75)])
def test_qonnx_bipolar_quant_is_binarized(act_scale, w_scale):
    """QONNX BipolarQuant = where(x >= 0, 1, -1)·scale (its reference implementation), exact zeros
    included. Reference: the same arithmetic in PyTorch; powers of two scale exactly, 0.75·0.5 too."""
    rng = np.random.default_rng(seed_of(f"qonnx{act_scale}{w_scale}"))
    w = rng.standard_normal((32, 16, 3, 3)).astype("float32")
    x = rng.standard_normal((1, 16, 8, 8)).astype("float32")
    x[0, :, 0, 0] = 0.0
    art = reforge.compile(qonnx_conv(w, act_scale, w_scale), opt_level=2)
    rec = pass_record(art, "binarize")
    assert rec["blocks"]["rewritten"] == 1 and "nn.conv2d" not in rec["after"]["ops"]
    pm1 = lambda a: torch.where(torch.from_numpy(a) >= 0, 1.0, -1.0)  # noqa: E731
    ref = F.conv2d(pm1(x) * act_scale, pm1(w) * w_scale, padding=1).numpy()
    np.testing.assert_array_equal(first_output(art, x), ref)


class TieChain(nn.Module):
    """conv -> + 2 -> sign -> conv: the dot products are even, so ``d + 2`` is exactly 0 at d = -2."""

    def __init__(self, spelling: str):
        super().__init__()
        self.c1, self.c2 = BinConv(8, 16), BinConv(16, 8, spelling=spelling)

    def forward(self, x):
        return self.c2(self.c1(x) + 2.0)


def test_threshold_ties_stay_exact():
    """``sign(d + 2)`` is exactly 0 at d = -2: no threshold (a ±1 bit cannot hold the 0), the float
    epilogue is packed ternary instead and the report says why; ``where(d + 2 >= 0, 1, -1)`` maps that
    0 to +1 and does become a threshold. Both equal PyTorch bit for bit."""
    torch.manual_seed(seed_of("ties"))
    module, plus_one = TieChain("sign").eval(), TieChain("where").eval()
    plus_one.load_state_dict(module.state_dict())
    x = torch.randn(1, 8, 10, 10)
    outs = []
    for net, thresholds in ((module, 0), (plus_one, 1)):
        art = reforge.compile(to_onnx(net, x, constant_folding=True), opt_level=2)
        rec = pass_record(art, "binarize")
        assert rec["thresholds"] == thresholds and rec["blocks"]["rewritten"] == 2, rec
        assert thresholds or any("exactly 0" in n for n in rec["notes"]), rec["notes"]
        outs.append(first_output(art, x.numpy()))
        with torch.no_grad():
            np.testing.assert_array_equal(outs[-1], net(x).numpy())
    assert not np.array_equal(*outs)  # Sign(0) = 0 happened somewhere


def test_float_layers_are_not_reported():
    """A float net (one conv with a Dirac kernel, which has constant-magnitude nonzeros, one 1x1 conv on
    one channel, one ordinary conv): nothing found, nothing refused."""
    class Float(nn.Module):
        def __init__(self):
            super().__init__()
            dirac = torch.zeros(4, 4, 3, 3)
            dirac[range(4), range(4), 1, 1] = 1.0
            self.dirac, self.one, self.conv = nn.Parameter(dirac), nn.Parameter(torch.randn(4, 1, 1, 1)), \
                nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            y = torch.sign(F.conv2d(torch.relu(x), self.dirac, padding=1))
            return self.conv(F.conv2d(y[:, :1], self.one)) + y

    x = torch.randn(1, 4, 6, 6)
    rec = pass_record(reforge.compile(to_onnx(Float().eval(), x, constant_folding=True), opt_level=2), "binarize")
    assert rec["blocks"] == {"found": 0, "rewritten": 0, "refused": {}} and rec["notes"] == []
