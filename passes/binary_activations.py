"""The inputs binarize packs: ±1, ternary and k-bit activations, read from their Relax spellings.

    sign(x)                                  torch.sign, ONNX Sign: {-1, 0, +1}
    where(x >= 0, 1, -1)                     torch.where; QONNX BipolarQuant (frontend/qonnx.py)
    x + (s - x),  s one of the above         straight-through estimator (detach trick)
    max_pool2d / reshape of such a tensor
    q·s, q = rnd(clamp(v, lo, hi))           QONNX Quant as frontend/qonnx.py lowers it: its clamp, its
                                             rounding modes (``qonnx.ROUNDING``, the one table of their
                                             spellings) and its k-bit ranges (``qonnx.int_range``)

:class:`ActivationReader` reads these through a function's bindings (``lookup``: var → bound value);
which of them a layer may pack as ±1 (no exact 0) is binarize's decision (passes/binarize.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import relax

from reforge.frontend.qonnx import ROUNDING, int_range

from .graph import const_value, is_const, op_name, tensor_shape

# the rounding spellings: (Relax operator, None) is op(v); (operator, offset) is sign(v)·op(|v| + offset)
_ROUNDINGS = {(f"relax.{op.lower()}", offset) for op, offset in ROUNDING.values()}
MAX_BITS = 8  # k-bit inputs packed up to this many bit planes


@dataclass
class Act:
    """A binary layer's input: ``x`` is packed as ±1 (bits ``x >= 0``), ternary (``x > 0``, ``x != 0``)
    or as the k-bit integers it holds (reshaped to ``shape`` first when that is set: a k-bit tensor
    flattened before a dense); ``scale`` is a scalar the layer's output is multiplied by."""

    x: relax.Expr
    spelling: str
    mode: str  # "pm1" | "ternary" | "kbit"
    bits: int = 1
    scale: float = 1.0
    signed: bool = False  # k-bit: the integers q are signed (two's complement planes)
    shape: tuple | None = None

    @property
    def max_abs(self) -> int:
        """The largest |value| the packed input holds."""
        if self.mode != "kbit":
            return 1
        return 2 ** (self.bits - 1) if self.signed else 2 ** self.bits - 1


def _scalar_is(expr, value: float) -> bool:
    c = const_value(expr)
    return c.size == 1 and float(c.reshape(-1)[0]) == value


class ActivationReader:
    """The activation spellings of one function, read through ``lookup`` (var → bound value, or None)."""

    def __init__(self, lookup: Callable):
        self.lookup = lookup

    def value(self, expr):
        """The value bound to ``expr``, through aliases; ``expr`` itself if it is not a bound var."""
        seen = 0
        while isinstance(expr, relax.Var) and seen < 64:
            bound = self.lookup(expr)
            if bound is None:
                return expr
            expr, seen = bound, seen + 1
        return expr

    def var(self, expr):
        """The last variable on an alias chain."""
        while isinstance(expr, relax.Var):
            bound = self.lookup(expr)
            if not isinstance(bound, relax.Var):
                return expr
            expr = bound
        return expr

    def sign_of(self, expr) -> tuple[relax.Expr, str] | None:
        """``(x, spelling)`` when ``expr`` is a ±1 activation computed from float ``x`` (bits ``x >= 0``):
        ``sign(x)``, ``where(x >= 0, 1, -1)``, or the straight-through estimator of either."""
        value = self.value(expr)
        name = op_name(value)
        if name == "relax.sign":
            return value.args[0], "sign"
        if name == "relax.where":
            cond, a, b = value.args
            if not (is_const(a) and is_const(b) and _scalar_is(a, 1.0) and _scalar_is(b, -1.0)):
                return None
            cond = self.value(cond)
            zero = cond.args[1] if op_name(cond) == "relax.greater_equal" else None
            if zero is None or not is_const(zero) or not _scalar_is(zero, 0.0):
                return None
            return cond.args[0], "where"
        # straight-through estimator: x + (s - x) with s = sign(x) / where(x >= 0, 1, -1)
        if name == "relax.add":
            for x, diff in (value.args, value.args[::-1]):
                d = self.value(diff)
                if op_name(d) == "relax.subtract" and d.args[1].same_as(x):
                    inner = self.sign_of(d.args[0])
                    if inner is not None and inner[0].same_as(x):
                        return x, inner[1] + "-ste"
        return None

    def is_pm1(self, expr, depth: int = 0) -> bool:
        """Whether ``expr`` holds ±1 values (a sign output, max pooling / reshape of one)."""
        if depth > 16:
            return False
        if self.sign_of(expr) is not None:
            return True
        value = self.value(expr)
        if op_name(value) in ("relax.nn.max_pool2d", "relax.reshape", "relax.flatten"):
            return self.is_pm1(value.args[0], depth + 1)
        return False

    def peel(self, x):
        """``z`` for ``sign(sign(... z))``: the same bits (``sign(z) >= 0`` iff ``z >= 0``, NaN
        included), so packing ``z`` leaves the float signs dead."""
        for _ in range(16):
            inner = self.sign_of(x)
            if inner is None:
                break
            x = inner[0]
        return x

    def kbit_of(self, expr) -> Act | str | None:
        """``expr = q·s`` (s a positive scalar constant, 1 when absent; a per-tensor scale may also have
        been folded into the next layer's weight) with ``q = rnd(clamp(v, lo, hi))`` a k-bit integer,
        unsigned (lo = 0, ``2^k > hi``) or signed (``[-2^(k-1)`` or, narrow, ``-2^(k-1) + 1, 2^(k-1) - 1]``),
        as QONNX ``Quant`` lowers (frontend/qonnx.py); a string says why such a Quant is not supported
        (zero point, k > MAX_BITS, per-channel scale, another range)."""
        value, scale = self.value(expr), None
        if op_name(value) in ("relax.reshape", "relax.flatten") and tensor_shape(expr) is not None:
            inner = self.kbit_of(value.args[0])  # flattened before a dense: reshape the integers instead
            if not isinstance(inner, Act):
                return inner
            return Act(inner.x, inner.spelling, "kbit", inner.bits, inner.scale, inner.signed, tensor_shape(expr))
        if op_name(value) == "relax.multiply" and any(is_const(a) for a in value.args):
            q, s = value.args if is_const(value.args[1]) else value.args[::-1]
            expr, value, scale = q, self.value(q), const_value(s)
        if op_name(value) == "relax.subtract" and self._rounded_clamp(self.value(value.args[0])) is not None:
            return "its k-bit input has a non-zero zero point"
        bounds = self._rounded_clamp(value)
        if bounds is None:
            return None
        if scale is not None and (scale.size != 1 or not float(scale.reshape(-1)[0]) > 0):
            return "its k-bit input has a per-channel (or non-positive) scale"
        lo, hi = int(bounds[0]), int(bounds[1])
        scale = 1.0 if scale is None else float(scale.reshape(-1)[0])
        if lo == 0:
            bits = max(2, hi.bit_length())
            if bits > MAX_BITS:
                return f"its k-bit input has {bits} > {MAX_BITS} bits"
            return Act(expr, f"{bits}-bit", "kbit", bits, scale)
        bits = (hi + 1).bit_length()
        if hi < 1 or (lo, hi) not in (int_range(bits, True, False), int_range(bits, True, True)):
            return f"its k-bit input's range [{lo}, {hi}] is neither unsigned nor a signed k-bit one"
        if bits > MAX_BITS:
            return f"its k-bit input has {bits} > {MAX_BITS} bits"
        return Act(expr, f"{bits}-bit signed", "kbit", bits, scale, signed=True)

    def _rounded_clamp(self, value) -> tuple[float, float] | None:
        """``(lo, hi)`` when ``value`` is one of QONNX's roundings (``_ROUNDINGS``: round, floor, ceil,
        or ``sign(c)·floor|ceil(|c| [± 0.5])``) of ``c = clamp(v, lo, hi)`` with integer bounds."""
        name = op_name(value)
        if (name, None) in _ROUNDINGS:
            return self._clamp(value.args[0])
        if name != "relax.multiply":
            return None
        sgn, mag = (self.value(a) for a in value.args)
        if op_name(sgn) != "relax.sign" or not any(op_name(mag) == op for op, off in _ROUNDINGS if off is not None):
            return None
        inner, offset = self.value(mag.args[0]), 0.0
        if op_name(inner) in ("relax.add", "relax.subtract") and is_const(inner.args[1]):
            c = const_value(inner.args[1])
            if c.size != 1:
                return None
            offset = float(c.reshape(-1)[0]) * (1.0 if op_name(inner) == "relax.add" else -1.0)
            inner = self.value(inner.args[0])
        if ((op_name(mag), offset) not in _ROUNDINGS or op_name(inner) != "relax.abs"
                or not self.var(inner.args[0]).same_as(self.var(sgn.args[0]))):
            return None
        return self._clamp(sgn.args[0])

    def _clamp(self, expr) -> tuple[float, float] | None:
        """``(lo, hi)`` for ``where(v < lo, lo, where(v > hi, hi, v))`` (either order; QONNX's clamp)."""
        lo = hi = None
        value = self.value(expr)
        for _ in range(2):
            if op_name(value) != "relax.where":
                break
            cond, bound, rest = (self.value(a) for a in value.args)
            if (op_name(cond) not in ("relax.less", "relax.greater") or not is_const(bound)
                    or not is_const(cond.args[1]) or not self.var(cond.args[0]).same_as(self.var(value.args[2]))):
                return None
            b = const_value(bound)
            if (b.size != 1 or not float(b.reshape(-1)[0]).is_integer()
                    or not np.array_equal(const_value(cond.args[1]).reshape(-1), b.reshape(-1))):
                return None
            if op_name(cond) == "relax.less":
                lo = float(b.reshape(-1)[0])
            else:
                hi = float(b.reshape(-1)[0])
            value = rest
        return None if lo is None or hi is None else (lo, hi)
