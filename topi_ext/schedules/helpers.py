"""Schedule primitives every schedule of this package shares: finding blocks and loop extents,
divisors, folding an elementwise epilogue into a write-back, running outer loops in parallel and
vectorizing the innermost one, drawing a tuner's categorical choice.

Each works on a traced ``s_tir.Schedule`` (so tuning records replay it) and changes nothing but
what its name says.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm_ffi.structural import structural_visit

from ..fast_math import VECTOR_INTRINSICS

PARALLEL_MIN_WORK = 1 << 18  # iterations below which threads cost more than they save
PAD_PARALLEL_MIN_WORK = 1 << 17  # a conv's input padding (a copy) from this many elements: at 2 threads the
# 3×3 convs at 56² (161K) ran 1.1x faster, MobileOne-S0's stem (153K) 1.04-1.3x; at 28² (86K) no gain
PARALLEL_CHUNKS = 16  # parallel over the fewest outer loops giving this many chunks of work
CHEAP_OPS = 4  # float operations per element of the bodies PARALLEL_MIN_WORK was set for (a copy, bias, ReLU)
_OPS = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Min, tirx.Max, tirx.Select, tirx.Cast, tvm.ir.Call)


def blocks(sch: s_tir.Schedule) -> list:
    """The root's child blocks, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def named(sch: s_tir.Schedule, prefix: str):
    """The one root block whose name starts with ``prefix``; None if there is none or several."""
    found = [b for b in blocks(sch) if sch.get(b).name_hint.startswith(prefix)]
    return found[0] if len(found) == 1 else None


def named_exactly(sch: s_tir.Schedule, name: str):
    """The first root block named ``name``, or None."""
    found = [b for b in blocks(sch) if sch.get(b).name_hint == name]
    return found[0] if found else None


def extents(sch: s_tir.Schedule, loops) -> list[int]:
    """The constant extents of ``loops``."""
    return [int(sch.get(loop).extent) for loop in loops]


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block`` has a reduction axis."""
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of ``n`` not above ``cap`` (1 at least)."""
    return max(d for d in divisors(n) if d <= cap)


def divisors_up_to(n: int, limit: int, least: int = 1) -> set[int]:
    """The divisors of ``n`` in ``[least, limit]``."""
    return {d for d in divisors(n) if least <= d <= limit}


def categorical(sch: s_tir.Schedule, options: set[int]):
    """One of ``options`` drawn uniformly by the tuner (a plain int when there is only one)."""
    options = sorted(options)
    return options[0] if len(options) == 1 else sch.sample_categorical(options, [1.0 / len(options)] * len(options))


def mark_scheduled(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` marked scheduled, so the default schedules leave it alone."""
    return func.with_attr("tirx.is_scheduled", True)


def inline_epilogue(sch: s_tir.Schedule, producer) -> None:
    """Fold the elementwise consumers of ``producer`` (a write-back block) into it: only those that
    write a buffer of the producer's shape. A crop or shifted window (``out[h] = conv[h + 1]``) would
    be written at the producer's indices, past the end of its buffer and into wrong places, because
    ``reverse_compute_inline`` adds no bounds to the producer's (register-tiled, padded) domain.
    An epilogue that reads the producer twice (hardswish x · clip(x + 3, 0, 6) / 6) has a diamond: its
    intermediate blocks are inlined into the block that joins them first, so that one consumer is left
    (else each step is a pass over the whole output in memory); only where every step is arithmetic, no
    calls (GELU's erf in the tile ran 2.3x slower than as passes of their own)."""
    shape = [int(d) for d in sch.get(producer).writes[0].source.shape]
    while True:
        consumers = sch.get_consumers(producer)
        if any([int(d) for d in sch.get(c).writes[0].source.shape] != shape for c in consumers):
            return
        if len(consumers) > 1:
            if not _arithmetic(sch, producer) or not any(_inlined(sch, c) for c in consumers):
                return
            continue
        if not consumers:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            return


def _arithmetic(sch: s_tir.Schedule, producer) -> bool:
    """Whether every block downstream of ``producer`` is arithmetic: no calls (erf, sigmoid, exp) but the
    elementwise intrinsics that vectorize (``fast_math.VECTOR_INTRINSICS``: exp / sigmoid / tanh / erf made
    arithmetic)."""
    calls, seen, todo = [], set(), list(sch.get_consumers(producer))
    while todo:
        block = todo.pop()
        if sch.get(block).name_hint in seen:
            continue
        seen.add(sch.get(block).name_hint)
        structural_visit(sch.get(block).body, [(tvm.ir.Call, lambda call, _visitor: calls.append(call)
                                                 if str(call.op.name) not in VECTOR_INTRINSICS else None)])
        todo += sch.get_consumers(block)
    return not calls


def _inlined(sch: s_tir.Schedule, block) -> bool:
    """Inline the elementwise ``block`` into its consumers, if it writes no output of the function."""
    try:
        sch.compute_inline(block)
        return True
    except s_tir.ScheduleError:
        return False


def parallelize(sch: s_tir.Schedule, loops: list, work: int, min_work: int = PARALLEL_MIN_WORK) -> None:
    """Run the shortest prefix of ``loops`` with at least PARALLEL_CHUNKS iterations in parallel, if
    ``work`` (iterations) reaches ``min_work``."""
    if work < min_work or not loops:
        return
    count, prefix = 1, []
    for loop in loops:
        prefix.append(loop)
        count *= extents(sch, [loop])[0]
        if count >= PARALLEL_CHUNKS:
            break
    sch.parallel(sch.fuse(*prefix) if len(prefix) > 1 else prefix[0])


def operations(sch: s_tir.Schedule, block) -> int:
    """Float operations in ``block``'s body (not its index arithmetic): the work of one iteration."""
    count = [0]

    def seen(node, visitor):
        count[0] += str(node.ty).startswith("float")
        visitor.default_visit(node)

    structural_visit(sch.get(block).body, [(kind, seen) for kind in _OPS])
    return count[0]


def vectorize(sch: s_tir.Schedule, block, lanes: int, min_work: int = PARALLEL_MIN_WORK) -> None:
    """Vectorize the innermost loop of ``block`` when it fills vectors of ``lanes``, or half a vector or more of
    them (a channel block narrower than the vector); run the outer loops in parallel (:func:`parallelize`),
    the work weighed by the arithmetic of an iteration against CHEAP_OPS (x · sigmoid(x) is some 30
    operations an element: worth the threads over fewer elements than a copy).

    Loops are not all fused into one: that would put a division per element into the index
    arithmetic of every non-vectorized access.
    """
    loops = sch.get_loops(block)
    sizes = extents(sch, loops)
    total = 1
    for e in sizes:
        total *= e
    if sizes[-1] % lanes == 0:
        outer, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)
        loops = loops[:-1] + [outer]
    elif lanes // 2 <= sizes[-1] < lanes:  # a channel block narrower than the vector (15 on 16 lanes): one vector
        sch.vectorize(loops[-1])
    parallelize(sch, loops[:-1], total * max(1, operations(sch, block) // CHEAP_OPS), min_work)
