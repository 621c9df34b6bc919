"""Bit-serial conv2d / dense under their x86 schedules, bit for bit against numpy.

Reference: the float conv / dense of the ±1 (k-bit, or ternary {-1, 0, +1}) tensors with zero padding,
computed exactly in int64. Tolerance: none (np.testing.assert_array_equal). ``bits`` "t" = ternary."""

import re

import numpy as np
import pytest
import tvm
from tvm import relax, te

from reforge import backends
from reforge.topi_ext import bitserial as bs
from reforge.topi_ext.schedules.bitserial import (schedule_bitpack, schedule_bitpool, schedule_bitserial_conv2d,
                                                 schedule_bitserial_dense)

TARGET = backends.get("x86")


def ref_conv(x, w, stride, pad):
    """x ``[N, C, H, W]``, w ``[O, C, KH, KW]`` integers -> NHWC int64; pad (t, l, b, r) zeros."""
    t, l, b, r = pad
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (t, b), (l, r)))
    n, c, h, wd = xp.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, oh, ow, o), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, :, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            out += np.einsum("ncyx,oc->nyxo", patch, w[:, :, ky, kx].astype(np.int64))
    return out


def signs(a):
    return np.where(a >= 0, 1, -1).astype(np.int64)


def inputs(rng, shape, act_bits):
    """Float activations and the integer values they stand for (±1, 0 .. 2^k - 1, or {-1, 0, +1} for
    ``act_bits == "t"``: about a third exact zeros)."""
    if act_bits == "t":
        x = rng.integers(-1, 2, shape).astype("float32") * rng.uniform(0.5, 2, shape).astype("float32")
        return x, np.sign(x).astype(np.int64)
    if act_bits == 1:
        x = rng.standard_normal(shape).astype("float32")
        return x, signs(x)
    x = rng.integers(0, 2 ** act_bits, shape).astype("float32")
    return x, x.astype(np.int64)


def build(args, out, schedule):
    func = schedule(te.create_prim_func([*args, out]))
    assert func.attrs["tirx.is_scheduled"]
    return tvm.compile(tvm.IRModule({"main": func}), target=TARGET.tvm_target)


def run(lib, arrays, out):
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    lib["main"](*(tvm.runtime.tensor(a) for a in arrays), res)
    return res.numpy()


def conv_op(rng, c, o, h, k, stride, pad, act_bits, word, threshold=False, batch=1):
    """Build and run the scheduled conv on numpy-packed inputs; returns (result, reference dot)."""
    x, xv = inputs(rng, (batch, c, h, h + 1), act_bits)
    ternary = act_bits == "t"
    w = rng.standard_normal((o, c, k, k)).astype("float32")
    dot = ref_conv(xv, signs(w), stride, pad)
    packed_x = bs.pack_activations_np(x, 1 if ternary else act_bits, word, ternary=ternary)
    packed_w = bs.pack_conv_weights(w, word)
    data = te.placeholder(packed_x.shape, word, "data")
    weight = te.placeholder(packed_w.shape, word, "weight")
    args, arrays = [data, weight], [packed_x, packed_w]
    table = bs.border_table(packed_w, c, bs.ConvGeometry(h, h + 1, k, k, (stride, stride), pad),
                            packed_x.shape[3], ternary)
    border = None if ternary else te.placeholder(table.shape, "int32", "border")
    if not ternary:
        args.append(border)
        arrays.append(table)
    thr = flip = None
    if threshold:
        thr_np = rng.integers(-c * k * k // 4, c * k * k // 4, o).astype("int32")
        flip_np = rng.integers(0, 2, o).astype("int32")
        thr, flip = te.placeholder((o,), "int32", "thr"), te.placeholder((o,), "int32", "flip")
        args += [thr, flip]
        arrays += [thr_np, flip_np]
    out = bs.bitserial_conv2d(data, weight, border, (stride, stride), pad, threshold=thr, flip=flip, ternary=ternary)
    lanes = bs.accumulator_lanes(TARGET, word)
    got = run(build(args, out, lambda f: schedule_bitserial_conv2d(f, lanes)), arrays, out)
    if threshold:
        bits = np.where(flip_np != 0, dot <= thr_np, dot >= thr_np)
        return got, bs.pack_bits_np(bits, word)[:, :, :, None, :]
    return got, dot


CONV_CASES = [  # cin, cout, size, kernel, stride, padding (t, l, b, r), activation bits, word
    (3, 16, 9, 3, 1, (1, 1, 1, 1), 1, "uint64"),
    (37, 20, 10, 3, 2, (1, 1, 1, 1), 1, "uint64"),
    (64, 24, 8, 3, 1, (1, 1, 1, 1), 1, "uint32"),
    (100, 16, 7, 1, 1, (0, 0, 0, 0), 1, "uint64"),
    (100, 16, 9, 3, 2, (0, 0, 0, 0), 2, "uint64"),
    (37, 8, 8, 3, 1, (1, 1, 1, 1), 2, "uint32"),
    (20, 12, 9, 3, 2, (1, 1, 1, 1), 3, "uint64"),  # 3-bit, stride 2, padded
    (64, 32, 6, 3, 2, (0, 1, 1, 0), 1, "uint64"),  # asymmetric padding
    (16, 8, 2, 3, 1, (1, 1, 1, 1), 1, "uint64"),  # every output row a border row
    (130, 16, 9, 5, 1, (2, 2, 2, 2), 1, "uint64"),  # two border rows per side, 3 words
    (37, 20, 10, 3, 2, (1, 1, 1, 1), "t", "uint64"),  # ternary: zeros, stride 2, padded, 37 channels
    (100, 16, 7, 1, 1, (0, 0, 0, 0), "t", "uint64"),  # ternary 1x1, 2 words
    (70, 24, 8, 3, 1, (0, 0, 0, 0), "t", "uint32"),  # ternary unpadded, 3 words of 32
    (130, 8, 9, 3, 2, (1, 1, 1, 1), 3, "uint64"),  # 3-bit, 3 words, stride 2
    (20, 12, 8, 1, 2, (0, 0, 0, 0), 2, "uint64"),  # 2-bit 1x1 stride 2
]


@pytest.mark.parametrize("c, o, h, k, stride, pad, bits, word", CONV_CASES)
def test_conv_matches_integer_reference(c, o, h, k, stride, pad, bits, word):
    got, want = conv_op(np.random.default_rng(c * 7 + o), c, o, h, k, stride, pad, bits, word)
    np.testing.assert_array_equal(got, want)


def test_conv_batch_of_two():
    got, want = conv_op(np.random.default_rng(5), 37, 16, 6, 3, 1, (1, 1, 1, 1), 1, "uint64", batch=2)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("c, o, word, bits", [(37, 70, "uint64", 1), (64, 32, "uint32", 1), (100, 128, "uint64", 1),
                                              (37, 64, "uint64", 2), (70, 128, "uint64", "t"), (20, 70, "uint64", "t")])
def test_conv_threshold_packs_sign_bits(c, o, word, bits):
    got, want = conv_op(np.random.default_rng(o), c, o, 7, 3, 1, (1, 1, 1, 1), bits, word, threshold=True)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n, k, m, bits, word", [(2, 100, 24, 1, "uint64"), (1, 200, 40, 1, "uint32"),
                                                 (3, 70, 16, 2, "uint64"), (2, 130, 20, 3, "uint64"),
                                                 (2, 100, 24, "t", "uint64"), (1, 70, 16, "t", "uint32")])
def test_dense_matches_integer_reference(n, k, m, bits, word):
    rng = np.random.default_rng(k)
    x, xv = inputs(rng, (n, k), bits)
    ternary = bits == "t"
    w = rng.standard_normal((m, k)).astype("float32")
    packed_x = bs.pack_activations_np(x, 1 if ternary else bits, word, layout="NC", ternary=ternary)
    packed_w = bs.pack_dense_weights(w, word)
    data = te.placeholder(packed_x.shape, word, "data")
    weight = te.placeholder(packed_w.shape, word, "weight")
    out = bs.bitserial_dense(data, weight, k, ternary=ternary)
    lanes = bs.accumulator_lanes(TARGET, word)
    got = run(build([data, weight], out, lambda f: schedule_bitserial_dense(f, lanes)), [packed_x, packed_w], out)
    np.testing.assert_array_equal(got, xv @ signs(w).T)


@pytest.mark.parametrize("n, k, m, bits", [(2, 100, 70, 1), (1, 70, 64, "t"), (3, 130, 24, 2)])
def test_dense_threshold_packs_sign_bits(n, k, m, bits):
    """Dense with the threshold epilogue: ``dot >= thr`` (``<=`` where flipped) packed ``[N, 1, MW]``."""
    rng = np.random.default_rng(m + k)
    x, xv = inputs(rng, (n, k), bits)
    ternary = bits == "t"
    w = rng.standard_normal((m, k)).astype("float32")
    thr_np = rng.integers(-k // 4, k // 4, m).astype("int32")
    flip_np = rng.integers(0, 2, m).astype("int32")
    packed_x = bs.pack_activations_np(x, 1 if ternary else bits, "uint64", layout="NC", ternary=ternary)
    packed_w = bs.pack_dense_weights(w)
    data = te.placeholder(packed_x.shape, "uint64", "data")
    weight = te.placeholder(packed_w.shape, "uint64", "weight")
    thr, flip = te.placeholder((m,), "int32", "thr"), te.placeholder((m,), "int32", "flip")
    out = bs.bitserial_dense(data, weight, k, ternary=ternary, threshold=thr, flip=flip)
    lanes = bs.accumulator_lanes(TARGET, "uint64")
    got = run(build([data, weight, thr, flip], out, lambda f: schedule_bitserial_dense(f, lanes)),
              [packed_x, packed_w, thr_np, flip_np], out)
    dot = xv @ signs(w).T
    want = bs.pack_bits_np(np.where(flip_np != 0, dot <= thr_np, dot >= thr_np))[:, None, :]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape, bits, layout, word", [((1, 37, 5, 6), 1, "NCHW", "uint64"),
                                                       ((2, 4, 3, 70), 2, "NHWC", "uint32"),
                                                       ((3, 100), 3, "NC", "uint64"),
                                                       ((1, 37, 5, 6), "t", "NCHW", "uint64"),
                                                       ((2, 70), "t", "NC", "uint32")])
def test_bitpack_matches_numpy(shape, bits, layout, word):
    x, _ = inputs(np.random.default_rng(len(shape)), shape, bits)
    ternary = bits == "t"
    xt = te.placeholder(shape, "float32", "x")
    out = bs.bitpack(xt, 1 if ternary else bits, word, layout, ternary)
    got = run(build([xt], out, schedule_bitpack), [x], out)
    np.testing.assert_array_equal(got, bs.pack_activations_np(x, 1 if ternary else bits, word, layout, ternary))


@pytest.mark.parametrize("shape, bits, word", [((1, 8, 5, 6, 8), "t", "uint64"),  # whole words: lanes vectorized
                                               ((2, 4, 3, 3, 8), 2, "uint32"),
                                               ((1, 2, 3, 4, 8), 1, "uint64")])  # 16 channels: a partial word
def test_bitpack_of_a_blocked_tensor_matches_numpy(shape, bits, word):
    """Packing NCHW[L]c directly = packing its NCHW form (channel b·L + l is lane l of block b)."""
    x, _ = inputs(np.random.default_rng(len(shape)), shape, bits)
    ternary = bits == "t"
    xt = te.placeholder(shape, "float32", "x")
    out = bs.bitpack(xt, 1 if ternary else bits, word, "NCHWc", ternary)
    got = run(build([xt], out, schedule_bitpack), [x], out)
    n, blocks, h, w, lanes = shape
    nchw = x.transpose(0, 1, 4, 2, 3).reshape(n, blocks * lanes, h, w)
    np.testing.assert_array_equal(got, bs.pack_activations_np(nchw, 1 if ternary else bits, word, "NCHW", ternary))


@pytest.mark.parametrize("c, h, w, pool, stride", [(64, 8, 8, 2, 2), (130, 9, 7, 3, 2), (20, 6, 6, 2, 1)])
def test_bitpool_is_max_pool_of_pm1(c, h, w, pool, stride):
    """OR of packed bits = max pooling of the ±1 values (reference: numpy max pool, then packed)."""
    x = np.random.default_rng(c).standard_normal((1, c, h, w)).astype("float32")
    s = np.where(x >= 0, 1.0, -1.0)
    oh, ow = (h - pool) // stride + 1, (w - pool) // stride + 1
    pooled = np.full((1, c, oh, ow), -np.inf)
    for dy in range(pool):
        for dx in range(pool):
            window = s[:, :, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride]
            pooled = np.maximum(pooled, window)
    data = te.placeholder((1, h, w, 1, bs.num_words(c, "uint64")), "uint64", "data")
    out = bs.bitpool(data, (pool, pool), (stride, stride))
    got = run(build([data], out, schedule_bitpool), [bs.pack_activations_np(x)], out)
    np.testing.assert_array_equal(got, bs.pack_activations_np(pooled))


def test_relax_module_binary_layers_match_numpy():
    """pack -> conv with threshold (packed sign bits out) -> conv (float) ; pack -> dense, in Relax."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 40, 8, 8)).astype("float32")
    w1 = rng.standard_normal((48, 40, 3, 3)).astype("float32")
    w2 = rng.standard_normal((16, 48, 3, 3)).astype("float32")
    thr = rng.integers(-20, 20, 48).astype("int32")
    flip = rng.integers(0, 2, 48).astype("int32")
    v = rng.integers(0, 4, (2, 90)).astype("float32")
    wd = rng.standard_normal((10, 90)).astype("float32")

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    vv = relax.Var("v", relax.TensorType(v.shape, "float32"))
    with bb.function("main", [xv, vv]):
        with bb.dataflow():
            a = bs.emit_bitpack(bb, xv)
            a = bs.emit_bitserial_conv2d(bb, a, w1, padding=(1, 1), threshold=thr, flip=flip)
            y = bs.emit_bitserial_conv2d(bb, a, w2, strides=(2, 2), padding=(1, 1), out_dtype="float32")
            d = bs.emit_bitserial_dense(bb, bs.emit_bitpack(bb, vv, act_bits=2, layout="NC"), wd)
            out = bb.emit_output(relax.Tuple([y, d]))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=TARGET.tvm_target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got_y, got_d = (t.numpy() for t in vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(v)))

    dot1 = ref_conv(signs(x), signs(w1), 1, (1, 1, 1, 1))
    a1 = np.where(flip != 0, dot1 <= thr, dot1 >= thr)  # NHWC bits, 1 = +1
    want_y = ref_conv(np.where(a1, 1, -1).transpose(0, 3, 1, 2), signs(w2), 2, (1, 1, 1, 1))
    np.testing.assert_array_equal(got_y, want_y.astype("float32"))
    np.testing.assert_array_equal(got_d, v.astype(np.int64) @ signs(wd).T)


def test_reforge_build_schedules_the_operators():
    """Through reforge's own build (fusion, default schedules): the bit-serial PrimFuncs stay whole
    (opaque to FuseOps) and get their own schedules; a bias + ReLU after them fuses on its own."""
    from reforge.build import build

    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 40, 8, 8)).astype("float32")
    w = rng.standard_normal((64, 40, 3, 3)).astype("float32")
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bs.emit_bitserial_conv2d(bb, bs.emit_bitpack(bb, xv), w, padding=(1, 1), out_dtype="float32")
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, relax.const(np.ones(64, "float32")))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex, report = build(bb.get(), TARGET)
    assert report.schedules["bitpack"] == 1 and report.schedules["bitserial_conv2d"] == 1
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = np.maximum(ref_conv(signs(x), signs(w), 1, (1, 1, 1, 1)) + 1, 0)
    np.testing.assert_array_equal(got, want.astype("float32"))


@pytest.mark.parametrize("name", ["x86-avx2", "x86-avx512"])  # compiled only: the assembly is the check
def test_conv_kernel_uses_vector_popcount(name):
    """The schedule's point: the popcount runs on vectors of output channels, not scalar popcnt; with
    AVX-512 VPOPCNTDQ, ``vpopcntq`` on 512-bit registers."""
    target = backends.get(name)
    data = te.placeholder((1, 14, 14, 1, 4), "uint64", "data")
    weight = te.placeholder((3, 3, 4, 256), "uint64", "weight")
    border = te.placeholder((3, 3, 256), "int32", "border")
    out = bs.bitserial_conv2d(data, weight, border, (1, 1), (1, 1, 1, 1))
    func = schedule_bitserial_conv2d(te.create_prim_func([data, weight, border, out]),
                                     bs.accumulator_lanes(target, "uint64"))
    asm = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target).mod.inspect_source("asm")
    if target.has("avx512vpopcntdq"):
        assert re.search(r"vpopcntq\s+%zmm", asm)
    else:
        assert "vpshufb" in asm and "vpsadbw" in asm  # LLVM's nibble-table popcount on ymm
    assert "\tpopcnt" not in asm
