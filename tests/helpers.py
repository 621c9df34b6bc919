"""What several test modules share: the repository's paths, error measures, small ONNX and PyTorch models,
exporting, the pass-test harness, the binarized, pruned and sparse networks, and RPC devices on loopback.

Test modules import from here (and from ``tests/zoo.py``, ``tests/opencl_emulation.py`` and their own
suite's model modules), never from one another; fixtures live in the ``conftest.py`` of the folder they serve.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn.utils import prune
from tvm import relax, rpc

import reforge
from reforge import backends, frontend
from reforge.frontend.imported import ImportedModel
from reforge.frontend.qonnx import lower_qonnx
from reforge.passes.activations import read_activation
from reforge.passes.analysis import graph_stats
from reforge.passes.graph import is_const, op_name
from reforge.passes.report import PassReport
from reforge.pipeline import rewrite_and_fuse
from reforge.topi_ext import sparse_nchwc
from reforge.verify import run_module
from tests.zoo import randomize_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALLCNN = os.path.join(ROOT, "examples", "smallcnn.onnx")  # the demo model


# ----------------------------------------------------------------------------- numbers


def seed_of(name: str) -> int:
    """A stable per-test seed, so every case draws different but reproducible numbers."""
    return zlib.crc32(name.encode())


def max_rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """``max|out - ref| / max|ref|`` in float64 (shapes must already agree)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


# ----------------------------------------------------------------------------- ONNX models and exports


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="test") -> onnx.ModelProto:
    """An ONNX model (IR version 8) of ``nodes`` with the given value infos and initializers."""
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def conv_bn_relu_model(input_name="image.in", batch: int | str = 1, opset=17) -> onnx.ModelProto:
    """x -> Conv(3->4, 3x3, pad 1) -> BatchNormalization -> Relu, random weights and statistics."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w"),
             numpy_helper.from_array(rng.uniform(-1.5, 1.5, 4).astype("float32"), "gamma"),
             numpy_helper.from_array(rng.uniform(-1, 1, 4).astype("float32"), "beta"),
             numpy_helper.from_array(rng.uniform(-1, 1, 4).astype("float32"), "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype("float32"), "var")]
    nodes = [helper.make_node("Conv", [input_name, "w"], ["c"], name="stem/conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name="stem/bn"),
             helper.make_node("Relu", ["b"], ["y"], name="stem/relu")]
    return make_model(nodes, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])], inits, opset)


def conv_relu_model(cin, cout, stride, kernel, seed=0) -> onnx.ModelProto:
    """x (1, cin, 12, 12) -> Conv(cin->cout, kernel, 'same' padding, stride, bias) -> Relu, opset 13."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((cout, cin, kernel, kernel)) * 0.1).astype("float32")
    b = rng.standard_normal(cout).astype("float32")
    pad = kernel // 2
    size = 12
    out = (size + 2 * pad - kernel) // stride + 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[pad] * 4, strides=[stride] * 2),
         helper.make_node("Relu", ["y"], ["z"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, cout, out, out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@contextlib.contextmanager
def quiet_torch_export():
    """Silence the torch.onnx exporters' progress lines, deprecation warnings and missing-torchvision logs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_onnx(module: nn.Module, x: torch.Tensor, constant_folding: bool = False) -> onnx.ModelProto:
    """``module`` on input ``x`` (named "x", output "y") through the TorchScript exporter, opset 17; without
    constant folding the graph keeps the arithmetic the exporter wrote (BatchNorms, weight signs)."""
    buf = io.BytesIO()
    with quiet_torch_export():
        torch.onnx.export(module, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False,
                          opset_version=17, do_constant_folding=constant_folding)
    return onnx.load_from_string(buf.getvalue())


def onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of ``model`` on input "x" under onnxruntime, graph optimizations off (each node as
    the ONNX spec writes it)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


# ----------------------------------------------------------------------------- BatchNorm


@dataclass(frozen=True)
class Stats:
    """Marker in a params spec: random BatchNorm statistics for ``c`` channels."""

    c: int


def bn_stats(rng, c: int) -> tuple[np.ndarray, ...]:
    """(gamma, beta, mean, var) for ``c`` channels: one gamma negative, one variance near eps."""
    gamma = rng.uniform(0.3, 1.5, c) * rng.choice([-1.0, 1.0], c)
    gamma[0] = -abs(gamma[0])  # at least one negative scale
    var = rng.uniform(0.1, 2.0, c)
    var[-1] = rng.uniform(1e-4, 3e-4)  # small enough that a dropped or misplaced eps shows (>1%)
    return gamma, rng.uniform(-1, 1, c), rng.uniform(-1, 1, c), var


def make_params(spec: dict, rng) -> dict[str, np.ndarray]:
    """float32 arrays from a params spec: Stats(c) -> ``name_g/_b/_m/_v``, a shape -> normal values, a
    callable -> its value on ``rng``, anything else as given."""
    out = {}
    for name, v in spec.items():
        if isinstance(v, Stats):
            out.update(zip((f"{name}_g", f"{name}_b", f"{name}_m", f"{name}_v"), bn_stats(rng, v.c)))
        elif isinstance(v, tuple):
            out[name] = rng.standard_normal(v)
        elif callable(v):
            out[name] = v(rng)
        else:
            out[name] = v
    return {k: np.asarray(a, np.float32) for k, a in out.items()}


def randomize_bn(module: nn.Module, mean: float = 1.0, var: tuple[float, float] = (0.1, 2.0),
                 negative_first: bool = True) -> nn.Module:
    """Random BatchNorm statistics and affine parameters from torch's generator: means U(±mean), variances U(var),
    γ U(±1.5) (the first channel's negative unless ``negative_first`` is off), β U(±1); eval mode."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-mean, mean)
            m.running_var.uniform_(*var)
            m.weight.data.uniform_(-1.5, 1.5)
            if negative_first:
                m.weight.data[0] = -abs(m.weight.data[0]) - 0.1
            m.bias.data.uniform_(-1, 1)
    return module.eval()


def conv_bn(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, padding=0, groups: int = 1) -> nn.Module:
    """A bias-free conv followed by its BatchNorm, as one ``nn.Sequential``."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout))


# ----------------------------------------------------------------------------- artifacts and the pass harness


def pass_record(art, name: str) -> dict:
    """The manifest record of pass ``name`` in a compiled artifact."""
    return next(p for p in art.manifest["passes"] if p["name"] == name)


def first_output(art, x: np.ndarray) -> np.ndarray:
    """The first output of a one-input artifact run on ``x``."""
    return list(art.run({art.manifest["inputs"][0]["name"]: x}).values())[0]


@dataclass
class Rewritten:
    """An imported model with the Relax module after some passes, their reports and the op counts around them."""

    imported: ImportedModel
    mod: object  # the Relax IRModule after the passes
    reports: list[PassReport]
    ops_before: dict
    ops_after: dict

    @property
    def report(self) -> PassReport:
        """The report of the last pass run (the one under test)."""
        return self.reports[-1]


class Harness:
    """The pass tests' harness: build an ONNX graph, import it, run passes on it, build it for x86 and run it,
    and run the original graph under onnxruntime with its graph optimizations off (so the reference never folds
    a BatchNorm itself: it computes every node as the ONNX spec writes it)."""

    def __init__(self):
        self.target = backends.get("x86")

    @staticmethod
    def model(nodes, inputs: dict, params: dict, outputs=("y",), opset: int = 17) -> onnx.ModelProto:
        """An ONNX model; ``inputs`` maps names to shapes (float32) or ``(shape, dtype)``."""
        def info(name, spec):
            shape, dtype = spec if isinstance(spec[-1], str) else (spec, "float32")
            return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                 list(shape))
        graph = helper.make_graph(
            nodes, "g", [info(n, s) for n, s in inputs.items()],
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            [numpy_helper.from_array(np.asarray(v), n) for n, v in params.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
        types = {v.name: v.type for v in [*inferred.input, *inferred.value_info, *inferred.output]}
        for out in model.graph.output:  # output types as ONNX infers them
            out.type.CopyFrom(types[out.name])
        onnx.checker.check_model(model, full_check=True)
        return model

    @staticmethod
    def random_feeds(imported: ImportedModel, rng) -> dict[str, np.ndarray]:
        """Standard-normal inputs of the imported model's shapes and dtypes."""
        return {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in imported.inputs}

    @staticmethod
    def onnxruntime(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
        """Every output of ``model`` on ``feeds`` under onnxruntime, graph optimizations off."""
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)

    @staticmethod
    def rewrite(model, *pass_types, **load_kwargs) -> Rewritten:
        """Import ``model`` and run fresh instances of ``pass_types`` on it, in order."""
        imported = frontend.load(model, **load_kwargs)
        mod, reports = imported.mod, []
        for make in pass_types:
            p = make()
            mod = p(mod)
            reports.append(p.report)
        return Rewritten(imported, mod, reports, dict(graph_stats(imported.mod).ops), dict(graph_stats(mod).ops))

    def run(self, mod, imported: ImportedModel, feeds) -> list[np.ndarray]:
        """Build ``mod`` for x86 and run it on ``feeds`` (by the imported model's input names)."""
        return run_module(mod, [feeds[s.name] for s in imported.inputs], self.target)


PROFILE_TOTALS = ("all kernels", "outside kernels", "run")


def profile_table(out: str) -> tuple[dict[str, tuple[int, float]], dict[str, float]]:
    """``reforge run --profile``'s table: kernel -> (calls, ms), and the total rows' ms by name."""
    rows = out[out.index("profile: median of"):].splitlines()[3:]
    cells = [re.match(r"(all kernels|outside kernels|\S+)\s+(\d*)\s+([\d.]+)\s", r).groups() for r in rows]
    return ({n: (int(c), float(ms)) for n, c, ms in cells if n not in PROFILE_TOTALS},
            {n: float(ms) for n, _c, ms in cells if n in PROFILE_TOTALS})


# ----------------------------------------------------------------------------- binarized networks


RTOL_EPILOGUE = 1e-6  # a float scale epilogue after a binary layer: fl(α·d) versus the float conv's partial sums


def bsign(x, spelling: str):
    """±1 of ``x`` as a network spells it: torch.sign, torch.where, or either with the straight-through trick."""
    if spelling == "sign":
        return torch.sign(x)
    if spelling == "where":
        return torch.where(x >= 0, 1.0, -1.0)
    if spelling == "sign-ste":
        return x + (torch.sign(x) - x).detach()
    if spelling == "where-ste":
        return x + (torch.where(x >= 0, 1.0, -1.0) - x).detach()
    raise ValueError(spelling)


class BinConv(nn.Module):
    """conv(bsign(x), bsign(W)); ``scale``: XNOR-Net α = mean|W| per output channel after the conv;
    ``presigned``: the weight is stored already as ±1 (no sign op in the graph)."""

    def __init__(self, cin, cout, stride=1, padding=1, spelling="sign", scale=False, presigned=False):
        super().__init__()
        w = torch.randn(cout, cin, 3, 3)
        self.weight = nn.Parameter(torch.where(w >= 0, 1.0, -1.0) if presigned else w)
        self.stride, self.padding, self.spelling = stride, padding, spelling
        self.scale, self.presigned = scale, presigned

    def forward(self, x):
        w = self.weight if self.presigned else bsign(self.weight, self.spelling.split("-")[0])
        y = F.conv2d(bsign(x, self.spelling), w, stride=self.stride, padding=self.padding)
        if self.scale:
            y = y * self.weight.abs().mean((1, 2, 3)).view(1, -1, 1, 1)
        return y


class BinLinear(nn.Module):
    """dense(bsign(x), sign(W)) + bias."""

    def __init__(self, cin, cout, spelling="sign"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.randn(cout))
        self.spelling = spelling

    def forward(self, x):
        return F.linear(bsign(x, self.spelling), bsign(self.weight, "sign"), self.bias)


class Chain(nn.Module):
    """conv -> BN -> (sign) conv -> BN -> sign -> maxpool -> (sign) conv -> BN -> flatten -> (sign) dense:
    every BN + sign becomes a threshold, the pool an OR on the packed bits, the flatten a permutation of
    the dense weight."""

    def __init__(self, spelling="sign"):
        super().__init__()
        self.c1, self.c2, self.c3 = BinConv(8, 64, spelling=spelling), BinConv(64, 64, spelling=spelling), \
            BinConv(64, 64, spelling=spelling)
        self.b1, self.b2, self.b3 = nn.BatchNorm2d(64), nn.BatchNorm2d(64), nn.BatchNorm2d(64)
        self.fc = BinLinear(64 * 8 * 8, 10, spelling)
        self.spelling = spelling

    def forward(self, x):
        y = self.c2(self.b1(self.c1(x)))
        y = F.max_pool2d(bsign(self.b2(y), self.spelling), 2)
        return self.fc(self.b3(self.c3(y)).flatten(1))


def randomize_threshold_bn(module: nn.Module) -> nn.Module:
    """BN statistics that put the thresholds inside the dot products' range, some γ negative; eval mode."""
    return randomize_bn(module, mean=8.0, var=(1.0, 30.0), negative_first=False)


def binarized_chain(target: str):
    """``Chain("sign")`` with randomized BatchNorm compiled at -O2 for ``target``, checked to be binarized
    whole (4 layers, 3 thresholds, a packed OR-pool): (artifact, input, PyTorch's output)."""
    torch.manual_seed(3)
    module, x = randomize_threshold_bn(Chain("sign")), torch.randn(1, 8, 16, 16)
    art = reforge.compile(module, target=target, example_inputs=(x,))
    rec = pass_record(art, "binarize")
    assert rec["blocks"]["rewritten"] == 4 and rec["thresholds"] == 3 and rec["packed_pools"] == 1
    with torch.no_grad():
        return art, x.numpy(), module(x).numpy()


def float_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the graph with the QONNX nodes replaced by their float formula (plain ONNX)."""
    lowered = copy.deepcopy(model)
    assert lower_qonnx(lowered) > 0
    return onnxruntime(lowered, x)


# ----------------------------------------------------------------------------- residual and pruned networks


class BasicBlock(nn.Module):
    """He et al.'s basic block: two 3×3 conv-BNs (the first strided) plus a shortcut (a 1×1 conv-BN projection
    when the shape changes), then ReLU."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(conv_bn(cin, width, 3, stride, 1), nn.ReLU(), conv_bn(width, cout, 3, 1, 1))
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """He et al.'s ResNet: 7×7/2 stem, 3×3/2 max pooling, four stages (the first block of stages 2-4
    strided, with a projection shortcut), global average pooling, a classifier."""

    def __init__(self, block: type[BasicBlock], layers: list[int], base: int = 64, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, base, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], base
        for stage, n in enumerate(layers):
            width = base * 2 ** stage
            for i in range(n):
                blocks.append(block(cin, width, 2 if i == 0 and stage > 0 else 1))
                cin = width * block.expansion
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def skip_adds(mod) -> int:
    """Adds whose operands are both computed tensors (skip connections), in ``main``; the add inside
    an activation's spelling (ELU's ``−α·relu(1 − exp(x)) + relu(x)``) is none."""
    bound = {}

    @relax.expr_functor.visitor
    class _Bindings(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            bound[binding.var] = binding.value

    _Bindings().visit_expr(mod["main"])
    return sum(1 for var, value in bound.items() if op_name(value) == "relax.add"
               and not any(is_const(a) for a in value.args) and read_activation(var, bound.get) is None)


class IdentityBlock(nn.Module):
    """relu(x + conv-BN(relu(conv-BN(x)))), 3×3 convs keeping ``c`` channels."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c, 3, 1, 1), nn.ReLU(), conv_bn(c, c, 3, 1, 1))

    def forward(self, x):
        return torch.relu(self.body(x) + x)


def resnet_ish() -> nn.Module:
    """A stem, two residual basic blocks around a strided conv, pooling and a classifier."""
    return nn.Sequential(conv_bn(3, 8, 3, 1, 1), nn.ReLU(), IdentityBlock(8), conv_bn(8, 16, 3, 2, 1), nn.ReLU(),
                         IdentityBlock(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def vgg_ish() -> nn.Module:
    """VGG: 3×3 conv-BN-ReLU stacks, max pooling, a two-layer classifier."""
    return nn.Sequential(conv_bn(3, 8, 3, 1, 1), nn.ReLU(), conv_bn(8, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                         conv_bn(8, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


class MobileBlock(nn.Module):
    """A stem, a MobileNet-v2 style block (1×1 expand, 3×3 depthwise, 1×1 project), pooling, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 1, 1)
        self.expand, self.dw, self.project = conv_bn(8, 16, 1), conv_bn(16, 16, 3, 1, 1, groups=16), conv_bn(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.project(torch.relu(self.dw(torch.relu(self.expand(x)))))
        return self.fc(torch.relu(x).mean((2, 3)))


def prunable(net: nn.Module) -> list[nn.Module]:
    """The convs and linears of ``net`` in module order (what torch's pruning is applied to)."""
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def zero_filter(w: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
    """Per output channel (axis 0, PyTorch's layout): all its weights on the kept ``inputs`` (axis 1; all when
    None) are zero. Removed constant inputs are folded into the bias, so a filter that reads only them is zero."""
    w = w if inputs is None else w[:, inputs]
    return ~w.reshape(w.shape[0], -1).any(axis=1)


def channels_read(w: np.ndarray, rows: np.ndarray, per_channel: int = 1) -> np.ndarray:
    """Per input channel of ``w`` (axis 1; ``per_channel`` consecutive columns each, a flatten's):
    a kept output row (``rows``) reads it with a nonzero weight."""
    kept = w[rows].reshape(int(rows.sum()), w.shape[1] // per_channel, per_channel * int(np.prod(w.shape[2:])))
    return kept.any(axis=(0, 2))


def fixpoint(step, state: dict) -> dict:
    """Iterate ``step`` on the kept channels of each tensor until nothing changes; a tensor that would lose
    every channel keeps them all (the pass never empties a tensor)."""
    for _ in range(100):
        new = {k: v if v.any() else np.ones_like(v) for k, v in step(state).items()}
        if all(np.array_equal(new[k], state[k]) for k in state):
            return state
        state = new
    raise AssertionError("the live-channel count does not settle")


def vgg_live(ws: list[np.ndarray]) -> list[tuple[int, int]]:
    """vgg_ish: c0 → c1 → pool → c2 → pool → flatten (4×4) → fc1 → fc2; every conv pads 1."""
    c0, c1, c2, fc1 = ws[:4]

    def step(k):
        k = dict(k)
        k[2] = ~zero_filter(c2, k[1]) & channels_read(fc1, np.ones(fc1.shape[0], bool), 16)
        k[1] = ~zero_filter(c1, k[0]) & channels_read(c2, k[2])
        k[0] = ~zero_filter(c0) & channels_read(c1, k[1])
        return k

    k = fixpoint(step, {i: np.ones(w.shape[0], bool) for i, w in enumerate((c0, c1, c2))})
    n = [int(k[i].sum()) for i in range(3)]
    return [(n[0], 3), (n[1], n[0]), (n[2], n[1])]


def resnet_live(ws: list[np.ndarray]) -> list[tuple[int, int]]:
    """resnet_ish: stem s → block 1 (a, b; + the stream) → strided t → block 2 (a, b) → mean → fc. A stream
    channel is constant only when the filters of both its producers (s and b₁, or t and b₂) are zero."""
    s, a1, b1, t, a2, b2, fc = ws
    every = np.ones(fc.shape[0], bool)

    def step(k):
        k = dict(k)
        k["S2"] = ~(zero_filter(t, k["S1"]) & zero_filter(b2, k["I2"])) & (channels_read(a2, k["I2"])
                                                                           | channels_read(fc, every))
        k["I2"] = ~zero_filter(a2, k["S2"]) & channels_read(b2, k["S2"])
        k["S1"] = ~(zero_filter(s) & zero_filter(b1, k["I1"])) & (channels_read(a1, k["I1"])
                                                                  | channels_read(t, k["S2"]))
        k["I1"] = ~zero_filter(a1, k["S1"]) & channels_read(b1, k["S1"])
        return k

    k = fixpoint(step, {"S1": np.ones(8, bool), "I1": np.ones(8, bool), "S2": np.ones(16, bool),
                        "I2": np.ones(16, bool)})
    n = {key: int(v.sum()) for key, v in k.items()}
    return [(n["S1"], 3), (n["I1"], n["S1"]), (n["S1"], n["I1"]), (n["S2"], n["S1"]), (n["I2"], n["S2"]),
            (n["S2"], n["I2"])]


def bn_affine(block: nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) with BN(y) = s·y + t, from the BatchNorm's statistics (conv_bn's second module)."""
    bn = block[1]
    s = bn.weight.detach().numpy().astype(np.float64) / np.sqrt(bn.running_var.numpy().astype(np.float64) + bn.eps)
    return s, bn.bias.detach().numpy() - bn.running_mean.numpy() * s


def mobile_live(net: MobileBlock) -> list[tuple[int, int]]:
    """stem → expand (1×1) → depthwise 3×3 (pads 1) → project (1×1) → ReLU → mean → fc. A depthwise channel
    and the expand channel feeding it are one class. It is dead when the projection's kept rows do not read it; it is
    constant when the expand filter is zero on the kept stem channels and either the depthwise filter is zero or
    the expand channel's value is 0 (ReLU of its BatchNorm shift plus the removed constant stem channels it reads):
    a constant v ≠ 0 through the zero-padding depthwise conv is a map, not a constant."""
    stem, expand, dw, project = (m[0].weight.detach().numpy() for m in (net.stem, net.expand, net.dw, net.project))
    fc = net.fc.weight.detach().numpy()
    t_stem, (s_exp, t_exp) = bn_affine(net.stem)[1], bn_affine(net.expand)
    v_stem = np.where(zero_filter(stem), np.maximum(t_stem, 0), 0)  # a zero stem filter's channel value

    def step(k):
        k = dict(k)
        k["b"] = ~zero_filter(project, k["m"]) & channels_read(fc, np.ones(fc.shape[0], bool))
        v_exp = np.maximum(s_exp * (expand[:, ~k["a"], 0, 0] @ v_stem[~k["a"]]) + t_exp, 0)
        constant = zero_filter(expand, k["a"]) & (zero_filter(dw) | (v_exp == 0))
        k["m"] = channels_read(project, k["b"]) & ~constant
        k["a"] = ~zero_filter(stem) & channels_read(expand, k["m"])
        return k

    k = fixpoint(step, {"a": np.ones(8, bool), "m": np.ones(16, bool), "b": np.ones(8, bool)})
    na, nm, nb = (int(k[key].sum()) for key in "amb")
    return [(na, 3), (nm, na), (nm, 1), (nb, nm)]


class SmallNet(nn.Module):
    """Four convs (3×3, 1×1, 3×3 stride 2, 1×1) with ReLUs, global mean, a classifier: sparse's test net."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 20, 3, padding=1)
        self.c2 = nn.Conv2d(20, 40, 1)
        self.c3 = nn.Conv2d(40, 36, 3, stride=2, padding=1)
        self.c4 = nn.Conv2d(36, 40, 1, stride=1)
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        x = torch.relu(self.c4(x))
        return self.fc(x.mean(dim=(2, 3)))


def pruned_onnx(amount: float, seed: int) -> onnx.ModelProto:
    """SmallNet pruned by l1_unstructured at ``amount`` on every layer (made permanent), exported for a
    (1, 3, 17, 19) input "x"."""
    torch.manual_seed(seed)
    net = SmallNet().eval()
    for layer in (net.c1, net.c2, net.c3, net.c4, net.fc):
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")
    return to_onnx(net, torch.randn(1, 3, 17, 19), constant_folding=True)


def pruned_l1(net: nn.Module, amount: float) -> nn.Module:
    """``net`` with every conv and linear pruned by l1_unstructured at ``amount``, made permanent."""
    for layer in prunable(net):
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")
    return net


def sparse_kernel_specs(model, target: str) -> list:
    """The :class:`reforge.topi_ext.sparse_nchwc.Spec` of every sparse conv kernel that ``compile`` at -O2 builds
    for ``model`` on ``target`` (read from the fused module, where the build re-emitted them for the machine)."""
    tgt = backends.get(target)
    fused = rewrite_and_fuse(model, tgt, tgt.passes(2)).fused
    return [sparse_nchwc.Spec.from_json(str(f.attrs[sparse_nchwc.SPEC_ATTR])) for _, f in fused.functions_items()
            if f.attrs is not None and sparse_nchwc.SPEC_ATTR in f.attrs]


# ----------------------------------------------------------------------------- blocked depthwise convs


class MobileNetStyle(torch.nn.Module):
    """A stem conv, then depthwise-BN-ReLU / pointwise-BN-ReLU pairs (3x3, 3x3 stride 2, 5x5 dilated
    with a residual add), global average pool and a dense head."""

    def __init__(self):
        super().__init__()

        def dw_pw(cin, cout, k=3, stride=1, dil=1):
            return nn.Sequential(nn.Conv2d(cin, cin, k, stride, dil * (k // 2), dil, groups=cin), nn.BatchNorm2d(cin),
                                 nn.ReLU(), nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(dw_pw(16, 24), dw_pw(24, 32, stride=2))
        self.residual = dw_pw(32, 32, k=5, dil=2)
        self.head = nn.Linear(32, 10)

    def forward(self, image):
        y = self.blocks(self.stem(image))
        y = y + self.residual(y)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


DEPTHWISE_CONVS = 3  # in MobileNetStyle


def mobilenet_style() -> torch.nn.Module:
    """MobileNetStyle with seed-0 weights and the test zoo's randomized BatchNorm, in eval mode."""
    torch.manual_seed(0)
    net = MobileNetStyle()
    randomize_batchnorm(net)
    return net.eval()


# ----------------------------------------------------------------------------- RPC devices on loopback


RPC_KEY = "reforge-test"

# ports: each process searches a range and binds the first free port, so no port is picked in advance
# and then lost to another process (the race that made this fixture flaky). Two processes scanning the
# same range can still bind one port together and the second fails to listen on it (seen with two
# servers started at once): servers start one at a time, and each pytest-xdist worker scans its own range.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
PORTS = (9190 + 400 * (_WORKER % 8), 9190 + 400 * (_WORKER % 8) + 399)
TRACKER = ("import sys; from tvm.rpc.tracker import Tracker; "
           "t = Tracker('127.0.0.1', port=int(sys.argv[1]), port_end=int(sys.argv[2])); "
           "print(t.port, flush=True); t.proc.join()")


def spawn(argv: list[str], log: Path) -> subprocess.Popen:
    """``python argv`` in a session of its own, stdout piped, stderr to ``log``."""
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)


def start_tracker(log: Path) -> tuple[subprocess.Popen, int]:
    """A tracker on the first free port of PORTS; the port it bound is read back from its stdout."""
    proc = spawn(["-c", TRACKER, *map(str, PORTS)], log)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.wait(timeout=30)
        raise RuntimeError(f"RPC tracker did not start: {log.read_text()[-2000:]}")
    return proc, int(line)


def start_server(tracker_port: int, log: Path, module: str) -> subprocess.Popen:
    """An RPC server (``python -m module``) under RPC_KEY, registered with the tracker on ``tracker_port``."""
    return spawn(["-m", module, "--tracker", f"127.0.0.1:{tracker_port}", "--key", RPC_KEY,
                  "--host", "127.0.0.1", "--port", str(PORTS[0]), "--port-end", str(PORTS[1])], log)


def wait_for_servers(port: int, servers: list[subprocess.Popen], logs: list[Path], seconds: float = 120) -> None:
    """Wait until the tracker lists every server of ``servers``; raise with a server's log if one exits."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            info = rpc.connect_tracker("127.0.0.1", port).summary()["server_info"]
            if sum(1 for s in info if s.get("key") == f"server:{RPC_KEY}") >= len(servers):
                return
        except (OSError, RuntimeError):
            pass
        dead = [log for proc, log in zip(servers, logs) if proc.poll() is not None]
        if dead:
            raise RuntimeError(f"RPC server exited: {dead[0].read_text()[-2000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{len(servers)} RPC servers did not register: {logs[0].read_text()[-2000:]}")


def tracker_with_servers(logs: Path, module: str, count: int):
    """Yield (tracker port, [tracker, servers...]): ``count`` servers run by ``python -m module``."""
    proc, port = start_tracker(logs / "tracker.log")
    procs = [proc]
    try:
        server_logs = [logs / f"server{i}.log" for i in range(count)]
        for i, log in enumerate(server_logs):
            procs.append(start_server(port, log, module))
            wait_for_servers(port, procs[1:], server_logs[:i + 1])
        yield port, procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def pruned_weight(rng, shape, sparsity: float) -> np.ndarray:
    """A standard-normal float32 weight with each entry zeroed with probability ``sparsity``."""
    w = rng.standard_normal(shape).astype("float32")
    w[rng.random(shape) < sparsity] = 0
    if sparsity == 1.0:
        assert not w.any()
    return w


EM_X86_64, EM_AARCH64 = 62, 183  # ELF e_machine


def elf_machine(blob: bytes) -> int:
    """The e_machine field of an ELF file's header (what CPU its code is for)."""
    assert blob[:4] == b"\x7fELF"
    return int.from_bytes(blob[18:20], "little")
