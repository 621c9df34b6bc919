"""conv2d in NCHW[x]c under the default x86 schedule, against PyTorch's conv2d.

Tolerance: max|out - ref| <= 1e-5 * max|ref| against PyTorch in float64 for the scheduled convs of CASES and BANDED
(and onnxruntime for a banded conv with its epilogue), 1e-4 against float32 PyTorch elsewhere (summation order
differs)."""

import re

import numpy as np
import pytest
import torch
import tvm
from tvm import te, topi

from reforge import backends
from reforge.topi_ext.conv2d_nchwc import conv2d_nchwc
from reforge.topi_ext.fast_math import vectorizable_math
from reforge.topi_ext.layouts import blocked_conv2d_layouts, channel_block
from reforge.machine import AVX2, AVX512
from reforge.topi_ext.schedules.cpu import default_conv_reduction, default_conv_tiles, row_band, wide_tiles
from reforge.topi_ext.schedules.default import schedule_func
from reforge.topi_ext.schedules.helpers import PAD_PARALLEL_MIN_WORK, extents


def pack_data(x, ib):
    n, c, h, w = x.shape
    return x.reshape(n, c // ib, ib, h, w).transpose(0, 1, 3, 4, 2).copy()


def pack_kernel(w, ib, ob):
    o, i, kh, kw = w.shape
    return w.reshape(o // ob, ob, i // ib, ib, kh, kw).transpose(0, 2, 4, 5, 3, 1).copy()


CASES = [  # cin, cout, size, kernel, stride, padding (t, l, b, r), dilation
    (16, 32, 14, 3, 1, (1, 1, 1, 1), 1),
    (3, 16, 15, 7, 2, (3, 3, 3, 3), 1),
    (8, 24, 9, 1, 1, (0, 0, 0, 0), 1),
    (12, 20, 11, 3, 2, (0, 1, 1, 0), 1),  # asymmetric padding
    (8, 8, 13, 3, 1, (2, 2, 2, 2), 2),  # dilation
    (6, 10, 7, 5, 1, (2, 2, 2, 2), 1),  # channels below a vector, odd blocks
    (32, 64, 7, 3, 1, (1, 1, 1, 1), 1),  # a prime width: the 7x7 map accumulated as one row of 2-column tiles
    (16, 32, 13, 3, 2, (1, 1, 1, 1), 1),  # strided to a prime width
    (16, 32, 13, 3, 1, (1, 1, 1, 1), 1),  # a map too large for one row: rows of 2-column tiles, the last partial
    (32, 32, 7, 1, 1, (0, 0, 0, 0), 1),  # 1x1 at a prime width: tiles of 4 columns, the last one partial
    (48, 16, 56, 3, 1, (1, 1, 1, 1), 1),  # padding of 161K elements: copied in parallel
    # 1x1 convs whose kernel exceeds half of L2: rows accumulated over blocks of input chunks
    (1024, 512, 7, 1, 1, (0, 0, 0, 0), 1),  # the 7² map as one row
    (1024, 512, 14, 1, 2, (0, 0, 0, 0), 1),  # strided
    (2048, 272, 9, 1, 1, (0, 0, 0, 0), 1),  # an odd number of output chunks, a map with a partial tile
    (400, 400, 7, 1, 1, (0, 0, 0, 0), 1),  # 25 chunks; with L1 under 50 KB rows over blocks, the map as one row
    (32, 64, 17, 1, 1, (0, 0, 0, 0), 1),  # 17 columns: a partial tile (6 x 2 with 16 lanes)
    (16, 32, 35, 3, 2, (0, 0, 0, 0), 1),  # strided to 17 columns without padding
    (256, 64, 7, 1, 1, (0, 0, 0, 0), 1),  # 1x1 whose tile weights fit L1: the whole reduction in the tile
    (512, 48, 8, 1, 1, (0, 0, 0, 0), 1),  # tile weights past L1 over an 8² map: input-chunk blocks, the map one row
]
BANDED = [  # taps, rows accumulated: under the wide rule in bands of rows (row_band)
    (256, 256, 13, 3, 2, (1, 1, 1, 1), 1),  # strided to a 7² map: the map one band of 7 × 2 tiles
    (192, 320, 17, 3, 2, (0, 0, 0, 0), 1),  # Inception-v3's Mixed_7a: 17² to 8², no padding
    (128, 128, 27, 3, 2, (1, 1, 1, 1), 1),  # an odd input strided to 14²: bands of 2 rows
    (96, 192, 15, 3, 2, (0, 1, 1, 0), 1),  # asymmetric padding to 7²
    (64, 96, 14, 5, 1, (2, 2, 2, 2), 1),  # stride 1, 5 × 5
    (64, 64, 15, 3, 1, (2, 2, 2, 2), 2),  # dilated: 15² in bands of 3 rows of 5 × 2 tiles
]
POINTWISE_BLOCKED = {case for case in CASES if case[0] >= 1024}


@pytest.mark.parametrize("cin, cout, size, k, stride, pad, dil", CASES + BANDED)
def test_scheduled_conv2d_nchwc_matches_torch(cin, cout, size, k, stride, pad, dil):
    """Against PyTorch's conv2d in float64: max|out - ref| <= 1e-5 · max|ref|."""
    target = backends.get("x86")
    lanes = target.vector_lanes()
    ib, ob = channel_block(cin, lanes), channel_block(cout, lanes)
    rng = np.random.default_rng(cin * 100 + cout)
    x = rng.standard_normal((1, cin, size, size)).astype("float32")
    w = rng.standard_normal((cout, cin, k, k)).astype("float32")
    data = te.placeholder((1, cin // ib, size, size, ib), name="data")
    kernel = te.placeholder((cout // ob, cin // ib, k, k, ib, ob), name="kernel")
    out = conv2d_nchwc(data, kernel, (stride, stride), pad, (dil, dil), "float32")
    func, rule = schedule_func(te.create_prim_func([data, kernel, out]), target.machine)
    assert rule == "conv2d_nchwc"
    sch = tvm.s_tir.Schedule(te.create_prim_func([data, kernel, out]))
    _n, _oco, _oh, _ow, _oci, ico, ry, rx, ici = sch.get_loops(sch.get_sblock("conv2d_nchwc"))
    outer, _inner, _unrolled = default_conv_reduction(sch, ico, ry, rx, ici, target.machine)
    if (cin, cout, size, k, stride, pad, dil) in POINTWISE_BLOCKED:  # the path these cases are here for
        assert len(outer) == 1 and extents(sch, outer)[0] > 1
    _, chunks, height, width, _ = (int(d) for d in out.shape)
    if (cin, cout, size, k, stride, pad, dil) in BANDED and wide_tiles(target.machine, lanes):
        assert row_band(height, width, chunks, lanes, target.machine) > 1
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    lib["main"](tvm.runtime.tensor(pack_data(x, ib)), tvm.runtime.tensor(pack_kernel(w, ib, ob)), result)
    t, l, b, r = pad
    xp = torch.nn.functional.pad(torch.from_numpy(x).double(), (l, r, t, b))
    ref = torch.nn.functional.conv2d(xp, torch.from_numpy(w).double(), stride=stride, dilation=dil).numpy()
    got = result.numpy().transpose(0, 1, 4, 2, 3).reshape(ref.shape)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_a_banded_conv_with_its_epilogue_matches_onnxruntime():
    """Conv(256 → 256, 3×3, stride 2, bias) → ReLU at 12² → 6²: built by reforge, its bias and ReLU applied to
    the band's accumulators (the 6² map one band under the wide rule) as they are stored; against onnxruntime,
    max|out - ref| <= 1e-5 · max|ref|."""
    import reforge
    from tests.helpers import conv_relu_model, onnxruntime

    model = conv_relu_model(256, 256, 2, 3)
    x = np.random.default_rng(4).standard_normal((1, 256, 12, 12)).astype("float32")
    (got,) = reforge.compile(model, target="x86").run({"x": x}).values()
    ref = onnxruntime(model, x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("cin, size", [(48, 56), (96, 28), (8, 130)])
def test_conv_padding_is_parallel_from_its_threshold(cin, size):
    """The input padding (a copy) runs in parallel from PAD_PARALLEL_MIN_WORK elements on."""
    data = te.placeholder((1, cin // 8, size, size, 8), name="data")
    kernel = te.placeholder((2, cin // 8, 3, 3, 8, 8), name="kernel")
    func, _ = schedule_func(te.create_prim_func([data, kernel, conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1),
                                                                            "float32")]), AVX2)
    pad_loops = func.script().split('T.sblock("data_pad")')[0].rsplit("T.sblock_alloc_buffer", 1)[1]
    assert ("T.parallel" in pad_loops) == (cin * (size + 2) ** 2 >= PAD_PARALLEL_MIN_WORK)


@pytest.mark.parametrize("cin, cout, size, k, crop", [
    (16, 32, 7, 1, 5),  # 1x1, partial 4-column tiles
    (16, 32, 13, 3, 9),  # rows of 2-column tiles, the last partial
    (8, 64, 14, 1, 11),
])
def test_a_shifted_crop_stays_out_of_the_tiles(cin, cout, size, k, crop):
    """``out[h, w] = 2 · conv[h + 1, w]`` on a crop: inlined into the register tiles it was written at
    the conv's indices, out of bounds (wrong values, then a crash); it must stay a block of its own."""
    target = backends.get("x86")
    data = te.placeholder((1, cin // 8, size, size, 8), name="data")
    kernel = te.placeholder((cout // 8, cin // 8, k, k, 8, 8), name="kernel")
    conv = conv2d_nchwc(data, kernel, (1, 1), (k // 2,) * 4, (1, 1), "float32")
    out = te.compute((1, cout // 8, crop, crop, 8), lambda n, c, h, w, lane: conv[n, c, h + 1, w, lane] * 2.0)
    func, rule = schedule_func(te.create_prim_func([data, kernel, out]), AVX2)
    assert rule == "conv2d_nchwc"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cin, size, size)).astype("float32")
    w = rng.standard_normal((cout, cin, k, k)).astype("float32")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    lib["main"](tvm.runtime.tensor(pack_data(x, 8)), tvm.runtime.tensor(pack_kernel(w, 8, 8)), result)
    full = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=k // 2).numpy()
    ref = 2 * full[:, :, 1:crop + 1, :crop]
    got = result.numpy().transpose(0, 1, 4, 2, 3).reshape(ref.shape)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


EPILOGUES = {  # activations after the conv, their PyTorch twins, whether they join the tile
    "hardswish": (lambda y: y * topi.minimum(topi.maximum(y + 3.0, 0.0), 6.0) / 6.0, torch.nn.functional.hardswish,
                  True),
    "squared-relu": (lambda y: y * topi.maximum(y, 0.0), lambda y: y * torch.relu(y), True),
    "silu": (lambda y: y * topi.sigmoid(y), torch.nn.functional.silu, True),  # exp as arithmetic (fast_math)
    "gelu": (lambda y: y * (topi.erf(y / np.sqrt(2.0)) + 1.0) * 0.5, torch.nn.functional.gelu, True),
    "sigmoid": (topi.sigmoid, torch.sigmoid, True),
    "gelu-libm": (lambda y: y * (topi.erf(y / np.sqrt(2.0)) + 1.0) * 0.5, torch.nn.functional.gelu, False),
}


@pytest.mark.parametrize("name", EPILOGUES)
def test_an_epilogue_reading_the_conv_twice(name):
    """x · f(x) after conv + bias: arithmetic steps (hardswish, and exp / erf made arithmetic by fast_math as the
    build does) are inlined into the write-back of the register tile (no block of their own, which would be a
    pass over the output in memory) and vectorized there; a math-library call (``-libm``: erf left as a call)
    keeps its own passes; all match PyTorch."""
    target, (epilogue, twin, in_tile) = backends.get("x86"), EPILOGUES[name]
    data = te.placeholder((1, 2, 14, 14, 8), name="data")
    kernel = te.placeholder((4, 2, 3, 3, 8, 8), name="kernel")
    bias = te.placeholder((1, 4, 1, 1, 8), name="bias")
    out = epilogue(conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1), "float32") + bias)
    func = te.create_prim_func([data, kernel, bias, out])
    func, rule = schedule_func(func if name.endswith("-libm") else vectorizable_math(func), AVX2)
    assert rule == "conv2d_nchwc"
    blocks = set(re.findall(r'T\.sblock\("(\w+)"\)', func.script()))
    tile = {"root", "data_pad", "conv2d_nchwc_init", "conv2d_nchwc_update", "conv2d_nchwc_local"}
    assert (blocks == tile) == in_tile, blocks
    if in_tile:  # the write-back (with the activation) runs over the channel lane as a vector
        assert re.search(r"for \w+ in T\.vectorized\(8\):\n.*T\.sblock\(\"conv2d_nchwc_local\"\)", func.script())
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 16, 14, 14)).astype("float32"), rng.standard_normal((32, 16, 3, 3)).astype("float32")
    b = rng.standard_normal(32).astype("float32")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    lib["main"](tvm.runtime.tensor(pack_data(x, 8)), tvm.runtime.tensor(pack_kernel(w, 8, 8)),
                tvm.runtime.tensor(b.reshape(1, 4, 8)[:, :, None, None, :].copy()), result)
    ref = twin(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                          padding=1)).numpy()
    got = result.numpy().transpose(0, 1, 4, 2, 3).reshape(ref.shape)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("cin, channels, size, k, rows, tile, lanes", [
    (64, 64, 56, 3, True, (2, 4), 8), (512, 512, 7, 3, True, (2, 4), 8),  # 7 has no 2-8 divisor: a partial last tile
    (128, 128, 28, 1, False, (4, 2), 8), (256, 256, 14, 1, False, (2, 4), 8),
    (512, 512, 7, 1, True, (2, 4), 8),  # a 1x1 whose weights a tile exceed half of L1: input-chunk blocks, rows
    (32, 16, 28, 3, True, (4, 2), 8),  # two channel vectors: the columns make the 8 accumulators
    (8, 64, 56, 3, False, (4, 2), 8),  # few input channels: the weights stay in L1, no row buffer
    # AVX-512: up to 14 accumulators of at most 2 vectors
    (64, 64, 56, 3, True, (7, 2), 16), (512, 512, 7, 3, True, (7, 2), 16), (128, 128, 28, 1, False, (7, 2), 16),
    (64, 64, 112, 3, True, (14, 1), 16),  # a row buffer of 2 vectors x 112 columns would exceed 8 KB
    (48, 48, 56, 3, True, (14, 1), 16),  # 3 channel vectors: one per tile
])
def test_default_register_tile(cin, channels, size, k, rows, tile, lanes):
    """Kernels with taps and many input channels accumulate rows and take the most channel vectors;
    1x1 convs and stems the most columns. AVX-512 (16 lanes): the most columns, up to 2 vectors."""
    data = te.placeholder((1, cin // lanes, size, size, lanes), name="data")
    kernel = te.placeholder((channels // lanes, cin // lanes, k, k, lanes, lanes), name="kernel")
    out = conv2d_nchwc(data, kernel, (1, 1), (k // 2,) * 4, (1, 1), "float32")
    sch = tvm.s_tir.Schedule(te.create_prim_func([data, kernel, out]))
    _n, oco, _oh, ow, _oci, ico, ry, rx, ici = sch.get_loops(sch.get_sblock("conv2d_nchwc"))
    machine = {8: AVX2, 16: AVX512}[lanes]
    outer, _inner, _unrolled = default_conv_reduction(sch, ico, ry, rx, ici, machine)
    assert bool(outer) == rows
    (_, cols), (_, chunks) = default_conv_tiles(sch, ow, oco, rows, machine)
    assert (cols, chunks) == tile


@pytest.mark.parametrize("channels, lanes, block", [(64, 8, 8), (64, 16, 16), (3, 8, 3), (24, 16, 12), (7, 8, 7)])
def test_channel_block(channels, lanes, block):
    assert channel_block(channels, lanes) == block


def test_layout_policy_blocks_by_groups_and_skips_narrow_convs():
    """groups 1 blocked; depthwise and other grouped convs have their own blocked layouts
    (test_depthwise_nchwc.py, test_grouped_nchwc.py); narrow outputs stay NCHW."""
    from tvm import relax

    choose = blocked_conv2d_layouts(8)
    x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "float32"))

    def conv(cout, groups=1):
        w = relax.const(np.zeros((cout, 16 // groups, 3, 3), "float32"))
        return relax.op.nn.conv2d(x, w, padding=1, groups=groups)

    assert choose(conv(32)) == {"relax.nn.conv2d": ["NCHW8c", "OIHW8i8o", "NCHW8c"]}
    assert choose(conv(16, groups=16)) == {"relax.nn.conv2d": ["NCHW8c", "OIHW1i8o", "NCHW8c"]}  # depthwise
    assert choose(conv(16, groups=4)) == {"relax.nn.conv2d": ["NCHW8c", "OIHW4i8o", "NCHW8c"]}  # 2 groups a block
    assert choose(conv(3)) == {"relax.nn.conv2d": ["NCHW", "OIHW"]}  # a 3-lane output block does not pay
    assert choose(relax.op.nn.relu(x)) == {}


def test_a_gate_broadcast_over_the_map_is_one_pass():
    """Squeeze-excite's gate: a 1x1 conv over the pooled vector, its sigmoid joining the tile; then the gate
    multiplies a map, a residual is added and ReLU applied: those steps past the change of shape are one
    block (one pass over the map, no intermediate buffer), and all match PyTorch (1e-4 of the largest)."""
    target = backends.get("x86")
    data = te.placeholder((1, 2, 1, 1, 8), name="pooled")
    kernel = te.placeholder((4, 2, 1, 1, 8, 8), name="kernel")
    bias = te.placeholder((1, 4, 1, 1, 8), name="bias")
    fmap = te.placeholder((1, 4, 9, 9, 8), name="fmap")
    residual = te.placeholder((1, 4, 9, 9, 8), name="residual")
    gate = topi.sigmoid(conv2d_nchwc(data, kernel, (1, 1), (0, 0, 0, 0), (1, 1), "float32") + bias)
    out = topi.nn.relu(fmap * gate + residual)
    func, rule = schedule_func(vectorizable_math(te.create_prim_func([data, kernel, bias, fmap, residual, out])),
                               target.machine)
    assert rule == "conv2d_nchwc"
    blocks = set(re.findall(r'T\.sblock\("(\w+)"\)', func.script()))
    assert len(blocks - {"root", "conv2d_nchwc_init", "conv2d_nchwc_update", "conv2d_nchwc_local"}) == 1, blocks
    assert func.script().count("T.sblock_alloc_buffer") == 2  # the gate and the tile's accumulators
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 16, 1, 1)).astype("float32"), rng.standard_normal((32, 16, 1, 1)).astype("float32")
    b = rng.standard_normal(32).astype("float32")
    m, r = (rng.standard_normal((1, 32, 9, 9)).astype("float32") for _ in range(2))
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    lib["main"](tvm.runtime.tensor(pack_data(x, 8)), tvm.runtime.tensor(pack_kernel(w, 8, 8)),
                tvm.runtime.tensor(b.reshape(1, 4, 8)[:, :, None, None, :].copy()),
                tvm.runtime.tensor(pack_data(m, 8)), tvm.runtime.tensor(pack_data(r, 8)), result)
    g = torch.sigmoid(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)))
    ref = torch.relu(torch.from_numpy(m) * g + torch.from_numpy(r)).numpy()
    got = result.numpy().transpose(0, 1, 4, 2, 3).reshape(ref.shape)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
