"""ONNX import: names, shapes, opsets, external data, and node-named errors.

Numeric checks compare the compiled module with onnxruntime on the same file:
max|out - ref| <= 1e-4 * max|ref|.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import reforge
from reforge import ReforgeError
from reforge.frontend import load
from tests.helpers import conv_bn_relu_model, make_model


def ort_run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_matches_ort(art, path, feeds):
    ref = ort_run(path, feeds)
    out = list(art.run(feeds).values())
    for o, r in zip(out, ref):
        assert np.abs(o - r).max() <= 1e-4 * np.abs(r).max()


def test_input_names_are_kept(onnx_path):
    imported = load(onnx_path)
    assert [s.name for s in imported.inputs] == ["image.in"]
    assert imported.inputs[0].shape == (1, 3, 8, 8) and imported.outputs[0].name == "y"
    art = reforge.compile(onnx_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    assert_matches_ort(art, onnx_path, {"image.in": x})


def test_dynamic_batch_needs_and_takes_input_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(conv_bn_relu_model(batch="N"), path)
    with pytest.raises(ReforgeError, match=r"input 'image.in' has dynamic shape .*--input-shape image.in:1x3x8x8"):
        load(str(path))
    art = reforge.compile(str(path), input_shapes={"image.in": (2, 3, 8, 8)})
    assert art.inputs[0].shape == (2, 3, 8, 8)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("float32")
    assert_matches_ort(art, path, {"image.in": x})


@pytest.mark.parametrize("shapes, message", [
    ({"nope": (1, 3, 8, 8)}, r"--input-shape names unknown input 'nope'; the model's inputs are: image.in"),
    ({"image.in": (1, 3, 8)}, r"has rank 3; the model declares rank 4"),
    ({"image.in": (1, 5, 8, 8)}, r"sets axis 1 to 5; the model fixes it to 3"),
])
def test_bad_input_shapes_are_refused(onnx_path, shapes, message):
    with pytest.raises(ReforgeError, match=message):
        load(onnx_path, shapes)


def test_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(conv_bn_relu_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size > 0
    art = reforge.compile(str(path))
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype("float32")
    assert_matches_ort(art, path, {"image.in": x})


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model = conv_bn_relu_model()
    (tmp_path / "sub").mkdir()
    onnx.save_model(model, tmp_path / "sub" / "m.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    moved = onnx.load(tmp_path / "sub" / "m.onnx", load_external_data=False)
    for t in moved.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.bin"
    (tmp_path / "w.bin").write_bytes((tmp_path / "sub" / "w.bin").read_bytes())
    onnx.save(moved, tmp_path / "sub" / "m.onnx")
    with pytest.raises(ReforgeError, match=r"points to external data '../w.bin' outside the model's folder"):
        load(str(tmp_path / "sub" / "m.onnx"))


def test_old_opset_is_upgraded(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(conv_bn_relu_model(opset=11), path)
    art = reforge.compile(str(path))
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype("float32")
    assert_matches_ort(art, path, {"image.in": x})


def _one_node_model(node):
    return make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])


@pytest.mark.parametrize("node, message", [
    (helper.make_node("FrobnicateV2", ["x"], ["y"], name="block3/frob"),
     r"^unsupported ONNX op 'FrobnicateV2' at node 'block3/frob'$"),
    (helper.make_node("BipolarQuant", ["x"], ["y"], name="q0", domain="qonnx.custom_op.general"),
     r"^unsupported ONNX op 'BipolarQuant' of domain 'qonnx.custom_op.general'.* at node 'q0'$"),
    (helper.make_node("FrobnicateV2", ["x"], ["y"]), r"at node 'FrobnicateV2_0'$"),
])
def test_unsupported_operator_names_the_node(node, message):
    with pytest.raises(ReforgeError, match=message):
        load(_one_node_model(node))


def test_converter_failure_names_the_node():
    # An integer division by a constant zero is refused by TVM's converter: the error names the node.
    zero = numpy_helper.from_array(np.zeros(4, "int32"), "zero")
    model = make_model([helper.make_node("Div", ["x", "zero"], ["y"], name="head/div")],
                       [helper.make_tensor_value_info("x", TensorProto.INT32, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])], [zero])
    with pytest.raises(ReforgeError, match=r"^cannot import ONNX node 'head/div' \(Div\): .*divisor value 0"):
        load(model)


def test_importer_failure_outside_a_converter_names_the_node():
    # TopK with a shape-valued k fails in the importer's own checks: still one line naming the node.
    # (The shape of NonZero's output depends on the data, so its Shape does not fold to a constant.)
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
             helper.make_node("Shape", ["nz"], ["s"], name="shape"),
             helper.make_node("TopK", ["x", "s"], ["y", "i"], name="head/topk")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(ReforgeError, match=r"^cannot import the ONNX graph: Node head/topk cannot handle"):
        load(model)


@pytest.mark.parametrize("payload, message", [
    (b"\x08\x07\x12\xff\xff\xff", "is not a valid ONNX file"),
    (b"", "holds no ONNX graph"),
])
def test_malformed_files(tmp_path, payload, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(payload)
    with pytest.raises(ReforgeError, match=message):
        load(str(path))


def test_two_outputs_keep_their_names(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["pos"], name="r"), helper.make_node("Neg", ["x"], ["neg"], name="n")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                       [helper.make_tensor_value_info("pos", TensorProto.FLOAT, [2, 5]),
                        helper.make_tensor_value_info("neg", TensorProto.FLOAT, [2, 5])])
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(4).standard_normal((2, 5)).astype("float32")
    out = reforge.compile(str(path)).run({"x": x})
    assert list(out) == ["pos", "neg"]
    np.testing.assert_array_equal(out["pos"], np.maximum(x, 0))
    np.testing.assert_array_equal(out["neg"], -x)


def test_exporter_constant_plumbing_is_evaluated(tmp_path):
    # torch.onnx's dynamo exporter spells constants as Constant(value_ints=...) and builds a
    # conv's zero bias as Shape(w) -> Expand -> CastLike; TVM's importer takes neither as is.
    w = numpy_helper.from_array(np.random.default_rng(7).standard_normal((4, 3, 1, 1)).astype("float32"), "w")
    nodes = [helper.make_node("Constant", [], ["zero"], name="c0", value_float=0.0),
             helper.make_node("Constant", [], ["one"], name="c1", value_ints=[1]),
             helper.make_node("Shape", ["w"], ["cout"], name="shape", start=0, end=1),
             helper.make_node("Expand", ["zero", "cout"], ["bias64"], name="expand"),
             helper.make_node("CastLike", ["bias64", "x"], ["bias"], name="castlike"),
             helper.make_node("Conv", ["x", "w", "bias"], ["c"], name="conv"),
             helper.make_node("Constant", [], ["newshape"], name="c2", value_ints=[1, -1]),
             helper.make_node("Reshape", ["c", "newshape"], ["y"], name="flatten")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [w])
    path = tmp_path / "plumbing.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(8).standard_normal((1, 3, 2, 2)).astype("float32")
    assert_matches_ort(reforge.compile(str(path)), path, {"x": x})
    load(model)
    assert len(model.graph.node) == 8 and len(model.graph.initializer) == 1  # the caller's proto is untouched
