"""One IRModule from a model compiled at several static batches (the batch buckets of ``--max-batch``).

Each bucket's module went through reforge's static-shape passes on its own; here their functions are
put side by side: batch 1's under their own names, so its ``main`` is exactly the static artifact's,
batch b's with the suffix ``_b{b}``. Identical PrimFuncs are kept once, and the weights are too: the
VM's constant pool keeps one copy of equal constants, and the buckets' folded and pre-packed weights
are equal (tests/reforge/test_dynamic_batch.py checks the size of ``model.so``)."""

from __future__ import annotations

import tvm
from tvm import relax

from .batching import suffix


@relax.expr_functor.mutator
class _GlobalVarRenamer(relax.PyExprMutator):
    def __init__(self, mapping: dict):
        super().__init__()
        self.mapping = mapping

    def visit_global_var_(self, op):
        return self.mapping.get(op, op)


def merge_buckets(modules: dict[int, tvm.IRModule]) -> tvm.IRModule:
    """The functions of every bucket's module (batch -> module) in one module, named with the
    bucket's :func:`reforge.batching.suffix`."""
    bb = relax.BlockBuilder()
    for batch, mod in sorted(modules.items()):
        mapping, relax_funcs = {}, []
        for gv, func in mod.functions.items():
            name = gv.name_hint + suffix(batch)
            if "global_symbol" in (func.attrs or {}):
                func = func.with_attr("global_symbol", name)
            mapping[gv] = bb.add_func(func, name)
            if isinstance(func, relax.Function):
                relax_funcs.append((mapping[gv], func))
        for new_gv, func in relax_funcs:  # calls now name the bucket's own (or shared) functions
            bb.update_func(new_gv, _GlobalVarRenamer(mapping).visit_expr(func))
    return bb.get()
