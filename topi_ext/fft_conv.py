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

1. ``x @ A`` (W → half spectrum), 2. ``· @ B`` (H → spectrum, complex), 3. per frequency a complex
``[N, C] @ [C, O]`` channel mix (a batched matmul over the L_h·F_w frequencies with the weight spectra
as constants), 4. ``· @ G`` (inverse over H, the output rows only), 5. ``· @ C`` (inverse real DFT over
W, the output columns only), plus the bias. Complex products are real ones on ``[re | im]`` stacked
vectors with ``[[Mr, Mi], [−Mi, Mr]]`` blocks; transposes between the steps bring the next axis last,
so every product is a plain 2-D ``v @ M`` with a constant M (the channel mix a batched one).

The cost model (:func:`fft_costs`, :func:`prefer_fft`) counts real multiply-adds of both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dft import angles, complex_block, half_spectrum_weights

# FFT is chosen when direct MACs >= MIX_WEIGHT x the FFT's channel-mixing MACs + TRANSFORM_WEIGHT x its
# transform MACs, and the kernel is at least MIN_KERNEL on both sides. Fitted to benchmarks/fft_conv.py
# on this CPU (Zen 3, AVX2, 1 thread, batch 1, same padding; reforge's direct conv at about 0.025 ns per
# MAC, the mix, which streams the complex weight spectra, at about 0.45): 3×3 and 5×5 never; 64 channels
# @64²: k=7 a tie (direct), k=11 FFT 2.0x; @32²: k=11 2.0x, k=15 3.6x; 16 channels @32²: k=11 1.6x;
# 256 channels @32², k=5: direct (FFT 1.8x slower, the mix dominates).
MIX_WEIGHT = 18.0
TRANSFORM_WEIGHT = 0.8
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
    return direct >= MIX_WEIGHT * mixing + TRANSFORM_WEIGHT * transforms


# ----------------------------------------------------------------------------- constants


def dft_constants(g: FFTConvGeometry, weight: np.ndarray) -> dict[str, np.ndarray]:
    """The matrices of the five products, in float64, each a right operand ``v @ M`` with the real and
    imaginary parts of a complex axis stacked (``[re | im]``)."""
    oh, ow = g.out_hw
    t, l = g.padding[0], g.padding[1]
    fw = np.arange(g.fw)
    a = angles(np.arange(g.w) + l, fw, g.lw)  # [W, Fw]: forward real DFT over W, padded positions
    b = angles(np.arange(g.h) + t, np.arange(g.lh), g.lh)  # [H, Lh]: forward DFT over H
    gi = angles(np.arange(g.lh), np.arange(oh), g.lh)  # [Lh, OH]: inverse over H, output rows only
    alpha = half_spectrum_weights(g.fw, g.lw)
    ci = angles(fw, np.arange(ow), g.lw)  # [Fw, OW]: inverse real DFT over W, output columns only
    spec = np.conj(np.fft.rfft2(weight.astype(np.float64), s=(g.lh, g.lw)))  # [O, C, Lh, Fw]; conj: correlation
    k = spec.transpose(3, 2, 1, 0).reshape(g.fw * g.lh, g.c, g.o)  # [F = (fw, fh), C, O]
    return {"a": np.concatenate([np.cos(a), -np.sin(a)], axis=1),  # [W, 2Fw]
            "b": complex_block(np.cos(b), -np.sin(b)),  # [2H, 2Lh]
            "k": np.concatenate([np.concatenate([k.real, k.imag], 2), np.concatenate([-k.imag, k.real], 2)], 1),
            "g": complex_block(np.cos(gi) / g.lh, np.sin(gi) / g.lh),  # [2Lh, 2OH]
            "c": np.concatenate([alpha[:, None] * np.cos(ci), -alpha[:, None] * np.sin(ci)], 0) / g.lw}  # [2Fw, OW]


def fft_conv2d_np(x: np.ndarray, weight: np.ndarray, padding, bias: np.ndarray | None = None) -> np.ndarray:
    """numpy twin of the Relax graph (float64), step by step."""
    g = geometry(x.shape, weight.shape, padding)
    k = dft_constants(g, weight)
    oh, ow = g.out_hw
    s = x.astype(np.float64) @ k["a"]  # [N, C, H, (2, Fw)]
    s = s.reshape(g.n, g.c, g.h, 2, g.fw).transpose(0, 1, 4, 3, 2).reshape(-1, 2 * g.h) @ k["b"]
    s = s.reshape(g.n, g.c, g.fw, 2, g.lh).transpose(2, 4, 0, 3, 1).reshape(g.fw * g.lh, g.n, 2 * g.c)
    y = s @ k["k"]  # [F, N, (2, O)]
    y = y.reshape(g.fw, g.lh, g.n, 2, g.o).transpose(2, 4, 0, 3, 1).reshape(-1, 2 * g.lh) @ k["g"]
    y = y.reshape(g.n, g.o, g.fw, 2, oh).transpose(0, 1, 4, 3, 2).reshape(-1, 2 * g.fw) @ k["c"]
    y = y.reshape(g.n, g.o, oh, ow)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


# ----------------------------------------------------------------------------- Relax


def emit_fft_conv2d(bb, x, weight: np.ndarray, padding, bias: np.ndarray | None = None, dtype: str = "float32"):
    """Emit the FFT conv of Relax tensor ``x`` (NCHW) with constant ``weight`` (OIHW) into ``bb``;
    returns the (emitted) output ``[N, O, OH, OW]``. The graph is :func:`fft_conv2d_np`'s: every
    product a 2-D ``v @ M`` (or, for the channel mix, a batched one) with a constant right operand,
    with transposes between them that bring the next transformed axis last."""
    from tvm import relax

    g = geometry([int(d) for d in x.ty.shape], weight.shape, padding)
    k = {name: relax.const(np.ascontiguousarray(v, dtype), dtype) for name, v in dft_constants(g, weight).items()}
    op, emit = relax.op, bb.emit
    oh, ow = g.out_hw

    def product(v, rows_shape, perm, flat, matrix):
        """reshape v to ``rows_shape``, permute, flatten to ``flat``, multiply by ``matrix``."""
        v = emit(op.permute_dims(emit(op.reshape(v, rows_shape)), perm))
        return emit(op.matmul(emit(op.reshape(v, flat)), matrix))

    s = emit(op.matmul(emit(op.reshape(x, (g.n * g.c * g.h, g.w))), k["a"]))
    s = product(s, (g.n, g.c, g.h, 2, g.fw), [0, 1, 4, 3, 2], (g.n * g.c * g.fw, 2 * g.h), k["b"])
    y = product(s, (g.n, g.c, g.fw, 2, g.lh), [2, 4, 0, 3, 1], (g.fw * g.lh, g.n, 2 * g.c), k["k"])
    y = product(y, (g.fw, g.lh, g.n, 2, g.o), [2, 4, 0, 3, 1], (g.n * g.o * g.fw, 2 * g.lh), k["g"])
    y = product(y, (g.n, g.o, g.fw, 2, oh), [0, 1, 4, 3, 2], (g.n * g.o * oh, 2 * g.fw), k["c"])
    y = emit(op.reshape(y, (g.n, g.o, oh, ow)))
    if bias is not None:
        y = emit(op.add(y, relax.const(np.asarray(bias, dtype).reshape(1, -1, 1, 1), dtype)))
    return y
