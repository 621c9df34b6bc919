"""conv2d in the blocked layout NCHW[x]c with kernel OIHW[x]i[y]o, for vector CPUs.

    out[n, o/ob, y, x, o%ob] = Σ_{c, ky, kx} pad(data)[n, c/ib, y·sh + ky·dh, x·sw + kx·dw, c%ib]
                                          · kernel[o/ob, c/ib, ky, kx, c%ib, o%ob]

Keeping the input-channel chunk and lane as separate reduction axes (``ico``, ``ici``) lets the
schedule put the output-channel lane innermost (one vector FMA per input element) without
index arithmetic. groups = 1 only; grouped convs stay in NCHW.
"""

from __future__ import annotations

import re

from tvm import relax, te, topi

BLOCK = "conv2d_nchwc"
_BLOCKED = re.compile(r"^NCHW(\d+)c$")
_BLOCKED_KERNEL = re.compile(r"^OIHW(\d+)i(\d+)o$")


def conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation, out_dtype: str) -> te.Tensor:
    n, ic_chunks, height, width, ib = (int(d) for d in data.shape)
    oc_chunks, k_chunks, kh, kw, kib, ob = (int(d) for d in kernel.shape)
    assert (k_chunks, kib) == (ic_chunks, ib), "groups must be 1"
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    if top or left or bottom or right:
        data = topi.nn.pad(data, (0, 0, top, left, 0), (0, 0, bottom, right, 0), name="data_pad")
    ico = te.reduce_axis((0, ic_chunks), "ico")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ici = te.reduce_axis((0, ib), "ici")
    return te.compute(
        (n, oc_chunks, out_h, out_w, ob),
        lambda b, oco, y, x, oci: te.sum(
            data[b, ico, y * sh + ry * dh, x * sw + rx * dw, ici].astype(out_dtype)
            * kernel[oco, ico, ry, rx, ici, oci].astype(out_dtype),
            axis=[ico, ry, rx, ici]),
        name=BLOCK)


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """Legalize ``relax.nn.conv2d``: blocked layouts to :func:`conv2d_nchwc`, the rest as TVM does."""
    a = call.attrs
    data, kernel = _BLOCKED.match(a.data_layout), _BLOCKED_KERNEL.match(a.kernel_layout)
    if data is None or kernel is None or a.out_layout != f"NCHW{kernel[2]}c" or int(a.groups) != 1:
        return _tvm_default(bb, call)
    out_dtype = a.out_dtype if a.out_dtype is not None and str(a.out_dtype) not in ("", "void") \
        else call.args[0].ty.dtype
    return bb.call_te(conv2d_nchwc, call.args[0], call.args[1], a.strides, a.padding, a.dilation, str(out_dtype),
                      primfunc_name_hint="conv2d_nchwc")


def _tvm_default(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    from tvm.relax.transform.legalize_ops import nn as tvm_nn

    return tvm_nn._nn_conv2d(bb, call)
