"""binarize: binarized conv2d / dense layers to reforge's bit-packed XNOR-popcount operators.

A layer is binary when its weight is ±1 (times a positive per-output-channel scale α, which is what
BatchNorm / XNOR-Net scales folded into the weight by fold-batchnorm look like; ``sign(W)`` on a
constant is folded by fold-constants, and the pass reads a left-over ``sign(const)`` itself) and its
input is one of:

    sign(x)                                  torch.sign, ONNX Sign: {-1, 0, +1}
    where(x >= 0, 1, -1)                     torch.where; QONNX BipolarQuant (frontend/qonnx.py)
    x + (s - x),  s one of the above         straight-through estimator (detach trick)
    max_pool2d / reshape of such a tensor
    q·s, q = rnd(clamp(v, lo, hi))           QONNX Quant (frontend/qonnx.py): unsigned (lo = 0, k = bits
                                             of hi) or signed ([lo, hi] = [-2^(k-1) (+1 narrow), 2^(k-1) - 1]),
                                             2 <= k <= 8, s a positive scalar (or folded into W)

Packing (``x`` the float tensor behind the spelling):
- ±1: bits ``x >= 0``, when the input provably holds no 0 (:meth:`Thresholds.nonzero`: a ``where``
  spelling, a sign of such a tensor, a fused threshold whose float expression is nonzero at every
  integer dot product); ``where(x >= 0, 1, -1)`` is reproduced exactly for every input (NaN included);
- ternary: ``sign(x)`` anywhere else (ONNX / torch ``Sign(0) = 0``): planes ``x > 0`` (sign), ``x != 0``
  (mask) and the ternary kernel, ``dot = Σ_{a>0} w - Σ_{a<0} w``, exact on inputs with exact zeros (NaN aside: a
  NaN input packs as 0 where the float conv gives NaN);
- k-bit: the bit planes of the integers q (of their two's complement when signed), ``dot = Σ_b s_b·Σ_c q_bc·w_c``
  with s_b = 2^b, the top plane's -2^(k-1) when signed; the scale s joins α in the float epilogue.

Rewrite: ``conv(act(x), α·S) -> bitserial_conv2d(pack(x), S)·α·s`` (NHWC result transposed back to
NCHW), the same for dense; the bias and everything after stay as they were (float epilogue). Where
the input of the next binary conv / dense is a ±1 ``sign(α·d + b)`` of a rewritten layer's dot product
d, the float epilogue and the pack become that layer's integer threshold (``bit = d >= thr[o]``): the
thresholds come from evaluating the graph's own float expression ``fl(fl(α·d) + b)`` at every integer
candidate d (kernel_algebra.binary_thresholds), so they are exact by construction. A ``sign`` whose
expression is exactly 0 at some integer d (a tie) is not ±1: it stays a float epilogue packed ternary
(reported); a ``where`` maps the tie to +1, as the threshold does.

Left in float, with the reason in the report: a ±1 weight with an exact 0, a k-bit Quant that has
a zero point, more than 8 bits, a per-channel scale or a range that is not a k-bit one (ONNX node names do not survive
TVM's importer: the reason names the setting), grouped / dilated convs.

Other exactness rules:
- the STE spelling ``x + (sign(x) - x)`` equals sign(x) in float32 for |x| < 2^24; it is read as
  sign(x) (and packed ternary: the STE of Sign maps 0 to 0).
- float epilogue: ``α·d`` is computed in float32 from the exact integer d; the float conv with
  ±α weights it replaces rounds its partial sums, so outputs agree to float rounding, and exactly
  when α (and s) are powers of two.

Max pooling between a thresholded conv and the next binary conv runs on the packed bits (an OR:
``max(y) >= 0`` iff some ``y >= 0``); any other pool stays float and its output is packed. A binary
dense after the NCHW flattening of such packed bits (channels a multiple of 64) reads the NHWC bits
as they are: its weight's input features are permuted at compile time instead.

Targets: the operators are scheduled at build for the CPU targets (x86, arm: the target's vector
width) and as single work-item OpenCL kernels for opencl-fpga (``popcount`` on 64-bit words), so
the registry runs the pass there; CUDA keeps binarized layers in float until the operators have a
GPU schedule that has run on a GPU.

Not (yet) covered: grouped / dilated convs, ternary weights, max pooling on
packed bits of a float-packed tensor.

Files: the activation spellings are read in passes/binary_activations.py (with the QONNX lowering's
own table of its spellings), the thresholds in passes/binary_threshold.py, packed max pooling and
flattening in passes/packed_pool.py; this one holds the pattern and the conv / dense rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext import bitserial as bs

from . import kernel_algebra as ka
from .binary_activations import Act, ActivationReader
from .binary_threshold import Layer, Thresholds
from .graph import channel_const, cleanup, const_value, is_const, mutate_functions, op_name, tensor_shape
from .packed_pool import PackedPool
from .report import BlockReport

WORD = "uint64"


@dataclass
class BinarizeReport(BlockReport):
    """Layers rewritten / refused (BlockReport) and the BatchNorm + sign pairs fused into thresholds."""

    thresholds: int = 0
    pools: int = 0
    flattens: int = 0

    def to_json(self) -> dict:
        out = super().to_json()
        out["thresholds"] = self.thresholds
        out["packed_pools"] = self.pools
        out["packed_flattens"] = self.flattens
        return out


@tvm.transform.module_pass(opt_level=0, name="reforge.binarize")
class Binarize:
    """Rewrite binarized conv2d / dense layers to bit-serial operators, fusing BN + sign into thresholds."""

    def __init__(self):
        self.report = BinarizeReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = mutate_functions(mod, lambda m, f: _Binarize(m, self.report))
        return cleanup(mod)


@relax.expr_functor.mutator
class _Binarize(relax.PyExprMutator):
    def __init__(self, mod, report: BinarizeReport):
        super().__init__(mod)
        self.report = report
        self.reader = ActivationReader(self.lookup_binding)
        self.thresholds = Thresholds(self.reader, self.builder_, report)
        self.pool = PackedPool(self.reader, self.thresholds, self.builder_, WORD, report)

    def _weight(self, expr) -> np.ndarray | None:
        """A constant weight, or ``sign(const)`` left unfolded."""
        if is_const(expr):
            return const_value(expr)
        value = self.reader.value(expr)
        if op_name(value) == "relax.sign" and is_const(value.args[0]):
            return np.sign(const_value(value.args[0]))
        return None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        new = None
        if name == "relax.nn.conv2d":
            new = self._conv(call)
        elif name == "relax.matmul":
            new = self._dense(call)
        return call if new is None else new

    def _binary_layer(self, call, kind: str, w: np.ndarray | None, out_axis: int) -> tuple[np.ndarray, Act] | None:
        """``(α, activation)`` for a binary layer, else None. Refusals are reported only for layers
        that look binarized: ±1 weights with an unsupported input (not for a 1-tap layer, whose weights
        are trivially of constant magnitude), a ±1 / k-bit input with a weight holding exact zeros, or
        a k-bit input whose per-channel scale was folded into a ±1 weight."""
        if w is None or w.dtype != np.float32:
            return None
        alpha, has_zero = ka.binary_scales(w, out_axis)
        act = self._activation(call.args[0])
        if alpha is None and not has_zero:
            if isinstance(act, Act) and act.mode == "kbit" and _separable(w, out_axis):
                self.report.refuse(f"{kind} left in float: its k-bit input has a per-channel scale (folded into "
                                   f"the ±1 weight)")
            return None
        if has_zero:
            if isinstance(act, Act):
                self.report.refuse(f"{kind} left in float: its ±1 weight has an exact 0 (Sign(0) = 0 is not ±1)")
            return None
        if not isinstance(act, Act):
            if w.size // w.shape[out_axis] > 1:
                reason = act or "its input is not a ±1, ternary or k-bit activation"
                self.report.refuse(f"{kind} with ±1 weights left in float: {reason}")
            return None
        return alpha, act

    def _activation(self, expr) -> Act | str | None:
        """How ``expr`` is packed: ±1 when it provably holds no 0 (:meth:`Thresholds.nonzero`), ternary
        for a sign that may see an exact 0 (``Sign(0) = 0``), k-bit for a QONNX Quant; a string
        says why a k-bit input is not supported."""
        found = self.reader.sign_of(expr)
        if found is None and self.reader.is_pm1(expr):
            found = (expr, "±1")
        if found is not None:
            if self.thresholds.nonzero(expr):
                return Act(found[0], found[1], "pm1")
            return Act(found[0] if found[1] in ("sign", "sign-ste") else expr, found[1] + ", ternary", "ternary")
        return self.reader.kbit_of(expr)

    def _conv(self, call):
        a = call.attrs
        w = self._weight(call.args[1])
        if (w is None or w.ndim != 4 or int(a["groups"]) != 1 or any(int(d) != 1 for d in a["dilation"])
                or (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") != ("NCHW", "OIHW", "NCHW")
                or tensor_shape(call.args[0]) is None):
            return None
        layer = self._binary_layer(call, "conv", w, 0)
        if layer is None:
            return None
        alpha, act = layer
        packed = self._packed(act, "NCHW")
        signs = np.where(w >= 0, 1.0, -1.0).astype("float32")
        strides = tuple(int(s) for s in a["strides"])
        padding = tuple(int(p) for p in a["padding"])
        bb = self.builder_
        ternary = act.mode == "ternary"
        out = bs.emit_bitserial_conv2d(bb, packed, signs, strides, padding, "float32", ternary=ternary,
                                       signed=act.signed)
        y = bb.emit(relax.op.permute_dims(out, [0, 3, 1, 2]))
        alpha = _scaled(alpha, act.scale)
        if not np.all(alpha == 1):
            y = bb.emit(relax.op.multiply(y, channel_const(alpha, 4, 1, "float32")))
        bound = int(np.prod(w.shape[1:])) * act.max_abs
        self.thresholds.layers[y] = Layer(packed, signs, alpha, bound, ternary, strides, padding, act.signed)
        self.report.count(f"conv -> bitserial_conv2d ({act.spelling})")
        return y

    def _dense(self, call):
        w = self._weight(call.args[1])
        shape = tensor_shape(call.args[0])
        if w is None or w.ndim != 2 or shape is None or len(shape) != 2:
            return None
        layer = self._binary_layer(call, "dense", w, 1)
        if layer is None:
            return None
        alpha, act = layer
        bb = self.builder_
        signs = np.where(w.T >= 0, 1.0, -1.0).astype("float32")  # [M, K]
        flat = self.pool.flat(act.x) if act.mode == "pm1" else None
        if flat is not None:  # packed NHWC bits of a thresholded conv: permute the weight's K instead
            packed, perm = flat
            signs = signs[:, perm]
        else:
            packed = self._packed(act, "NC")
        ternary = act.mode == "ternary"
        y = bs.emit_bitserial_dense(bb, packed, signs, "float32", ternary, signed=act.signed)
        alpha = _scaled(alpha, act.scale)
        if not np.all(alpha == 1):
            y = bb.emit(relax.op.multiply(y, relax.const(alpha.reshape(1, -1).astype("float32"))))
        bound = w.shape[0] * act.max_abs
        self.thresholds.layers[y] = Layer(packed, signs, alpha, bound, ternary, signed=act.signed)
        self.report.count(f"dense -> bitserial_dense ({act.spelling})")
        return y

    def _packed(self, act: Act, layout: str):
        """The packed input of a binary layer (``[N, H, W, B, CW]``, ``[N, B, KW]`` for layout ``NC``).
        ±1: a rewritten layer's thresholded output when ``x`` is ``dot·α [+ b]`` of one, else a bitpack
        of ``x >= 0`` (a sign of a sign packs the same bits, ``sign(z) >= 0`` iff ``z >= 0``, NaN
        included, so nested signs are looked through); ternary: the planes ``x > 0``, ``x != 0``
        (those of ``sign(x)``); k-bit: the bit planes of the integers ``q``."""
        bb = self.builder_
        if act.mode == "ternary":
            return bs.emit_bitpack(bb, act.x, 1, WORD, layout, ternary=True)
        if act.mode == "kbit":
            x = act.x if act.shape is None else bb.emit(relax.op.reshape(act.x, act.shape))
            return bs.emit_bitpack(bb, x, act.bits, WORD, layout)
        fused = self.pool.fused(act.x, layout)
        if fused is not None:
            return fused
        return bs.emit_bitpack(bb, self.reader.peel(act.x), 1, WORD, layout)

def _scaled(alpha: np.ndarray, scale: float) -> np.ndarray:
    """The epilogue's per-channel scale ``α·s`` (float32, as the graph would multiply)."""
    return alpha if scale == 1.0 else (alpha * np.float32(scale)).astype("float32")


def _separable(w: np.ndarray, out_axis: int) -> bool:
    """Whether ``|W| = α[o]·β[c]`` (equal over each (o, c) kernel, rank one): a ±1 weight with a
    per-input-channel scale folded into it."""
    mag = np.abs(np.moveaxis(w, out_axis, 0))
    mag = mag.reshape(mag.shape[0], mag.shape[1], -1)  # [O, C, taps]
    if not np.all(mag > 0) or not np.all(mag == mag[:, :, :1]):
        return False
    m = mag[:, :, 0]
    return bool(np.allclose(m, np.outer(m[:, 0], m[0, :] / m[0, 0]), rtol=1e-5))
