"""The CPU rule list (x86 and aarch64), applied at compile time to every fused PrimFunc without any search.

Each rule reads the :class:`~reforge.machine.Machine` it compiles for: its lanes, its register file
(the register tile's budget, :func:`conv_tile_budget`), its FMA pipes and latency (the accumulators
that hide it) and its L1 (when a conv accumulates whole rows).

Seven shapes of work cover a CNN:
- ``conv2d_nchwc``: output-channel lane innermost (one FMA of a broadcast input value with a
  weight vector), output columns × output-channel vectors unrolled as a register tile of
  accumulators (:func:`default_conv_tiles`); a kernel with taps and many input channels
  accumulates whole output rows over input-channel chunks and kernel rows, its kernel columns and
  input-channel lane around the tile (:func:`default_conv_reduction`), other convs run their
  whole reduction around the tile; rows and output-channel chunks in parallel; the elementwise
  epilogue (bias, activation, residual add) applied to the finished row or tile before it is stored.
- ``grouped_conv2d_nchwc`` (1 < groups < channels): the conv's rule inside each block group of whole
  groups (:mod:`.grouped_nchwc`): the register tile's channel vectors from one block group, block
  groups with the channel chunks and rows in parallel; groups narrower than the block in the rotated
  form: a register tile of output columns × shifts, one FMA of the loaded input vector per shift
  (:func:`rotated_columns`), the rotations summed into the output as the tile is stored.
- ``winograd_nchwc`` (3×3 stride-1 convs, F(2×2, 3×3)): input transform per tile, 16 GEMMs tiled
  as 1×1 convs over the tiles, output transform with the epilogue fused; each stage parallel.
- ``depthwise_nchwc``: the channel lane innermost (one FMA of an input vector with a weight
  vector, no cross-lane work), up to MAX_REG_N output columns as the register tile, the unrolled
  kernel taps outside it, channel chunks in parallel (with their rows when there is no padding),
  the epilogue as for the conv.
- ``dense_packed`` (``x @ W``, W a constant packed in panels): a panel's vectors in registers,
  the panel read front to back, panels in parallel.
- ``matmul`` of two computed tensors ``(K, N)``: output chunks in L1, rows of the right one streamed.
- ``resize2d`` (bilinear, :mod:`..resize`): its row pass and its column pass each vectorized along
  the innermost axis, outer loops parallel.
- anything else: producers inlined; elementwise blocks flattened, parallel and vectorized;
  reductions (pooling, means) parallel over their outer outputs and vectorized along the
  innermost output axis when it is the contiguous channel lane.

Every schedule works on a copy: a fused function the rules cannot schedule keeps TVM's plain
loop nest (correct, slow), and the build report counts it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial

from tvm import s_tir, tirx

from reforge.machine import Machine

from ..conv2d_nchwc import BLOCK as CONV_NCHWC
from ..dense_packed import BLOCK as DENSE_PACKED, PANEL_VECTORS, panel_vector
from ..depthwise_nchwc import BLOCK as DEPTHWISE_NCHWC
from ..grouped_nchwc import BLOCK as GROUPED_NCHWC, ROTATED as GROUPED_ROTATED, ROTATED_SUM as GROUPED_ROTATED_SUM
from ..resize import COLS as RESIZE_COLS, ROWS as RESIZE_ROWS
from ..winograd_nchwc import GEMM as WINOGRAD_GEMM, INPUT as WINOGRAD_INPUT, OUTPUT as WINOGRAD_OUTPUT
from .helpers import (PAD_PARALLEL_MIN_WORK, blocks, divisor_at_most, divisors, extents,
                      inline_epilogue, is_reduction, named, parallelize, vectorize)

MAX_REG_N = 12  # accumulators per register tile (output columns x channel vectors)
WIDE_REGISTERS = 32  # a register file this large takes the wide tile rule (AVX-512, NEON)
MAX_CONV_ACC = 8  # 16 registers: a conv tile of 12 (6 x 2, 12 x 1) ran at 0.6-0.85x of 4 x 2 (AVX2): it spills
WIDE_MAX_CONV_ACC = 14  # 32 registers (AVX-512, Zen 4): 7 x 2 within 5 % of the best of 8 tiles
NARROW_REGISTERS = 16  # the register file the narrow rule was measured on (AVX2's ymm)
WIDE_MAX_CHUNKS = 2  # channel vectors of a wide tile: LLVM spills a 2 x 4 tile of zmm (hoisted weights)
WIDE_ROW_BYTES = 8 << 10  # the row buffer of a row-accumulating conv (width x tile channels), wide rule
BAND_TASKS = 3  # parallel tasks per core a conv accumulating bands of rows keeps at least (row_band)
WIDE_DEPTHWISE_COLUMNS = 4
DENSE_ROWS = 4  # rows of x sharing a pass over a weight panel
MATMUL_CHUNK = 512  # outputs one thread accumulates in L1 while it streams the weight rows
INLINE_COPY_CHARS = 600  # a producer printed longer than this is not inlined into a consumer loading it twice


@dataclass(frozen=True)
class ConvTileBudget:
    """What a register tile of ``lanes``-wide channel vectors may hold on a machine.

    ``registers``: vectors for accumulators + weight vectors + a broadcast (one spare);
    ``min_acc``: accumulators that hide the FMA latency on every pipe (Little's law);
    ``max_acc``: accumulators before the unrolled tile spills; ``max_chunks``, ``row_bytes``: the wide
    rule's limits on channel vectors and on a row-accumulating conv's row buffer (None: no limit)."""

    registers: int
    min_acc: int
    max_acc: int
    max_chunks: int | None = None
    row_bytes: int | None = None

    @property
    def wide(self) -> bool:
        return self.max_chunks is not None


def conv_tile_budget(machine: Machine, lanes: int) -> ConvTileBudget:
    """The wide rule when the tile's vectors fill the machine's registers and it has WIDE_REGISTERS of
    them (AVX-512 at 16 lanes, NEON at 4); else the rule measured on 16 registers (AVX2, and AVX-512
    with a narrower channel block, whose tiles LLVM keeps in ymm)."""
    if machine.vector_registers >= WIDE_REGISTERS and lanes == machine.lanes():
        return ConvTileBudget(machine.vector_registers - 1, machine.min_accumulators, WIDE_MAX_CONV_ACC,
                              WIDE_MAX_CHUNKS, WIDE_ROW_BYTES)
    return ConvTileBudget(min(machine.vector_registers, NARROW_REGISTERS) - 1, machine.min_accumulators,
                          MAX_CONV_ACC)


def wide_tiles(machine: Machine, lanes: int) -> bool:
    """Whether tiles of ``lanes``-wide vectors take the wide rule on ``machine`` (:func:`conv_tile_budget`)."""
    return conv_tile_budget(machine, lanes).wide


def cpu_rule_schedule(func: tirx.PrimFunc, machine: Machine) -> tuple[s_tir.Schedule | None, str]:
    """The schedule (with its trace) of the first CPU rule that fits, and the rule's name."""
    for rule, apply in (("conv2d_nchwc", _conv2d_nchwc), ("grouped_conv2d_nchwc", _grouped_conv2d_nchwc),
                        ("winograd_nchwc", _winograd_nchwc),
                        ("depthwise_nchwc", _depthwise_nchwc),
                        ("dense_packed", _dense_packed), ("matmul", _matmul), ("resize2d", _resize2d),
                        ("generic", _generic)):
        sch = s_tir.Schedule(func)
        try:
            if apply(sch, machine):
                return sch, rule
        except s_tir.ScheduleError:
            continue
    return None, "none"


# ----------------------------------------------------------------------------- rules


def default_conv_tiles(sch: s_tir.Schedule, ow, oco, accumulate_rows: bool, machine: Machine) -> tuple[list, list]:
    """The splits of the output width and of the output-channel chunks whose inner parts are the
    register tile (:func:`conv_tile`)."""
    cols, chunks = conv_tile(*extents(sch, [ow, oco]), accumulate_rows, _out_lanes(sch), machine)
    return [None, cols], [None, chunks]


def conv_tile(width: int, chunks: int, accumulate_rows: bool, lanes: int, machine: Machine) -> tuple[int, int]:
    """Register tile of ``cols`` output columns × ``k`` output-channel vectors of ``lanes``. A reduction
    step broadcasts ``cols`` inputs and loads ``k`` weight vectors for ``cols·k`` FMAs; among the tiles
    with the budget's ``min_acc`` to ``max_acc`` accumulators (:func:`conv_tile_budget`) that fit the registers and have 2 to ``width`` columns,
    the fewest loads per FMA, then the most chunks when the conv accumulates whole rows (its weight
    steps are short and stay in L1), else the most columns. Column counts that divide the width come
    first; a width without one (a prime: 7) takes a tile whose last step is partial (a predicate the
    unrolled tile folds); under the wide rule, where every dividing tile has one vector, a partial tile of two
    (256 → 256 1×1 at 13²: 7 × 2 3.3x faster than 13 × 1; 27-wide convs 1.1-1.2x; AVX-512, 1 thread, quiet
    Xeon), and among partial tiles the one with the fewest columns past the width (one past is free) first: where
    LLVM does not unswitch the predicate, each predicated column's accumulators stay in memory (Inception-v3's
    17-wide 1×1, 1×7 and strided 3×3 convs, AVX-512, 1 thread: 6 × 2, one column past, 2-3x faster than
    7 × 2, four past; the 3-channel stem at 149 columns 2.4x; the 16-register rule measured neutral). Measured (1 thread, AVX2): rows of 3×3 convs at 7²-56², 2 × 4 beats 4 × 2
    by 1.02-1.2x; 1×1 convs, 4 × 2 beats 8 × 1 by 1.1-1.25x; at 7² a partial 4 × 2 beats 7 × 1 by 1.15x.

    The wide rule (32 registers filled by the tile's vectors: AVX-512, NEON): up to WIDE_MAX_CONV_ACC accumulators of at most
    WIDE_MAX_CHUNKS vectors, and a row buffer of at most WIDE_ROW_BYTES; then the fewest loads per FMA,
    the most columns. Measured (1 thread, Zen 4, ResNet-18's and RepVGG-A0's 3×3 convs at 7²-112²,
    strided ones, 1×1 convs): 7 × 2 within 5 % of the best of 8 tiles except at 112² (14 × 1 there,
    1.2x faster than 7 × 2); the AVX2 rule's 2 × 4 ran 1.2-1.5x slower (LLVM hoists its 12 KB of
    weights per step out of the column loop and spills them)."""
    budget = conv_tile_budget(machine, lanes)
    wide = budget.wide

    def allowed(c: int, k: int) -> bool:
        if not (budget.min_acc <= c * k <= budget.max_acc and c * k + k + 1 <= budget.registers):
            return False
        return not wide or (k <= budget.max_chunks
                            and not (accumulate_rows and width * k * lanes * 4 > budget.row_bytes))

    def fitting(columns):
        return [(c, k) for c in columns for k in divisors(chunks) if allowed(c, k)]

    tiles = fitting(d for d in divisors(width) if d >= 2)
    # none divides, or (wide) each has one vector, broadcasting an input per FMA: partial tiles too (13, 27 wide)
    if not tiles or (wide and all(k == 1 for _, k in tiles)):
        tiles = fitting(range(2, width + 1))
    if not tiles:
        return divisor_at_most(width, MAX_REG_N), 1
    prefer_chunks = accumulate_rows and not wide
    return min(tiles, key=lambda t: (max(0, -width % t[0] - 1) if wide else 0, (t[0] + t[1]) / (t[0] * t[1]),
                                     -t[1] if prefer_chunks else -t[0]))


def default_conv_reduction(sch: s_tir.Schedule, ico, ry, rx, ici, machine: Machine) -> tuple[list, list, list]:
    """The reduction loops ``(outer, inner, unrolled)``: ``outer`` run outside the loop over column
    tiles, accumulating a whole output row in L1 (a row buffer the tile is loaded from and stored to
    at each step), ``inner`` between that loop and the register tile, ``unrolled`` the ones to unroll.

    A kernel with taps whose weights for a 2-vector tile exceed half of L1: input-channel chunks and
    kernel rows outside, kernel columns and the lane inside, so a tile's weights per step (kw · lanes
    vectors a chunk) are read from L1, not streamed from L2 once per tile (3×3 convs of 32-512
    channels at 7²-56², 1 thread: 1.02-1.3x, strided ones too). Else the whole reduction runs inside:
    a 1×1 conv has no taps to amortize the row buffer's loads and stores over, and a stem's weights
    (3 input channels) stay in L1 anyway (7×7 and 3×3 stems: 1.1-1.3x faster than rows). Except a 1×1
    conv whose tile's weights exceed all of L1 (512-2048 input channels on 16 lanes) and whose whole
    kernel exceeds half of L2, or half of L1 and whose map fits one row (7², 8²): each tile would stream its weights, and
    each row the whole kernel from beyond L2, so it accumulates rows over blocks of input chunks whose
    weights stay in L1 for the row, or the map (:func:`pointwise_input_block`; ResNeXt-50's 1×1 convs
    at 14² and 7², 1 thread, loaded AVX-512 Xeon: 1.25-1.7x, its AVX2 code 1.2-1.5x; RegNetX-400MF's
    400 → 400 at 7² 1.11x; Inception-v3's 1280 → 448 at 8² 0.55 ms against 2.6-3.7; with a kernel
    within L2 at 28², 0.95-0.98x, so not there)."""
    return _conv_reduction(sch, ico, ry, rx, ici, 2, machine)


def default_grouped_reduction(sch: s_tir.Schedule, ico, ry, rx, ici, machine: Machine) -> tuple[list, list, list]:
    """:func:`default_conv_reduction` of a grouped conv, whose register tile has at most its block
    group's output-channel vectors."""
    conv = _conv_block(sch)
    return _conv_reduction(sch, ico, ry, rx, ici, min(2, extents(sch, sch.get_loops(conv)[1:2])[0]
                                                        // _block_groups(sch, conv)), machine)


def _conv_reduction(sch: s_tir.Schedule, ico, ry, rx, ici, vectors: int, machine: Machine) -> tuple[list, list, list]:
    """Rows accumulated when a kernel with taps has more weights for a tile of ``vectors`` channel
    vectors than half of the machine's L1, or a 1×1 kernel more than all of it while the whole kernel
    exceeds half of L2, or more than half of it while the map is accumulated as one row
    (:func:`default_conv_reduction`)."""
    chunks, kh, kw, in_lanes = extents(sch, [ico, ry, rx, ici])
    step = kh * kw * in_lanes * vectors * _out_lanes(sch) * 4  # the tile's weight bytes per input chunk
    if kh * kw > 1 and chunks * step > machine.l1d_bytes // 2:
        return [ico, ry], [rx, ici], []
    if kh * kw == 1 and (chunks * step > machine.l1d_bytes and _kernel_bytes(sch) > machine.l2_bytes // 2
                         or chunks * step > machine.l1d_bytes // 2 and _pointwise_map_is_one_row(sch, machine)):
        block, rest = sch.split(ico, [None, pointwise_input_block(chunks, step, machine)])
        return [block], [rest, ry, rx, ici], []
    return [], [ico, ry, rx, ici], []


def _kernel_bytes(sch: s_tir.Schedule) -> int:
    """The bytes of the blocked conv's (packed) kernel."""
    kernel = next(r.source for r in sch.get(_conv_block(sch)).reads if len(r.source.shape) == 6)
    return math.prod(int(d) for d in kernel.shape) * 4


def _pointwise_map_is_one_row(sch: s_tir.Schedule, machine: Machine) -> bool:
    """Whether a 1×1 conv accumulating rows would accumulate its whole map as one (:func:`fits_one_row`)."""
    conv = _conv_block(sch)
    _, chunks, height, width, lanes = (int(d) for d in sch.get(conv).writes[0].source.shape)
    return fits_one_row(height, width, chunks // _block_groups(sch, conv), lanes, machine, taps=False)


def pointwise_input_block(chunks: int, step: int, machine: Machine) -> int:
    """Input-channel chunks a row-accumulating 1×1 conv reduces per pass over a row: the most (dividing
    ``chunks``) whose weights for the tile (``step`` bytes a chunk) fill at most a quarter of L1, so they
    stay there for every column tile of the row while the row's inputs stream past them."""
    return divisor_at_most(chunks, max(1, machine.l1d_bytes // 4 // step))


def _conv_block(sch: s_tir.Schedule):
    """The blocked conv of a function: groups 1 (CONV_NCHWC) or grouped (GROUPED_NCHWC)."""
    return named(sch, CONV_NCHWC) or named(sch, GROUPED_NCHWC)


def _out_lanes(sch: s_tir.Schedule) -> int:
    """The output-channel lanes of the blocked conv (its output's last axis; its loops may be split)."""
    return int(sch.get(_conv_block(sch)).writes[0].source.shape[-1])


def _block_groups(sch: s_tir.Schedule, conv) -> int:
    """Block groups of a blocked conv (1 for groups 1): input chunks of the data over those the kernel
    reduces (:mod:`.grouped_nchwc`)."""
    reads = {len(r.source.shape): r.source for r in sch.get(conv).reads}
    return int(reads[5].shape[1]) // int(reads[6].shape[1])


def _conv2d_nchwc(sch: s_tir.Schedule, machine: Machine, tiles=None, reduction=None) -> bool:
    """``reduction(sch, ico, ry, rx, ici)`` orders (and may split) the reduction loops around the
    column tiles (:func:`default_conv_reduction`); ``tiles(sch, ow, oco, accumulate_rows)`` gives the
    splits of the output width and of the output-channel chunks, whose inner parts form the register
    tile. A tuner samples both; None takes the default."""
    conv = named(sch, CONV_NCHWC)
    if conv is None:
        return False
    return _register_tiled_conv(sch, conv, machine, tiles or partial(default_conv_tiles, machine=machine),
                                reduction or partial(default_conv_reduction, machine=machine))


def _grouped_conv2d_nchwc(sch: s_tir.Schedule, machine: Machine, tiles=None, reduction=None, columns=None) -> bool:
    """The conv's rule (:func:`_conv2d_nchwc`) over each block group of a grouped conv: ``tiles`` splits
    the output-channel chunks of one block group, so the tile's vectors share their input values. The
    rotated form (groups narrower than the block) takes :func:`_rotated_grouped`, ``columns`` its knob."""
    conv = named(sch, GROUPED_NCHWC)
    if conv is None:
        return _rotated_grouped(sch, machine, columns or partial(default_rotated_columns, machine=machine))
    return _register_tiled_conv(sch, conv, machine, tiles or partial(default_conv_tiles, machine=machine),
                                reduction or partial(default_grouped_reduction, machine=machine),
                                _block_groups(sch, conv))


def rotated_columns(width: int, shifts: int, lanes: int, machine: Machine) -> int:
    """Output columns of the rotated grouped conv's register tile: columns × ``shifts`` accumulators, a
    weight vector per shift and the input vector in registers. The most columns dividing ``width`` whose
    accumulators fill at most half of the machine's vector registers and whose tile fits the budget's
    registers (:func:`conv_tile_budget`); one at least: more accumulators spill (docs/schedules.md)."""
    registers = conv_tile_budget(machine, lanes).registers
    fitting = [c for c in divisors(width)
               if c * shifts <= machine.vector_registers // 2 and c * shifts + shifts + 1 <= registers]
    return max(fitting, default=1)


def default_rotated_columns(sch: s_tir.Schedule, ow, machine: Machine) -> list:
    """The split of the output width whose inner part is the rotated conv's register tile (:func:`rotated_columns`)."""
    part = sch.get(named(sch, GROUPED_ROTATED)).writes[0].source
    shifts, lanes = (int(d) for d in part.shape[-2:])
    return [None, rotated_columns(extents(sch, [ow])[0], shifts, lanes, machine)]


def _rotated_grouped(sch: s_tir.Schedule, machine: Machine, columns) -> bool:
    """The rotated grouped conv (:func:`..grouped_nchwc.rotated_grouped_conv2d_nchwc`): per tile of output
    columns (``columns(sch, ow)``, a split of the width), the shift-s partial sums of every column in
    registers, accumulated over the kernel taps (each tap loads the input vector of a column once and
    a weight vector per shift, FMAs with no zero products), then summed rotated into the output vectors
    with the epilogue; rows and channel chunks in parallel."""
    part, conv = named(sch, GROUPED_ROTATED), named(sch, GROUPED_ROTATED_SUM)
    if part is None or conv is None:
        return False
    inline_epilogue(sch, conv)
    n, oco, oh, ow, oci = sch.get_loops(conv)
    owo, owi = sch.split(ow, columns(sch, ow))
    sch.reorder(n, oh, oco, owo, owi, oci)
    # parallel first: a loop holding the partial sums' block (a reduction) cannot be made parallel after
    parallelize(sch, [n, oh, oco], math.prod(extents(sch, [n, oh, oco, owo, owi, oci])))
    sch.compute_at(part, owo, preserve_unit_loops=True)
    sch.set_scope(part, 0, "local")
    *_, cols, shift, lane, ry, rx = sch.get_loops(part)
    sch.reorder(ry, rx, cols, shift, lane)
    sch.vectorize(lane)
    sch.unroll(cols)
    sch.unroll(shift)
    init = sch.decompose_reduction(part, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(oci)
    sch.unroll(owi)
    pad = named(sch, "data_pad")
    if pad is not None:
        vectorize(sch, pad, extents(sch, sch.get_loops(pad))[-1], PAD_PARALLEL_MIN_WORK)
    done = {part, conv, init, pad}
    _inline_elementwise(sch, done)
    return _schedule_rest(sch, machine.lanes(), done=done)


def _register_tiled_conv(sch: s_tir.Schedule, conv, machine: Machine, tiles, reduction,
                         block_groups: int = 1) -> bool:
    """Register tile of output columns × output-channel vectors of one of ``block_groups`` (the outer
    part of the output-channel chunks, run in parallel with the chunks and rows); see :func:`_conv2d_nchwc`."""
    n, oco, oh, ow, oci, ico, ry, rx, ici = sch.get_loops(conv)
    groups = []
    if block_groups > 1:
        group, oco = sch.split(oco, [block_groups, None])
        groups = [group]
    taps = math.prod(extents(sch, [ry, rx]))
    outer, inner, unrolled = reduction(sch, ico, ry, rx, ici)
    if outer and fits_one_row(*extents(sch, [oh, ow, oco, oci]), machine, taps > 1):
        ow = sch.fuse(oh, ow)
        oh = sch.add_unit_loop(ow)
    elif outer and taps > 1 and (band := row_band(*extents(sch, [oh, ow, oco, oci]), machine)) > 1:
        columns = band * extents(sch, [ow])[0]
        oh, ow = sch.split(sch.fuse(oh, ow), [None, columns])
    ow_split, oco_split = tiles(sch, ow, oco, bool(outer))
    owo, owi = sch.split(ow, ow_split)
    oco_o, oco_i = sch.split(oco, oco_split)
    # a conv without row accumulation (1×1, stems) runs rows outside channel chunks: its threads split
    # the map by rows, so in a chain of them a thread reads mostly rows its own core wrote (MobileOne-S0,
    # 2 threads, A/B in one process: 1.04x; 1 thread: unchanged)
    parallel = (n, *groups, oco_o, oh) if outer else (n, oh, *groups, oco_o)
    sch.reorder(*parallel, *outer, owo, *inner, oco_i, owi, oci)
    write_back = sch.cache_write(conv, 0, "local")
    inline_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, oh if outer else owo, preserve_unit_loops=True)
    sch.vectorize(oci)
    sch.unroll(owi)
    sch.unroll(oco_i)
    sch.parallel(sch.fuse(*parallel))
    sch.vectorize(sch.get_loops(write_back)[-1])
    pad = named(sch, "data_pad")
    if pad is not None:
        vectorize(sch, pad, extents(sch, sch.get_loops(pad))[-1], PAD_PARALLEL_MIN_WORK)
    for loop in unrolled:
        sch.unroll(loop)
    init = sch.decompose_reduction(conv, (outer or inner)[0])
    sch.vectorize(sch.get_loops(init)[-1])
    done = {conv, write_back, pad, init}
    _inline_elementwise(sch, done)
    return _schedule_rest(sch, machine.lanes(), done=done)


def _inline_elementwise(sch: s_tir.Schedule, done: set) -> list:
    """Inline the root blocks not in ``done`` into their consumers (the generic rule, and a conv's epilogue
    past a change of shape: squeeze-excite's gate broadcast over the map, then a residual add and ReLU,
    is then one pass over the map, not one pass and one buffer per step; SE-ResNeXt-26d's gated maps at
    7²-56², 1 thread, loaded AVX-512 Xeon: 1.5-2.1x). A padded input stays materialized (inlined into a
    reduction it puts a branch in the inner loop), and so does a long expression loaded more than once:
    those are returned. Only into a window reduction (a pooling) is the pad inlined: its select costs less
    than a pass over the map."""
    done_names = {sch.get(b).name_hint for b in done if b is not None}
    kept = []
    for block in blocks(sch):
        if sch.get(block).name_hint in done_names or is_reduction(sch, block):
            continue
        consumers = sch.get_consumers(block)
        if any(is_reduction(sch, c) for c in consumers) \
                and not (len(consumers) == 1 and _reads_one_tensor(sch, consumers[0])):
            continue
        if _inlining_copies_too_much(sch, block):
            kept.append(block)
            continue
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:  # a block writing the function's output
            pass
    return kept


def fits_one_row(height: int, width: int, chunks: int, lanes: int, machine: Machine, taps: bool = True) -> bool:
    """Accumulate the whole map as one row when the map's accumulators fit half of L1 and either the
    width splits into no full register tiles (a prime: 7), so the partial tile comes once per map, not
    once per row (7² maps of 256-1280 channels, 1 thread: 1.05-1.2x), or the kernel has no ``taps``
    (a 1×1 conv accumulating rows over input blocks, :func:`pointwise_input_block`), so each block's
    weights are read once per map, not once per row (7² maps of 1024-2048 channels, 1 thread, loaded
    AVX-512 Xeon: 1.07-1.1x). Under the wide rule a vector of the map's row must fit its row buffer, else
    no register tile fits the row (a 13² map with a 48 KB L1: one column a tile, 3x slower)."""
    cols, k = conv_tile(width, chunks, True, lanes, machine)
    row_bytes = conv_tile_budget(machine, lanes).row_bytes
    return ((width % cols != 0 or not taps) and height * width * k * lanes * 4 <= machine.l1d_bytes // 2
            and (row_bytes is None or height * width * lanes * 4 <= row_bytes))


def row_band(height: int, width: int, chunks: int, lanes: int, machine: Machine) -> int:
    """Output rows a conv with taps accumulates as one row (1: row by row) when it accumulates rows and its map
    is not one row (:func:`fits_one_row`): each reduction step's weights (kw · lanes vectors a chunk) come into L1
    once and serve every register tile of the band, not only a row's. The most rows dividing the height whose
    register tile (:func:`conv_tile` of the band's columns) is the row's and splits the band into whole tiles (a
    partial tile inside a band is predicated on every pass) and whose accumulators fit the wide rule's row buffer
    (:func:`conv_tile_budget`); a band past that buffer ran slower. On several cores the bands leave each at
    least BAND_TASKS parallel tasks (tile channel chunks × bands), so the last round of tasks idles at most a third
    of them. Row by row under 16 registers: AVX2's 2 × 4 tile already serves each weight vector twice. NEON takes
    the wide rule's bands too. Measurements: docs/schedules.md, "Bands of rows"."""
    row_bytes = conv_tile_budget(machine, lanes).row_bytes
    if row_bytes is None:
        return 1
    cols, k = conv_tile(width, chunks, True, lanes, machine)

    def fits(rows: int) -> bool:
        tasks = chunks // k * (height // rows)
        return (rows * width % cols == 0 and rows * width * k * lanes * 4 <= row_bytes
                and conv_tile(rows * width, chunks, True, lanes, machine) == (cols, k)
                and (machine.cores == 1 or tasks >= BAND_TASKS * machine.cores))

    return max(rows for rows in divisors(height) if rows == 1 or fits(rows))


def default_depthwise_columns(sch: s_tir.Schedule, ow, machine: Machine) -> list:
    """The output width's split whose inner part is the register tile: the most columns up to MAX_REG_N,
    up to WIDE_DEPTHWISE_COLUMNS under the wide rule (:func:`conv_tile_budget`; AVX-512, Zen 4, MobileOne-S0's 3×3 depthwise convs at
    14²-112², 1 thread: 2-4 columns 1.1-1.2x faster than 7-8)."""
    lanes = extents(sch, sch.get_loops(named(sch, DEPTHWISE_NCHWC))[4:5])[0]  # (n, c, oh, ow, lane, ry, rx)
    cap = WIDE_DEPTHWISE_COLUMNS if wide_tiles(machine, lanes) else MAX_REG_N
    return [None, divisor_at_most(extents(sch, [ow])[0], cap)]


def _depthwise_nchwc(sch: s_tir.Schedule, machine: Machine, columns=None) -> bool:
    """Register tile of output columns (``columns(sch, ow)``, a split of the width; a tuner samples
    it) × one channel vector; each unrolled kernel tap loads its weight vector once for the tile.
    The padding is inlined (bounds checks on the loads, no padded copy) and rows run outside channel
    chunks, so the threads split the map by rows, as the 1×1 convs around it do: a thread reads rows
    its own core wrote (MobileOne-S0, A/B in one process: 2 threads 1.10x, 1 thread unchanged; alone,
    as fast as a padded copy made per channel chunk, which was 10-30 % faster than padding it all
    first)."""
    conv = named(sch, DEPTHWISE_NCHWC)
    if conv is None:
        return False
    work = math.prod(extents(sch, sch.get_loops(conv)))
    n, c, oh, ow, lane, ry, rx = sch.get_loops(conv)
    owo, owi = sch.split(ow, (columns or partial(default_depthwise_columns, machine=machine))(sch, ow))
    sch.reorder(n, oh, c, owo, ry, rx, owi, lane)
    write_back = sch.cache_write(conv, 0, "local")
    inline_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, owo, preserve_unit_loops=True)
    sch.vectorize(lane)
    for loop in (ry, rx, owi):
        sch.unroll(loop)
    sch.vectorize(sch.get_loops(write_back)[-1])
    pad = named(sch, "data_pad")
    if pad is not None:
        sch.compute_inline(pad)
    parallelize(sch, [n, oh, c], work)
    init = sch.decompose_reduction(conv, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    return _schedule_rest(sch, machine.lanes(), done={conv, write_back, init})


def default_winograd_tiles(sch: s_tir.Schedule, tiles, oco, _accumulate_rows: bool,
                           machine: Machine) -> tuple[list, list]:
    """The splits of the Winograd GEMMs' tile axis and output-channel chunks: :func:`conv_tile` of a
    1×1 conv over the tiles."""
    lanes = extents(sch, sch.get_loops(named(sch, WINOGRAD_GEMM))[5:6])[0]  # (e, nu, n, k, tile, lane, ...)
    cols, chunks = conv_tile(*extents(sch, [tiles, oco]), False, lanes, machine)
    return [None, cols], [None, chunks]


def _winograd_nchwc(sch: s_tir.Schedule, machine: Machine, tiles=None) -> bool:
    """Winograd F(2×2, 3×3) (:mod:`.winograd_nchwc`) in three parallel stages. Input transform: per
    4×4 input tile (padding inlined), its 16 transformed vectors, lanes vectorized. GEMMs: for each of
    the 16 positions a 1×1 conv over the tile map (``tiles(sch, tile_axis, oco)`` gives the register
    tile, as for the conv; the input channels reduced inside it). Output transform: per 2×2 output
    tile from 16 vectors, the epilogue (bias, activation, residual add) fused."""
    gemm = named(sch, WINOGRAD_GEMM)
    if gemm is None:
        return False
    pad = named(sch, "data_pad")
    if pad is not None:
        sch.compute_inline(pad)
    transform = named(sch, WINOGRAD_INPUT)
    e, nu, n, c, tile, ci = sch.get_loops(transform)
    sch.reorder(n, c, tile, e, nu, ci)
    sch.unroll(e)
    sch.unroll(nu)
    sch.vectorize(ci)
    parallelize(sch, [n, c, tile], math.prod(extents(sch, [n, c, tile, e, nu, ci])))

    e, nu, n, k, tile, ki, rc, ri = sch.get_loops(gemm)
    tile_split, k_split = (tiles or partial(default_winograd_tiles, machine=machine))(sch, tile, k, False)
    tile_o, tile_i = sch.split(tile, tile_split)
    k_o, k_i = sch.split(k, k_split)
    sch.reorder(e, nu, n, k_o, tile_o, rc, ri, k_i, tile_i, ki)
    write_back = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(write_back, tile_o, preserve_unit_loops=True)
    sch.vectorize(ki)
    sch.unroll(tile_i)
    sch.unroll(k_i)
    sch.parallel(sch.fuse(e, nu, n, k_o))
    sch.vectorize(sch.get_loops(write_back)[-1])
    init = sch.decompose_reduction(gemm, rc)
    sch.vectorize(sch.get_loops(init)[-1])

    out = named(sch, WINOGRAD_OUTPUT)
    inline_epilogue(sch, out)
    n, k, y, x, lane = sch.get_loops(out)
    y_o, y_i = sch.split(y, [None, 2])
    x_o, x_i = sch.split(x, [None, 2])
    sch.reorder(n, k, y_o, x_o, y_i, x_i, lane)
    sch.unroll(y_i)
    sch.unroll(x_i)
    sch.vectorize(lane)
    sch.parallel(sch.fuse(n, k, y_o))
    return _schedule_rest(sch, machine.lanes(), done={transform, gemm, write_back, init, out})


def schedule_winograd_nchwc(sch: s_tir.Schedule, machine: Machine, tiles) -> bool:
    """The Winograd rule with caller-chosen GEMM register tiles (the tuner's design space)."""
    return _winograd_nchwc(sch, machine, tiles)


def schedule_conv2d_nchwc(sch: s_tir.Schedule, machine: Machine, tiles, reduction) -> bool:
    """The conv rule with caller-chosen register tiles and reduction loops (the tuner's design space)."""
    return _conv2d_nchwc(sch, machine, tiles, reduction)


def schedule_grouped_conv2d_nchwc(sch: s_tir.Schedule, machine: Machine, tiles, reduction, columns) -> bool:
    """The grouped conv rule with caller-chosen register tiles and reduction loops, or columns of the rotated
    form (the tuner's design space)."""
    return _grouped_conv2d_nchwc(sch, machine, tiles, reduction, columns)


def schedule_depthwise_nchwc(sch: s_tir.Schedule, machine: Machine, columns) -> bool:
    """The depthwise rule with caller-chosen register columns (the tuner's design space)."""
    return _depthwise_nchwc(sch, machine, columns)


def _dense_packed(sch: s_tir.Schedule, machine: Machine) -> bool:
    """``x @ W`` with W in panels (:mod:`.dense_packed`): up to DENSE_ROWS rows of x × a panel's
    vectors (as many as keep PANEL_VECTORS accumulators) are the register tile, the reduction
    outside it reads the panel front to back once for those rows; panels (and row groups) in parallel."""
    dense = named(sch, DENSE_PACKED)
    if dense is None:
        return False
    width = next(int(r.source.shape[2]) for r in sch.get(dense).reads if len(r.source.shape) == 3)
    *rows, j, k = sch.get_loops(dense)
    work = math.prod(extents(sch, [*rows, j, k]))
    *outer_rows, row = rows  # the tile takes rows of the innermost dimension (a fused one would not be affine)
    row_tile = divisor_at_most(extents(sch, [row])[0], DENSE_ROWS)
    row_o, row_i = sch.split(row, [None, row_tile])
    vec = panel_vector(width, machine.lanes())
    vectors = divisor_at_most(width // vec, PANEL_VECTORS // row_tile)
    panel, vector_o, vector_i, lane = sch.split(j, [None, width // vec // vectors, vectors, vec])
    sch.reorder(*outer_rows, row_o, panel, vector_o, k, row_i, vector_i, lane)
    write_back = sch.cache_write(dense, 0, "local")
    inline_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, vector_o, preserve_unit_loops=True)
    sch.vectorize(lane)
    sch.unroll(vector_i)
    sch.unroll(row_i)
    parallelize(sch, [*outer_rows, row_o, panel], work)
    sch.vectorize(sch.get_loops(write_back)[-1])
    init = sch.decompose_reduction(dense, k)
    sch.vectorize(sch.get_loops(init)[-1])
    return _schedule_rest(sch, machine.lanes(), done={dense, write_back, init})


def _matmul(sch: s_tir.Schedule, machine: Machine) -> bool:
    """``x @ W`` with W ``(K, N)`` row-major: each thread owns a chunk of up to MATMUL_CHUNK
    outputs, kept in L1, and streams the matching part of every weight row contiguously."""
    mm = named(sch, "matmul")
    if mm is None or len(sch.get_loops(mm)) not in (3, 4):
        return False
    *batch, i, j, k = sch.get_loops(mm)
    m, n, kk = extents(sch, [i, j, k])
    chunk = divisor_at_most(n, MATMUL_CHUNK)
    jo, jc = sch.split(j, [None, chunk])
    jc_o, jv = sch.split(jc, [None, divisor_at_most(chunk, machine.lanes())])
    sch.reorder(*batch, i, jo, k, jc_o, jv)
    write_back = sch.cache_write(mm, 0, "local")
    inline_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, jo, preserve_unit_loops=True)
    sch.vectorize(jv)
    parallelize(sch, [*batch, i, jo], m * n * kk * math.prod(extents(sch, batch)))
    init = sch.decompose_reduction(mm, k)
    sch.vectorize(sch.get_loops(init)[-1])
    return _schedule_rest(sch, machine.lanes(), done={mm, write_back, init})


def _resize2d(sch: s_tir.Schedule, machine: Machine) -> bool:
    """The separable bilinear resize (:mod:`..resize`): both passes materialized (the generic rule would
    inline the row pass back into four gathers an output), each vectorized along its innermost axis
    (the output width, or the channel lane) with the outer loops parallel; producers (a layout
    transform) inlined into the row pass, elementwise consumers into the column pass."""
    rows, cols = named(sch, RESIZE_ROWS), named(sch, RESIZE_COLS)
    if rows is None or cols is None:
        return False
    names = {sch.get(rows).name_hint, sch.get(cols).name_hint}
    for block in blocks(sch):
        if sch.get(block).name_hint not in names:
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:  # a block writing the function's output
                pass
    inline_epilogue(sch, cols)
    for block in (rows, cols):
        vectorize(sch, block, machine.lanes())
    return _schedule_rest(sch, machine.lanes(), done={rows, cols})


def _generic(sch: s_tir.Schedule, machine: Machine) -> bool:
    """Producers inlined (:func:`_inline_elementwise`), except a padded input feeding a reduction other than a
    pooling window and a long expression loaded more than once (:func:`_inlining_copies_too_much`): that one
    is computed in its consumer's loop instead (:func:`_compute_at_consumer`); then the rest
    (:func:`_schedule_rest`)."""
    kept = _inline_elementwise(sch, done=set())
    _schedule_rest(sch, machine.lanes(), done=set())
    for block in reversed(kept):
        _compute_at_consumer(sch, block, machine.lanes())
    return True


def _compute_at_consumer(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Compute the elementwise ``block`` one innermost vector at a time inside its one consumer of the same shape
    (x · sigmoid(x) over a concat with a per-channel scale and shift: a vector in registers instead of a pass over
    the tensor in memory; MixNet's concat of 15-channel blocks, 1 thread: 3.7x with the vectorized channel block)."""
    consumers = sch.get_consumers(block)
    shape = [int(d) for d in sch.get(block).writes[0].source.shape]
    if len(consumers) != 1 or is_reduction(sch, consumers[0]) \
            or [int(d) for d in sch.get(consumers[0]).writes[0].source.shape] != shape:
        return
    loops = sch.get_loops(consumers[0])
    if len(loops) < 2:
        return
    try:
        sch.compute_at(block, loops[-2], preserve_unit_loops=True)
    except s_tir.ScheduleError:
        return
    inner = sch.get_loops(block)[-1]
    if extents(sch, [inner])[0] <= lanes:
        sch.vectorize(inner)


def _reads_one_tensor(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block`` reads one buffer besides what it writes (a pooling window, a mean: one compare or
    add per loaded value, no second operand a branch would delay)."""
    body = sch.get(block)
    written = {w.source.name for w in body.writes}
    return len({r.source.name for r in body.reads} - written) == 1


def _inlining_copies_too_much(sch: s_tir.Schedule, block) -> bool:
    """Inlining copies the block's expression into each load of its buffer, so n loads (by one
    consumer or several) make n copies, and a chain of such stages (a butterfly: a + b and a − b of
    the stage before, or two slices of its concat) grows as 2^stages. Keep a block materialized once
    its expression is long (as printed: this TVM has no Python TIR visitor) and its buffer is loaded
    more than once in all."""
    body = sch.get(block)
    if len(str(body.body)) <= INLINE_COPY_CHARS:
        return False
    load = re.compile(rf"(?<![\w.]){re.escape(body.writes[0].source.name)}\[")
    return sum(len(load.findall(str(sch.get(c).body))) for c in sch.get_consumers(block)) > 1


def _schedule_rest(sch: s_tir.Schedule, lanes: int, done: set) -> bool:
    """Schedule the root-level blocks not in ``done``: elementwise or reduction."""
    done_names = {sch.get(b).name_hint for b in done if b is not None}
    for block in blocks(sch):
        if sch.get(block).name_hint in done_names:
            continue
        if is_reduction(sch, block):
            _reduction(sch, block, lanes)
        else:
            vectorize(sch, block, lanes)
    return True


def _reduction(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Parallel over outer outputs; the innermost output axis vectorized below the reduction."""
    loops = sch.get_loops(block)
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    if len(kinds) != len(loops) or kinds != sorted(kinds):
        return  # loops not in the plain spatial-then-reduce order: leave it
    spatial = [l for l, kind in zip(loops, kinds) if kind == tirx.IterVar.DataPar]
    reduce = [l for l, kind in zip(loops, kinds) if kind != tirx.IterVar.DataPar]
    if not spatial or not reduce:
        return
    sizes = extents(sch, spatial)
    work = 1
    for e in extents(sch, loops):
        work *= e
    inner = None
    if sizes[-1] <= 2 * lanes or sizes[-1] % lanes == 0:
        vec = sizes[-1] if sizes[-1] <= 2 * lanes else lanes
        outer_last, inner = sch.split(spatial[-1], [None, vec])
        sch.reorder(*spatial[:-1], outer_last, *reduce, inner)
        spatial = spatial[:-1] + [outer_last]
        sch.vectorize(inner)
        write_back = sch.cache_write(block, 0, "local")  # the vector accumulator stays in registers
        sch.reverse_compute_at(write_back, outer_last, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(write_back)[-1])
    parallelize(sch, spatial, work)
    if inner is not None:
        init = sch.decompose_reduction(block, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])
