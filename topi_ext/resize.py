"""Bilinear resize2d in two separable passes, NCHW or NCHW[x]c, for vector CPUs.

TVM's resize2d computes every output from its four input pixels, with both coordinates' floor, clamp
and weight per output; along the output width each vector lane then gathers from computed columns.
Bilinear interpolation is separable, and TVM's value is already nested as two lerps,

    out[y, x] = lerp(lerp(in[y0, x0], in[y0, x1], wx), lerp(in[y1, x0], in[y1, x1], wx), wy)

so the inner lerp is computed once per input row and output column (``rows``, H·W' values), and the
outer one per output from two whole rows of it (contiguous along x: vector loads, one weight a row):

    rows[iy, x] = lerp(in[iy, x0(x)], in[iy, x1(x)], wx(x))
    out[y, x]   = lerp(rows[y0(y), x], rows[y1(y), x], wy(y))

with the coordinates, clamps and weights of TVM's ``topi.image.resize2d`` (the same float32
expressions, so the same values). Linear method, coordinate modes half_pixel, pytorch_half_pixel,
align_corners and asymmetric, float32; other resizes legalize as TVM does.
"""

from __future__ import annotations

import re

import tvm
from tvm import relax, te
from tvm.topi.image.resize import get_inx

ROWS = "resize_rows"
COLS = "resize_cols"
MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
_LAYOUT = re.compile(r"^NCHW(\d+c)?$")


def _lerp(a, b, t):
    """TVM's 1-D linear interpolation, ``a·(1 − t) + b·t``."""
    return a * (1.0 - t) + b * t


def _source(out_index, in_size: int, out_size: int, mode: str):
    """The two input indices (clamped to the map) and the weight of the second, for output ``out_index``."""
    pos = get_inx(out_index, tvm.tirx.const(in_size, "int32"), tvm.tirx.const(out_size, "int32"), mode)
    base = te.floor(pos).astype("int32")
    first = te.max(te.min(base, in_size - 1), 0)
    second = te.max(te.min(base + 1, in_size - 1), 0)
    return first, second, pos - base


def resize2d_separable(data: te.Tensor, out_h: int, out_w: int, mode: str) -> te.Tensor:
    """``data`` (N, C, H, W) or (N, C/b, H, W, b) resized bilinearly to (out_h, out_w)."""
    n, c, h, w, *lanes = (int(d) for d in data.shape)

    def rows(b, ch, iy, x, *lane):
        x0, x1, wx = _source(x, w, out_w, mode)
        return _lerp(data[(b, ch, iy, x0, *lane)], data[(b, ch, iy, x1, *lane)], wx)

    horizontal = te.compute((n, c, h, out_w, *lanes), rows, name=ROWS)

    def cols(b, ch, y, x, *lane):
        y0, y1, wy = _source(y, h, out_h, mode)
        return _lerp(horizontal[(b, ch, y0, x, *lane)], horizontal[(b, ch, y1, x, *lane)], wy)

    return te.compute((n, c, out_h, out_w, *lanes), cols, name=COLS)


def applies(call: relax.Call) -> bool:
    """A bilinear float32 resize2d of static shape in NCHW or NCHW[x]c, in a mode :func:`resize2d_separable` has."""
    a = call.attrs
    data, size = call.args[0], call.args[1]
    mode = str(a.coordinate_transformation_mode)
    sizes = [int(v) for v in size.values] if isinstance(size, relax.ShapeExpr) else []
    return (str(a.method) == "linear" and mode in MODES and not (mode == "align_corners" and 1 in sizes)
            and _LAYOUT.match(str(a.layout)) is not None and isinstance(data.ty, relax.TensorType)
            and str(data.ty.dtype) == "float32" and str(call.ty.dtype) == "float32"
            and isinstance(size, relax.ShapeExpr) and all(isinstance(v, tvm.tirx.IntImm) for v in size.values)
            and data.ty.shape is not None and all(isinstance(v, tvm.tirx.IntImm) for v in data.ty.shape.values))


def legalize_resize2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """Legalize ``relax.image.resize2d``: :func:`resize2d_separable` where it :func:`applies`, else as TVM does."""
    if not applies(call):
        return tvm.ir.Op.get("relax.image.resize2d").get_attr("FLegalize")(bb, call)
    out_h, out_w = (int(v) for v in call.args[1].values)
    return bb.call_te(resize2d_separable, call.args[0], out_h, out_w, str(call.attrs.coordinate_transformation_mode),
                      primfunc_name_hint="resize2d_separable")
