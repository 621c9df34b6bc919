"""The separable bilinear resize2d (topi_ext/resize.py) and its CPU rule: ONNX Resize graphs compiled for x86 against
onnxruntime (tolerance max|out − ref| / max|ref| <= 1e-5: TVM's coordinates in float32), up- and downsampling, each
coordinate mode it takes; the resizes it does not take (nearest, cubic) legalize as TVM does; and against TVM's own
resize2d on the same module, where it computes the same lerps (<= 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import relax

import reforge
from reforge.topi_ext import resize
from tests.helpers import Harness, first_output, max_rel_err, seed_of

N = helper.make_node
RTOL = 1e-5


@pytest.fixture(scope="module")
def harness() -> Harness:
    return Harness()


def resize_model(harness, c, hw, out_hw, mode="linear", coords="half_pixel"):
    node = N("Resize", ["x", "", "", "size"], ["y"], mode=mode, coordinate_transformation_mode=coords)
    return harness.model([node], {"x": (1, c, *hw)}, {"size": np.array([1, c, *out_hw], "int64")})


@pytest.mark.parametrize("coords", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize("c,hw,out_hw", [(21, (14, 14), (224, 224)), (5, (9, 13), (20, 7)), (3, (16, 16), (8, 40))])
def test_bilinear_resize_matches_onnxruntime(coords, c, hw, out_hw, harness):
    rng = np.random.default_rng(seed_of(f"resize-{coords}-{c}"))
    model = resize_model(harness, c, hw, out_hw, coords=coords)
    art = reforge.compile(model)
    assert art.manifest["build"]["schedules"].get("resize2d") == 1
    x = rng.standard_normal((1, c, *hw)).astype("float32")
    assert max_rel_err(first_output(art, x), harness.onnxruntime(model, {"x": x})[0]) <= RTOL


@pytest.mark.parametrize("mode", ["nearest", "cubic"])
def test_other_resizes_legalize_as_tvm_does(mode, harness):
    rng = np.random.default_rng(seed_of(f"resize-{mode}"))
    model = resize_model(harness, 4, (6, 6), (12, 12), mode=mode, coords="asymmetric")
    art = reforge.compile(model)
    assert "resize2d" not in art.manifest["build"]["schedules"]
    x = rng.standard_normal((1, 4, 6, 6)).astype("float32")
    assert max_rel_err(first_output(art, x), harness.onnxruntime(model, {"x": x})[0]) <= RTOL


@pytest.mark.parametrize("layout,shape", [("NCHW", (1, 6, 7, 9)), ("NCHW16c", (1, 2, 7, 9, 16))])
def test_separable_equals_tvm_resize(layout, shape):
    """The two passes against TVM's topi.image.resize2d on the same input, NCHW and blocked."""
    rng = np.random.default_rng(seed_of(f"resize-tvm-{layout}"))
    x = rng.standard_normal(shape).astype("float32")
    data = tvm.te.placeholder(shape, "float32", "x")
    ours = tvm.te.create_prim_func([data, resize.resize2d_separable(data, 19, 30, "half_pixel")])
    theirs = tvm.te.create_prim_func([data, tvm.topi.image.resize2d(data, (0.0, 0.0, 0.0, 0.0), (19, 30), layout,
                                                                  "linear", "half_pixel")])
    outs = []
    for func in (ours, theirs):
        lib = tvm.compile(func, target="llvm")
        out = tvm.runtime.tensor(np.zeros((*shape[:2], 19, 30, *shape[4:]), "float32"))
        lib(tvm.runtime.tensor(x), out)
        outs.append(out.numpy())
    assert max_rel_err(outs[0], outs[1]) <= 1e-6


def test_applies_only_to_static_bilinear_float32():
    bb = relax.BlockBuilder()

    def call(dtype="float32", **attrs):
        x = relax.Var("x", relax.TensorType([1, 4, 6, 6], dtype))
        return bb.normalize(relax.op.image.resize2d(x, (12, 12), **attrs))

    assert resize.applies(call(method="linear"))
    assert not resize.applies(call(method="nearest_neighbor"))
    assert not resize.applies(call(method="linear", coordinate_transformation_mode="tf_crop_and_resize"))
    assert not resize.applies(call("float16", method="linear"))
