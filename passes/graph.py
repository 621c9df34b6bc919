"""Small helpers for reading and rewriting Relax dataflow graphs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import tvm
from tvm import relax

from reforge.frontend.relax_types import static_shape


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


def cleanup(mod: tvm.IRModule) -> tvm.IRModule:
    """Drop aliases and dead bindings left behind by a rewrite."""
    return tvm.transform.Sequential([relax.transform.CanonicalizeBindings(),
                                     relax.transform.DeadCodeElimination()])(mod)
