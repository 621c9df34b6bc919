"""CPU schedule (x86, aarch64) for the fast Walsh-Hadamard transform of :mod:`reforge.topi_ext.wht`.

The transform of one row (``Q = 1``: a matmul input, rows contiguous) or of one strip of ``vec``
columns (``Q > 1``: the channel axis of NCHW, ``vec`` neighbouring pixels contiguous) is computed by
all log2 N stages while it stays in L1: every stage is computed at the output's row / strip loop,
so each stage buffer is one row (N floats) or one N × vec strip. Rows / strips run in parallel.
Inside a stage the butterfly's index ``i`` is split into (group, half, offset); the half (2) is
unrolled, which resolves the add / subtract select, and the offset (h contiguous elements) is
vectorized once h fills a vector; for ``Q > 1`` the strip's pixels are the vector at every stage.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from reforge.machine import Machine

from ..wht import OUT, STAGE
from .helpers import PARALLEL_MIN_WORK, blocks, categorical, divisor_at_most, divisors_up_to, extents, mark_scheduled

MAX_STRIP_VECTORS = 4  # the tuner's strip widths, in vectors


def schedule_wht(func: tirx.PrimFunc, machine: Machine) -> tirx.PrimFunc:
    """Schedule a PrimFunc built by :func:`wht.wht_prim_func` for ``machine``."""
    sch = s_tir.Schedule(func)
    schedule_wht_on(sch, machine)
    return mark_scheduled(sch.mod["main"])


def default_strip(_sch: s_tir.Schedule, pixels: int, lanes: int) -> int:
    """Pixels per strip (``Q > 1``): the most up to two vectors."""
    return divisor_at_most(pixels, 2 * lanes)


def sampled_strip(sch: s_tir.Schedule, pixels: int, lanes: int):
    """The tuner's strip: categorical among the divisors of ``pixels`` from 2 up to MAX_STRIP_VECTORS
    vectors, and the default."""
    return categorical(sch, divisors_up_to(pixels, MAX_STRIP_VECTORS * lanes, least=2)
                       | {default_strip(sch, pixels, lanes)})


def schedule_wht_on(sch: s_tir.Schedule, machine: Machine, strip=None) -> None:
    """:func:`schedule_wht` on a given schedule (whose trace tuning records keep); ``strip(sch, Q,
    lanes)`` picks the pixels per strip when ``Q > 1`` (default :func:`default_strip`; a tuner samples it
    among divisors above 1)."""
    lanes, strip = machine.lanes(), strip or default_strip
    func = sch.mod["main"]
    by_name = {sch.get(b).name_hint: b for b in blocks(sch)}
    out = by_name[OUT]
    p, m, q = sch.get_loops(out)
    P, M, Q = extents(sch, [p, m, q])
    stages = sorted((name for name in by_name if name.startswith(STAGE)), key=lambda s: int(s[len(STAGE):]))
    n = 1 << len(stages)
    if Q == 1:
        vec = 1
        outer = p
        if "perm" not in [prm.name for prm in func.params] and M % lanes == 0:
            mo, mi = sch.split(m, [None, lanes])
            sch.vectorize(mi)
    else:
        vec = strip(sch, Q, lanes)
        qo, qi = sch.split(q, [None, vec])
        vec = vec if isinstance(vec, int) else int(sch.get(vec))
        sch.reorder(p, qo, m, qi)
        outer = sch.fuse(p, qo)
        if vec > 1:
            sch.vectorize(qi)
    for name in reversed(["wht_pad", *stages]):
        if name in by_name:
            sch.compute_at(by_name[name], outer, preserve_unit_loops=True)
    for s, name in enumerate(stages):
        h = 1 << s
        i, c = sch.get_loops(by_name[name])[-2:]
        j, t, k = sch.split(i, [n // (2 * h), 2, h])
        sch.unroll(t)
        if vec > 1:
            sch.vectorize(c)
        elif h >= lanes:
            ko, ki = sch.split(k, [None, lanes])
            sch.vectorize(ki)
        elif h > 1:
            sch.unroll(k)
    if "wht_pad" in by_name and vec > 1:
        sch.vectorize(sch.get_loops(by_name["wht_pad"])[-1])
    if P * M * Q * max(1, len(stages)) >= PARALLEL_MIN_WORK // 4 and extents(sch, [outer])[0] > 1:
        sch.parallel(outer)
