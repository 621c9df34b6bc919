"""Constant folding with the data movement of constants evaluated in numpy.

TVM's ``FoldConstant`` evaluates a call on constants by legalizing it, compiling the PrimFunc with
LLVM and running it: one LLVM build per distinct shape. The blocked layout's weight packing is one
``layout_transform`` per conv weight and per-channel constant, almost all of distinct shapes, so a
network compiled a few hundred LLVM modules before its own. Reshape, permute_dims and layout_transform
of a constant only move elements, so numpy gives the same values bit for bit; TVM folds the rest.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from .graph import const_value, op_name

# dtypes whose constants numpy holds exactly (others are left to FoldConstant)
NUMPY_DTYPES = frozenset({"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
                          "uint8", "uint16", "uint32", "uint64"})

_INDEX_OPS = {tirx.Add: np.add, tirx.Sub: np.subtract, tirx.Mul: np.multiply, tirx.FloorDiv: np.floor_divide,
              tirx.FloorMod: np.mod, tirx.Min: np.minimum, tirx.Max: np.maximum}


class _Unsupported(Exception):
    """An index expression this evaluator does not read: the call is left to FoldConstant."""


def _index_value(expr, env: dict):
    """``expr`` (an IndexMap's output index) over numpy index grids ``env`` (its variables)."""
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tirx.Var):
        return env[expr]
    apply = _INDEX_OPS.get(type(expr))
    if apply is None:
        raise _Unsupported(type(expr).__name__)
    return apply(_index_value(expr.a, env), _index_value(expr.b, env))


def layout_transform_value(value: np.ndarray, index_map: tirx.IndexMap, out_shape: tuple[int, ...],
                           pad_value) -> np.ndarray | None:
    """``layout_transform(value)``: element ``x[i]`` lands at ``out[index_map(i)]``, positions no input
    maps to (padding) hold ``pad_value`` (0 when None, as TVM's legalization). None when the map uses
    an index expression not read here, or maps outside ``out_shape``."""
    grids = np.ogrid[tuple(slice(0, n) for n in value.shape)] if value.ndim else []
    try:
        index = [np.broadcast_to(_index_value(e, dict(zip(index_map.initial_indices, grids))), value.shape)
                 for e in index_map.final_indices]
    except _Unsupported:
        return None
    if len(index) != len(out_shape) or any(ix.size and (ix.min() < 0 or ix.max() >= n)
                                           for ix, n in zip(index, out_shape)):
        return None
    out = np.full(out_shape, 0 if pad_value is None else pad_value.value, value.dtype)
    out[tuple(index)] = value
    return out


def _moved(call: relax.Call, arg: relax.Expr, out: relax.Type) -> np.ndarray | None:
    """The value of a data-movement call of type ``out`` on the constant ``arg`` (its first argument,
    or what that is bound to), or None if it is not one numpy evaluates."""
    name = op_name(call)
    if name not in ("relax.reshape", "relax.permute_dims", "relax.layout_transform"):
        return None
    value = const_value(arg)
    if (value is None or str(value.dtype) not in NUMPY_DTYPES or not isinstance(out, relax.TensorType)
            or out.shape is None or not all(isinstance(d, tirx.IntImm) for d in out.shape)):
        return None
    shape = tuple(int(d) for d in out.shape)
    if name == "relax.reshape":
        return value.reshape(shape)
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.transpose(value, None if axes is None else [int(a) for a in axes])
    return layout_transform_value(value, call.attrs.index_map, shape, call.attrs.pad_value)


@relax.expr_functor.mutator
class _ConstantMoves(relax.PyExprMutator):
    def visit_call_(self, call):
        new = self.visit_expr_post_order(call)
        arg = new.args[0] if new.args else None
        if isinstance(arg, relax.Var):
            arg = self.lookup_binding(arg)  # a chain: the move before it was folded and bound
        value = _moved(new, arg, call.ty)  # the type is the original call's (folding keeps it)
        return new if value is None else relax.const(value, str(value.dtype))


def fold_constant_moves(mod: tvm.IRModule) -> tvm.IRModule:
    """Every reshape / permute_dims / layout_transform of a constant (a chain of them included) as the
    constant it computes; bindings to it stay (FoldConstant or CanonicalizeBindings inline them)."""
    out = mod.clone()
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = _ConstantMoves().visit_expr(func)
    return out


def fold_constants(mod: tvm.IRModule) -> tvm.IRModule:
    """TVM's ``FoldConstant`` with constant data movement evaluated in numpy first (no LLVM build)."""
    return relax.transform.FoldConstant()(fold_constant_moves(mod))
