"""QONNX ``Quant`` / ``IntQuant`` lowered to standard ONNX (frontend/qonnx.py), bit for bit against the
QONNX reference implementation (docs/qonnx-custom-ops/intquant_v1.md of fastmachinelearning/qonnx:
``y = x / scale + zeropt``, clamp to ``[min_int, max_int]``, round, ``(y - zeropt)·scale``), written
here in numpy float32 with the rounding modes of the spec's table. Tolerance: none."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import reforge
from reforge.errors import ReforgeError

Q = "qonnx.custom_op.general"


def rnd(v: np.ndarray, mode: str) -> np.ndarray:
    s, a = np.sign(v), np.abs(v)
    return {"ROUND": np.round, "CEIL": np.ceil, "FLOOR": np.floor,
            "UP": lambda _: s * np.ceil(a), "DOWN": lambda _: s * np.floor(a),
            "HALF_UP": lambda _: s * np.floor(a + np.float32(0.5)),
            "HALF_DOWN": lambda _: s * np.ceil(a - np.float32(0.5))}[mode](v).astype(np.float32)


def quant_ref(x, scale, zeropt, bits, signed, narrow, mode):
    """The spec's sample implementation (min_int / max_int, clamp before rounding)."""
    lo = -(2 ** (bits - 1)) + int(narrow) if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1 - int(narrow)
    y = x / scale + zeropt
    y = np.where(y > hi, np.float32(hi), y)
    y = np.where(y < lo, np.float32(lo), y)
    return ((rnd(y, mode) - zeropt) * scale).astype(np.float32)


def quant_model(shape, scale, zeropt, bits, op="Quant", const_bits=True, **attrs):
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zeropt, "z")]
    nodes = []
    if const_bits:
        inits.append(numpy_helper.from_array(np.array(bits, np.float32), "b"))
    else:  # the bitwidth computed from the input's shape: not a constant before import
        nodes.append(helper.make_node("Shape", ["x"], ["shp"], name="shape", start=0, end=1))
        nodes.append(helper.make_node("Cast", ["shp"], ["b"], name="cast", to=TensorProto.FLOAT))
    nodes.append(helper.make_node(op, ["x", "s", "z", "b"], ["y"], name="act/quant", domain=Q, **attrs))
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(Q, 1)])
    model.ir_version = 8
    return model


def run(art, x):
    return list(art.run({"x": x}).values())[0]


def probe(shape, scale, rng):
    """Random values plus exact halves (k + 0.5)·scale and values beyond the clamp."""
    x = (rng.standard_normal(shape) * 6).astype(np.float32) * scale
    flat = x.reshape(-1)
    flat[: 16] = ((np.arange(16) - 8 + 0.5).astype(np.float32) * np.broadcast_to(scale, x.shape).reshape(-1)[:16])
    return x


@pytest.mark.parametrize("mode", ["ROUND", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN"])
@pytest.mark.parametrize("signed,narrow,bits", [(0, 0, 2), (1, 0, 4), (1, 1, 3), (0, 1, 8)])
def test_quant_lowering_matches_the_reference(mode, signed, narrow, bits):
    rng = np.random.default_rng(bits * 7 + signed * 3 + narrow + len(mode))
    scale, zeropt = np.array(0.37, np.float32), np.array(0.0, np.float32)
    x = probe((2, 3, 4, 5), scale, rng)
    model = quant_model(x.shape, scale, zeropt, bits, signed=signed, narrow=narrow, rounding_mode=mode)
    out = run(reforge.compile(model, opt_level=2), x)
    np.testing.assert_array_equal(out, quant_ref(x, scale, zeropt, bits, signed, narrow, mode))


@pytest.mark.parametrize("op", ["Quant", "IntQuant"])
def test_per_channel_scale_and_zero_point(op):
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.1, 1, (1, 3, 1, 1)).astype(np.float32)
    zeropt = np.array([1.0, 0.0, 3.0], np.float32).reshape(1, 3, 1, 1)
    x = probe((1, 3, 4, 4), scale, rng)
    model = quant_model(x.shape, scale, zeropt, 4, op=op, signed=0, narrow=0, rounding_mode="ROUND")
    out = run(reforge.compile(model, opt_level=2), x)
    np.testing.assert_array_equal(out, quant_ref(x, scale, zeropt, 4, 0, 0, "ROUND"))


def test_non_constant_bitwidth_names_the_node():
    model = quant_model((1, 3, 4, 4), np.array(0.5, np.float32), np.array(0.0, np.float32), 0, const_bits=False)
    with pytest.raises(ReforgeError, match=r"Quant at node 'act/quant': the bitwidth must be a constant"):
        reforge.compile(model, opt_level=0)
