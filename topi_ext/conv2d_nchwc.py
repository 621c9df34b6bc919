"""conv2d in the blocked layout NCHW[x]c with kernel OIHW[x]i[y]o, for vector CPUs.

    out[n, o/ob, y, x, o%ob] = Σ_{c, ky, kx} pad(data)[n, c/ib, y·sh + ky·dh, x·sw + kx·dw, c%ib]
                                          · kernel[o/ob, c/ib, ky, kx, c%ib, o%ob]

Keeping the input-channel chunk and lane as separate reduction axes (``ico``, ``ici``) lets the
schedule put the output-channel lane innermost (one vector FMA per input element) without
index arithmetic. groups = 1 here; depthwise convs (groups = channels) have their own blocked
compute (:mod:`.depthwise_nchwc`), other grouped convs theirs (:mod:`.grouped_nchwc`).
"""

from __future__ import annotations

import re

from tvm import relax, te, topi

from . import winograd_nchwc as winograd

BLOCK = "conv2d_nchwc"
BLOCKED_DATA = re.compile(r"^NCHW(\d+)c$")  # a blocked data layout: its lanes
BLOCKED_KERNEL = re.compile(r"^OIHW(\d+)i(\d+)o$")  # a blocked kernel layout: input, output lanes


def pad_nchwc(data: te.Tensor, padding) -> te.Tensor:
    """``data`` (N, C/b, H, W, b) zero-padded by ``padding`` = (top, left, bottom, right); as is if all 0."""
    top, left, bottom, right = (int(p) for p in padding)
    if not (top or left or bottom or right):
        return data
    return topi.nn.pad(data, (0, 0, top, left, 0), (0, 0, bottom, right, 0), name="data_pad")


def output_size(data: te.Tensor, kernel_hw: tuple[int, int], strides, padding, dilation) -> tuple[int, int]:
    """(out_h, out_w) of a conv over ``data`` (N, C/b, H, W, b): ⌊(H + pads − (k − 1)·d − 1) / s⌋ + 1."""
    height, width = int(data.shape[2]), int(data.shape[3])
    (kh, kw), (sh, sw), (dh, dw) = kernel_hw, (int(s) for s in strides), (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    return (height + top + bottom - (kh - 1) * dh - 1) // sh + 1, (width + left + right - (kw - 1) * dw - 1) // sw + 1


def window(data: te.Tensor, kernel_hw: tuple[int, int], strides, padding, dilation):
    """A kh×kw window over ``data`` (N, C/b, H, W, b): (out_h, out_w, ry, rx, read), the reduction axes of
    its taps and ``read(n, c, y, x, lane)`` = pad(data)[n, c, y·sh + ry·dh, x·sw + rx·dw, lane]."""
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    out_h, out_w = output_size(data, kernel_hw, strides, padding, dilation)
    padded = pad_nchwc(data, padding)
    ry, rx = te.reduce_axis((0, kernel_hw[0]), "ry"), te.reduce_axis((0, kernel_hw[1]), "rx")
    return out_h, out_w, ry, rx, lambda b, c, y, x, lane: padded[b, c, y * sh + ry * dh, x * sw + rx * dw, lane]


def conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation, out_dtype: str) -> te.Tensor:
    _, ic_chunks, _, _, ib = (int(d) for d in data.shape)
    _, k_chunks, _, _, kib, _ = (int(d) for d in kernel.shape)
    assert (k_chunks, kib) == (ic_chunks, ib), "groups must be 1"
    return blocked_conv(data, kernel, lambda _oco, ico: ico, strides, padding, dilation, out_dtype, BLOCK)


def blocked_conv(data: te.Tensor, kernel: te.Tensor, data_chunk, strides, padding, dilation, out_dtype: str,
                 name: str) -> te.Tensor:
    """The blocked conv of the module docstring, reading input chunk ``data_chunk(oco, ico)`` for output
    chunk oco and the kernel's input chunk ico (``ico`` for groups 1; :mod:`.grouped_nchwc`'s block groups)."""
    n, _, _, _, ib = (int(d) for d in data.shape)
    oc_chunks, k_chunks, kh, kw, _, ob = (int(d) for d in kernel.shape)
    out_h, out_w, ry, rx, read = window(data, (kh, kw), strides, padding, dilation)
    ico = te.reduce_axis((0, k_chunks), "ico")
    ici = te.reduce_axis((0, ib), "ici")
    return te.compute(
        (n, oc_chunks, out_h, out_w, ob),
        lambda b, oco, y, x, oci: te.sum(
            read(b, data_chunk(oco, ico), y, x, ici).astype(out_dtype)
            * kernel[oco, ico, ry, rx, ici, oci].astype(out_dtype),
            axis=[ico, ry, rx, ici]),
        name=name)


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """Legalize ``relax.nn.conv2d``: blocked layouts to :mod:`.winograd_nchwc` (3×3, stride 1, where
    it applies), :func:`conv2d_nchwc` (groups 1), :func:`depthwise_conv2d_nchwc` (groups =
    channels) or :func:`grouped_conv2d_nchwc` (other groups), the rest as TVM does."""
    from .depthwise_nchwc import depthwise_conv2d_nchwc, is_blocked_depthwise
    from .grouped_nchwc import grouped_compute, is_blocked_grouped

    a = call.attrs
    data, kernel = BLOCKED_DATA.match(a.data_layout), BLOCKED_KERNEL.match(a.kernel_layout)
    if data is None or kernel is None or a.out_layout != f"NCHW{kernel[2]}c":
        return _tvm_default(bb, call)
    out_dtype = call_out_dtype(call)
    if winograd.applies(call, out_dtype):
        u = relax.const(winograd.transform_kernel(call.args[1].value.numpy()))
        return bb.call_te(winograd.conv2d_winograd_nchwc, call.args[0], u, a.padding, out_dtype,
                          primfunc_name_hint="conv2d_winograd_nchwc")
    kernel = call.args[1]
    if int(a.groups) == 1:
        compute, name = conv2d_nchwc, "conv2d_nchwc"
    elif is_blocked_depthwise(call):
        compute, name = depthwise_conv2d_nchwc, "depthwise_conv2d_nchwc"
    elif is_blocked_grouped(call):
        (compute, kernel), name = grouped_compute(bb, call), "grouped_conv2d_nchwc"
    else:
        return _tvm_default(bb, call)
    return bb.call_te(compute, call.args[0], kernel, a.strides, a.padding, a.dilation, out_dtype,
                      primfunc_name_hint=name)


def call_out_dtype(call: relax.Call) -> str:
    """The call's ``out_dtype`` attribute, or its first argument's dtype where it leaves it unset."""
    out_dtype = call.attrs.out_dtype
    if out_dtype is None or str(out_dtype) in ("", "void"):
        return str(call.args[0].ty.dtype)
    return str(out_dtype)


def _tvm_default(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    from tvm.relax.transform.legalize_ops import nn as tvm_nn

    return tvm_nn._nn_conv2d(bb, call)
