"""FFT convolution: a stride-1, ungrouped conv2d (NCHW / OIHW, any zero padding) through tiled 2-D
real DFTs (overlap-save), with the weight spectra computed at compile time.

The padded input is cut into overlapping L×L windows with strides (T_h, T_w) = (L − k_h + 1, L − k_w + 1);
on a window the circular cross-correlation of size L equals the linear one on its first T_h × T_w
outputs (output pixel i reads window positions i .. i + k − 1 <= L − 1, nothing wraps), so

    y[n, o, tile + (i, j)] = IDFT_L( Σ_c DFT_L(window[n, c]) · conj(DFT_L(w[o, c])) )[i, j],  i < T_h, j < T_w

and the outputs of all tiles, cropped to the output size, are the conv. The weight spectra are
L·(L/2+1)·C·O complex values whatever the map size, and per frequency the channel mix is a GEMM
``[2·tiles, C] @ [C, 2·O]`` (real and imaginary rows against ``[Re K | Im K]`` columns) that reuses
each weight value across all tiles: :func:`mix_prim_func`, a reforge operator tagged
``reforge.op = "fft_mix"`` and scheduled as a register-tiled batched GEMM (``schedules/fft.py``).

The DFTs along W (real, half spectrum F = L/2 + 1) and H (complex) and the inverses (output rows
and columns of a tile only) are products with constant DFT matrices (REFERENCES B1: TVM 0.27 has no
FFT operator) under the default matmul schedule; complex values are ``[re | im]`` blocks, matrices
``[[Mr, Mi], [−Mi, Mr]]``, their columns padded to a multiple of 8 so the products vectorize.

The cost model (:func:`fft_costs`, :func:`plan_fft`, :func:`prefer_fft`) weighs the multiply-adds of
both ways with per-kind costs measured by benchmarks/fft_conv.py, and picks L.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from tvm import te

from .dft import angles, complex_block, half_spectrum_weights
from .op_kind import tag

MIX_OP = "fft_mix"  # the channel mix PrimFunc's ``reforge.op`` attribute
MIX_ACC, MIX_OUT = "fft_mix_acc", "fft_mix"  # its blocks: the GEMM, the complex combination
MIX_STRIP = 16  # weight spectra packed in strips of this many output columns (the GEMM's register tile)
COLUMN_MULTIPLE = 8  # DFT matrix columns padded to this (fp32 vector lanes)

FFT_SIZES = (8, 16, 32, 64)
# ns per real multiply-add on this CPU (2-core AMD EPYC VM, AVX2, 1 thread, batch 1), fitted to per-operator
# profiles of the FFT graph and to benchmarks/fft_conv.py's rows (a shared, loaded machine: the ratios to
# NS_DIRECT are what was measured): reforge's direct conv, the channel-mix GEMM, the DFT products (padded
# columns counted); NS_MOVE per spectrum value shuffled (take / transpose / slice) between the steps.
NS_DIRECT = 0.025
NS_DIRECT_NARROW = 0.05  # the direct conv with at most NARROW input or output channels (little reuse per load)
NARROW = 16
NS_MIX = 0.05
NS_TRANSFORM = 0.092
NS_MOVE = 2.35
MARGIN = 1.3  # FFT only when its estimate is this many times below direct's (the rows' run-to-run noise)
MAX_SPECTRUM_BYTES = 128 << 20  # weight spectra larger than this never go through FFT


_KEY = re.compile(r"(\d+)x(\d+)x(\d+)x(\d+) -> (\d+) k (\d+)x(\d+) pad (\d+),(\d+),(\d+),(\d+)")


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
    def out_hw(self) -> tuple[int, int]:
        t, l, b, r = self.padding
        return self.h + t + b - self.kh + 1, self.w + l + r - self.kw + 1

    @property
    def key(self) -> str:
        """How tuning records name the conv: ``N×C×H×W -> O k KH×KW pad T,L,B,R``."""
        return (f"{self.n}x{self.c}x{self.h}x{self.w} -> {self.o} k {self.kh}x{self.kw} "
                f"pad {','.join(map(str, self.padding))}")

    @classmethod
    def from_key(cls, key: str) -> "FFTConvGeometry | None":
        """The geometry :attr:`key` names, or None for a string of another form."""
        m = _KEY.fullmatch(key)
        if m is None:
            return None
        n, c, h, w, o, kh, kw, *padding = map(int, m.groups())
        return cls(n, c, h, w, o, kh, kw, tuple(padding))


def geometry(x_shape, w_shape, padding) -> FFTConvGeometry:
    n, c, h, w = (int(d) for d in x_shape)
    o, c2, kh, kw = (int(d) for d in w_shape)
    assert c == c2, "groups must be 1"
    pad = tuple(int(p) for p in padding)
    if len(pad) == 2:
        pad = pad * 2
    return FFTConvGeometry(n, c, h, w, o, kh, kw, pad)


@dataclass(frozen=True)
class Tiling:
    """Overlap-save tiling of ``g`` with FFT size ``l``: tiles of ``th × tw`` outputs, ``nh × nw`` of them,
    windows ``l × l`` read from the input zero-padded to ``hp × wp``."""

    g: FFTConvGeometry
    l: int

    @property
    def f(self) -> int:
        return self.l // 2 + 1

    @property
    def th(self) -> int:
        return self.l - self.g.kh + 1

    @property
    def tw(self) -> int:
        return self.l - self.g.kw + 1

    @property
    def nh(self) -> int:
        return -(-self.g.out_hw[0] // self.th)

    @property
    def nw(self) -> int:
        return -(-self.g.out_hw[1] // self.tw)

    @property
    def hp(self) -> int:
        return self.nh * self.th + self.g.kh - 1

    @property
    def wp(self) -> int:
        return self.nw * self.tw + self.g.kw - 1

    @property
    def tiles(self) -> int:
        return self.g.n * self.nh * self.nw

    @property
    def spectrum_bytes(self) -> int:
        return 4 * self.l * self.f * self.g.c * 2 * self.g.o


# ----------------------------------------------------------------------------- cost model


def _padded(n: int) -> int:
    return -(-n // COLUMN_MULTIPLE) * COLUMN_MULTIPLE


def fft_costs(t: Tiling) -> tuple[int, int, int, int]:
    """``(direct MACs, mix MACs, transform MACs, values moved)`` of the conv and of its FFT with tiling ``t``."""
    g, l, f = t.g, t.l, t.f
    oh, ow = g.out_hw
    direct = g.n * g.o * g.c * oh * ow * g.kh * g.kw
    mix = l * f * 2 * t.tiles * g.c * 2 * g.o
    forward = g.n * g.c * (t.hp * t.nw * l * _padded(2 * f) + t.nh * t.nw * f * 4 * l * l)
    inverse = t.tiles * g.o * f * (2 * l * _padded(2 * t.th) + t.th * 2 * _padded(t.tw))
    moved = t.tiles * l * f * 2 * (g.c + g.o) + g.n * g.c * t.hp * t.wp
    return direct, mix, forward + inverse, moved


def direct_ns(g: FFTConvGeometry) -> float:
    """Estimated ns of reforge's direct conv: ``NS_DIRECT · N·O·C·OH·OW·k_h·k_w`` (narrow: NS_DIRECT_NARROW)."""
    oh, ow = g.out_hw
    return (NS_DIRECT_NARROW if min(g.c, g.o) <= NARROW else NS_DIRECT) * g.n * g.o * g.c * oh * ow * g.kh * g.kw


def fft_ns(t: Tiling) -> float:
    """Estimated ns of the FFT conv: ``NS_MIX · mix + NS_TRANSFORM · transforms + NS_MOVE · moved``."""
    _, mix, transforms, moved = fft_costs(t)
    return NS_MIX * mix + NS_TRANSFORM * transforms + NS_MOVE * moved


def tilings(g: FFTConvGeometry) -> list[Tiling]:
    """The tilings whose weight spectra fit MAX_SPECTRUM_BYTES (tiles at least k − 1 wide), cheapest first."""
    fits = [Tiling(g, l) for l in FFT_SIZES
            if l - max(g.kh, g.kw) + 1 >= max(g.kh, g.kw) - 1 and Tiling(g, l).spectrum_bytes <= MAX_SPECTRUM_BYTES]
    return sorted(fits, key=fft_ns)


def plan_fft(g: FFTConvGeometry) -> Tiling | None:
    """The cheapest of :func:`tilings`, or None."""
    return next(iter(tilings(g)), None)


def plan_any(g: FFTConvGeometry) -> Tiling:
    """:func:`plan_fft`, or when no size fits the spectrum cap the smallest power of two above the kernel
    (forced rewrites)."""
    return plan_fft(g) or Tiling(g, 1 << max(g.kh, g.kw).bit_length())


def prefer_fft(g: FFTConvGeometry) -> Tiling | None:
    """The tiling to use when the FFT estimate beats the direct conv's by MARGIN, else None."""
    t = plan_fft(g)
    if t is None:
        return None
    return t if MARGIN * fft_ns(t) <= direct_ns(g) else None


# ----------------------------------------------------------------------------- constants


def _pad_columns(m: np.ndarray) -> np.ndarray:
    return np.pad(m, ((0, 0), (0, _padded(m.shape[1]) - m.shape[1])))


def dft_constants(t: Tiling, weight: np.ndarray) -> dict[str, np.ndarray]:
    """float64 right operands ``v @ M`` of the four DFT products (columns padded) and the weight spectra.

    a ``[L, 2F]`` real DFT of a window row; b ``[2L, 2L]`` complex DFT over H; k ``conj(DFT2(w))``, per
    frequency (F, L) a ``[C, 2O]`` matrix ``[Re | Im]`` packed in strips of columns (:func:`pack_spectra`);
    g ``[2L, 2T_h]`` inverse over H, a tile's rows only; c ``[2F, T_w]`` inverse real DFT over W, a tile's
    columns only (the half spectrum stands for its mirror: weights 2 but for DC and Nyquist)."""
    l, f = t.l, t.f
    a = angles(np.arange(l), np.arange(f), l)
    b = angles(np.arange(l), np.arange(l), l)
    gi = angles(np.arange(l), np.arange(t.th), l)
    alpha = half_spectrum_weights(f, l)
    ci = angles(np.arange(f), np.arange(t.tw), l)
    spec = np.conj(np.fft.rfft2(weight.astype(np.float64), s=(l, l)))  # [O, C, L, F]; conj: correlation
    k = spec.transpose(3, 2, 1, 0).reshape(f * l, t.g.c, t.g.o)
    return {"a": _pad_columns(np.concatenate([np.cos(a), -np.sin(a)], axis=1)),
            "b": complex_block(np.cos(b), -np.sin(b)),
            "k": pack_spectra(np.concatenate([k.real, k.imag], axis=2)),
            "g": _pad_columns(complex_block(np.cos(gi) / l, np.sin(gi) / l)),
            "c": _pad_columns(np.concatenate([alpha[:, None] * np.cos(ci), -alpha[:, None] * np.sin(ci)], 0) / l)}


def strip_width(cols: int) -> int:
    return max(d for d in range(1, MIX_STRIP + 1) if cols % d == 0)


def pack_spectra(k: np.ndarray) -> np.ndarray:
    """``[Q, C, 2O]`` → ``[Q, 2O / V, C, V]``: each strip of V columns contiguous, so the GEMM streams the
    weights sequentially instead of one cache line per row of a strided strip."""
    q, c, cols = k.shape
    v = strip_width(cols)
    return np.ascontiguousarray(k.reshape(q, c, cols // v, v).transpose(0, 2, 1, 3))


def window_indices(tiles: int, stride: int, l: int) -> np.ndarray:
    """Positions of ``tiles`` windows of ``l`` with stride ``stride``, concatenated."""
    return (np.arange(tiles)[:, None] * stride + np.arange(l)[None, :]).reshape(-1).astype("int32")


# ----------------------------------------------------------------------------- the channel mix


def mix(x: te.Tensor, k: te.Tensor, name: str = MIX_OUT) -> te.Tensor:
    """``x [Q, 2P, C]`` (rows: real parts of P vectors, then imaginary), ``k [Q, 2O / V, C, V]`` (``[Re K | Im K]``
    packed): ``y[q, 0] = Re(x_q K_q)``, ``y[q, 1] = Im(x_q K_q)``, ``[Q, 2, P, O]``, through the real GEMM
    ``m_q = x_q @ k_q``: ``Re = m[:P, :O] − m[P:, O:]``, ``Im = m[:P, O:] + m[P:, :O]``."""
    q, p2, c = (int(d) for d in x.shape)
    _, strips, _, v = (int(d) for d in k.shape)
    o, p = strips * v // 2, p2 // 2
    r = te.reduce_axis((0, c), "c")
    m = te.compute((q, p2, 2 * o), lambda b, i, j: te.sum(x[b, i, r] * k[b, j // v, r, j % v], axis=r), name=MIX_ACC)
    return te.compute((q, 2, p, o), lambda b, s, i, j: te.if_then_else(
        s == 0, m[b, i, j] - m[b, i + p, j + o], m[b, i, j + o] + m[b, i + p, j]), name=name)


def mix_prim_func(q: int, p: int, c: int, o: int, dtype: str = "float32"):
    """The mix PrimFunc ``(x [Q, 2P, C], k [Q, 2O / V, C, V], out [Q, 2, P, O])``, tagged ``reforge.op``."""
    v = strip_width(2 * o)
    x = te.placeholder((q, 2 * p, c), dtype, "x")
    k = te.placeholder((q, 2 * o // v, c, v), dtype, "k")
    out = mix(x, k)
    return tag(te.create_prim_func([x, k, out]), MIX_OP)


# ----------------------------------------------------------------------------- numpy twin


def fft_conv2d_np(x: np.ndarray, weight: np.ndarray, padding, bias: np.ndarray | None = None,
                  l: int | None = None) -> np.ndarray:
    """numpy twin of the Relax graph (float64), step by step; ``l`` defaults to the planned FFT size."""
    g = geometry(x.shape, weight.shape, padding)
    t = Tiling(g, l or plan_any(g).l)
    k = dft_constants(t, weight)
    f, L, p = t.f, t.l, t.tiles
    oh, ow = g.out_hw
    top, left = g.padding[:2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, t.hp - g.h - top), (left, t.wp - g.w - left)))
    s = xp[..., window_indices(t.nw, t.tw, L)].reshape(-1, L) @ k["a"]
    s = s.reshape(g.n, g.c, t.hp, t.nw, -1)[..., :2 * f][:, :, window_indices(t.nh, t.th, L)]
    s = s.reshape(g.n, g.c, t.nh, L, t.nw, 2, f).transpose(0, 1, 2, 4, 6, 5, 3).reshape(-1, 2 * L) @ k["b"]
    s = s.reshape(g.n, g.c, t.nh, t.nw, f, 2, L).transpose(4, 6, 5, 0, 2, 3, 1).reshape(f * L, 2 * p, g.c)
    m = s @ k["k"].transpose(0, 2, 1, 3).reshape(f * L, g.c, 2 * g.o)
    y = np.stack([m[:, :p, :g.o] - m[:, p:, g.o:], m[:, :p, g.o:] + m[:, p:, :g.o]], axis=1)
    y = y.reshape(f, L, 2, g.n, t.nh, t.nw, g.o).transpose(3, 6, 4, 5, 0, 2, 1).reshape(-1, 2 * L) @ k["g"]
    y = y[:, :2 * t.th].reshape(g.n, g.o, t.nh, t.nw, f, 2, t.th).transpose(0, 1, 2, 6, 3, 5, 4)
    y = (y.reshape(-1, 2 * f) @ k["c"])[:, :t.tw].reshape(g.n, g.o, t.nh * t.th, t.nw * t.tw)[:, :, :oh, :ow]
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


# ----------------------------------------------------------------------------- Relax


def emit_fft_conv2d(bb, x, weight: np.ndarray, padding, bias: np.ndarray | None = None, dtype: str = "float32",
                    tiling: Tiling | None = None):
    """Emit the FFT conv of Relax tensor ``x`` (NCHW) with constant ``weight`` (OIHW) into ``bb``;
    returns the output ``[N, O, OH, OW]``. The graph is :func:`fft_conv2d_np`'s."""
    from tvm import relax

    g = geometry([int(d) for d in x.ty.shape], weight.shape, padding)
    t = tiling or plan_any(g)
    k = {name: relax.const(np.ascontiguousarray(v, dtype), dtype) for name, v in dft_constants(t, weight).items()}
    op, emit = relax.op, bb.emit
    f, L, p = t.f, t.l, t.tiles
    oh, ow = g.out_hw
    top, left = g.padding[:2]

    def product(v, shape, perm, rows, matrix, keep):
        """reshape v to ``shape``, permute by ``perm``, flatten to ``rows`` rows, ``@ matrix``, keep ``keep``
        columns."""
        v = emit(op.reshape(emit(op.permute_dims(emit(op.reshape(v, shape)), perm)), (rows, -1)))
        y = emit(op.matmul(v, matrix))
        return y if keep == int(matrix.ty.shape[1]) else emit(op.strided_slice(y, [1], [0], [keep]))

    def take(v, tiles, stride, axis):
        return emit(op.take(v, relax.const(window_indices(tiles, stride, L)), axis=axis))

    xp = emit(op.nn.pad(x, [0, 0, 0, 0, top, t.hp - g.h - top, left, t.wp - g.w - left]))
    s = emit(op.matmul(emit(op.reshape(take(xp, t.nw, t.tw, 3), (g.n * g.c * t.hp * t.nw, L))), k["a"]))
    s = emit(op.strided_slice(emit(op.reshape(s, (g.n, g.c, t.hp, t.nw, -1))), [4], [0], [2 * f]))
    s = take(emit(op.reshape(s, (g.n, g.c, t.hp, t.nw * 2 * f))), t.nh, t.th, 2)
    s = product(s, (g.n, g.c, t.nh, L, t.nw, 2, f), [0, 1, 2, 4, 6, 5, 3], g.c * p * f, k["b"], 2 * L)
    s = emit(op.reshape(emit(op.permute_dims(emit(op.reshape(s, (g.n, g.c, t.nh, t.nw, f, 2, L))),
                                             [4, 6, 5, 0, 2, 3, 1])), (f * L, 2 * p, g.c)))
    func = mix_prim_func(f * L, p, g.c, g.o, dtype)
    gv = bb.add_func(func, MIX_OP)
    bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    y = emit(relax.call_tir(gv, [s, k["k"]], relax.TensorType((f * L, 2, p, g.o), dtype)))
    y = product(y, (f, L, 2, g.n, t.nh, t.nw, g.o), [3, 6, 4, 5, 0, 2, 1], g.n * g.o * t.nh * t.nw * f, k["g"],
                2 * t.th)
    y = product(y, (g.n, g.o, t.nh, t.nw, f, 2, t.th), [0, 1, 2, 6, 3, 5, 4], g.n * g.o * t.nh * t.th * t.nw,
                k["c"], t.tw)
    y = emit(op.reshape(y, (g.n, g.o, t.nh * t.th, t.nw * t.tw)))
    if (oh, ow) != (t.nh * t.th, t.nw * t.tw):
        y = emit(op.strided_slice(y, [2, 3], [0, 0], [oh, ow]))
    if bias is not None:
        y = emit(op.add(y, relax.const(np.asarray(bias, dtype).reshape(1, -1, 1, 1), dtype)))
    return y
