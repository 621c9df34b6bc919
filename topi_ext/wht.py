"""Fast Walsh-Hadamard transform (FWHT): ``y = scale · (x @ H_N)[..., perm] (+ bias)``, optionally
soft- or smooth-thresholded, in N·log2 N additions instead of N² multiply-adds.

H_N is the Sylvester Hadamard matrix (``scipy.linalg.hadamard``, in numpy passes/hadamard.py):
``H[k, j] = (-1)^popcount(k & j)``, symmetric, natural ("Hadamard") order. The butterfly
``H_2N = H_2 ⊗ H_N`` gives log2 N stages; stage s (``h = 2^s``) maps pairs ``(i, i + h)`` with
``i & h == 0`` to ``(a + b, a − b)``.

The operator works on a 3-D view ``x [P, K, Q]`` and transforms the middle axis (length K <= N,
zero-padded to N), so one compute covers the last axis of a matmul input (``Q = 1``) and the channel
axis of an NCHW tensor (``P = N``, ``Q = H·W``, what a 1×1 conv with a Hadamard weight becomes). Its
output is ``[P, M, Q]``: ``out[p, m, q] = scale · fwht(x)[p, perm[m], q] (+ bias[m])``, where
``perm`` (M <= N entries) crops the zero-padded transform, selects sequency (Walsh) order
(``hadamard.sequency_perm``) or any other column order; ``out_scale[m]`` multiplies coefficient m (a
Hadamard matrix with scaled columns, ``H·diag(e)``) before the bias. With ``threshold`` the output is
the WHT layer's nonlinearity of that ``z``, fused in the epilogue: the soft threshold
``sign(z)·max(|z| − T[m], 0)``, or with ``smooth`` the smooth threshold ``tanh(z)·max(|z| − T[m], 0)``;
with ``in_scale`` the input is multiplied by ``d[k]`` first (``x @ (diag(d)·H)``, a Hadamard matrix
with scaled rows, what folding the WHT layer's ``v ⊙`` into the matrix leaves).

Relax: :func:`emit_wht` adds the PrimFunc (attribute ``reforge.op = "wht"``, opaque to FuseOps, not
scheduled: the target's default scheduler finds it by the attribute; x86 uses
:func:`.schedules.wht.schedule_wht`) and a ``call_tir``.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .op_kind import tag

OP = "wht"  # the PrimFunc's ``reforge.op`` attribute
STAGE = "wht_stage"  # blocks wht_stage0 .. wht_stage{m-1}
OUT = "wht_out"


# ----------------------------------------------------------------------------- TE


def _butterfly(prev: te.Tensor, h: int):
    """Stage with half-width ``h``: ``(a, b) -> (a + b, a − b)`` on pairs ``(i, i + h)``, ``i & h == 0``."""
    def stage(a, i, c):
        base = tirx.floordiv(i, 2 * h) * (2 * h) + tirx.floormod(i, h)
        lo, hi = prev[a, base, c], prev[a, base + h, c]
        return tirx.Select(tirx.floormod(tirx.floordiv(i, h), 2) == 0, lo + hi, lo - hi)
    return stage


def wht(x: te.Tensor, n: int, scale: float = 1.0, perm: te.Tensor | None = None, bias: te.Tensor | None = None,
        threshold: te.Tensor | None = None, in_scale: te.Tensor | None = None, out_scale: te.Tensor | None = None,
        smooth: bool = False) -> te.Tensor:
    """FWHT of ``x [P, K, Q]`` over axis 1, zero-padded to ``n`` (a power of two >= K).

    ``in_scale [K]`` multiplies the input first (``x ⊙ d`` then H: a Hadamard matrix with scaled rows);
    ``perm [M]`` int32 (default: identity, M = n) picks output columns; ``out_scale [M]`` multiplies
    them after the scale (scaled columns), ``bias [M]`` is added next; ``threshold [M]`` applies
    ``sign(z)·max(|z| − T, 0)`` last, or ``tanh(z)·max(|z| − T, 0)`` with ``smooth``."""
    p, k, q = (int(d) for d in x.shape)
    assert n & (n - 1) == 0 and k <= n, (n, k)
    dtype = str(x.dtype)
    zero = tirx.const(0, dtype)
    if k < n or in_scale is not None:
        def load(a, i, c):
            ii = tirx.min(i, k - 1) if k < n else i
            v = x[a, ii, c] if in_scale is None else x[a, ii, c] * in_scale[ii]
            return tirx.Select(i < k, v, zero) if k < n else v
        prev = te.compute((p, n, q), load, name="wht_pad")
    else:
        prev = x
    h = 1
    s = 0
    while h < n:
        prev = te.compute((p, n, q), _butterfly(prev, h), name=f"{STAGE}{s}")
        h *= 2
        s += 1
    m = int(perm.shape[0]) if perm is not None else n

    def out(a, j, c):
        # (the clamp bounds the gathered region, so the stages can be computed per row)
        z = prev[a, tirx.min(tirx.max(perm[j], 0), n - 1) if perm is not None else j, c]
        if scale != 1.0:
            z = z * tirx.const(scale, dtype)
        if out_scale is not None:
            z = z * out_scale[j]
        if bias is not None:
            z = z + bias[j]
        if threshold is not None:
            mag = tirx.max(tirx.abs(z) - threshold[j], zero)
            z = tirx.tanh(z) * mag if smooth else tirx.Select(z > zero, mag, tirx.Select(z < zero, -mag, zero))
        return z

    return te.compute((p, m, q), out, name=OUT)


# ----------------------------------------------------------------------------- Relax


def wht_prim_func(shape, dtype: str, n: int, scale: float = 1.0, perm: np.ndarray | None = None,
                  bias: bool = False, threshold: bool = False, in_scale: bool = False, out_scale: bool = False,
                  smooth: bool = False):
    """The PrimFunc of :func:`wht` for an input ``shape`` ``[P, K, Q]``; parameters
    ``(x, [in_scale], [perm], [out_scale], [bias], [threshold], out)``, tagged ``reforge.op = "wht"``."""
    xt = te.placeholder([int(d) for d in shape], dtype, "x")
    inputs = [xt]
    st = pt = ot = bt = tt = None
    if in_scale:
        st = te.placeholder((int(shape[1]),), dtype, "in_scale")
        inputs.append(st)
    m = n if perm is None else len(perm)
    if perm is not None:
        pt = te.placeholder((m,), "int32", "perm")
        inputs.append(pt)
    if out_scale:
        ot = te.placeholder((m,), dtype, "out_scale")
        inputs.append(ot)
    if bias:
        bt = te.placeholder((m,), dtype, "bias")
        inputs.append(bt)
    if threshold:
        tt = te.placeholder((m,), dtype, "threshold")
        inputs.append(tt)
    out = wht(xt, n, scale, pt, bt, tt, st, ot, smooth)
    func = tag(te.create_prim_func([*inputs, out]), OP)
    # what a later rewrite (the fused epilogue) needs to emit the operator again
    func = func.with_attr("reforge.wht", {"n": n, "scale": float(scale), "perm": perm is not None,
                                          "out_scale": bool(out_scale), "bias": bool(bias),
                                          "threshold": ("smooth" if smooth else "soft") if threshold else "",
                                          "in_scale": bool(in_scale)})
    return func, out


def emit_wht(bb, x, n: int, scale: float = 1.0, perm: np.ndarray | None = None, bias: np.ndarray | None = None,
             threshold: np.ndarray | None = None, in_scale: np.ndarray | None = None,
             out_scale: np.ndarray | None = None, smooth: bool = False):
    """Emit ``wht`` of the Relax tensor ``x [P, K, Q]`` into ``bb``; returns the ``[P, M, Q]`` result.

    ``perm`` None or the identity of length n means no permutation."""
    from tvm import relax

    shape = [int(d) for d in x.ty.shape]
    dtype = str(x.ty.dtype)
    if perm is not None and len(perm) == n and np.array_equal(perm, np.arange(n)):
        perm = None
    func, out = wht_prim_func(shape, dtype, n, scale, perm, bias is not None, threshold is not None,
                              in_scale is not None, out_scale is not None, smooth)
    gv = bb.add_func(func, OP)
    bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    args = [x]
    if in_scale is not None:
        args.append(relax.const(np.asarray(in_scale, dtype)))
    if perm is not None:
        args.append(relax.const(np.asarray(perm, "int32")))
    if out_scale is not None:
        args.append(relax.const(np.asarray(out_scale, dtype)))
    if bias is not None:
        args.append(relax.const(np.asarray(bias, dtype)))
    if threshold is not None:
        args.append(relax.const(np.asarray(threshold, dtype)))
    return relax.call_tir(gv, args, relax.TensorType([int(d) for d in out.shape], dtype))
