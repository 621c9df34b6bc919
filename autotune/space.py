"""Design spaces: reforge's own for its operators, MetaSchedule's generic one for the rest.

Each reforge schedule takes its one or two register-level choices from a knob; here the knobs are
sampled instead, and everything else stays the default schedule, so every candidate is a valid,
fully scheduled function:
- blocked conv (``conv2d_nchwc``): output columns × output-channel vectors of the register tile,
  two ``sample_perfect_tile`` decisions the evolutionary search mutates; also the reduction order
  (whole rows accumulated over input-channel chunks and kernel rows, or all of the reduction inside
  the tile with the chunks outside or inside the kernel taps), and how many lane steps are unrolled;
- blocked depthwise conv: output columns of the register tile (``sample_perfect_tile``);
- Winograd conv's GEMMs: tiles × output-channel vectors of the register tile (``sample_perfect_tile``);
- FFT conv's channel mix: rows of the register tile (``sample_perfect_tile``);
- bit-serial conv: output columns × output channels of the register tile, categorical among the
  divisors that keep the accumulators in registers;
- fast WHT over channels (``Q > 1``): pixels per strip, categorical among divisors above 1 (the
  strip is the vector at every stage).
The bit-serial pack, dense and OR-pool and the row-wise WHT keep their one schedule.

For ``cuda`` every function gets MetaSchedule's CUDA space (multi-level tiling with block and thread
bindings, shared-memory staging, cross-thread reduction), without the tensor-core rules: reforge's
GPU functions are float32 or integer, which the wmma intrinsics do not take.
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from reforge.topi_ext.bitserial import CONV as BITSERIAL_CONV
from reforge.topi_ext.conv2d_nchwc import BLOCK as CONV_NCHWC
from reforge.topi_ext.depthwise_nchwc import BLOCK as DEPTHWISE_NCHWC
from reforge.topi_ext.fft_conv import MIX_OP
from reforge.topi_ext.op_kind import op_kind
from reforge.topi_ext.operator_schedules import OPERATOR_SCHEDULES
from reforge.topi_ext.schedule_fft import MAX_ROWS
from reforge.topi_ext.schedule_wht import default_strip
from reforge.topi_ext.schedule_x86 import (MAX_REG_N, _divisors, schedule_conv2d_nchwc, schedule_depthwise_nchwc,
                                           schedule_winograd_nchwc)
from reforge.topi_ext.wht import OP as WHT
from reforge.topi_ext.winograd_nchwc import GEMM as WINOGRAD_GEMM

MAX_CHANNEL_CHUNKS = 4  # vectors per register-tile column
MAX_BITSERIAL_COLUMNS, MAX_BITSERIAL_CHANNELS = 8, 64
MAX_STRIP_VECTORS = 4  # WHT strip width, in vectors
MAX_LANE_UNROLL = 8  # input-channel lane steps unrolled in the conv's reduction


def _categorical(sch: s_tir.Schedule, options: set[int]):
    """One of ``options`` drawn uniformly (a plain int when there is only one)."""
    options = sorted(options)
    return options[0] if len(options) == 1 else sch.sample_categorical(options, [1.0 / len(options)] * len(options))


def _divisors_up_to(n: int, limit: int, least: int = 1) -> set[int]:
    return {d for d in _divisors(n) if least <= d <= limit}


def _sampled_conv_tiles(sch: s_tir.Schedule, ow, oco, _accumulate_rows: bool):
    return (sch.sample_perfect_tile(ow, n=2, max_innermost_factor=MAX_REG_N + 2),
            sch.sample_perfect_tile(oco, n=2, max_innermost_factor=MAX_CHANNEL_CHUNKS))


def _sampled_conv_reduction(sch: s_tir.Schedule, ico, ry, rx, ici):
    """Whole output rows accumulated over (input-channel chunks, kernel rows), or the whole reduction
    inside the column tile with the chunks outside or inside the kernel taps; the lane loop split,
    its inner part unrolled."""
    order = int(sch.get(_categorical(sch, {0, 1, 2})))
    ici_o, ici_i = sch.split(ici, sch.sample_perfect_tile(ici, n=2, max_innermost_factor=MAX_LANE_UNROLL))
    if order == 0:
        return [ico, ry], [rx, ici_o, ici_i], [ici_i]
    return [], ([ry, rx, ico, ici_o, ici_i] if order == 2 else [ico, ry, rx, ici_o, ici_i]), [ici_i]


def _sampled_depthwise_columns(sch: s_tir.Schedule, ow):
    return sch.sample_perfect_tile(ow, n=2, max_innermost_factor=MAX_REG_N + 2)


def _sampled_mix_rows(sch: s_tir.Schedule, i):
    return sch.sample_perfect_tile(i, n=2, max_innermost_factor=MAX_ROWS + 2)


def _sampled_strip(sch: s_tir.Schedule, pixels: int, lanes: int):
    return _categorical(sch, _divisors_up_to(pixels, MAX_STRIP_VECTORS * lanes, least=2)
                        | {default_strip(sch, pixels, lanes)})


def _sampled_bitserial_tiles(sch: s_tir.Schedule, ow: int, oc: int, default_w: int, default_oc: int):
    return (_categorical(sch, _divisors_up_to(ow, MAX_BITSERIAL_COLUMNS) | {default_w}),
            _categorical(sch, _divisors_up_to(oc, MAX_BITSERIAL_CHANNELS) | {default_oc}))


OPERATOR_KNOBS = {BITSERIAL_CONV: _sampled_bitserial_tiles, MIX_OP: _sampled_mix_rows, WHT: _sampled_strip}


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


def space_for(task_mod, target_kind: str, lanes: int):
    """The design space of one task (a module holding one fused PrimFunc) for a target of ``target_kind``."""
    if target_kind == "cuda":
        return ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")
    kind = op_kind(task_mod["main"])
    if kind in OPERATOR_SCHEDULES:
        return _space(lambda sch: OPERATOR_SCHEDULES[kind](sch, lanes, OPERATOR_KNOBS.get(kind)))
    blocks = block_names(task_mod["main"])
    if CONV_NCHWC in blocks:
        return _space(lambda sch: schedule_conv2d_nchwc(sch, lanes, _sampled_conv_tiles,
                                                                _sampled_conv_reduction))
    if WINOGRAD_GEMM in blocks:
        return _space(lambda sch: schedule_winograd_nchwc(sch, lanes, _sampled_conv_tiles))
    if DEPTHWISE_NCHWC in blocks:
        return _space(lambda sch: schedule_depthwise_nchwc(sch, lanes, _sampled_depthwise_columns))
    return "post-order-apply"
