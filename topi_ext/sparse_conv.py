"""The geometry and sparsity of a conv the sparse pass may rewrite (NCHW, any kernel, stride and zero padding,
groups 1, dilation 1); the kernel is :mod:`.sparse_nchwc`, the direct sparse convolution in the blocked layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fft_conv import FFTConvGeometry
from .fft_conv import geometry as fft_geometry


@dataclass(frozen=True)
class SparseConvGeometry(FFTConvGeometry):
    """fft_conv's conv geometry (N, C, H, W, O, KH, KW, padding) with strides."""

    strides: tuple[int, int] = (1, 1)

    @property
    def out_hw(self) -> tuple[int, int]:
        oh, ow = super().out_hw  # stride 1: outputs (oh - 1) // s + 1 of them at stride s
        return (oh - 1) // self.strides[0] + 1, (ow - 1) // self.strides[1] + 1

    @property
    def key(self) -> str:
        """How tuning records name the conv: ``N×C×H×W -> O k KH×KW s SH,SW pad T,L,B,R``."""
        return (f"{self.n}x{self.c}x{self.h}x{self.w} -> {self.o} k {self.kh}x{self.kw} "
                f"s {self.strides[0]},{self.strides[1]} pad {','.join(map(str, self.padding))}")

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        return self.n * self.o * self.c * self.kh * self.kw * oh * ow


def geometry(x_shape, w_shape, strides, padding) -> SparseConvGeometry:
    g = fft_geometry(x_shape, w_shape, padding)
    return SparseConvGeometry(**vars(g), strides=tuple(int(s) for s in strides))


def sparsity(weight: np.ndarray) -> float:
    """The fraction of the weight's entries that are exactly zero."""
    return float(np.count_nonzero(weight == 0) / max(weight.size, 1))
