"""Random but valid CNN graphs as ONNX models, drawn by hypothesis.

A graph is a chain of layers over one running tensor ``[1, C, H, W]``; each layer is drawn from
what reforge's passes rewrite, in the spellings they recognize:

- convs (kernel 1-15, stride 1-2, symmetric or asymmetric padding, dilation, groups and depthwise,
  with or without bias), BatchNorm with random statistics (negative γ included), ReLU / LeakyReLU /
  ELU, the mobile families' ReLU6 (Clip), HardSwish, HardSigmoid, SiLU, sigmoid, GELU (erf), channel
  shuffles (reshape → transpose → reshape) and FPlus in its elementwise forms
  ``Pow(1 + |x|, sign(x)) - 1`` and ``Where(x >= 0, x, x / (1 - x))``,
  PFPlus as ``λ·Where(t >= 0, t, t / (1 - t))`` with t = μx (fuse-fplus);
- no-ops (Dropout, its unused mask output, ×1, +0, ÷1, −0, identity Reshape / Transpose / Cast,
  one-input Concat) and a channel Split with an output left unused (remove-noops, dead-code);
- residual blocks (basic k×k-k×k or bottleneck 1×1-3×3-1×1, ReLU or LeakyReLU inside, identity or
  strided 1×1 projection shortcut, usually on a ReLU output: remove-residual), sums of 2-3 branches
  on one input (convs of different kernels, identity, average pool: merge-branches), chains of two
  linear convs, channel concat, channel tiling before a conv (fold-channel-tile), pooling; complex
  convs as four real convs on the two channel halves, ``[A·xr − B·xi, C·xr + D·xi]`` (complex-conv);
- Hadamard products: a 1×1 conv or a MatMul on the last axis by ``c·H_N[:K, perm]`` (N 16 or 32,
  natural or sequency order, any scale, rows scaled or not), with the WHT layer's soft threshold
  or not (fwht); large-kernel stride-1 convs on maps where FFT is cheaper (fft-conv); 3×3 stride-1
  convs of WIDE_CHANNELS, widened by a 1×1 conv first (the Winograd conv of the x86 / arm builds);
- binarized conv layers: ±1 weights (times a positive per-channel α or not) on a ±1 activation
  spelled ``Sign`` (after a shift that keeps exact zeros out: ONNX ``Sign(0) = 0``), ``Where(x >= 0,
  1, -1)`` or the straight-through ``x + (Sign(x) - x)``, BatchNorm or a max-pool between them;

then a head: none, global pooling + dense, a Hadamard dense or a binarized dense on the flattened
±1 map. Weights come from a seeded generator, so a drawn graph is a pure function of hypothesis'
choices and shrinks with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper

from reforge.topi_ext import fft_conv

OPSET = 17
MAX_CHANNELS = 12
WIDE_CHANNELS = (32, 48)  # a 3×3 stride-1 conv's channels where builds take Winograd's F(2×2, 3×3)
FFT_CHANNELS = 12  # a big conv's input channels (after a 1×1 conv if needed), where FFT can win


@dataclass
class Builder:
    """Accumulates ONNX nodes and initializers while tracking the running tensor's shape."""

    rng: np.random.Generator
    shape: tuple[int, int, int, int]
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    exact: set[str] = field(default_factory=set)  # tensors that are integer sums computed exactly
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


    def outputs(self, op: str, inputs: list[str], n: int, **attrs) -> list[str]:
        """A node with ``n`` outputs."""
        outs = [self.name(op.lower()) for _ in range(n)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs


def _conv_out(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


@st.composite
def conv_params(draw, shape, same: bool = False, plain: bool = False):
    """Conv attributes valid for ``shape``; ``same`` keeps the spatial size (stride 1, centred);
    ``plain``: groups 1, dilation 1 (what binarize and fold-channel-tile rewrite), mostly."""
    _, c, h, w = shape
    k = draw(st.sampled_from([1, 3, 3, 5, 7, 11, 15])) if not same else draw(st.sampled_from([1, 3, 5]))
    dilation = 1 if same or plain or k > 7 else draw(st.sampled_from([1, 1, 2]))
    reach = dilation * (k - 1)
    stride = 1 if same else draw(st.sampled_from([1, 1, 2]))
    if same:
        pads = [reach // 2] * 4
    elif draw(st.booleans()):
        p = draw(st.integers(0, reach // 2 + 1))
        pads = [p] * 4
    else:
        pads = [draw(st.integers(0, reach // 2 + 1)) for _ in range(4)]
    if (_conv_out(h, k, stride, pads[0] + pads[2], dilation) < 1
            or _conv_out(w, k, stride, pads[1] + pads[3], dilation) < 1):
        pads = [reach] * 4  # always room for one output
    kinds = ["dense"] * 8 + ["grouped"] if plain else ["dense", "dense", "depthwise", "grouped"]
    kind = draw(st.sampled_from(kinds))
    groups = c if kind == "depthwise" else (draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0] or [1]))
                                            if kind == "grouped" else 1)
    cout = c if same else (c * draw(st.sampled_from([1, 2])) if kind == "depthwise"
                           else groups * draw(st.integers(1, max(1, MAX_CHANNELS // groups))))
    return {"k": k, "stride": stride, "pads": pads, "dilation": dilation, "groups": groups, "cout": cout,
            "bias": draw(st.booleans())}


def conv_weight(b: Builder, shape, p, binary: bool = False, scaled: bool = False) -> np.ndarray:
    """A random weight for ``p``; ``binary``: ±1, times a positive per-output α when ``scaled``."""
    weight = b.rng.standard_normal((p["cout"], shape[1] // p["groups"], p["k"], p["k"]))
    if not binary:
        return weight / np.sqrt(shape[1] * p["k"] ** 2)
    signs = np.where(weight >= 0, 1.0, -1.0)
    return signs * b.rng.uniform(0.2, 2.0, (p["cout"], 1, 1, 1)) if scaled else signs


def emit_conv(b: Builder, x: str, shape, p, weight: np.ndarray | None = None, tag: str = "") -> tuple[str, tuple]:
    """A conv on ``x`` with ``weight`` (a random one if None)."""
    _, c, h, w = shape
    weight = conv_weight(b, shape, p) if weight is None else weight
    inputs = [x, b.const(weight)] + ([b.const(b.rng.standard_normal(p["cout"]) * 0.1, "b")] if p["bias"] else [])
    y = b.node("Conv", inputs, kernel_shape=[p["k"]] * 2, strides=[p["stride"]] * 2, pads=p["pads"],
               dilations=[p["dilation"]] * 2, group=p["groups"])
    oh = _conv_out(h, p["k"], p["stride"], p["pads"][0] + p["pads"][2], p["dilation"])
    ow = _conv_out(w, p["k"], p["stride"], p["pads"][1] + p["pads"][3], p["dilation"])
    b.layers.append(f"{tag}conv{p['k']}x{p['k']}/s{p['stride']}/d{p['dilation']}/g{p['groups']}/p{p['pads']}")
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
    one = b.const(np.ones(()), "one") if "fplus" in kind else ""
    if kind == "fplus":  # FPlus, elementwise: (1 + |x|) ** sign(x) - 1
        powered = b.node("Pow", [b.node("Add", [b.node("Abs", [x]), one]), b.node("Sign", [x])])
        return b.node("Sub", [powered, one])
    if kind == "fplus-where":  # FPlus as where(x >= 0, x, x / (1 - x))
        nonneg = b.node("GreaterOrEqual", [x, b.const(np.zeros(()), "zero")])
        return b.node("Where", [nonneg, x, b.node("Div", [x, b.node("Sub", [one, x])])])
    if kind == "pfplus-where":  # PFPlus as λ·where(t >= 0, t, t / (1 - t)), t = μx
        t = b.node("Mul", [x, b.const(np.array(b.rng.uniform(0.25, 3.0)), "mu")])
        nonneg = b.node("GreaterOrEqual", [t, b.const(np.zeros(()), "zero")])
        f = b.node("Where", [nonneg, t, b.node("Div", [t, b.node("Sub", [one, t])])])
        return b.node("Mul", [f, b.const(np.array(b.rng.uniform(0.5, 2.0)), "lambda")])
    if kind == "relu6":  # torch.onnx's ReLU6
        return b.node("Clip", [x, b.const(np.zeros(()), "lo"), b.const(np.array(6.0), "hi")])
    if kind == "silu":  # x · sigmoid(x)
        return b.node("Mul", [x, b.node("Sigmoid", [x])])
    if kind == "gelu":  # x · (1 + erf(x / √2)) / 2, torch.onnx's spelling
        erf = b.node("Erf", [b.node("Div", [x, b.const(np.array(np.sqrt(2.0)), "sqrt2")])])
        return b.node("Mul", [b.node("Mul", [x, b.node("Add", [erf, b.const(np.ones(()), "one")])]),
                              b.const(np.array(0.5), "half")])
    return b.node({"relu": "Relu", "elu": "Elu", "hardswish": "HardSwish", "hardsigmoid": "HardSigmoid",
                   "sigmoid": "Sigmoid"}[kind], [x])


def sylvester(n: int) -> np.ndarray:
    """The n×n Sylvester Hadamard matrix (n a power of two)."""
    h = np.ones((1, 1))
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_weight(draw, b: Builder, k: int, m: int | None = None) -> np.ndarray:
    """A ``[k, m]`` matrix ``c·H_N[:k, perm]`` (N the next power of two >= k, at least 16): natural or
    sequency (Walsh) column order, any scale c, rows scaled by nonzero d_k or not."""
    n = max(16, 1 << (k - 1).bit_length())
    h = sylvester(n)
    m = m or draw(st.sampled_from([n, n, k, max(1, n // 2)]))
    order = draw(st.sampled_from(["natural", "sequency", "random"]))
    perm = {"natural": np.arange(n), "sequency": np.argsort(np.sum(h[1:] != h[:-1], axis=0), kind="stable"),
            "random": b.rng.permutation(n)}[order]
    scale = draw(st.sampled_from([1.0, -1.0, 1 / np.sqrt(n), float(np.float32(b.rng.uniform(0.1, 2.0)))]))
    rows = b.rng.uniform(0.5, 2.0, (k, 1)) * b.rng.choice([-1.0, 1.0], (k, 1)) if draw(st.integers(0, 3)) == 0 \
        else np.ones((k, 1))
    b.layers.append(f"hadamard{n}[{k}x{m}]/{order}")
    return (scale * rows * h[:k, perm[:m]]).astype(np.float32)


def emit_soft_threshold(b: Builder, z: str, t_shape: tuple) -> str:
    """The WHT layer's ``sign(z)·relu(|z| − T)``, T of ``t_shape`` (a scalar, or one per coefficient)."""
    t = b.const(b.rng.uniform(0.0, 0.5, t_shape), "t")
    b.layers.append("soft-threshold")
    return b.node("Mul", [b.node("Sign", [z]), b.node("Relu", [b.node("Sub", [b.node("Abs", [z]), t])])])


def emit_sign(b: Builder, x: str, spelling: str, c: int) -> str:
    """A ±1 activation of ``x``. ``x`` is first shifted by a non-integer per channel, so no exact 0
    (a ReLU output, an integer dot product) and no float tie reaches the sign: ONNX ``Sign(0) = 0``,
    and where a float runtime sums α-scaled ±1 terms, an exact 0 comes out as ±rounding noise whose
    sign depends on the summation order. An integer sum computed exactly (``b.exact``: an unscaled
    binary conv without bias) goes to ``Where(x >= 0, 1, -1)`` unshifted, exact zeros included (+1)."""
    b.layers.append(spelling)
    if not (x in b.exact and spelling == "where"):
        shift = b.rng.uniform(0.05, 0.45, (1, c, 1, 1)) * b.rng.choice([-1.0, 1.0], (1, c, 1, 1))
        x = b.node("Add", [x, b.const(shift, "shift")])
    if spelling == "where":
        ge = b.node("GreaterOrEqual", [x, b.const(np.zeros(()), "zero")])
        return b.node("Where", [ge, b.const(np.ones(()), "one"), b.const(-np.ones(()), "minus")])
    sign = b.node("Sign", [x])
    return sign if spelling == "sign" else b.node("Add", [x, b.node("Sub", [sign, x])])


@st.composite
def binary_layers(draw, b: Builder, x: str, shape):
    """1-3 binarized convs: ±1 activation -> conv with ±1 weights [-> BatchNorm] [-> max-pool]."""
    for i in range(draw(st.integers(1, 3))):
        x = emit_sign(b, x, draw(st.sampled_from(["sign", "sign", "where", "ste"])), shape[1])
        if i and shape[2] >= 2 and shape[3] >= 2 and draw(st.integers(0, 3)) == 0:
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            shape = (1, shape[1], shape[2] // 2, shape[3] // 2)
            b.layers.append("maxpool")
        p = draw(conv_params(shape, plain=True))
        scaled = draw(st.booleans())
        x, shape = emit_conv(b, x, shape, p, conv_weight(b, shape, p, binary=True, scaled=scaled), tag="binary ")
        if not scaled and not p["bias"]:
            b.exact.add(x)
        if draw(st.booleans()):
            x = emit_batchnorm(b, x, shape[1])
    return x, shape


@st.composite
def residual(draw, b: Builder, x: str, shape):
    """RMNet's input: basic (k×k, k×k) or bottleneck (1×1, 3×3, 1×1) block, ReLU, LeakyReLU or FPlus inside,
    identity or strided 1×1 projection shortcut, BatchNorm after each conv or not; usually after a ReLU."""
    _, c, h, w = shape
    if draw(st.integers(0, 4)):
        x = emit_activation(b, x, "relu")
    act = draw(st.sampled_from(["relu", "relu", "leakyrelu", "fplus", "fplus-where"]))
    bn = draw(st.booleans())
    stride = draw(st.sampled_from([1, 1, 2])) if h >= 2 and w >= 2 else 1
    cout = draw(st.sampled_from([c, c, max(1, 2 * c if 2 * c <= MAX_CHANNELS else c // 2)]))
    project = stride != 1 or cout != c or draw(st.integers(0, 3)) == 0
    if draw(st.booleans()):
        k = draw(st.sampled_from([3, 3, 1, 5]))
        plan = [(k, cout, stride), (k, cout, 1)]
    else:
        mid = draw(st.integers(1, MAX_CHANNELS))
        plan = [(1, mid, 1), (3, mid, stride), (1, cout, 1)]
    y, s = x, shape
    for i, (k, co, st_) in enumerate(plan):
        p = {"k": k, "stride": st_, "pads": [k // 2] * 4, "dilation": 1, "groups": 1, "cout": co,
             "bias": draw(st.booleans())}
        y, s = emit_conv(b, y, s, p)
        y = emit_batchnorm(b, y, co) if bn else y
        if i < len(plan) - 1:
            y = emit_activation(b, y, act)
    short = x
    if project:
        p = {"k": 1, "stride": stride, "pads": [0] * 4, "dilation": 1, "groups": 1, "cout": cout,
             "bias": draw(st.booleans())}
        short, _ = emit_conv(b, x, shape, p)
        short = emit_batchnorm(b, short, cout) if bn else short
    b.layers.append("residual" + ("/projection" if project else ""))
    return b.node("Add", [y, short] if draw(st.booleans()) else [short, y]), s


@st.composite
def complex_conv(draw, b: Builder, x: str, shape):
    """A complex conv as four real convs on the channel halves ``xr``, ``xi`` of x (an odd channel
    count widened by a 1×1 conv first): ``concat(A·xr − B·xi, C·xr + D·xi)``, the same attributes for
    all four, kernels independent (a general 2×2 block) or shared as ``C = B``, ``D = A`` (complex)."""
    _, c, h, w = shape
    if c % 2:
        p = {"k": 1, "stride": 1, "pads": [0] * 4, "dilation": 1, "groups": 1, "cout": c + 1, "bias": True}
        x, shape = emit_conv(b, x, shape, p)
        c = c + 1
    half = (1, c // 2, h, w)
    xr, xi = b.outputs("Split", [x, b.const_int(np.array([c // 2, c // 2]))], 2, axis=1)
    p = draw(conv_params(half, plain=True))
    p["groups"] = 1
    wa, wb = conv_weight(b, half, p), conv_weight(b, half, p)
    wc, wd = (wb, wa) if draw(st.booleans()) else (conv_weight(b, half, p), conv_weight(b, half, p))
    (a, out), (pb, _), (pc, _), (d, _) = [emit_conv(b, v, half, p, k)
                                          for v, k in ((xr, wa), (xi, wb), (xr, wc), (xi, wd))]
    b.layers.append("complex")
    real, imag = b.node("Sub", [a, pb]), b.node("Add", [pc, d] if draw(st.booleans()) else [d, pc])
    return b.node("Concat", [real, imag], axis=1), (1, 2 * out[1], out[2], out[3])


@st.composite
def noop(draw, b: Builder, x: str, shape):
    """What remove-noops drops (and, for a Dropout mask or a Split output left unused, dead-code)."""
    kind = draw(st.sampled_from(["dropout", "dropout-mask", "dropout-mask", "mul1", "add0", "div1", "sub0",
                                 "reshape", "transpose", "cast", "concat1", "identity", "split", "split"]))
    b.layers.append(kind)
    if kind == "dropout":
        return b.node("Dropout", [x]), shape
    if kind == "dropout-mask":
        return b.outputs("Dropout", [x], 2)[0], shape
    if kind in ("mul1", "add0", "div1", "sub0"):
        op, value = {"mul1": ("Mul", 1.0), "add0": ("Add", 0.0), "div1": ("Div", 1.0), "sub0": ("Sub", 0.0)}[kind]
        c = b.const(np.full(draw(st.sampled_from([(), (1, shape[1], 1, 1)])), value), "c")
        return b.node(op, [x, c] if op in ("Div", "Sub") or draw(st.booleans()) else [c, x]), shape
    if kind == "reshape":
        return b.node("Reshape", [x, b.const_int(np.array(shape))]), shape
    if kind == "transpose":
        return b.node("Transpose", [x], perm=[0, 1, 2, 3]), shape
    if kind == "cast":
        return b.node("Cast", [x], to=TensorProto.FLOAT), shape
    if kind == "concat1":
        return b.node("Concat", [x], axis=1), shape
    if kind == "identity":
        return b.node("Identity", [x]), shape
    if shape[1] < 2:  # split: one half goes on, the other is never read
        return x, shape
    half = shape[1] // 2
    parts = b.outputs("Split", [x, b.const_int(np.array([half, shape[1] - half]))], 2, axis=1)
    return parts[0], (1, half, shape[2], shape[3])


@st.composite
def layer(draw, b: Builder, x: str, shape):
    """One layer on the running tensor: (new tensor name, new shape)."""
    kind = draw(st.sampled_from(["conv", "conv_bn", "act", "residual", "residual", "branches", "branches", "chain",
                                 "concat", "pool", "noop", "noop", "noop", "binary", "binary", "tile", "tile",
                                 "hadamard", "bigconv", "bigconv", "bigconv", "complex", "complex", "wide",
                                 "shuffle"]))
    _, c, h, w = shape
    if kind in ("conv", "conv_bn"):
        y, shape = emit_conv(b, x, shape, draw(conv_params(shape)))
        return (emit_batchnorm(b, y, shape[1]) if kind == "conv_bn" else y), shape
    if kind == "binary":
        return draw(binary_layers(b, x, shape))
    if kind == "residual":
        return draw(residual(b, x, shape))
    if kind == "noop":
        return draw(noop(b, x, shape))
    if kind == "tile":  # Rep-BNN's RepConv: the feature map repeated β times along channels, then a conv
        beta = draw(st.sampled_from([2, 3]))
        if draw(st.booleans()):
            tiled = b.node("Concat", [x] * beta, axis=1)
        else:
            tiled = b.node("Tile", [x, b.const_int(np.array([1, beta, 1, 1]))])
        b.layers.append(f"tile{beta}")
        if draw(st.integers(0, 2)) == 0:  # a per-channel affine between tile and conv
            tiled = emit_batchnorm(b, tiled, c * beta)
        return emit_conv(b, tiled, (1, c * beta, h, w), draw(conv_params((1, c * beta, h, w), plain=True)))
    if kind == "shuffle" and c % 2 == 0:  # ShuffleNet's channel shuffle: reshape, swap the group axes, reshape
        g = draw(st.sampled_from([d for d in (2, 3, 4) if c % d == 0]))
        grouped = b.node("Reshape", [x, b.const_int(np.array([1, g, c // g, h, w]))])
        swapped = b.node("Transpose", [grouped], perm=[0, 2, 1, 3, 4])
        b.layers.append(f"shuffle{g}")
        return b.node("Reshape", [swapped, b.const_int(np.array([1, c, h, w]))]), shape
    if kind == "act":
        kinds = ["relu", "leakyrelu", "elu", "fplus", "fplus-where", "pfplus-where", "relu6", "hardswish",
                 "hardsigmoid", "silu", "sigmoid", "gelu"]
        return emit_activation(b, x, draw(st.sampled_from(kinds))), shape
    if kind == "complex":
        return draw(complex_conv(b, x, shape))
    if kind == "hadamard":
        matmul = w >= 9 and draw(st.booleans())
        if matmul:  # MatMul over the last axis
            m = hadamard_weight(draw, b, w)
            y, shape = b.node("MatMul", [x, b.const(m)]), (1, c, h, m.shape[1])
        else:  # 1×1 conv over channels, widened first to 9-32 channels (a ReLU between: no conv chain)
            k = c
            if c < 9:
                k = draw(st.sampled_from([9, 12, 16, 20, 32]))
                p = {"k": 1, "stride": 1, "pads": [0] * 4, "dilation": 1, "groups": 1, "cout": k, "bias": True}
                x, _ = emit_conv(b, x, shape, p)
                x = emit_activation(b, x, "relu")
            m = hadamard_weight(draw, b, k)
            p = {"k": 1, "stride": 1, "pads": [0] * 4, "dilation": 1, "groups": 1, "cout": m.shape[1],
                 "bias": draw(st.booleans())}
            y, shape = emit_conv(b, x, (1, k, h, w), p, m.T[:, :, None, None])
        if draw(st.booleans()):  # T per coefficient along the last axis (MatMul) or one scalar
            y = emit_soft_threshold(b, y, (shape[3],) if matmul and draw(st.booleans()) else ())
        return y, shape
    if kind == "bigconv":  # stride 1, ungrouped, kernel 11-15, drawn among the shapes where prefer_fft picks FFT
        fft = [(k, cout, pad) for k in (11, 13, 15) for cout in (12, 16) for pad in (k // 2, k - 1)
               if min(h, w) + 2 * pad >= k and fft_conv.prefer_fft(
                   fft_conv.geometry((1, FFT_CHANNELS, h, w), (cout, FFT_CHANNELS, k, k), [pad, pad])) is not None]
        if c != FFT_CHANNELS and fft:  # FFT needs channels in and out to win: widen (or narrow) first
            p = {"k": 1, "stride": 1, "pads": [0] * 4, "dilation": 1, "groups": 1, "cout": FFT_CHANNELS, "bias": True}
            x, shape = emit_conv(b, x, shape, p)
            x = emit_activation(b, x, "relu")
        if fft:
            k, cout, pad = draw(st.sampled_from(fft))
        else:  # no shape of this map where FFT wins: a big direct conv
            k, cout = draw(st.sampled_from([11, 13, 15])), draw(st.integers(6, 12))
            pad = k // 2 if min(h, w) + 2 * (k // 2) >= k else k - 1
        p = {"k": k, "stride": 1, "pads": [pad] * 4, "dilation": 1, "groups": 1, "cout": cout,
             "bias": draw(st.booleans())}
        return emit_conv(b, x, shape, p)
    if kind == "wide":  # 3×3, stride 1, wide enough for Winograd; padding symmetric, asymmetric or none
        if c not in WIDE_CHANNELS:
            p = {"k": 1, "stride": 1, "pads": [0] * 4, "dilation": 1, "groups": 1,
                 "cout": draw(st.sampled_from(WIDE_CHANNELS)), "bias": True}
            x, shape = emit_conv(b, x, shape, p)
            x = emit_activation(b, x, "relu")
        padding = draw(st.sampled_from(["same", "none", "asymmetric"]))
        pads = [draw(st.integers(0, 2)) for _ in range(4)] if padding == "asymmetric" else [int(padding == "same")] * 4
        if min(h + pads[0] + pads[2], w + pads[1] + pads[3]) < 3:
            pads = [1] * 4
        p = {"k": 3, "stride": 1, "pads": pads, "dilation": 1, "groups": 1,
             "cout": draw(st.sampled_from(WIDE_CHANNELS)), "bias": draw(st.booleans())}
        y, shape = emit_conv(b, x, shape, p)
        return (emit_batchnorm(b, y, shape[1]) if draw(st.booleans()) else y), shape
    if kind == "chain":  # two linear convs, nothing between: merge-branches composes them
        p1 = draw(conv_params(shape, same=True))
        y, s = emit_conv(b, x, shape, p1)
        p2 = draw(conv_params(s, same=True))
        return emit_conv(b, y, s, p2)
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
def head(draw, b: Builder, x: str, shape) -> tuple[str, tuple]:
    """None, global pooling + dense, a Hadamard dense, or a binarized dense on the flattened ±1 map."""
    kind = draw(st.sampled_from(["none", "dense", "hadamard", "binary"]))
    if kind == "none":
        return x, shape
    if kind == "binary":
        x = b.node("Flatten", [emit_sign(b, x, draw(st.sampled_from(["sign", "where"])), shape[1])])
        k = int(np.prod(shape[1:]))
        n = draw(st.integers(1, 10))
        w = np.where(b.rng.standard_normal((n, k)) >= 0, 1.0, -1.0)
        b.layers.append("binary dense")
        return b.node("Gemm", [x, b.const(w), b.const(b.rng.standard_normal(n))], transB=1), (1, n)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    if kind == "hadamard" and shape[1] >= 9:
        m = hadamard_weight(draw, b, shape[1])
        if draw(st.booleans()):
            return b.node("MatMul", [x, b.const(m)]), (1, m.shape[1])
        return b.node("Gemm", [x, b.const(m.T), b.const(b.rng.standard_normal(m.shape[1]))], transB=1), (1, m.shape[1])
    n = draw(st.integers(1, 10))
    b.layers.append("dense")
    return b.node("Gemm", [x, b.const(b.rng.standard_normal((n, shape[1])) * 0.3), b.const(b.rng.standard_normal(n))],
                  transB=1), (1, n)


@st.composite
def cnn_models(draw) -> tuple[onnx.ModelProto, list[str]]:
    """A random CNN as an ONNX model (input ``x``, output ``y``) and its layer list."""
    c = draw(st.integers(1, 8))
    h, w = (draw(st.integers(5, 16)), draw(st.integers(5, 16))) if draw(st.booleans()) else (16, 16)
    b = Builder(np.random.default_rng(draw(st.integers(0, 2 ** 31))), (1, c, h, w))
    x, shape = "x", (1, c, h, w)
    for _ in range(draw(st.integers(1, 5))):
        x, shape = draw(layer(b, x, shape))
        if shape[1] > 4 * MAX_CHANNELS:
            break
    x, shape = draw(head(b, x, shape))
    b.nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(b.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, b.layers
