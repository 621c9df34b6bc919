"""Discrete Fourier transforms along the last axes as products with constant DFT matrices.

Relax has no complex dtype: a complex tensor ``[..., L]`` is a real one ``[..., L, 2]`` holding
``[re, im]`` last (``torch.view_as_real``'s layout). A transform along one axis moves that axis last
with the pair before it, so the product is a plain 2-D ``v @ M`` with a constant right operand (what
the default matmul schedule handles, as in :mod:`fft_conv`):

    complex DFT, axis of length L   [re | im] @ [[Mr, Mi], [−Mi, Mr]],  M = s·exp(∓2πi·m·f / L)
    real DFT (W → F frequencies)    x @ [cos | −sin]·s                  F = W//2 + 1 (onesided) or W
    inverse real DFT (F → W)        [re | im] @ [α·cos ; −α·sin]·s      α_f = 2, 1 for DC and Nyquist

(the inverse real DFT reads the half spectrum of a Hermitian one: the imaginary parts of DC and
Nyquist drop out, as in pocketfft's c2r). ``s`` is torch's per-axis normalization: 1, 1/√L or 1/L.
"""

from __future__ import annotations

import math

import numpy as np

# ----------------------------------------------------------------------------- numpy


def angles(freqs, positions, length: int) -> np.ndarray:
    """``2π·f·m / L`` for every (f, m) pair: ``[len(freqs), len(positions)]``."""
    return 2 * np.pi * np.outer(freqs, positions) / length


def complex_block(mr: np.ndarray, mi: np.ndarray) -> np.ndarray:
    """``[[Mr, Mi], [−Mi, Mr]]``: ``[vr | vi] @ block = [Re | Im]`` of ``(vr + i·vi) @ (Mr + i·Mi)``."""
    return np.block([[mr, mi], [-mi, mr]])


def half_spectrum_weights(n_freq: int, length: int) -> np.ndarray:
    """α_f of the inverse real DFT of length ``length``: a half-spectrum bin stands for its mirror
    too (2), except DC and, for even lengths, Nyquist (1); bins past Nyquist are ignored (0)."""
    f = np.arange(n_freq)
    alpha = np.where(f <= length // 2, 2.0, 0.0)
    alpha[0] = 1.0
    if length % 2 == 0 and length // 2 < n_freq:
        alpha[length // 2] = 1.0
    return alpha


def norm_scale(mode: int, length: int) -> float:
    """torch's per-axis factor for aten's ``normalization`` argument of _fft_r2c / _fft_c2r / _fft_c2c:
    0 none, 1 by 1/√n ("ortho"), 2 by 1/n."""
    return (1.0, 1.0 / math.sqrt(length), 1.0 / length)[mode]


def dft_matrix(n_in: int, n_out: int, forward: bool, scale: float) -> np.ndarray:
    """``[n_in, n_out]`` complex: ``s·exp(∓2πi·m·f / n)``, n = max(n_in, n_out) = the axis length."""
    n = max(n_in, n_out)
    sign = -1.0 if forward else 1.0
    return scale * np.exp(sign * 1j * angles(np.arange(n_in), np.arange(n_out), n))


def dft_block(length: int, forward: bool, scale: float) -> np.ndarray:
    """``[2L, 2L]``: the complex DFT (or inverse, unnormalized but for ``scale``) on ``[re | im]``."""
    m = dft_matrix(length, length, forward, scale)
    return complex_block(m.real, m.imag)


def rdft_matrix(length: int, n_freq: int, scale: float) -> np.ndarray:
    """``[W, 2F]``: real input → ``[re | im]`` of its first F DFT bins."""
    a = angles(np.arange(length), np.arange(n_freq), length)
    return scale * np.concatenate([np.cos(a), -np.sin(a)], axis=1)


def irdft_matrix(n_freq: int, length: int, scale: float) -> np.ndarray:
    """``[2F, W]``: ``[re | im]`` of a half spectrum → the real inverse DFT of length W."""
    alpha = half_spectrum_weights(n_freq, length)[:, None]
    a = angles(np.arange(n_freq), np.arange(length), length)
    return scale * np.concatenate([alpha * np.cos(a), -alpha * np.sin(a)], axis=0)


# ----------------------------------------------------------------------------- Relax


def _const(matrix: np.ndarray, dtype: str):
    from tvm import relax

    return relax.const(np.ascontiguousarray(matrix, dtype), dtype)


def _shape(x) -> list[int]:
    return [int(d) for d in x.ty.shape]


def emit_product(bb, x, perm: list[int], matrix: np.ndarray, out_shape: list[int], back: list[int] | None):
    """``permute(x, perm)`` flattened to rows of ``matrix.shape[-2]``, times the constant ``matrix``
    (``[K, N]``, or ``[B, K, N]`` batched over the leading B rows' blocks), reshaped to ``out_shape``
    and permuted by ``back`` (when given)."""
    from tvm import relax

    op, emit = relax.op, bb.emit
    dtype = str(x.ty.dtype)
    if perm != list(range(len(perm))):
        x = emit(op.permute_dims(x, perm))
    rows = (-1, matrix.shape[-2]) if matrix.ndim == 2 else (matrix.shape[0], -1, matrix.shape[-2])
    y = emit(op.matmul(emit(op.reshape(x, rows)), _const(matrix, dtype)))
    y = emit(op.reshape(y, out_shape))
    return emit(op.permute_dims(y, back)) if back is not None else y


def emit_dft_axis(bb, z, axis: int, forward: bool, scale: float):
    """Complex DFT (or inverse) of pair tensor ``z [..., 2]`` along complex axis ``axis``."""
    shape = _shape(z)
    k = len(shape) - 1
    axis %= k
    cur = [i for i in range(k) if i != axis] + [k, axis]  # others, pair, the axis
    out = [shape[i] for i in cur[:-2]] + [2, shape[axis]]
    return emit_product(bb, z, cur, dft_block(shape[axis], forward, scale), out, [cur.index(i) for i in range(k + 1)])


def emit_rdft_last(bb, x, n_freq: int, scale: float):
    """Real ``x [..., W]`` → pair tensor ``[..., F, 2]`` of its first F DFT bins."""
    shape = _shape(x)
    r = len(shape)
    return emit_product(bb, x, list(range(r)), rdft_matrix(shape[-1], n_freq, scale), shape[:-1] + [2, n_freq],
                        list(range(r - 1)) + [r, r - 1])


def emit_irdft_last(bb, z, length: int, scale: float):
    """Pair tensor ``z [..., F, 2]`` (a half spectrum) → real ``[..., W]``, W = ``length``."""
    shape = _shape(z)
    k = len(shape) - 1
    perm = list(range(k - 1)) + [k, k - 1]
    return emit_product(bb, z, perm, irdft_matrix(shape[-2], length, scale), shape[:-2] + [length], None)
