"""Depthwise conv2d (groups = channels, channel multiplier 1) in the blocked layout NCHW[b]c, kernel
OIHW1i[b]o (shape ``(C/b, 1, kh, kw, 1, b)``):

    out[n, c/b, y, x, c%b] = Σ_{ky, kx} pad(data)[n, c/b, y·sh + ky·dh, x·sw + kx·dw, c%b]
                                      · kernel[c/b, 0, ky, kx, 0, c%b]

Each lane reads only its own channel: no reduction across lanes, so a vector of b channels is one
FMA per kernel tap.
"""

from __future__ import annotations

import re

from tvm import relax, te

from .conv2d_nchwc import window

BLOCK = "depthwise_conv2d_nchwc"
_KERNEL = re.compile(r"^OIHW1i(\d+)o$")


def is_blocked_depthwise(call: relax.Call) -> bool:
    """Whether the blocked ``relax.nn.conv2d`` ``call`` is depthwise with multiplier 1: data and
    output NCHW[b]c, kernel OIHW1i[b]o, groups = channels."""
    a = call.attrs
    kernel = _KERNEL.match(a.kernel_layout)
    if kernel is None or a.data_layout != f"NCHW{kernel[1]}c" or a.out_layout != a.data_layout:
        return False
    data_shape, kernel_shape = call.args[0].ty.shape.values, call.args[1].ty.shape.values
    chunks, block = int(data_shape[1]), int(data_shape[4])
    return int(a.groups) == chunks * block and int(kernel_shape[0]) == chunks


def depthwise_conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation,
                           out_dtype: str) -> te.Tensor:
    n, chunks, _, _, block = (int(d) for d in data.shape)
    k_chunks, one_o, kh, kw, one_i, k_block = (int(d) for d in kernel.shape)
    assert (k_chunks, one_o, one_i, k_block) == (chunks, 1, 1, block), "depthwise, channel multiplier 1"
    out_h, out_w, ry, rx, read = window(data, (kh, kw), strides, padding, dilation)
    return te.compute(
        (n, chunks, out_h, out_w, block),
        lambda b, c, y, x, lane: te.sum(read(b, c, y, x, lane).astype(out_dtype)
                                        * kernel[c, 0, ry, rx, 0, lane].astype(out_dtype), axis=[ry, rx]),
        name=BLOCK)
