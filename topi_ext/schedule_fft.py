"""x86 (and aarch64) schedule for the FFT conv's channel mix (:func:`fft_conv.mix`), a batched GEMM.

Per frequency q, ``m_q = x_q [2P, C] @ k_q [C, 2O]`` in register tiles of ``rows × V`` accumulators
(V the weight spectra's strip width, 16): the strip (``C × V`` values, contiguous, in L1) is reused by
every row tile, each step of the reduction is ``rows`` broadcasts of x against V / lanes weight vectors. ``m_q`` (in L1)
is computed at the frequency loop of the complex combination, which is vectorized along O; the
frequencies run in parallel.
"""

from __future__ import annotations

from tvm import s_tir

from .fft_conv import MIX_ACC, MIX_OUT, strip_width
from .schedule_x86 import PARALLEL_MIN_WORK, _blocks, _divisor_at_most, _extents

MAX_ROWS = 6  # rows of the register tile (with a 16-column strip on AVX2: 12 accumulators of 16)


def default_mix_rows(sch: s_tir.Schedule, i) -> list:
    """The split of the rows (P) whose inner part is the register tile's rows: the most up to MAX_ROWS."""
    return [None, _divisor_at_most(_extents(sch, [i])[0], MAX_ROWS)]


def schedule_mix_on(sch: s_tir.Schedule, lanes: int, rows=default_mix_rows) -> None:
    """Schedule a PrimFunc of :func:`fft_conv.mix_prim_func` (on a traced schedule); ``rows(sch, i)``
    splits the rows into register tiles (a tuner samples it)."""
    blocks = {sch.get(b).name_hint: b for b in _blocks(sch)}
    acc, out = blocks[MIX_ACC], blocks[MIX_OUT]
    oq, _, _, oo = sch.get_loops(out)
    work = 1
    for e in _extents(sch, sch.get_loops(acc)):
        work *= e
    _, ov = sch.split(oo, [None, _divisor_at_most(_extents(sch, [oo])[0], lanes)])
    sch.vectorize(ov)
    sch.compute_at(acc, oq)
    i, j, r = sch.get_loops(acc)[-3:]
    strip = strip_width(_extents(sch, [j])[0])
    vec = _divisor_at_most(strip, lanes)
    io, ii = sch.split(i, rows(sch, i))
    jo, jj, jv = sch.split(j, [None, strip // vec, vec])
    sch.reorder(jo, io, r, ii, jj, jv)
    tile = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(tile, io, preserve_unit_loops=True)
    sch.unroll(ii)
    sch.unroll(jj)
    sch.vectorize(jv)
    sch.vectorize(sch.get_loops(tile)[-1])
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(oq)
    init = sch.decompose_reduction(acc, r)
    sch.vectorize(sch.get_loops(init)[-1])
