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


def scale_dense_inputs(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``(x·s[k]) @ W`` = ``x @ W'`` with ``W'[k] = W[k]·s[k]``."""
    return w * s.reshape(-1, 1)


def dense_bias_of_input_shift(w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(x + t) @ W`` = ``x @ W + t @ W``."""
    return t @ w
