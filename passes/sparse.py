"""sparse: convs and dense layers whose constant weights are mostly zero run as sparse operators
(:mod:`reforge.topi_ext.sparse_conv`, the direct sparse conv, 1×1 included; :mod:`reforge.topi_ext.sparse_dense`,
``x @ W`` over W's compressed columns). Exact: the same products, summed in another order.

Rewritten: ``relax.nn.conv2d`` with a constant float32 weight, NCHW / OIHW, groups 1, dilation 1,
static shapes, and ``relax.matmul`` of a float32 tensor by a constant 2-D float32 weight, where the
weight's sparsity reaches the crossover measured on this CPU (``CROSSOVER`` below, from
benchmarks/sparse.py: the sparsity from which the sparse operator beats reforge's dense kernel).
The report names each layer with its sparsity and what was done with it.
"""

from __future__ import annotations

import tvm
from tvm import relax

from reforge.topi_ext import sparse_conv, sparse_dense

from .graph import cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape
from .report import PassReport

# the sparsity (fraction of zero weights) from which the sparse operator beat reforge's dense kernel
# in benchmarks/sparse.py (1 thread, batch 1; docs/sparse.md): 1×1 convs, k×k convs, dense layers
CROSSOVER = {"conv 1x1": 0.7, "conv kxk": 0.9, "dense": 0.9}


def crossover(kind: str) -> float:
    return CROSSOVER["conv 1x1" if kind == "conv 1x1" else "dense" if kind == "dense" else "conv kxk"]


@tvm.transform.module_pass(opt_level=0, name="reforge.sparse")
class Sparse:
    """Rewrite convs / dense layers with mostly-zero constant weights to sparse operators."""

    def __init__(self, min_sparsity: float | None = None):
        """``min_sparsity`` replaces the measured crossovers (0: every eligible layer)."""
        self.report = PassReport()
        self.min_sparsity = min_sparsity

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return cleanup(mutate_functions(mod, lambda m, _f: _Rewrite(m, self.report, self._threshold)))

    def _threshold(self, kind: str) -> float:
        return crossover(kind) if self.min_sparsity is None else self.min_sparsity


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, report: PassReport, threshold):
        super().__init__(mod)
        self.report, self.threshold = report, threshold

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        if name not in ("relax.nn.conv2d", "relax.matmul") or len(call.args) != 2:
            return call
        x, w = call.args
        if not is_const(w) or is_const(x) or tensor_dtype(x) != "float32" or tensor_shape(x) is None \
                or tensor_shape(call) is None or tensor_dtype(call) != "float32":
            return call
        weight = const_value(w)
        if weight.dtype != "float32":
            return call
        if name == "relax.matmul":
            return self._dense(call, x, weight)
        return self._conv(call, x, weight)

    def _decide(self, kind: str, layer: str, weight) -> bool:
        zeros = sparse_conv.sparsity(weight)
        sparse = zeros >= self.threshold(kind)
        self.report.note(f"{layer}: {zeros:.1%} zeros -> {'sparse' if sparse else 'dense'}")
        if sparse:
            self.report.count(f"{kind} to sparse")
        return sparse

    def _dense(self, call, x, weight):
        if weight.ndim != 2 or len(tensor_shape(x)) < 2:
            return call
        k, n = weight.shape
        if not self._decide("dense", f"dense {k}->{n}", weight):
            return call
        return sparse_dense.emit_sparse_dense(self.builder_, x, weight)

    def _conv(self, call, x, weight):
        a = call.attrs
        if (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") != ("NCHW", "OIHW", "NCHW") \
                or int(a["groups"]) != 1 or any(int(d) != 1 for d in a["dilation"]):
            return call
        g = sparse_conv.geometry(tensor_shape(x), weight.shape, [int(s) for s in a["strides"]],
                                 [int(p) for p in a["padding"]])
        kind = "conv 1x1" if (g.kh, g.kw) == (1, 1) else "conv kxk"
        if not self._decide(kind, f"conv {g.key}", weight):
            return call
        return sparse_conv.emit_sparse_conv2d(self.builder_, x, weight, g.strides, g.padding)
