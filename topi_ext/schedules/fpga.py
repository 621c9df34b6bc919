"""Single work-item schedules for FPGA OpenCL flows (Intel FPGA SDK / oneAPI style).

An FPGA compiler turns a single work-item kernel's loop nest into a pipeline: the outer loops
stream, and unrolled inner loops become parallel hardware. So every PrimFunc is scheduled as
plain loops under one unit ``blockIdx`` × ``threadIdx`` binding (a 1×1 NDRange, the same as
``clEnqueueTask``), with:

* injective producers (padding, layout copies) inlined into their consumers;
* each reduction accumulated in a private register (``local``) per output element, with its
  elementwise epilogue (bias, activation, residual add) applied on write-back;
* the reduction's inner loops (the kernel window) unrolled, up to ``UNROLL_MAX`` iterations each,
  so one pipeline iteration performs a whole window of multiply-adds.
"""

from __future__ import annotations

from collections import Counter

import tvm
from tvm import s_tir, tirx

from ..operators import schedule_operator
from .helpers import inline_epilogue, is_reduction

UNROLL_MAX = 16


def schedule_single_work_item(func: tirx.PrimFunc) -> s_tir.Schedule:
    """The operator's registered ``fpga`` schedule where it has one, else the single work-item one."""
    found = schedule_operator(func, None, "fpga")
    if found is not None:
        return found[0]
    sch = s_tir.Schedule(func)
    _inline_injective(sch)
    reductions = [name for name in _block_names(sch) if is_reduction(sch, sch.get_sblock(name))]
    for name in reductions:
        _accumulate_in_register(sch, sch.get_sblock(name))
    _bind_one_work_item(sch)
    for name in reductions:
        block = sch.get_sblock(name)
        loops = [lp for lp in sch.get_loops(block) if sch.get(lp).thread_binding is None]
        first = _spatial_count(sch, block)
        sch.decompose_reduction(block, loops[first])
        for loop in loops[first + 1:]:
            extent = sch.get(loop).extent
            if isinstance(extent, tirx.IntImm) and int(extent) <= UNROLL_MAX:
                sch.unroll(loop)
    return sch


def _block_names(sch: s_tir.Schedule) -> list[str]:
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _spatial_count(sch: s_tir.Schedule, block) -> int:
    return sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.DataPar)


def _inline_injective(sch: s_tir.Schedule) -> None:
    """Inline every non-reduction block that has consumers, last first, until none can be."""
    changed = True
    while changed:
        changed = False
        for name in reversed(_block_names(sch)):
            block = sch.get_sblock(name)
            if is_reduction(sch, block) or not sch.get_consumers(block):
                continue
            try:
                sch.compute_inline(block)
                changed = True
            except s_tir.ScheduleError:
                continue


def _accumulate_in_register(sch: s_tir.Schedule, block) -> None:
    """Accumulate in a private register per output element; fold the epilogue into the store."""
    loops = sch.get_loops(block)
    out = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(out, loops[_spatial_count(sch, block) - 1], preserve_unit_loops=True)
    inline_epilogue(sch, out)


def _bind_one_work_item(sch: s_tir.Schedule) -> None:
    """Put each top-level loop nest (one kernel each) under unit blockIdx.x / threadIdx.x loops."""
    for name in _block_names(sch):
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        if any(sch.get(lp).thread_binding is not None for lp in loops):
            continue  # shares a loop nest (a kernel) bound already
        thread = sch.add_unit_loop(loops[0] if loops else block)
        sch.bind(thread, "threadIdx.x")
        sch.bind(sch.add_unit_loop(thread), "blockIdx.x")


def apply_fpga_schedules(mod: tvm.IRModule) -> tuple[tvm.IRModule, Counter]:
    """Schedule every PrimFunc as single work-item kernels; the count per kind of kernel."""
    used: Counter = Counter()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc):
            sch = schedule_single_work_item(func)
            reduces = any(is_reduction(sch, b) for b in sch.get_child_blocks(sch.get_sblock("root")))
            used["single_work_item_reduction" if reduces else "single_work_item"] += 1
            mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod, used
