"""CPU schedules (x86, aarch64) for the bit-serial operators of :mod:`reforge.topi_ext.bitserial`.

conv2d: output channels are the vector (``lanes`` accumulators per vector register; the weight words of
one tap are contiguous over output channels, so one vector load serves the whole register tile),
``reg_w`` output columns are unrolled as a register tile, the reduction (kernel rows, columns, bit
planes, channel words) runs outside that tile: per reduction step one weight vector load, then per
column one broadcast activation word, xor / and, a vector popcount, an add. Rows (and output-channel
chunks) run in parallel. The epilogue (border correction, cast, threshold) is applied to the register
tile before it is stored.

The operators reach a model unscheduled, tagged ``reforge.op``: reforge's default scheduler applies
the ``schedule_*_on`` registered for it (:mod:`reforge.topi_ext.operators`) for the machine's vector
width, and ``reforge tune`` searches the conv's register tile (:func:`sampled_conv_tiles`). ``schedule_*`` schedule a PrimFunc directly (tests, benchmarks).
"""

from __future__ import annotations

from tvm import s_tir, tirx

from reforge.machine import Machine

from ..bitserial import CONV, DENSE, PACK, POOL, accumulator_bits
from ..op_kind import op_kind
from .helpers import (PAD_PARALLEL_MIN_WORK, blocks, categorical, divisor_at_most, divisors_up_to, extents,
                      inline_epilogue, mark_scheduled, named_exactly, vectorize)

MAX_COLUMNS, MAX_CHANNELS = 8, 64  # the tuner's register tiles: output columns, output channels


def _parallel_outer(sch: s_tir.Schedule, block, count: int) -> None:
    loops = sch.get_loops(block)
    if count and len(loops) > count:
        sch.parallel(sch.fuse(*loops[:count]) if count > 1 else loops[0])


def _vectorize_inner(sch: s_tir.Schedule, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    ext = extents(sch, loops[-1:])[0]
    if ext > 1 and ext <= 4 * lanes:
        sch.vectorize(loops[-1])


def accumulator_registers(machine: Machine) -> int:
    """Vector registers the conv's register tile holds as accumulators: the independent chains that hide
    the add latency on every pipe. The popcounts' throughput bounds the tile, so more columns only add
    register pressure (on AVX-512, 2 columns x 4 vectors beat the wider tiles: docs/bitserial.md)."""
    return machine.min_accumulators


def conv_tiles(out_width: int, out_channels: int, lanes: int, planes: int = 1,
               accumulators: int = 8) -> tuple[int, int]:
    """Default register tile (output columns, output channels): up to 4 vectors of channels (fewer
    with several bit planes), and as many columns as keep the accumulators (one vector per bit plane
    and channel vector) within ``accumulators`` registers (:func:`accumulator_registers`)."""
    oc_tile = divisor_at_most(out_channels, max(lanes, 4 * lanes // planes))
    regs = -(-oc_tile // lanes) * planes
    return divisor_at_most(out_width, max(1, accumulators // regs)), oc_tile


def schedule_bitserial_conv2d(func: tirx.PrimFunc, lanes: int = 4, reg_w: int | None = None,
                              oc_tile: int | None = None, accumulators: int = 8) -> tirx.PrimFunc:
    """Schedule a PrimFunc holding :func:`bitserial.bitserial_conv2d` (and optionally its bitpack).

    ``lanes``: accumulator lanes of one vector register (AVX2: 4 for 64-bit words, whose popcounts
    accumulate in int64; 8 for 32-bit words); ``reg_w`` x ``oc_tile``: output columns x output
    channels of the register tile (default :func:`conv_tiles` within ``accumulators`` registers)."""
    def chosen(_sch, ow: int, oc: int, default_w: int, default_oc: int) -> tuple[int, int]:
        return _fixed_tiles(_sch, ow, oc, reg_w or default_w, oc_tile or default_oc)

    sch = s_tir.Schedule(func)
    _conv(sch, lanes, chosen, accumulators)
    return mark_scheduled(sch.mod["main"])


def _fixed_tiles(_sch, ow: int, oc: int, default_w: int, default_oc: int) -> tuple[int, int]:
    return divisor_at_most(ow, default_w), divisor_at_most(oc, default_oc)


def _conv(sch: s_tir.Schedule, lanes: int, tiles=_fixed_tiles, accumulators: int = 8) -> None:
    """The conv schedule on ``sch``; ``tiles(sch, ow, oc, default_w, default_oc)`` picks the register
    tile (ints, or sampled ``ExprRV`` s when tuning)."""
    conv = named_exactly(sch, CONV)
    loops = sch.get_loops(conv)
    spatial = sum(int(iv.iter_type) == tirx.IterVar.DataPar for iv in sch.get(conv).iter_vars)
    if spatial == 4:  # ±1 activations: (n, y, x, o | ky, kx, plane, word); ternary: (n, y, x, o | ky, kx, word)
        i, y, x, k, *reduction = loops
        planes, tile = 1, []
    else:  # k-bit: (n, y, x, plane, o | ky, kx, word), one accumulator per plane
        i, y, x, p, k, ry, rx, rc = loops
        planes, reduction, tile = extents(sch, [p])[0], [ry, rx, rc], [p]
    ow, oc = extents(sch, [x, k])
    default_w, default_oc = conv_tiles(ow, oc, lanes, planes, accumulators)
    reg_w, vec = tiles(sch, ow, oc, default_w, default_oc)
    xo, xi = sch.split(x, [None, reg_w])
    ko, ki = sch.split(k, [None, vec])
    vec = vec if isinstance(vec, int) else int(sch.get(vec))
    sch.reorder(i, y, ko, xo, *reduction, *tile, xi, ki)
    write_back = sch.cache_write(conv, 0, "local")
    inline_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, xo, preserve_unit_loops=True)
    sch.vectorize(ki)
    sch.unroll(xi)
    for loop in tile:
        sch.unroll(loop)
    sign = named_exactly(sch, CONV + "_sign")
    if sign is None:
        sch.parallel(sch.fuse(i, y, ko))
    else:  # threshold + pack over all output channels: a thread owns whole rows, packs them while in cache
        rows = sch.fuse(i, y)
        sch.parallel(rows)
        bits = extents(sch, sch.get_loops(sign)[-1:])[0]  # the bit loop: the word width
        if oc % bits == 0 and planes == 1:
            sch.reverse_compute_at(sign, rows, preserve_unit_loops=True)
        else:  # the last word's reads are clamped, or the plane epilogue is not under the rows yet:
            # pack separately
            _parallel_outer(sch, sign, 2)
    wb_loops = sch.get_loops(write_back)
    if extents(sch, wb_loops[-1:])[0] == vec:
        sch.vectorize(wb_loops[-1])
    epilogue = write_back
    if planes > 1:
        # the epilogue weights and sums the planes, so it cannot be inlined into the per-plane
        # write-back: compute it per register tile, reading the accumulators directly
        epilogue = sch.get_consumers(write_back)[0]
        sch.reverse_compute_at(epilogue, xo, preserve_unit_loops=True)
        sch.compute_inline(write_back)
        *_, ep_k, ep_p = sch.get_loops(epilogue)
        sch.reorder(ep_p, ep_k)
        sch.vectorize(ep_k)
        ep_init = sch.decompose_reduction(epilogue, ep_p)
        sch.vectorize(sch.get_loops(ep_init)[-1])
    init = sch.decompose_reduction(conv, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])
    done = {sch.get(b).name_hint for b in (conv, epilogue, init)} | ({CONV + "_dot_init"} if planes > 1 else set())
    for block in blocks(sch):
        name = sch.get(block).name_hint
        if name in done:
            continue
        if name.startswith(CONV + "_pad"):  # packed words: a few thousand, below a fork-join's worth
            vectorize(sch, block, lanes, PAD_PARALLEL_MIN_WORK)
        elif name.startswith(CONV + "_sign"):
            continue
        elif name.startswith(PACK):
            _parallel_outer(sch, block, 2)
        else:  # a leftover elementwise stage
            _parallel_outer(sch, block, 2)
            _vectorize_inner(sch, block, lanes)


def schedule_bitserial_dense(func: tirx.PrimFunc, lanes: int = 4, vectors: int = 4) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    _dense(sch, lanes, vectors)
    return mark_scheduled(sch.mod["main"])


def _dense(sch: s_tir.Schedule, lanes: int, vectors: int = 4) -> None:
    """Dense: output features are the vector, the reduction over words outside it; batch rows and
    output chunks in parallel."""
    mm = named_exactly(sch, DENSE)
    i, k, *reduction = sch.get_loops(mm)
    (m,) = extents(sch, [k])
    vec = divisor_at_most(m, lanes * vectors)
    ko, ki = sch.split(k, [None, vec])
    sch.reorder(i, ko, *reduction, ki)
    write_back = sch.cache_write(mm, 0, "local")
    inline_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, ko, preserve_unit_loops=True)
    sch.vectorize(ki)
    sch.parallel(sch.fuse(i, ko))
    wb_loops = sch.get_loops(write_back)
    if extents(sch, wb_loops[-1:])[0] == vec:
        sch.vectorize(wb_loops[-1])
    init = sch.decompose_reduction(mm, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])


def schedule_bitpack(func: tirx.PrimFunc, lanes: int = 4) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    _pack(sch, lanes)
    return mark_scheduled(sch.mod["main"])


def _pack(sch: s_tir.Schedule, lanes: int) -> None:
    """The activation pack. Image layouts ``[N, H, W, B, CW]``: per (row, plane, word) the 64 (32)
    channel bits are OR-ed into a row of words kept in a local buffer, vectorized along the row (the
    reads of an NCHW input are contiguous there), then stored; rows in parallel. From a blocked
    NCHW[L]c input (reduction over a word's blocks, then lanes): the lanes are vectorized, each
    accumulating its bits over the blocks, and the L partial words are OR-ed (64 channels at 32², one
    thread, AVX2: 0.027 ms, the row scheme on the same input 0.067)."""
    block = named_exactly(sch, PACK)
    loops = sch.get_loops(block)
    if len(loops) == 7:  # (n, y, x, plane, word | block, lane)
        partial = sch.rfactor(loops[-1], 0)
        n, y, *_ = outer = sch.get_loops(partial)[:5]
        sch.reverse_compute_at(block, outer[-1])
        sch.parallel(sch.fuse(n, y))
        sch.vectorize(sch.get_loops(partial)[-1])
        init = sch.decompose_reduction(partial, sch.get_loops(partial)[-2])
        sch.vectorize(sch.get_loops(init)[-1])
        sch.unroll(sch.get_loops(block)[-1])
    elif len(loops) == 6:
        n, y, x, b, k, j = loops
        xo, xi = sch.split(x, [None, divisor_at_most(extents(sch, [x])[0], 2 * lanes)])
        sch.reorder(n, y, b, k, xo, j, xi)
        write_back = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(write_back, k, preserve_unit_loops=True)
        sch.parallel(sch.fuse(n, y))
        sch.vectorize(xi)
        init = sch.decompose_reduction(block, j)
        sch.vectorize(sch.get_loops(init)[-1])
    else:
        _parallel_outer(sch, block, 1)


def schedule_bitpool(func: tirx.PrimFunc, lanes: int = 4) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    _pool(sch, lanes)
    return mark_scheduled(sch.mod["main"])


def _pool(sch: s_tir.Schedule, lanes: int) -> None:
    """The OR pool on packed bits: rows in parallel, the words of a pixel vectorized."""
    block = named_exactly(sch, POOL)
    n, y, x, b, c = sch.get_loops(block)
    sch.parallel(sch.fuse(n, y))
    _vectorize_inner(sch, block, lanes)


def _lanes(func: tirx.PrimFunc, machine: Machine) -> int:
    """Accumulator lanes of one vector register for the operator's packed words (the pack's output)."""
    return machine.lanes(accumulator_bits(str(func.params[-1 if op_kind(func) == PACK else 0].dtype)))


def schedule_conv_on(sch: s_tir.Schedule, machine: Machine, tiles=None) -> None:
    """The conv's schedule on ``sch``; ``tiles`` picks the register tile, as in :func:`_conv` (the
    tuner's knob, :func:`sampled_conv_tiles`)."""
    _conv(sch, _lanes(sch.mod["main"], machine), tiles or _fixed_tiles, accumulator_registers(machine))


def schedule_dense_on(sch: s_tir.Schedule, machine: Machine) -> None:
    _dense(sch, _lanes(sch.mod["main"], machine))


def schedule_pack_on(sch: s_tir.Schedule, machine: Machine) -> None:
    _pack(sch, _lanes(sch.mod["main"], machine))


def schedule_pool_on(sch: s_tir.Schedule, machine: Machine) -> None:
    _pool(sch, _lanes(sch.mod["main"], machine))


def sampled_conv_tiles(sch: s_tir.Schedule, ow: int, oc: int, default_w: int, default_oc: int):
    """The tuner's conv register tile: columns × channels, categorical among the divisors up to
    MAX_COLUMNS × MAX_CHANNELS and the default."""
    return (categorical(sch, divisors_up_to(ow, MAX_COLUMNS) | {default_w}),
            categorical(sch, divisors_up_to(oc, MAX_CHANNELS) | {default_oc}))
