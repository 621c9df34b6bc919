"""Hostile and broken model files: one line on stderr and exit 2 from the CLI, never a traceback, a
hang, a huge allocation or a silently wrong module. (Malformed protobuf, unsupported operators and
domains, external data outside the model's folder: tests/frontend/test_onnx_import.py.)"""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import reforge
from reforge.cli import main
from tests.helpers import conv_bn_relu_model, make_model


def _io(shape):
    return ([helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])


def _cycle():
    return make_model([helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2"),
                       helper.make_node("Identity", ["b"], ["y"], name="n3")], *_io([1, 4]))


def _dangling():
    return make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")], *_io([1, 4]))


def _huge():
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], *_io([1, 4096, 65536, 65536]))


def _huge_from_shape():
    # a shape computed from x's folds to a constant at import: the constant it sizes must fit too
    scale = helper.make_tensor("scale", TensorProto.INT64, [2], [100000, 100000000])
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Mul", ["s", "scale"], ["big"], name="scale_up"),
             helper.make_node("ConstantOfShape", ["big"], ["z"], name="fill"),
             helper.make_node("Add", ["x", "z"], ["y"], name="add")]
    return make_model(nodes, *_io([1, 4]), [scale])


def _nan_weight():
    model = conv_bn_relu_model()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0, 0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, model.graph.initializer[0].name))
    return model


def _future_opset():
    model = conv_bn_relu_model()
    model.opset_import[0].version = 99
    return model


def _truncated():
    return conv_bn_relu_model().SerializeToString()[:-40]


@pytest.mark.parametrize("make, message", [
    (_cycle, r"node 'n1' \(Add\) reads 'b' before node 'n2' produces it: the graph has a cycle"),
    (_dangling, r"node 'adder' \(Add\) reads 'ghost', which no node, graph input or initializer produces"),
    (_huge, r"tensor 'x' declares shape 1x4096x65536x65536 \(.* GiB\), more than this machine's memory"),
    (_huge_from_shape, r"node 'fill' \(ConstantOfShape\) makes 'z' of shape 100000x400000000 \(.* GiB\), more than"),
    (_nan_weight, r"initializer 'w' holds 1 NaN value \(of 108\); every output would be NaN"),
    (_future_opset, r"ONNX opset 99 is newer than this reforge supports"),
    (_truncated, r"is not a valid ONNX file"),
])
def test_hostile_model_is_refused_in_one_line(make, message, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    made = make()
    path.write_bytes(made if isinstance(made, bytes) else made.SerializeToString())
    assert main(["compile", str(path), "-o", str(tmp_path / "m.tar"), "--verify"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "m.tar").exists()


def test_batchnorm_with_zero_variance_stays_non_finite():
    """var + eps = 0 makes BatchNorm's scale infinite: no pass may fold that into finite numbers."""
    c = 3
    inits = [numpy_helper.from_array(a.astype("float32"), n) for a, n in [
        (np.random.default_rng(0).random((c, c, 3, 3)), "w"), (np.ones(c), "g"), (np.zeros(c), "b"),
        (np.zeros(c), "m"), (np.array([1.0, 0.0, 1.0]), "v")]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=0.0, name="bn")]
    model = make_model(nodes, *_io([1, c, 5, 5]), inits)
    x = np.random.default_rng(1).random((1, c, 5, 5)).astype("float32")
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    with np.errstate(all="ignore"):
        out = reforge.compile(model, opt_level=2).run({"x": x})["y"]
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ref))  # channel 1 non-finite in both
    assert not np.isfinite(out[0, 1]).any()
    finite = np.isfinite(ref)
    assert np.abs(out[finite] - ref[finite]).max() <= 1e-5 * np.abs(ref[finite]).max()
