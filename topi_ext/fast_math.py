"""Vectorizable float32 exp, sigmoid, tanh and erf for the CPU path, in place of the math library's calls.

LLVM lowers ``tirx.exp`` / ``tirx.erf`` / ``tirx.sigmoid`` / ``tirx.tanh`` of a vector to one scalar ``expf`` /
``erff`` / ``tanhf`` call per lane, so a fused conv epilogue with SiLU, a sigmoid gate or GELU runs scalar. Here
each call of a float32 function becomes arithmetic (plus integer shifts and a bit reinterpretation) that
vectorizes:

- ``exp(x)`` by range reduction: ``k = round(x / ln 2)`` (by adding 1.5 · 2^23, no rounding instruction or
  conversion), ``r = x - k ln 2`` (Cody-Waite, two constants), ``e^r`` by a degree-6 polynomial (minimax in
  relative error on [-ln 2 / 2, ln 2 / 2], Horner: six FMAs), scaled by ``2^k`` built from exponent bits
  as ``2^(k // 2) · 2^(k - k // 2)`` so that subnormal results (x down to -104) and overflow to inf (x from
  89 on) come out as IEEE arithmetic gives them; nan stays nan.
- ``sigmoid(x) = 1 / (1 + exp(-x))`` with one scaling 2^k (k up to 128, where it is inf): 0 for x below -88.37
  (where the sigmoid is under the smallest normal float), 1 for large positive x.
- ``tanh(x)``: Cephes' odd polynomial ``x + x^3 P(x^2)`` for |x| < 0.625, else ``±(1 - 2 / (1 + e^2|x|))`` with
  2|x| clamped to 20 (±1 in float32 from |x| = 10 on); nan stays nan.
- ``erf(x)``: the odd rational approximation p(x) / q(x) of degree 13 / 8 on [-4, 4] (Eigen's, also TVM's
  ``fast_erf``); |x| ≥ 4 gives ±1, as erf rounds to in float32; nan stays nan.

A division by a float32 constant becomes a multiplication by its reciprocal in a kernel that rounds no float. nan is told from its bits (an
integer compare): with ``tirx.isnan`` TVM's VectorizeLoop runs the whole loop scalar. The accuracy of each
against numpy / ``math.erf`` over the whole float range is in ``tests/topi_ext/test_fast_math.py``. Other dtypes
keep their calls.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx
from tvm_ffi.structural import structural_map, structural_visit

F32 = "float32"
LOG2E = 1.44269504088896341
LN2_HI = 0.693359375  # ln 2 = LN2_HI + LN2_LO, LN2_HI with few mantissa bits so k · LN2_HI is exact
LN2_LO = -2.12194440e-4
EXP_MIN = -104.0  # below it exp is under half the smallest subnormal: 0
EXP_MAX = 89.0  # above ln(FLT_MAX) = 88.72: the scaling overflows to inf
SIGMOID_EXP_MIN = -87.33  # e^-x for sigmoid: k = round(-x / ln 2) from -126 on, 2^k a normal float
EXP_POLY = (1.3843653723597527e-3, 8.37415549904108e-3, 4.166800156235695e-2, 1.6666431725025177e-1,
            4.999999403953552e-1, 1.0, 1.0)  # r^6 ... r^0, e^r within 2e-9 relative on [-ln 2 / 2, ln 2 / 2]
ROUND = 12582912.0  # 1.5 · 2^23: x + ROUND is x rounded to an integer, in its low mantissa bits (|x| < 2^22)
ROUND_BITS = 0x4B400000  # ROUND's bits
ERF_MAX = 4.0
ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
         -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)  # x^13 ... x^1, odd
ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
         -1.42647390514189e-02)  # x^8 ... x^0, even


def _f(value: float) -> tirx.FloatImm:
    return tirx.const(value, F32)


def _horner(x, coefficients):
    """Σ c_i x^(n - i) for coefficients c_0 .. c_n (highest power first)."""
    acc = _f(coefficients[0])
    for c in coefficients[1:]:
        acc = acc * x + _f(c)
    return acc


def _let(value, body, dtype: str = F32):
    """``body(v)`` with ``v`` bound to ``value`` once (the approximations read their argument several times)."""
    var = tirx.Var("v", dtype)
    return tirx.Let(var, value, body(var))


def _pow2(n):
    """2^n as float32 for an int32 n in [-126, 128] (128: inf): the exponent field n + 127."""
    return tirx.reinterpret(F32, tirx.shift_left(n + 127, 23))


def _times_pow2(y, n):
    """y · 2^n, 2^n one float (:func:`_pow2`)."""
    return y * _pow2(n)


def _magnitude_bits(v):
    """The bits of |v| for a float32 ``v``, as an int32: its sign bit cleared."""
    return tirx.bitwise_and(tirx.reinterpret("int32", v), tirx.const(0x7FFFFFFF, "int32"))


def _isnan(v):
    """Whether float32 ``v`` is nan, from its bits: exponent all ones, mantissa not zero. ``tirx.isnan`` makes
    TVM's vectorizer run the loop scalar, and ``v != v`` its simplifier folds to false."""
    return _magnitude_bits(v) > tirx.const(0x7F800000, "int32")


def _exp_clamped(xc, scale):
    """e^xc for ``xc`` clamped to a range: ``k = round(xc / ln 2)`` (adding ROUND rounds it into t's low mantissa
    bits: k as a float is t - ROUND, as an int32 t's bits less ROUND's), ``r = xc - k ln 2``, e^r by the
    polynomial scaled by ``scale(e^r, k)`` (times 2^k, for an int32 k)."""
    return _let(xc * _f(LOG2E) + _f(ROUND), lambda t: _let(t - _f(ROUND), lambda k: _let(
        xc - k * _f(LN2_HI) - k * _f(LN2_LO), lambda r: _let(
            tirx.reinterpret("int32", t) - tirx.const(ROUND_BITS, "int32"), dtype="int32",
            body=lambda ki: scale(_horner(r, EXP_POLY), ki)))))


def exp_f32(x):
    """e^x for a float32 expression, vectorizable (see the module docstring)."""
    def scale(y, ki):  # y · 2^(k // 2) first: y · 2^k rounds once, a subnormal result too
        return y * _pow2(tirx.shift_right(ki, 1)) * _pow2(ki - tirx.shift_right(ki, 1))

    return _let(x, lambda v: tirx.Select(
        _isnan(v), v, _exp_clamped(tirx.max(tirx.min(v, _f(EXP_MAX)), _f(EXP_MIN)), scale)))


def sigmoid_f32(x):
    """1 / (1 + e^-x), vectorizable: e^-x with -x clamped to [SIGMOID_EXP_MIN, EXP_MAX], scaled by one 2^k
    for k in [-126, 128]: below, e^-x under 2^-126 is nothing against 1; from k = 128 (-x > 88.37) 2^k is inf
    and the sigmoid 0, where it is under the smallest normal float."""
    def body(v):
        e = _exp_clamped(tirx.max(tirx.min(-v, _f(EXP_MAX)), _f(SIGMOID_EXP_MIN)), _times_pow2)
        return _f(1.0) / (_f(1.0) + tirx.Select(_isnan(v), v, e))
    return _let(x, body)


def tanh_f32(x):
    """tanh(x) for a float32 expression, vectorizable (see the module docstring)."""
    def body(v):
        small = _let(v * v, lambda z: _horner(z, TANH_P) * z * v + v)
        magnitude = tirx.reinterpret(F32, _magnitude_bits(v))
        big = _f(1.0) - _f(2.0) / (_f(1.0) + _exp_clamped(tirx.min(magnitude * _f(2.0), _f(TANH_EXP_MAX)),
                                                           _times_pow2))
        return tirx.Select(_isnan(v), v, tirx.Select(magnitude < _f(TANH_SMALL), small,
                                                     _let(big, lambda b: tirx.Select(v < _f(0.0), -b, b))))
    return _let(x, body)


def erf_f32(x):
    """erf(x) for a float32 expression, vectorizable (see the module docstring)."""
    def body(v):
        return _let(tirx.max(tirx.min(v, _f(ERF_MAX)), _f(-ERF_MAX)), lambda c: _let(c * c, lambda c2: tirx.Select(
            _isnan(v), v, c * (_horner(c2, ERF_P) / _horner(c2, ERF_Q)))))
    return _let(x, body)


TANH_SMALL = 0.625  # below: the odd polynomial; from it on: 1 - 2 / (1 + e^2|x|)
TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)  # Cephes
TANH_EXP_MAX = 20.0  # from |x| = 10 on, tanh rounds to ±1 in float32
VECTOR_INTRINSICS = frozenset({"tirx.bitwise_and", "tirx.reinterpret", "tirx.shift_left", "tirx.shift_right",
                               "tirx.floor"})  # calls of one vector instruction each (the approximations' among them)
REPLACEMENTS = {"tirx.exp": exp_f32, "tirx.sigmoid": sigmoid_f32, "tirx.erf": erf_f32, "tirx.tanh": tanh_f32}


def _replace(call):
    if not isinstance(call.op, tvm.ir.Op) or str(call.ty) != F32:
        return call
    approx = REPLACEMENTS.get(call.op.name)
    return call if approx is None else approx(call.args[0])


ROUNDING = frozenset({"round", "nearbyint", "floor", "ceil", "trunc"})  # as tirx.* or prim.* ops


def _rounds(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` rounds a float (a rounding call, or a float cast to an integer type: a quantizer's
    ``round(x / s)``, whose division may sit in another block than its rounding). There ``a · (1 / c)`` could
    land on the other side of a rounding boundary than ``a / c``."""
    found: list = []

    def call(node, visitor):
        if isinstance(node.op, tvm.ir.Op) and node.op.name.split(".")[-1] in ROUNDING:
            found.append(node)
        else:
            visitor.default_visit(node)

    def cast(node, visitor):
        if "int" in str(node.ty) and "float" in str(node.value.ty):
            found.append(node)
        else:
            visitor.default_visit(node)

    structural_visit(func.body, [(tvm.ir.Call, call), (tirx.Cast, cast)])
    return bool(found)


def _by_reciprocal(div):
    """``a / c`` for a float32 constant c as ``a · (1 / c)`` (within 2^-22 relative of the quotient): a vector division
    takes about ten cycles (hardswish's ``/ 6`` in every conv epilogue), a multiplication one."""
    c = div.b
    if not isinstance(c, tirx.FloatImm) or str(c.ty) != F32 or c.value == 0:
        return div
    inverse = np.float32(1.0) / np.float32(c.value)
    if not np.isfinite(inverse) or abs(inverse) < np.finfo(np.float32).tiny:
        return div
    return div.a * _f(float(inverse))


def vectorizable_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its float32 exp / sigmoid / tanh / erf calls replaced by the arithmetic above, and its divisions
    by a constant by multiplications where it rounds no float (:func:`_rounds`)."""
    if not _rounds(func):
        func = structural_map(func, [(tirx.Div, _by_reciprocal)])
    return structural_map(func, [(tvm.ir.Call, _replace)])


def without_lets(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each ``Let`` expression of the approximations replaced by its body, the bound value written
    in at every use: the form MetaSchedule tunes and keys its records by (its FLOP estimate has no rule for
    ``Let``). Same blocks and loops, so a trace found on it replays on ``func``; not the same numbers: written
    out, ``(y + ROUND) − ROUND`` is simplified to ``y`` and e^x loses its rounding step, so only the
    original is built (``Backend.tuned``)."""
    def expand(node):
        var, value = node.var, node.value
        return structural_map(node.body, [(tirx.Var, lambda v: value if v.same_as(var) else v)])

    return structural_map(func, [(tirx.Let, expand)])


def without_lets_module(mod: tvm.IRModule) -> tvm.IRModule:
    """:func:`without_lets` on every PrimFunc of a copy of ``mod``."""
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            out.update_func(gv, without_lets(func))
    return out


def vectorizable_math_module(mod: tvm.IRModule) -> tvm.IRModule:
    """:func:`vectorizable_math` on every PrimFunc of ``mod``."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc):
            mod.update_func(gv, vectorizable_math(func))
    return mod
