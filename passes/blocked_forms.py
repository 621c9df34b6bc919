"""Operators respelled so that TVM's ``ConvertLayout`` carries the blocked layout NCHW[x]c through them
(build steps of the CPU targets, one just before it, one just after). TVM 0.27 gives some operators
no layout inference (``clip``, ``leakyrelu``, ``take``, a channel-last island's ``permute_dims``), infers others
wrongly for blocked channels (``split``) or fails on them (``layer_norm`` and ``mean`` over
channels); each would leave a ``layout_transform`` pair around it, a full copy of the tensor each
way, and split the elementwise chain a conv's epilogue fuses.

:func:`in_blocked_forms` (before): clip as maximum / minimum; channel shuffles as one ``take``;
ConvNeXt's channels-last island in NCHW; LayerNorm over channels as one kernel; channel splits as
slices; leaky ReLU as maximum. :func:`channel_moves_in_blocked_layout` (after): channel slices, concats, takes and norms
of blocked tensors done on the blocked tensor."""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, te, tirx

from reforge.topi_ext.channel_norm import OP as CHANNEL_NORM
from reforge.topi_ext.channel_norm import emit_channel_layer_norm

from .blocked_pack import blocks, unblocks
from .graph import (callee_attr, channel_slice, cleanup, const_value, mutate_functions, op_name, tensor_shape,
                    tuple_ints)


def in_blocked_forms(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite the operators of every Relax function of ``mod`` into forms with layout inference."""
    return mutate_functions(mod, lambda m, _f: _BlockedForms(m))


@relax.expr_functor.mutator
class _BlockedForms(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        rewrites = [rewrite for ops, rewrite in (
            (("relax.divide",), self._mean_layer_norm),
            (_CHANNELS_LAST_OPS, self._channels_first),
            (_MOVES, self._channel_permutation),
            (("relax.take", "relax.strided_slice"), self._channels_of_channels),
            (("relax.clip",), lambda c: _clip(self.builder_, c)),
            (("relax.nn.leakyrelu",), lambda c: _leaky_relu(self.builder_, c)),
            (("relax.split",), lambda c: _channel_split(self.builder_, c))) if name in ops]
        for rewrite in rewrites:  # the first that applies
            new = rewrite(call)
            if not new.same_as(call):
                return new
        return call

    def _channel_permutation(self, call: relax.Call) -> relax.Expr:
        """A chain of reshapes and transposes from a 4-D tensor back to its own shape that only reorders
        its channels (the channel shuffle of ShuffleNet: reshape to (N, g, C/g, H, W), swap the two
        channel axes, reshape back) as ``take(x, perm, axis=1)``: one copy, not three; the blocked
        layout then reads it as a gather of blocked channels (:func:`channel_moves_in_blocked_layout`).
        The permutation is found by running the chain on the element indices of ``x``."""
        chain, x = [call], call.args[0]
        while isinstance(x, relax.Var) and op_name(self.lookup_binding(x)) in _MOVES:
            chain.append(self.lookup_binding(x))
            x = chain[-1].args[0]
        end = [int(d) for d in call.args[1]] if op_name(call) == "relax.reshape" else None
        for i in range(len(chain) - 1, 0, -1):  # the longest chain first: from the earliest source
            source = chain[i].args[0]
            shape = [int(d) for d in source.ty.shape] if getattr(source.ty, "shape", None) is not None else None
            if shape is None or len(shape) != 4 or shape != end or math.prod(shape) > _MAX_TRACED:
                continue
            perm = _traced_channel_permutation(shape, chain[i::-1])
            if perm is not None:
                return relax.op.take(source, relax.const(perm, "int64"), axis=1)
        return call

    def _nhwc_of(self, expr) -> relax.Expr | None:
        """``x`` if ``expr`` is bound to ``permute_dims(x, [0, 2, 3, 1])`` of a 4-D ``x`` (NCHW -> NHWC)."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if op_name(bound) != "relax.permute_dims" or bound.attrs.axes is None:
            return None
        return bound.args[0] if [int(a) for a in bound.attrs.axes] == [0, 2, 3, 1] else None

    def _channels_first(self, call: relax.Call) -> relax.Expr:
        """ConvNeXt's channels-last island, ``permute → LayerNorm → Linear → GELU → Linear → ·γ →
        permute``, in NCHW: the permute to NHWC sinks through each operator, rewritten for channels on
        axis 1 (a matmul by a constant as a 1×1 conv, a last-axis constant as a ``(1, C, 1, 1)`` one,
        the LayerNorm as :mod:`reforge.topi_ext.channel_norm`), until the permute back cancels it."""
        name, bb = op_name(call), self.builder_
        x = self._nhwc_of(call.args[0])
        if name == "relax.permute_dims":
            back = call.attrs.axes is not None and [int(a) for a in call.attrs.axes] == [0, 3, 1, 2]
            return x if x is not None and back else call
        if name == "relax.nn.layer_norm":
            over_channels = [int(a) % 4 for a in call.attrs.axes] == [3]
            if x is None or not over_channels or not (call.attrs.center and call.attrs.scale):
                return call
            return _nhwc(emit_channel_layer_norm(bb, x, call.args[1], call.args[2], float(call.attrs.epsilon)))
        if name == "relax.matmul":
            w = const_value(call.args[1])
            if x is None or w is None or w.ndim != 2:
                return call
            kernel = relax.const(np.ascontiguousarray(w.T[:, :, None, None]), str(w.dtype))
            return _nhwc(bb.emit(relax.op.nn.conv2d(x, kernel)))
        if name in _UNARY:
            return call if x is None else _nhwc(bb.emit(relax.Call(call.op, [x, *call.args[1:]], call.attrs)))
        permuted = [self._nhwc_of(a) for a in call.args]
        if all(p is None for p in permuted):
            return call
        operands = [_channel_first_const(a) if p is None else p for a, p in zip(call.args, permuted)]
        if any(o is None for o in operands):
            return call
        return _nhwc(bb.emit(relax.Call(call.op, operands, call.attrs)))

    def _mean_layer_norm(self, call: relax.Call) -> relax.Expr:
        """``(x − mean_c x) / √(mean_c (x − mean_c x)² + ε)`` (LayerNorm over channels written with ReduceMean,
        as ConvNeXt's channels-first LayerNorm is) as :mod:`reforge.topi_ext.channel_norm` with γ = 1,
        β = 0 (the affine after it stays elementwise)."""
        num, den = (self._bound(a) for a in call.args)
        centered = _centered(self._bound, num)
        if centered is None or op_name(den) != "relax.sqrt":
            return call
        x, mean = centered
        shifted = self._bound(den.args[0])
        eps = const_value(shifted.args[1]) if op_name(shifted) == "relax.add" else None
        var = self._bound(shifted.args[0]) if eps is not None and eps.size == 1 else None
        if not _is_channel_mean(var):
            return call
        square = self._bound(var.args[0])
        if op_name(square) == "relax.power" and _scalar_is(square.args[1], 2.0):
            sides = [square.args[0]]
        elif op_name(square) == "relax.multiply":
            sides = list(square.args)
        else:
            return call
        if any(_centered(self._bound, self._bound(side)) != (x, mean) for side in sides):
            return call
        channels = int(tensor_shape(x)[1])
        dtype = str(x.ty.dtype)
        return emit_channel_layer_norm(self.builder_, x, relax.const(np.ones(channels, dtype)),
                                       relax.const(np.zeros(channels, dtype)), float(eps.reshape(())))

    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _channels_of_channels(self, call: relax.Call) -> relax.Expr:
        """A channel selection of a channel selection as one: ``take(take(x, p), q) = take(x, p[q])``,
        ``take(x, p)[:, lo:hi] = take(x, p[lo:hi])`` (ShuffleNet-V2 splits its shuffled channels)."""
        inner = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
        p = _channel_indices(inner)
        if p is None:
            return call
        if op_name(call) == "relax.take":
            q = _channel_indices(call)
            return call if q is None else relax.op.take(inner.args[0], relax.const(p[q], "int64"), axis=1)
        kept = channel_slice(call)
        return call if kept is None else relax.op.take(inner.args[0], relax.const(p[kept.start:kept.stop], "int64"),
                                                       axis=1)


def channel_moves_in_blocked_layout(mod: tvm.IRModule) -> tvm.IRModule:
    """After ``ConvertLayout``: channel slices, concats and selections (``take``) of blocked tensors done
    in the blocked layout. TVM 0.27 unblocks a slice's input even on block boundaries, and ``take``
    has no layout inference, so each left an ``unblock`` (NCHW[L]c -> NCHW) before it and a ``block``
    after it. The unblock sinks below them, where the next block cancels it:

        slice(unblock(y), channels [lo, hi))  ->  unblock(y[:, lo/L : hi/L])    lo, hi multiples of L
        slice(unblock(y), rows / columns)       ->  unblock(slice(y))
        concat(unblock(y1), unblock(y2), ...)  ->  unblock(concat(y1, y2, ...))  all in NCHW[L]c
        resize2d(unblock(y)) read by a block or such a concat  ->  unblock(resize2d_blocked(y))
        take(unblock(y), p, axis=1)            ->  unblock(gather(y, p))         len(p) a multiple of L
        block_M(take(unblock(y), p, axis=1))   ->  gather_M(y, p)                 into another block M
        block_M(unblock(gather(y, p)))         ->  gather_M(y, p)                 (any other z: gather_M(z, all))
        pad(unblock(y)) by rows / columns       ->  unblock(pad(y))               zeros, channels unpadded
        channel_layer_norm(unblock(y))         ->  unblock(channel_layer_norm(y))
        block_L(unblock_L(z))                  ->  z

    with ``gather(y, p)[n, c/L, h, w, c%L] = y[n, p[c]/L, h, w, p[c]%L]`` (a channel shuffle: one copy, not three).
    """
    return cleanup(mutate_functions(mod, lambda m, _f: _BlockedMoves(m)))


@relax.expr_functor.mutator
class _BlockedMoves(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.gathers: dict[relax.Var, tuple[relax.Expr, np.ndarray]] = {}  # a gather -> (its source, channels)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        if name == "relax.strided_slice":
            return self._slice(call)
        if name == "relax.concat":
            return self._concat(call)
        if name == "relax.take":
            return self._take(call)
        if name == "relax.nn.pad":
            return self._pad(call)
        if name == "relax.call_tir" and callee_attr(self.builder_.get(), call, "reforge.op") == CHANNEL_NORM:
            return self._layer_norm(call)
        if name == "relax.layout_transform" and blocks(call):
            y = self._unblocked_or_resized(call.args[0])
            if y is not None and tensor_shape(y) == tensor_shape(call):
                return y
            return self._take_between_blocks(call)
        return call

    def _unblocked_or_resized(self, expr) -> relax.Expr | None:
        """``y`` if ``expr`` is bound to ``unblock(y)``; the blocked resize of ``y`` if it is bound to
        ``resize2d(unblock(y))`` in NCHW (TVM gives a blocked resize no layout inference; DeepLab's
        pooled branch): ``resize(unblock(y)) = unblock(resize_blocked(y))``, emitted only where a block or a
        concat of blocked tensors reads it, so an output's resize still reads the small map."""
        y = self._unblocked(expr)
        bound = self.lookup_binding(expr) if y is None and isinstance(expr, relax.Var) else None
        if op_name(bound) != "relax.image.resize2d" or str(bound.attrs.layout) != "NCHW":
            return y
        y = self._unblocked(bound.args[0])
        if y is None:
            return None
        a = bound.attrs
        return self.builder_.emit(relax.op.image.resize2d(
            y, bound.args[1], [float(r) for r in a.roi], f"NCHW{int(tensor_shape(y)[4])}c", a.method,
            a.coordinate_transformation_mode, a.rounding_method, float(a.cubic_alpha), int(a.cubic_exclude),
            float(a.extrapolation_value), a.out_dtype))

    def _unblocked(self, expr) -> relax.Expr | None:
        """``y`` if ``expr`` is bound to ``unblock(y)``."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        return bound.args[0] if op_name(bound) == "relax.layout_transform" and unblocks(bound) else None

    def _unblock(self, y: relax.Expr) -> relax.Expr:
        lanes = int(tensor_shape(y)[4])
        return relax.op.layout_transform(y, lambda n, b, h, w, lane: (n, b * lanes + lane, h, w))

    def _slice(self, call):
        y = self._unblocked(call.args[0])
        if y is None:
            return call
        axes = tuple_ints(call.args[1])
        if axes and all(a in (0, 2, 3) for a in axes):
            # rows / columns (drop-padding-taps' input windows): the same axes of the blocked tensor
            return self._unblock(self.builder_.emit(relax.op.strided_slice(y, *call.args[1:])))
        kept = channel_slice(call)
        if not kept:
            return call
        lanes = int(tensor_shape(y)[4])
        if kept.start % lanes or kept.stop % lanes:
            return call
        sliced = self.builder_.emit(relax.op.strided_slice(y, [1], [kept.start // lanes], [kept.stop // lanes]))
        return self._unblock(sliced)

    def _pad(self, call):
        """A zero pad of the spatial axes (drop-padding-taps places each term of a split conv with one)."""
        y = self._unblocked(call.args[0])
        widths = [int(w) for w in call.attrs.pad_width]
        if y is None or len(widths) != 8 or any(widths[:4]) or str(call.attrs.pad_mode) != "constant" \
                or float(call.attrs.pad_value) != 0.0:
            return call
        return self._unblock(self.builder_.emit(relax.op.nn.pad(y, [*widths, 0, 0])))

    def _concat(self, call):
        parts = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else None
        if parts is None or int(call.attrs.axis) % 4 != 1:
            return call
        blocked = [self._unblocked_or_resized(p) for p in parts]
        if any(y is None for y in blocked) or len({int(tensor_shape(y)[4]) for y in blocked}) != 1:
            return call
        return self._unblock(self.builder_.emit(relax.op.concat(blocked, axis=1)))

    def _take(self, call):
        y, indices = self._unblocked(call.args[0]), _channel_indices(call)
        if y is None or indices is None or len(indices) % int(tensor_shape(y)[4]):
            return call
        return self._unblock(self._gather(y, indices, int(tensor_shape(y)[4])))


    def _take_between_blocks(self, call):
        """A move from L-blocks to M-blocks as one gather: ``block_M(take(unblock_L(y), p))`` (a shuffle
        between two classes of other blocks: ShuffleNet-V2's 232-channel stage reading the 16-blocked one
        before it) and ``block_M(unblock_L(z))``, ``z`` itself a gather of ``y`` or any tensor."""
        z = self._unblocked(call.args[0])
        if z is not None:
            y, indices = self.gathers.get(z, (z, np.arange(tensor_shape(call.args[0])[1])))
        else:
            bound = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
            indices = _channel_indices(bound)
            y = self._unblocked(bound.args[0]) if indices is not None else None
        if y is None:
            return call
        return self._gather(y, indices, int(tensor_shape(call)[4]))

    def _gather(self, y: relax.Expr, indices: np.ndarray, lanes: int) -> relax.Var:
        """Channels ``indices`` of the blocked ``y``, in blocks of ``lanes``."""
        gathered = self.builder_.emit_te(_blocked_gather, y, relax.const(indices.astype("int32"), "int32"), lanes,
                                         primfunc_name_hint="channel_permutation")
        self.gathers[gathered] = (y, indices)
        return gathered

    def _layer_norm(self, call):
        x, gamma, beta = call.args[1].fields
        y = self._unblocked(x)
        if y is None:
            return call
        eps = float(callee_attr(self.builder_.get(), call, "reforge.eps"))
        return self._unblock(emit_channel_layer_norm(self.builder_, y, gamma, beta, eps))


def _blocked_gather(y: te.Tensor, indices: te.Tensor, out_lanes: int) -> te.Tensor:
    """``out[n, c/M, h, w, c%M] = y[n, p[c]/L, h, w, p[c]%L]``: channels ``p`` of L-blocked ``y``, M-blocked."""
    n, _, h, w, lanes = y.shape

    def at(i, b, r, c, lane):
        p = indices[b * out_lanes + lane]
        return y[i, tirx.floordiv(p, lanes), r, c, tirx.floormod(p, lanes)]

    return te.compute((n, indices.shape[0] // out_lanes, h, w, out_lanes), at, name="channel_permutation")


def _clip(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``clip(x, lo, hi) = minimum(maximum(x, lo), hi)`` (ReLU6, hardswish, hardsigmoid): binary operators
    with a scalar, which keep their input's layout; an infinite bound is no operator."""
    x, dtype = call.args[0], call.args[0].ty.dtype
    lo, hi = (float(bound.value) for bound in call.args[1:3])
    if lo > -np.inf:
        x = bb.emit(relax.op.maximum(x, relax.const(lo, dtype)))
    if hi < np.inf:
        x = relax.op.minimum(x, relax.const(hi, dtype))
    return x


def _leaky_relu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``leakyrelu(x, α) = maximum(x, α·x)`` for 0 ≤ α ≤ 1 (``minimum`` for α > 1; CSPNet's, YOLO's
    activation): the same products and selection, in binary operators that keep their input's layout
    (TVM 0.27 gives ``leakyrelu`` no layout inference); a negative α stays as it is."""
    x, alpha = call.args[0], float(call.attrs.alpha)
    if alpha < 0:
        return call
    scaled = bb.emit(relax.op.multiply(x, relax.const(alpha, x.ty.dtype)))
    return relax.op.maximum(x, scaled) if alpha <= 1 else relax.op.minimum(x, scaled)


def _channel_split(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """TVM 0.27's ConvertLayout keeps a channel split's indices in channels when the channel axis
    becomes blocked: split(x, [6], axis=1) on x of two 6-channel blocks became blocks [0:6] and
    [6:2], a negative extent that crashed the build (found by the fuzzer). A channel split becomes
    one strided slice per output, whose layout inference is right (a slice not on block boundaries
    reads NCHW)."""
    x = call.args[0]
    shape = [int(d) for d in x.ty.shape] if getattr(x.ty, "shape", None) is not None else None
    if shape is None or len(shape) != 4 or int(call.attrs.axis) % 4 != 1:
        return call
    parts = call.attrs.indices_or_sections
    if isinstance(parts, tvm.tirx.IntImm):
        step = -(-shape[1] // int(parts))
        bounds = list(range(0, shape[1], step)) + [shape[1]]
    else:
        bounds = [0, *(min(max(int(i), 0), shape[1]) for i in parts), shape[1]]
    return relax.Tuple([bb.emit(relax.op.strided_slice(x, axes=[1], begin=[lo], end=[hi]))
                        for lo, hi in zip(bounds, bounds[1:])])


def _centered(bound, call) -> tuple[relax.Expr, relax.Expr] | None:
    """``(x, m)`` if ``call`` is ``x − m`` with ``m = mean_c x`` (``mean(x, axis=1, keepdims=True)``, x 4-D);
    ``bound`` maps a variable to the expression bound to it."""
    if op_name(call) != "relax.subtract":
        return None
    x, m = call.args
    mean = bound(m)
    return (x, m) if _is_channel_mean(mean) and mean.args[0].same_as(x) else None


def _is_channel_mean(call) -> bool:
    if op_name(call) != "relax.mean" or call.attrs.axis is None or not call.attrs.keepdims:
        return False
    shape = tensor_shape(call.args[0])
    return shape is not None and len(shape) == 4 and [int(a) % 4 for a in call.attrs.axis] == [1]


def _scalar_is(expr, value: float) -> bool:
    c = const_value(expr)
    return c is not None and c.size == 1 and float(c.reshape(())) == value


def _nhwc(x: relax.Expr) -> relax.Expr:
    return relax.op.permute_dims(x, [0, 2, 3, 1])


def _channel_first_const(expr) -> relax.Expr | None:
    """A constant that broadcasts along the last axis of an NHWC tensor, for its NCHW counterpart: a
    scalar as it is, a vector of C as ``(1, C, 1, 1)``; None for anything else."""
    value = const_value(expr)
    if value is None or value.ndim > 4:
        return None
    if value.size == 1:
        return expr
    full = value.reshape((1,) * (4 - value.ndim) + value.shape)
    if full.shape[:3] != (1, 1, 1):
        return None
    return relax.const(np.ascontiguousarray(full.reshape(1, -1, 1, 1)), str(value.dtype))


def _channel_indices(call) -> np.ndarray | None:
    """The constant channel indices of ``take(x, indices, axis=1)`` on a 4-D ``x``, else None."""
    if op_name(call) != "relax.take" or int(call.attrs.axis) != 1 or len(tensor_shape(call.args[0]) or ()) != 4:
        return None
    indices = const_value(call.args[1])
    return indices if indices is not None and indices.ndim == 1 else None


def _traced_channel_permutation(shape: list[int], chain: list[relax.Call]) -> np.ndarray | None:
    """``perm`` with ``chain(x) = x[:, perm]`` for every ``x`` of ``shape``, else None."""
    ids = np.arange(math.prod(shape)).reshape(shape)
    out = ids
    for op in chain:
        out = (out.reshape([int(d) for d in op.args[1]]) if op_name(op) == "relax.reshape"
               else out.transpose([int(a) for a in op.attrs.axes]))
    if list(out.shape) != shape:
        return None
    perm = out[0, :, 0, 0] // (shape[2] * shape[3]) % shape[1]
    return perm if np.array_equal(out, ids[:, perm]) else None


_MOVES = ("relax.reshape", "relax.permute_dims")
_UNARY = ("relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.nn.relu", "relax.sigmoid", "relax.tanh",
          "relax.erf", "relax.exp", "relax.sqrt", "relax.rsqrt", "relax.negative")
_BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
           "relax.power")
_CHANNELS_LAST_OPS = ("relax.permute_dims", "relax.nn.layer_norm", "relax.matmul", *_UNARY, *_BINARY)
_MAX_TRACED = 1 << 22  # elements of a chain traced to find its channel permutation
