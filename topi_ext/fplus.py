"""FPlus and PFPlus activations as one elementwise operator.

    FPlus(x)        = (1 + |x|)^sign(x) − 1            = x for x >= 0,  x / (1 − x) for x < 0
    PFPlus(x; λ, μ) = λ·((1 + μ|x|)^sign(x) − 1)       = λ·t for t >= 0, λ·t / (1 − t) for t < 0; t = μ·x

(Duan et al., FPLUS / PFPLUS; μ > 0 keeps the base positive, FPlus is λ = μ = 1.) The operator
evaluates the piecewise rational form: no ``pow``, no ``sign``, and exact zeros stay 0.

Relax: :func:`emit_fplus` adds the PrimFunc (attribute ``reforge.op = "fplus"``, ``op_pattern``
elementwise, so FuseOps puts it into a preceding conv's epilogue; no schedule of its own: the
fused function is scheduled like any other) and a ``call_tir``.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .op_kind import ELEMWISE, tag

OP = "fplus"  # the PrimFunc's ``reforge.op`` attribute


def fplus_np(x: np.ndarray, lam: float = 1.0, mu: float = 1.0) -> np.ndarray:
    """``λ·((1 + μ|x|)^sign(x) − 1)`` in float64, written as the power the papers write."""
    x = np.asarray(x, np.float64)
    return lam * (np.power(1 + mu * np.abs(x), np.sign(x)) - 1)


def fplus(x: te.Tensor, lam: float = 1.0, mu: float = 1.0) -> te.Tensor:
    """``λ·(t >= 0 ? t : t / (1 − t))`` with ``t = μ·x``, elementwise over any shape."""
    dtype = str(x.dtype)
    zero, one = tirx.const(0, dtype), tirx.const(1, dtype)

    def f(*idx):
        t = x[idx] if mu == 1.0 else x[idx] * tirx.const(mu, dtype)
        y = tirx.Select(t >= zero, t, t / (one - t))
        return y if lam == 1.0 else y * tirx.const(lam, dtype)

    return te.compute(x.shape, f, name=OP)


def emit_fplus(bb, x, lam: float = 1.0, mu: float = 1.0):
    """Emit ``fplus`` of the Relax tensor ``x`` into ``bb``; returns the ``call_tir``."""
    from tvm import relax

    shape, dtype = [int(d) for d in x.ty.shape], str(x.ty.dtype)
    xt = te.placeholder([tirx.IntImm("int64", d) for d in shape], dtype, "x")  # int64, as legalized ops: FuseTIR
    # maps a fused function's buffers to one relax var only when their shapes have the same type
    out = fplus(xt, lam, mu)
    func = tag(te.create_prim_func([xt, out]), OP, ELEMWISE)
    func = func.with_attr("reforge.fplus", {"lam": float(lam), "mu": float(mu)})  # to emit it again for a new shape
    gv = bb.add_func(func.without_attr("global_symbol"), OP)  # internal: removed once fused into a conv
    return relax.call_tir(gv, [x], relax.TensorType(shape, dtype))
