"""Item 8 of issue 19: the CPU rules read the machine model and give exactly the choices they gave
when they read ``lanes`` (the tables below were computed by the code before that change, with 8 lanes
for AVX2 and 16 for AVX-512), and NEON gets its own register file; the bit-serial and FFT-mix register
tiles keep AVX2's choices (the FFT mix's grows to 8 rows with a 32-register file).

Each conv row: (machine, (cin, cout, size, kernel, stride, pad), rows accumulated, map as one row,
the split factors of the scheduled function in order: a 1×1 conv's input-chunk block or a band's columns where it
has one, columns, channel vectors, then the padding's vector); each depthwise row: (machine, (channels, size, kernel,
stride, pad), its split factors)."""

import re

import pytest
from tvm import s_tir, te

from reforge.machine import AVX2, AVX512, NEON, SSE
from reforge.topi_ext.conv2d_nchwc import BLOCK, conv2d_nchwc
from reforge.topi_ext.depthwise_nchwc import depthwise_conv2d_nchwc
from reforge.topi_ext.layouts import channel_block
from reforge.topi_ext.schedules.cpu import conv_tile, conv_tile_budget, default_conv_reduction, fits_one_row
from reforge.topi_ext.schedules.default import default_schedule
from reforge.topi_ext.schedules.bitserial import accumulator_registers, conv_tiles
from reforge.topi_ext.schedules.fft import mix_rows
from reforge.topi_ext.schedules.helpers import divisor_at_most, extents

CONVS = [
    (AVX2, (3, 64, 224, 7, 2, 3), False, False, (4, 2, 3)),
    (AVX2, (3, 32, 112, 3, 2, 1), False, False, (4, 2, 3)),
    (AVX2, (64, 64, 56, 3, 1, 1), True, False, (2, 4, 8)),
    (AVX2, (64, 128, 56, 3, 2, 1), True, False, (2, 4, 8)),
    (AVX2, (128, 128, 28, 3, 1, 1), True, False, (2, 4, 8)),
    (AVX2, (256, 256, 14, 3, 1, 1), True, False, (2, 4, 8)),
    (AVX2, (512, 512, 7, 3, 1, 1), True, True, (2, 4, 8)),
    (AVX2, (64, 256, 56, 1, 1, 0), False, False, (4, 2)),
    (AVX2, (256, 64, 56, 1, 1, 0), False, False, (4, 2)),
    (AVX2, (512, 2048, 7, 1, 1, 0), True, True, (16, 2, 4)),  # blocks of 16 input chunks over the 7² map
    (AVX2, (32, 64, 112, 3, 1, 1), True, False, (2, 4, 8)),
    (AVX2, (16, 32, 13, 3, 1, 1), False, False, (4, 2, 8)),
    (AVX2, (24, 40, 28, 1, 1, 0), False, False, (8, 1)),
    (AVX2, (8, 24, 9, 1, 1, 0), False, False, (8, 1)),
    (AVX2, (48, 96, 7, 3, 1, 1), True, True, (2, 4, 8)),
    (AVX2, (96, 96, 14, 1, 1, 0), False, False, (2, 4)),
    (AVX512, (3, 64, 224, 7, 2, 3), True, False, (14, 1, 3)),
    (AVX512, (3, 32, 112, 3, 2, 1), False, False, (7, 2, 3)),
    (AVX512, (64, 64, 56, 3, 1, 1), True, False, (7, 2, 16)),
    # a conv with taps accumulating rows under the wide rule takes bands of rows within its row buffer (row_band):
    # the band's columns, then the tile (ResNet-50's strided 3×3 convs, 1 thread, loaded AVX-512 Xeon: 1.02-1.17x)
    (AVX512, (64, 128, 56, 3, 2, 1), True, False, (56, 7, 2, 16)),
    (AVX512, (128, 128, 28, 3, 1, 1), True, False, (56, 7, 2, 16)),
    (AVX512, (256, 256, 14, 3, 1, 1), True, False, (28, 7, 2, 16)),
    (AVX512, (512, 512, 7, 3, 1, 1), True, False, (49, 7, 2, 16)),
    (AVX512, (64, 256, 56, 1, 1, 0), False, False, (7, 2)),
    (AVX512, (256, 64, 56, 1, 1, 0), False, False, (7, 2)),
    # a 1×1 conv whose tile's weights exceed L1 and whose kernel exceeds half of L2 (or map fits one row) accumulates rows over
    # blocks of 4 input chunks (weights in L1 for the row), its 7² map as one row (ResNeXt-50's 1×1 convs
    # at 14² and 7², 1 thread, loaded AVX-512 Xeon: 1.25-1.7x; AVX2 code 1.2-1.5x); with the kernel within
    # L2 (28²) the whole reduction stays in the tile
    (AVX512, (512, 2048, 7, 1, 1, 0), True, True, (4, 7, 2)),
    (AVX512, (1024, 512, 14, 1, 1, 0), True, False, (4, 7, 2)),
    (AVX512, (512, 256, 28, 1, 1, 0), False, False, (7, 2)),
    (AVX512, (400, 400, 7, 1, 1, 0), True, True, (1, 10, 1)),  # kernel within L2, the map one row (RegNetX: 1.11x);
    # 10 columns: one past the 49 (the fewest)
    (AVX2, (1024, 512, 14, 1, 1, 0), True, False, (16, 2, 4)),
    (AVX2, (512, 256, 28, 1, 1, 0), False, False, (4, 2)),
    (AVX512, (32, 64, 112, 3, 1, 1), True, False, (14, 1, 16)),
    (AVX512, (16, 32, 13, 3, 1, 1), True, False, (7, 2, 16)),  # 13 x 1 broadcast an input per FMA: 7 x 2, one past
    (AVX512, (24, 40, 28, 1, 1, 0), False, False, (4, 2)),
    (AVX512, (8, 24, 9, 1, 1, 0), False, False, (4, 2)),
    (AVX512, (48, 96, 7, 3, 1, 1), True, False, (49, 7, 2, 16)),
    (AVX512.with_(cores=2), (48, 96, 7, 3, 1, 1), True, False, (7, 2, 16)),  # 3 tasks for 2 cores: row by row
    (AVX512, (288, 384, 35, 3, 2, 0), True, False, (6, 2)),  # 17 columns: no band splits into whole 6 x 2 tiles
    (NEON, (256, 256, 14, 3, 1, 1), True, False, (196, 7, 2, 4)),  # 4-lane rows are short: the 14² map one band
    (NEON, (128, 128, 56, 3, 2, 1), True, False, (196, 7, 2, 4)),  # strided to 28²: bands of 7 rows
    (AVX512, (96, 96, 14, 1, 1, 0), False, False, (7, 2)),
]
DEPTHWISE = [
    (AVX2, (32, 112, 3, 1, 1), (8,)),
    (AVX2, (128, 14, 3, 1, 1), (7,)),
    (AVX2, (576, 7, 3, 1, 1), (7,)),
    (AVX2, (48, 28, 5, 2, 2), (7,)),
    (AVX512, (32, 112, 3, 1, 1), (4,)),
    (AVX512, (128, 14, 3, 1, 1), (2,)),
    (AVX512, (576, 7, 3, 1, 1), (1,)),
    (AVX512, (48, 28, 5, 2, 2), (2,)),
]
TILES = {  # (lanes, rows accumulated): per width 7, 13, 14, 56, 112 the tile for 1, 2, 4, 8 channel chunks
    (8, False): ["7x1 4x2 4x2 4x2", "8x1 4x2 4x2 4x2", "8x1 4x2 2x4 2x4", "8x1 4x2 4x2 4x2", "8x1 4x2 4x2 4x2"],
    (8, True): ["7x1 4x2 2x4 2x4", "8x1 4x2 2x4 2x4", "8x1 4x2 2x4 2x4", "8x1 4x2 2x4 2x4", "8x1 4x2 2x4 2x4"],
    (16, False): ["7x1 7x2 7x2 7x2", "13x1 7x2 7x2 7x2", "14x1 7x2 7x2 7x2", "14x1 7x2 7x2 7x2", "14x1 7x2 7x2 7x2"],
    (16, True): ["7x1 7x2 7x2 7x2", "13x1 7x2 7x2 7x2", "14x1 7x2 7x2 7x2", "14x1 7x2 7x2 7x2", "14x1 14x1 14x1 14x1"],
}


def _conv(cin, cout, size, k, stride, pad, lanes):
    ib, ob = channel_block(cin, lanes), channel_block(cout, lanes)
    data = te.placeholder((1, cin // ib, size, size, ib), name="data")
    kernel = te.placeholder((cout // ob, cin // ib, k, k, ib, ob), name="kernel")
    return te.create_prim_func([data, kernel, conv2d_nchwc(data, kernel, (stride, stride), (pad,) * 4, (1, 1),
                                                           "float32")])


def _depthwise(c, size, k, stride, pad, lanes):
    b = channel_block(c, lanes)
    data = te.placeholder((1, c // b, size, size, b), name="data")
    kernel = te.placeholder((c // b, 1, k, k, 1, b), name="kernel")
    return te.create_prim_func([data, kernel, depthwise_conv2d_nchwc(data, kernel, (stride, stride), (pad,) * 4,
                                                                     (1, 1), "float32")])


def _splits(sch) -> tuple[int, ...]:
    return tuple(int(f.split(",")[-1]) for f in re.findall(r"factors=\[([^\]]*)\]", str(sch.trace)))


@pytest.mark.parametrize("machine, shape, rows, one_row, splits", CONVS)
def test_conv_choices_are_todays(machine, shape, rows, one_row, splits):
    func = _conv(*shape, machine.lanes())
    sch = s_tir.Schedule(func)
    _n, oco, oh, ow, oci, ico, ry, rx, ici = sch.get_loops(sch.get_sblock(BLOCK))
    assert bool(default_conv_reduction(sch, ico, ry, rx, ici, machine)[0]) == rows
    assert (rows and fits_one_row(*extents(sch, [oh, ow, oco, oci]), machine, shape[3] > 1)) == one_row
    scheduled, rule = default_schedule(func, machine)
    assert rule == "conv2d_nchwc"
    assert _splits(scheduled) == splits


@pytest.mark.parametrize("machine, shape, splits", DEPTHWISE)
def test_depthwise_choices_are_todays(machine, shape, splits):
    scheduled, rule = default_schedule(_depthwise(*shape, machine.lanes()), machine)
    assert rule == "depthwise_nchwc"
    assert _splits(scheduled) == splits


@pytest.mark.parametrize("lanes, rows", sorted(TILES))
def test_register_tiles_are_todays(lanes, rows):
    machine = {8: AVX2, 16: AVX512}[lanes]
    got = [tuple(conv_tile(w, ch, rows, lanes, machine) for ch in (1, 2, 4, 8)) for w in (7, 13, 14, 56, 112)]
    want = [tuple(tuple(int(v) for v in t.split("x")) for t in row.split()) for row in TILES[(lanes, rows)]]
    assert got == want
    if lanes == 8:  # an 8-lane channel block on AVX-512 keeps AVX2's rule (LLVM holds its tile in ymm)
        assert [tuple(conv_tile(w, ch, rows, 8, AVX512) for ch in (1, 2, 4, 8)) for w in (7, 13, 14, 56, 112)] == got


def test_the_budget_reads_the_machine():
    """AVX2: 15 of 16 registers, 8 accumulators (2 FMA pipes x 4 cycles); AVX-512 and NEON (32 registers
    their tile's vectors fill): 31, up to 14 accumulators of at most 2 vectors; SSE (one FMA pipe): 4."""
    assert (conv_tile_budget(AVX2, 8).registers, conv_tile_budget(AVX2, 8).min_acc,
            conv_tile_budget(AVX2, 8).max_acc, conv_tile_budget(AVX2, 8).wide) == (15, 8, 8, False)
    for machine in (AVX512, NEON):
        budget = conv_tile_budget(machine, machine.lanes())
        assert (budget.registers, budget.min_acc, budget.max_acc, budget.max_chunks) == (31, 8, 14, 2)
    assert conv_tile_budget(SSE, 4).min_acc == 4
    assert conv_tile(56, 8, False, 4, NEON) == (7, 2)  # 14 accumulators: with 16 registers it was 4 x 2
    assert conv_tile(56, 8, False, 4, AVX2) == (4, 2)


def test_a_wide_partial_tile_has_the_fewest_predicated_columns():
    """A width with no divisor tile (a prime: 17, 109, 149) takes, under the wide rule, the partial tile whose
    last step has the fewest columns past the width: LLVM keeps a predicated column's accumulators in memory
    when it does not unswitch the tile (Inception-v3's 17-wide 1x1 and 1x7 convs: 6 x 2 ran 2-3x faster than
    7 x 2, whose last tile has 4 of 7 columns past the width). The 16-register rule keeps its choice."""
    assert conv_tile(17, 12, False, 16, AVX512) == (6, 2)  # 7 x 2 leaves 4 columns past 17, 6 x 2 one
    assert conv_tile(17, 12, True, 16, AVX512) == (6, 2)
    assert conv_tile(149, 2, False, 16, AVX512) == (6, 2)
    assert conv_tile(109, 6, False, 16, AVX512) == (5, 2)
    assert conv_tile(17, 24, False, 8, AVX2) == (4, 2)


@pytest.mark.parametrize("lanes, planes", [(4, 1), (4, 2), (8, 1), (8, 3)])
def test_bitserial_tiles_are_todays_on_avx2_and_follow_the_registers(lanes, planes):
    """AVX2, AVX-512 and NEON keep 8 accumulator registers (the tiles the lanes-based rule gave: enough
    chains for two pipes of latency 4); SSE's one pipe needs 4, half the columns."""
    def before(ow, oc):  # the rule before it read the machine: 8 accumulators
        oc_tile = divisor_at_most(oc, max(lanes, 4 * lanes // planes))
        return divisor_at_most(ow, max(1, 8 // (-(-oc_tile // lanes) * planes))), oc_tile

    shapes = [(ow, oc) for ow in (7, 14, 28, 56) for oc in (32, 64, 128, 256)]
    for machine in (AVX2, AVX512, NEON):
        assert accumulator_registers(machine) == 8
        assert [conv_tiles(ow, oc, lanes, planes, accumulator_registers(machine)) for ow, oc in shapes] == \
            [before(ow, oc) for ow, oc in shapes]
    assert conv_tiles(56, 64, 8, 1, accumulator_registers(SSE)) == (1, 32)  # 4 channel vectors x 1 column


def test_fft_mix_rows_follow_the_registers():
    """AVX2 keeps its 6 rows (12 accumulators of a two-vector strip); 32 registers take the 8 rows whose
    accumulators hide the latency of two FMA pipes; SSE's one pipe 4."""
    assert (mix_rows(AVX2), mix_rows(AVX512), mix_rows(NEON), mix_rows(SSE)) == (6, 8, 8, 4)
