"""Hadamard matrices in numpy: the Sylvester matrix, its orders, the fast transform, and reading a
constant matrix as a (scaled, permuted, padded, block) Hadamard matrix.

    H_N[k, j] = (-1)^popcount(k & j)     N a power of two; symmetric, natural ("Hadamard") order
    walsh(N)  = H_N[sequency_perm(N)]    sequency order: row k has k sign changes

:func:`match_hadamard` is what the fwht pass rewrites by: ``x @ w`` is a WHT when ``w`` is one of
the matrices :class:`HadamardMatch` describes, with entries exactly ±c (no tolerance). numpy only (no
TVM), so it is tested on matrices alone (tests/passes/test_hadamard.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


def hadamard_entries(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``H[rows[:, None], cols[None, :]] = (-1)^popcount(row & col)`` as ±1 int8."""
    bits = np.bitwise_and.outer(np.asarray(rows, np.int64), np.asarray(cols, np.int64))
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    return (1 - 2 * parity).astype(np.int8)


def hadamard(n: int) -> np.ndarray:
    """Sylvester Hadamard matrix of order ``n`` (a power of two), entries ±1, natural order."""
    return hadamard_entries(np.arange(n), np.arange(n)).astype(np.float64)


def sequency_perm(n: int) -> np.ndarray:
    """Row ``k`` of the sequency-ordered Walsh matrix is row ``perm[k]`` of ``hadamard(n)``:
    ``perm[k] = bitreverse(gray(k))``; row ``perm[k]`` has exactly k sign changes."""
    m = n.bit_length() - 1
    gray = np.arange(n) ^ (np.arange(n) >> 1)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(m):
        rev |= ((gray >> b) & 1) << (m - 1 - b)
    return rev


def walsh(n: int) -> np.ndarray:
    """The Walsh matrix in sequency order."""
    return hadamard(n)[sequency_perm(n)]


def fwht_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unnormalized FWHT along ``axis`` (length a power of two), in float64: ``x @ hadamard(N)``."""
    y = np.moveaxis(np.asarray(x, np.float64), axis, -1).copy()
    n = y.shape[-1]
    h = 1
    while h < n:
        y = y.reshape(y.shape[:-1] + (n // (2 * h), 2, h))
        a, b = y[..., 0, :].copy(), y[..., 1, :].copy()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        y = y.reshape(y.shape[:-3] + (n,))
        h *= 2
    return np.moveaxis(y, -1, axis)


def next_pow2(k: int) -> int:
    return 1 << max(0, (k - 1).bit_length())


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class HadamardMatch:
    """``w = blockdiag(c·H_n[:k, perm], ...)`` (``blocks`` equal blocks), rows scaled by ``in_scale``
    or columns by ``out_scale`` (then ``scale`` is 1)."""

    n: int
    k: int  # input length per block (k < n: zero-padded)
    scale: float
    perm: np.ndarray  # output columns per block, indices into 0..n-1
    blocks: int = 1
    in_scale: np.ndarray | None = None  # per-row factors d
    out_scale: np.ndarray | None = None  # per-column factors e

    @property
    def order(self) -> str:
        if self.k < self.n:
            return "zero-padded"
        if len(self.perm) == self.n and np.array_equal(self.perm, np.arange(self.n)):
            return "natural"
        if len(self.perm) == self.n and np.array_equal(self.perm, sequency_perm(self.n)):
            return "sequency"
        return "permuted"

    @property
    def kind(self) -> str:
        scaled = ("row-scaled " if self.in_scale is not None else "") + \
            ("column-scaled " if self.out_scale is not None else "")
        return f"{scaled}{self.order} {'block ' if self.blocks > 1 else ''}Hadamard"


def _match_single(w: np.ndarray) -> HadamardMatch | None:
    k, m = w.shape
    n = next_pow2(k)
    if k < 2 or m > n:
        return None
    d = w[:, 0]  # row k is d_k·H[k, perm] / H[k, perm[0]], a column permutation of H again
    if not np.all(np.isfinite(d)) or np.any(d == 0) or not np.all(np.abs(w) == np.abs(d)[:, None]):
        return None
    negative = w != d[:, None]  # entries -d_k
    cols = np.zeros(m, np.int64)
    for b in range(n.bit_length() - 1):  # column j of H has -1 in row 2^b iff bit b of j is set
        cols |= negative[1 << b].astype(np.int64) << b
    if len(np.unique(cols)) != m or not np.array_equal(negative, hadamard_entries(np.arange(k), cols) < 0):
        return None  # (repeated columns: a singular matrix, x·H·S for a selection S, is not a column order)
    # d's signs may themselves be a Hadamard column j (any column order of c·H, read from column 0):
    # move them into the permutation, d·H[:, j] and cols xor j, so that a plain c·H[:, perm] needs no d
    flip = np.sign(d) != np.sign(d[0])
    j = sum(int(flip[1 << b]) << b for b in range(n.bit_length() - 1))
    if np.array_equal(flip, hadamard_entries(np.arange(k), [j])[:, 0] < 0):
        d, cols = np.where(flip, -d, d), cols ^ j
    if np.all(d == d[0]):
        return HadamardMatch(n, k, float(d[0]), cols)
    return HadamardMatch(n, k, 1.0, cols, in_scale=d.astype(np.float64))


def _match_columns(w: np.ndarray) -> HadamardMatch | None:
    """``c·H[:k, perm]·diag(e)``: columns scaled (what fold-batchnorm leaves of ``(x @ H) ⊙ e``, e.g.
    the smooth threshold's w). Row 0 of H is all ones, so row 0 of w is c·e and ``w / w[0]`` must be
    a Hadamard matrix (exactly ±1: every row has the magnitudes of row 0)."""
    e = w[0].astype(np.float64)
    if not np.all(np.isfinite(e)) or np.any(e == 0) or not np.all(np.abs(w) == np.abs(w[0])):
        return None
    signs = _match_single(w / e)
    return None if signs is None else replace(signs, scale=1.0, out_scale=e * signs.scale)


def match_hadamard(w: np.ndarray) -> HadamardMatch | None:
    """How ``x @ w`` is a (block) Walsh-Hadamard transform, or None."""
    if w.ndim != 2:
        return None
    found = _match_single(w)
    if found is None and w.shape[1] > 1:
        found = _match_columns(w)
    if found is not None:
        return found
    k, m = w.shape
    b = int(np.count_nonzero(w[0]))
    if k != m or b < 2 or b & (b - 1) or k % b or k == b or np.count_nonzero(w[0, :b]) != b:
        return None
    nb = k // b
    blocks = w.reshape(nb, b, nb, b)
    first = blocks[0, :, 0, :]
    diag = np.zeros((nb, nb), bool)
    np.fill_diagonal(diag, True)
    if np.any(blocks.transpose(0, 2, 1, 3)[~diag]) or not all(
            np.array_equal(blocks[i, :, i, :], first) for i in range(1, nb)):
        return None
    inner = _match_single(first)
    if inner is None or inner.k != inner.n:
        return None
    return replace(inner, blocks=nb)


def describe(w: np.ndarray) -> str:
    """What ``w`` is, for a refusal: its entries' magnitudes, or for ±c entries its non-orthogonal
    column pairs (a Hadamard matrix has none)."""
    k, m = w.shape
    mags = np.unique(np.abs(w))
    if len(mags) > 1:
        return f"a {k}×{m} matrix with entries of {len(mags)} magnitudes"
    signs = np.sign(w).astype(np.int64)
    gram = signs.T @ signs
    bad = int(np.count_nonzero(gram - np.diag(np.diag(gram))) // 2)
    return f"a {k}×{m} ±{float(mags[0]):.4g} matrix with {bad} non-orthogonal column pairs"
