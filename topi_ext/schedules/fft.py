"""CPU schedule (x86, aarch64) for the FFT conv's channel mix (:func:`reforge.topi_ext.fft_conv.mix`), a batched GEMM.

Per frequency q, ``m_q = x_q [2P, C] @ k_q [C, 2O]`` in register tiles of ``rows × V`` accumulators
(V the weight spectra's strip width, 16): the strip (``C × V`` values, contiguous, in L1) is reused by
every row tile, each step of the reduction is ``rows`` broadcasts of x against V / lanes weight vectors. ``m_q`` (in L1)
is computed at the frequency loop of the complex combination, which is vectorized along O; the
frequencies run in parallel.
"""

from __future__ import annotations

from tvm import s_tir

from reforge.machine import Machine

from ..fft_conv import MIX_ACC, MIX_OUT, strip_width
from .helpers import PARALLEL_MIN_WORK, blocks, divisor_at_most, extents

MAX_TUNED_ROWS = 16  # the tuner's register rows at most


def mix_rows(machine: Machine) -> int:
    """Rows of the register tile at most: as many as the register file holds with two accumulator vectors
    a row (a 16-column strip at 8 lanes) beside the strip's weight vectors, a broadcast and a spare, up to
    the accumulators that hide the FMA latency with a one-vector strip (more rows only add broadcast
    loads). AVX2: 6; AVX-512 and NEON: 8."""
    return min((machine.vector_registers - 4) // 2, machine.min_accumulators)


def sampled_mix_rows(sch: s_tir.Schedule, i):
    """The tuner's register rows: a perfect tile of the rows, its inner part up to MAX_TUNED_ROWS."""
    return sch.sample_perfect_tile(i, n=2, max_innermost_factor=MAX_TUNED_ROWS)


def schedule_mix_on(sch: s_tir.Schedule, machine: Machine, rows=None) -> None:
    """Schedule a PrimFunc of :func:`fft_conv.mix_prim_func` (on a traced schedule); ``rows(sch, i)``
    splits the rows into register tiles (default: the most up to :func:`mix_rows` that divide them; a
    tuner samples it)."""
    lanes = machine.lanes()
    by_name = {sch.get(b).name_hint: b for b in blocks(sch)}
    acc, out = by_name[MIX_ACC], by_name[MIX_OUT]
    oq, _, _, oo = sch.get_loops(out)
    work = 1
    for e in extents(sch, sch.get_loops(acc)):
        work *= e
    _, ov = sch.split(oo, [None, divisor_at_most(extents(sch, [oo])[0], lanes)])
    sch.vectorize(ov)
    sch.compute_at(acc, oq)
    i, j, r = sch.get_loops(acc)[-3:]
    strip = strip_width(extents(sch, [j])[0])
    vec = divisor_at_most(strip, lanes)
    if rows is None:
        split = [None, divisor_at_most(extents(sch, [i])[0], mix_rows(machine))]
    else:
        split = rows(sch, i)
    io, ii = sch.split(i, split)
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
