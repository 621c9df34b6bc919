"""fold-constants and dead-code: TVM's own passes, wrapped to report what they removed."""

from __future__ import annotations

import tvm
from tvm import relax

from .constant_moves import fold_constants
from .graph import ops_histogram
from .report import PassReport


def _removed_calls(before: tvm.IRModule, after: tvm.IRModule) -> int:
    return sum(ops_histogram(before).values()) - sum(ops_histogram(after).values())


@tvm.transform.module_pass(opt_level=0, name="reforge.fold-constants")
class FoldConstants:
    """Evaluate every operator whose inputs are all constants at compile time (data movement in
    numpy, the rest by TVM's ``FoldConstant``)."""

    def __init__(self):
        self.report = PassReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        new = fold_constants(mod)
        self.report.count("calls evaluated", _removed_calls(mod, new))
        return new


@tvm.transform.module_pass(opt_level=0, name="reforge.dead-code")
class DeadCode:
    """Remove bindings and functions whose results are never used."""

    def __init__(self):
        self.report = PassReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        canonical = relax.transform.CanonicalizeBindings()(mod)  # aliases go; they are not dead code
        new = relax.transform.DeadCodeElimination()(canonical)
        self.report.count("bindings removed", _bindings(canonical) - _bindings(new))
        return new


def _bindings(mod: tvm.IRModule) -> int:
    """Variable bindings in ``main`` (calls, tuple items such as an unused Dropout mask, constants)."""
    return sum(len(block.bindings) for block in mod["main"].body.blocks)
