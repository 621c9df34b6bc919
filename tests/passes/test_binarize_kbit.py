"""binarize on k-bit QONNX ``Quant`` activations, built with onnx.helper per the QONNX spec
(docs/qonnx-custom-ops/intquant_v1.md, bipolarquant_v1.md of fastmachinelearning/qonnx): inputs
x, scale, zeropt, bitwidth; attributes signed, narrow, rounding_mode; domain qonnx.custom_op.general.

Reference: onnxruntime cannot run QONNX ops, so it runs the same graph with every Quant /
BipolarQuant replaced by its float formula in plain ONNX ops (frontend/qonnx.py's lowering, itself
checked against the spec's numpy implementation in tests/frontend/test_qonnx_quant.py). Tolerance:
none with power-of-two scales (every float product exact); ``RTOL_EPILOGUE`` otherwise (``fl(α·s·d)``
versus the float conv's rounded partial sums)."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import reforge
from tests.helpers import RTOL_EPILOGUE, first_output, float_reference, max_rel_err, pass_record, seed_of

Q = "qonnx.custom_op.general"


class Net:
    """An ONNX graph under construction: nodes, initializers, one input ``x``."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.nodes, self.inits, self.n = rng, [], [], 0

    def const(self, value) -> str:
        name = f"c{self.n}"
        self.n += 1
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attrs) -> str:
        out = f"{op_type.lower()}{self.n}"
        self.n += 1
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def quant(self, x: str, bits: int, scale, zeropt=0.0, signed: int = 0, mode: str = "ROUND", narrow: int = 0) -> str:
        return self.op("Quant", [x, self.const(scale), self.const(zeropt), self.const(bits)], Q,
                       signed=signed, narrow=narrow, rounding_mode=mode)

    def clamp(self, x: str, lo: float, hi: float) -> str:
        """QONNX's clamp as frontend/qonnx.py lowers it: where(v > hi, hi, v), then where(v < lo, lo, ·)."""
        hi_c, lo_c = self.const(hi), self.const(lo)
        v = self.op("Where", [self.op("Greater", [x, hi_c]), hi_c, x])
        return self.op("Where", [self.op("Less", [v, lo_c]), lo_c, v])

    def pm1_weight(self, shape, bipolar_scale: float | None) -> str:
        """±1 weights: BipolarQuant of a float initializer (Brevitas' export), or stored ±1."""
        w = self.rng.standard_normal(shape).astype(np.float32)
        if bipolar_scale is None:
            return self.const(np.where(w >= 0, 1.0, -1.0))
        return self.op("BipolarQuant", [self.const(w), self.const(bipolar_scale)], Q)

    def model(self, out: str, shape) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(Q, 1)])
        model.ir_version = 8
        return model


def kbit_conv(bits, cin, cout, k, stride, pad, act_scale, w_scale, mode="ROUND", seed=0, signed=0, narrow=0):
    """Quant (unsigned: of relu(x); signed: of x) -> conv with ±1 weights."""
    net = Net(np.random.default_rng(seed))
    q = net.quant(net.op("Relu", ["x"]) if not signed else "x", bits, act_scale, mode=mode, signed=signed,
                  narrow=narrow)
    y = net.op("Conv", [q, net.pm1_weight((cout, cin, k, k), w_scale)], strides=[stride] * 2, pads=[pad] * 4)
    return net.model(y, [1, cin, 9, 10])


CONV_CASES = [  # bits, cin, cout, kernel, stride, pad, activation scale, BipolarQuant scale (None: ±1), signed, narrow
    (2, 37, 16, 3, 1, 1, 0.25, None, 0, 0),
    (2, 70, 24, 3, 2, 0, 0.5, 1.0, 0, 0),
    (3, 100, 8, 1, 1, 0, 0.125, 0.5, 0, 0),
    (3, 20, 12, 3, 2, 1, 1.0, 0.25, 0, 0),
    (4, 37, 16, 3, 1, 1, 0.25, None, 1, 0),  # signed: q in [-8, 7], two's complement planes
    (2, 70, 24, 3, 2, 0, 0.5, 1.0, 1, 0),  # [-2, 1]
    (3, 100, 8, 1, 1, 0, 0.125, 0.5, 1, 1),  # narrow: [-3, 3]
    (8, 20, 12, 3, 2, 1, 0.03125, 0.25, 1, 0),  # [-128, 127]
]


@pytest.mark.parametrize("bits, cin, cout, k, stride, pad, act_scale, w_scale, signed, narrow", CONV_CASES)
def test_kbit_quant_conv_becomes_bitserial(bits, cin, cout, k, stride, pad, act_scale, w_scale, signed, narrow):
    """Bit-exact against onnxruntime (power-of-two scales); the signed inputs reach both ends of their range."""
    model = kbit_conv(bits, cin, cout, k, stride, pad, act_scale, w_scale, seed=cin, signed=signed, narrow=narrow)
    x = np.random.default_rng(seed_of(f"kbit{cin}")).standard_normal((1, cin, 9, 10)).astype(np.float32)
    if signed:
        x *= 2 ** (bits - 1) * act_scale  # q = round(x / scale) spans [-2^(k-1), 2^(k-1) - 1] and is clamped
    art = reforge.compile(model, opt_level=2)
    rec = pass_record(art, "binarize")
    assert rec["blocks"]["rewritten"] == 1 and rec["blocks"]["refused"] == {}, rec["blocks"]
    assert rec["rewrites"] == {f"conv -> bitserial_conv2d ({bits}-bit{' signed' if signed else ''})": 1}
    assert "nn.conv2d" not in rec["after"]["ops"]
    np.testing.assert_array_equal(first_output(art, x), float_reference(model, x))


@pytest.mark.parametrize("mode", ["FLOOR", "HALF_UP"])
def test_kbit_quant_rounding_modes_and_any_scale(mode):
    """Rounding modes spelled with sign·floor|ceil are recognized too; a scale that is no power of
    two is exact in the integer part, the float epilogue to float rounding."""
    model = kbit_conv(2, 16, 16, 3, 1, 1, 0.3, 0.7, mode=mode, seed=1)
    x = np.random.default_rng(seed_of(mode)).standard_normal((1, 16, 9, 10)).astype(np.float32)
    art = reforge.compile(model, opt_level=2)
    assert pass_record(art, "binarize")["blocks"]["rewritten"] == 1
    assert max_rel_err(first_output(art, x), float_reference(model, x)) <= RTOL_EPILOGUE


@pytest.mark.parametrize("signed", [0, 1])
def test_kbit_quant_dense_and_threshold_chain(signed):
    """k-bit conv -> BatchNorm -> BipolarQuant -> binary conv -> flatten -> 2-bit Quant -> dense: the
    BatchNorm + sign after the k-bit conv becomes its integer threshold (dot products in
    [-(2^k - 1)·taps, (2^k - 1)·taps], signed [-2^(k-1)·taps, 2^(k-1)·taps]); the dense runs on 2 bit planes."""
    rng = np.random.default_rng(7 + signed)
    net = Net(rng)
    relu = (lambda v: v) if signed else (lambda v: net.op("Relu", [v]))
    q = net.quant(relu("x"), 2, 0.5, signed=signed)
    y = net.op("Conv", [q, net.pm1_weight((64, 20, 3, 3), 1.0)], pads=[1] * 4)
    bn = [net.const(rng.uniform(0.5, 1.5, 64)), net.const(rng.uniform(-1, 1, 64)),
          net.const(rng.uniform(-20, 20, 64)), net.const(rng.uniform(1, 30, 64))]
    y = net.op("BatchNormalization", [y, *bn])
    y = net.op("BipolarQuant", [y, net.const(1.0)], Q)
    y = net.op("Conv", [y, net.pm1_weight((8, 64, 3, 3), None)], pads=[1] * 4)
    y = net.op("Flatten", [net.quant(relu(y), 2, 4.0, signed=signed)])
    y = net.op("MatMul", [y, net.pm1_weight((8 * 6 * 6, 10), 0.5)])
    model = net.model(y, [1, 20, 6, 6])
    x = rng.standard_normal((1, 20, 6, 6)).astype(np.float32)
    art = reforge.compile(model, opt_level=2)
    rec = pass_record(art, "binarize")
    assert rec["blocks"]["rewritten"] == 3 and rec["thresholds"] == 1, rec
    assert rec["rewrites"][f"dense -> bitserial_dense (2-bit{' signed' if signed else ''})"] == 1
    np.testing.assert_array_equal(first_output(art, x), float_reference(model, x))


def off_table_rounding(net: Net, x: str) -> str:
    """``sign(c)·floor(|c| − 0.5)``, ``c = clamp(x, 0, 3)``: no QONNX rounding mode (it maps c in
    (0, 0.5) to −1, outside [0, 3]), so no k-bit input."""
    c = net.clamp(x, 0, 3)
    return net.op("Mul", [net.op("Sign", [c]), net.op("Floor", [net.op("Sub", [net.op("Abs", [c]), net.const(0.5)])])])


def refused_model(kind: str) -> onnx.ModelProto:
    net = Net(np.random.default_rng(3))
    x = net.op("Relu", ["x"])
    q = {"per-channel": lambda: net.quant(x, 2, np.linspace(0.25, 1, 16).reshape(1, 16, 1, 1)),
         "odd-range": lambda: net.op("Round", [net.clamp(x, -3, 5)]),
         "zero-point": lambda: net.quant(x, 3, 0.5, zeropt=2.0),
         "wide": lambda: net.quant(x, 10, 0.5),
         "off-table rounding": lambda: off_table_rounding(net, x)}[kind]()
    y = net.op("Conv", [q, net.pm1_weight((8, 16, 3, 3), 1.0)], pads=[1] * 4)
    return net.model(y, [1, 16, 6, 6])


@pytest.mark.parametrize("kind, reason", [("per-channel", "per-channel"), ("odd-range", "[-3, 5] is neither"),
                                          ("zero-point", "zero point"), ("wide", "10 > 8 bits"),
                                          ("off-table rounding", "not a ±1, ternary or k-bit activation")])
def test_unsupported_kbit_inputs_stay_float_with_the_reason(kind, reason):
    model = refused_model(kind)
    x = np.random.default_rng(seed_of(kind)).standard_normal((1, 16, 6, 6)).astype(np.float32)
    art = reforge.compile(model, opt_level=2)
    rec = pass_record(art, "binarize")
    assert rec["blocks"]["rewritten"] == 0 and rec["after"]["ops"]["nn.conv2d"] == 1
    assert any(reason in r for r in rec["blocks"]["refused"]), rec["blocks"]
    assert max_rel_err(first_output(art, x), float_reference(model, x)) <= 1e-5
