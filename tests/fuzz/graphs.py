"""Random but valid CNN graphs as ONNX models, drawn by hypothesis.

A graph is a chain of layers over one running tensor ``[1, C, H, W]``; each layer is drawn from
what reforge's passes rewrite: convs (kernel 1-15, stride 1-2, symmetric or asymmetric padding,
dilation, groups and depthwise, with or without bias), BatchNorm with random statistics (negative
γ included), ReLU / LeakyReLU / ELU, Dropout, residual adds and multi-branch sums on one input
(branches of different kernels, an identity, an average pool), channel concat, max / average
pooling, sign-binarized convs (±1 weights, with or without a BatchNorm after), channel tiling
(Concat / Tile of one tensor) before a conv; then global pooling and a dense layer, or not. Weights come from a seeded generator,
so a drawn graph is a pure function of hypothesis' choices and shrinks with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper

OPSET = 17
MAX_CHANNELS = 12


@dataclass
class Builder:
    """Accumulates ONNX nodes and initializers while tracking the running tensor's shape."""

    rng: np.random.Generator
    shape: tuple[int, int, int, int]
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    _n: int = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(onnx.numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def const_int(self, value: np.ndarray) -> str:
        name = self.name("i")
        self.inits.append(onnx.numpy_helper.from_array(value.astype(np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _conv_out(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


@st.composite
def conv_params(draw, shape, same: bool = False):
    """Conv attributes valid for ``shape``; ``same`` keeps the spatial size (stride 1, centred)."""
    _, c, h, w = shape
    k = draw(st.sampled_from([1, 3, 3, 5, 7, 11, 15])) if not same else draw(st.sampled_from([1, 3, 5]))
    dilation = 1 if same or k > 7 else draw(st.sampled_from([1, 1, 2]))
    reach = dilation * (k - 1)
    stride = 1 if same else draw(st.sampled_from([1, 1, 2]))
    if same:
        pads = [reach // 2] * 4
    elif draw(st.booleans()):
        p = draw(st.integers(0, reach // 2 + 1))
        pads = [p] * 4
    else:
        pads = [draw(st.integers(0, reach // 2 + 1)) for _ in range(4)]
    if _conv_out(h, k, stride, pads[0] + pads[2], dilation) < 1 or _conv_out(w, k, stride, pads[1] + pads[3], dilation) < 1:
        pads = [reach] * 4  # always room for one output
    kind = draw(st.sampled_from(["dense", "dense", "depthwise", "grouped"]))
    groups = c if kind == "depthwise" else (draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0] or [1]))
                                            if kind == "grouped" else 1)
    cout = c if same else (c * draw(st.sampled_from([1, 2])) if kind == "depthwise"
                           else groups * draw(st.integers(1, max(1, MAX_CHANNELS // groups))))
    return {"k": k, "stride": stride, "pads": pads, "dilation": dilation, "groups": groups, "cout": cout,
            "bias": draw(st.booleans())}


def emit_conv(b: Builder, x: str, shape, p, binary: bool = False) -> tuple[str, tuple]:
    """A conv on ``x``; ``binary``: ±1 weights (the conv of a binarized layer)."""
    _, c, h, w = shape
    weight = b.rng.standard_normal((p["cout"], c // p["groups"], p["k"], p["k"]))
    weight = b.const(np.where(weight >= 0, 1.0, -1.0) if binary else weight / np.sqrt(c * p["k"] ** 2))
    inputs = [x, weight] + ([b.const(b.rng.standard_normal(p["cout"]) * 0.1, "b")] if p["bias"] else [])
    y = b.node("Conv", inputs, kernel_shape=[p["k"]] * 2, strides=[p["stride"]] * 2, pads=p["pads"],
               dilations=[p["dilation"]] * 2, group=p["groups"])
    oh = _conv_out(h, p["k"], p["stride"], p["pads"][0] + p["pads"][2], p["dilation"])
    ow = _conv_out(w, p["k"], p["stride"], p["pads"][1] + p["pads"][3], p["dilation"])
    b.layers.append(f"conv{p['k']}x{p['k']}/s{p['stride']}/d{p['dilation']}/g{p['groups']}/p{p['pads']}")
    return y, (1, p["cout"], oh, ow)


def emit_batchnorm(b: Builder, x: str, c: int) -> str:
    gamma = b.rng.standard_normal(c) * b.rng.choice([-1.0, 1.0], c)  # negative γ included
    stats = [gamma, b.rng.standard_normal(c) * 0.2, b.rng.standard_normal(c) * 0.2, b.rng.uniform(0.3, 2.0, c)]
    b.layers.append("batchnorm")
    return b.node("BatchNormalization", [x] + [b.const(s, "bn") for s in stats], epsilon=1e-5)


def emit_activation(b: Builder, x: str, kind: str) -> str:
    b.layers.append(kind)
    if kind == "leakyrelu":
        return b.node("LeakyRelu", [x], alpha=0.1)
    return b.node({"relu": "Relu", "elu": "Elu"}[kind], [x])


@st.composite
def layer(draw, b: Builder, x: str, shape):
    """One layer on the running tensor: (new tensor name, new shape)."""
    kind = draw(st.sampled_from(["conv", "conv", "conv_bn", "act", "residual", "branches", "concat",
                                 "pool", "dropout", "binary", "tile"]))
    _, c, h, w = shape
    if kind in ("conv", "conv_bn"):
        y, shape = emit_conv(b, x, shape, draw(conv_params(shape)))
        return (emit_batchnorm(b, y, shape[1]) if kind == "conv_bn" else y), shape
    if kind == "binary":  # Sign -> conv with ±1 weights (-> BatchNorm, whose sign the next binary layer takes)
        y, shape = emit_conv(b, b.node("Sign", [x]), shape, draw(conv_params(shape)), binary=True)
        b.layers[-1] = "binary " + b.layers[-1]
        return (emit_batchnorm(b, y, shape[1]) if draw(st.booleans()) else y), shape
    if kind == "tile":  # Rep-BNN's RepConv: the feature map repeated β times along channels, then a conv
        beta = draw(st.sampled_from([2, 3]))
        if draw(st.booleans()):
            tiled = b.node("Concat", [x] * beta, axis=1)
        else:
            tiled = b.node("Tile", [x, b.const_int(np.array([1, beta, 1, 1]))])
        b.layers.append(f"tile{beta}")
        return emit_conv(b, tiled, (1, c * beta, h, w), draw(conv_params((1, c * beta, h, w))))
    if kind == "act":
        return emit_activation(b, x, draw(st.sampled_from(["relu", "leakyrelu", "elu"]))), shape
    if kind == "dropout":
        b.layers.append("dropout")
        return b.node("Dropout", [x]), shape
    if kind == "residual":  # x + BN(conv(relu(BN(conv(x)))))
        y, _ = emit_conv(b, x, shape, draw(conv_params(shape, same=True)))
        y = emit_activation(b, emit_batchnorm(b, y, c), "relu")
        y, _ = emit_conv(b, y, shape, draw(conv_params(shape, same=True)))
        b.layers.append("residual")
        return b.node("Add", [x, emit_batchnorm(b, y, c)]), shape
    if kind == "branches":  # Σ of 2-3 same-shape branches on x, RepVGG / ACNet / DBB style
        terms = []
        for _ in range(draw(st.integers(2, 3))):
            branch = draw(st.sampled_from(["conv", "conv_bn", "identity", "avgpool"]))
            if branch == "identity":
                terms.append(x)
            elif branch == "avgpool":
                terms.append(b.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1] * 4, strides=[1, 1],
                                    count_include_pad=1))
            else:
                y, _ = emit_conv(b, x, shape, draw(conv_params(shape, same=True)))
                terms.append(emit_batchnorm(b, y, c) if branch == "conv_bn" else y)
        total = terms[0]
        for t in terms[1:]:
            total = b.node("Add", [total, t])
        b.layers.append(f"branches({len(terms)})")
        return total, shape
    if kind == "concat":
        y, s1 = emit_conv(b, x, shape, draw(conv_params(shape, same=True)))
        b.layers.append("concat")
        return b.node("Concat", [x, y], axis=1), (1, c + s1[1], h, w)
    pool = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    if h < 2 or w < 2:
        return x, shape
    b.layers.append(pool.lower())
    return b.node(pool, [x], kernel_shape=[2, 2], strides=[2, 2]), (1, c, h // 2, w // 2)


@st.composite
def cnn_models(draw) -> tuple[onnx.ModelProto, list[str]]:
    """A random CNN as an ONNX model (input ``x``, output ``y``) and its layer list."""
    c, h, w = draw(st.integers(1, 8)), draw(st.integers(5, 14)), draw(st.integers(5, 14))
    b = Builder(np.random.default_rng(draw(st.integers(0, 2 ** 31))), (1, c, h, w))
    x, shape = "x", (1, c, h, w)
    for _ in range(draw(st.integers(1, 5))):
        x, shape = draw(layer(b, x, shape))
        if shape[1] > 4 * MAX_CHANNELS:
            break
    if draw(st.booleans()):  # classifier head
        x = b.node("GlobalAveragePool", [x])
        x = b.node("Flatten", [x])
        n = draw(st.integers(1, 10))
        x = b.node("Gemm", [x, b.const(b.rng.standard_normal((n, shape[1])) * 0.3), b.const(b.rng.standard_normal(n))],
                   transB=1)
        shape = (1, n)
        b.layers.append("dense")
    b.nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(b.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, b.layers
