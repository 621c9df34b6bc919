"""fold-batchnorm: inference BatchNorm as a per-channel affine, folded into a neighbouring
conv / dense.

    BN(x) = x·s + t,  s = γ/√(σ²+ε),  t = β − μ·s
    (conv(x, W) + b)·s + t  =  conv(x, W·s[o]) + (b·s + t)          producer side
    conv(x·s + t, W)        =  conv(x, W·s[c]) + Σ W·t[c]            consumer side, unpadded only

The same folds absorb any constant per-channel multiply / add / subtract / divide next to a
linear operator (e.g. the ``y·(1−p)`` an eval-mode DropConnect leaves). A BatchNorm with no
linear neighbour stays as the affine ``x·s + t``. Scales or shifts that are not finite
(σ² + ε ≤ 0, NaN statistics) are never folded.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from . import kernel_algebra as ka
from .graph import (channel_const, channel_vector, cleanup, const, const_value, is_const, mutate_functions, op_name,
                    tensor_dtype, tensor_shape, use_counts)
from .report import PassReport

_CONV_LAYOUTS = {"relax.nn.conv1d": ("NCW", "OIW"), "relax.nn.conv2d": ("NCHW", "OIHW"),
                 "relax.nn.conv3d": ("NCDHW", "OIDHW")}
_MAX_ROUNDS = 32
_AFFINE_OPS = ("relax.multiply", "relax.divide", "relax.add", "relax.subtract")


@tvm.transform.module_pass(opt_level=0, name="reforge.fold-batchnorm")
class FoldBatchNorm:
    """Fold inference BatchNorm and constant per-channel affines into conv / dense weights."""

    def __init__(self):
        self.report = PassReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for _ in range(_MAX_ROUNDS):
            before = self.report.total
            mod = cleanup(mutate_functions(mod, lambda m, f: _Fold(m, use_counts(f), self.report)))
            if self.report.total == before:
                break
        return mod


# ----------------------------------------------------------------------------- pattern


class _Linear:
    """A conv (NC* layout) or ``x @ W`` with a constant weight: the operators affines fold into."""

    def __init__(self, call: relax.Call, weight: np.ndarray, is_conv: bool):
        self.call, self.weight, self.is_conv = call, weight, is_conv

    @classmethod
    def match(cls, expr) -> "_Linear | None":
        name = op_name(expr)
        if name is None or len(expr.args) != 2 or not is_const(expr.args[1]):
            return None
        w = const_value(expr.args[1])
        if name in _CONV_LAYOUTS:
            data, kernel = _CONV_LAYOUTS[name]
            a = expr.attrs
            if (a["data_layout"], a["kernel_layout"], a["out_layout"] or data) != (data, kernel, data):
                return None
            return cls(expr, w, True)
        if name == "relax.matmul" and w.ndim == 2:
            return cls(expr, w, False)
        return None

    @property
    def kind(self) -> str:
        return "conv" if self.is_conv else "dense"

    @property
    def data(self) -> relax.Expr:
        return self.call.args[0]

    @property
    def groups(self) -> int:
        return int(self.call.attrs["groups"]) if self.is_conv else 1

    @property
    def unpadded(self) -> bool:
        return not self.is_conv or all(int(p) == 0 for p in self.call.attrs["padding"])

    def out_axis(self, rank: int) -> int:
        return 1 if self.is_conv else rank - 1

    def in_axis(self, rank: int) -> int:
        return 1 if self.is_conv else rank - 1

    def with_weight(self, w: np.ndarray, data: relax.Expr | None = None) -> relax.Call:
        dtype = str(self.weight.dtype)
        return relax.Call(self.call.op, [data if data is not None else self.data, const(w, dtype)],
                          self.call.attrs)

    def bias_const(self, b: np.ndarray, out_rank: int, dtype: str) -> relax.Expr:
        return channel_const(b, out_rank, self.out_axis(out_rank), dtype)


def _split_const(call: relax.Call) -> tuple[relax.Expr, np.ndarray] | None:
    """``(var, constant)`` for a binary call with one constant operand."""
    a, b = call.args
    if is_const(b) and not is_const(a):
        return a, const_value(b)
    if is_const(a) and not is_const(b) and op_name(call) in ("relax.add", "relax.multiply"):
        return b, const_value(a)
    return None


def _as_affine(call: relax.Call, axis_of) -> tuple[relax.Expr, str, np.ndarray] | None:
    """Read ``x·c``, ``x/c``, ``x + c``, ``x − c`` (c per-channel) as ``(x, "scale"|"shift", vec)``."""
    name = op_name(call)
    if name not in _AFFINE_OPS:
        return None
    parts = _split_const(call)
    shape = tensor_shape(call)
    if parts is None or shape is None or tensor_shape(parts[0]) != shape:
        return None
    x, c = parts
    vec = channel_vector(c, shape, axis_of(len(shape)))
    if vec is None:
        return None
    vec = vec.astype(np.float64)
    if name == "relax.divide":
        vec = 1.0 / vec
    elif name == "relax.subtract":
        vec = -vec
    if not np.all(np.isfinite(vec)):
        return None
    return x, ("scale" if name in ("relax.multiply", "relax.divide") else "shift"), vec


# ----------------------------------------------------------------------------- rewrite


@relax.expr_functor.mutator
class _Fold(relax.PyExprMutator):
    def __init__(self, mod, uses, report: PassReport):
        super().__init__(mod)
        self.uses, self.report = uses, report

    def _single_use_producer(self, expr):
        """The value bound to ``expr`` if it is a variable used exactly once."""
        if isinstance(expr, relax.Var) and self.uses.get(expr, 1) == 1:
            return self.lookup_binding(expr)
        return None

    def visit_tuple_getitem_(self, op):
        op = self.visit_expr_post_order(op)
        bn = self.lookup_binding(op.tuple_value) if isinstance(op.tuple_value, relax.Var) else None
        if op.index != 0 or op_name(bn) != "relax.nn.batch_norm":
            return op
        affine = self._batchnorm_to_affine(bn)
        return op if affine is None else affine

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        for rule in (self._into_producer, self._into_consumer):
            new = rule(call)
            if new is not None:
                return new
        return call

    def _batchnorm_to_affine(self, bn: relax.Call):
        x, *params = bn.args
        shape, dtype = tensor_shape(x), tensor_dtype(x)
        if bn.attrs["training"] or shape is None or not all(is_const(p) for p in params):
            self.report.note("left a batch_norm alone: training mode, dynamic shape or non-constant statistics")
            return None
        gamma, beta, mean, var = (const_value(p).astype(np.float64) for p in params)
        axis = int(bn.attrs["axis"]) % len(shape)
        if not bn.attrs["scale"]:
            gamma = np.ones_like(gamma)
        if not bn.attrs["center"]:
            beta = np.zeros_like(beta)
        s, t = ka.batchnorm_scale_shift(gamma, beta, mean, var, float(bn.attrs["epsilon"]))
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
            self.report.note("left a batch_norm alone: its scale or shift is not finite (variance + eps <= 0 or NaN)")
            return None
        self.report.count("batchnorm as affine")
        return relax.op.add(relax.op.multiply(x, channel_const(s, len(shape), axis, dtype)),
                            channel_const(t, len(shape), axis, dtype))

    def _into_producer(self, call):
        """``linear(x) [+ b]`` followed by a per-output-channel scale or shift."""
        parts = _split_const(call) if op_name(call) in _AFFINE_OPS else None
        if parts is None:
            return None
        prod = self._single_use_producer(parts[0])
        lin, bias = _Linear.match(prod), None
        if lin is None and op_name(prod) == "relax.add":
            inner = _split_const(prod)
            if inner is not None:
                lin, bias = _Linear.match(self._single_use_producer(inner[0])), inner[1]
        affine = _as_affine(call, lin.out_axis) if lin is not None else None
        if affine is None or (affine[1] == "shift" and bias is None):
            return None  # not foldable, or already the canonical ``linear + bias``
        _, kind, vec = affine
        out_shape = tensor_shape(call)
        b = np.zeros(vec.shape)
        if bias is not None:
            b = channel_vector(bias, out_shape, lin.out_axis(len(out_shape)))
            if b is None:
                return None
        w = lin.weight.astype(np.float64)
        if kind == "scale":
            scale = ka.scale_conv_outputs if lin.is_conv else ka.scale_dense_outputs
            w, b = scale(w, vec), b * vec
        else:
            b = b + vec
        self.report.count("affine into preceding " + lin.kind)
        return relax.op.add(lin.with_weight(w), lin.bias_const(b, len(out_shape), tensor_dtype(call)))

    def _into_consumer(self, call):
        """A per-input-channel scale or shift right before a linear operator."""
        lin = _Linear.match(call)
        if lin is None:
            return None
        prod = self._single_use_producer(lin.data)
        affine = _as_affine(prod, lin.in_axis) if isinstance(prod, relax.Call) else None
        if affine is None:
            return None
        x, kind, vec = affine
        w = lin.weight.astype(np.float64)
        if kind == "scale":
            w = ka.scale_conv_inputs(w, vec, lin.groups) if lin.is_conv else ka.scale_dense_inputs(w, vec)
            self.report.count("affine into following " + lin.kind)
            return lin.with_weight(w, x)
        if not lin.unpadded:
            self.report.note("kept a per-channel shift before a zero-padded conv: folding it would change the border")
            return None
        b = ka.conv_bias_of_input_shift(w, vec, lin.groups) if lin.is_conv else ka.dense_bias_of_input_shift(w, vec)
        out_shape = tensor_shape(call)
        self.report.count("affine into following " + lin.kind)
        return relax.op.add(lin.with_weight(w, x), lin.bias_const(b, len(out_shape), tensor_dtype(call)))
