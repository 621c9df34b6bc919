"""Channel counts with no good block padded with zero channels (a step of the blocked layout,
:func:`reforge.build.blocked_layout`, before the channel blocks are chosen).

A tensor of C channels runs in blocks of the largest divisor of C at most the lanes
(:func:`reforge.topi_ext.layouts.channel_block`): ShuffleNet-V2's 58 = 2·29 and 116 = 4·29 channel halves
admit blocks of 2 and 4, so their 1×1 and depthwise convs run nearly scalar on 16 lanes. Here a conv whose
output's block is below half the lanes writes ``padded(C)`` channels instead (the next multiple of the lanes,
where that costs at most a quarter more), the extra ones exactly zero: their weight rows are zero, and every
operator carrying them maps zero to zero.

Each padded tensor ``s`` stands for a logical tensor ``x`` through its channel positions ``p``:
``x[:, c] = s[:, p[c]]``, every channel of ``s`` not in ``p`` zero. Through the operators that keep zeros:

    conv2d(x, W)            conv2d(s, W')     W'[o, p[i]] = W[o, i], zero columns elsewhere (and zero rows
                                              past C where the output is padded)
    depthwise(x, w)         depthwise(s, w')  w'[p[c]] = w[c], zero elsewhere; positions p
    x ∘ y, x ∘ k            s ∘ t, s ∘ k'     ∘ in + − × max min ÷, y of the same positions; a constant's
                                              channels scattered to p, the rest 0 (or 1) where ∘(0, that) = 0
    f(x)                    f(s)              f(0) = 0: ReLU, SiLU, GELU, tanh, erf, −x; pooling, spatial mean
    concat(x1, x2, ...)     concat(s1, s2, ...)    positions p1, S1 + p2, ...
    take(x, q) / x[:, a:b]  take(s, p[q] + zeros)  a channel selection (ShuffleNet's shuffle and split, as
                                              :mod:`.blocked_forms` spells them): a gather of the stored channels,
                                              padded again with a zero channel where it is itself a bad count

Any other reader gets the logical tensor back, ``take(s, p)`` (a slice where ``p`` is a range). Exact: the
real channels see the same arithmetic; only zeros are added to the sums. A conv output (or a selection) is
padded only where every reader carries the zero channels on to a conv or a selection (not one writing the
output, or read by a sigmoid: there the zero channels would be sliced off at once).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext.layouts import channel_block

from .graph import (bindings, channel_const, channel_slice, channel_vector, cleanup, const, const_value, mutate_functions,
                    op_name, tensor_shape)

MAX_GROWTH = 1.25  # a padded count at most this many times the channels (58 -> 64, 116 -> 128; not 20 -> 32)
EVEN_GROWTH = 1.0625  # an odd vector count made even within this (1000 -> 1024; 232 -> 240, not 256)

_ZERO_KEEPING = ("relax.nn.relu", "relax.nn.silu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.tanh", "relax.erf",
                 "relax.negative")
_POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")
_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
           "relax.divide": np.divide, "relax.maximum": np.maximum, "relax.minimum": np.minimum}


def padded_channels(channels: int, lanes: int) -> int | None:
    """The channel count a conv writing ``channels`` is padded to: the next multiple of ``lanes`` where ``channels``
    has no block of the full lanes and that multiple is at most ``MAX_GROWTH`` times it and fewer times it than the
    lanes over its block's vector width (:func:`block_vector_width`), so the padded conv does less vector work;
    else None. An odd number of vectors grows by one more where that adds at most ``EVEN_GROWTH``: a conv tile of two
    channel vectors then fits (SqueezeNet's 1000 classes: 1024, not 1008; its 1×1 conv 512 → 1000 at 13², AVX-512,
    1 thread: 1.3 ms against 3.85 with one-vector tiles)."""
    block = channel_block(channels, lanes)
    if block == lanes:
        return None
    padded = -(-channels // lanes) * lanes
    if padded > MAX_GROWTH * channels or padded * block_vector_width(block) >= lanes * channels:
        return None
    if padded // lanes % 2 and padded // lanes > 1 and padded + lanes <= EVEN_GROWTH * channels:
        return padded + lanes
    return padded


def block_vector_width(block: int) -> int:
    """The lanes a block of ``block`` channels runs at: the largest power of two at most ``block``. LLVM splits a
    vector of another width into power-of-two pieces (a block of 11 on 16 lanes: 8 + 2 + 1 loads a weight vector),
    so it runs no faster than that (a 1×1 conv of 440 channels at 7², 1 thread: blocks of 11 0.73x blocks of 8)."""
    return 1 << (block.bit_length() - 1)


def narrow_block(channels: int, lanes: int) -> bool:
    """Whether ``channels`` has no block of half the lanes: padded wherever its readers carry zeros. A wider block
    (a block of 11 or 8 on 16 lanes) is padded only where no reader needs the real channels gathered back out
    of the large tensor (:func:`pad_channels`): that copy costs more than the lanes gain."""
    return channel_block(channels, lanes) < max(lanes // 2, 2)


def pad_channels(mod: tvm.IRModule, lanes: int) -> tvm.IRModule:
    """Pad the channels of every Relax function of ``mod`` whose convs write counts with no good block.

    A conv whose count has a block of half the lanes or more is left unpadded where a reader of a tensor its
    zero channels reach (other than a spatial mean's small result) needs the real channels back (an add with a
    tensor that is not padded alike, a concat gathered back): the pass runs again without it until none does."""
    funcs = [f for _, f in mod.functions_items() if isinstance(f, relax.Function)]
    if not any(_pads(b.value, lanes) for func in funcs for b in bindings(func)):
        return mod
    unpaid: set = set()
    while True:
        found: set = set()
        padded = mutate_functions(mod, lambda m, f: _PadChannels(m, f, lanes, unpaid, found))
        if not found - unpaid:
            return cleanup(padded)
        unpaid |= found


def _pads(call, lanes: int) -> bool:
    return _conv_weight(call) is not None and padded_channels(int(tensor_shape(call)[1]), lanes) is not None


def _conv_weight(call) -> np.ndarray | None:
    """The constant OIHW kernel of an NCHW conv2d ``call``, else None."""
    if op_name(call) != "relax.nn.conv2d" or tensor_shape(call) is None:
        return None
    a = call.attrs
    if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout or "NCHW")) != ("NCHW", "OIHW", "NCHW"):
        return None
    return const_value(call.args[1])


class _Padded:
    """A stored tensor (``var``) standing for a logical one through its channel ``positions``; ``origins``: the
    convs of wide blocks (:func:`narrow_block`) whose zero channels it carries."""

    def __init__(self, var: relax.Expr, positions: np.ndarray, origins: frozenset = frozenset()):
        self.var, self.positions, self.origins = var, positions, origins

    @property
    def stored(self) -> int:
        return int(tensor_shape(self.var)[1])

    def zero_channel(self) -> int | None:
        """A stored channel that is always zero, or None."""
        free = np.setdiff1d(np.arange(self.stored), self.positions)
        return int(free[0]) if free.size else None


@relax.expr_functor.mutator
class _PadChannels(relax.PyExprMutator):
    def __init__(self, mod, func: relax.Function, lanes: int, unpaid: set, found: set):
        super().__init__(mod)
        self.lanes, self.carriers, self.current = lanes, _carriers(func), None
        self.unpaid, self.found = unpaid, found  # wide-block convs left unpadded; those found needing a gather back
        self.origins: frozenset = frozenset()  # of the binding being rewritten
        self.padded: dict[relax.Var, _Padded] = {}  # original var -> its padded form
        self.logical: dict[relax.Var, relax.Var] = {}  # original var -> its logical tensor, once a reader needs it

    def visit_var_binding_(self, binding):
        value, var = binding.value, binding.var
        self.current = var
        result = self._rewrite(value) if isinstance(value, relax.Call) and isinstance(var, relax.DataflowVar) else None
        if result is None:
            super().visit_var_binding_(binding)
            return
        expr, positions = result
        new = self.builder_.emit(expr, name_hint=var.name)
        if int(tensor_shape(new)[1]) == len(positions) and np.array_equal(positions, np.arange(len(positions))):
            self.logical[var] = new  # no zero channels (a conv reading padded channels, writing a good count)
        else:
            args = [f for a in value.args for f in (a.fields if isinstance(a, relax.Tuple) else [a])]
            origins = self.origins.union(*(self.padded[a].origins for a in args
                                           if isinstance(a, relax.Var) and a in self.padded))
            self.padded[var] = _Padded(new, positions, origins)

    def visit_dataflow_var_(self, var):
        if var in self.padded or var in self.logical:
            if var not in self.logical:
                p = self.padded[var]
                pooled = [int(d) for d in tensor_shape(p.var)[2:]] == [1, 1]  # a gather of C values: the slice
                # would join the tensors' channel blocks (1024 and 1000 in blocks of 8, not 16)
                if not pooled:
                    self.found |= p.origins  # a gather of the real channels out of a large tensor
                self.logical[var] = self.builder_.emit(_select(p.var, p.positions, gather=pooled), name_hint=var.name)
            return self.logical[var]
        return super().visit_dataflow_var_(var)

    # -- one rewrite per operator kind: (the stored expression, its positions), or None (left as it is)

    def _rewrite(self, call: relax.Call):
        self.origins = frozenset()
        name = op_name(call)
        if name == "relax.nn.conv2d":
            return self._conv(call)
        if name in _BINARY:
            return self._binary(call, _BINARY[name])
        if _keeps_zero_channels(call) and name != "relax.concat":
            p = self.padded.get(call.args[0])
            return None if p is None else (relax.Call(call.op, [p.var, *call.args[1:]], call.attrs), p.positions)
        if name == "relax.concat":
            return self._concat(call)
        if name in ("relax.take", "relax.strided_slice"):
            return self._selection(call)
        return None

    def _conv(self, call):
        w = _conv_weight(call)
        if w is None:
            return None
        x, out = call.args[0], int(tensor_shape(call)[1])
        p, a = self.padded.get(x), call.attrs
        groups = int(a.groups)
        if groups == 1:
            target = self._padded_count(out)
            if p is None and target is None:
                return None
            data = self.visit_expr(x) if p is None else p.var
            columns = np.arange(w.shape[1]) if p is None else p.positions
            kernel = np.zeros((target or out, int(tensor_shape(data)[1]), *w.shape[2:]), w.dtype)
            kernel[:out, columns] = w
        elif p is not None and groups == out == w.shape[0] == len(p.positions) and w.shape[1] == 1:  # depthwise
            data, groups = p.var, p.stored
            kernel = np.zeros((groups, *w.shape[1:]), w.dtype)
            kernel[p.positions] = w
        else:
            return None
        conv = relax.op.nn.conv2d(data, const(kernel, str(w.dtype)), strides=a.strides, padding=a.padding,
                                  dilation=a.dilation, groups=groups, out_dtype=a.out_dtype)
        if groups > 1:
            return conv, p.positions
        return conv, np.arange(out)

    def _padded_count(self, channels: int) -> int | None:
        """The stored channels of the current result: padded where that pays and its readers keep them."""
        wide = not narrow_block(channels, self.lanes)
        if self.current not in self.carriers or (wide and self.current in self.unpaid):
            return None
        target = padded_channels(channels, self.lanes)
        if target is not None and wide:
            self.origins = frozenset([self.current])
        return target

    def _binary(self, call, fn):
        a, b = call.args
        pa, pb = self.padded.get(a), self.padded.get(b)
        if pa is not None and pb is not None:
            if pa.stored != pb.stored or not np.array_equal(pa.positions, pb.positions):
                return None
            return relax.Call(call.op, [pa.var, pb.var], call.attrs), pa.positions
        p, other = (pa, b) if pa is not None else (pb, a)
        value, shape = const_value(other), tensor_shape(call)
        if p is None or value is None or shape is None or len(shape) != 4:
            return None
        vec = channel_vector(value, shape, 1)
        if vec is None:
            return None
        first = pa is not None
        fill = _zero_fill(fn, value, first)
        if fill is None:
            return None
        if value.size == 1:
            k = other
        else:
            stored = np.full(p.stored, fill, value.dtype)
            stored[p.positions] = vec
            k = channel_const(stored, 4, 1, str(value.dtype))
        return relax.Call(call.op, [p.var, k] if first else [k, p.var], call.attrs), p.positions

    def _concat(self, call):
        parts = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else None
        if parts is None or int(call.attrs.axis) % 4 != 1 or not any(part in self.padded for part in parts):
            return None
        stored, positions, offset = [], [], 0
        for part in parts:
            p = self.padded.get(part)
            if p is None:
                if tensor_shape(part) is None:
                    return None
                p = _Padded(self.visit_expr(part), np.arange(tensor_shape(part)[1]))
            stored.append(p.var)
            positions.append(offset + p.positions)
            offset += p.stored
        return relax.op.concat(stored, axis=1), np.concatenate(positions)

    def _selection(self, call):
        p = self.padded.get(call.args[0])
        indices = _selected_channels(call)
        if p is None or indices is None or not indices.size:
            return None
        chosen = p.positions[indices]
        target, zero = self._padded_count(len(chosen)), p.zero_channel()
        if target is not None and zero is not None:
            chosen = np.concatenate([chosen, np.full(target - len(chosen), zero)])
        return _select(p.var, chosen), np.arange(len(indices))


def _selected_channels(call) -> np.ndarray | None:
    """The channels ``take(x, q, axis=1)`` (constant q) or a unit-stride channel slice of a 4-D ``x`` keeps."""
    if op_name(call) == "relax.strided_slice":
        kept = channel_slice(call)
        return None if kept is None or not kept else np.arange(kept.start, kept.stop)
    q = const_value(call.args[1])
    if len(tensor_shape(call.args[0]) or ()) != 4 or int(call.attrs.axis) % 4 != 1 or q is None or q.ndim != 1:
        return None
    return q.astype(np.int64)


def _select(x: relax.Expr, channels: np.ndarray, gather: bool = False) -> relax.Expr:
    """``x[:, channels]``: a slice where ``channels`` is a range (unless ``gather``), else a take."""
    first = int(channels[0])
    if not gather and np.array_equal(channels, np.arange(first, first + len(channels))):
        return relax.op.strided_slice(x, axes=[1], begin=[first], end=[first + len(channels)])
    return relax.op.take(x, relax.const(channels.astype(np.int64), "int64"), axis=1)


def _spatial_mean(call) -> bool:
    """``mean(x, axis=[2, 3], keepdims=True)`` of a 4-D ``x`` (global average pooling as ONNX spells it)."""
    if op_name(call) != "relax.mean" or call.attrs.axis is None or not call.attrs.keepdims:
        return False
    shape = tensor_shape(call.args[0])
    return shape is not None and len(shape) == 4 and sorted(int(a) % 4 for a in call.attrs.axis) == [2, 3]


def _zero_fill(fn, value: np.ndarray, padded_first: bool) -> float | None:
    """What a constant operand holds at the zero channels so that ``s ∘ k`` stays 0 there (``fn`` the
    operator, ``s`` its first operand where ``padded_first``): 0 or 1 for a per-channel constant, the scalar
    itself for a scalar; None where neither keeps 0 (x + 3, x / 0)."""

    def keeps_zero(fill: float) -> bool:
        with np.errstate(all="ignore"):
            return (fn(0.0, fill) if padded_first else fn(fill, 0.0)) == 0

    fills = [float(value.reshape(()))] if value.size == 1 else [0.0, 1.0]
    return next((f for f in fills if keeps_zero(f)), None)


def _keeps_zero_channels(call) -> bool:
    """Whether ``call`` maps zero channels of its tensor operands to zero channels of its result, channel
    for channel (the unary operators with f(0) = 0, pooling, a spatial mean, a channel concat)."""
    name = op_name(call)
    if name == "relax.concat":
        return int(call.attrs.axis) % 4 == 1
    return name in _ZERO_KEEPING or (name in _POOLS and str(call.attrs.layout) == "NCHW") or _spatial_mean(call)


def _carriers(func: relax.Function) -> set:
    """The variables every reader of which carries zero channels on: a conv (dense or depthwise), a channel
    selection, a global average pool (its readers slice one value a channel), or an operator keeping them whose
    result is itself such a variable. Only these are padded (a conv writing the output, or read by a sigmoid,
    would pay for channels that are sliced off at once)."""
    readers: dict = {}
    for binding in bindings(func):
        for var in relax.analysis.free_vars(binding.value):
            readers.setdefault(var, []).append(binding)
    carriers: set = set()
    for binding in reversed(bindings(func)):
        var = binding.var
        if isinstance(var, relax.DataflowVar) and var in readers \
                and all(_carries(reader, var, carriers) for reader in readers[var]):
            carriers.add(var)
    return carriers


def _carries(reader: relax.Binding, var: relax.Var, carriers: set) -> bool:
    call, name = reader.value, op_name(reader.value)
    if name is None:
        return False
    if name == "relax.nn.conv2d":
        w, groups = _conv_weight(call), int(call.attrs.groups)
        return w is not None and call.args[0].same_as(var) and w.shape[1] * groups == tensor_shape(var)[1] \
            and (groups == 1 or (w.shape[1] == 1 and groups == w.shape[0]))  # dense or depthwise
    if name in ("relax.take", "relax.strided_slice"):
        return call.args[0].same_as(var) and _selected_channels(call) is not None
    if _spatial_mean(call):
        return True  # one value a channel: a reader that is no carrier takes the real ones back for almost nothing
    if reader.var not in carriers:
        return False
    if name in _BINARY:
        other = call.args[1] if call.args[0].same_as(var) else call.args[0]
        value = const_value(other)
        return value is None or _zero_fill(_BINARY[name], value, call.args[0].same_as(var)) is not None
    return _keeps_zero_channels(call)
