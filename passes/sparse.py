"""sparse: convs and dense layers whose constant weights are mostly zero run as sparse operators
(:mod:`reforge.topi_ext.sparse_conv`, the direct sparse conv, 1×1 included; :mod:`reforge.topi_ext.sparse_dense`,
``x @ W`` over W's compressed columns). Exact: the same products, summed in another order.

Rewritten: ``relax.nn.conv2d`` with a constant float32 weight, NCHW / OIHW, groups 1, dilation 1,
static shapes, and ``relax.matmul`` of a float32 tensor by a constant 2-D float32 weight, where the
weight's sparsity reaches the crossover measured on this CPU (``CROSSOVER`` below, from
benchmarks/sparse.py: the sparsity from which the sparse operator beats reforge's dense kernel).
Where ``reforge tune`` measured a layer (its records' ``sparse`` choices,
``autotune/sparse_choice.py``), the faster way as measured. The report names each layer with its
sparsity and what was done with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext import sparse_conv, sparse_dense

from .graph import cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape
from .report import PassReport

# the sparsity (fraction of zero weights) from which the sparse operator beat reforge's dense kernel
# in benchmarks/sparse.py (1 thread, batch 1; docs/sparse.md): 1×1 convs, k×k convs, dense layers
CROSSOVER = {"conv 1x1": 0.7, "conv kxk": 0.9, "dense": 0.9}


@dataclass(frozen=True)
class Layer:
    """One layer the pass may rewrite: ``kind`` ("conv 1x1", "conv kxk", "dense"), the activation's
    shape, the constant weight (OIHW or (K, N)), and the conv's strides and padding."""

    kind: str
    x_shape: tuple[int, ...]
    weight: np.ndarray = field(compare=False)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def sparsity(self) -> float:
        return sparse_conv.sparsity(self.weight)

    @property
    def key(self) -> str:
        """How the report and tuning records name the layer: its shapes and its count of nonzeros."""
        nnz = int(np.count_nonzero(self.weight))
        if self.kind == "dense":
            return f"dense {'x'.join(map(str, self.x_shape))} -> {self.weight.shape[1]} nnz {nnz}"
        g = sparse_conv.geometry(self.x_shape, self.weight.shape, self.strides, self.padding)
        return f"conv {g.key} nnz {nnz}"


@tvm.transform.module_pass(opt_level=0, name="reforge.sparse")
class Sparse:
    """Rewrite convs / dense layers with mostly-zero constant weights to sparse operators."""

    def __init__(self, min_sparsity: float | None = None, measured: Mapping[str, bool] | None = None):
        """``min_sparsity`` replaces the measured crossovers (0: every eligible layer). ``measured``
        (from ``reforge tune``'s records): layer key -> sparse measured faster; it decides for the
        layers it names, the crossovers for the others."""
        self.report = PassReport()
        self.min_sparsity, self.measured = min_sparsity, dict(measured or {})

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return cleanup(mutate_functions(mod, lambda m, _f: _Rewrite(m, self.report, self._decide)))

    def _decide(self, layer: Layer) -> bool:
        if layer.key in self.measured:
            sparse, why = self.measured[layer.key], ", measured"
        else:
            threshold = CROSSOVER[layer.kind] if self.min_sparsity is None else self.min_sparsity
            sparse, why = layer.sparsity >= threshold, ""
        self.report.note(f"{layer.key}: {layer.sparsity:.1%} zeros -> {'sparse' if sparse else 'dense'}{why}")
        if sparse:
            self.report.count(f"{layer.kind} to sparse{why}")
        return sparse


def eligible_layers(mod: tvm.IRModule) -> list[Layer]:
    """The layers of ``mod`` the pass may rewrite, each once, in graph order."""
    found: dict[str, Layer] = {}

    def collect(layer):
        found.setdefault(layer.key, layer)
        return False

    mutate_functions(mod, lambda m, _f: _Rewrite(m, PassReport(), collect))
    return list(found.values())


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, report: PassReport, decide: Callable[[Layer], bool]):
        super().__init__(mod)
        self.report, self.decide = report, decide

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
        layer = self._dense(x, weight) if name == "relax.matmul" else self._conv(call, x, weight)
        if layer is None or not self.decide(layer):
            return call
        if layer.kind == "dense":
            return sparse_dense.emit_sparse_dense(self.builder_, x, weight)
        return sparse_conv.emit_sparse_conv2d(self.builder_, x, weight, layer.strides, layer.padding)

    @staticmethod
    def _dense(x, weight) -> Layer | None:
        if weight.ndim != 2 or len(tensor_shape(x)) < 2:
            return None
        return Layer("dense", tensor_shape(x), weight)

    @staticmethod
    def _conv(call, x, weight) -> Layer | None:
        a = call.attrs
        if (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") != ("NCHW", "OIHW", "NCHW") \
                or int(a["groups"]) != 1 or any(int(d) != 1 for d in a["dilation"]):
            return None
        g = sparse_conv.geometry(tensor_shape(x), weight.shape, [int(s) for s in a["strides"]],
                                 [int(p) for p in a["padding"]])
        return Layer("conv 1x1" if (g.kh, g.kw) == (1, 1) else "conv kxk", tensor_shape(x), weight, g.strides,
                     g.padding)
