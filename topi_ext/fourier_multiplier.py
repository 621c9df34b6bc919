"""A constant Fourier multiplier folded into one linear operator:

    y = irfft2(M ⊙ rfft2(u), s=(H, W))        u real [..., H, W], M [..., H, W//2 + 1] constant

is real-linear and circularly shift-equivariant in u (a circular convolution per image), so it is
precomputed as products with three constant matrices instead of four transforms and a complex
multiply. With R the real DFT over W (``[W, 2F]``), R⁻¹ the inverse real DFT (``[2F, W]``, α-weighted
half spectrum) and F_H the complex DFT over H, every frequency column f gets one complex ``[H, H]``
matrix

    P_f = F_H · diag(M[:, f]) · F_H⁻¹              (row-vector convention, v @ P_f)

so ``y = R⁻¹( P_f applied along H )( u @ R )``: 4·H·W·F + 4·H²·F real multiply-adds per image, against
(H·W)² for the dense ``[HW, HW]`` operator, which is used instead when it is cheaper (tiny maps, up
to about 4×5). torch's normalization factors of both transforms are folded into the matrices.
M may vary over the leading axes (e.g. one multiplier per channel): those axes become the batch of
P (or of the dense operator), the others its rows.
"""

from __future__ import annotations

import math

import numpy as np

from .dft import complex_block, dft_matrix, emit_product, irdft_matrix, rdft_matrix


def factored_cost(h: int, w: int) -> int:
    """Real multiply-adds per image of the three products."""
    f = w // 2 + 1
    return 4 * h * w * f + 4 * h * h * f


def use_dense(h: int, w: int) -> bool:
    """The dense ``[HW, HW]`` operator does no more multiply-adds than the factored one."""
    return (h * w) ** 2 <= factored_cost(h, w)


def factored_matrices(m: np.ndarray, w: int, scale_h: float,
                      scale_w: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(R [W, 2F], P [V·F, 2H, 2H], R⁻¹ [2F, W])`` for multipliers ``m [V, H, F]`` (complex);
    ``scale_h``, ``scale_w``: the product of both transforms' normalization factors per axis."""
    v, h, f = m.shape
    fwd, inv = dft_matrix(h, h, True, 1.0), dft_matrix(h, h, False, scale_h)
    p = np.einsum("ak,vkf,kb->vfab", fwd, m, inv)
    return (rdft_matrix(w, f, 1.0), complex_block(p.real, p.imag).reshape(v * f, 2 * h, 2 * h),
            irdft_matrix(f, w, scale_w))


def apply_factored_np(x: np.ndarray, mats: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """numpy twin of the factored graph: ``x [V, R, H, W]`` → ``[V, R, H, W]`` (float64)."""
    r, p, r_inv = mats
    v, rows, h, w = x.shape
    f = r.shape[1] // 2
    s = (x @ r).reshape(v, rows, h, 2, f).transpose(0, 4, 1, 3, 2).reshape(v * f, rows, 2 * h) @ p
    s = s.reshape(v, f, rows, 2, h).transpose(0, 2, 4, 3, 1).reshape(v, rows, h, 2 * f)
    return s @ r_inv


def dense_matrix(mats: tuple[np.ndarray, np.ndarray, np.ndarray], v: int, h: int, w: int) -> np.ndarray:
    """``[V, HW, HW]``: row i is the operator applied to the i-th unit image."""
    eye = np.broadcast_to(np.eye(h * w).reshape(1, h * w, h, w), (v, h * w, h, w))
    return apply_factored_np(eye, mats).reshape(v, h * w, h * w)


def emit_fourier_multiplier(bb, x, m: np.ndarray, scale_h: float, scale_w: float):
    """Emit ``irfft2(m ⊙ rfft2(x))`` for Relax ``x [..., H, W]`` and constant complex ``m`` of the
    same rank, broadcastable to ``[..., H, W//2 + 1]``; ``scale_*`` as in :func:`factored_matrices`."""
    from tvm import relax

    shape = [int(d) for d in x.ty.shape]
    lead, (h, w) = shape[:-2], shape[-2:]
    m = np.broadcast_to(m, m.shape[:-2] + (h, w // 2 + 1))
    varying = [i for i, d in enumerate(m.shape[:-2]) if d > 1]
    others = [i for i in range(len(lead)) if i not in varying]
    perm = varying + others + [len(lead), len(lead) + 1]
    v, rows = math.prod(lead[i] for i in varying), math.prod(lead[i] for i in others)
    mats = factored_matrices(m.transpose(perm).reshape(v, h, w // 2 + 1), w, scale_h, scale_w)
    if use_dense(h, w):
        t = dense_matrix(mats, v, h, w)
        y = emit_product(bb, x, perm, t[0] if v == 1 else t, [v, rows, h, w], None)
    else:
        r, p, r_inv = mats
        s = emit_product(bb, x, perm, r, [v, rows, h, 2, r.shape[1] // 2], [0, 4, 1, 3, 2])
        s = emit_product(bb, s, list(range(5)), p, [v, p.shape[0] // v, rows, 2, h], [0, 2, 4, 3, 1])
        y = emit_product(bb, s, list(range(5)), r_inv, [v, rows, h, w], None)
    y = bb.emit(relax.op.reshape(y, [lead[i] for i in perm[:-2]] + [h, w]))
    if perm == list(range(len(perm))):
        return y
    return bb.emit(relax.op.permute_dims(y, [perm.index(i) for i in range(len(perm))]))
