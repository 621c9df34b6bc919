"""Design spaces: reforge's own for its operators, MetaSchedule's generic one for the rest.

Each reforge schedule takes its one or two register-level choices from a knob; here the knobs are
sampled instead, and everything else stays the default schedule, so every candidate is a valid,
fully scheduled function:
- blocked conv (``conv2d_nchwc``): output columns × output-channel vectors of the register tile,
  two ``sample_perfect_tile`` decisions the evolutionary search mutates; also the reduction order
  (whole rows accumulated over input-channel chunks and kernel rows, or all of the reduction inside
  the tile with the chunks outside or inside the kernel taps), and how many lane steps are unrolled;
- blocked grouped conv (``grouped_conv2d_nchwc``): the same knobs, the channel vectors drawn among
  the output-channel chunks of one block group; in the rotated form (groups narrower than the
  block) the output columns of the register tile (``sample_perfect_tile``);
- blocked depthwise conv: output columns of the register tile (``sample_perfect_tile``);
- Winograd conv's GEMMs: tiles × output-channel vectors of the register tile (``sample_perfect_tile``);
- FFT conv's channel mix: rows of the register tile (``sample_perfect_tile``);
- bit-serial conv: output columns × output channels of the register tile, categorical among the
  divisors that keep the accumulators in registers;
- fast WHT over channels (``Q > 1``): pixels per strip, categorical among divisors above 1 (the
  strip is the vector at every stage).
The knobs of reforge's own operators (FFT mix, bit-serial conv, WHT) are registered with them
(:mod:`reforge.topi_ext.operators`); the bit-serial pack, dense and OR-pool and the row-wise WHT keep
their one schedule.

For ``cuda`` every function gets MetaSchedule's CUDA space (multi-level tiling with block and thread
bindings, shared-memory staging, cross-thread reduction), without the tensor-core rules: reforge's
GPU functions are float32 or integer, which the wmma intrinsics do not take.
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from reforge.machine import Machine
from reforge.topi_ext.conv2d_nchwc import BLOCK as CONV_NCHWC
from reforge.topi_ext.depthwise_nchwc import BLOCK as DEPTHWISE_NCHWC
from reforge.topi_ext.grouped_nchwc import BLOCK as GROUPED_NCHWC, ROTATED as GROUPED_ROTATED
from reforge.topi_ext.operators import operator_of, schedule_operator_on
from reforge.topi_ext.schedules.cpu import (MAX_REG_N, schedule_conv2d_nchwc, schedule_depthwise_nchwc,
                                            schedule_grouped_conv2d_nchwc, schedule_winograd_nchwc)
from reforge.topi_ext.schedules.helpers import categorical
from reforge.topi_ext.winograd_nchwc import GEMM as WINOGRAD_GEMM

MAX_CHANNEL_CHUNKS = 4  # vectors per register-tile column
MAX_LANE_UNROLL = 8  # input-channel lane steps unrolled in the conv's reduction


def _sampled_conv_tiles(sch: s_tir.Schedule, ow, oco, _accumulate_rows: bool):
    return (sch.sample_perfect_tile(ow, n=2, max_innermost_factor=MAX_REG_N + 2),
            sch.sample_perfect_tile(oco, n=2, max_innermost_factor=MAX_CHANNEL_CHUNKS))


def _sampled_conv_reduction(sch: s_tir.Schedule, ico, ry, rx, ici):
    """Whole output rows accumulated over (input-channel chunks, kernel rows), or the whole reduction
    inside the column tile with the chunks outside or inside the kernel taps; the lane loop split,
    its inner part unrolled."""
    order = int(sch.get(categorical(sch, {0, 1, 2})))
    ici_o, ici_i = sch.split(ici, sch.sample_perfect_tile(ici, n=2, max_innermost_factor=MAX_LANE_UNROLL))
    if order == 0:
        return [ico, ry], [rx, ici_o, ici_i], [ici_i]
    return [], ([ry, rx, ico, ici_o, ici_i] if order == 2 else [ico, ry, rx, ici_o, ici_i]), [ici_i]


def _sampled_depthwise_columns(sch: s_tir.Schedule, ow):  # also the rotated grouped conv's columns
    return sch.sample_perfect_tile(ow, n=2, max_innermost_factor=MAX_REG_N + 2)


def _space(schedule) -> ms.space_generator.ScheduleFn:
    def generate(sch: s_tir.Schedule) -> s_tir.Schedule:
        schedule(sch)
        return sch

    # the schedule is complete: no generic rules, no postprocessors on top of it
    return ms.space_generator.ScheduleFn(generate, sch_rules=[], postprocs=[], mutator_probs="from-target")


def block_names(func) -> set[str]:
    names: set[str] = set()

    def record(block, visitor):
        names.add(block.name_hint)
        visitor.default_visit(block)

    tvm_ffi.structural.structural_visit(func, [(s_tir.SBlock, record)])
    return names


def space_for(task_mod, machine: Machine):
    """The design space of one task (a module holding one fused PrimFunc) for a CPU described by ``machine``."""
    op = operator_of(task_mod["main"])
    if op is not None and ("cpu" in op.schedules or op.emitted_scheduled):
        return _space(lambda sch: schedule_operator_on(sch, op, machine, knob=op.knob))
    blocks = block_names(task_mod["main"])
    if CONV_NCHWC in blocks:
        return _space(lambda sch: schedule_conv2d_nchwc(sch, machine, _sampled_conv_tiles,
                                                                _sampled_conv_reduction))
    if GROUPED_NCHWC in blocks or GROUPED_ROTATED in blocks:
        return _space(lambda sch: schedule_grouped_conv2d_nchwc(sch, machine, _sampled_conv_tiles,
                                                                _sampled_conv_reduction, _sampled_depthwise_columns))
    if WINOGRAD_GEMM in blocks:
        return _space(lambda sch: schedule_winograd_nchwc(sch, machine, _sampled_conv_tiles))
    if DEPTHWISE_NCHWC in blocks:
        return _space(lambda sch: schedule_depthwise_nchwc(sch, machine, _sampled_depthwise_columns))
    return "post-order-apply"
