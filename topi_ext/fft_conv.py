"""FFT convolution: a stride-1, ungrouped conv2d (NCHW / OIHW, any zero padding) through 2-D real
DFTs, with the weight spectra computed at compile time.

    y[n, o] = IDFT2( Σ_c DFT2(x_pad[n, c]) · conj(DFT2(w[o, c])) )  cropped to the output

(cross-correlation theorem; circular size L = the padded input size, so nothing wraps around: output
pixel i reads x_pad[i .. i + k − 1] with i + k − 1 < L). The padding never materializes: the forward
DFT matrices are written for the padded positions (``exp(−2πi·f·(m + pad)/L)``), and the inverse ones
only for the output rows / columns. Along W the transform is real (the half spectrum, L_w/2 + 1
frequencies; the inverse doubles the mirrored ones), along H complex.

The DFTs are products with constant DFT matrices (REFERENCES B1: TVM 0.27 has no FFT operator, and
small DFTs as matmuls are what the default schedules and MetaSchedule handle), so the operator is
a Relax subgraph of ``matmul`` / ``permute_dims`` / ``reshape`` / ``add`` that every target builds:

1. ``x @ A`` (W → half spectrum, real and imaginary parts), 2. ``B @ ·`` (H → spectrum, complex),
3. per frequency a complex ``[N, C] @ [C, O]`` channel mix (a batched matmul over the L_h·F_w
frequencies, weight spectra ``[F, C, O]`` constants), 4. ``G @ ·`` (inverse over H, the output rows),
5. ``· @ C`` (inverse real DFT over W, the output columns), plus the bias.

The cost model (:func:`fft_costs`, :func:`prefer_fft`) counts real multiply-adds of both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# FFT is chosen when direct MACs >= FFT_RATIO x the FFT's (mixing + TRANSFORM_WEIGHT x transforms)
# and the kernel is at least MIN_KERNEL on both sides; see prefer_fft. The constants reproduce the
# decisions measured on this kind of CPU in REFERENCES.md B1 (same padding, batch 1: 3×3 never;
# C=64 @32²: k=7 loses, k=11 and 15 win; C=256 @32²: k=5 wins; C=16: only k=15 wins), which came from
# another FFT implementation: they are not yet calibrated against this graph's own timings.
FFT_RATIO = 4.4
TRANSFORM_WEIGHT = 2.0
MIN_KERNEL = 5


@dataclass(frozen=True)
class FFTConvGeometry:
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    padding: tuple[int, int, int, int]  # top, left, bottom, right

    @property
    def lh(self) -> int:
        return self.h + self.padding[0] + self.padding[2]

    @property
    def lw(self) -> int:
        return self.w + self.padding[1] + self.padding[3]

    @property
    def fw(self) -> int:
        return self.lw // 2 + 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.lh - self.kh + 1, self.lw - self.kw + 1


def geometry(x_shape, w_shape, padding) -> FFTConvGeometry:
    n, c, h, w = (int(d) for d in x_shape)
    o, c2, kh, kw = (int(d) for d in w_shape)
    assert c == c2, "groups must be 1"
    pad = tuple(int(p) for p in padding)
    if len(pad) == 2:
        pad = pad * 2
    return FFTConvGeometry(n, c, h, w, o, kh, kw, pad)


# ----------------------------------------------------------------------------- cost model


def fft_costs(g: FFTConvGeometry) -> tuple[int, int, int]:
    """Real multiply-adds: ``(direct, fft channel mixing, fft transforms)``."""
    oh, ow = g.out_hw
    direct = g.n * g.o * g.c * oh * ow * g.kh * g.kw
    mixing = 4 * g.lh * g.fw * g.n * g.c * g.o
    transforms = g.n * (g.c * (2 * g.h * g.w * g.fw + 4 * g.lh * g.h * g.fw)
                        + g.o * (4 * oh * g.lh * g.fw + 2 * oh * g.fw * ow))
    return direct, mixing, transforms


def prefer_fft(g: FFTConvGeometry) -> bool:
    """FFT only for large kernels where it does several times fewer (weighted) multiply-adds; 3×3 never."""
    if min(g.kh, g.kw) < MIN_KERNEL:
        return False
    direct, mixing, transforms = fft_costs(g)
    return direct >= FFT_RATIO * (mixing + TRANSFORM_WEIGHT * transforms)


# ----------------------------------------------------------------------------- constants


def _angles(freqs, positions, length: int) -> np.ndarray:
    return 2 * np.pi * np.outer(freqs, positions) / length


def dft_constants(g: FFTConvGeometry, weight: np.ndarray) -> dict[str, np.ndarray]:
    """The DFT matrices and weight spectra, in float64."""
    oh, ow = g.out_hw
    t, l = g.padding[0], g.padding[1]
    fw = np.arange(g.fw)
    a = _angles(np.arange(g.w) + l, fw, g.lw)  # [W, Fw]: x @ A
    b = _angles(np.arange(g.lh), np.arange(g.h) + t, g.lh)  # [Lh, H]: B @ x
    gi = _angles(np.arange(oh), np.arange(g.lh), g.lh)  # [OH, Lh]
    alpha = np.full(g.fw, 2.0)
    alpha[0] = 1.0
    if g.lw % 2 == 0:
        alpha[-1] = 1.0
    ci = _angles(fw, np.arange(ow), g.lw)  # [Fw, OW]
    spec = np.fft.rfft2(weight.astype(np.float64), s=(g.lh, g.lw))  # [O, C, Lh, Fw]
    k = np.conj(spec).reshape(g.o, g.c, g.lh * g.fw).transpose(2, 1, 0)  # [F, C, O], conj: correlation
    return {"ar": np.cos(a), "ai": -np.sin(a), "br": np.cos(b), "bi": -np.sin(b),
            "kr": k.real, "ki": k.imag,
            "gr": np.cos(gi) / g.lh, "gi": np.sin(gi) / g.lh,
            "cr": alpha[:, None] * np.cos(ci) / g.lw, "ci": -alpha[:, None] * np.sin(ci) / g.lw}


def fft_conv2d_np(x: np.ndarray, weight: np.ndarray, padding, bias: np.ndarray | None = None) -> np.ndarray:
    """numpy twin of the Relax graph (float64), step by step."""
    g = geometry(x.shape, weight.shape, padding)
    k = dft_constants(g, weight)
    x = x.astype(np.float64)
    xr, xi = x @ k["ar"], x @ k["ai"]
    sr, si = k["br"] @ xr - k["bi"] @ xi, k["br"] @ xi + k["bi"] @ xr  # [N, C, Lh, Fw]
    sr = sr.reshape(g.n, g.c, -1).transpose(2, 0, 1)
    si = si.reshape(g.n, g.c, -1).transpose(2, 0, 1)
    yr, yi = sr @ k["kr"] - si @ k["ki"], sr @ k["ki"] + si @ k["kr"]  # [F, N, O]
    yr = yr.transpose(1, 2, 0).reshape(g.n, g.o, g.lh, g.fw)
    yi = yi.transpose(1, 2, 0).reshape(g.n, g.o, g.lh, g.fw)
    zr, zi = k["gr"] @ yr - k["gi"] @ yi, k["gr"] @ yi + k["gi"] @ yr
    y = zr @ k["cr"] + zi @ k["ci"]
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


# ----------------------------------------------------------------------------- Relax


def emit_fft_conv2d(bb, x, weight: np.ndarray, padding, bias: np.ndarray | None = None, dtype: str = "float32"):
    """Emit the FFT conv of Relax tensor ``x`` (NCHW) with constant ``weight`` (OIHW) into ``bb``;
    returns the (emitted) output ``[N, O, OH, OW]``."""
    from tvm import relax

    g = geometry([int(d) for d in x.ty.shape], weight.shape, padding)
    k = {name: relax.const(np.ascontiguousarray(v, dtype), dtype) for name, v in dft_constants(g, weight).items()}
    op = relax.op
    mm, emit = op.matmul, bb.emit

    def cmul_left(mr, mi, vr, vi):  # (mr + i·mi) @ (vr + i·vi)
        return (emit(op.subtract(emit(mm(mr, vr)), emit(mm(mi, vi)))),
                emit(op.add(emit(mm(mr, vi)), emit(mm(mi, vr)))))

    xr, xi = emit(mm(x, k["ar"])), emit(mm(x, k["ai"]))
    sr, si = cmul_left(k["br"], k["bi"], xr, xi)
    f = g.lh * g.fw

    def to_freq(t):
        return emit(op.permute_dims(emit(op.reshape(t, (g.n, g.c, f))), [2, 0, 1]))

    def from_freq(t):
        return emit(op.reshape(emit(op.permute_dims(t, [1, 2, 0])), (g.n, g.o, g.lh, g.fw)))

    yr, yi = cmul_left(to_freq(sr), to_freq(si), k["kr"], k["ki"])
    zr, zi = cmul_left(k["gr"], k["gi"], from_freq(yr), from_freq(yi))
    y = emit(op.add(emit(mm(zr, k["cr"])), emit(mm(zi, k["ci"]))))
    if bias is not None:
        y = emit(op.add(y, relax.const(np.asarray(bias, dtype).reshape(1, -1, 1, 1), dtype)))
    return y
