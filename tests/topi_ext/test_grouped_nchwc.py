"""Grouped conv2d (1 < groups < channels) in NCHW[x]c: the compute under its default x86 schedule
against PyTorch, for the block groupings the layout policy picks with 8 lanes (AVX2) and 16 lanes
(AVX-512), and the rotated form of groups narrower than the block (widths 2, 4, 8); the policy
itself and which convs take the rotated form; and ResNeXt bottlenecks and a RegNet X block through
reforge.compile against onnxruntime, with the grouped conv scheduled by its rule and no layout
transforms around it.

Tolerance: max|out - ref| <= 1e-4 * max|ref| (fp32; the sums in another order); the rotated form
alone 1e-5 (nine taps and g shifts a sum)."""

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tvm
from torch import nn
from tvm import relax, te, topi

import reforge
from reforge import backends
from reforge.topi_ext.conv2d_nchwc import legalize_conv2d
from reforge.topi_ext.grouped_nchwc import (ROTATED, block_diagonal_kernel, grouped_conv2d_nchwc,
                                            rotated_group_width, rotated_grouped_conv2d_nchwc, rotated_kernel)
from reforge.topi_ext.layouts import blocked_conv2d_layouts, grouped_blocks
from reforge.machine import AVX2, AVX512
from reforge.topi_ext.schedules.cpu import default_conv_tiles, default_grouped_reduction, rotated_columns
from reforge.topi_ext.schedules.default import schedule_func

from tests.zoo import randomize_batchnorm

RTOL = 1e-4
ROTATED_RTOL = 1e-5
TARGET = backends.get("x86")


def pack_data(x: np.ndarray, b: int) -> np.ndarray:
    """NCHW -> NCHW[b]c."""
    n, c, h, w = x.shape
    return x.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2).copy()


def pack_kernel(w: np.ndarray, ib: int, ob: int) -> np.ndarray:
    """(O, I/groups, kh, kw) -> OIHW[ib]i[ob]o."""
    o, i, kh, kw = w.shape
    return w.reshape(o // ob, ob, i // ib, ib, kh, kw).transpose(0, 2, 4, 5, 3, 1).copy()


def run(func: tvm.tirx.PrimFunc, arrays: list[np.ndarray], out_shape) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET.tvm_target)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out_shape], "float32"))
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], result)
    return result.numpy()


def block_group_kernel(w: np.ndarray, groups: int, ib: int, ki: int, ob: int) -> np.ndarray:
    """The kernel the compute takes: ``w`` packed in OIHW[ki]i[ob]o, through block_diagonal_kernel
    where the policy's kernel block is the group's width (ki != ib)."""
    packed = pack_kernel(w, ki, ob)
    if ki == ib:
        return packed
    kernel = te.placeholder(packed.shape, name="kernel")
    expanded = block_diagonal_kernel(kernel, groups, ib)
    return run(te.create_prim_func([kernel, expanded]), [packed], expanded.shape)


CASES = [  # in, out, groups, size, kernel, stride, padding (t, l, b, r)
    (48, 48, 2, 14, 3, 1, (1, 1, 1, 1)),  # width 24: 16 lanes -> block groups of 2 groups in 3 chunks
    (64, 64, 4, 13, 3, 2, (1, 1, 1, 1)),  # width 16, strided
    (64, 64, 8, 12, 3, 1, (1, 1, 1, 1)),  # width 8: 16 lanes -> 2 groups a block
    (64, 64, 16, 11, 3, 1, (0, 1, 1, 0)),  # width 4: 8 lanes -> 2, 16 lanes -> 4 groups a block; asymmetric pad
    (128, 128, 32, 9, 3, 2, (1, 1, 1, 1)),  # ResNeXt's 32 groups of 4, strided
    (256, 256, 32, 7, 3, 1, (1, 1, 1, 1)),  # 32 groups of 8, a prime width
    (64, 64, 2, 10, 3, 1, (0, 0, 0, 0)),  # 32 a group: 2 chunks of 16 in and out per group, no padding
    (96, 96, 4, 9, 1, 1, (0, 0, 0, 0)),  # 1x1, width 24
    (64, 64, 8, 10, 1, 2, (0, 0, 0, 0)),  # 1x1 strided, width 8
    (32, 64, 4, 10, 3, 1, (1, 1, 1, 1)),  # 8 in, 16 out a group: 16 lanes -> 2 groups, 1 chunk in, 2 out
]


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("cin, cout, groups, size, k, stride, pad", CASES)
def test_scheduled_grouped_bias_relu_matches_torch(cin, cout, groups, size, k, stride, pad, lanes):
    """relu(grouped_conv(x) + bias) with the blocks the policy picks for ``lanes``, under the rule."""
    ib, ki, ob = grouped_blocks(cin, cout, groups, lanes)
    rng = np.random.default_rng(cin * 1000 + groups * 10 + k)
    x = rng.standard_normal((1, cin, size, size)).astype("float32")
    w = rng.standard_normal((cout, cin // groups, k, k)).astype("float32")
    bias = rng.standard_normal(cout).astype("float32")
    kernel_np = block_group_kernel(w, groups, ib, ki, ob)
    data = te.placeholder((1, cin // ib, size, size, ib), name="data")
    kernel = te.placeholder(kernel_np.shape, name="kernel")
    bias_t = te.placeholder((1, cout // ob, 1, 1, ob), name="bias")
    out = topi.nn.relu(topi.add(grouped_conv2d_nchwc(data, kernel, (stride, stride), pad, (1, 1), "float32"), bias_t))
    scheduled, rule = schedule_func(te.create_prim_func([data, kernel, bias_t, out]), {8: AVX2, 16: AVX512}[lanes])
    assert rule == "grouped_conv2d_nchwc"
    script = scheduled.script()
    assert 'T.sblock("T_add")' not in script and 'T.sblock("T_relu")' not in script  # epilogue in the tile
    got = run(scheduled, [pack_data(x, ib), kernel_np, pack_data(bias.reshape(1, cout, 1, 1), ob)], out.shape)
    t, l, b, r = pad
    xp = torch.nn.functional.pad(torch.from_numpy(x), (l, r, t, b))
    ref = torch.relu(torch.nn.functional.conv2d(xp, torch.from_numpy(w), torch.from_numpy(bias), stride=stride,
                                                groups=groups)).numpy()
    got = got.transpose(0, 1, 4, 2, 3).reshape(ref.shape)
    assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max()


@pytest.mark.parametrize("cin, cout, groups, lanes, blocks", [
    (128, 128, 32, 16, (16, 4, 16)), (128, 128, 32, 8, (8, 4, 8)),  # ResNeXt stage 1: 4 / 2 groups a block
    (256, 256, 32, 16, (16, 8, 16)), (256, 256, 32, 8, (8, 8, 8)),  # stage 2: 2 groups a block / inside one
    (512, 512, 32, 16, (16, 16, 16)), (1024, 1024, 32, 16, (16, 16, 16)),  # stages 3-4: blocks inside a group
    (48, 48, 6, 16, (16, 8, 16)), (208, 208, 26, 16, (16, 8, 16)),  # RegNetY-400MF, width 8
    (160, 160, 10, 16, (16, 16, 16)),  # RegNetX-400MF, width 16
    (48, 48, 2, 16, (16, 24, 16)),  # width 24 on 16 lanes: blocks of 2 groups in 3 chunks
    (104, 104, 13, 16, None),  # blocks of 13 (104's own), which no 8-wide group fills: passes.channel_blocks
    # gives the classes a grouped conv reads blocks of 8 instead (BLOCKS' regnet_y_104)
    (64, 64, 32, 16, None),  # width 2: below a useful vector
    (96, 96, 12, 8, (8, 8, 8)), (96, 96, 24, 8, (8, 4, 8)),  # AVX2: width 8 inside, width 4 two a block
    (96, 96, 24, 16, (16, 4, 16)),  # 16 lanes over groups of 4: 4 groups a block, the most zeros allowed
    (80, 80, 16, 16, None),  # groups of 5 on 16 lanes: a block of 16 groups, mostly zeros
])
def test_layout_policy_keeps_the_neighbours_blocks(cin, cout, groups, lanes, blocks):
    assert grouped_blocks(cin, cout, groups, lanes) == blocks
    x = relax.Var("x", relax.TensorType((1, cin, 8, 8), "float32"))
    w = relax.const(np.zeros((cout, cin // groups, 3, 3), "float32"))
    call = relax.op.nn.conv2d(x, w, padding=1, groups=groups)
    expected = ["NCHW", "OIHW"] if blocks is None else [f"NCHW{blocks[0]}c", f"OIHW{blocks[1]}i{blocks[2]}o",
                                                         f"NCHW{blocks[2]}c"]
    assert blocked_conv2d_layouts(lanes)(call) == {"relax.nn.conv2d": expected}


@pytest.mark.parametrize("cin, groups, size, lanes, kernel_chunks, rows, tile", [
    (128, 32, 56, 16, 1, False, (14, 1)),  # 4 groups a block: one vector a block group
    (1024, 32, 7, 16, 2, True, (7, 2)),  # 2 chunks a group: both in the tile
    (256, 32, 28, 8, 1, False, (8, 1)),  # AVX2, one chunk a group: 8 accumulators of one vector, the last tile partial
    (512, 8, 14, 8, 8, True, (2, 4)),  # AVX2, 8 chunks a group: rows accumulated, 4 vectors
])
def test_register_tile_stays_in_a_block_group(cin, groups, size, lanes, kernel_chunks, rows, tile):
    """The tile's channel vectors come from one block group (they share their input values); rows are
    accumulated when the weights of a tile of the block group's vectors exceed half of L1."""
    ib, _ki, ob = grouped_blocks(cin, cin, groups, lanes)
    data = te.placeholder((1, cin // ib, size, size, ib), name="data")
    kernel = te.placeholder((cin // ob, kernel_chunks, 3, 3, ib, ob), name="kernel")
    out = grouped_conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1), "float32")
    sch = tvm.s_tir.Schedule(te.create_prim_func([data, kernel, out]))
    _n, oco, _oh, ow, _oci, ico, ry, rx, ici = sch.get_loops(sch.get_sblock("grouped_conv2d_nchwc"))
    machine = {8: AVX2, 16: AVX512}[lanes]
    outer, _inner, _unrolled = default_grouped_reduction(sch, ico, ry, rx, ici, machine)
    assert bool(outer) == rows
    _group, oco = sch.split(oco, [cin // ib // kernel_chunks, None])
    (_, cols), (_, vectors) = default_conv_tiles(sch, ow, oco, rows, machine)
    assert (cols, vectors) == tile


def test_inner_loop_is_vector_fma():
    """AVX2 code (compiled, not run) of ResNeXt's 32 groups of 4 (two groups a ymm block): ymm FMAs, no
    scalar ones."""
    target = backends.get("x86-avx2")
    ib, ki, ob = grouped_blocks(128, 128, 32, 8)
    data = te.placeholder((1, 128 // ib, 28, 28, ib), name="data")
    kernel = te.placeholder((128 // ob, 1, 3, 3, ib, ob), name="kernel")
    out = topi.nn.relu(grouped_conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1), "float32"))
    scheduled, rule = schedule_func(te.create_prim_func([data, kernel, out]), AVX2)
    assert rule == "grouped_conv2d_nchwc"
    asm = tvm.compile(tvm.IRModule({"main": scheduled}), target=target.tvm_target).mod.inspect_source("asm")
    assert len(re.findall(r"vfmadd\d+ps\s+[^\n]*%ymm", asm)) >= 8  # the 8-column tile, unrolled
    assert not re.search(r"vfmadd\d+ss", asm)


ROTATED_CASES = [  # channels, group width, size, stride, lanes, kernel, padding (t, l, b, r), dilation
    (32, 2, 9, 1, 16, 3, (1, 1, 1, 1), 1), (32, 2, 11, 2, 16, 3, (1, 1, 1, 1), 1),  # 8 groups of 2 a vector
    (128, 4, 13, 1, 16, 3, (1, 1, 1, 1), 1), (64, 4, 15, 2, 16, 3, (1, 1, 1, 1), 1),  # ResNeXt's groups of 4
    (48, 8, 15, 1, 16, 3, (1, 1, 1, 1), 1), (64, 8, 9, 2, 16, 3, (1, 1, 1, 1), 1),  # RegNet's groups of 8
    (64, 4, 11, 1, 8, 3, (1, 1, 1, 1), 1), (32, 4, 13, 2, 8, 3, (1, 1, 1, 1), 1), (16, 2, 7, 1, 8, 3, (1, 1, 1, 1), 1),
    (64, 8, 9, 2, 16, 1, (0, 0, 0, 0), 1),  # 1x1, strided
    (32, 4, 11, 1, 16, 3, (2, 1, 2, 0), 2),  # dilated, asymmetric padding
]


@pytest.mark.parametrize("channels, width, size, stride, lanes, k, pad, dilation", ROTATED_CASES)
def test_rotated_grouped_bias_relu_matches_torch(channels, width, size, stride, lanes, k, pad, dilation):
    """relu(grouped_conv(x) + bias) in the rotated form (its kernel from OIHW[g]i[x]o by rotated_kernel,
    in the same function) under the rule, odd maps, against PyTorch at 1e-5."""
    groups = channels // width
    rng = np.random.default_rng(channels * 100 + width * 10 + stride)
    x = rng.standard_normal((1, channels, size, size)).astype("float32")
    w = rng.standard_normal((channels, width, k, k)).astype("float32")
    bias = rng.standard_normal(channels).astype("float32")
    data = te.placeholder((1, channels // lanes, size, size, lanes), name="data")
    kernel = te.placeholder((channels // lanes, 1, k, k, width, lanes), name="kernel")
    bias_t = te.placeholder((1, channels // lanes, 1, 1, lanes), name="bias")
    conv = rotated_grouped_conv2d_nchwc(data, rotated_kernel(kernel), (stride, stride), pad, (dilation, dilation),
                                        "float32")
    out = topi.nn.relu(topi.add(conv, bias_t))
    scheduled, rule = schedule_func(te.create_prim_func([data, kernel, bias_t, out]), {8: AVX2, 16: AVX512}[lanes])
    assert rule == "grouped_conv2d_nchwc"
    script = scheduled.script()
    assert 'T.sblock("T_add")' not in script and 'T.sblock("T_relu")' not in script  # epilogue in the tile
    assert 'scope="local"' in script  # the partial sums of a tile stay in registers
    got = run(scheduled, [pack_data(x, lanes), pack_kernel(w, width, lanes), pack_data(bias.reshape(1, -1, 1, 1), lanes)],
              out.shape)
    t, l, b, r = pad
    xp = torch.nn.functional.pad(torch.from_numpy(x), (l, r, t, b))
    ref = torch.relu(torch.nn.functional.conv2d(xp, torch.from_numpy(w), torch.from_numpy(bias), stride=stride,
                                                dilation=dilation, groups=groups)).numpy()
    got = got.transpose(0, 1, 4, 2, 3).reshape(ref.shape)
    assert np.abs(got - ref).max() <= ROTATED_RTOL * np.abs(ref).max()


@pytest.mark.parametrize("cin, cout, groups, lanes, width", [
    (128, 128, 32, 16, 4), (128, 128, 32, 8, 4),  # ResNeXt stage 1: groups of 4 on 16 and 8 lanes
    (256, 256, 32, 16, 8), (48, 48, 6, 16, 8),  # groups of 8 on 16 lanes (ResNeXt stage 2, RegNetY)
    (256, 256, 32, 8, None), (512, 512, 32, 16, None),  # blocks inside a group: the dense block group
    (48, 48, 2, 16, None),  # width 24: block-diagonal over 3 chunks
    (32, 64, 4, 16, None),  # 8 in, 16 out a group: block-diagonal
])
def test_rotated_form_takes_the_narrow_groups(cin, cout, groups, lanes, width):
    """rotated_group_width on the layouts the policy picks, and legalization emitting the rotated compute
    exactly there."""
    x = relax.Var("x", relax.TensorType((1, cin, 10, 10), "float32"))
    w = relax.const(np.zeros((cout, cin // groups, 3, 3), "float32"))
    layouts = blocked_conv2d_layouts(lanes)(relax.op.nn.conv2d(x, w, padding=1, groups=groups))["relax.nn.conv2d"]
    ib = int(layouts[0][4:-1])
    xb = relax.Var("xb", relax.TensorType((1, cin // ib, 10, 10, ib), "float32"))
    ki, ob = (int(v) for v in re.match(r"OIHW(\d+)i(\d+)o", layouts[1]).groups())
    wb = relax.const(np.zeros((cout // ob, cin // groups // ki, 3, 3, ki, ob), "float32"))
    call = relax.op.nn.conv2d(xb, wb, padding=1, groups=groups, data_layout=layouts[0], kernel_layout=layouts[1],
                              out_layout=layouts[2])
    bb = relax.BlockBuilder()
    with bb.function("main", [xb]):
        call = bb.normalize(call)
        assert rotated_group_width(call) == width
        bb.emit_func_output(legalize_conv2d(bb, call))
    blocks = " ".join(str(f) for f in bb.get().functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert (f'"{ROTATED}"' in blocks) == (width is not None)


@pytest.mark.parametrize("width, shifts, lanes, machine, columns", [
    (56, 4, 16, AVX512, 4), (28, 8, 16, AVX512, 2), (14, 8, 16, AVX512, 2), (7, 8, 16, AVX512, 1),
    (56, 4, 8, AVX2, 2), (13, 2, 16, AVX512, 1),
])
def test_rotated_tile_fills_half_the_registers(width, shifts, lanes, machine, columns):
    assert rotated_columns(width, shifts, lanes, machine) == columns


class ResNeXtBottleneck(nn.Module):
    """1×1 → grouped 3×3 → 1×1, BatchNorm after each, ReLU after the first two and the residual add;
    a strided block has a 1×1 strided projection on its shortcut (torchvision's Bottleneck)."""

    def __init__(self, cin: int, width: int, groups: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if cin == cout and stride == 1 else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


BLOCKS = [  # a ResNeXt-50 stage-2 bottleneck (32 groups of 4; rotated form), a strided one on an odd map, a RegNetX-400MF block (strided, groups of 16),
    # RegNetY-style blocks without SE (groups of 8; 104 channels, whose own block 13 no group fills) and a
    # width-24 group
    ("resnext", (256, 128, 32, 256), (1, 256, 14, 14)),
    ("resnext_strided", (256, 128, 32, 512, 2), (1, 256, 15, 15)),
    ("regnet_y_104", (104, 104, 13, 104), (1, 104, 14, 14)),
    ("regnet_x", (32, 64, 4, 64, 2), (1, 32, 16, 16)),
    ("regnet_y_width8", (48, 48, 6, 48), (1, 48, 14, 14)),
    ("width24", (48, 96, 4, 96, 2), (1, 48, 12, 12)),
]


@pytest.mark.parametrize("name, args, shape", BLOCKS)
def test_grouped_blocks_compile_to_the_rule_against_onnxruntime(tmp_path, name, args, shape):
    """The grouped conv gets its rule with BatchNorm and ReLU fused; the block-diagonal kernel is folded
    (no function of its own); the layout transforms are those of the same block with groups 1 (the
    edges), none around the grouped conv; the output agrees with onnxruntime."""
    torch.manual_seed(0)
    net = randomize_batchnorm(ResNeXtBottleneck(*args))
    dense = randomize_batchnorm(ResNeXtBottleneck(*args[:2], 1, *args[3:]))
    x = np.random.default_rng(2).standard_normal(shape).astype("float32")
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamo=False)
    art = reforge.compile(str(path), target="x86")
    build = art.manifest["build"]
    assert build["schedules"]["grouped_conv2d_nchwc"] == 1, build
    assert set(build["schedules"]) == {"grouped_conv2d_nchwc", "conv2d_nchwc", "generic"}, build
    assert build["schedules"]["generic"] == 2, build  # the two edge transforms: no expansion, no transforms
    twin = reforge.compile(dense, target="x86", input_shapes={"x": shape}).manifest["build"]
    assert build["layout_transforms"] == twin["layout_transforms"], (build, twin)
    (got,) = art.run({"x": x}).values()
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max()
