"""Design spaces: reforge's own for its operators, MetaSchedule's generic one for the rest.

The blocked conv (``conv2d_nchwc``) is searched over its register tile: the split of the output
width (how many columns of accumulators) and of the output-channel chunks (how many vectors per
column), both ``sample_perfect_tile`` decisions the evolutionary search mutates. The bit-serial
conv likewise over its register tile (output columns × output channels), as categorical choices
among the divisors that keep the accumulators in registers; reforge's other operators (bit-serial
pack, dense, OR-pool; the fast WHT) keep their one schedule. Everything else in a schedule is the default one,
so every candidate is a valid, fully scheduled function.
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from reforge.topi_ext.bitserial import CONV as BITSERIAL_CONV
from reforge.topi_ext.bitserial import op_kind
from reforge.topi_ext.conv2d_nchwc import BLOCK as CONV_NCHWC
from reforge.topi_ext.operator_schedules import OPERATOR_SCHEDULES
from reforge.topi_ext.schedule_x86 import MAX_REG_N, schedule_conv2d_nchwc

MAX_CHANNEL_CHUNKS = 2  # vectors per register-tile column
MAX_BITSERIAL_COLUMNS, MAX_BITSERIAL_CHANNELS = 8, 64


def _sampled_tiles(sch: s_tir.Schedule, ow, oco):
    return (sch.sample_perfect_tile(ow, n=2, max_innermost_factor=MAX_REG_N + 2),
            sch.sample_perfect_tile(oco, n=2, max_innermost_factor=MAX_CHANNEL_CHUNKS))


def conv2d_nchwc_space(lanes: int) -> ms.space_generator.ScheduleFn:
    def generate(sch: s_tir.Schedule) -> s_tir.Schedule:
        schedule_conv2d_nchwc(sch, lanes, _sampled_tiles)
        return sch

    # the schedule is complete: no generic rules, no postprocessors on top of it
    return ms.space_generator.ScheduleFn(generate, sch_rules=[], postprocs=[], mutator_probs="from-target")


def _sampled_bitserial_tiles(sch: s_tir.Schedule, ow: int, oc: int, default_w: int, default_oc: int):
    def choice(extent: int, default: int, limit: int):
        options = sorted({d for d in range(1, min(extent, limit) + 1) if extent % d == 0} | {default})
        return sch.sample_categorical(options, [1.0 / len(options)] * len(options))

    return (choice(ow, default_w, MAX_BITSERIAL_COLUMNS), choice(oc, default_oc, MAX_BITSERIAL_CHANNELS))


def operator_space(lanes: int, kind: str) -> ms.space_generator.ScheduleFn:
    """A reforge operator's schedule; the bit-serial conv's register tile sampled."""
    def generate(sch: s_tir.Schedule) -> s_tir.Schedule:
        OPERATOR_SCHEDULES[kind](sch, lanes, _sampled_bitserial_tiles if kind == BITSERIAL_CONV else None)
        return sch

    return ms.space_generator.ScheduleFn(generate, sch_rules=[], postprocs=[], mutator_probs="from-target")


def block_names(func) -> set[str]:
    names: set[str] = set()

    def record(block, visitor):
        names.add(block.name_hint)
        visitor.default_visit(block)

    tvm_ffi.structural.structural_visit(func, [(s_tir.SBlock, record)])
    return names


def space_for(task_mod, lanes: int):
    """The design space of one task (a module holding one fused PrimFunc)."""
    kind = op_kind(task_mod["main"])
    if kind in OPERATOR_SCHEDULES:
        return operator_space(lanes, kind)
    if CONV_NCHWC in block_names(task_mod["main"]):
        return conv2d_nchwc_space(lanes)
    return "post-order-apply"
