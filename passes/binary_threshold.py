"""binarize's threshold fusion: the ±1 sign of a rewritten layer's float epilogue becomes that layer's
integer threshold.

A rewritten binary conv / dense computes an integer dot product d and the float epilogue
``fl(fl(α·d) + b)``. Where the next binary layer's input is a ±1 ``sign`` of that expression, the
epilogue and the pack become ``bit = d >= thr[o]`` (or ``<`` where ``flip[o]``): the thresholds come
from evaluating the graph's own float expression at every integer candidate d in [-bound, bound]
(kernel_algebra.binary_thresholds), so they are exact by construction. A ``sign`` whose expression
is exactly 0 at some integer d (a tie) is not ±1 (``Sign(0) = 0``): it stays a float epilogue
packed ternary (reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from reforge.topi_ext import bitserial as bs

from . import kernel_algebra as ka
from .binary_activations import ActivationReader
from .graph import channel_vector, const_value, is_const, op_name, tensor_shape


@dataclass
class Layer:
    """A rewritten binary conv / dense: what a following threshold needs to emit it again."""

    packed: relax.Expr  # packed input [N, H, W, B, CW] (conv) or [N, B, KW] (dense)
    signs: np.ndarray  # ±1 OIHW (conv) or [M, K] (dense)
    alpha: np.ndarray  # the float epilogue's scale per output channel
    bound: int  # the dot products lie in [-bound, bound]
    ternary: bool
    strides: tuple = ()  # conv only
    padding: tuple = ()
    signed: bool = False  # k-bit planes of a two's complement


class Thresholds:
    """The layers rewritten so far (keyed by their float output ``dot·α``, NCHW) and the thresholds
    of signs of them. ``report`` is the pass's BinarizeReport (notes, ``thresholds`` counted)."""

    def __init__(self, reader: ActivationReader, bb: relax.BlockBuilder, report):
        self.reader, self.bb, self.report = reader, bb, report
        self.layers: dict[relax.Var, Layer] = {}

    def of(self, x) -> tuple[Layer, np.ndarray] | None:
        """``(layer, b)`` when ``x`` is a rewritten layer's ``dot·α [+ b]`` (b per output channel)."""
        value, bias = self.reader.value(x), None
        src = x
        if op_name(value) == "relax.add" and is_const(value.args[1]):
            src, bias = value.args[0], const_value(value.args[1])
        layer = self.layers.get(self.reader.var(src))
        shape = tensor_shape(x)
        if layer is None or shape is None:
            return None
        b = np.zeros(len(layer.alpha), "float32")
        if bias is not None:
            b = channel_vector(bias, shape, 1)
            if b is None or bias.dtype != np.float32:
                return None
        return layer, b

    def nonzero(self, expr, depth: int = 0) -> bool:
        """Whether ``expr`` provably holds no exact 0: a ``where(x >= 0, 1, -1)`` (STE or not), a sign of
        such a tensor, a max pool / reshape of one, or a rewritten layer's ``dot·α + b`` whose float
        expression is nonzero at every integer dot product (then its sign is a threshold)."""
        if depth > 16:
            return False
        found = self.reader.sign_of(expr)
        if found is not None:
            return found[1].startswith("where") or self.nonzero(found[0], depth + 1)
        value = self.reader.value(expr)
        if op_name(value) in ("relax.nn.max_pool2d", "relax.reshape", "relax.flatten"):
            return self.nonzero(value.args[0], depth + 1)
        fused = self.of(expr)
        if fused is None:
            return False
        layer, b = fused
        if ka.threshold_ties(layer.alpha, b, layer.bound):
            self.report.note("a BatchNorm + sign whose float expression is exactly 0 at some integer dot product "
                             "stays a float epilogue with a ternary pack (Sign(0) = 0)")
            return False
        return True

    def emit(self, x, layout: str):
        """The layer behind ``x`` emitted again with the integer threshold of ``sign(dot·α + b)`` as its
        epilogue (``bit = d >= thr``, found by evaluating the float expression at every integer d);
        a tie (exactly 0) counts as +1, which is right for the spellings that reach here (a ``where``,
        or a sign :meth:`nonzero` proved tie-free). None when ``x`` is not such a layer's output."""
        fused = self.of(x)
        if fused is None or (layout == "NC") != (not fused[0].strides):
            return None
        layer, b = fused
        thr, flip = ka.binary_thresholds(layer.alpha, b, layer.bound)
        self.report.thresholds += 1
        flip = flip if flip.any() else None
        if layout == "NC":
            return bs.emit_bitserial_dense(self.bb, layer.packed, layer.signs, ternary=layer.ternary,
                                           threshold=thr, flip=flip, signed=layer.signed)
        return bs.emit_bitserial_conv2d(self.bb, layer.packed, layer.signs, layer.strides, layer.padding,
                                        threshold=thr, flip=flip, ternary=layer.ternary, signed=layer.signed)
