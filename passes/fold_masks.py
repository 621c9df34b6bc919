"""fold-masks: a masked weight becomes one constant weight, and every layer's sparsity is reported.

Pruned models and Sparse Connection Learning (each weight ``W ⊙ step(M)``, M trainable) reach
reforge as masking arithmetic on constants:

    W_orig · mask                  PyTorch's pruning reparametrization (``weight_orig * weight_mask``)
    W · (M > 0),  W · (M ≥ 0)      SCL's step, ``Greater`` / ``GreaterOrEqual`` → ``Cast`` → ``Mul``
    W · heaviside(M, v)            ``where(M < 0 or isnan(M), 0, where(M = 0, v, 1))``
    where(mask, W, 0)              ``torch.where`` / ONNX ``Where``
    W · mask.float()               masks stored as bool, uint8 or float

The weight operand of a conv / matmul that is such an expression over constants (a product with a
0/1-valued tensor or a select with a zero branch, through comparisons, casts, logical ops, constant
fills and shape-only ops) is evaluated with numpy, op by op in the graph's order and dtypes:
comparisons, casts of 0/1 values, selections and IEEE products are exact, so the folded weight is
bit-for-bit the one the framework computes. TVM's ONNX importer already evaluates constant nodes as
it reads them, so ONNX files arrive with the mask applied; torch.export programs arrive with the
arithmetic. Either way the report lists, per layer holding zero weights, the fraction of zeros and
the all-zero output filters (what prune-channels can remove); a layer not listed has none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .graph import cleanup, const, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape
from .report import PassReport

_LAYERS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.matmul")
_BINARY = {"relax.multiply": np.multiply, "relax.greater": np.greater, "relax.greater_equal": np.greater_equal,
           "relax.less": np.less, "relax.less_equal": np.less_equal, "relax.equal": np.equal,
           "relax.not_equal": np.not_equal, "relax.logical_and": np.logical_and, "relax.logical_or": np.logical_or}
_UNARY = {"relax.logical_not": np.logical_not, "relax.isnan": np.isnan}
_SHAPE_ONLY = ("relax.reshape", "relax.expand_dims", "relax.squeeze")
_FILLS = ("relax.full", "relax.zeros", "relax.ones")


@tvm.transform.module_pass(opt_level=0, name="reforge.fold-masks")
class FoldMasks:
    """Evaluate masked conv / dense weights (``W·mask``, ``W·(M > 0)``, ``where(mask, W, 0)``) into
    constants; report each layer's sparsity."""

    def __init__(self):
        self.report = PassReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        tally = _Tally()
        mod = cleanup(mutate_functions(mod, lambda m, _f: _Fold(m, self.report, tally)))
        if tally.zeros:
            self.report.note(f"{len(self.report.layers)} of {sum(tally.seen.values())} conv / dense weights hold "
                             f"zeros: {tally.zeros / tally.total:.1%} of their {tally.total} weights")
        return mod


def _sparsity_row(layer: str, weight: np.ndarray, out_axis: int) -> dict:
    """A report row: the weight's shape, its fraction of zeros and its all-zero output filters."""
    filters = np.moveaxis(weight, out_axis, 0).reshape(weight.shape[out_axis], -1)
    return {"layer": layer, "shape": list(weight.shape), "sparsity": round(float(np.mean(weight == 0)), 6),
            "zero_filters": int(np.sum(~filters.any(axis=1)))}


class _Value:
    """An evaluated constant expression, and whether a mask step was applied on the way."""

    def __init__(self, array: np.ndarray, masked: bool):
        self.array, self.masked = array, masked


def _is_mask(a: np.ndarray) -> bool:
    return a.dtype == np.bool_ or bool(np.all((a == 0) | (a == 1)))


def _evaluate(expr, lookup, memo: dict) -> _Value | None:
    """numpy value of ``expr`` if it is built from constants by the ops above, else None."""
    if is_const(expr):
        return _Value(const_value(expr), False)
    if isinstance(expr, relax.Var):
        bound = lookup(expr)
        return _evaluate(bound, lookup, memo) if bound is not None else None
    name, shape, dtype = op_name(expr), tensor_shape(expr), tensor_dtype(expr)
    if name is None or shape is None or dtype is None:
        return None
    if expr in memo:
        return memo[expr]
    memo[expr] = None  # a cycle cannot occur in a dataflow block; this only guards the recursion
    if name in _FILLS:
        fill = {"relax.zeros": 0, "relax.ones": 1}.get(name)
        value = _Value(np.full(shape, fill if fill is not None else const_value(expr.args[1])), False)
    else:
        args = [_evaluate(a, lookup, memo) for a in expr.args if not isinstance(a, relax.ShapeExpr)]
        if not args or any(a is None for a in args):
            return None
        value = _apply(name, expr, shape, [a.array for a in args])
        if value is None:
            return None
        masked = any(a.masked for a in args)
        if name == "relax.multiply":
            masked = masked or any(_is_mask(a.array) for a in args)
        elif name == "relax.where":
            masked = masked or any(not a.array.any() for a in args[1:])
        value = _Value(value, masked)
    value.array = _cast(np.asarray(value.array), dtype)
    if value.array is None or value.array.shape != shape:
        return None
    memo[expr] = value
    return value


def _cast(a: np.ndarray, dtype: str) -> np.ndarray | None:
    """``a`` in ``dtype`` where the cast is exact or defined alike everywhere (to bool: ``a ≠ 0``;
    float to int only for integral values in range), else None."""
    try:
        target = np.dtype(dtype)
    except TypeError:  # bfloat16 and other dtypes numpy does not know
        return None
    if target.kind in "iu" and a.dtype.kind == "f":
        info = np.iinfo(target)
        if not np.all(np.isfinite(a) & (a == np.trunc(a)) & (a >= info.min) & (a <= info.max)):
            return None
    return a.astype(target)


def _apply(name: str, call, shape, args: list[np.ndarray]) -> np.ndarray | None:
    if name in _BINARY and len(args) == 2:
        return _BINARY[name](*args)
    if name in _UNARY and len(args) == 1:
        return _UNARY[name](args[0])
    if name == "relax.where" and len(args) == 3:
        return np.where(*args)
    if name == "relax.astype":
        return args[0]  # the caller casts to the call's dtype (numpy's astype, as C casts)
    if name in _SHAPE_ONLY:
        return args[0].reshape(shape)
    if name == "relax.broadcast_to":
        return np.broadcast_to(args[0], shape)
    if name == "relax.permute_dims":
        axes = call.attrs["axes"]
        return np.transpose(args[0], None if axes is None else [int(a) for a in axes])
    return None


@dataclass
class _Tally:
    """Layers seen by kind (they are named in program order) and their zero / total weights."""

    seen: Counter = field(default_factory=Counter)
    zeros: int = 0
    total: int = 0


@relax.expr_functor.mutator
class _Fold(relax.PyExprMutator):
    def __init__(self, mod, report: PassReport, tally: _Tally):
        super().__init__(mod)
        self.report, self.tally = report, tally

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        if name not in _LAYERS or len(call.args) != 2 or not (tensor_dtype(call) or "").startswith("float"):
            return call
        expr = call.args[1]  # the weight: conv(x, W), x @ W
        weight = _evaluate(expr, self.lookup_binding, {})
        if weight is None:
            return call
        kind = name.removeprefix("relax.").removeprefix("nn.")
        self.tally.seen[kind] += 1
        zeros = int(np.sum(weight.array == 0))
        self.tally.zeros, self.tally.total = self.tally.zeros + zeros, self.tally.total + weight.array.size
        if zeros:
            out_axis = 0 if name != "relax.matmul" else weight.array.ndim - 1
            self.report.layers.append(_sparsity_row(f"{kind} {self.tally.seen[kind]}", weight.array, out_axis))
        if not weight.masked or is_const(expr):
            return call
        root = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
        self.report.count("masked weights folded" + (" (where)" if op_name(root) == "relax.where" else ""))
        return relax.Call(call.op, [call.args[0], const(weight.array, str(weight.array.dtype))], call.attrs)
