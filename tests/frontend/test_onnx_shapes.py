"""Shapes computed from a tensor's shape (``x.size()``, ``x.chunk``, ``view(x.size(0), -1)``) fold to
constants on import once the input shapes are static, from both torch.onnx exporters.

Each network is exported by the TorchScript exporter (``dynamo=False``, opset 17) and the dynamo
exporter, with a static batch and with the batch left dynamic (then fixed by ``input_shapes``),
compiled at -O2, and compared with onnxruntime on the same file: max|out - ref| <= 1e-4 * max|ref|.
"""

from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import reforge
from reforge import ReforgeError
from reforge.frontend import load
from reforge.frontend.onnx_constants import fold_constants
from tests.helpers import make_model, quiet_torch_export

RTOL = 1e-4
SHAPE = (2, 16, 8, 8)
SHAPE_OPS = {"Shape", "Size"}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ShuffleNet-V2 channel shuffle, spelled as torchvision spells it."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


def _conv_bn_relu(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), torch.nn.BatchNorm2d(cout)]
    return torch.nn.Sequential(*layers, *([torch.nn.ReLU()] if relu else []))


class InvertedResidual(torch.nn.Module):
    """torchvision's ShuffleNet-V2 unit: split (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        self.stride = stride
        branch = oup // 2
        if stride > 1:
            self.branch1 = torch.nn.Sequential(_conv_bn_relu(inp, inp, 3, stride, inp, relu=False),
                                               _conv_bn_relu(inp, branch))
        self.branch2 = torch.nn.Sequential(_conv_bn_relu(inp if stride > 1 else branch, branch),
                                           _conv_bn_relu(branch, branch, 3, stride, branch, relu=False),
                                           _conv_bn_relu(branch, branch))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleStage(torch.nn.Module):
    """A stride-2 unit then a stride-1 unit, as in a ShuffleNet-V2 stage."""

    def __init__(self):
        super().__init__()
        self.units = torch.nn.Sequential(InvertedResidual(16, 32, 2), InvertedResidual(32, 32, 1))

    def forward(self, x):
        return self.units(x)


class SizeSlice(torch.nn.Module):
    """The channel split written as slicing by ``x.size(1) // 2``."""

    def __init__(self):
        super().__init__()
        self.conv = _conv_bn_relu(8, 8)

    def forward(self, x):
        half = x.size(1) // 2
        return torch.cat((self.conv(x[:, half:]), x[:, :half]), dim=1)


class GroupReshape(torch.nn.Module):
    """``x.reshape(b, c // g, g, h, w)`` from the unpacked shape, then back to NCHW."""

    def __init__(self, groups: int = 4):
        super().__init__()
        self.groups, self.conv = groups, _conv_bn_relu(16, 16, 3)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.conv(x).reshape(b, c // self.groups, self.groups, h, w).transpose(1, 2)
        return y.reshape(b, c, h, w) + x


class ViewHead(torch.nn.Module):
    """``x.view(x.size(0), -1)`` after a global pool, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = _conv_bn_relu(16, 24, 3), torch.nn.Linear(24, 10)

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1)
        return self.fc(x.view(x.size(0), -1))


class FlattenHead(torch.nn.Module):
    """``flatten(1)`` after an adaptive pool to 2x2."""

    def __init__(self):
        super().__init__()
        self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(2), torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


class SplitBySize(torch.nn.Module):
    """``torch.split`` with sizes computed from the channel count."""

    def __init__(self):
        super().__init__()
        self.conv = _conv_bn_relu(4, 4, 3)

    def forward(self, x):
        c = x.size(1)
        a, b = torch.split(x, [c // 4, c - c // 4], dim=1)
        return torch.cat((b, self.conv(a)), dim=1)


NETS = {"shufflenet_stage": ShuffleStage, "size_slice": SizeSlice, "group_reshape": GroupReshape,
        "view_head": ViewHead, "flatten_head": FlattenHead, "split_by_size": SplitBySize}


def _net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = NETS[name]()
    for module in net.modules():  # non-trivial BatchNorm statistics, so a wrong channel order shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1, 1)
    return net.eval()


def export(name: str, path, exporter: str, dynamic_batch: bool) -> None:
    net, x = _net(name), torch.randn(*SHAPE)
    with quiet_torch_export(), torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                              opset_version=17, dynamic_axes={"x": {0: "batch"}} if dynamic_batch else None)
        else:
            dims = {"x": {0: torch.export.Dim("batch", min=1, max=64)}} if dynamic_batch else None
            torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True,
                              dynamic_shapes=dims, optimize=False)


def ort_run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(NETS))
def test_shape_computation_folds_and_matches_onnxruntime(tmp_path, name, exporter, dynamic_batch):
    path = tmp_path / f"{name}.onnx"
    export(name, path, exporter, dynamic_batch)
    art = reforge.compile(str(path), input_shapes={"x": SHAPE} if dynamic_batch else None)
    x = np.random.default_rng(3).standard_normal(SHAPE).astype("float32")
    ref = ort_run(path, x)
    out = art.run({"x": x})["y"]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_no_shape_node_is_left_for_a_static_shuffle(tmp_path, exporter):
    path = tmp_path / "stage.onnx"
    export("shufflenet_stage", path, exporter, dynamic_batch=True)
    model = onnx.load(str(path))
    assert SHAPE_OPS & {n.op_type for n in model.graph.node}  # the export does compute from shapes
    folded = fold_constants(model, {"x": SHAPE})
    ops = {n.op_type for n in folded.graph.node}
    # only shape values (and the dynamo exporter's zero conv biases) used these
    assert not (SHAPE_OPS | {"Gather", "Div", "Unsqueeze", "Squeeze", "CastLike", "Expand"}) & ops


def test_undeclared_dynamic_batch_is_one_line(tmp_path):
    path = tmp_path / "stage.onnx"
    export("shufflenet_stage", path, "torchscript", dynamic_batch=True)
    fix = r"--input-shape x:1x16x8x8 \(or keep a dynamic axis 0 with --max-batch B\)$"
    with pytest.raises(ReforgeError, match=r"^input 'x' has dynamic shape \(batch, 16, 8, 8\); fix it with " + fix):
        load(str(path))


def test_a_symbolic_dim_keeps_its_shape_node():
    # Shape(x) of a (N, 3, 4) input stays; Shape(x)[1:] and the product computed from it fold.
    nodes = [helper.make_node("Shape", ["x"], ["all"], name="shape_all"),
             helper.make_node("Shape", ["x"], ["tail"], name="shape_tail", start=1),
             helper.make_node("ReduceProd", ["tail"], ["n"], name="prod", keepdims=1),
             helper.make_node("Concat", ["minus_one", "n"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"], name="flatten"),
             helper.make_node("Mul", ["all", "all"], ["sq"], name="square")]
    minus_one = helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                       [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", 12]),
                        helper.make_tensor_value_info("sq", TensorProto.INT64, [3])], [minus_one])
    folded = fold_constants(model, {"x": ("N", 3, 4)})
    assert [n.name for n in folded.graph.node] == ["shape_all", "flatten", "square"]
    target = {t.name: onnx.numpy_helper.to_array(t) for t in folded.graph.initializer}["target"]
    np.testing.assert_array_equal(target, [-1, 12])


def test_range_where_expand_and_size_on_shape_values_fold(tmp_path):
    # Channel reversal by Gather(x, C - 1 - Range(C)), a bias expanded to Where(Equal(t, -1), 1, t) with
    # t = [-1, C, 1, 1] built from Shape and ConstantOfShape, and a flatten to [N, Size(x) / N]: every
    # shape value folds once the batch is fixed, leaving Gather, Add and Reshape on x.
    def const(name, values):
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    bias = onnx.numpy_helper.from_array(np.random.default_rng(5).standard_normal((16, 1, 1)).astype("float32"), "b")
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "one"], ["c"], name="channels", axis=0),
             helper.make_node("Squeeze", ["c"], ["c0"], name="c_scalar"),
             helper.make_node("Range", ["zero_s", "c0", "one_s"], ["r"], name="range"),
             helper.make_node("Sub", ["c0", "one_s"], ["last"], name="last"),
             helper.make_node("Sub", ["last", "r"], ["idx"], name="reverse"),
             helper.make_node("Gather", ["x", "idx"], ["flip"], name="flip", axis=1),
             helper.make_node("ConstantOfShape", ["two"], ["ones"], name="ones",
                              value=helper.make_tensor("v", TensorProto.INT64, [1], [1])),
             helper.make_node("Concat", ["minus_one", "c", "ones"], ["t"], name="target", axis=0),
             helper.make_node("Equal", ["t", "minus_one"], ["is_free"], name="is_free"),
             helper.make_node("Where", ["is_free", "one", "t"], ["bias_shape"], name="where"),
             helper.make_node("Expand", ["b", "bias_shape"], ["bias"], name="expand"),
             helper.make_node("Add", ["flip", "bias"], ["z"], name="add"),
             helper.make_node("Size", ["x"], ["n"], name="size"),
             helper.make_node("Gather", ["s", "zero"], ["batch"], name="batch", axis=0),
             helper.make_node("Div", ["n", "batch"], ["per_item"], name="per_item"),
             helper.make_node("Concat", ["batch", "per_item"], ["flat_shape"], name="flat_shape", axis=0),
             helper.make_node("Reshape", ["z", "flat_shape"], ["y"], name="flatten")]
    inits = [bias, const("one", [1]), const("zero", [0]), const("two", [2]), const("minus_one", [-1]),
             helper.make_tensor("zero_s", TensorProto.INT64, [], [0]),
             helper.make_tensor("one_s", TensorProto.INT64, [], [1])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1024])], inits)
    path = tmp_path / "plumbing.onnx"
    onnx.save(model, path)
    folded = fold_constants(onnx.load(str(path)), {"x": SHAPE})
    assert [n.op_type for n in folded.graph.node] == ["Gather", "Add", "Reshape"]
    art = reforge.compile(str(path), input_shapes={"x": SHAPE})
    x = np.random.default_rng(6).standard_normal(SHAPE).astype("float32")
    ref = ort_run(path, x)
    out = art.run({"x": x})["y"]
    assert out.shape == ref.shape == (2, 1024)
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()
