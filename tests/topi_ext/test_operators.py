"""The operator registry (topi_ext/operators.py): every operator reforge's passes emit is registered,
with the op_pattern its PrimFunc carries; an unknown kind is one clear error; each registered CPU
schedule is the schedule whose numerics the kernel tests check against numpy (test_bitserial.py,
test_wht.py; test_fft_conv.py's test_mix_operator runs the FFT mix through the registry)."""

import pytest
import tvm
from tvm import relax, te, tirx

from reforge.errors import ReforgeError
from reforge.machine import AVX2, AVX512
from reforge.topi_ext import bitserial as bs, channel_norm, fft_conv, fplus, sparse_dense, sparse_nchwc, wht
from reforge.topi_ext.op_kind import op_kind, tag
from reforge.topi_ext.operators import lookup, register_op, registered, schedule_operator
from reforge.topi_ext.schedules.bitserial import (schedule_bitpack, schedule_bitpool, schedule_bitserial_conv2d,
                                                  schedule_bitserial_dense)
from reforge.topi_ext.schedules.wht import schedule_wht

EMITTED = {bs.CONV, bs.DENSE, bs.PACK, bs.POOL, fft_conv.MIX_OP, wht.OP, fplus.OP, channel_norm.OP,
           sparse_nchwc.OP, sparse_dense.OP}


def test_every_emitted_operator_is_registered():
    assert set(registered()) == EMITTED


def test_an_unknown_kind_is_one_clear_error():
    with pytest.raises(ReforgeError, match="unknown reforge operator 'no_such_op' \\(registered: bitpack"):
        lookup("no_such_op")
    with pytest.raises(ReforgeError, match="unknown reforge operator 'no_such_op'"):
        schedule_operator(tirx.PrimFunc([], tirx.Evaluate(0)).with_attr("reforge.op", "no_such_op"), AVX2)


def test_a_kind_registers_once_and_for_known_backends():
    with pytest.raises(ReforgeError, match="'wht' is registered twice"):
        register_op(wht.OP, compute=wht.wht, emit=wht.emit_wht)
    with pytest.raises(ReforgeError, match="unknown backends \\['tpu'\\]"):
        register_op("new_op", compute=wht.wht, emit=wht.emit_wht, schedules={"tpu": schedule_wht})
    assert "new_op" not in registered()


def _emitted(emit, *args):
    """The PrimFunc ``emit`` adds to a Relax module for an input of shape ``args[0]``."""
    bb = relax.BlockBuilder()
    shape, dtype, *rest = args
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        bb.emit_func_output(emit(bb, x, *rest))
    return next(f for _, f in bb.get().functions_items() if isinstance(f, tirx.PrimFunc))


def test_the_pattern_comes_from_the_registry():
    funcs = [fft_conv.mix_prim_func(2, 3, 4, 5), wht.wht_prim_func((1, 8, 4), "float32", 8)[0],
             sparse_dense.prim_func(2, 8, 4, 3), _emitted(bs.emit_bitpool, (1, 4, 4, 1, 1), "uint64"),
             _emitted(fplus.emit_fplus, (1, 4), "float32")]
    for func in funcs:
        op = lookup(op_kind(func))
        assert int(func.attrs["op_pattern"]) == op.pattern, op.kind
    assert lookup(channel_norm.OP).pattern is None


def _same(registry_func, direct_func):
    tvm.ir.assert_structural_equal(registry_func.with_attr("tirx.is_scheduled", True), direct_func)


@pytest.mark.parametrize("machine", [AVX2, AVX512])
def test_bitserial_schedules_are_the_tested_ones(machine):
    lanes = machine.lanes(64)
    data = te.placeholder((1, 9, 9, 2, 1), "uint64", "data")  # ternary: sign and mask planes
    weight = te.placeholder((3, 3, 1, 16), "uint64", "weight")
    conv = tag(te.create_prim_func([data, weight, bs.bitserial_conv2d(data, weight, None, (1, 1), (0, 0, 0, 0),
                                                                                ternary=True)]),
               bs.CONV)
    _same(schedule_operator(conv, machine)[0].mod["main"], schedule_bitserial_conv2d(conv, lanes))
    x, w = te.placeholder((2, 1, 1), "uint64", "x"), te.placeholder((1, 12), "uint64", "w")
    dense = tag(te.create_prim_func([x, w, bs.bitserial_dense(x, w, 64)]), bs.DENSE)
    _same(schedule_operator(dense, machine)[0].mod["main"], schedule_bitserial_dense(dense, lanes))
    f = te.placeholder((1, 64, 6, 6), "float32", "f")
    pack = tag(te.create_prim_func([f, bs.bitpack(f)]), bs.PACK)
    _same(schedule_operator(pack, machine)[0].mod["main"], schedule_bitpack(pack, lanes))
    packed = te.placeholder((1, 6, 6, 1, 1), "uint64", "packed")
    pool = tag(te.create_prim_func([packed, bs.bitpool(packed)]), bs.POOL)
    _same(schedule_operator(pool, machine)[0].mod["main"], schedule_bitpool(pool, lanes))


def test_wht_schedule_is_the_tested_one():
    func, _out = wht.wht_prim_func((2, 16, 12), "float32", 16)
    _same(schedule_operator(func, AVX2)[0].mod["main"], schedule_wht(func, AVX2))


def test_operators_emitted_scheduled_stay_as_emitted():
    func = sparse_dense.prim_func(2, 8, 4, 3)
    sch, kind = schedule_operator(func, AVX2)
    assert kind == sparse_dense.OP
    tvm.ir.assert_structural_equal(sch.mod["main"], func)
    assert schedule_operator(func, None, "cuda") is None  # other backends schedule it their way
    assert schedule_operator(_emitted(fplus.emit_fplus, (1, 4), "float32"), AVX2) is None  # the generic rules
