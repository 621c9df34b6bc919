"""``x @ W`` with a constant W, legalized to the packed-panel dense operator and scheduled, against numpy.

Tolerance: max|out - ref| <= 1e-5 * max|ref| (fp32, the same sums in another order)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import reforge
from reforge import backends
from reforge.topi_ext.dense_packed import pack_weight, panel_width

RTOL = 1e-5


def matmul_model(rows: tuple[int, ...], k: int, n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype("float32")
    b = rng.standard_normal(n).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["y"]),
         helper.make_node("Relu", ["y"], ["out"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*rows, k])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [*rows, n])],
        [helper.make_tensor("W", TensorProto.FLOAT, [k, n], w.ravel()),
         helper.make_tensor("B", TensorProto.FLOAT, [n], b)])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString(), w, b


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512"])  # 8- and 16-lane vectors
@pytest.mark.parametrize("rows, k, n, rule", [
    ((1,), 512, 1000, "dense_packed"),  # a classifier: panels of 5 vectors (AVX-512: of 8-float halves)
    ((3,), 96, 64, "dense_packed"),  # rows sharing a panel pass, a row tile of 3
    ((2, 5), 40, 24, "dense_packed"),  # batch dimensions fused into rows
    ((1,), 64, 10, "matmul"),  # 10 outputs: not whole vectors, TVM's legalization
])
def test_constant_matmul_matches_numpy(tmp_path, target, rows, k, n, rule):
    """Every case is compiled for both widths; it runs where this CPU can (AVX2: everywhere CI runs)."""
    model, w, b = matmul_model(rows, k, n, seed=k + n)
    path = tmp_path / "dense.onnx"
    path.write_bytes(model)
    art = reforge.compile(str(path), target)
    assert art.manifest["build"]["schedules"].get(rule) == 1
    if target == "x86-avx512" and not backends.get(target).runs_on_host_cpu():
        return
    x = np.random.default_rng(0).standard_normal((*rows, k)).astype("float32")
    ref = np.maximum(x @ w + b, 0)
    (out,) = art.run({"x": x}).values()
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()


def test_a_cropped_dense_keeps_the_crop_out_of_its_tiles(tmp_path):
    """x @ W then a slice of its first 44 of 48 columns (as fft-conv crops its DFT products): the crop
    stays a block of its own, the tiles write whole panels."""
    model, w, b = matmul_model((8,), 32, 48, seed=3)  # tiles of 4 rows x 2 vectors: the crop ends inside one
    proto = onnx.load_from_string(model)
    starts, ends, axes = (helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
                          (("starts", 0), ("ends", 44), ("axes", 1)))
    proto.graph.initializer.extend([starts, ends, axes])
    proto.graph.node.append(helper.make_node("Slice", ["out", "starts", "ends", "axes"], ["crop"]))
    proto.graph.output[0].CopyFrom(helper.make_tensor_value_info("crop", TensorProto.FLOAT, [8, 44]))
    path = tmp_path / "crop.onnx"
    path.write_bytes(proto.SerializeToString())
    art = reforge.compile(str(path))
    assert art.manifest["build"]["schedules"].get("dense_packed") == 1
    x = np.random.default_rng(0).standard_normal((8, 32)).astype("float32")
    ref = np.maximum(x @ w + b, 0)[:, :44]
    (out,) = art.run({"x": x}).values()
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()


@pytest.mark.parametrize("n, lanes, width", [
    (1000, 8, 40), (4096, 8, 64), (24, 8, 24), (10, 8, None), (48, 16, 48),
    (1000, 16, 40), (24, 16, 24), (12, 8, 12), (10, 16, None),  # half / quarter vectors where whole ones do not divide
])
def test_panel_width(n, lanes, width):
    assert panel_width(n, lanes) == width


def test_pack_weight_is_panel_major():
    w = np.arange(12, dtype="float32").reshape(3, 4)  # K = 3, N = 4
    packed = pack_weight(w, 2)
    assert packed.shape == (2, 3, 2)
    assert np.array_equal(packed[1], w[:, 2:4])  # panel 1: columns 2-3, every k, contiguous
