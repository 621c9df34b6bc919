"""binarize's packed pooling: bits that stay packed between a thresholded layer and the next binary one.

- max pooling of a thresholded conv's output runs on the packed bits, an OR of the window
  (``max(y) >= 0`` iff some ``y >= 0``); any other pool stays float and its output is packed;
- a binary dense after the NCHW flattening of such packed bits (channels a multiple of the word)
  reads the NHWC words as they are: its weight's input features are permuted at compile time instead.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from reforge.topi_ext import bitserial as bs

from .binary_activations import ActivationReader
from .binary_threshold import Thresholds
from .graph import op_name, tensor_shape


class PackedPool:
    """Packed bits of ``x >= 0`` computed without unpacking; ``report`` counts ``pools`` and ``flattens``."""

    def __init__(self, reader: ActivationReader, thresholds: Thresholds, bb: relax.BlockBuilder, word: str, report):
        self.reader, self.thresholds, self.bb, self.word, self.report = reader, thresholds, bb, word, report

    def fused(self, x, layout: str = "NCHW", depth: int = 0):
        """The packed bits of ``x >= 0`` computed without unpacking, or None: ``x`` is (a sign of)
        a rewritten conv's (layout NCHW) or dense's (NC) ``dot·α [+ b]`` (threshold), or a max pooling
        of such a conv output (``max(y) >= 0`` iff some ``y >= 0``: an OR of the bits)."""
        x = self.reader.peel(x)
        fused = self.thresholds.emit(x, layout)
        if fused is not None or depth > 8 or layout != "NCHW":
            return fused
        value = self.reader.value(x)
        if op_name(value) == "relax.nn.max_pool2d":
            a = value.attrs
            if (a["layout"] == "NCHW" and (a["out_layout"] or "NCHW") == "NCHW" and not a["ceil_mode"]
                    and all(int(p) == 0 for p in a["padding"]) and all(int(d) == 1 for d in a["dilation"])):
                inner = self.fused(value.args[0], layout, depth + 1)
                if inner is not None:
                    self.report.pools += 1
                    return bs.emit_bitpool(self.bb, inner, [int(p) for p in a["pool_size"]],
                                           [int(p) for p in a["strides"]])
        return None

    def flat(self, x):
        """``(packed [N, 1, H·W·CW], perm)`` when ``x`` is (a sign of) the NCHW flattening of a tensor
        :meth:`fused` keeps packed (NHWC bits, C a multiple of the word): the dense reads those words
        directly, with its weight's input features permuted from ``c·H·W + y·W + x`` to
        ``(y·W + x)·C + c``."""
        x = self.reader.peel(x)
        value = self.reader.value(x)
        if op_name(value) not in ("relax.reshape", "relax.flatten"):
            return None
        src, out = tensor_shape(value.args[0]), tensor_shape(x)
        if (src is None or out is None or len(src) != 4 or out != (src[0], src[1] * src[2] * src[3])
                or src[1] % bs.word_bits(self.word)):
            return None
        packed = self.fused(value.args[0])
        if packed is None:
            return None
        n, c, h, w = src
        flat = self.bb.emit(relax.op.reshape(packed, [n, 1, h * w * bs.num_words(c, self.word)]))
        self.report.flattens += 1
        return flat, np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
