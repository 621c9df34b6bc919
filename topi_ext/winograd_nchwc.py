"""3×3 conv2d (stride 1, dilation 1, groups 1) in NCHW[x]c by Winograd's minimal filtering F(2×2, 3×3)
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Each 2×2 output tile of
output channel k is

    Y = Aᵀ [ Σ_c (G g_{k,c} Gᵀ) ⊙ (Bᵀ d_c B) ] A

over the 4×4 input tile d_c of input channel c (tiles overlap by 2). U = G g Gᵀ is computed at
compile time; the sum over channels is 16 independent GEMMs, one per position ξ of the 4×4
transformed tile, ``M[ξ, k, tile] = Σ_c U[ξ, k, c] · V[ξ, c, tile]``: 16 multiply-adds per output
tile and channel pair where the direct conv spends 36. The transforms have entries 0, ±1 and ±½,
so the result differs from the direct conv by float rounding only (about 1e-6 relative).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx, topi

INPUT, GEMM, OUTPUT = "winograd_input", "winograd_gemm", "winograd_output"
MIN_CHANNELS = 32  # input and output channels from which it ran faster than the direct conv at 1 and 2 threads

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _bt(row, x):
    """Row ``row`` of Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] applied to x0..x3."""
    return tirx.Select(row == 0, x[0] - x[2],
                       tirx.Select(row == 1, x[1] + x[2], tirx.Select(row == 2, x[2] - x[1], x[1] - x[3])))


def _at(row, m):
    """Row ``row`` of Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] applied to m0..m3."""
    return tirx.Select(row == 0, m[0] + m[1] + m[2], m[1] - m[2] - m[3])


def applies(call: relax.Call, out_dtype: str) -> bool:
    """A blocked 3×3 conv this module computes: stride 1, dilation 1, groups 1, float32 in and out
    (``out_dtype``: the call's), a constant kernel, at least MIN_CHANNELS input and output channels."""
    a = call.attrs
    kernel = call.args[1]
    if not isinstance(kernel, tvm.ir.GenericConst) or str(kernel.ty.dtype) != "float32":
        return False
    oc_chunks, ic_chunks, kh, kw, ib, ob = (int(d) for d in kernel.ty.shape)
    return ((kh, kw) == (3, 3) and [int(s) for s in a.strides] == [1, 1] and [int(d) for d in a.dilation] == [1, 1]
            and int(a.groups) == 1 and str(call.args[0].ty.dtype) == "float32" and out_dtype == "float32"
            and ic_chunks * ib >= MIN_CHANNELS and oc_chunks * ob >= MIN_CHANNELS)


def transform_kernel(blocked: np.ndarray) -> np.ndarray:
    """OIHW[x]i[y]o ``(O/y, C/x, 3, 3, x, y)`` → U = G g Gᵀ as ``(4, 4, O/y, C/x, x, y)``."""
    return np.einsum("ei,kcijxy,nj->enkcxy", G, blocked.astype(np.float64), G).astype(blocked.dtype)


def conv2d_winograd_nchwc(data: te.Tensor, u: te.Tensor, padding, out_dtype: str) -> te.Tensor:
    """``data`` (N, C/x, H, W, x), ``u`` from :func:`transform_kernel`, ``padding`` (t, l, b, r) →
    (N, O/y, H + t + b − 2, W + l + r − 2, y)."""
    n, chunks, height, width, lanes = (int(d) for d in data.shape)
    _, _, oc_chunks, _, _, out_lanes = (int(d) for d in u.shape)
    top, left, bottom, right = (int(p) for p in padding)
    out_h, out_w = height + top + bottom - 2, width + left + right - 2
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    padded = topi.nn.pad(data, (0, 0, top, left, 0),
                         (0, 0, 2 * tiles_h + 2 - height - top, 2 * tiles_w + 2 - width - left, 0), name="data_pad")
    v = te.compute(  # tiles numbered row-major, p = ty·tiles_w + tx, so the GEMMs tile them as one axis
        (4, 4, n, chunks, tiles_h * tiles_w, lanes),
        lambda e, nu, b, c, p, ci: _bt(e, [_bt(nu, [padded[b, c, 2 * (p // tiles_w) + i, 2 * (p % tiles_w) + j, ci]
                                                    for j in range(4)]) for i in range(4)]),
        name=INPUT)
    rc, ri = te.reduce_axis((0, chunks), "rc"), te.reduce_axis((0, lanes), "ri")
    m = te.compute(
        (4, 4, n, oc_chunks, tiles_h * tiles_w, out_lanes),
        lambda e, nu, b, k, p, ki: te.sum(
            v[e, nu, b, rc, p, ri].astype(out_dtype) * u[e, nu, k, rc, ri, ki].astype(out_dtype), axis=[rc, ri]),
        name=GEMM)
    return te.compute(
        (n, oc_chunks, out_h, out_w, out_lanes),
        lambda b, k, y, x, ki: _at(y % 2, [_at(x % 2, [m[e, nu, b, k, (y // 2) * tiles_w + x // 2, ki]
                                                       for nu in range(4)]) for e in range(4)]),
        name=OUTPUT)
