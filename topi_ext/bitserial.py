"""Bit-packed conv2d and dense for ±1 weights with 1-bit (±1), ternary {-1, 0, +1} or k-bit (unsigned
or signed) activations.

Bits. A ±1 value is one bit (1 = +1, 0 = -1); a ternary value two planes, its sign (a > 0) and its
mask (a ≠ 0); a k-bit activation k bit planes, of its two's complement when signed. Bits are
packed along the input channels into words of ``word`` (uint32 / uint64); channels past the last
one are 0 in activations *and* weights, so they never count.

Layouts (channels packed last, so the inner vector of the kernels runs over output channels):

- activations ``[N, H, W, B, CW]``: B bit planes (B = 1 for ±1), CW = ceil(C / word bits) words;
- conv weights ``[KH, KW, CW, O]``, dense weights ``[KW, M]`` (packed in numpy at compile time);
- outputs ``[N, OH, OW, O]`` int32 / float32 (NHWC), or, with a threshold epilogue, sign bits packed
  again as ``[N, OH, OW, 1, ceil(O / word bits)]`` for the next binary layer.

Arithmetic (exact; popcounts are accumulated in int64 (64-bit words) or int32 and cast to int32 before
any subtraction, because LLVM treats uint32/uint64 arithmetic as non-wrapping):

- ±1 × ±1: ``a·w = 1 - 2·(A xor W)``. The padded input is 0 words (-1 bits), so the raw sum over all
  taps, ``P = Σ popcount(A xor W)``, also counts the taps in the zero padding. Zero padding is not a
  ±1 value: a float conv on ±1 inputs gets 0 from those taps. The correction depends only on which
  kernel rows / columns fall in the padding, i.e. on a handful of border *classes* of output rows and
  columns, so it is a table ``border[class_y, class_x, o] = valid_taps·C + 2·Σ_pad taps popcount(W)``
  computed in numpy with the packed weights, and ``out = border[cy(y), cx(x), o] - 2·P``.
- k-bit × ±1 (conv): ``Σ_c a_c·w_c = Σ_b 2^b·(popcount(W) - popcount(A_b xor W))``; a padded tap
  (A_b = 0) contributes popcount(W) - popcount(W) = 0, so zero padding needs no correction, and
  ``(2^k - 1)·Σ_taps popcount(W)`` is a per-channel constant (``border_table(..., act_bits=k)``).
  Signed (two's complement): the top plane weighs ``-2^(k-1)``, so the plane weights sum to -1 and
  the constant is ``-Σ_taps popcount(W)``; padding is still 0 in every plane. Dense uses ``2·Σ_b 2^b·popcount(A_b and W) - Σ_c a_c`` (``Σ_c a_c`` is one cheap stage per row).
- ternary × ±1: a nonzero value is ±1, so ``a·w = M·(1 - 2·(S xor W))`` with sign S and mask M:
  ``Σ_c a_c·w_c = Σ popcount(M) - 2·popcount((S xor W) and M)`` over taps (conv) or words (dense).
  popcount(M) does not depend on the output channel, so a register tile computes it once per input
  word for all its channels. A padded tap has M = 0 and adds nothing, so the border table is 0.

Relax: :func:`emit_bitpack`, :func:`emit_bitserial_conv2d`, :func:`emit_bitserial_dense`,
:func:`emit_bitpool` add the operator's PrimFunc (tagged ``reforge.op``, opaque to FuseOps; the
build schedules it for the target, :mod:`.schedules.bitserial`) and a ``call_tir`` to a
BlockBuilder, with the weights packed into constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx, topi

from .op_kind import tag

CONV = "bitserial_conv2d"  # name of the main reduction block (the schedule looks for it)
DENSE = "bitserial_dense"
PACK = "bitpack"
POOL = "bitpool"
PACK_ATTR = "reforge.bitpack"  # a pack's arguments, on its PrimFunc (to pack from another layout at build)


def word_bits(word: str) -> int:
    return np.dtype(word).itemsize * 8


def num_words(channels: int, word: str) -> int:
    return -(-channels // word_bits(word))


# ----------------------------------------------------------------------------- numpy packing


def pack_bits_np(bits: np.ndarray, word: str = "uint64") -> np.ndarray:
    """Pack a boolean array along its last axis into words (bit j of word w = element w·B + j)."""
    b = word_bits(word)
    c = bits.shape[-1]
    cw = num_words(c, word)
    padded = np.zeros(bits.shape[:-1] + (cw * b,), dtype=np.uint64)
    padded[..., :c] = bits
    padded = padded.reshape(bits.shape[:-1] + (cw, b))
    return (padded << np.arange(b, dtype=np.uint64)).sum(-1, dtype=np.uint64).astype(word)


def pack_conv_weights(weight: np.ndarray, word: str = "uint64") -> np.ndarray:
    """Float OIHW weights -> sign bits ``[KH, KW, CW, O]`` (bit 1 = +1: ``w >= 0``)."""
    return np.ascontiguousarray(pack_bits_np(weight.transpose(2, 3, 0, 1) >= 0, word).transpose(0, 1, 3, 2))


def pack_dense_weights(weight: np.ndarray, word: str = "uint64") -> np.ndarray:
    """Float ``[M, K]`` weights -> sign bits ``[KW, M]``."""
    return np.ascontiguousarray(pack_bits_np(weight >= 0, word).T)


def pack_activations_np(x: np.ndarray, act_bits: int = 1, word: str = "uint64", layout: str = "NCHW",
                        ternary: bool = False) -> np.ndarray:
    """numpy twin of :func:`bitpack`: ±1 (``x >= 0``), ternary (planes ``x > 0``, ``x != 0``) or k-bit
    ints (the low k bits of their two's complement) -> ``[N, H, W, B, CW]`` (``[N, B, CW]`` for layout ``NC``)."""
    if layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    if ternary:
        planes = np.stack([x > 0, x != 0], axis=-2)
    elif act_bits == 1:
        planes = (x >= 0)[..., None, :]
    else:
        q = x.astype(np.int64)
        planes = np.stack([(q >> b) & 1 for b in range(act_bits)], axis=-2).astype(bool)
    return pack_bits_np(planes, word)


# ----------------------------------------------------------------------------- conv geometry


@dataclass(frozen=True)
class ConvGeometry:
    in_h: int
    in_w: int
    kh: int
    kw: int
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right

    @property
    def out_hw(self) -> tuple[int, int]:
        t, l, b, r = self.padding
        return ((self.in_h + t + b - self.kh) // self.strides[0] + 1,
                (self.in_w + l + r - self.kw) // self.strides[1] + 1)

    def classes(self, axis: int) -> tuple[list[tuple[int, ...]], list[int]]:
        """Border classes of output rows (axis 0) or columns (1): each class is the tuple of valid
        kernel taps; returns the classes and the class of every output row / column."""
        size, k, s = (self.in_h, self.kh, self.strides[0]) if axis == 0 else (self.in_w, self.kw, self.strides[1])
        before = self.padding[axis]
        out = self.out_hw[axis]
        valid = [tuple(t for t in range(k) if 0 <= o * s - before + t < size) for o in range(out)]
        lo, hi = self.bands(axis)
        classes = valid[:lo] + [valid[lo]] + valid[hi:] if lo < hi else valid
        return classes, self.class_of_np(axis)

    def bands(self, axis: int) -> tuple[int, int]:
        """Interior output rows / columns are ``lo <= o < hi`` (all taps valid); lo >= hi: no interior
        split (every row its own class)."""
        size, k, s = (self.in_h, self.kh, self.strides[0]) if axis == 0 else (self.in_w, self.kw, self.strides[1])
        before = self.padding[axis]
        out = self.out_hw[axis]
        full = [0 <= o * s - before and o * s - before + k <= size for o in range(out)]
        if not any(full):
            return 0, 0
        lo = full.index(True)
        hi = out - full[::-1].index(True)
        if not all(full[lo:hi]):
            return 0, 0
        return lo, hi

    def class_of_np(self, axis: int) -> list[int]:
        out = self.out_hw[axis]
        lo, hi = self.bands(axis)
        if lo >= hi:
            return list(range(out))
        return [o if o < lo else lo if o < hi else o - hi + lo + 1 for o in range(out)]

    def class_of(self, axis: int, o):
        """TE expression of the class of output row / column ``o``."""
        lo, hi = self.bands(axis)
        if lo >= hi:
            return o
        return tirx.Select(o < lo, o, tirx.Select(o < hi, tirx.const(lo, "int32"), o - hi + lo + 1))


def border_table(packed_weight: np.ndarray, in_channels: int, geom: ConvGeometry, act_bits: int = 1,
                 ternary: bool = False, signed: bool = False) -> np.ndarray | None:
    """The constant part of the conv's dot products, from the packed weights.

    ±1 activations: ``[CY, CX, O]``, ``valid_taps·C + 2·Σ_pad taps popcount(W)`` per border class;
    k-bit activations: ``[1, 1, O]``, ``(Σ_b s_b)·Σ_taps popcount(W)``: ``(2^k - 1)·Σ_taps popcount(W)``
    unsigned, ``-Σ_taps popcount(W)`` signed; ternary: None, there is no constant part (a padded tap has
    mask 0)."""
    if ternary:
        return None
    pc = np.vectorize(lambda v: bin(int(v)).count("1"), otypes=[np.int64])(packed_weight).sum(axis=2)  # [KH,KW,O]
    if act_bits > 1:
        return ((-1 if signed else 2 ** act_bits - 1) * pc.sum((0, 1)))[None, None, :].astype("int32")
    rows, _ = geom.classes(0)
    cols, _ = geom.classes(1)
    table = np.zeros((len(rows), len(cols), packed_weight.shape[-1]), dtype=np.int64)
    for i, ry in enumerate(rows):
        for j, rx in enumerate(cols):
            pad = np.ones((geom.kh, geom.kw), bool)
            pad[np.ix_(list(ry), list(rx))] = False
            table[i, j] = len(ry) * len(rx) * in_channels + 2 * (pc * pad[:, :, None]).sum((0, 1))
    return table.astype("int32")


# ----------------------------------------------------------------------------- TE computes


def bitpack(x: te.Tensor, act_bits: int = 1, word: str = "uint64", layout: str = "NCHW",
            ternary: bool = False) -> te.Tensor:
    """Pack ±1 (``x >= 0`` is +1), ternary (two planes: the sign ``x > 0``, the mask ``x != 0``) or k-bit
    unsigned activations into words: layout ``NCHW``, ``NHWC`` or blocked ``NCHWc`` (``[N, C/L, H, W, L]``,
    a blocked conv's output) -> ``[N, H, W, B, CW]`` (conv input); ``NC`` -> ``[N, B, CW]`` (dense input).

    For k > 1 the input holds integers, 0 .. 2^k - 1 or -2^(k-1) .. 2^(k-1) - 1 (any dtype); values are
    truncated to int32 and plane b is bit b of the two's complement."""
    if layout == "NC":
        n, c = (int(d) for d in x.shape)
        lead = (n,)
        at = lambda idx, ch: x[idx[0], ch]  # noqa: E731
    elif layout == "NCHW":
        n, c, h, w = (int(d) for d in x.shape)
        lead = (n, h, w)
        at = lambda idx, ch: x[idx[0], ch, idx[1], idx[2]]  # noqa: E731
    elif layout == "NCHWc":
        n, blocks, h, w, lanes = (int(d) for d in x.shape)
        c, lead = blocks * lanes, (n, h, w)
        at = lambda idx, ch: x[idx[0], ch // lanes, idx[1], idx[2], ch % lanes]  # noqa: E731
    else:
        n, h, w, c = (int(d) for d in x.shape)
        lead = (n, h, w)
        at = lambda idx, ch: x[idx[0], idx[1], idx[2], ch]  # noqa: E731
    wb = word_bits(word)
    planes = 2 if ternary else act_bits
    full = c % wb == 0  # no channel past the last: no clamped reads, no mask

    def bit(plane, v, ch=None):
        """The word-typed bit of value ``v`` in ``plane``; 0 for channels ``ch >= c`` (``ch`` None: all valid)."""
        zero = tirx.const(0, str(x.dtype))
        if ternary:
            on = tirx.Select(plane == 0, v > zero, v != zero)
        elif act_bits == 1:
            on = v >= zero
        else:
            on = ((v.astype("int32") >> plane) & 1) == 1
        return tirx.Select(on if ch is None else tirx.all(ch < c, on), tirx.const(1, word), tirx.const(0, word))

    # the bits are disjoint: their sum is their OR
    if layout == "NCHWc" and full and wb % lanes == 0:  # a word is wb / lanes whole channel blocks: affine
        # reads, so the schedule can vectorize over a block's lanes
        jb, jl = te.reduce_axis((0, wb // lanes), "jb"), te.reduce_axis((0, lanes), "jl")
        return te.compute(
            (*lead, planes, c // wb),
            lambda i, y, xx, p, k: te.sum(bit(p, x[i, k * (wb // lanes) + jb, y, xx, jl]) << (jb * lanes + jl).astype(word),
                                          axis=[jb, jl]),
            name=PACK)
    j = te.reduce_axis((0, wb), "j")

    def word_bit(idx, plane, ch):
        return bit(plane, at(idx, ch if full else tirx.min(ch, c - 1)), None if full else ch)

    return te.compute(
        (*lead, planes, num_words(c, word)),
        lambda *idx: te.sum(word_bit(idx[:-2], idx[-2], idx[-1] * wb + j) << j.astype(word), axis=j),
        name=PACK)


def _popcount32(v):
    return tirx.popcount(v).astype("int32")


def acc_dtype(word: str) -> str:
    """Accumulator of the popcounts: int64 for 64-bit words (a vector popcount of 64-bit lanes ends in
    vpsadbw's 64-bit sums; narrowing each to int32 costs two shuffles per vector), else int32."""
    return "int64" if word == "uint64" else "int32"


def bitserial_conv2d(data: te.Tensor, weight: te.Tensor, border: te.Tensor | None, strides=(1, 1),
                     padding=(0, 0, 0, 0), out_dtype: str = "int32",
                     threshold: te.Tensor | None = None, flip: te.Tensor | None = None,
                     ternary: bool = False, signed: bool = False) -> te.Tensor:
    """Binary-weight conv2d on packed activations.

    data ``[N, H, W, B, CW]``; weight ``[KH, KW, CW, O]`` (same word); B = 1: ±1 activations, B > 1:
    k-bit unsigned (``signed``: two's complement) activations, or with ``ternary`` (B = 2) the sign and
    mask planes of activations in {-1, 0, +1}; ``border`` is :func:`border_table` of the weights (None for
    ternary, required otherwise).
    Output ``[N, OH, OW, O]`` of ``out_dtype``; with ``threshold`` ``[O]`` int32 (and optional ``flip``
    ``[O]`` int32, 1 for a negative BatchNorm γ) the output is ``bit = dot >= thr`` (``dot <= thr``
    where flipped) packed as ``[N, OH, OW, 1, OWords]``.
    """
    n, h, w, nb, cw = (int(d) for d in data.shape)
    kh, kw, wcw, o = (int(d) for d in weight.shape)
    assert wcw == cw, "weights and activations must be packed into the same words"
    word = str(data.dtype)
    geom = ConvGeometry(h, w, kh, kw, tuple(int(s) for s in strides), tuple(int(p) for p in padding))
    oh, ow = geom.out_hw
    sh, sw = geom.strides
    t, l, b, r = geom.padding
    if t or l or b or r:
        data = topi.nn.pad(data, (0, t, l, 0, 0), (0, b, r, 0, 0), name=CONV + "_pad")
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    rb, rc = te.reduce_axis((0, nb), "rb"), te.reduce_axis((0, cw), "rc")
    acc = acc_dtype(word)
    assert (border is None) == ternary, "the border table (border_table(weights)) is required unless ternary"
    if ternary:  # one reduction: popcount(M) is per input word, shared by the register tile's channels
        at = lambda i, y, x, plane: data[i, y * sh + ry, x * sw + rx, plane, rc]  # noqa: E731
        dot = te.compute(
            (n, oh, ow, o),
            lambda i, y, x, k: te.sum(
                tirx.popcount(at(i, y, x, 1)).astype(acc)
                - 2 * tirx.popcount((at(i, y, x, 0) ^ weight[ry, rx, rc, k]) & at(i, y, x, 1)).astype(acc),
                axis=[ry, rx, rc]),
            name=CONV)
        dot = te.compute(dot.shape, lambda *idx: dot(*idx).astype("int32"), name=CONV + "_dot")
    elif nb == 1:
        raw = te.compute(
            (n, oh, ow, o),
            lambda i, y, x, k: te.sum(
                tirx.popcount(data[i, y * sh + ry, x * sw + rx, rb, rc] ^ weight[ry, rx, rc, k]).astype(acc),
                axis=[ry, rx, rb, rc]),
            name=CONV)
        dot = te.compute(
            (n, oh, ow, o),
            lambda i, y, x, k: (border[geom.class_of(0, y), geom.class_of(1, x), k]
                                - 2 * raw[i, y, x, k].astype("int32")),
            name=CONV + "_dot")
    else:
        # planes with weights s_b (k-bit: 2^b, the top one -2^(k-1) if signed):
        # Σ_c a_c·w_c = Σ_b s_b·(popcount(W) - popcount(A_b xor W)); a padded tap (A_b = 0) gives
        # popcount(W) - popcount(W) = 0, so no border correction, and Σ_b s_b·popcount(W) over the
        # kernel is the per-channel constant in ``border``. One accumulator per plane
        # (the plane is a spatial axis, unrolled in the register tile), weighted in the epilogue.
        raw = te.compute(
            (n, oh, ow, nb, o),
            lambda i, y, x, p, k: te.sum(
                tirx.popcount(data[i, y * sh + ry, x * sw + rx, p, rc] ^ weight[ry, rx, rc, k]).astype(acc),
                axis=[ry, rx, rc]),
            name=CONV)
        # a reduction over the planes (not an unrolled sum), so that the schedule can compute it per
        # register tile: its reads of ``raw`` are then a region over a block variable
        rp = te.reduce_axis((0, nb), "rp")
        top = nb - 1 if signed else None
        dot = te.compute(
            (n, oh, ow, o),
            lambda i, y, x, k: te.sum(
                tirx.Select(rp == 0, border[0, 0, k], 0) - _plane_weighted(raw[i, y, x, rp, k].astype("int32"), rp,
                                                                           "int32", top), axis=rp),
            name=CONV + "_dot")
    if threshold is not None:
        return _threshold_pack(dot, threshold, flip, word)
    if out_dtype == "int32":
        return dot
    return te.compute(dot.shape, lambda *idx: dot(*idx).astype(out_dtype), name=CONV + "_cast")


def _plane_weighted(v, plane, dtype: str, signed_top: int | None = None):
    """``s_b·v`` for bit plane ``b`` of k-bit activations: ``v << b`` (``-(v << b)`` for plane
    ``signed_top``, the sign plane of a two's complement). ``v`` is signed, of ``dtype``."""
    shifted = v << plane.astype(dtype)
    return shifted if signed_top is None else tirx.Select(plane == signed_top, -shifted, shifted)


def _threshold_pack(dot: te.Tensor, threshold: te.Tensor, flip: te.Tensor | None, word: str,
                    op: str = CONV) -> te.Tensor:
    """Sign bits ``dot >= thr`` (``dot <= thr`` where ``flip``) packed over the last axis of ``dot``."""
    *lead, o = (int(d) for d in dot.shape)
    wb = word_bits(word)
    j = te.reduce_axis((0, wb), "j")

    def bit(idx, k):
        kk = k if o % wb == 0 else tirx.min(k, o - 1)  # (a plain index lets the schedule move the stage)
        v = dot(*idx, kk)
        ge = v >= threshold[kk]
        on = ge if flip is None else tirx.Select(flip[kk] != 0, v <= threshold[kk], ge)
        if o % wb:
            on = tirx.all(k < o, on)
        return tirx.Select(on, tirx.const(1, word), tirx.const(0, word))

    return te.compute(
        (*lead, 1, num_words(o, word)),
        lambda *idx: te.sum(bit(idx[:-2], idx[-1] * wb + j) << j.astype(word), axis=j),
        name=op + "_sign")


def bitserial_dense(data: te.Tensor, weight: te.Tensor, in_features: int, out_dtype: str = "int32",
                    ternary: bool = False, threshold: te.Tensor | None = None,
                    flip: te.Tensor | None = None, signed: bool = False) -> te.Tensor:
    """Binary-weight dense: data ``[N, B, KW]`` packed activations (B = 1: ±1; B > 1: k-bit unsigned or
    ``signed``;
    ``ternary``: sign and mask planes), weight ``[KW, M]`` sign bits -> ``[N, M]``. Only the
    ``in_features`` real bits count. k-bit planes: ``dot = 2·Σ_b s_b·popcount(A_b and W) - Σ_b s_b·popcount(A_b)``
    (``Σ_c a_c·w_c`` with ``Σ_{c in A_b} w_c = 2·popcount(A_b and W) - popcount(A_b)``); ternary:
    ``dot = popcount(M) - 2·popcount((S xor W) and M)``. With
    ``threshold`` (and ``flip``) ``[M]`` the output is the packed sign bits ``[N, 1, MW]`` (as the
    conv's), the packed input of a next binary dense."""
    n, nb, kw = (int(d) for d in data.shape)
    kw2, m = (int(d) for d in weight.shape)
    assert kw == kw2
    rb, rc = te.reduce_axis((0, nb), "rb"), te.reduce_axis((0, kw), "rc")
    acc = acc_dtype(str(data.dtype))
    if ternary:
        dot = te.compute((n, m), lambda i, k: te.sum(
            tirx.popcount(data[i, 1, rc]).astype(acc)
            - 2 * tirx.popcount((data[i, 0, rc] ^ weight[rc, k]) & data[i, 1, rc]).astype(acc), axis=rc), name=DENSE)
        dot = te.compute((n, m), lambda i, k: dot[i, k].astype("int32"), name=DENSE + "_dot")
    elif nb == 1:
        raw = te.compute((n, m), lambda i, k: te.sum(tirx.popcount(data[i, rb, rc] ^ weight[rc, k]).astype(acc),
                                                     axis=[rb, rc]), name=DENSE)
        dot = te.compute((n, m), lambda i, k: in_features - 2 * raw[i, k].astype("int32"), name=DENSE + "_dot")
    else:
        top = nb - 1 if signed else None
        raw = te.compute((n, m), lambda i, k: te.sum(
            _plane_weighted(tirx.popcount(data[i, rb, rc] & weight[rc, k]).astype(acc), rb, acc, top),
            axis=[rb, rc]),
            name=DENSE)
        sb, sc = te.reduce_axis((0, nb), "sb"), te.reduce_axis((0, kw), "sc")
        asum = te.compute((n,), lambda i: te.sum(_plane_weighted(_popcount32(data[i, sb, sc]), sb, "int32", top),
                                                 axis=[sb, sc]),
                          name=DENSE + "_asum")
        dot = te.compute((n, m), lambda i, k: 2 * raw[i, k].astype("int32") - asum[i], name=DENSE + "_dot")
    if threshold is not None:
        return _threshold_pack(dot, threshold, flip, str(data.dtype), DENSE)
    if out_dtype == "int32":
        return dot
    return te.compute(dot.shape, lambda *idx: dot(*idx).astype(out_dtype), name=DENSE + "_cast")


def bitpool(data: te.Tensor, pool_size=(2, 2), strides=(2, 2)) -> te.Tensor:
    """Max pooling of ±1 values on packed bits ``[N, H, W, B, CW]`` (B = 1): the max of ±1 values is
    +1 iff one of them is, i.e. the OR of their bits (bit 1 = +1). Unpadded, floor mode."""
    n, h, w, nb, cw = (int(d) for d in data.shape)
    ph, pw = (int(p) for p in pool_size)
    sh, sw = (int(s) for s in strides)
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1

    def window(i, y, x, b, c):
        acc = None
        for dy in range(ph):
            for dx in range(pw):
                v = data[i, y * sh + dy, x * sw + dx, b, c]
                acc = v if acc is None else acc | v
        return acc

    return te.compute((n, oh, ow, nb, cw), window, name=POOL)


# ----------------------------------------------------------------------------- Relax


def accumulator_bits(word: str) -> int:
    """Bits of one popcount accumulator for ``word``s (:func:`acc_dtype`)."""
    return 64 if acc_dtype(word) == "int64" else 32


def accumulator_lanes(target, word: str) -> int:
    """Accumulator lanes per vector register of ``target`` (a reforge Backend) for ``word``."""
    return target.vector_lanes(accumulator_bits(word))


def _add_op(bb, inputs: list[te.Tensor], output: te.Tensor, kind: str, name: str, **attrs):
    """Add the operator's PrimFunc, unscheduled and tagged ``reforge.op`` (scheduled at build for the
    target, or by tuning) and with ``attrs``; opaque to FuseOps, so it stays one function with its own
    schedule."""
    func = tag(te.create_prim_func([*inputs, output]), kind)
    for key, value in attrs.items():
        func = func.with_attr(key, value)
    gv = bb.add_func(func, name)  # a fresh name per distinct function (bitserial_conv2d1, ...)
    bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    return gv


def _placeholder(value, name: str) -> te.Tensor:
    shape = [int(d) for d in value.ty.shape] if hasattr(value, "ty") else list(value.shape)
    dtype = str(value.ty.dtype) if hasattr(value, "ty") else str(value.dtype)
    return te.placeholder(shape, dtype, name)


def emit_bitpack(bb, x, act_bits: int = 1, word: str = "uint64", layout: str = "NCHW", ternary: bool = False):
    """Emit the activation pack of Relax tensor ``x`` into ``bb``; returns the packed ``[N, H, W, B, CW]``."""
    from tvm import relax

    xt = _placeholder(x, "x")
    out = bitpack(xt, act_bits, word, layout, ternary)
    gv = _add_op(bb, [xt], out, PACK, "bitpack_ternary" if ternary else f"bitpack_{act_bits}b",
                 **{PACK_ATTR: {"act_bits": act_bits, "word": word, "layout": layout, "ternary": ternary}})
    return bb.emit(relax.call_tir(gv, [x], relax.TensorType([int(d) for d in out.shape], word)))


def emit_bitserial_conv2d(bb, data, weight: np.ndarray, strides=(1, 1), padding=(0, 0, 0, 0),
                          out_dtype: str = "int32", threshold: np.ndarray | None = None,
                          flip: np.ndarray | None = None, ternary: bool = False, signed: bool = False):
    """Emit a binary-weight conv on packed activations ``data`` (``[N, H, W, B, CW]``, from
    :func:`emit_bitpack` or a previous thresholded conv; ``ternary``: the two planes of a ternary
    pack; ``signed``: k-bit planes of a two's complement) into ``bb`` as ``call_tir`` of a PrimFunc. ``weight``: float OIHW (its signs are the ±1
    weights, ``w >= 0`` is +1), packed here into a constant. Returns ``[N, OH, OW, O]`` of ``out_dtype``, or with ``threshold`` (and
    ``flip``) the packed sign bits ``[N, OH, OW, 1, OWords]``."""
    from tvm import relax

    at = _placeholder(data, "data")
    n, h, w, nb, cw = (int(d) for d in at.shape)
    word = str(at.dtype)
    o, c, kh, kw = weight.shape
    assert num_words(c, word) == cw, f"{c} input channels do not fill {cw} words of {word}"
    packed = pack_conv_weights(weight, word)
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        padding = padding * 2
    wt = te.placeholder(packed.shape, word, "weight")
    inputs, args = [at, wt], [data, relax.const(packed)]
    table = border_table(packed, c, ConvGeometry(h, w, kh, kw, tuple(strides), padding), nb, ternary, signed)
    border = None if table is None else te.placeholder(table.shape, "int32", "border")
    if table is not None:
        inputs.append(border)
        args.append(relax.const(table))
    thr = fl = None
    if threshold is not None:
        thr, fl, extra = _threshold_args(threshold, flip, o)
        inputs += [t for t in (thr, fl) if t is not None]
        args += extra
    out = bitserial_conv2d(at, wt, border, strides, padding, out_dtype, thr, fl, ternary, signed)
    gv = _add_op(bb, inputs, out, CONV, "bitserial_conv2d")
    return bb.emit(relax.call_tir(gv, args, relax.TensorType([int(d) for d in out.shape], str(out.dtype))))


def emit_bitserial_dense(bb, data, weight: np.ndarray, out_dtype: str = "int32", ternary: bool = False,
                         threshold: np.ndarray | None = None, flip: np.ndarray | None = None, signed: bool = False):
    """Emit a binary-weight dense on packed activations ``data`` (``[N, B, KW]``; ``ternary``: the two
    planes of a ternary pack; ``signed``: k-bit planes of a two's complement); ``weight`` float ``[M, K]`` (signs), packed here into a constant.
    Returns ``[N, M]`` of ``out_dtype``, or with ``threshold`` (and ``flip``) the packed sign bits
    ``[N, 1, MW]``."""
    from tvm import relax

    at = _placeholder(data, "data")
    word = str(at.dtype)
    packed = pack_dense_weights(weight, word)
    wt = te.placeholder(packed.shape, word, "weight")
    inputs, args = [at, wt], [data, relax.const(packed)]
    thr = fl = None
    if threshold is not None:
        thr, fl, extra = _threshold_args(threshold, flip, weight.shape[0])
        inputs += [t for t in (thr, fl) if t is not None]
        args += extra
    out = bitserial_dense(at, wt, weight.shape[1], out_dtype, ternary, thr, fl, signed)
    gv = _add_op(bb, inputs, out, DENSE, "bitserial_dense")
    return bb.emit(relax.call_tir(gv, args, relax.TensorType([int(d) for d in out.shape], str(out.dtype))))


def _threshold_args(threshold: np.ndarray, flip: np.ndarray | None, channels: int):
    """Placeholders and Relax constants of a threshold (and flip) epilogue over ``channels`` outputs."""
    from tvm import relax

    thr = te.placeholder((channels,), "int32", "threshold")
    args = [relax.const(np.asarray(threshold, "int32"))]
    fl = None
    if flip is not None:
        fl = te.placeholder((channels,), "int32", "flip")
        args.append(relax.const(np.asarray(flip, "int32")))
    return thr, fl, args


def emit_bitpool(bb, data, pool_size=(2, 2), strides=(2, 2)):
    """Emit :func:`bitpool` of packed ±1 activations ``data`` into ``bb``; returns the pooled packed tensor."""
    from tvm import relax

    at = _placeholder(data, "data")
    out = bitpool(at, pool_size, strides)
    gv = _add_op(bb, [at], out, POOL, "bitpool")
    return bb.emit(relax.call_tir(gv, [data], relax.TensorType([int(d) for d in out.shape], str(out.dtype))))
