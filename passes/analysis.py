"""Graph statistics the passes report: parameters, multiply-accumulates, operator counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .graph import op_name, ops_histogram, tensor_shape

_CONVS = {"relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d"}


@dataclass(frozen=True)
class GraphStats:
    params: int  # elements of all tensor constants
    macs: int  # multiply-accumulates of convolutions and matrix products
    ops: Counter

    def to_json(self) -> dict:
        return {"params": self.params, "macs": self.macs, "ops": dict(sorted(self.ops.items()))}


def call_macs(call: relax.Call, out_shape: tuple[int, ...] | None) -> int:
    """MACs of one call: ``|out|·(I/g)·Πk`` for convs, ``|out|·K`` for matmul, else 0."""
    name = op_name(call)
    if out_shape is None or name not in _CONVS | {"relax.matmul"}:
        return 0
    if name == "relax.matmul":
        a = tensor_shape(call.args[0])
        return int(np.prod(out_shape)) * a[-1] if a else 0
    w = tensor_shape(call.args[1])
    return int(np.prod(out_shape)) * int(np.prod(w[1:])) if w else 0


def graph_stats(mod: tvm.IRModule) -> GraphStats:
    consts: dict[int, int] = {}
    macs = 0

    @relax.expr_functor.visitor
    class _Walk(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            nonlocal macs
            if isinstance(binding.value, relax.Call):
                macs += call_macs(binding.value, tensor_shape(binding.var))
            self.visit_expr(binding.value)

        def visit_generic_const_(self, c):
            consts[c.__hash__()] = int(np.prod(c.value.shape))

    walker = _Walk()
    walker.visit_expr(mod["main"])
    return GraphStats(params=sum(consts.values()), macs=macs, ops=ops_histogram(mod))
