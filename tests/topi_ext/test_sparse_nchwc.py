"""The blocked-layout sparse conv (topi_ext/sparse_nchwc.py), emitted into Relax and built for x86, against
float64 references: torch.nn.functional.conv2d, then the epilogue in numpy, in the blocked layouts.
Sparsities 0 %, 50 %, 90 %, 99 % and 100 % (an all-zero layer), channels and maps not multiples of the
vector, 1×1 / 3×3 / 5×1 / 1×3 kernels, strides 1 and 2 (and 1 × 2), symmetric and asymmetric zero padding,
batch 2, walks of one tile and of many (with a narrower last tile), input / output blocks 1 (NCHW: the planes
staged whole, rows written as vectors), 4, 8 and 16, epilogues of bias, ReLU and residual add; and in NEON's
vectors (4 lanes, tiles of 16, 4-channel blocks transposed in registers), built for x86 and for aarch64 (run under
qemu), whose tap loops keep their sums in registers, and in AVX2's (8 lanes, tiles of 32) built for an AVX2 CPU. Tolerance: max|out − ref| / max|ref| <= 1e-5 (float32 sums of the same products); an
all-zero layer without epilogue must give exactly 0. The numpy twin to 1e-12."""

import dataclasses
import os
import re
import tempfile

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from reforge import backends
from reforge.backends.arm import cross_compile
from reforge.machine import AVX2, AVX512, NEON
from reforge.qemu_runner import QemuRunner
from reforge.topi_ext import sparse_conv
from reforge.topi_ext import sparse_nchwc as sn
from tests.helpers import pruned_weight

RTOL = 1e-5
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]

CONVS = [  # n, c, h, w, o, kh, kw, strides, padding, ib, ob
    (1, 37, 9, 13, 21, 1, 1, (1, 1), (0, 0, 0, 0), 1, 1),
    (1, 32, 9, 13, 48, 1, 1, (1, 1), (0, 0, 0, 0), 16, 16),
    (2, 24, 11, 10, 16, 3, 3, (1, 1), (1, 1, 1, 1), 8, 16),
    (1, 16, 13, 10, 12, 3, 3, (2, 2), (1, 0, 2, 1), 16, 4),
    (1, 8, 17, 9, 8, 5, 1, (1, 2), (2, 0, 2, 0), 8, 8),
    (1, 16, 8, 8, 32, 1, 1, (2, 2), (0, 0, 0, 0), 16, 16),
    (1, 12, 5, 150, 20, 1, 3, (1, 1), (0, 1, 0, 1), 4, 4),  # 12 tiles of 64 over 5 rows
    (1, 16, 4, 67, 16, 3, 3, (1, 1), (1, 1, 1, 1), 16, 16),  # rows not a multiple of the tile
    (2, 48, 10, 10, 32, 1, 1, (1, 1), (0, 0, 0, 0), 16, 16),  # linear walk, transposed in registers: 2 tiles, cut blocks
    (1, 32, 6, 6, 24, 1, 1, (1, 1), (0, 0, 0, 0), 16, 8),  # linear walk: staged transposed, written a lane at a time
    (1, 24, 7, 9, 32, 1, 1, (1, 1), (0, 0, 0, 0), 8, 16),  # linear walk: staged a lane at a time, written transposed
    (1, 32, 12, 40, 16, 3, 3, (1, 1), (1, 1, 1, 1), 16, 16),  # rows of 40: two 16-pixel transposes and a rest per row
    (1, 16, 9, 70, 16, 3, 3, (2, 2), (1, 0, 1, 1), 16, 16),  # stride 2: every other pixel transposed, odd phases
    (1, 32, 60, 70, 16, 3, 3, (1, 1), (1, 1, 1, 1), 16, 16),  # planes past WHOLE_BYTES: staged a band per tile
    (2, 20, 14, 14, 24, 1, 1, (1, 1), (0, 0, 0, 0), 1, 1),  # NCHW linear: 196 positions, a tail tile of 16
    (1, 13, 7, 7, 19, 3, 3, (1, 1), (1, 1, 1, 1), 1, 1),  # NCHW rows of 7 in a pitch of 9, one tile with a tail
    (1, 3, 23, 21, 16, 7, 7, (2, 2), (3, 3, 3, 3), 1, 1),  # NCHW stem-like: 7×7 stride 2, four phase planes
    (2, 8, 11, 37, 9, 3, 3, (2, 1), (0, 2, 1, 0), 1, 1),  # NCHW asymmetric padding, stride 2 × 1, rows of 37
    (1, 17, 12, 12, 16, 3, 3, (1, 1), (1, 1, 1, 1), 1, 16),  # NCHW in, NCHW16c out
    (1, 32, 10, 9, 11, 1, 1, (2, 2), (0, 0, 0, 0), 16, 1),  # NCHW16c in, NCHW out, strided 1×1
]
CHUNKED = [  # the same and a chunk of input channels: n, c, h, w, o, kh, kw, strides, padding, ib, ob, chunk
    (2, 48, 7, 7, 32, 3, 3, (1, 1), (1, 1, 1, 1), 16, 16, 16),  # whole planes, three chunks, batch 2
    (1, 40, 14, 14, 16, 3, 3, (2, 2), (1, 1, 1, 1), 8, 16, 16),  # a last chunk of 8, stride 2, a tail tile
    (1, 36, 12, 40, 24, 3, 3, (1, 1), (1, 1, 1, 1), 1, 8, 32),  # NCHW in: the last chunk 4 channels
    (1, 32, 9, 13, 48, 1, 1, (1, 1), (0, 0, 0, 0), 16, 16, 16),  # linear walk, written transposed
    (1, 21, 7, 7, 19, 3, 3, (1, 1), (1, 1, 1, 1), 1, 1, 5),  # NCHW out
]
NEON_CONVS = [  # at NEON's width (4 lanes, tiles of 16): n, c, h, w, o, kh, kw, strides, padding, ib, ob, chunk
    (1, 32, 9, 13, 24, 1, 1, (1, 1), (0, 0, 0, 0), 4, 4, 0),  # 1×1 linear: 4×4 register transposes, a cut block
    (1, 16, 12, 14, 20, 3, 3, (1, 1), (1, 1, 1, 1), 4, 4, 0),  # 3×3 stride 1, planes staged whole, rows of 14
    (1, 24, 13, 11, 16, 3, 3, (2, 2), (1, 0, 1, 1), 4, 4, 0),  # 3×3 stride 2: four phase planes, asymmetric padding
    (2, 3, 17, 19, 16, 3, 3, (1, 1), (1, 1, 1, 1), 1, 4, 0),  # NCHW input (a network's image), batch 2
    (1, 13, 7, 9, 11, 3, 3, (1, 1), (1, 1, 1, 1), 1, 1, 0),  # NCHW in and out
    (1, 16, 8, 8, 16, 1, 1, (2, 2), (0, 0, 0, 0), 4, 4, 0),  # strided 1×1: plane (0, 0) only
    (1, 32, 60, 70, 8, 3, 3, (1, 1), (1, 1, 1, 1), 4, 4, 0),  # planes past WHOLE_BYTES: a band per tile
    (1, 40, 10, 10, 12, 3, 3, (1, 1), (1, 1, 1, 1), 4, 4, 12),  # input channels summed in chunks of 12
]
AVX2_CONVS = [  # at AVX2's width (8 lanes, tiles of 32), the same fields
    (1, 32, 9, 13, 24, 1, 1, (1, 1), (0, 0, 0, 0), 8, 8, 0),  # 1×1 linear: 8×8 register transposes
    (1, 16, 12, 14, 24, 3, 3, (1, 1), (1, 1, 1, 1), 8, 8, 0),  # 3×3 stride 1, planes staged whole
    (1, 24, 13, 11, 16, 3, 3, (2, 2), (1, 0, 1, 1), 8, 8, 0),  # 3×3 stride 2
    (2, 3, 17, 19, 16, 3, 3, (1, 1), (1, 1, 1, 1), 1, 8, 0),  # NCHW input, batch 2
    (1, 32, 60, 70, 8, 3, 3, (1, 1), (1, 1, 1, 1), 8, 8, 16),  # a band per tile, chunks of 16 channels
]
EPILOGUES = [(), ("bias", "relu"), ("bias", "add", "relu"), ("relu", "add")]


def reference(x, w, s: sn.Spec, bias, res):
    t, l, b, r = s.padding
    xp = torch.nn.functional.pad(torch.from_numpy(x).double(), (l, r, t, b))
    out = torch.nn.functional.conv2d(xp, torch.from_numpy(w).double(), stride=s.strides).numpy()
    for step in s.epilogue:
        out = {"bias": lambda v: v + bias.astype(np.float64)[None, :, None, None], "relu": lambda v: np.maximum(v, 0),
               "add": lambda v: v + res.astype(np.float64)}[step](out)
    return sn.block(out, s.ob)


def run(s: sn.Spec, w, xb, bias, res_b, target: str = "x86"):
    """The kernel of ``s`` built for ``target`` in a Relax module, run here (an aarch64 one under qemu)."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(xb.shape, "float32"))
    rv = relax.Var("r", relax.TensorType(res_b.shape, "float32"))
    with bb.function("main", [xv, rv]):
        with bb.dataflow():
            out = bb.emit_output(sn.emit(bb, s, sn.arguments(s, xv, sn.taps(w, s), relax.const(bias), rv)))
        bb.emit_func_output(out)
    backend = backends.get(target)
    ex = tvm.compile(bb.get(), target=backend.tvm_target)
    if backend.kind == "arm":
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.so")
            cross_compile(ex, path, target)
            with open(path, "rb") as f:
                return QemuRunner(f.read()).run([xb, res_b])[0]
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(xb), tvm.runtime.tensor(res_b)).numpy()


def check(out, ref, exact_zero: bool):
    assert out.shape == ref.shape
    if exact_zero:
        assert not out.any()
    else:
        assert np.abs(out - ref).max() / np.abs(ref).max() <= RTOL


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("case", CONVS)
def test_sparse_conv_nchwc(case, sparsity):
    n, c, h, w, o, kh, kw, strides, pad, ib, ob = case
    rng = np.random.default_rng(c * 31 + h + w + int(sparsity * 100))
    epilogue = EPILOGUES[(c + int(sparsity * 100)) % len(EPILOGUES)]
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    wt = pruned_weight(rng, (o, c, kh, kw), sparsity)
    g = sparse_conv.geometry(x.shape, wt.shape, strides, pad)
    s = dataclasses.replace(sn.spec(g, int(np.count_nonzero(wt)), epilogue), ib=ib, ob=ob)
    bias = rng.standard_normal(o).astype("float32")
    res = rng.standard_normal((n, o, *s.out_hw)).astype("float32")
    ref = reference(x, wt, s, bias, res)
    xb, res_b = sn.block(x, ib), sn.block(res, ob)
    twin = sn.sparse_conv2d_nchwc_np(xb, wt, s, bias, res_b)
    assert np.abs(twin - ref).max() <= 1e-12 * max(1, np.abs(ref).max())
    check(run(s, wt, xb, bias, res_b), ref, sparsity == 1.0 and not epilogue)


def check_in_vectors(case, sparsity: float, machine, target: str):
    """A NEON_CONVS / AVX2_CONVS case in ``machine``'s vectors (:func:`sn.for_machine`), built for ``target``, against
    the float64 reference (and the numpy twin to 1e-12)."""
    n, c, h, w, o, kh, kw, strides, pad, ib, ob, chunk = case
    rng = np.random.default_rng(c * 13 + h + o + int(sparsity * 100))
    epilogue = EPILOGUES[(c + o) % len(EPILOGUES)]
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    wt = pruned_weight(rng, (o, c, kh, kw), sparsity)
    g = sparse_conv.geometry(x.shape, wt.shape, strides, pad)
    s = sn.for_machine(dataclasses.replace(sn.spec(g, int(np.count_nonzero(wt)), epilogue), ib=ib, ob=ob, chunk=chunk),
                       machine)
    vec = machine.lanes()
    assert (s.vector, s.width) == (vec, min(4 * vec, -(-s.positions // vec) * vec))
    bias = rng.standard_normal(o).astype("float32")
    res = rng.standard_normal((n, o, *s.out_hw)).astype("float32")
    ref = reference(x, wt, s, bias, res)
    xb, res_b = sn.block(x, ib), sn.block(res, ob)
    assert np.abs(sn.sparse_conv2d_nchwc_np(xb, wt, s, bias, res_b) - ref).max() <= 1e-12 * max(1, np.abs(ref).max())
    check(run(s, wt, xb, bias, res_b, target), ref, sparsity == 1.0 and not epilogue)


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("case", NEON_CONVS)
def test_sparse_conv_at_neon_width(case, sparsity):
    """The kernel in NEON's vectors, built for this x86 CPU (the TIR is the aarch64 build's; LLVM splits nothing:
    4-lane vectors are SSE's)."""
    check_in_vectors(case, sparsity, NEON, "x86")


@pytest.mark.parametrize("case", NEON_CONVS[:6])
def test_sparse_conv_at_neon_width_on_aarch64(case):
    """The same kernels as aarch64 code, run under qemu-aarch64 (90 % zeros)."""
    check_in_vectors(case, 0.9, NEON, "arm")


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("case", AVX2_CONVS)
def test_sparse_conv_at_avx2_width(case, sparsity):
    """The kernel in AVX2's vectors (8-channel blocks transposed 8 × 8 in registers), built for an AVX2 CPU."""
    check_in_vectors(case, sparsity, AVX2, "x86-avx2")


TAP_LOOP_FMA = re.compile(r"\tfmla\tv\d+\.4s, v\d+\.4s, v\d+\.s\[\d\]")  # a vector FMA by a broadcast tap
STACK_Q = re.compile(r"\t(?:ldr|str|ldp|stp)\tq\d+, .*\[sp")  # a q register loaded from or stored to the stack


def tap_loops(asm: str) -> list[list[str]]:
    """The innermost loops of aarch64 assembly (a label, the lines up to the last branch back to it, with no branch
    back to a label inside) that hold a by-element FMA: the sparse kernel's loops over a row's taps."""
    lines = asm.splitlines()
    labels = {line[:-1]: i for i, line in enumerate(lines) if re.fullmatch(r"\.LBB\d+_\d+:", line)}

    def back(i):
        m = re.fullmatch(r"\t(?:b(?:\.\w+)?|cbn?z\t\w+,|tbn?z\t\w+, #\d+,)\s*(\.LBB\d+_\d+)", lines[i])
        return labels[m.group(1)] if m and labels.get(m.group(1), i) < i else None

    loops = []
    for i in range(len(lines)):
        j = back(i)
        if j is not None and all(back(k) is None or back(k) < j for k in range(j, i)):
            loops.append(lines[j:i])
    return [body for body in loops if any(TAP_LOOP_FMA.search(line) for line in body)]


@pytest.mark.parametrize("case", [(64, 56, 1, 4, 4), (3, 17, 1, 1, 4), (64, 14, 1, 1, 1)])
def test_neon_tile_keeps_its_sums_in_registers(case):
    """3×3 convs built for aarch64 (c, h, padding, ib, ob): every tap loop of the kernel in NEON's vectors keeps its
    8 accumulators in registers (no q register to or from the stack); AVX-512's 64-position tile, 32 q registers in
    two sets, spills in those loops. (Known: in 1×1 walks from NCHW4c LLVM still spills 4 sums in one of the four
    unrolled lanes.)"""
    c, h, pad, ib, ob = case
    g = sparse_conv.geometry((1, c, h, h), (64, c, 3, 3), (1, 1), (pad,) * 4)
    wide = dataclasses.replace(sn.spec(g, 500, ("bias", "relu")), ib=ib, ob=ob)
    arm = backends.get("arm")
    spilled = []
    for s in (sn.for_machine(wide, NEON), wide):
        with arm.tvm_target:
            ex = tvm.compile(tvm.IRModule({"main": sn.prim_func(s)}), target=arm.tvm_target)
        loops = tap_loops(ex.mod.inspect_source("asm"))
        assert loops
        spilled.append(sum(bool(STACK_Q.search(line)) for body in loops for line in body))
    assert spilled[0] == 0 and spilled[1] > 0


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("case", CHUNKED)
def test_sparse_conv_nchwc_chunked(case, sparsity):
    """Input channels summed a chunk at a time (the sums of every output channel kept between the passes)."""
    n, c, h, w, o, kh, kw, strides, pad, ib, ob, chunk = case
    rng = np.random.default_rng(c * 7 + chunk + int(sparsity * 100))
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    wt = pruned_weight(rng, (o, c, kh, kw), sparsity)
    g = sparse_conv.geometry(x.shape, wt.shape, strides, pad)
    s = dataclasses.replace(sn.spec(g, int(np.count_nonzero(wt)), ("bias", "add", "relu")), ib=ib, ob=ob, chunk=chunk)
    assert s.chunks == -(-c // chunk)
    bias = rng.standard_normal(o).astype("float32")
    res = rng.standard_normal((n, o, *s.out_hw)).astype("float32")
    ref = reference(x, wt, s, bias, res)
    xb, res_b = sn.block(x, ib), sn.block(res, ob)
    assert np.abs(sn.sparse_conv2d_nchwc_np(xb, wt, s, bias, res_b) - ref).max() <= 1e-12 * np.abs(ref).max()
    check(run(s, wt, xb, bias, res_b), ref, False)


SPLIT = [  # a tile's output blocks over parallel tasks: n, c, h, w, o, kh, kw, strides, padding, ib, ob, chunk, splits
    (1, 32, 7, 7, 48, 3, 3, (1, 1), (1, 1, 1, 1), 16, 16, 16, 2),  # one tile, 3 blocks in 2 shares, chunked
    (1, 64, 7, 7, 80, 1, 1, (1, 1), (0, 0, 0, 0), 16, 16, 0, 4),  # linear: 5 blocks in 4 shares, staged per task
    (2, 16, 6, 6, 24, 3, 3, (2, 2), (1, 1, 1, 1), 1, 1, 0, 3),  # NCHW in and out, batch 2, 24 channels in 3
]


@pytest.mark.parametrize("case", SPLIT)
def test_sparse_conv_nchwc_split(case):
    """A tile's output blocks summed by several parallel tasks, each its share (uneven where they do not divide)."""
    n, c, h, w, o, kh, kw, strides, pad, ib, ob, chunk, splits = case
    rng = np.random.default_rng(c + o + splits)
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    wt = pruned_weight(rng, (o, c, kh, kw), 0.9)
    g = sparse_conv.geometry(x.shape, wt.shape, strides, pad)
    s = dataclasses.replace(sn.spec(g, int(np.count_nonzero(wt)), ("bias", "add", "relu")), ib=ib, ob=ob, chunk=chunk,
                            splits=splits)
    bias = rng.standard_normal(o).astype("float32")
    res = rng.standard_normal((n, o, *s.out_hw)).astype("float32")
    xb, res_b = sn.block(x, ib), sn.block(res, ob)
    check(run(s, wt, xb, bias, res_b), reference(x, wt, s, bias, res), False)


def test_few_tiles_spread_over_the_cores():
    """A walk of fewer tiles than 2 a core (whole planes) or 1 a core (staged per tile) splits its output blocks:
    a 7×7 3×3 conv (one tile, planes whole) into 4 shares on 2 cores, a 7×7 1×1 (staged per task) into 2; a 14×14
    1×1 (4 tiles) and any conv on one core not at all; never more shares than output blocks."""
    def splits(c, h, k, o, cores):
        g = sparse_conv.geometry((1, c, h, h), (o, c, k, k), (1, 1), (k // 2,) * 4)
        return sn.spread(dataclasses.replace(sn.spec(g, 1), ib=16, ob=16), cores).splits
    assert splits(512, 7, 3, 512, 2) == 4 and splits(2048, 7, 1, 512, 2) == 2
    assert splits(1024, 14, 1, 256, 2) == 1 and splits(512, 7, 3, 512, 1) == 1 and splits(64, 7, 3, 32, 2) == 2


def test_taps_index_the_phase_planes():
    """Offsets name the (c, ky % s, kx % s) plane's band, shifted by (ky // s)·Wq + kx // s; rows in output-channel
    order."""
    w = np.zeros((2, 3, 3, 3), "float32")
    w[1, 2, 0, 1], w[1, 0, 2, 2] = 5, 7
    g = sparse_conv.geometry((1, 3, 9, 9), w.shape, (2, 2), (1, 1, 1, 1))
    s = sn.spec(g, 2)
    assert s.out_hw == (5, 5) and s.plane_hw == (6, 6) and s.positions == 4 * 6 + 5 and s.width == 32
    assert s.band == 48  # 32 + 6 + 1, rounded up to whole vectors
    assert s.pitch == s.plane_length == 48  # NCHW input: whole planes, 6 × 6, and the tile's reach 32 + 6 + 1
    t = sn.taps(w, s)
    assert list(t.indptr) == [0, 0, 2] and list(t.values) == [7, 5]
    assert list(t.offsets) == [((0 * 2 + 0) * 2 + 0) * s.pitch + 6 + 1, ((2 * 2 + 0) * 2 + 1) * s.pitch + 0]


def test_staged_whole_where_planes_are_small():
    """A walk other than the linear one: from NCHW always, from NCHW16c while its planes fit WHOLE_BYTES. A linear
    walk (its bands do not overlap) never: from NCHW too its rows are copied per tile."""
    def whole(c, h, k, stride, ib):
        g = sparse_conv.geometry((1, c, h, h), (16, c, k, k), (stride, stride), (k // 2,) * 4)
        return dataclasses.replace(sn.spec(g, 1), ib=ib, ob=16).whole
    assert whole(64, 56, 3, 1, 1) and whole(3, 224, 7, 2, 1) and whole(64, 56, 1, 2, 1)
    assert not whole(64, 56, 1, 1, 1) and not whole(256, 14, 1, 1, 1)
    assert whole(256, 14, 3, 1, 16) and whole(512, 7, 3, 1, 16) and whole(256, 14, 1, 2, 16)
    assert not whole(256, 14, 1, 1, 16) and not whole(64, 56, 3, 1, 16) and not whole(128, 56, 3, 2, 16)
    assert not whole(24, 14, 3, 1, 8)


@pytest.mark.parametrize("chunks", [(0, 0), (0, 16), (32, 0), (16, 48)])
def test_taps_move_between_pitches_and_chunks(chunks):
    """The taps of the NCHW kernel (whole planes) moved to a blocked one (a tile's band), and between chunkings of
    the input channels, are that kernel's own: offsets, values and rows alike."""
    rng = np.random.default_rng(5)
    w = pruned_weight(rng, (16, 64, 3, 3), 0.9)
    g = sparse_conv.geometry((1, 64, 56, 56), w.shape, (1, 1), (1, 1, 1, 1))
    plain = dataclasses.replace(sn.spec(g, int(np.count_nonzero(w))), chunk=chunks[0])
    blocked = dataclasses.replace(plain, ib=16, ob=16, chunk=chunks[1])
    assert plain.pitch != blocked.pitch
    moved, own = sn.retapped(sn.taps(w, plain), plain, blocked), sn.taps(w, blocked)
    for a, b in zip((moved.indptr, moved.offsets, moved.values), (own.indptr, own.offsets, own.values)):
        assert np.array_equal(a, b)
    assert own.indptr.size == blocked.chunks * 16 + 1


def test_chunks_where_staged_values_outgrow_l1():
    """k×k walks whose tile stages more than the L1 cache take chunks of whole vectors of channels filling half
    of it; 1×1 walks and walks that fit do not."""
    def chunk(c, h, k, stride, l1=48 << 10):
        g = sparse_conv.geometry((1, c, h, h), (16, c, k, k), (stride, stride), (k // 2,) * 4)
        s = dataclasses.replace(sn.spec(g, 1), ib=16, ob=16)
        return sn.chunked(s, l1).chunk, s
    assert chunk(512, 7, 3, 1)[0] == 64  # 96 staged values per channel: 24 KiB / 384 B
    assert chunk(512, 7, 3, 1, 32 << 10)[0] == 32
    assert chunk(256, 14, 3, 1)[0] == 48
    assert chunk(1024, 14, 1, 1)[0] == 0 and chunk(64, 56, 3, 1)[0] == 0 and chunk(32, 7, 3, 1)[0] == 0


@pytest.mark.parametrize("machine", [AVX512, AVX2, NEON])
@pytest.mark.parametrize("hw", [(1, 1), (7, 7), (56, 56), (4, 67), (5, 150)])
def test_tiles_cover_the_walk(hw, machine):
    g = sparse_conv.geometry((1, 1, *hw), (1, 1, 3, 3), (1, 1), (1, 1, 1, 1))
    s = sn.for_machine(sn.spec(g, 1), machine)
    vec = machine.lanes()
    assert s.width % vec == 0 and s.width <= machine.min_accumulators // 2 * vec
    assert (s.tiles - 1) * s.width < s.positions <= s.tiles * s.width
    assert s.tail % vec == 0 and s.positions <= (s.tiles - 1) * s.width + s.tail < s.positions + vec


def test_tiles_in_the_machines_vectors():
    """The pass's kernel is AVX-512's (x86 builds re-emit it unchanged); AVX2 takes 8-lane vectors and tiles of 32
    positions, NEON 4-lane vectors and tiles of 16: two sets of 4 vectors of accumulators each time."""
    g = sparse_conv.geometry((1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1))
    s = sn.spec(g, 1000)
    assert sn.for_machine(s, AVX512) == s and (s.vector, s.width) == (16, 64)
    assert [(m.vector, m.width) for m in (sn.for_machine(s, AVX2), sn.for_machine(s, NEON))] == [(8, 32), (4, 16)]
    assert sn.Spec.from_json(sn.for_machine(s, NEON).to_json()) == sn.for_machine(s, NEON)


@pytest.mark.parametrize("vec", [4, 8, 16])
def test_transpose_lines_transpose(vec):
    """The register transpose (log2(vec) rounds of two-vector shuffles) against numpy, on a 4×vec×vec array."""
    sq = vec * vec
    body = "\n".join(sn.transpose_lines(lambda t: f"src[T.ramp(b * {sq} + {t} * {vec}, 1, {vec})]",
                                        lambda l, v: f"dst[T.ramp(b * {sq} + {l} * {vec}, 1, {vec})] = {v}", " " * 8,
                                        vec))
    src = f"""
@T.prim_func
def main(src: T.Buffer(({4 * sq},), "float32"), dst: T.Buffer(({4 * sq},), "float32")):
    for b in range(4):
{body}
"""
    from tvm.script import tirx

    func = tvm.script.from_source(src, extra_vars={"T": tirx})
    ex = tvm.compile(tvm.IRModule({"main": func}), target=backends.get("x86").tvm_target)
    a = np.random.default_rng(0).standard_normal(4 * sq).astype("float32")
    out = tvm.runtime.tensor(np.zeros(4 * sq, "float32"))
    ex["main"](tvm.runtime.tensor(a), out)
    assert np.array_equal(out.numpy(), a.reshape(4, vec, vec).transpose(0, 2, 1).reshape(-1))


def test_linear_walks():
    """1×1, stride 1, no padding: the walk is the flattened map (staged and written by register transposes)."""
    def linear(k, strides, pad):
        return sn.spec(sparse_conv.geometry((1, 16, 5, 5), (16, 16, k, k), strides, pad), 1).linear
    assert linear(1, (1, 1), (0, 0, 0, 0))
    assert not linear(3, (1, 1), (1, 1, 1, 1)) and not linear(1, (2, 2), (0, 0, 0, 0))
    assert not linear(1, (1, 1), (0, 1, 0, 0))


def test_only_the_planes_a_tap_reads_are_staged():
    """A 1×1 conv of stride 2 reads phase plane (0, 0) only; a 3×3 one all four; a 5×1 of stride (1, 2) one column."""
    def phases(k, strides):
        return sn.spec(sparse_conv.geometry((1, 4, 9, 9), (4, 4, *k), strides, (0, 0, 0, 0)), 1).phases
    assert phases((1, 1), (2, 2)) == (1, 1) and phases((3, 3), (2, 2)) == (2, 2) and phases((5, 1), (1, 2)) == (1, 1)


def test_spec_round_trips_as_json():
    s = sn.Spec(1, 8, 5, 5, 16, 3, 3, (1, 1, 1, 1), (2, 2), 40, 8, 16, ("bias", "add", "relu"))
    assert sn.Spec.from_json(s.to_json()) == s
