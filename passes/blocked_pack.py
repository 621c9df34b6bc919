"""Bit packs that read a blocked conv directly (a build step of the CPU targets, like
:func:`reforge.passes.fuse_fplus.fplus_in_blocked_layout`).

A float conv before the first binary layer runs in NCHW[L]c; binarize packs its NCHW output, so the
blocked layout leaves ``bitpack(layout_transform(y))``. The pack then reads ``y`` itself, bit
``c`` of a pixel from ``y[n, c // L, h, w, c % L]``, and the transform (a full copy of the tensor)
is gone: ``pack(T(y)) = pack_blocked(y)`` for the transform ``T`` from NCHW[L]c to NCHW.
"""

from __future__ import annotations

import tvm
import tvm.sym
from tvm import relax

from reforge.topi_ext.bitserial import PACK_ATTR, emit_bitpack

from .graph import callee_attr, cleanup, mutate_functions, op_name, tensor_shape


def pack_in_blocked_layout(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite every NCHW bit pack of an NCHW[L]c -> NCHW ``layout_transform`` to pack the blocked tensor."""
    if not any(f.attrs is not None and PACK_ATTR in f.attrs for _, f in mod.functions_items()):
        return mod
    return cleanup(mutate_functions(mod, lambda m, _f: _PackBlocked(m)))


@relax.expr_functor.mutator
class _PackBlocked(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        info = callee_attr(self.builder_.get(), call, PACK_ATTR)  # the arguments the pack was made with
        if info is None or str(info["layout"]) != "NCHW":
            return call
        x = call.args[1].fields[0]
        lt = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if op_name(lt) != "relax.layout_transform" or not unblocks(lt):
            return call
        return emit_bitpack(self.builder_, lt.args[0], int(info["act_bits"]), str(info["word"]), "NCHWc",
                            bool(info["ternary"]))


def unblocks(lt: relax.Call) -> bool:
    """Whether ``lt`` maps ``[N, C/L, H, W, L]`` to ``[N, C, H, W]`` by ``(n, b, h, w, l) -> (n, b·L + l, h, w)``
    (proved on the index map's symbolic indices; no padded lanes)."""
    src, dst = tensor_shape(lt.args[0]), tensor_shape(lt)
    if src is None or dst is None or len(src) != 5 or dst != (src[0], src[1] * src[4], src[2], src[3]):
        return False
    return _maps_as(lt, lambda n, b, h, w, lane: [n, b * src[4] + lane, h, w])


def blocks(lt: relax.Call) -> bool:
    """Whether ``lt`` maps ``[N, C, H, W]`` to ``[N, C/L, H, W, L]`` by ``(n, c, h, w) -> (n, c // L, h, w, c % L)``."""
    src, dst = tensor_shape(lt.args[0]), tensor_shape(lt)
    if src is None or dst is None or len(dst) != 5 or src != (dst[0], dst[1] * dst[4], dst[2], dst[3]):
        return False
    return _maps_as(lt, lambda n, c, h, w: [n, tvm.tirx.floordiv(c, dst[4]), h, w, tvm.tirx.floormod(c, dst[4])])


def _maps_as(lt: relax.Call, expected) -> bool:
    """Whether the index map of ``lt`` is ``expected`` (a function of the input indices), proved symbolically."""
    index_map = lt.attrs.index_map
    indices = list(index_map.initial_indices)
    if len(indices) != len(tensor_shape(lt.args[0])):
        return False
    mapped, want = index_map.map_indices(indices), expected(*indices)
    analyzer = tvm.sym.Analyzer()
    return len(mapped) == len(want) and all(analyzer.can_prove_equal(got, w) for got, w in zip(mapped, want))
