"""fold-channel-tile: Rep-BNN's RepConv rule (Shi et al., Rep-BNN, 2022).

A conv reading a channel tile ``tile_β(x)`` (``repeat`` / ONNX ``Tile`` along channels, or a
``concat`` of the same tensor β times) reads β copies of x, each through its own input-channel
slice ``W_k`` of the kernel, so the tile never needs to exist:

    conv(tile_β(x), W)              =  conv(x, Σ_k W_k)
    conv(tile_β(x)·S + T, W)        =  conv(x, Σ_k W_k·S_k) + Σ W·T           unpadded conv
                                    =  conv(x + t, Σ_k W_k·S_k)               when T_k = t·S_k for every copy
                                    =  conv(x, Σ_k W_k·S_k) + B               zero-padding conv, any T

with ``B[o, y, x] = Σ W[o, i, p, q]·T[i]`` over the taps of output (y, x) that land inside the
image (the zero-padded border is not shifted: ``pad₀(z + T) ≠ pad₀(z) + T``): a constant
``(1, O, H', W')`` bias, the per-channel ``Σ W·T`` in the interior and less at the border.

Per-channel affine ops (constant multiply / add / subtract / divide, a lone BatchNorm after
fold-batchnorm) between the tile and the conv are folded this way: scales into the slices before
summing, shifts into the bias when the conv does not pad, moved ahead of the tile when they are the
same input shift for every copy, else into the bias map B. Anything else per copy between tile and
conv (ReActNet's learnable bias before ``sign``) stays, and the report says so.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, topi

from . import kernel_algebra as ka
from .activations import ACTIVATION_OPS
from .analysis import graph_stats
from .graph import (channel_const, channel_vector, cleanup, const, const_value, emit_conv, is_const, mutate_functions,
                    op_name, read_linear, tensor_dtype, tensor_shape)
from .report import BlockReport

FOLDED = "channel tiles folded into a conv"
BORDER = " with a border-corrected bias map"  # per-copy shifts before a zero-padding conv
_AFFINE = ("relax.multiply", "relax.add", "relax.subtract", "relax.divide")
_PER_COPY = (*ACTIVATION_OPS, "relax.sign", "relax.round", "relax.floor", "relax.ceil")
_MAX_DEPTH = 16


@tvm.transform.module_pass(opt_level=0, name="reforge.fold-channel-tile")
class FoldChannelTile:
    """Fold a channel tile (and per-channel affines after it) into the conv that reads it."""

    def __init__(self):
        self.report = BlockReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report.before = graph_stats(mod)
        mod = cleanup(mutate_functions(mod, lambda m, f: _Fold(m, self.report)))
        self.report.after = graph_stats(mod)
        return mod


@relax.expr_functor.mutator
class _Fold(relax.PyExprMutator):
    def __init__(self, mod, report: BlockReport):
        super().__init__(mod)
        self.mod, self.report = mod, report

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        new = self._fold(call) if op_name(call) == "relax.nn.conv2d" else None
        return call if new is None else new

    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _fold(self, call: relax.Call) -> relax.Expr | None:
        conv = read_linear(call)
        if conv is None:
            return None
        shape = tensor_shape(conv.data)
        affine, expr = [], conv.data
        for _ in range(_MAX_DEPTH):  # per-channel affines between the tile and the conv, last first
            value = self._bound(expr)
            step = _affine_step(value, shape)
            if step is None:
                break
            affine.insert(0, step)
            expr = step[2]
        tiled = self._tile(expr)
        if tiled is None:
            self._refuse_per_copy(expr)
            return None
        x, beta = tiled
        if conv.groups != 1:
            self.report.refuse("kept a channel tile read by a grouped conv")
            return None
        channels = shape[1] // beta
        scale, shift = np.ones(shape[1]), np.zeros(shape[1])
        for op, c, _ in affine:
            if op == "relax.multiply":
                scale, shift = scale * c, shift * c
            elif op == "relax.divide":
                scale, shift = scale / c, shift / c
            else:
                shift = shift + c if op == "relax.add" else shift - c
        weight = ka.scale_conv_inputs(conv.weight, scale, 1)
        summed = weight.reshape(weight.shape[0], beta, channels, *weight.shape[2:]).sum(axis=1)
        bias, data, border = conv.bias, x, None
        if np.any(shift) and not any(conv.padding):
            bias = bias + ka.conv_bias_of_input_shift(conv.weight, shift, 1)
        elif np.any(shift):
            t = _common_input_shift(scale.reshape(beta, channels), shift.reshape(beta, channels))
            if t is not None:
                data = relax.op.add(x, channel_const(t, 4, 1, tensor_dtype(x)))
            else:  # copies shifted differently before a zero-padding conv: the bias map B
                border = bias[:, None, None] + ka.conv_bias_map_of_input_shift(
                    conv.weight, shift, shape[2:], conv.strides, conv.padding, conv.dilation)
                bias = np.zeros_like(bias)
        self.report.count(FOLDED + (BORDER if border is not None else ""))
        out = emit_conv(replace(conv, data=data, weight=summed, bias=bias))
        return out if border is None else relax.op.add(out, const(border[None], conv.dtype))

    def _tile(self, expr) -> tuple[relax.Expr, int] | None:
        """``(x, β)`` if ``expr`` is x tiled β times along channels (NCHW), else None."""
        value = self._bound(expr)
        name, out = op_name(value), tensor_shape(expr)
        if out is None or len(out) != 4:
            return None
        if name == "relax.concat" and int(value.attrs["axis"]) in (1, -3) and isinstance(value.args[0], relax.Tuple):
            fields = value.args[0].fields
            if len(fields) > 1 and all(f.same_as(fields[0]) for f in fields):
                return fields[0], len(fields)
            return None
        if name == "relax.tile":
            x = value.args[0]
        elif name == "relax.call_tir" and self._is_topi_tile(value):
            x = value.args[1].fields[0]
            inner = self._bound(x)  # the ONNX importer broadcasts the input to its own shape first
            if op_name(inner) == "relax.broadcast_to" and tensor_shape(inner.args[0]) == tensor_shape(x):
                x = inner.args[0]
        else:
            return None
        shape = tensor_shape(x)
        if shape is None or len(shape) != 4 or shape[1] == 0 or out[1] % shape[1] \
                or (out[0], out[2], out[3]) != (shape[0], shape[2], shape[3]):
            return None
        return x, out[1] // shape[1]

    def _is_topi_tile(self, call: relax.Call) -> bool:
        """A ``call_tir`` to a PrimFunc that is exactly ``topi.tile`` of its input (ONNX ``Tile``)."""
        gv, args = call.args[0], call.args[1]
        if not isinstance(gv, tvm.ir.GlobalVar) or not isinstance(args, relax.Tuple) or len(args.fields) != 1:
            return False
        func = self.mod[gv] if gv in self.mod.functions else None
        src, out = tensor_shape(args.fields[0]), tensor_shape(call)
        if func is None or src is None or out is None or len(src) != len(out) or any(o % s for o, s in zip(out, src)):
            return False
        bb = relax.BlockBuilder()  # build topi.tile the way the ONNX importer does, and compare
        x = relax.Var("x", relax.TensorType(src, tensor_dtype(args.fields[0])))
        with bb.function("main", [x]):
            out_var = bb.emit_te(topi.tile, x, [o // s for o, s in zip(out, src)])
            bb.emit_func_output(out_var)
        expected = bb.get()[bb.get()["main"].body.blocks[0].bindings[0].value.args[0]]
        return tvm_ffi.structural_equal(func.body, expected.body, map_free_vars=True)

    def _refuse_per_copy(self, expr) -> None:
        """A note when a tile reaches the conv only through ops that act on each copy (not foldable)."""
        ops = []
        for _ in range(_MAX_DEPTH):
            value = self._bound(expr)
            name = op_name(value)
            if name not in _PER_COPY + _AFFINE:
                break
            ops.append(name.removeprefix("relax."))
            expr = value.args[0]
            if self._tile(expr) is not None:
                self.report.refuse(f"kept a channel tile: {' -> '.join(reversed(ops))} between it and the conv "
                                   "is not a per-channel affine")
                return


def _affine_step(value, shape) -> tuple[str, np.ndarray, relax.Expr] | None:
    """``(op, c, y)`` if ``value`` is ``y op c`` with a constant per-channel ``c`` (NCHW)."""
    name = op_name(value)
    if name not in _AFFINE:
        return None
    a, b = value.args
    if is_const(b) and not is_const(a):
        data, c = a, b
    elif name in ("relax.multiply", "relax.add") and is_const(a) and not is_const(b):
        data, c = b, a
    else:
        return None
    vec = channel_vector(const_value(c), shape, 1)
    if vec is None or tensor_shape(data) != shape:
        return None
    return name, vec.astype(np.float64), data


def _common_input_shift(scale: np.ndarray, shift: np.ndarray) -> np.ndarray | None:
    """``t`` with ``shift[k] = t·scale[k]`` for every copy k (rows), or None."""
    if np.any((scale == 0) & (shift != 0)):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scale != 0, shift / np.where(scale != 0, scale, 1), np.nan)
    t = np.nanmax(np.where(np.isnan(ratio), -np.inf, ratio), axis=0)
    t = np.where(np.isfinite(t), t, 0.0)
    ok = np.isnan(ratio) | np.isclose(ratio, t[None, :], rtol=1e-6, atol=0)
    return t if ok.all() else None
