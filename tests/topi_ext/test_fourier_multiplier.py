"""DFT matrices and the folded Fourier multiplier in numpy (float64) against torch.fft.

Tolerance: 1e-10 absolute (float64 throughout)."""

import numpy as np
import pytest
import torch

from reforge.topi_ext.dft import irdft_matrix, norm_scale, rdft_matrix
from reforge.topi_ext.fourier_multiplier import apply_factored_np, dense_matrix, factored_matrices, use_dense

CODES = {"backward": (0, 2), "ortho": (1, 1), "forward": (2, 0)}  # aten normalization: forward, inverse


@pytest.mark.parametrize("w", [7, 8])
def test_real_dft_pair(w):
    x = np.random.default_rng(0).standard_normal((3, w))
    f = w // 2 + 1
    spec = x @ rdft_matrix(w, f, 1.0)
    ref = np.fft.rfft(x)
    assert np.abs(spec - np.concatenate([ref.real, ref.imag], 1)).max() < 1e-10
    assert np.abs(spec @ irdft_matrix(f, w, 1 / w) - x).max() < 1e-10


@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (4, 4), (5, 6)])
@pytest.mark.parametrize("norm_fwd,norm_inv", [("backward", "backward"), ("ortho", "ortho"), ("forward", "ortho")])
def test_folded_multiplier(h, w, norm_fwd, norm_inv):
    """Random complex M, DC and Nyquist columns not Hermitian: irfft2 reads their real parts only."""
    rng = np.random.default_rng(1)
    f = w // 2 + 1
    m = rng.standard_normal((3, h, f)) + 1j * rng.standard_normal((3, h, f))
    x = rng.standard_normal((3, 2, h, w))
    ref = torch.fft.irfft2(torch.from_numpy(m)[:, None] * torch.fft.rfft2(torch.from_numpy(x), norm=norm_fwd),
                           s=(h, w), norm=norm_inv).numpy()
    fwd, inv = CODES[norm_fwd][0], CODES[norm_inv][1]
    mats = factored_matrices(m, w, norm_scale(fwd, h) * norm_scale(inv, h), norm_scale(fwd, w) * norm_scale(inv, w))
    assert np.abs(apply_factored_np(x, mats) - ref).max() < 1e-10
    dense = (x.reshape(3, 2, h * w) @ dense_matrix(mats, 3, h, w)).reshape(x.shape)
    assert np.abs(dense - ref).max() < 1e-10


def test_dense_only_for_tiny_maps():
    assert use_dense(4, 4) and not use_dense(8, 8) and not use_dense(64, 64)
