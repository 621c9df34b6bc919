"""Direct sparse convolution (Park et al., ICLR 2017) of a constant, mostly-zero weight, NCHW, any
kernel, stride and zero padding, groups 1, dilation 1; a 1×1 conv is the case k = 1 (Elsen et al.,
"Fast Sparse ConvNets", CVPR 2020: the pixels vectorized, each nonzero weight broadcast).

The weight's nonzeros are kept per output channel o (compressed rows): taps j in
``indptr[o] .. indptr[o+1]``, each a value ``values[j]`` and the offset of its (c, ky, kx) in the
flattened zero-padded input, ``offsets[j] = c·Hp·Wp + ky·Wp + kx``. Then

    out[n, o, y, x] = Σ_j values[j] · xp[n, offsets[j] + y·sh·Wp + x·sw]

the same products as the dense conv, the zeros skipped. Each output row is computed in tiles of
TILE columns: an accumulator vector per tile, one broadcast FMA of a tap against TILE input values
per nonzero. Stride 1 walks the padded map as one long row (``q = y·Wp + x``, the Wp − OW columns
past each row computed and cropped): full vectors even on small maps, and a 1×1 conv without
padding is exactly a sparse matrix times the [C, H·W] activation. The tile loop (images, rows,
tiles) runs in parallel, or the output channels where it has a single iteration.

The PrimFunc is emitted scheduled (the loop over a row's nonzeros has data-dependent bounds, which
the TE / schedule primitives do not express), tagged ``reforge.op = "sparse_conv2d"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from .fft_conv import FFTConvGeometry
from .fft_conv import geometry as fft_geometry
from .op_kind import tag

OP = "sparse_conv2d"  # the PrimFunc's ``reforge.op`` attribute
TILE = 64  # output columns per accumulator tile: 4 AVX-512 vectors, 8 AVX2, 16 NEON


@dataclass(frozen=True)
class SparseConvGeometry(FFTConvGeometry):
    """fft_conv's conv geometry (N, C, H, W, O, KH, KW, padding) with strides."""

    strides: tuple[int, int] = (1, 1)

    @property
    def out_hw(self) -> tuple[int, int]:
        oh, ow = super().out_hw  # stride 1: outputs (oh - 1) // s + 1 of them at stride s
        return (oh - 1) // self.strides[0] + 1, (ow - 1) // self.strides[1] + 1

    @property
    def padded_hw(self) -> tuple[int, int]:
        """(Hp, Wp) of the padded input; stride 1 with kw > 1 adds a row below, which the last row's
        cropped columns read."""
        t, l, b, r = self.padding
        extra = 1 if self.strides == (1, 1) and self.kw > 1 else 0
        return self.h + t + b + extra, self.w + l + r

    @property
    def walk(self) -> tuple[int, int, int, int]:
        """(rows R, columns Q, input step per row, input step per column) of the output walk."""
        oh, ow = self.out_hw
        wp = self.padded_hw[1]
        if self.strides == (1, 1):
            return 1, oh * wp, 0, 1
        return oh, ow, self.strides[0] * wp, self.strides[1]

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


@dataclass(frozen=True)
class SparseTaps:
    """The nonzeros of an OIHW weight in compressed rows (module docstring); at least one slot each
    (a zero-length buffer cannot be passed), so an all-zero weight keeps one unused tap."""

    indptr: np.ndarray  # int32 [O + 1]
    offsets: np.ndarray  # int32 [max(nnz, 1)]
    values: np.ndarray  # float32 [max(nnz, 1)]

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])


def taps(weight: np.ndarray, g: SparseConvGeometry) -> SparseTaps:
    hp, wp = g.padded_hw
    o, c, ky, kx = np.nonzero(weight)  # row-major: by output channel, then c, ky, kx
    offsets = (c * hp * wp + ky * wp + kx).astype("int32")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(o, minlength=g.o))]).astype("int32")
    values = weight[o, c, ky, kx].astype("float32")
    if values.size == 0:
        offsets, values = np.zeros(1, "int32"), np.zeros(1, "float32")
    return SparseTaps(indptr, offsets, values)


def _nest(g: SparseConvGeometry, count: int, width: int, first: int, per_row: int, parallel_rows: bool) -> str:
    """TVMScript of one loop nest: ``count`` (image, row, tile) iterations of ``width`` columns, the
    tiles starting at column ``first`` of each row, ``per_row`` tiles per row."""
    rows, cols, row_step, col_step = g.walk
    plane = g.c * g.padded_hw[0] * g.padded_hw[1]
    outer = "T.parallel" if parallel_rows else "T.serial"
    inner = "T.serial" if parallel_rows else "T.parallel"
    return f"""
    for it in {outer}({count}):
        for o in {inner}({g.o}):
            acc = T.alloc_buffer(({width},), "float32", scope="local")
            for t in T.vectorized({width}):
                acc[t] = T.float32(0)
            for j in range(indptr[o], indptr[o + 1]):
                for t in T.vectorized({width}):
                    acc[t] = acc[t] + values[j] * x[it // {rows * per_row}, offsets[j]
                        + it % {rows * per_row} // {per_row} * {row_step}
                        + ({first} + it % {per_row} * {width} + t) * {col_step}]
            for t in T.vectorized({width}):
                out[it // {rows * per_row}, o, it % {rows * per_row} // {per_row} * {cols}
                    + {first} + it % {per_row} * {width} + t] = acc[t]
""" if count and width else ""


def prim_func(g: SparseConvGeometry, nnz: int, tile: int = TILE) -> tvm.tirx.PrimFunc:
    """``(x [N, C·Hp·Wp], offsets, values, indptr, out [N, O, R·Q])``, scheduled, tagged ``reforge.op``."""
    rows, cols, _, _ = g.walk
    hp, wp = g.padded_hw
    full, rest = divmod(cols, tile)
    width = min(tile, cols)
    full, rest = (full, rest) if cols >= tile else (1, 0)
    parallel_rows = g.n * rows * full > 1
    src = f"""
@T.prim_func
def sparse_conv2d(x: T.Buffer(({g.n}, {g.c * hp * wp}), "float32"), offsets: T.Buffer(({max(nnz, 1)},), "int32"),
                  values: T.Buffer(({max(nnz, 1)},), "float32"), indptr: T.Buffer(({g.o + 1},), "int32"),
                  out: T.Buffer(({g.n}, {g.o}, {rows * cols}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
""" + _nest(g, g.n * rows * full, width, 0, full, parallel_rows) \
        + _nest(g, g.n * rows, rest, full * width, 1, g.n * rows > 1)
    from tvm.script import tirx

    func = tvm.script.from_source(src, extra_vars={"T": tirx})
    return tag(func, OP)


def sparse_conv2d_np(x: np.ndarray, weight: np.ndarray, strides, padding) -> np.ndarray:
    """numpy twin of the operator (float64): the walk over the flattened padded input, tap by tap."""
    g = geometry(x.shape, weight.shape, strides, padding)
    s = taps(weight, g)
    rows, cols, row_step, col_step = g.walk
    xp = pad_input(x.astype(np.float64), g).reshape(g.n, -1)
    pos = (np.arange(rows)[:, None] * row_step + np.arange(cols)[None, :] * col_step).reshape(-1)
    out = np.zeros((g.n, g.o, rows * cols))
    for o in range(g.o):
        for j in range(s.indptr[o], s.indptr[o + 1]):
            out[:, o] += float(s.values[j]) * xp[:, s.offsets[j] + pos]
    return crop(out, g)


def pad_input(x: np.ndarray, g: SparseConvGeometry) -> np.ndarray:
    t, l, b, r = g.padding
    return np.pad(x, ((0, 0), (0, 0), (t, g.padded_hw[0] - g.h - t), (l, r)))


def crop(out: np.ndarray, g: SparseConvGeometry) -> np.ndarray:
    """``[N, O, R·Q]`` → ``[N, O, OH, OW]``."""
    oh, ow = g.out_hw
    return out.reshape(g.n, g.o, oh, -1)[..., :ow]


def emit_sparse_conv2d(bb, x, weight: np.ndarray, strides, padding):
    """Emit the sparse conv of Relax tensor ``x`` (NCHW, float32) with constant ``weight`` (OIHW)
    into ``bb``; returns ``[N, O, OH, OW]``."""
    from tvm import relax

    op = relax.op
    g = geometry([int(d) for d in x.ty.shape], weight.shape, strides, padding)
    s = taps(weight, g)
    hp, wp = g.padded_hw
    t, l, b, r = g.padding
    rows, cols, _, _ = g.walk
    oh, ow = g.out_hw
    if (hp, wp) != (g.h, g.w):
        x = bb.emit(op.nn.pad(x, [0, 0, 0, 0, t, hp - g.h - t, l, r]))
    x = bb.emit(op.reshape(x, (g.n, g.c * hp * wp)))
    func = prim_func(g, s.nnz)
    gv = bb.add_func(func, OP)
    bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    y = bb.emit(relax.call_tir(gv, [x, relax.const(s.offsets), relax.const(s.values), relax.const(s.indptr)],
                               relax.TensorType((g.n, g.o, rows * cols), "float32")))
    y = bb.emit(op.reshape(y, (g.n, g.o, oh, rows * cols // oh)))
    if rows * cols // oh != ow:
        y = bb.emit(op.strided_slice(y, [3], [0], [ow]))
    return y
