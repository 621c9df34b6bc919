"""QONNX quantizers lowered to standard ONNX before TVM's importer sees them.

Domains ``qonnx.custom_op.general`` and the older ``finn.custom_op.general``, as Brevitas'
``export_qonnx`` writes them; the semantics are QONNX's reference implementation
(``docs/qonnx-custom-ops/bipolarquant_v1.md``, ``intquant_v1.md`` of fastmachinelearning/qonnx):

- ``BipolarQuant(x, scale) = where(x >= 0, 1, -1) · scale``: exactly the ``where`` spelling the
  binarize pass recognizes (0 -> +1). On a weight initializer the chain is constant and folds to
  ±scale; on an activation a scalar scale folds into the next conv / dense (fold-batchnorm).
- ``Quant`` / ``IntQuant(x, scale, zeropt, bitwidth)`` with attributes ``signed`` (default 1),
  ``narrow`` (0), ``rounding_mode`` (``ROUND``):
  ``(rnd(clip(x / scale + zeropt, lo, hi)) - zeropt) · scale`` (the clamp written as the reference
  does, ``where(v > hi, hi, v)`` then ``where(v < lo, lo, v)``) with
  ``[lo, hi] = [0, 2^k - 1]`` unsigned (``2^k - 2`` narrow), ``[-2^(k-1), 2^(k-1) - 1]`` signed
  (``-2^(k-1) + 1`` narrow). The reference clips before rounding; with integer bounds and a monotone
  rounding that fixes integers this equals ``clip(rnd(.))``. Rounding modes: ROUND (half to even,
  ONNX Round), CEIL, FLOOR, UP (away from 0), DOWN / ROUND_TO_ZERO (toward 0), HALF_UP, HALF_DOWN,
  written with ``s = sign(v)``, ``a = |v|`` as ``s·ceil(a)``, ``s·floor(a)``, ``s·floor(a + 0.5)``,
  ``s·ceil(a - 0.5)``. ``bitwidth`` must be a constant positive integer (an initializer or Constant):
  anything else is an import error naming the node. Every other setting (per-channel scale or
  zero-point, any k) is lowered as written; whether the binarize pass runs a layer bit-serially is
  its own decision (README, Bit-serial operators).

Not lowered (the import still stops with "unsupported ONNX op"): ``FloatQuant``, ``Trunc``, FINN's
``MultiThreshold`` / ``XnorPopcountMatMul``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from reforge.errors import ReforgeError

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")
INT_QUANT = ("Quant", "IntQuant")
# each rounding mode as the lowering spells it, the one table of these spellings (binarize reads them back,
# passes/binary_activations.py): (op, None) is op(v); (op, offset) is sign(v)·op(|v| + offset)
ROUNDING = {"ROUND": ("Round", None), "CEIL": ("Ceil", None), "FLOOR": ("Floor", None), "UP": ("Ceil", 0.0),
            "DOWN": ("Floor", 0.0), "ROUND_TO_ZERO": ("Floor", 0.0), "HALF_UP": ("Floor", 0.5),
            "HALF_DOWN": ("Ceil", -0.5)}


def int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """``[lo, hi]`` of a k-bit integer (QONNX ``min_int`` / ``max_int``)."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1 - int(narrow)


class _Emitter:
    """Appends standard ONNX nodes (and scalar constants) named under one QONNX node's name."""

    def __init__(self, proto: onnx.ModelProto, prefix: str):
        self.proto, self.prefix, self.nodes, self.n = proto, prefix, [], 0

    def const(self, value: float) -> str:
        name = f"{self.prefix}/c{self.n}"
        self.n += 1
        self.proto.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None) -> str:
        out = output or f"{self.prefix}/{op_type.lower()}{self.n}"
        self.n += 1
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out))
        return out


def _bipolar(e: _Emitter, node: onnx.NodeProto) -> None:
    x, scale = node.input
    ge = e.op("GreaterOrEqual", [x, e.const(0.0)])
    pm1 = e.op("Where", [ge, e.const(1.0), e.const(-1.0)])
    e.op("Mul", [pm1, scale], node.output[0])


def _round(e: _Emitter, v: str, mode: str) -> str:
    op, offset = ROUNDING[mode]
    if offset is None:
        return e.op(op, [v])
    sign, mag = e.op("Sign", [v]), e.op("Abs", [v])
    if offset:
        mag = e.op("Add" if offset > 0 else "Sub", [mag, e.const(abs(offset))])
    return e.op("Mul", [sign, e.op(op, [mag])])


def _bitwidth(proto: onnx.ModelProto, node: onnx.NodeProto) -> int:
    name = node.input[3] if len(node.input) > 3 else ""
    value = next((numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == name), None)
    if value is None:
        value = next((numpy_helper.to_array(a.t) for n in proto.graph.node if n.op_type == "Constant"
                      and list(n.output) == [name] for a in n.attribute if a.name == "value"), None)
    if value is None or value.size != 1 or not float(value.reshape(-1)[0]).is_integer() or value.reshape(-1)[0] < 1:
        raise ReforgeError(f"QONNX {node.op_type} at node '{node.name}': the bitwidth must be a constant positive "
                           f"integer (an initializer), got {'a computed tensor' if value is None else value}")
    return int(value.reshape(-1)[0])


def _int_quant(proto: onnx.ModelProto, e: _Emitter, node: onnx.NodeProto) -> None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs.get("rounding_mode", b"ROUND")
    mode = (mode.decode() if isinstance(mode, bytes) else str(mode)).upper()
    if mode not in ROUNDING:
        raise ReforgeError(f"QONNX {node.op_type} at node '{node.name}': unknown rounding_mode '{mode}'")
    lo, hi = int_range(_bitwidth(proto, node), bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0)))
    x, scale, zeropt = node.input[:3]
    v = e.op("Add", [e.op("Div", [x, scale]), zeropt])
    lo_c, hi_c = e.const(lo), e.const(hi)
    v = e.op("Where", [e.op("Greater", [v, hi_c]), hi_c, v])  # the reference's clamp, NaN kept
    v = e.op("Where", [e.op("Less", [v, lo_c]), lo_c, v])
    q = _round(e, v, mode)
    e.op("Mul", [e.op("Sub", [q, zeropt]), scale], node.output[0])


def lower_qonnx(proto: onnx.ModelProto) -> int:
    """Replace every BipolarQuant / Quant / IntQuant node of ``proto`` (in place) by standard ONNX;
    returns how many."""
    nodes, count = [], 0
    for node in proto.graph.node:
        kind = node.op_type if node.domain in QONNX_DOMAINS else None
        if kind == "BipolarQuant" and len(node.input) == 2:
            e = _Emitter(proto, f"{node.name}/bipolar")
            _bipolar(e, node)
        elif kind in INT_QUANT and len(node.input) == 4:
            e = _Emitter(proto, f"{node.name}/quant")
            _int_quant(proto, e, node)
        else:
            nodes.append(node)
            continue
        count += 1
        nodes += e.nodes
    if count:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        if not any(n.domain in QONNX_DOMAINS for n in proto.graph.node):
            kept = [o for o in proto.opset_import if o.domain not in QONNX_DOMAINS]
            del proto.opset_import[:]
            proto.opset_import.extend(kept)
    return count
