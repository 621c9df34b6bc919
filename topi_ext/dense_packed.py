"""``x @ W`` for a constant ``W`` (K, N), with W packed at compile time into panels (N/c, K, c):

    out[..., j] = Σ_k x[..., k] · Wp[j / c, k, j % c],    Wp[p, k, i] = W[k, p·c + i]

A panel is one contiguous stream of K·c weights, so a batch-1 layer (the classifier of a CNN,
bound by reading its weights once) reads memory front to back instead of a short piece of every
row of W. ``c`` is up to PANEL_VECTORS vectors: the accumulators of one panel stay in registers.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from .conv2d_nchwc import call_out_dtype

BLOCK = "dense_packed"
PANEL_VECTORS = 8  # accumulators of a panel, in vectors: enough to hide the FMA latency
MIN_VECTOR = 4  # lanes of the narrowest vector a panel is made of (SSE / NEON: 4 floats)


def panel_vector(n: int, lanes: int) -> int | None:
    """The vector a panel of ``n`` columns is made of: the full ``lanes``-wide one, else the widest
    half or quarter of it (down to MIN_VECTOR) that divides ``n`` (AVX-512, 1000 classes: 8 floats);
    None if none does."""
    return next((v for v in (lanes, lanes // 2, lanes // 4) if v >= MIN_VECTOR and n % v == 0), None)


def panel_width(n: int, lanes: int) -> int | None:
    """The widest panel of whole vectors (:func:`panel_vector`), at most PANEL_VECTORS of them, that
    divides ``n``; None if no vector divides ``n``."""
    vec = panel_vector(n, lanes)
    if vec is None:
        return None
    return vec * max(v for v in range(1, PANEL_VECTORS + 1) if (n // vec) % v == 0)


def pack_weight(w: np.ndarray, width: int) -> np.ndarray:
    """(K, N) → (N / width, K, width)."""
    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k, n // width, width).transpose(1, 0, 2))


def dense_packed(x: te.Tensor, packed: te.Tensor, out_dtype: str) -> te.Tensor:
    *batch, k_dim = x.shape
    panels, _, width = (int(d) for d in packed.shape)
    k = te.reduce_axis((0, k_dim), "k")
    return te.compute(
        (*batch, panels * width),
        lambda *i: te.sum(x[(*i[:-1], k)].astype(out_dtype) * packed[i[-1] // width, k, i[-1] % width].astype(out_dtype),
                          axis=k),
        name=BLOCK)


def legalize_matmul(lanes: int):
    """A legalization of ``relax.matmul`` for ``lanes``-wide vectors: ``x @ W`` with W a float32
    constant (K, N), N a multiple of a vector (:func:`panel_vector`), to :func:`dense_packed`; the rest as TVM does."""
    from tvm.relax.transform.legalize_ops.linear_algebra import _matmul

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        x, w = call.args
        weight = w.value.numpy() if isinstance(w, tvm.ir.GenericConst) else None
        out_dtype = call_out_dtype(call)
        if (weight is None or weight.ndim != 2 or weight.dtype != np.float32 or len(x.ty.shape) < 2
                or str(x.ty.dtype) != "float32" or out_dtype != "float32"
                or (width := panel_width(weight.shape[1], lanes)) is None):
            return _matmul(bb, call)
        packed = relax.const(pack_weight(weight, width), "float32")
        return bb.call_te(dense_packed, x, packed, out_dtype, primfunc_name_hint=BLOCK)

    return legalize
