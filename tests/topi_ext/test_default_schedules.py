"""Default schedules through reforge.compile: every layer shape a CNN has, against PyTorch, and the
build report saying which rule scheduled what. Tolerance: max|err| <= 1e-4 * max|ref|."""

import numpy as np
import pytest
import torch
from torch import nn

import reforge
from reforge import backends
from reforge.topi_ext.layouts import grouped_blocks


class Block(nn.Module):
    """conv-BN-ReLU, a residual add, max and average pooling, a grouped and a depthwise conv,
    a conv1d and a dense head: one of each kind of fused function."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Conv2d(16, 16, 3, 1, 1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.grouped = nn.Conv2d(16, 24, 3, 1, 1, groups=4)
        self.depthwise = nn.Conv2d(24, 24, 3, 1, 1, groups=24)
        self.head = nn.Linear(24, 10)

    def forward(self, image):
        y = self.stem(image)
        y = torch.relu(self.body(y) + y)
        y = self.depthwise(self.grouped(self.pool(y)))
        return self.head(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


class Signal(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(4, 16, 9, padding=4), nn.ReLU(), nn.AvgPool1d(2),
                                  nn.Conv1d(16, 16, 5, groups=16), nn.ReLU())

    def forward(self, signal):
        return self.conv(signal).mean(-1)


@pytest.mark.parametrize("module, name, shape", [(Block, "image", (2, 3, 33, 31)), (Signal, "signal", (1, 4, 100))])
def test_scheduled_model_matches_torch(module, name, shape):
    torch.manual_seed(0)
    net = module().eval()
    art = reforge.compile(net, input_shapes={name: shape})
    rules = art.manifest["build"]["schedules"]
    assert rules.get("none", 0) == 0, rules  # every fused function got a schedule
    if module is Block:
        # the layout policy at this CPU's lanes: the stem and body convs and the depthwise conv blocked (16 and 24
        # channels hold blocks of >= 4), the grouped conv where its groups fit the blocks around it (AVX-512's
        # blocks of 16 and 12 channels, not AVX2's 8), the dense a matmul
        grouped = grouped_blocks(16, 24, 4, backends.get("x86").vector_lanes()) is not None
        blocked = {"conv2d_nchwc": 2, "depthwise_nchwc": 1, "matmul": 1}
        blocked |= {"grouped_conv2d_nchwc": 1} if grouped else {}
        assert {k: v for k, v in rules.items() if k != "generic"} == blocked, rules
        # one transform into the blocked layout at the input, one out of it before the pooled head; a grouped conv
        # left in NCHW takes one each way around it
        assert art.manifest["build"]["layout_transforms"] == (2 if grouped else 4), art.manifest["build"]
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = art.run({name: x})["output0"]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_silu_over_a_concat_in_narrow_channel_blocks_is_vectorized_per_block():
    """MixNet's concat of two depthwise outputs in blocks of 15 channels (on 16 lanes), a per-channel scale and shift
    (its BatchNorm) and SiLU: the scale-and-shift, loaded twice by x · sigmoid(x) and too long to inline, is computed
    one 15-lane vector at a time inside the SiLU's loop (no pass over the tensor in memory), both vectorized; the
    result against numpy within 1e-6 relative (the 16-lane sigmoid is within 2e-7)."""
    import tvm
    from tvm import te, topi

    from reforge.machine import AVX512
    from reforge.topi_ext.fast_math import vectorizable_math
    from reforge.topi_ext.schedules.cpu import cpu_rule_schedule

    shape = (1, 3, 5, 6, 15)
    i64 = lambda dims: [tvm.tirx.IntImm("int64", d) for d in dims]  # noqa: E731  (the importer's shapes)
    a, b = te.placeholder(i64(shape), name="depthwise_a"), te.placeholder(i64(shape), name="depthwise_b")
    scale, shift = (te.placeholder(i64((1, 6, 1, 1, 15)), name=n) for n in ("bn_scale", "bn_shift"))
    cat = topi.concatenate([a, b], axis=1)
    y = te.compute(cat.shape, lambda n, c, h, w, l: cat[n, c, h, w, l] * scale[n, c, 0, 0, l] + shift[n, c, 0, 0, l])
    out = te.compute(y.shape, lambda *i: y(*i) * te.sigmoid(y(*i)), name="silu")
    func = vectorizable_math(te.create_prim_func([a, b, scale, shift, out]))
    sch, rule = cpu_rule_schedule(func, AVX512)
    assert rule == "generic"
    script = sch.mod["main"].script()
    assert script.count("T.vectorized(T.int64(15))") == 2, script
    shifted = [blk for blk in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(blk).name_hint != "silu"]
    assert len(shifted) == 1  # kept, not inlined
    extents = [int(sch.get(loop).extent) for loop in sch.get_loops(shifted[0])]
    assert extents[:4] == [1, 6, 5, 6] and extents[-1] == 15 and set(extents[4:-1]) <= {1}  # in the SiLU's rows
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(shape).astype("float32") for _ in range(2)]
    args += [rng.standard_normal((1, 6, 1, 1, 15)).astype("float32") for _ in range(2)]
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target="llvm")
    result = tvm.runtime.tensor(np.zeros((1, 6, 5, 6, 15), "float32"))
    lib["main"](*[tvm.runtime.tensor(x) for x in args], result)
    z = np.concatenate(args[:2], axis=1) * args[2] + args[3]
    ref = z / (1 + np.exp(-z))
    assert np.abs(result.numpy() - ref).max() <= 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_a_pooling_reads_its_padded_input_in_place(pool):
    """A blocked 3×3 stride-2 pooling with padding 1 (ResNet's stem pool, Inception's average branch at stride 1
    alike): the pad is inlined into the window (a select per loaded vector, no padded copy of the map), and the
    result matches torch's pooling of the NCHW tensor exactly (max) / within 1e-6 relative (average)."""
    import tvm
    from tvm import relax

    from reforge.machine import AVX512
    from reforge.topi_ext.schedules.cpu import cpu_rule_schedule

    shape = (1, 2, 13, 11, 16)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        op = relax.op.nn.max_pool2d if pool == "max" else relax.op.nn.avg_pool2d
        out = bb.emit(op(x, (3, 3), (2, 2), (1, 1, 1, 1), layout="NCHW16c", out_layout="NCHW16c"))
        bb.emit_func_output(out)
    legal = relax.transform.LegalizeOps()(bb.get())
    func = next(f for gv, f in legal.functions_items() if gv.name_hint != "main")
    sch, rule = cpu_rule_schedule(func, AVX512)
    assert rule == "generic"
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    assert not any("pad" in n for n in names), names
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target="llvm")
    data = np.random.default_rng(2).standard_normal(shape).astype("float32")
    result = tvm.runtime.tensor(np.zeros((1, 2, 7, 6, 16), "float32"))
    lib["main"](tvm.runtime.tensor(data), result)
    nchw = torch.from_numpy(data.transpose(0, 1, 4, 2, 3).reshape(1, 32, 13, 11))
    with torch.no_grad():
        ref = (torch.nn.functional.max_pool2d(nchw, 3, 2, 1) if pool == "max" else
               torch.nn.functional.avg_pool2d(nchw, 3, 2, 1, count_include_pad=False)).numpy()
    got = result.numpy().transpose(0, 1, 4, 2, 3).reshape(1, 32, 7, 6)
    if pool == "max":
        assert np.array_equal(got, ref)
    else:
        assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
