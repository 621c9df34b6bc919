"""Small helpers for reading and rewriting Relax dataflow graphs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from reforge.frontend.relax_types import static_shape

from . import kernel_algebra as ka


def op_name(expr) -> str | None:
    """``"relax.nn.conv2d"`` for a call to a Relax operator, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def const_value(expr) -> np.ndarray | None:
    """The numpy value of a Relax constant, or None for anything else."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def is_const(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst)


def const(value: np.ndarray, dtype: str) -> relax.Expr:
    return relax.const(np.ascontiguousarray(value, dtype=dtype), dtype)


def channel_const(vec: np.ndarray, rank: int, axis: int, dtype: str) -> relax.Expr:
    """A per-channel constant shaped to broadcast along ``axis`` of a rank-``rank`` tensor, at full
    rank (``(1, C, 1, 1)`` for NCHW) so layout rewrites can carry it into blocked layouts."""
    return const(vec.reshape((1,) * axis + (-1,) + (1,) * (rank - 1 - axis)), dtype)


def tensor_shape(expr) -> tuple[int, ...] | None:
    """Static shape of a tensor-typed expression, or None."""
    return static_shape(expr.ty)


def tensor_dtype(expr) -> str | None:
    return str(expr.ty.dtype) if isinstance(expr.ty, relax.TensorType) else None


def use_counts(func: relax.Function) -> Counter:
    """How many times each Relax variable is used in ``func`` (the function result counts)."""
    counts: Counter = Counter()

    @relax.expr_functor.visitor
    class _Uses(relax.PyExprVisitor):
        def visit_var_(self, var):
            counts[var] += 1

        def visit_dataflow_var_(self, var):
            counts[var] += 1

    _Uses().visit_expr(func)
    return counts


def bindings(func: relax.Function) -> list[relax.Binding]:
    """The bindings (variable bindings and match-casts, each a ``var`` and a ``value``) of ``func``'s
    blocks, in program order."""
    return [b for block in func.body.blocks for b in block.bindings]


def channel_vector(c: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """If constant ``c`` broadcast against a tensor of ``out_shape`` varies only along ``axis``
    (and does not enlarge the tensor), return it as a vector of length ``out_shape[axis]``."""
    rank = len(out_shape)
    if c.ndim > rank:
        return None
    full = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 and i != axis for i, d in enumerate(full)) or full[axis] not in (1, out_shape[axis]):
        return None
    return np.broadcast_to(c.reshape(-1) if c.size > 1 else c.reshape(1), (out_shape[axis],)).copy()


def channel_slice(call) -> range | None:
    """The channels a unit-stride ``strided_slice`` of axis 1 of a 4-D tensor keeps (constant bounds, read
    as Python reads ``x[:, begin:end]``), else None."""
    shape = tensor_shape(call.args[0]) if op_name(call) == "relax.strided_slice" else None
    if shape is None or len(shape) != 4:
        return None
    axes, begin, end = (tuple_ints(arg) for arg in call.args[1:4])
    strides = tuple_ints(call.args[4]) if len(call.args) > 4 else [1]
    if axes is None or [a % 4 for a in axes] != [1] or strides != [1] or None in (begin, end):
        return None
    return range(shape[1])[begin[0]:end[0]]


def tuple_ints(arg) -> list[int] | None:
    """The integers of a tuple of constants (a slice's axes, bounds, strides); None if one is computed."""
    if not isinstance(arg, relax.Tuple) or not all(isinstance(f, tvm.tirx.IntImm) for f in arg.fields):
        return None
    return [int(f.value) for f in arg.fields]


def ops_histogram(mod: tvm.IRModule) -> Counter:
    """Operator name -> number of calls in ``main``."""
    hist: Counter = Counter()

    @relax.expr_functor.visitor
    class _Ops(relax.PyExprVisitor):
        def visit_call_(self, call):
            name = op_name(call)
            if name:
                hist[name.removeprefix("relax.")] += 1
            for arg in call.args:
                self.visit_expr(arg)

    _Ops().visit_expr(mod["main"])
    return hist


def mutate_functions(mod: tvm.IRModule, make_mutator) -> tvm.IRModule:
    """Run ``make_mutator(mod, func)`` (a ``PyExprMutator``) over every Relax function."""
    builder_mod = mod
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator = make_mutator(builder_mod, func)
            new_func = mutator.visit_expr(func)
            mutator.builder_.update_func(gv, new_func)
            builder_mod = mutator.builder_.get()
    return builder_mod


def callee_attr(mod: tvm.IRModule, call, key: str):
    """Attribute ``key`` of the PrimFunc that ``call`` (a ``call_tir`` into ``mod``) runs; None if
    ``call`` is not such a call or the function has no such attribute."""
    if op_name(call) != "relax.call_tir" or call.args[0] not in mod.get_global_vars():
        return None
    attrs = mod[call.args[0]].attrs
    return attrs.get(key) if attrs is not None else None


def cleanup(mod: tvm.IRModule) -> tvm.IRModule:
    """Drop aliases and dead bindings left behind by a rewrite."""
    return tvm.transform.Sequential([relax.transform.CanonicalizeBindings(),
                                     relax.transform.DeadCodeElimination()])(mod)


# ----------------------------------------------------------------------------- linear operators as conv2d
# (merge-branches, remove-residual and fold-channel-tile read and emit them)


@dataclass(frozen=True)
class Conv:
    """A linear operator read as ``conv2d(data, weight) + bias`` (NCHW / OIHW, float64 numbers).

    ``cost``: multiply-adds per batch of the operators it stands for (0 for ``x·s``);
    ``is_conv``: it contains a real convolution (merging only identities and scales gains nothing).
    """

    data: relax.Expr
    weight: np.ndarray
    groups: int
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    bias: np.ndarray
    dtype: str
    cost: int
    is_conv: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.weight.shape[2], self.weight.shape[3]

    @property
    def unit_kernel(self) -> bool:
        return self.size == (1, 1)


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def conv_cost(weight_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    return int(np.prod(out_shape[1:])) * int(np.prod(weight_shape[1:]))


def read_linear(call) -> Conv | None:
    """conv2d with a constant kernel, average pooling, or ``x·s[c]``, as a ``Conv``."""
    if call is None:
        return None
    name, out, dtype = op_name(call), tensor_shape(call), tensor_dtype(call)
    if out is None or len(out) != 4 or not (dtype or "").startswith("float") or tensor_dtype(call.args[0]) != dtype:
        return None
    a = call.attrs if name else None
    if name == "relax.nn.conv2d" and is_const(call.args[1]) \
            and (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") == ("NCHW", "OIHW", "NCHW"):
        w = const_value(call.args[1]).astype(np.float64)
        return Conv(call.args[0], w, int(a["groups"]), _ints(a["strides"]), _ints(a["padding"]),
                     _ints(a["dilation"]), np.zeros(out[1]), dtype, conv_cost(w.shape, out), True)
    if name == "relax.nn.avg_pool2d" and a["layout"] == "NCHW" and (a["out_layout"] or "NCHW") == "NCHW" \
            and not a["ceil_mode"] and (a["count_include_pad"] or not any(_ints(a["padding"]))):
        size = _ints(a["pool_size"])
        w = ka.channel_kernel(np.full(out[1], 1.0 / (size[0] * size[1])), size)
        return Conv(call.args[0], w, out[1], _ints(a["strides"]), _ints(a["padding"]), _ints(a["dilation"]),
                     np.zeros(out[1]), dtype, conv_cost(w.shape, out), False)
    if name == "relax.multiply":
        for data, c in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
            s = channel_vector(const_value(c), out, 1) if is_const(c) and not is_const(data) else None
            if s is not None and tensor_shape(data) == out:
                return identity_conv(data, out, dtype, s.astype(np.float64))
    return None


def identity_conv(data: relax.Expr, shape: tuple[int, ...], dtype: str, scale: np.ndarray | None = None) -> Conv:
    """``data·s[c]`` (the identity when ``scale`` is None) as a depthwise 1×1 conv."""
    s = np.ones(shape[1]) if scale is None else scale
    return Conv(data, ka.channel_kernel(s), shape[1], (1, 1), (0, 0, 0, 0), (1, 1), np.zeros(shape[1]), dtype, 0,
                 False)


def emit_conv(conv: Conv) -> relax.Expr:
    """``conv2d(data, W) [+ bias]`` in the operator's dtype."""
    out = relax.op.nn.conv2d(conv.data, const(conv.weight, conv.dtype), strides=conv.strides,
                             padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    if np.any(conv.bias):
        out = relax.op.add(out, channel_const(conv.bias, 4, 1, conv.dtype))
    return out
