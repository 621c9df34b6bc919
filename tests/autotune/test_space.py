"""reforge's design spaces: every sampled candidate of the blocked conv, blocked grouped (block groups and the
rotated form of narrow groups) and depthwise conv,
Winograd conv, FFT channel mix and channel-wise fast WHT is a valid schedule that computes what the unscheduled function
computes (1e-5 relative, fp32: the same sums in another order), the knob really varies across samples,
and a candidate's trace replays to the same function (how records are applied)."""

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, topi
from tvm.s_tir import meta_schedule as ms

from reforge import backends
from reforge.autotune import intrinsics
from reforge.autotune.space import space_for
from reforge.topi_ext import fft_conv, wht, winograd_nchwc
from reforge.topi_ext.conv2d_nchwc import conv2d_nchwc
from reforge.topi_ext.depthwise_nchwc import depthwise_conv2d_nchwc
from reforge.topi_ext.grouped_nchwc import grouped_conv2d_nchwc, rotated_grouped_conv2d_nchwc

TARGET = backends.get("x86")
MACHINE = TARGET.machine
SAMPLES = 12
intrinsics.load_for(TARGET.kind)  # else the first TuneContext imports every target's (~41 s)
RTOL = 1e-5


def blocked_conv():
    data = te.placeholder((1, 2, 14, 14, 8), name="data")
    kernel = te.placeholder((4, 2, 3, 3, 8, 8), name="kernel")
    out = topi.nn.relu(conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1), "float32"))
    return te.create_prim_func([data, kernel, out])


def blocked_grouped():
    """2 block groups of 2 input chunks and 4 output chunks each."""
    data = te.placeholder((1, 4, 14, 14, 8), name="data")
    kernel = te.placeholder((8, 2, 3, 3, 8, 8), name="kernel")
    out = topi.nn.relu(grouped_conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1), "float32"))
    return te.create_prim_func([data, kernel, out])


def rotated_grouped():
    """Groups of 4 on 16 lanes in the rotated form (its kernel (O/x, kh, kw, shifts, x) given)."""
    data = te.placeholder((1, 2, 12, 12, 16), name="data")
    kernel = te.placeholder((2, 3, 3, 4, 16), name="kernel")
    out = topi.nn.relu(rotated_grouped_conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1), "float32"))
    return te.create_prim_func([data, kernel, out])


def blocked_depthwise():
    data = te.placeholder((1, 4, 24, 24, 8), name="data")
    kernel = te.placeholder((4, 1, 3, 3, 1, 8), name="kernel")
    out = topi.nn.relu(depthwise_conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1), "float32"))
    return te.create_prim_func([data, kernel, out])


def blocked_winograd():
    data = te.placeholder((1, 4, 11, 10, 8), name="data")
    u = te.placeholder((4, 4, 4, 4, 8, 8), name="u")
    out = topi.nn.relu(winograd_nchwc.conv2d_winograd_nchwc(data, u, (1, 1, 1, 1), "float32"))
    return te.create_prim_func([data, u, out])


def channel_wht():
    func, _out = wht.wht_prim_func((1, 64, 48), "float32", 64, 0.125)
    return func


FUNCS = {"conv2d_nchwc": blocked_conv, "grouped_conv2d_nchwc": blocked_grouped, "rotated grouped": rotated_grouped,
         "depthwise_nchwc": blocked_depthwise,
         "winograd_nchwc": blocked_winograd, "fft mix": lambda: fft_conv.mix_prim_func(4, 12, 16, 16),
         "wht over channels": channel_wht}


def run(func, arrays):
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET.tvm_target)
    args = [tvm.runtime.tensor(a) for a in arrays[:-1]] + [tvm.runtime.tensor(np.zeros_like(arrays[-1]))]
    lib["main"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize("name", FUNCS)
def test_sampled_candidates_are_valid_varied_and_replay(name):
    func = FUNCS[name]()
    mod = tvm.IRModule({"main": func})
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal([int(d) for d in p.shape]).astype("float32") for p in func.params]
    reference = run(func, arrays)  # TVM's plain loop nest: the same math, no schedule
    space = space_for(mod, MACHINE)
    assert not isinstance(space, str), f"{name} has no design space of its own"
    decisions = set()
    for seed in range(SAMPLES):
        context = ms.TuneContext(mod=mod, target=TARGET.tvm_target, space_generator=space, rand_state=seed)
        (sch,) = context.generate_design_space()
        decisions.add(tuple(str(v) for v in sch.trace.decisions.values()))
        got = run(sch.mod["main"], arrays)
        assert np.abs(got - reference).max() <= RTOL * np.abs(reference).max(), f"{name}, seed {seed}"
        replayed = s_tir.Schedule(func)
        sch.trace.apply_to_schedule(replayed, remove_postproc=False)
        tvm.ir.assert_structural_equal(replayed.mod, sch.mod)
    assert len(decisions) > 1, f"{name}: every sample made the same choice"
