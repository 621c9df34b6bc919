"""complex-conv: a complex convolution written as four real convs becomes one real conv.

Harmonic Networks and Deep Complex Networks convolve ``x = xr + i·xi`` with ``W = Wr + i·Wi``:

    yr = conv(xr, Wr) − conv(xi, Wi)
    yi = conv(xr, Wi) + conv(xi, Wr)       =  concat(yr, yi) = conv(concat(xr, xi), [[Wr, −Wi], [Wi, Wr]])

with biases ``br − b'`` and ``b'' + b'''`` of the four convs. Any four kernels in that 2×2 layout
merge the same way (``[[A, −B], [C, D]]``), so the pass reads the block, not the weight sharing;
the report tells complex blocks (C = B, D = A) from general ones. ``xr`` and ``xi`` may be separate
tensors (concatenated once) or the two channel halves of one (read directly); a concat of the
results along channels becomes the merged conv's output itself. The four convs must share kernel
size, strides, padding and dilation and be ungrouped; a block that does not, or whose partial
products are read elsewhere, stays and the report says why. Multiply-adds are unchanged
(4·O·C·k² either way); one conv replaces four launches and three elementwise ops.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import relax

from . import kernel_algebra as ka
from .analysis import graph_stats
from .graph import (Conv, channel_vector, cleanup, const_value, emit_conv, is_const, mutate_functions, op_name,
                    read_linear, tensor_shape, use_counts)
from .report import BlockReport

COMPLEX, BLOCK = "complex convs merged", "2×2 conv blocks merged"


@tvm.transform.module_pass(opt_level=0, name="reforge.complex-conv")
class ComplexConv:
    """Merge ``conv(xr, A) − conv(xi, B)``, ``conv(xr, C) + conv(xi, D)`` into one conv over ``concat(xr, xi)``."""

    def __init__(self):
        self.report = BlockReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report.before = graph_stats(mod)
        mod = cleanup(mutate_functions(mod, lambda m, f: _Merge(m, _blocks(f, self.report))))
        self.report.after = graph_stats(mod)
        return mod


# ----------------------------------------------------------------------------- pattern


@dataclass(frozen=True)
class _Block:
    """``real = a − b``, ``imag = c + d``; ``a``, ``c`` read ``xr`` and ``b``, ``d`` read ``xi``."""

    real: relax.Call
    imag: relax.Call
    a: Conv
    b: Conv
    c: Conv
    d: Conv


def _term(bindings: dict, var) -> Conv | None:
    """``conv2d(x, W) [+ bias]`` bound to ``var``, as a ``Conv`` with its bias."""
    value = bindings.get(var)
    bias = None
    if op_name(value) == "relax.add" and is_const(value.args[1]) and not is_const(value.args[0]):
        bias, value = const_value(value.args[1]), bindings.get(value.args[0])
    conv = read_linear(value) if op_name(value) == "relax.nn.conv2d" else None
    if conv is None or bias is None:
        return conv
    vec = channel_vector(bias, tensor_shape(value), 1)
    return None if vec is None else replace(conv, bias=vec.astype(np.float64))


def _geometry(c: Conv) -> tuple:
    return c.weight.shape, c.strides, c.padding, c.dilation, c.groups, c.dtype


def _blocks(func: relax.Function, report: BlockReport) -> list[_Block]:
    """The 2×2 conv blocks of ``func`` that merge; the others are refused into ``report``."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    uses = use_counts(func)
    pairs = {name: [(v, [_term(bindings, arg) for arg in v.args]) for v in bindings.values()
                    if op_name(v) == name and tensor_shape(v) is not None]
             for name in ("relax.subtract", "relax.add")}
    found, taken = [], set()
    for real, (a, b) in pairs["relax.subtract"]:
        if a is None or b is None or a.data.same_as(b.data):
            continue
        for imag, (c, d) in pairs["relax.add"]:
            if c is None or d is None or imag in taken:
                continue
            c, d = (c, d) if c.data.same_as(a.data) else (d, c)
            if not (c.data.same_as(a.data) and d.data.same_as(b.data)):
                continue
            taken.add(imag)
            terms = [*real.args, *imag.args]
            if len({_geometry(t) for t in (a, b, c, d)}) > 1:
                report.refuse("complex conv: the four convs differ in kernel size, channels, strides, padding or "
                              "dilation")
            elif a.groups != 1:
                report.refuse("complex conv: grouped convs")
            elif tensor_shape(a.data) != tensor_shape(b.data):
                report.refuse("complex conv: real and imaginary inputs differ in shape")
            elif any(uses.get(t, 0) != 1 for t in terms):
                report.refuse("complex conv: a partial product is read elsewhere")
            else:
                found.append(_Block(real, imag, a, b, c, d))
                shared = np.array_equal(c.weight, b.weight) and np.array_equal(d.weight, a.weight)
                report.count(COMPLEX if shared else BLOCK)
            break
    return found


# ----------------------------------------------------------------------------- rewrite


@relax.expr_functor.mutator
class _Merge(relax.PyExprMutator):
    """Emit each block's conv at its first output; both outputs become channel slices of it."""

    def __init__(self, mod, blocks: list[_Block]):
        super().__init__(mod)
        self.blocks, self.merged = blocks, {}

    def visit_call_(self, call):
        for i, blk in enumerate(self.blocks):
            for half, out in enumerate((blk.real, blk.imag)):
                if call.same_as(out):
                    return self._slice(self._conv(i, blk), half, blk.a.weight.shape[0])
        call = self.visit_expr_post_order(call)
        if op_name(call) == "relax.concat" and int(call.attrs["axis"]) == 1:
            whole = _whole(self, list(call.args[0].fields))
            if whole is not None and any(whole.same_as(y) for y in self.merged.values()):
                return whole
        return call

    def _conv(self, i: int, blk: _Block) -> relax.Var:
        if i not in self.merged:
            xr, xi = self.visit_expr(blk.a.data), self.visit_expr(blk.b.data)
            x = _whole(self, [xr, xi])
            x = self.builder_.emit(relax.op.concat([xr, xi], axis=1)) if x is None else x
            w = ka.block_kernel([[blk.a.weight, -blk.b.weight], [blk.c.weight, blk.d.weight]])
            bias = np.concatenate([blk.a.bias - blk.b.bias, blk.c.bias + blk.d.bias])
            self.merged[i] = self.builder_.emit(emit_conv(replace(blk.a, data=x, weight=w, bias=bias)))
        return self.merged[i]

    def _slice(self, y: relax.Var, half: int, out_ch: int) -> relax.Expr:
        return relax.op.strided_slice(y, axes=[1], begin=[half * out_ch], end=[(half + 1) * out_ch])


# ----------------------------------------------------------------------------- channel slices


def _ints(expr) -> list[int]:
    return [int(f.value) for f in expr.fields] if isinstance(expr, relax.Tuple) else [int(v) for v in expr.values]


def _whole(mutator: relax.PyExprMutator, parts: list) -> relax.Expr | None:
    """The tensor ``t`` when ``parts`` are stride-1 channel slices of it covering it in order."""
    source, at = None, 0
    for part in parts:
        value = mutator.lookup_binding(part) if isinstance(part, relax.Var) else None
        if op_name(value) != "relax.strided_slice" or (source is not None and not value.args[0].same_as(source)):
            return None
        source = value.args[0]
        axes, begin, end = (_ints(a) for a in value.args[1:4])
        strides = _ints(value.args[4]) if len(value.args) > 4 else [1]
        dim = tensor_shape(source)[1]
        lo, hi = (min(v + dim if v < 0 else v, dim) for v in (begin[0], end[0]))
        if axes != [1] or strides != [1] or lo != at or hi <= lo:
            return None
        at = hi
    return source if source is not None and at == tensor_shape(source)[1] else None
