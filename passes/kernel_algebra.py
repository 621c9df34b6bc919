"""Kernel algebra shared by the rewrites: every fold of an affine map into a linear operator.

Conventions: conv weights are ``W[o, i, *k]`` (OIHW / OIW) with ``groups`` g, so output channel
``o`` reads input channels ``(o // (O/g)) * (I/g) + i``; dense weights are ``W[k, n]`` as in
``y = x @ W``. All functions are pure numpy and return new arrays.
"""

from __future__ import annotations

import numpy as np


def batchnorm_scale_shift(gamma, beta, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as ``y = x·s + t``: ``s = γ / √(σ² + ε)``, ``t = β − μ·s``."""
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def scale_conv_outputs(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``conv(x, W)·s[o]`` = ``conv(x, W')`` with ``W'[o] = W[o]·s[o]``."""
    return w * s.reshape((-1,) + (1,) * (w.ndim - 1))


def scale_dense_outputs(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``(x @ W)·s[n]`` = ``x @ W'`` with ``W'[:, n] = W[:, n]·s[n]``."""
    return w * s.reshape(1, -1)


def conv_input_channel_map(w: np.ndarray, groups: int) -> np.ndarray:
    """``idx[o, i]`` = the input channel that weight ``W[o, i]`` reads."""
    out_ch, in_per_group = w.shape[:2]
    group = np.arange(out_ch) // (out_ch // groups)
    return group[:, None] * in_per_group + np.arange(in_per_group)[None, :]


def scale_conv_inputs(w: np.ndarray, s: np.ndarray, groups: int) -> np.ndarray:
    """``conv(x·s[c], W)`` = ``conv(x, W')`` with ``W'[o, i] = W[o, i]·s[c(o, i)]``."""
    factor = s[conv_input_channel_map(w, groups)]
    return w * factor.reshape(factor.shape + (1,) * (w.ndim - 2))


def conv_bias_of_input_shift(w: np.ndarray, t: np.ndarray, groups: int) -> np.ndarray:
    """``conv(x + t[c], W)`` = ``conv(x, W) + b`` with ``b[o] = Σ_{i,k} W[o, i, k]·t[c(o, i)]``.

    Exact only for unpadded convolutions: a zero-padded border sees 0, not ``t``.
    """
    shifts = t[conv_input_channel_map(w, groups)]
    return (w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) * shifts).sum(axis=1)


def conv_bias_map_of_input_shift(w: np.ndarray, t: np.ndarray, in_hw: tuple[int, int], strides: tuple[int, int],
                                 padding: tuple[int, int, int, int], dilation: tuple[int, int]) -> np.ndarray:
    """``conv(pad₀(x + t[c]), W)`` = ``conv(pad₀(x), W) + B`` for a zero-padding 2-D conv (groups 1), with
    ``B[o, y, x] = Σ_{i,p,q} W[o, i, p, q]·t[i]·[tap (p, q) of output (y, x) lands inside the image]``:
    the interior sees ``Σ W·t``, the border only the taps that do not read padding. Shape ``(O, H', W')``."""
    taps = np.einsum("oipq,i->opq", w, t)
    inside = []
    for axis in (0, 1):
        k, pad, size = w.shape[2 + axis], padding[axis], in_hw[axis]
        out = (size + pad + padding[axis + 2] - dilation[axis] * (k - 1) - 1) // strides[axis] + 1
        pos = np.arange(out)[:, None] * strides[axis] + np.arange(k)[None, :] * dilation[axis] - pad
        inside.append(((pos >= 0) & (pos < size)).astype(w.dtype))  # [output, tap]
    return np.einsum("opq,yp,xq->oyx", taps, inside[0], inside[1])


def scale_dense_inputs(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``(x·s[k]) @ W`` = ``x @ W'`` with ``W'[k] = W[k]·s[k]``."""
    return w * s.reshape(-1, 1)


def dense_bias_of_input_shift(w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(x + t) @ W`` = ``x @ W + t @ W``."""
    return t @ w


# ----------------------------------------------------------------------------- re-parameterization
# 2-D kernels ``W[o, i, kh, kw]`` with ``groups`` g; a per-channel operator (identity, ``x·s``,
# average pooling) is the depthwise kernel ``W[c, 0] = s[c]`` with g = C.


def channel_kernel(scale: np.ndarray, size: tuple[int, int] = (1, 1)) -> np.ndarray:
    """``x·s[c]`` as a depthwise kernel (g = C); with ``size`` k×k and ``s = 1/k²``, average pooling."""
    return np.broadcast_to(scale.reshape(-1, 1, 1, 1), (scale.size, 1) + tuple(size)).copy()


def regroup_conv(w: np.ndarray, groups: int, new_groups: int) -> np.ndarray:
    """The same convolution written with ``new_groups`` (a divisor of ``groups``): each output
    channel keeps its taps, placed among the wider group's input channels, zeros elsewhere.
    The identity regrouped from C to g groups is the Dirac kernel per group."""
    out_ch, in_per_group = w.shape[:2]
    in_ch = in_per_group * groups
    new_in = in_ch // new_groups
    channel = conv_input_channel_map(w, groups)
    local = channel - (np.arange(out_ch) // (out_ch // new_groups))[:, None] * new_in
    new = np.zeros((out_ch, new_in) + w.shape[2:], w.dtype)
    new[np.arange(out_ch)[:, None], local] = w
    return new


def embed_centre(w: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad a ``kh×kw`` kernel to ``size`` around its centre (``size − k`` must be even)."""
    dh, dw = size[0] - w.shape[2], size[1] - w.shape[3]
    return np.pad(w, ((0, 0), (0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)))


def merge_parallel_convs(kernels: list[tuple[np.ndarray, int]], size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """``Σ_b conv(x, W_b)`` (aligned, same stride) = ``conv(x, Σ_b embed(W_b))`` with
    g = gcd of the branches' groups, every kernel embedded at the centre of ``size``."""
    groups = int(np.gcd.reduce([g for _, g in kernels]))
    return sum(embed_centre(regroup_conv(w, g, groups), size) for w, g in kernels), groups


def compose_convs(w1: np.ndarray, g1: int, w2: np.ndarray, g2: int) -> tuple[np.ndarray, int]:
    """``conv(conv(x, W1), W2)`` (stride 1 first, no padding between) = ``conv(x, W)`` with
    ``W[o, c, t] = Σ_m Σ_{a+b=t} W2[o, m, b]·W1[m, c, a]``, size ``k1 + k2 − 1``, g = gcd(g1, g2)."""
    d1, d2 = regroup_conv(w1, g1, 1), regroup_conv(w2, g2, 1)
    (k1h, k1w), (k2h, k2w) = d1.shape[2:], d2.shape[2:]
    dense = np.zeros((d2.shape[0], d1.shape[1], k1h + k2h - 1, k1w + k2w - 1), np.result_type(d1, d2))
    for bh in range(k2h):
        for bw in range(k2w):
            dense[:, :, bh:bh + k1h, bw:bw + k1w] += _tap_product(d2[:, :, bh, bw], d1, g1, g2)
    groups = int(np.gcd(g1, g2))
    out_per_group, in_per_group = dense.shape[0] // groups, dense.shape[1] // groups
    group = np.arange(dense.shape[0]) // out_per_group
    cols = group[:, None] * in_per_group + np.arange(in_per_group)[None, :]
    return dense[np.arange(dense.shape[0])[:, None], cols], groups


def _tap_product(a: np.ndarray, d1: np.ndarray, first_groups: int, second_groups: int) -> np.ndarray:
    """``Σ_m a[o, m]·d1[m, c, i, j]``: one tap ``a`` of the second kernel through the first kernel
    ``d1`` (both regrouped to groups 1). Where every pair (o, c) meets through a single middle
    channel m (the first conv has one output channel per group: an average pooling, a channel
    scale, a depthwise conv; or the second is depthwise), the other terms are zeros and that one
    product is the sum exactly, so it is taken alone instead of the dense O·M·C contraction."""
    out_ch, mid = a.shape
    in_ch = d1.shape[1]
    if first_groups == mid:  # input channel c feeds only the middle channel of its group
        m = np.arange(in_ch) // (in_ch // mid)
        return a[:, m][:, :, None, None] * d1[m, np.arange(in_ch)][None]
    if second_groups == out_ch == mid:  # output channel o reads only middle channel o
        return np.diagonal(a)[:, None, None, None] * d1
    return np.einsum("om,mcij->ocij", a, d1)


def binary_scales(w: np.ndarray, out_axis: int = 0) -> tuple[np.ndarray | None, bool]:
    """Read a weight as ``α[o]·S`` with ``S`` ±1 and ``α > 0`` per output channel (``out_axis``).

    Returns ``(α, has_zero)``: ``α`` is None when the weight is not of that form; ``has_zero`` tells
    that it would be, but for exact zeros (ONNX ``Sign(0) = 0``: not a ±1 value)."""
    mag = np.abs(np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1))
    alpha = mag.max(axis=1)
    nonzero = mag != 0
    same = np.all((mag == alpha[:, None]) | ~nonzero)
    if not same or not np.all(np.isfinite(alpha)) or not np.any(alpha > 0):
        return None, False
    if not np.all(nonzero):
        return None, True
    return alpha, False


def binary_thresholds(alpha: np.ndarray, bias: np.ndarray, taps: int,
                      dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel integer thresholds for ``sign(α[o]·d + b[o]) >= 0`` on integer dot products
    ``-taps <= d <= taps``: the graph's own float expression ``fl(fl(α·d) + b)`` is evaluated at
    every integer candidate (exact, no real-number algebra), so ``bit = d >= thr[o]`` reproduces it
    (α < 0 gives ``flip[o] = 1``: ``bit = d <= thr[o]``). Returns ``(thr, flip)`` int32; the
    caller checks :func:`threshold_ties` for candidates where the expression is exactly 0."""
    d = np.arange(-taps, taps + 1).astype(dtype)
    f = np.asarray(alpha, dtype)[:, None] * d[None, :] + np.asarray(bias, dtype)[:, None]
    on = f >= 0
    flip = (np.asarray(alpha) < 0).astype("int32")
    thr = np.empty(len(alpha), "int64")
    for o in range(len(alpha)):
        idx = np.flatnonzero(on[o])
        if not flip[o]:
            thr[o] = idx[0] - taps if idx.size else taps + 1
            assert np.array_equal(on[o], d >= thr[o]), "the affine expression is not monotone"
        else:
            thr[o] = idx[-1] - taps if idx.size else -taps - 1
            assert np.array_equal(on[o], d <= thr[o]), "the affine expression is not monotone"
    return thr.astype("int32"), flip


def threshold_ties(alpha: np.ndarray, bias: np.ndarray, taps: int, dtype: str = "float32") -> int:
    """How many (channel, integer dot) pairs make ``fl(fl(α·d) + b)`` exactly 0 (Sign would give 0)."""
    d = np.arange(-taps, taps + 1).astype(dtype)
    f = np.asarray(alpha, dtype)[:, None] * d[None, :] + np.asarray(bias, dtype)[:, None]
    return int(np.count_nonzero(f == 0))


def block_kernel(blocks: list[list[np.ndarray]]) -> np.ndarray:
    """Convs between channel groups as one conv: output group r of ``conv(concat_j x_j, W)`` is
    ``Σ_j conv(x_j, W[r][j])`` for ``W = [[W00, W01, ...], [W10, ...], ...]`` (groups 1, one geometry);
    e.g. the complex conv ``[[Wr, −Wi], [Wi, Wr]]`` over ``concat(xr, xi)``."""
    return np.concatenate([np.concatenate(row, axis=1) for row in blocks], axis=0)
