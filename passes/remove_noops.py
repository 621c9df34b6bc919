"""remove-noops: drop what inference leaves of training-only layers.

Dropout (ONNX ``Dropout``, ``relax.nn.dropout``) is the identity at inference and its mask is
all ones; the eval-mode remains of DropConnect, stochastic depth and frequency dropout are
multiplications by a constant of ones (a kept mask, ``1/(1−p)`` with p = 0), additions of zeros,
and shape-preserving reshapes, casts, transposes, slices, single-input concats and all-true selects
around them (GhostNet's ``concat(primary, cheap)[:, :out]`` keeps every channel where out is even).
Each is replaced by its input when it provably returns it unchanged (same shape, same dtype, same
values). A scale other than one is not a no-op: fold-batchnorm folds it.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .graph import cleanup, const_value, mutate_functions, op_name, tensor_dtype, tensor_shape
from .report import PassReport


@tvm.transform.module_pass(opt_level=0, name="reforge.remove-noops")
class RemoveNoops:
    """Replace inference no-ops (Dropout, ×1, +0, identity reshapes/casts/transposes) by their input."""

    def __init__(self):
        self.report = PassReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return cleanup(mutate_functions(mod, lambda m, _f: _Remove(m, self.report)))


# ----------------------------------------------------------------------------- pattern


def _constant_operand(call: relax.Call, neutral: float, commutative: bool) -> relax.Expr | None:
    """The non-constant operand of ``x ∘ c`` when every element of c equals ``neutral``."""
    for data, other in ((0, 1), (1, 0)) if commutative else ((0, 1),):
        c = const_value(call.args[other])
        if c is not None and c.size and np.all(c == neutral):
            return call.args[data]
    return None


def _is_identity_permutation(call: relax.Call) -> bool:
    """``permute_dims`` with ``axes=None`` reverses the axes: the identity only for rank <= 1."""
    axes = call.attrs["axes"]
    if axes is None:
        shape = tensor_shape(call.args[0])
        return shape is not None and len(shape) <= 1
    return [int(a) for a in axes] == list(range(len(axes)))


def _is_unit_stride(call: relax.Call) -> bool:
    """Whether the strided slice ``call`` steps by 1 on every axis it slices; with its input's shape it then
    covers all of it (a start past 0 would leave fewer elements)."""
    if len(call.args) < 5:
        return True
    strides = call.args[4]
    return isinstance(strides, relax.Tuple) and all(isinstance(s, tvm.tirx.IntImm) and int(s) == 1
                                                    for s in strides.fields)


def _identity_of(call: relax.Call) -> tuple[relax.Expr, str] | None:
    """``(input, kind)`` if ``call`` returns its input unchanged."""
    name = op_name(call)
    if name == "relax.multiply":
        x, kind = _constant_operand(call, 1.0, True), "multiply by ones"
    elif name == "relax.divide":
        x, kind = _constant_operand(call, 1.0, False), "divide by ones"
    elif name == "relax.add":
        x, kind = _constant_operand(call, 0.0, True), "add zeros"
    elif name == "relax.subtract":
        x, kind = _constant_operand(call, 0.0, False), "subtract zeros"
    elif name in ("relax.reshape", "relax.astype", "relax.permute_dims"):
        x, kind = call.args[0], name.removeprefix("relax.")
        if name == "relax.permute_dims" and not _is_identity_permutation(call):
            return None
    elif name == "relax.strided_slice":
        x, kind = (call.args[0], "whole slice") if _is_unit_stride(call) else (None, "")
    elif name == "relax.concat" and isinstance(call.args[0], relax.Tuple) and len(call.args[0].fields) == 1:
        x, kind = call.args[0].fields[0], "single-input concat"
    elif name == "relax.where":
        cond = const_value(call.args[0])
        x, kind = (call.args[1], "all-true where") if cond is not None and cond.size and cond.all() else (None, "")
    else:
        return None
    if x is None or not isinstance(x.ty, relax.TensorType):
        return None
    same = tensor_shape(x) is not None and tensor_shape(x) == tensor_shape(call) \
        and tensor_dtype(x) == tensor_dtype(call)
    return (x, kind) if same else None


# ----------------------------------------------------------------------------- rewrite


@relax.expr_functor.mutator
class _Remove(relax.PyExprMutator):
    def __init__(self, mod, report: PassReport):
        super().__init__(mod)
        self.report = report

    def visit_tuple_getitem_(self, op):
        op = self.visit_expr_post_order(op)
        drop = self.lookup_binding(op.tuple_value) if isinstance(op.tuple_value, relax.Var) else None
        if op_name(drop) != "relax.nn.dropout":
            return op
        x = drop.args[0]
        if op.index == 0:
            self.report.count("dropout")
            return x
        mask_ty = op.ty
        return relax.op.ones(relax.ShapeExpr(list(mask_ty.shape.values)), str(mask_ty.dtype))

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        found = _identity_of(call)
        if found is None:
            return call
        self.report.count(found[1])
        return found[0]
