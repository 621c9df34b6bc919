"""passes/constant_moves: reshape / permute_dims / layout_transform of constants evaluated in numpy
give the module TVM's FoldConstant gives (the same constants bit for bit), with no LLVM build for
them; what numpy does not evaluate is still folded by TVM."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, tirx

from reforge import backends
from reforge.frontend import load
from reforge.passes.constant_moves import fold_constant_moves, fold_constants, layout_transform_value
from reforge.passes.graph import ops_histogram
from tests.helpers import conv_relu_model


def _module(make_body, *consts: np.ndarray) -> tvm.IRModule:
    """``main(x)`` returning ``x + make_body(emit, constants)`` (each flattened), so every fold is used."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1,), str(consts[0].dtype)))
    with bb.function("main", [x]):
        with bb.dataflow():
            outs = [bb.emit(e) for e in make_body(bb.emit, [relax.const(c) for c in consts])]
            flat = [bb.emit(relax.op.reshape(o, (-1,))) for o in outs]
            out = bb.emit_output(relax.op.concat([bb.emit(relax.op.add(f, x)) for f in flat]))
        bb.emit_func_output(out)
    return bb.get()


@pytest.fixture
def llvm_builds():
    """Every LLVM build FoldConstant asks for (TVM looks ``tirx.build`` up by name when it folds)."""
    seen, build = [], tvm.get_global_func("tirx.build")
    tvm.register_global_func("tirx.build", lambda *args: seen.append(args[0]) or build(*args), override=True)
    try:
        yield seen
    finally:
        tvm.register_global_func("tirx.build", build, override=True)


BLOCK16 = tirx.IndexMap.from_func(lambda o, i, h, w: [o // 16, i // 16, h, w, i % 16, o % 16])
CHANNELS4 = tirx.IndexMap.from_func(lambda n, c, h, w: [n, c // 4, h, w, c % 4])


@pytest.mark.parametrize("case", ["blocked weight", "padded channels", "bias", "reshape", "permute", "chain",
                                  "int8 pad value"])
def test_moves_fold_like_tvm_bit_for_bit(case, llvm_builds):
    rng = np.random.default_rng(len(case))
    w = rng.standard_normal((32, 48, 3, 3)).astype("float32")
    bodies = {
        "blocked weight": (lambda e, c: [relax.op.layout_transform(c[0], BLOCK16)], [w]),
        # 10 channels in blocks of 4: two padded positions per block row hold the pad value
        "padded channels": (lambda e, c: [relax.op.layout_transform(c[0], CHANNELS4, pad_value=-2.5)],
                            [rng.standard_normal((1, 10, 3, 3)).astype("float32")]),
        "bias": (lambda e, c: [relax.op.layout_transform(c[0], CHANNELS4)],
                 [rng.standard_normal((1, 12, 1, 1)).astype("float32")]),
        "reshape": (lambda e, c: [relax.op.reshape(c[0], (32, 432))], [w]),
        "permute": (lambda e, c: [relax.op.permute_dims(c[0], [1, 0, 3, 2]), relax.op.permute_dims(c[0])], [w]),
        "chain": (lambda e, c: [relax.op.layout_transform(e(relax.op.reshape(c[0], (1, 12, 1, 1))), CHANNELS4)],
                  [rng.standard_normal(12).astype("float32")]),
        "int8 pad value": (lambda e, c: [relax.op.layout_transform(c[0], CHANNELS4, pad_value=7)],
                           [rng.integers(-128, 127, (1, 6, 2, 2)).astype("int8")]),
    }
    make, consts = bodies[case]
    mod = _module(make, *consts)
    reference = relax.transform.FoldConstant()(mod)
    assert len(llvm_builds) >= 1  # TVM compiled the moves
    llvm_builds.clear()
    moved = fold_constant_moves(mod)
    assert not {"reshape", "permute_dims", "layout_transform"} & set(ops_histogram(moved))
    assert tvm_ffi.structural_equal(fold_constants(mod), reference)
    assert llvm_builds == []  # numpy evaluated them all


def test_layout_transform_value_padding_and_refusals():
    x = np.arange(10, dtype="float32").reshape(1, 10, 1, 1)
    out = layout_transform_value(x, CHANNELS4, (1, 3, 1, 1, 4), None)
    np.testing.assert_array_equal(out.reshape(-1), np.r_[np.arange(10), 0, 0].astype("float32"))
    # an index expression numpy is not given (truncated division) or an index past the output: not evaluated
    truncated = tirx.IndexMap.from_func(lambda n, c, h, w: [n, tirx.truncdiv(c, 4), h, w, tirx.truncmod(c, 4)])
    assert layout_transform_value(x, truncated, (1, 3, 1, 1, 4), None) is None
    assert layout_transform_value(x, CHANNELS4, (1, 2, 1, 1, 4), None) is None


def test_compiled_module_is_the_one_tvm_folding_gave(monkeypatch):
    """A conv net through the blocked layout (weights and biases packed, 5 and 20 channels padded)
    lowers to the same scheduled module, constants included, as with TVM's FoldConstant alone."""
    import reforge.build as build
    from reforge.build import BuildReport

    target = backends.get("x86")
    mod = load(conv_relu_model(5, 20, 1, 3)).mod
    ours = target.lower(mod, BuildReport())
    monkeypatch.setattr(build, "fold_constants", relax.transform.FoldConstant())
    theirs = target.lower(mod, BuildReport())
    assert tvm_ffi.structural_equal(ours, theirs)
